#!/bin/sh
# usage: overlay-root.sh DIR COMMAND [ARG…]
#
# Runs COMMAND with $ROOT set to a root file system that is this machine's /usr, /etc and /var seen
# through overlays: what a package installed there writes lands in DIR/upper and persists from one
# call to the next, the machine's own files stay as they are. /dev and /proc are the machine's,
# /run and /tmp empty (no /run/systemd/system: maintainer scripts see a chroot, not a booted
# system). Must run as root in a private mount namespace, which it asserts:
#   unshare --mount --propagation private sh overlay-root.sh DIR …
# so the mounts end with COMMAND.
set -eu
dir=$1
shift
if [ "$(id -u)" != 0 ]; then
  echo "overlay-root.sh: needs root (in a private mount namespace)" >&2
  exit 2
fi
if [ "$(readlink /proc/self/ns/mnt)" = "$(readlink /proc/1/ns/mnt)" ]; then
  echo "overlay-root.sh: run it under unshare --mount, not in the machine's own mount namespace" >&2
  exit 2
fi
ROOT=$dir/root
for d in usr etc var; do
  mkdir -p "$dir/upper/$d" "$dir/work/$d" "$ROOT/$d"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$dir/upper/$d,workdir=$dir/work/$d" "$ROOT/$d"
done
# Merged /usr: /bin, /lib… are links into usr/; on a system without it, read-only views of the real ones.
for d in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$d" ]; then
    ln -sfn "$(readlink "/$d")" "$ROOT/$d"
  elif [ -d "/$d" ]; then
    mkdir -p "$ROOT/$d"
    mount --bind "/$d" "$ROOT/$d"
    mount -o remount,bind,ro "$ROOT/$d"
  fi
done
mkdir -p "$ROOT/dev" "$ROOT/proc" "$ROOT/run" "$ROOT/tmp"
mount --rbind /dev "$ROOT/dev"
mount --rbind /proc "$ROOT/proc"
mount -t tmpfs tmpfs "$ROOT/run"
mount -t tmpfs -o mode=1777 tmpfs "$ROOT/tmp"
export ROOT
exec "$@"
