#!/usr/bin/env bash
# Fetch what a test OS under QEMU holds besides its kernel, from Debian arm64: busybox, one dynamically
# linked program with its libraries and loader, and the test kernel's own modules. Two test OSes:
#
#   netboot (the default, issue 11): the network-boot test OS's initramfs, which takes a Debian arm64
#     kernel from an initramfs to a root file system on an NBD export: `nbd-client`, and the modules an
#     NBD root needs on QEMU's virt machine (virtio_mmio, virtio_net, nbd, ext4, crc32c for ext4's
#     metadata checksums).
#   ota (issue 12, `--os ota`, what scripts/prepare-ota-os.sh runs): the in-place update's test OS, a
#     root file system on the VM's virtio disk running an SSH server: `dropbear-bin`'s `dropbear`, and
#     the modules a virtio-blk ext4 root and virtio-net need (virtio_mmio, virtio_blk, virtio_net, ext4,
#     crc32c); also `kernel8.img`, the kernel gzip'd as Raspberry Pi OS ships it (U-Boot's booti
#     inflates it), so the test image stays small.
#
# Sources, all Debian arm64 packages fetched with `apt-get download` through the test kernel's private
# apt state (.cache/kernel/apt, under that script's lock, so the lists and so the kernel version are
# the same): `busybox-static` (sh, insmod, ip, udhcpc, mount, switch_root, tftp — it has no nbd-client
# applet), the program's package and the shared libraries its ELF NEEDED entries name (the candidates
# come from its library Depends, followed recursively; every NEEDED name must be found), the dynamic
# loader from libc6, and from the test kernel's own linux-image package the modules named above with
# their dependencies (each module's .modinfo `depends=`). The kernel is built with
# CONFIG_MODULE_COMPRESS_NONE: the .ko files are plain ELF, which busybox insmod loads as they are; a
# compressed one is unpacked here.
#
# Output: .cache/netboot-os/ (or .cache/ota-os/) <kernel version>-<key>/ (key: a hash of every package
# version and of this script's output layout), holding
#   Image           the test kernel (a hard link of scripts/prepare-test-kernel.sh's)
#   kernel8.img     (ota only) Image, gzip'd
#   kernel-release  the modules' folder name, e.g. 6.1.0-57-arm64
#   modules.load    the modules to insmod, in load order, as paths inside rootfs/
#   versions        one `package version` line per package used
#   rootfs/         bin/busybox, the program (sbin/nbd-client, or usr/sbin/dropbear),
#                   lib/ld-linux-aarch64.so.1 (a symlink) and lib/aarch64-linux-gnu/ (the loader and
#                   the libraries), lib/modules/<release>/…
# stdout carries exactly one line, the folder's path; progress goes to stderr.
#
# Usage: bash scripts/prepare-netboot-os.sh [--os netboot|ota] [--cached-only] [--refresh]
#   --os NAME      which test OS (netboot by default)
#   --cached-only  never download: print the newest prepared folder, else exit 3
#   --refresh      refresh the private apt lists (passed to the kernel script)
set -euo pipefail

CACHED_ONLY=0
KERNEL_ARGS=()
OS=netboot
expect_os=0
for arg in "$@"; do
  if [[ $expect_os == 1 ]]; then OS="$arg"; expect_os=0; continue; fi
  case "$arg" in
    --os) expect_os=1 ;;
    --os=*) OS="${arg#--os=}" ;;
    --cached-only) CACHED_ONLY=1 ;;
    --refresh) KERNEL_ARGS+=(--refresh) ;;
    -h|--help) sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "prepare-netboot-os: unknown argument: $arg" >&2; exit 2 ;;
  esac
done
[[ $expect_os == 0 ]] || { echo "prepare-netboot-os: --os needs a name (netboot, ota)" >&2; exit 2; }

say() { echo "prepare-$OS-os: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Per test OS: what the folder holds (LAYOUT: bump it when the layout or the module list changes, so
# old caches are not reused), the program and its package, the modules by name (their dependencies
# are added from their .modinfo). QEMU virt's NIC and disk are virtio over MMIO (all three modules in
# Debian's config); ext4 asks the crypto API for "crc32c" by name (request_module would need a
# modprobe), so crc32c_generic is loaded before it.
case "$OS" in
  netboot)
    # sdhci_pci: QEMU's SD card (sdhci-pci), for an image flashed by netflash and booted from its card.
    LAYOUT=2
    PROGRAM_PKG=nbd-client
    PROGRAM=sbin/nbd-client
    ROOT_MODULES=(virtio_mmio virtio_net nbd sdhci_pci crc32c_generic ext4)
    GZIP_KERNEL=0
    ;;
  ota)
    LAYOUT=1
    PROGRAM_PKG=dropbear-bin
    PROGRAM=usr/sbin/dropbear
    ROOT_MODULES=(virtio_mmio virtio_blk virtio_net crc32c_generic ext4)
    GZIP_KERNEL=1
    ;;
  *) echo "prepare-netboot-os: unknown test OS: $OS (netboot, ota)" >&2; exit 2 ;;
esac
PROGRAM_NAME="${PROGRAM##*/}"
CACHE="$REPO_ROOT/.cache/$OS-os"
KERNEL_CACHE="$REPO_ROOT/.cache/kernel"
mkdir -p "$CACHE"

if [[ $CACHED_ONLY == 1 ]]; then
  # The newest complete folder (modules.load is written last, and the folder is published whole).
  while IFS= read -r dir; do
    if [[ -s "$dir/modules.load" && -s "$dir/Image" ]]; then echo "${dir%/}"; exit 0; fi
  done < <(ls -1dt "$CACHE"/*/ 2>/dev/null)
  say "nothing prepared yet; run: bash scripts/prepare-$OS-os.sh"
  exit 3
fi

# One preparation at a time: several test files may ask at once.
exec 9>"$CACHE/.lock"
flock 9

# The kernel first (it refreshes the lists when they are old): the modules must come from its package.
IMAGE="$(bash "$REPO_ROOT/scripts/prepare-test-kernel.sh" "${KERNEL_ARGS[@]}")"
read -r KPKG KVERSION <"$(dirname "$IMAGE")/version" || die "no version file beside $IMAGE"

# The kernel's apt state, read only, under its lock (its script may be refreshing the lists).
exec 8>"$KERNEL_CACHE/.lock"
flock 8
source "$REPO_ROOT/scripts/lib/private-apt.sh"
private_apt_init "$KERNEL_CACHE/apt" "deb [arch=arm64]" arm64
private_apt_lists_present '*Packages*' || die "no package lists in $KERNEL_CACHE/apt"

# The program's library packages, followed through their Depends one level per apt-cache call (each
# call parses the lists: about a second). Only library names (lib*, and zlib1g, which dropbear
# needs): debconf and the like bring no library the program loads; the NEEDED check below proves
# nothing is missing.
declare -A SEEN=(["$PROGRAM_PKG"]=1)
LEVEL=("$PROGRAM_PKG")
LIBPKGS=()
while ((${#LEVEL[@]})); do
  NEXT=()
  while read -r dep; do
    [[ ($dep == lib* || $dep == zlib1g) && -z ${SEEN[$dep]:-} ]] || continue
    SEEN[$dep]=1
    NEXT+=("$dep")
    LIBPKGS+=("$dep")
  done < <(apt-cache "${APT_OPTS[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances "${LEVEL[@]}" 2>/dev/null |
    sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: \([^ <>]*\)$/\2/p')
  LEVEL=("${NEXT[@]}")
done

PACKAGES=("$KPKG" busybox-static "$PROGRAM_PKG" "${LIBPKGS[@]}")
# The candidate version of each, from one `apt-cache policy` (the kernel's is the kernel script's).
declare -A VERSIONS=(["$KPKG"]=$KVERSION)
while read -r pkg v; do VERSIONS[$pkg]=$v; done < <(apt-cache "${APT_OPTS[@]}" policy "${PACKAGES[@]:1}" 2>/dev/null |
  awk '/^[^ ].*:$/ { sub(/:$/, ""); p = $0 } /^  Candidate:/ { print p, $2 }')
VERSION_LINES=""
for pkg in "${PACKAGES[@]}"; do
  v=${VERSIONS[$pkg]:-}
  [[ -n $v && $v != "(none)" ]] || die "no version of $pkg in the lists"
  VERSION_LINES+="$pkg $v"$'\n'
done
KEY="$(printf 'layout %s\n%s' "$LAYOUT" "$(sort <<<"$VERSION_LINES")" | sha256sum | cut -c1-12)"
OUT="$CACHE/$KVERSION-$KEY"
if [[ -s "$OUT/modules.load" ]]; then
  say "reusing $OUT"
  echo "$OUT"
  exit 0
fi

WORK="$(mktemp -d "$CACHE/.work.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/debs" "$WORK/x" "$WORK/out/rootfs/bin" "$WORK/out/rootfs/$(dirname "$PROGRAM")" \
  "$WORK/out/rootfs/lib/aarch64-linux-gnu"
say "downloading ${PACKAGES[*]} (arm64)"
SPECS=()
for pkg in "${PACKAGES[@]}"; do SPECS+=("$pkg:arm64=${VERSIONS[$pkg]}"); done
(cd "$WORK/debs" && apt-get "${APT_OPTS[@]}" -qq download "${SPECS[@]}" >&2)
flock -u 8
deb_of() { ls "$WORK"/debs/"$1"_*.deb; }

# busybox and the program with its libraries, unpacked side by side.
for pkg in busybox-static "$PROGRAM_PKG" "${LIBPKGS[@]}"; do dpkg-deb -x "$(deb_of "$pkg")" "$WORK/x"; done
install -m 0755 "$WORK/x/bin/busybox" "$WORK/out/rootfs/bin/busybox"
[[ -f "$WORK/x/$PROGRAM" ]] || die "$PROGRAM_PKG holds no /$PROGRAM"
install -m 0755 "$WORK/x/$PROGRAM" "$WORK/out/rootfs/$PROGRAM"

ARCH_LIB="lib/aarch64-linux-gnu"
find_lib() {
  local dir
  for dir in "$WORK/x/$ARCH_LIB" "$WORK/x/usr/$ARCH_LIB" "$WORK/x/lib" "$WORK/x/usr/lib"; do
    if [[ -e "$dir/$1" ]]; then echo "$dir/$1"; return 0; fi
  done
  return 1
}
needed_of() { aarch64-linux-gnu-readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'; }

INTERP="$(aarch64-linux-gnu-readelf -l "$WORK/out/rootfs/$PROGRAM" |
  sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p')"
[[ $INTERP == /lib/ld-linux-aarch64.so.1 ]] ||
  die "$PROGRAM_NAME asks for the loader $INTERP, not /lib/ld-linux-aarch64.so.1"
LOADER="$(find_lib ld-linux-aarch64.so.1)" || die "libc6 holds no ld-linux-aarch64.so.1"
cp -L "$LOADER" "$WORK/out/rootfs/$ARCH_LIB/ld-linux-aarch64.so.1"
ln -s aarch64-linux-gnu/ld-linux-aarch64.so.1 "$WORK/out/rootfs/lib/ld-linux-aarch64.so.1"

# Every NEEDED name of the program and of each library it brings, copied under its soname.
declare -A HAVE=([ld-linux-aarch64.so.1]=1)
PENDING=("$WORK/out/rootfs/$PROGRAM")
while ((${#PENDING[@]})); do
  elf=${PENDING[0]}
  PENDING=("${PENDING[@]:1}")
  while read -r soname; do
    [[ -n $soname && -z ${HAVE[$soname]:-} ]] || continue
    src="$(find_lib "$soname")" || die "$(basename "$elf") needs $soname, which none of ${LIBPKGS[*]} holds"
    cp -L "$src" "$WORK/out/rootfs/$ARCH_LIB/$soname"
    HAVE[$soname]=1
    PENDING+=("$WORK/out/rootfs/$ARCH_LIB/$soname")
  done < <(needed_of "$elf")
done
say "$PROGRAM_NAME needs: ${!HAVE[*]}"

# The kernel's modules. The package ships no modules.dep (depmod writes it at install time, and kmod
# is not needed here): each module's own `depends=` in its .modinfo section names what must load
# before it, and modules.order maps a name to its path.
KDEB="$(deb_of "$KPKG")"
dpkg-deb --fsys-tarfile "$KDEB" | tar -x -C "$WORK/x" --wildcards './lib/modules/*/kernel/*' \
  './lib/modules/*/modules.order' './lib/modules/*/modules.builtin'
ORDERFILE="$(ls "$WORK"/x/lib/modules/*/modules.order)"
KDIR="$(dirname "$ORDERFILE")"
KRELEASE="$(basename "$KDIR")"
# Module names treat - and _ alike: name → path (modules.order), and the names built in.
declare -A MODULE_PATH=() BUILTIN=()
while read -r path; do
  base="${path##*/}"
  base="${base%%.ko*}"
  MODULE_PATH[${base//-/_}]=$path
done <"$ORDERFILE"
while read -r path; do
  base="${path##*/}"
  base="${base%%.ko*}"
  BUILTIN[${base//-/_}]=1
done <"$KDIR/modules.builtin"
modinfo_depends() {
  local raw="$WORK/modinfo.bin"
  case "$1" in
    *.ko) cp "$1" "$WORK/module.ko" ;;
    *.ko.xz) xz -dc "$1" >"$WORK/module.ko" ;;
    *.ko.zst) zstd -qdc "$1" >"$WORK/module.ko" ;;
    *.ko.gz) gzip -dc "$1" >"$WORK/module.ko" ;;
    *) die "module $1: unknown compression" ;;
  esac
  aarch64-linux-gnu-objcopy -O binary -j .modinfo "$WORK/module.ko" "$raw"
  tr '\0' '\n' <"$raw" | sed -n 's/^depends=//p' | tr ',' '\n' | grep . || true
}
declare -A LOADED=()
ORDER=()
visit() {
  local name=${1//-/_} path dep
  path=${MODULE_PATH[$name]:-}
  if [[ -z $path ]]; then
    [[ -n ${BUILTIN[$name]:-} ]] && { say "$name is built into the kernel"; return 0; }
    die "$KPKG has no module $name (see $(dirname "$IMAGE")/config)"
  fi
  [[ -z ${LOADED[$path]:-} ]] || return 0
  LOADED[$path]=visiting
  for dep in $(modinfo_depends "$KDIR/$path"); do visit "$dep"; done
  LOADED[$path]=1
  ORDER+=("$path")
}
for m in "${ROOT_MODULES[@]}"; do visit "$m"; done
: >"$WORK/out/modules.load.tmp"
for p in "${ORDER[@]}"; do
  src="$KDIR/$p"
  dest="lib/modules/$KRELEASE/${p%%.ko*}.ko"
  mkdir -p "$(dirname "$WORK/out/rootfs/$dest")"
  case "$p" in
    *.ko) cp "$src" "$WORK/out/rootfs/$dest" ;;
    *.ko.xz) xz -dc "$src" >"$WORK/out/rootfs/$dest" ;;
    *.ko.zst) zstd -qdc "$src" >"$WORK/out/rootfs/$dest" ;;
    *.ko.gz) gzip -dc "$src" >"$WORK/out/rootfs/$dest" ;;
    *) die "module $p: unknown compression" ;;
  esac
  echo "$dest" >>"$WORK/out/modules.load.tmp"
done
say "modules in load order: $(xargs -n1 basename <"$WORK/out/modules.load.tmp" | tr '\n' ' ')"

ln "$IMAGE" "$WORK/out/Image" 2>/dev/null || cp "$IMAGE" "$WORK/out/Image"
if [[ $GZIP_KERNEL == 1 ]]; then
  say "gzip'ing the kernel into kernel8.img"
  gzip -9 -n -c "$IMAGE" >"$WORK/out/kernel8.img"
fi
echo "$KRELEASE" >"$WORK/out/kernel-release"
printf '%s' "$VERSION_LINES" >"$WORK/out/versions"
mv "$WORK/out/modules.load.tmp" "$WORK/out/modules.load"
rm -rf "$OUT"
mv "$WORK/out" "$OUT"
say "wrote $OUT ($(du -sh "$OUT/rootfs" | cut -f1) in rootfs/)"
echo "$OUT"
