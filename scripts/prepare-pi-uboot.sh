#!/usr/bin/env bash
# Fetch Debian's real Raspberry Pi U-Boot builds for the tests on QEMU's Pi machines (issue 10).
#
# Source: Debian's `u-boot-rpi` for arm64 (rpi_3, rpi_4, rpi_arm64), armhf (rpi_2, rpi_3_32b,
# rpi_4_32b) and armel (rpi, rpi_0_w), fetched with `apt-get download` through one private apt
# state per architecture under .cache/pi-uboot/apt/<arch> — the system's apt configuration and
# package database are never touched, and no root is needed — and unpacked with `dpkg-deb -x`.
# rpi_arm64 relies on the firmware's device tree, which QEMU does not make: the upstream
# bcm2837-rpi-3-b.dtb comes from Debian's arm64 kernel package (/usr/lib/linux-image-*/broadcom/).
#
# Output: .cache/pi-uboot/<u-boot-rpi version>/ holding <arch>/usr/lib/u-boot/<build>/u-boot.bin
# for the three architectures, dtb/bcm2837-rpi-3-b.dtb and `version`. stdout carries exactly one
# line, that folder; progress goes to stderr. A second run with the same lists only prints.
#
# Usage: bash scripts/prepare-pi-uboot.sh [--cached-only] [--refresh]
#   --cached-only  never download: print the newest prepared folder, else exit 3
#   --refresh      refresh the private apt lists even if they are recent
set -euo pipefail

CACHED_ONLY=0
REFRESH=0
for arg in "$@"; do
  case "$arg" in
    --cached-only) CACHED_ONLY=1 ;;
    --refresh) REFRESH=1 ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare-pi-uboot: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { echo "prepare-pi-uboot: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

ARCHES=(arm64 armhf armel)
DTB=bcm2837-rpi-3-b.dtb
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$REPO_ROOT/.cache/pi-uboot"
mkdir -p "$CACHE"

# A prepared folder is complete: it is published with one `mv` after everything is in it.
source "$REPO_ROOT/scripts/lib/versioned-cache.sh"

if [[ $CACHED_ONLY == 1 ]]; then
  newest_cached "$CACHE" version ||
    { say "no Pi U-Boot prepared yet; run: bash scripts/prepare-pi-uboot.sh"; exit 3; }
  exit 0
fi

# One download at a time: several test files may ask at once.
exec 9>"$CACHE/.lock"
flock 9

source "$REPO_ROOT/scripts/lib/private-apt.sh"
# One private apt state per architecture (private_apt_init knows one foreign architecture).
apt_for() {
  private_apt_init "$CACHE/apt/$1" "deb [arch=$1]" "$1"
}
for arch in "${ARCHES[@]}"; do
  apt_for "$arch"
  private_apt_refresh '*Packages*' "$REFRESH" || die "no package lists in $CACHE/apt/$arch"
done

# The version: the one the arm64 lists name; the other architectures must have the same.
apt_for arm64
VERSION="$(apt-cache "${APT_OPTS[@]}" show u-boot-rpi 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -1)"
[[ -n $VERSION ]] || die "no u-boot-rpi in the arm64 lists"
OUT="$CACHE/$VERSION"
if [[ -s "$OUT/version" ]]; then
  say "reusing $OUT (u-boot-rpi $VERSION)"
  echo "$OUT"
  exit 0
fi

WORK="$(mktemp -d "$CACHE/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/out" "$WORK/deb"
for arch in "${ARCHES[@]}"; do
  apt_for "$arch"
  say "downloading u-boot-rpi=$VERSION ($arch)"
  (cd "$WORK/deb" && apt-get "${APT_OPTS[@]}" -qq download "u-boot-rpi:$arch=$VERSION" >&2) ||
    die "u-boot-rpi $VERSION is not in the $arch lists"
  dpkg-deb -x "$WORK"/deb/u-boot-rpi_*_"$arch".deb "$WORK/out/$arch"
  compgen -G "$WORK/out/$arch/usr/lib/u-boot/rpi*/u-boot.bin" >/dev/null || die "no u-boot.bin in u-boot-rpi:$arch"
done

# The device tree for rpi_arm64: Debian's arm64 kernel package (the metapackage names its ABI
# package), only the one file taken out of the ~60 MB package.
apt_for arm64
KPKG="$(apt-cache "${APT_OPTS[@]}" depends linux-image-arm64 2>/dev/null |
  sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-arm64\)$/\1/p' | head -1)"
[[ -n $KPKG ]] || die "linux-image-arm64 names no linux-image-<abi>-arm64 package in the lists"
KVERSION="$(apt-cache "${APT_OPTS[@]}" show "$KPKG" 2>/dev/null | sed -n 's/^Version: //p' | head -1)"
say "downloading $KPKG=$KVERSION (arm64) for $DTB"
(cd "$WORK/deb" && apt-get "${APT_OPTS[@]}" -qq download "$KPKG:arm64=$KVERSION" >&2)
mkdir -p "$WORK/kernel" "$WORK/out/dtb"
dpkg-deb --fsys-tarfile "$WORK"/deb/linux-image-*_arm64.deb |
  tar -x -C "$WORK/kernel" --wildcards "./usr/lib/linux-image-*/broadcom/$DTB"
cp "$WORK"/kernel/usr/lib/linux-image-*/broadcom/"$DTB" "$WORK/out/dtb/" || die "$KPKG has no broadcom/$DTB"

printf 'u-boot-rpi %s\n%s %s (%s)\n' "$VERSION" "$KPKG" "$KVERSION" "$DTB" >"$WORK/out/version"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
say "wrote $OUT: $(cd "$OUT" && ls -d */usr/lib/u-boot/* | sed 's|.*/||' | tr '\n' ' ')"
echo "$OUT"
