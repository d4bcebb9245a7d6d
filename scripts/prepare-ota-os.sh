#!/usr/bin/env bash
# Fetch what the in-place update's test OS holds (issue 12): busybox-static, Debian arm64's dropbear
# (`dropbear-bin`) with its libraries and loader, the test kernel's virtio (MMIO, blk, net) and ext4
# modules, and the kernel gzip'd as kernel8.img — from Debian arm64 through the test kernel's private
# apt state, into .cache/ota-os/<kernel version>-<key>/. The work is scripts/prepare-netboot-os.sh's
# (`--os ota`); see there for the folder's layout. stdout carries exactly one line, the folder's path.
#
# Usage: bash scripts/prepare-ota-os.sh [--cached-only] [--refresh]
#   --cached-only  never download: print the newest prepared folder, else exit 3
#   --refresh      refresh the private apt lists (passed to the kernel script)
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/prepare-netboot-os.sh" --os ota "$@"
