#!/usr/bin/env bash
# Build the U-Boot that the QEMU tests boot (DESIGN §4, §5 step 3).
#
# Source: Debian's own `u-boot` 2023.01 source package, fetched with `apt-get source` through a
# private apt configuration (a deb-src list of its own under .cache/), so the system's sources are
# never touched. Config: qemu_arm64_defconfig plus the fragment below, with `tftpput` and `hash`
# left out so the emulated board lacks them just as a Raspberry Pi's stock Debian U-Boot does.
#
# Output: .cache/uboot/<key>/u-boot.bin, key = hash of this script's config fragment + the source
# version. A second run with the same key only prints the path. Progress goes to stderr; stdout
# carries exactly one line, the path of u-boot.bin, so callers can capture it.
#
# Usage: bash scripts/build-test-uboot.sh [--cached-only] [--refresh] [--variant tftpput]
#   --cached-only  never download or build: print the path if that build exists, else exit 3
#   --refresh      refresh the private apt lists even if they are recent
#   --variant tftpput  the seed-card test board (layout seed): the same build plus `tftpput`,
#                  which the seed system's recovery card uses to report; its own cache key
set -euo pipefail

# Debian packages the build needs (checked on Debian 12 with --no-install-recommends):
# dpkg-dev for `apt-get source` (dpkg-source unpacks and patches), xz-utils for the tarballs,
# make/gcc/libc6-dev for the host tools, bison/flex for kconfig and dtc, bc for the build's
# arithmetic, libssl-dev for the host mkimage this config builds (FIT signatures), python3 for
# the build's scripts, the aarch64 cross compiler. Not needed for the u-boot.bin target: swig,
# python3-dev (pylibfdt/binman), libgnutls28-dev (mkeficapsule is off), device-tree-compiler
# (the tree's own dtc is built).
BUILD_DEPS=(dpkg-dev xz-utils make gcc libc6-dev bison flex bc libssl-dev python3 gcc-aarch64-linux-gnu)

UBOOT_SERIES="2023.01"   # the upstream release Debian 12 ships; the Debian revision may move on
DEFCONFIG="qemu_arm64_defconfig"
# What the tests need on top of the defconfig: the SD card (sdhci-pci), `mmc write`, and a TFTP
# server port other than 69 (tftpdstp) with tsize; `tftpput` and `hash` off, as on a Pi.
# Then crc32 as the Pi builds have it: with any of SHA256/384/512, CMD_SHA1SUM, CRC32_VERIFY or
# CMD_HASH, `crc32 addr len dest` goes through common/hash.c's multi-hash path and stores its
# result big-endian; every Debian Pi build has them all off and stores a native (little-endian)
# ulong. The defconfig's FIT (implies SHA256), EFI secure boot (selects SHA256, RSA) and EFI TCG2
# (selects SHA1..SHA512) go too, and DFU over TFTP, which needs FIT (common/update.c); the tests
# boot no FIT image and no signed EFI binary, and update nothing by DFU.
CONFIG_FRAGMENT='CONFIG_MMC=y
CONFIG_CMD_MMC=y
CONFIG_DM_MMC=y
CONFIG_MMC_SDHCI=y
CONFIG_MMC_PCI=y
CONFIG_MMC_WRITE=y
CONFIG_TFTP_PORT=y
CONFIG_TFTP_TSIZE=y
# CONFIG_CMD_TFTPPUT is not set
# CONFIG_CMD_HASH is not set
# CONFIG_FIT is not set
# CONFIG_DFU_TFTP is not set
# CONFIG_EFI_SECURE_BOOT is not set
# CONFIG_EFI_SIGNATURE_SUPPORT is not set
# CONFIG_EFI_TCG2_PROTOCOL is not set
# CONFIG_RSA is not set
# CONFIG_SHA256 is not set
# CONFIG_SHA384 is not set
# CONFIG_SHA512 is not set
# CONFIG_CRC32_VERIFY is not set
# CONFIG_CMD_SHA1SUM is not set'
# Options that must be off in the final .config whatever the defconfig selects (the last seven:
# the multi-hash switch of common/hash.c, and FIT, which would bring SHA256 back).
MUST_BE_OFF=(CONFIG_CMD_TFTPPUT CONFIG_CMD_HASH CONFIG_SHA256 CONFIG_SHA384 CONFIG_SHA512 CONFIG_CRC32_VERIFY
  CONFIG_CMD_SHA1SUM CONFIG_FIT)

CACHED_ONLY=0
REFRESH=0
VARIANT=default
expect_variant=0
for arg in "$@"; do
  if [[ $expect_variant == 1 ]]; then VARIANT="$arg"; expect_variant=0; continue; fi
  case "$arg" in
    --cached-only) CACHED_ONLY=1 ;;
    --refresh) REFRESH=1 ;;
    --variant) expect_variant=1 ;;
    --variant=*) VARIANT="${arg#--variant=}" ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-test-uboot: unknown argument: $arg" >&2; exit 2 ;;
  esac
done
[[ $expect_variant == 0 ]] || { echo "build-test-uboot: --variant needs a name (tftpput)" >&2; exit 2; }

# Variants change the fragment, and so the cache key: the default build is never touched.
case "$VARIANT" in
  default) ;;
  tftpput)
    # The seed card reports with `tftpput`; everything else stays as on the default test board.
    CONFIG_FRAGMENT="${CONFIG_FRAGMENT/\# CONFIG_CMD_TFTPPUT is not set/CONFIG_CMD_TFTPPUT=y}"
    MUST_BE_OFF=("${MUST_BE_OFF[@]:1}") # all but CONFIG_CMD_TFTPPUT, the first
    ;;
  *) echo "build-test-uboot: unknown variant: $VARIANT (known: tftpput)" >&2; exit 2 ;;
esac

say() { echo "build-test-uboot: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="$REPO_ROOT/.cache/uboot"
APT_DIR="$CACHE/apt"
mkdir -p "$CACHE"

# One build at a time: vitest workers and .ci/run may call this concurrently. --cached-only only
# reads (a finished build appears atomically), so it never waits behind a running build.
if [[ $CACHED_ONLY == 0 ]]; then
  exec 9>"$CACHE/.lock"
  flock 9
fi

# A private apt with Debian's deb-src lists, state under .cache/ (scripts/lib/private-apt.sh).
source "$REPO_ROOT/scripts/lib/private-apt.sh"
private_apt_init "$APT_DIR" deb-src
if [[ $CACHED_ONLY == 1 ]]; then
  private_apt_lists_present '*Sources*' || { say "no private apt lists yet (never built here)"; exit 3; }
else
  private_apt_refresh '*Sources*' "$REFRESH" || { say "no private apt lists yet (never built here)"; exit 3; }
fi

# The newest u-boot source version of the 2023.01 series the lists know.
VERSION=""
while read -r v; do
  [[ $v == "$UBOOT_SERIES"* ]] || continue
  if [[ -z $VERSION ]] || dpkg --compare-versions "$v" gt "$VERSION"; then VERSION="$v"; fi
done < <(apt-cache "${APT_OPTS[@]}" showsrc u-boot 2>/dev/null | sed -n 's/^Version: //p')
[[ -n $VERSION ]] || die "no u-boot $UBOOT_SERIES source package in the Debian archive lists"

KEY="$(printf '%s\n%s\n%s\n' "$VERSION" "$DEFCONFIG" "$CONFIG_FRAGMENT" | sha256sum | cut -c1-16)"
OUT="$CACHE/$KEY"
if [[ -s "$OUT/u-boot.bin" ]]; then
  say "reusing $OUT/u-boot.bin (u-boot $VERSION, key $KEY)"
  echo "$OUT/u-boot.bin"
  exit 0
fi
if [[ $CACHED_ONLY == 1 ]]; then
  say "no build for u-boot $VERSION with key $KEY"
  exit 3
fi

# --- build dependencies ---------------------------------------------------------------------
missing=()
for pkg in "${BUILD_DEPS[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  [[ $status == installed ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]]; then
    say "installing build dependencies: ${missing[*]}"
    apt-get -qq update >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  else
    die "missing build dependencies: ${missing[*]} — run: sudo apt-get install --no-install-recommends ${missing[*]}"
  fi
fi

# --- source ---------------------------------------------------------------------------------
SRC_PARENT="$CACHE/src/$VERSION"
SRC_DIR="$SRC_PARENT/u-boot-${UBOOT_SERIES}+dfsg"
if [[ ! -f "$SRC_DIR/Makefile" ]]; then
  say "fetching Debian source package u-boot=$VERSION"
  rm -rf "$SRC_PARENT"
  mkdir -p "$SRC_PARENT"
  (cd "$SRC_PARENT" && apt-get "${APT_OPTS[@]}" -qq source "u-boot=$VERSION" >&2)
  [[ -f "$SRC_DIR/Makefile" ]] || die "apt-get source did not unpack into $SRC_DIR"
fi

# --- configure and build out of tree, so the unpacked source stays clean for the next key -----
BUILD_DIR="$CACHE/build-$KEY"
rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR"
MAKE=(make -C "$SRC_DIR" O="$BUILD_DIR" CROSS_COMPILE=aarch64-linux-gnu- ARCH=arm)
start=$SECONDS
say "configuring $DEFCONFIG + fragment (key $KEY)"
"${MAKE[@]}" -s "$DEFCONFIG" >&2
printf '%s\n' "$CONFIG_FRAGMENT" >>"$BUILD_DIR/.config"
"${MAKE[@]}" -s olddefconfig >&2

while read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF "$line" "$BUILD_DIR/.config" || die "fragment line did not survive olddefconfig: $line" ;;
  esac
done <<<"$CONFIG_FRAGMENT"
for opt in "${MUST_BE_OFF[@]}"; do
  if grep -q "^$opt=y" "$BUILD_DIR/.config"; then die "$opt is on in the final .config; the test board must lack it"; fi
done

say "building u-boot.bin with make -j2 (about a minute on 2 cores)"
"${MAKE[@]}" -s -j2 u-boot.bin >&2
say "built in $((SECONDS - start)) s"

# Publish atomically: a half-written output folder must never look like a finished build.
mkdir -p "$BUILD_DIR/out"
cp "$BUILD_DIR/u-boot.bin" "$BUILD_DIR/.config" "$BUILD_DIR/out/"
printf 'u-boot %s\n%s\n%s\n' "$VERSION" "$DEFCONFIG" "$CONFIG_FRAGMENT" >"$BUILD_DIR/out/BUILD-INFO"
rm -rf "$OUT"
mv "$BUILD_DIR/out" "$OUT"
rm -rf "$BUILD_DIR"
say "wrote $OUT/u-boot.bin"
echo "$OUT/u-boot.bin"
