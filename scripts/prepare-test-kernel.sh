#!/usr/bin/env bash
# Fetch a real arm64 Linux kernel for the boot tests under QEMU (issue 5, items 3 and 7).
#
# Source: Debian's own `linux-image-<abi>-arm64` package (the one `linux-image-arm64` depends on),
# fetched with `apt-get download` through a private apt state for arm64 under .cache/kernel/apt —
# the system's apt configuration and package database are never touched, and no root is needed.
#
# What Debian's arm64 /boot/vmlinuz-* is (checked on bookworm's 6.1 package): a raw arm64 `Image`
# — an EFI-stub PE file, Secure-Boot signed, uncompressed (~33 MB, "ARM\x64" magic at offset 56),
# which `booti` takes as it is. Older or other builds may ship it gzip'd, or as an EFI zboot image
# (a PE file with "zimg" at offset 4, payload offset/size at 8/12, CONFIG_EFI_ZBOOT): the script
# unpacks both to the raw Image, so the tests always get one.
#
# Output: .cache/kernel/<package version>/Image (+ config, version). stdout carries exactly one
# line, the path of Image; progress goes to stderr. A second run with the same lists only prints.
#
# Usage: bash scripts/prepare-test-kernel.sh [--cached-only] [--refresh]
#   --cached-only  never download: print the path of the newest prepared kernel, else exit 3
#   --refresh      refresh the private apt lists even if they are recent
set -euo pipefail

CACHED_ONLY=0
REFRESH=0
for arg in "$@"; do
  case "$arg" in
    --cached-only) CACHED_ONLY=1 ;;
    --refresh) REFRESH=1 ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare-test-kernel: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { echo "prepare-test-kernel: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$REPO_ROOT/.cache/kernel"
APT_DIR="$CACHE/apt"
mkdir -p "$CACHE"

source "$REPO_ROOT/scripts/lib/versioned-cache.sh"

if [[ $CACHED_ONLY == 1 ]]; then
  found="$(newest_cached "$CACHE" Image)" ||
    { say "no kernel prepared yet; run: bash scripts/prepare-test-kernel.sh"; exit 3; }
  echo "$found/Image"
  exit 0
fi

# One download at a time: several test files may ask at once.
exec 9>"$CACHE/.lock"
flock 9

# A private apt with Debian's arm64 binary lists, state under .cache/ (scripts/lib/private-apt.sh).
source "$REPO_ROOT/scripts/lib/private-apt.sh"
private_apt_init "$APT_DIR" "deb [arch=arm64]" arm64
private_apt_refresh '*Packages*' "$REFRESH" || die "no package lists in $APT_DIR"

# The metapackage names the current ABI package, e.g. linux-image-6.1.0-31-arm64.
PKG="$(apt-cache "${APT_OPTS[@]}" depends linux-image-arm64 2>/dev/null |
  sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*-arm64\)$/\1/p' | head -1)"
[[ -n $PKG ]] || die "linux-image-arm64 names no linux-image-<abi>-arm64 package in the lists"
VERSION="$(apt-cache "${APT_OPTS[@]}" show "$PKG" 2>/dev/null | sed -n 's/^Version: //p' | head -1)"
[[ -n $VERSION ]] || die "no version for $PKG"
OUT="$CACHE/$VERSION"
if [[ -s "$OUT/Image" ]]; then
  say "reusing $OUT/Image ($PKG $VERSION)"
  echo "$OUT/Image"
  exit 0
fi

WORK="$(mktemp -d "$CACHE/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
say "downloading $PKG=$VERSION (arm64)"
(cd "$WORK" && apt-get "${APT_OPTS[@]}" -qq download "$PKG:arm64=$VERSION" >&2)
DEB="$(ls "$WORK"/*.deb)"
# Only the kernel and its config: the modules are not needed (the test initramfs loads none).
dpkg-deb --fsys-tarfile "$DEB" | tar -x -C "$WORK" --wildcards './boot/vmlinuz-*' './boot/config-*'
VMLINUZ="$(ls "$WORK"/boot/vmlinuz-*)"

# What kind of file is it? gzip (1f 8b), EFI zboot (MZ + "zimg"), or already a raw Image.
magic="$(head -c 2 "$VMLINUZ" | od -An -tx1 | tr -d ' ')"
zimg="$(dd if="$VMLINUZ" bs=1 skip=4 count=4 status=none)"
if [[ $magic == 1f8b ]]; then
  say "vmlinuz is a gzip'd Image: decompressing"
  gzip -dc <"$VMLINUZ" >"$WORK/Image"
elif [[ $magic == 4d5a && $zimg == zimg ]]; then
  off=$(od -An -tu4 -j8 -N4 "$VMLINUZ" | tr -d ' ')
  size=$(od -An -tu4 -j12 -N4 "$VMLINUZ" | tr -d ' ')
  comp="$(dd if="$VMLINUZ" bs=1 skip=24 count=8 status=none | tr -d '\0')"
  say "vmlinuz is an EFI zboot image ($comp payload of $size bytes at $off): unpacking"
  case "$comp" in
    gzip) tail -c +"$((off + 1))" "$VMLINUZ" | head -c "$size" | gzip -dc >"$WORK/Image" ;;
    zstd) tail -c +"$((off + 1))" "$VMLINUZ" | head -c "$size" | zstd -dc >"$WORK/Image" ;;
    xzkern|xz) tail -c +"$((off + 1))" "$VMLINUZ" | head -c "$size" | xz -dc >"$WORK/Image" ;;
    *) die "EFI zboot payload compressed with '$comp': not handled" ;;
  esac
else
  cp "$VMLINUZ" "$WORK/Image"
fi
# The arm64 Image header: "ARM\x64" at offset 56.
[[ "$(dd if="$WORK/Image" bs=1 skip=56 count=4 status=none | od -An -tx1 | tr -d ' ')" == 41524d64 ]] \
  || die "the kernel from $PKG is not an arm64 Image (no ARM\\x64 magic at offset 56)"

mkdir -p "$WORK/out"
mv "$WORK/Image" "$WORK/out/Image"
cp "$WORK"/boot/config-* "$WORK/out/config"
printf '%s %s\n' "$PKG" "$VERSION" >"$WORK/out/version"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
say "wrote $OUT/Image ($(stat -c %s "$OUT/Image") bytes)"
echo "$OUT/Image"
