/**
 * The in-place update's script (layout `ota`): what the board runs, detached from the SSH session
 * that started it, to leave its running system for a RAM one and write its own disk from there —
 * OpenWrt's sysupgrade sequence (DESIGN §9), for busybox ash with the agent's static busybox only:
 *
 * 1. Report `start` (a TFTP beacon). Unanswered — the job was cancelled or the agent is gone — it
 *    detaches the RAM root and exits: nothing was killed, nothing written.
 * 2. Stop the other processes: KILL at once for the network managers (dhcpcd and friends
 *    deconfigure the interface on TERM, and the board needs its address to fetch the parts),
 *    then TERM, then KILL, sparing PID 1, kernel threads (PID 2 and its children), itself and its
 *    own children, and wpa_supplicant (killing it drops a Wi-Fi board off the network). Report
 *    `stopped` (an unanswered one changes nothing: the pivot's report decides).
 * 3. Move /proc into the RAM root (a tmpfs the agent mounted and filled over SSH), pivot_root into
 *    it, move /sys and /dev over, stop what PID 1 restarted meanwhile, unmount what lies under the
 *    old root (deepest first, lazily when busy), remount the old root read-only and detach it — or,
 *    when it stays busy, freeze it (fsfreeze: it writes nothing more). Report `switched-ro|frozen`.
 *    A failed step reports `switch-failed-<step>` and reboots: the old system is still whole.
 * 4. Per part: fetch it over TFTP into RAM, check its size and CRC32 (busybox's `crc32` applet:
 *    zlib's CRC, the one the agent computes), retry as stage 2 does, write it with `dd` at its byte
 *    offset (fsync'd), drop the disk's cached pages, read it back and check the CRC again; report
 *    each step in stage 2's grammar (beacons.ts).
 * 5. Report `done-ok` or `done-failed`, then `reboot -n -f` (no sync: a frozen old root would
 *    block it; every part was fsync'd), sysrq `b` if that returns. A failure reboots too: into the
 *    untouched old system when nothing was written, else into the partly written card.
 *
 * `dryRun` (tests only) leaves out steps 2, 3 and the reboot, so the transfer, checks and writes
 * run against a plain file on the test machine; the script is otherwise the same.
 */
import { beaconText } from './beacons.js';
import { otaBeaconText } from './ota-beacons.js';

export interface OtaSwitchPart {
  index: number;
  /** TFTP path from the server's root (`<macdir>/<job>/part-001`). */
  file: string;
  imageOffset: number;
  /** Bytes served and written: the part padded to whole sectors. */
  servedSize: number;
  /** CRC32 of those bytes. */
  crc32: number;
}

export interface OtaSwitchOptions {
  jobId: string;
  /** The RAM root: a tmpfs mount point the agent made, holding `bin/busybox` and this script. */
  root: string;
  /** The whole disk to write (`/dev/mmcblk0`), or a file with `dryRun`. */
  disk: string;
  /** The agent's TFTP server as the board reaches it. */
  server: string;
  port: number;
  blockSize: number;
  /** Extra attempts per part after a failed download or CRC. */
  retries: number;
  /** TFTP path prefix of every report (`<macdir>/<job>/<secret>/`), from reportPrefix(). */
  reportPrefix: string;
  parts: readonly OtaSwitchPart[];
  /** Tests only: no killing, no pivot, no reboot. */
  dryRun?: boolean;
}

/** The script's log inside the RAM root (it stays in RAM: the board keeps it until it reboots). */
export const SWITCH_LOG = 'rpi-flash.log';
export const SWITCH_SCRIPT = 'switch.sh';

/** Processes that must die at once (TERM makes them take the address down) or not at all. */
const NETWORK_MANAGERS = ['dhcpcd', 'NetworkManager', 'systemd-network', 'connmand', 'udhcpc', 'dhclient'];
const SPARED = ['wpa_supplicant'];

const SAFE_PATH = /^\/[A-Za-z0-9._/-]+$/;
const SAFE_TFTP = /^[A-Za-z0-9._/-]+$/;

/** Single-quoted for sh. */
function q(text: string): string {
  return `'${text.replaceAll("'", `'\\''`)}'`;
}

function check(o: OtaSwitchOptions): void {
  for (const [what, p] of [
    ['root', o.root],
    ['disk', o.disk],
  ] as const)
    if (!SAFE_PATH.test(p)) throw new RangeError(`ota script: ${what} "${p}" is not a plain absolute path`);
  if (!/^[0-9.]+$|^[0-9a-f:]+$/i.test(o.server)) throw new RangeError(`ota script: server "${o.server}" is no IP`);
  if (!SAFE_TFTP.test(o.reportPrefix)) throw new RangeError('ota script: odd report prefix');
  if (!o.parts.length) throw new RangeError('ota script: no parts');
  for (const p of o.parts)
    if (!SAFE_TFTP.test(p.file) || !Number.isSafeInteger(p.imageOffset) || !Number.isSafeInteger(p.servedSize))
      throw new RangeError(`ota script: odd part ${p.index}`);
}

export function generateOtaSwitchScript(o: OtaSwitchOptions): string {
  check(o);
  const dry = o.dryRun === true;
  const parts = o.parts
    .map(
      (p) =>
        `[ "$OK" = 1 ] && { write_part ${p.index} ${q(p.file)} ${p.imageOffset} ${p.servedSize} ` +
        `${p.crc32.toString(16)} || OK=0; }`,
    )
    .join('\n');
  const start = beaconText.start();
  return `#!/bin/sh
# rpi-flash in-place update, job ${o.jobId} (generated by the agent: board/ota-switch-script.ts).
# Runs detached from the SSH session that started it; needs nothing of the board but its kernel.
R=${q(o.root)}
BB="$R/bin/busybox"
LOG="$R/${SWITCH_LOG}"
T="$R/tmp"
DISK=${q(o.disk)}
SERVER=${q(o.server)}
PORT=${o.port}
BLK=${o.blockSize}
RETRIES=${o.retries}
REPORT=${q(o.reportPrefix)}
DRY=${dry ? 1 : 0}
OK=1

# Each line with the board's uptime (a builtin read: no fork), so the log shows where the time went.
say() {
  up=
  read -r up _ </proc/uptime 2>/dev/null
  echo "rpi-flash: [\${up:-?}] $*" >>"$LOG"
  [ "$DRY" = 1 ] || echo "rpi-flash: [\${up:-?}] $*" >/dev/console 2>/dev/null
}

# A report is a TFTP read of a name under the job's secret prefix; three tries.
beacon() {
  b=0
  while [ $b -lt 3 ]; do
    "$BB" tftp -g -r "$REPORT$1" -l /dev/null "$SERVER" "$PORT" >/dev/null 2>&1 && return 0
    b=$((b + 1))
    "$BB" sleep 1
  done
  say "report $1: no answer from $SERVER:$PORT"
  return 1
}

reboot_now() {
  say "rebooting"
  [ "$DRY" = 1 ] && exit 0
  "$BB" reboot -n -f
  "$BB" sleep 5
  echo b >/proc/sysrq-trigger
  exit 1
}

# Every process but PID 1, kernel threads, this script and its children; $1: signal, $2: only these names.
signal_others() {
  sig=$1
  only=\${2:-}
  for p in /proc/[0-9]*; do
    pid=\${p#/proc/}
    case $pid in 1 | 2 | $$) continue ;; esac
    # Shell builtins only: a fork per process made this loop take 20 s on a slow board.
    read -r st <"$p/stat" 2>/dev/null || continue
    comm=\${st#*(}
    comm=\${comm%)*}
    rest=\${st##*) }
    ppid=\${rest#* }
    ppid=\${ppid%% *}
    case $ppid in 0 | 2 | $$) continue ;; esac
    case " ${SPARED.join(' ')} " in *" $comm "*) continue ;; esac
    if [ -n "$only" ]; then
      case " $only " in *" $comm "*) ;; *) continue ;; esac
    fi
    "$BB" kill -"$sig" "$pid" 2>/dev/null
  done
}

crc_of() {
  c=$("$BB" crc32 "$@" 2>/dev/null) || c=
  c=\${c%% *}
  printf '%x' "0x\${c:-0}"
}

flush_disk() {
  "$BB" blockdev --flushbufs "$DISK" 2>/dev/null
  [ "$DRY" = 1 ] || echo 3 >/proc/sys/vm/drop_caches 2>/dev/null
}

# write_part <n> <tftp file> <offset> <size> <crc>
write_part() {
  n=$1 file=$2 off=$3 size=$4 want=$5 a=1
  while :; do
    "$BB" rm -f "$T/part"
    why=
    if "$BB" tftp -g -r "$file" -l "$T/part" -b "$BLK" "$SERVER" "$PORT" 2>>"$LOG"; then
      got=$("$BB" stat -c %s "$T/part" 2>/dev/null)
      if [ "$got" = "$size" ]; then
        crc=$(crc_of "$T/part")
        [ "$crc" = "$want" ] || why=crc-$crc
      else
        why=download
      fi
    else
      why=download
    fi
    [ -z "$why" ] && break
    if [ $a -gt "$RETRIES" ]; then
      say "part $n: failed ($why), no attempts left"
      case $why in
        crc-*) beacon "${beaconText.partFailed('$n', beaconText.failedWithCrc('download', '${why#crc-}'))}" ;;
        *) beacon "${beaconText.partFailed('$n', 'download')}" ;;
      esac
      return 1
    fi
    say "part $n: attempt $a failed ($why)"
    beacon "${beaconText.partRetry('$n', '$a', '$why')}"
    a=$((a + 1))
    "$BB" sleep 2
  done
  if ! "$BB" dd if="$T/part" of="$DISK" bs=1M seek="$off" oflag=seek_bytes conv=notrunc,fsync 2>>"$LOG"; then
    beacon "${beaconText.partFailed('$n', 'write')}"
    return 1
  fi
  "$BB" rm -f "$T/part"
  flush_disk
  crc=$("$BB" dd if="$DISK" bs=1M skip="$off" count="$size" iflag=skip_bytes,count_bytes 2>>"$LOG" | "$BB" crc32)
  crc=$(printf '%x' "0x\${crc%% *}")
  if [ "$crc" != "$want" ]; then
    say "part $n: read back CRC $crc, expected $want"
    beacon "${beaconText.partFailed('$n', beaconText.failedWithCrc('verify', '$crc'))}"
    return 1
  fi
  say "part $n: written and read back"
  beacon "${beaconText.partOk('$n', '$crc')}"
}

say "job ${o.jobId}: in-place update of $DISK from $SERVER:$PORT"
if ! beacon ${start}; then
  say "the agent does not answer: nothing touched, leaving"
  [ "$DRY" = 1 ] || "$BB" umount -l "$R" 2>/dev/null
  exit 1
fi
"$BB" mkdir -p "$T"

if [ "$DRY" != 1 ]; then
  say "stopping every other process"
  signal_others KILL ${q(NETWORK_MANAGERS.join(' '))}
  signal_others TERM
  "$BB" sleep 2
  signal_others KILL
  "$BB" sleep 1
  beacon ${otaBeaconText.stopped()}

  say "switching to the RAM system"
  "$BB" mount --make-rprivate / 2>>"$LOG"
  "$BB" mkdir -p "$R/old" "$R/proc" "$R/sys" "$R/dev"
  if ! { "$BB" mount -o move /proc "$R/proc" && cd "$R" && "$BB" pivot_root . old; } 2>>"$LOG"; then
    say "pivot_root failed"
    beacon ${otaBeaconText.switchFailed('pivot')}
    reboot_now
  fi
  cd /
  BB=/bin/busybox
  LOG=/${SWITCH_LOG}
  T=/tmp
  "$BB" mount -o move /old/sys /sys 2>>"$LOG"
  "$BB" mount -o move /old/dev /dev 2>>"$LOG"
  # What PID 1 restarted since holds the old root: stop it again.
  signal_others KILL
  for mp in $("$BB" awk '$2 ~ "^/old/" { print $2 }' /proc/mounts | "$BB" sort -r); do
    "$BB" umount "$mp" 2>/dev/null || "$BB" umount -l "$mp" 2>>"$LOG"
  done
  if "$BB" mount -o remount,ro /old 2>>"$LOG"; then
    OLD=ro
    "$BB" umount -l /old 2>>"$LOG"
  elif "$BB" fsfreeze -f /old 2>>"$LOG"; then
    OLD=frozen
  else
    say "the old root can be neither remounted read-only nor frozen"
    beacon ${otaBeaconText.switchFailed('remount')}
    reboot_now
  fi
else
  OLD=ro
fi
say "running from RAM; the old root is $OLD"
beacon switched-$OLD

${parts}
if [ "$OK" = 1 ]; then
  say "every part written and verified"
  beacon ${beaconText.done(true)}
else
  beacon ${beaconText.done(false)}
fi
reboot_now
`;
}
