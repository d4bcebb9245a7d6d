/**
 * The in-place update's pure parts: the targets' SSH columns, the board probe's parser held to a
 * recorded Raspberry Pi OS output, the OTA beacon grammar, and the switch script (busybox ash
 * must parse it, and it names every part with its CRC in stage 2's report grammar).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { boardProblems, parseBoardProbe, ramDir, rootDevice } from '../../runner-agent/src/board/ota-probe.js';
import { parseOtaBeacon } from '../../runner-agent/src/board/ota-beacons.js';
import { generateOtaSwitchScript } from '../../runner-agent/src/board/ota-switch-script.js';
import { parseResetSpec, parseTargets } from '../../runner-agent/src/targets/database.js';
import { parseHostKeyPin, sha256Fingerprint } from '../../runner-agent/src/targets/ssh-access.js';

const KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl';

/** Recorded on a Pi 4 with Raspberry Pi OS bookworm (trimmed). */
const PI_PROBE = `@@rpf-arch
aarch64
@@rpf-uid
1000
@@rpf-sudo
yes
@@rpf-meminfo
MemTotal:        3885396 kB
MemFree:         3411016 kB
MemAvailable:    3601232 kB
Cached:           260412 kB
@@rpf-mountinfo
22 1 179:2 / / rw,noatime shared:1 - ext4 /dev/mmcblk0p2 rw
23 22 0:5 / /dev rw,relatime shared:2 - devtmpfs udev rw,size=1694164k,nr_inodes=423541,mode=755
24 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
26 22 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=777080k,mode=755
31 23 0:26 / /dev/shm rw,nosuid,nodev shared:3 - tmpfs tmpfs rw
40 22 179:1 / /boot/firmware rw,relatime shared:25 - vfat /dev/mmcblk0p1 rw
@@rpf-cmdline
console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 fsck.repair=yes rootwait
@@rpf-ssh
192.168.7.1 51234 192.168.7.23 22
@@rpf-init
systemd
@@rpf-block
mmcblk0 179:0 disk block
mmcblk0p1 179:1 part mmcblk0
mmcblk0p2 179:2 part mmcblk0
@@rpf-end
`;

describe('targets: the ssh columns and reset kinds', () => {
  const header = 'name,mac,ip,reset,layout,ssh,sshkey,hostkey';
  it("reads an ota row: user and port, the key file against the file's folder, the pinned key", () => {
    const [t] = parseTargets(
      `${header}\npi,02:00:00:00:00:01,10.0.0.5,none,ota,pi:2222,keys/id,${KEY}\n`,
      '/lab/t.csv',
    );
    expect(t!.reset).toEqual({ kind: 'none' });
    expect(t!.ssh).toMatchObject({ user: 'pi', port: 2222, keyFile: '/lab/keys/id', hostKey: { kind: 'key' } });
  });
  it('refuses an ota row without the ssh columns, naming the row', () => {
    expect(() => parseTargets(`${header}\npi,02:00:00:00:00:01,10.0.0.5,none,ota,,,\n`, 't.csv')).toThrow(
      /t\.csv:2: layout ota needs the column\(s\) ssh, sshkey, hostkey/,
    );
  });
  it('parses ssh and ssh,<hard spec> resets', () => {
    expect(parseResetSpec('ssh')).toEqual({ kind: 'ssh' });
    expect(parseResetSpec('ssh,gpio:17')).toEqual({ kind: 'ssh', fallback: { kind: 'gpio', bcm: 17 } });
    expect(() => parseResetSpec('ssh,none')).toThrow(/hard reset/);
  });
  it('takes a fingerprint pin and refuses a key of the wrong type', () => {
    const pin = parseHostKeyPin(KEY);
    const fp = sha256Fingerprint((pin as { blob: Buffer }).blob);
    expect(parseHostKeyPin(fp)).toEqual({ kind: 'sha256', fingerprint: fp.slice(7) });
    expect(() => parseHostKeyPin(KEY.replace('ssh-ed25519', 'ssh-rsa'))).toThrow(/not a ssh-rsa key/);
  });
});

describe('the board probe', () => {
  it('reads a Pi: whole disk, RAM dir, free RAM, sudo, the agent address', () => {
    const p = parseBoardProbe(PI_PROBE);
    expect(rootDevice(p)).toEqual({ partition: '/dev/mmcblk0p2', disk: '/dev/mmcblk0', fsType: 'ext4' });
    expect(ramDir(p)).toBe('/run');
    expect(p).toMatchObject({ machine: 'aarch64', uid: 1000, sudo: true, sshClientAddress: '192.168.7.1' });
    expect(p.memAvailable).toBe(3601232 * 1024);
    expect(boardProblems(p, { ramBytes: 100 << 20, busyboxArches: ['arm64'] })).toEqual([]);
  });
  it('refuses too little RAM, a missing busybox and a user without sudo, all at once', () => {
    const p = parseBoardProbe(
      PI_PROBE.replace('MemAvailable:    3601232', 'MemAvailable:      30000').replace('\nyes\n', '\nno\n'),
    );
    const problems = boardProblems(p, { ramBytes: 100 << 20, busyboxArches: [] });
    expect(problems.join('\n')).toMatch(/not enough free RAM: 29\.3 MiB available, the RAM system needs 100\.0 MiB/);
    expect(problems.join('\n')).toMatch(/no static busybox for "aarch64"/);
    expect(problems.join('\n')).toMatch(/cannot run "sudo -n"/);
  });
  it('refuses a root on NFS and a truncated probe', () => {
    const nfs = PI_PROBE.replace('ext4 /dev/mmcblk0p2', 'nfs 10.0.0.1:/srv/root');
    expect(rootDevice(parseBoardProbe(nfs))).toMatch(/root file system is nfs/);
    expect(
      boardProblems(parseBoardProbe(PI_PROBE.replace('@@rpf-end\n', '')), { ramBytes: 1, busyboxArches: ['arm64'] }),
    ).toContain('the probe did not run to its end (is the login shell a POSIX sh?)');
  });
});

describe('OTA beacons and the switch script', () => {
  it("parses the switch reports and stage 2's part reports", () => {
    expect(parseOtaBeacon('switched-frozen')).toEqual({ kind: 'switched', oldRoot: 'frozen' });
    expect(parseOtaBeacon('stopped')).toEqual({ kind: 'stopped' });
    expect(parseOtaBeacon('switch-failed-pivot')).toEqual({ kind: 'switch-failed', step: 'pivot' });
    expect(parseOtaBeacon('part-2-retry-1-crc-dead')).toMatchObject({ kind: 'part-retry', part: 2, reason: 'crc' });
    expect(parseOtaBeacon('caps-unzip')).toBeNull();
  });
  it('is valid busybox ash and carries every part with its CRC', () => {
    const script = generateOtaSwitchScript({
      jobId: 'abc123',
      root: '/run/rpi-flash-abc123',
      disk: '/dev/mmcblk0',
      server: '192.168.7.1',
      port: 69,
      blockSize: 1468,
      retries: 2,
      reportPrefix: '02-00-00-00-00-01/abc123/0123456789abcdef/',
      parts: [
        { index: 1, file: '02-00-00-00-00-01/abc123/part-001', imageOffset: 0, servedSize: 1024, crc32: 0x0a },
        { index: 2, file: '02-00-00-00-00-01/abc123/part-002', imageOffset: 8192, servedSize: 512, crc32: 0xffffffff },
      ],
    });
    const file = path.join(mkdtempSync(path.join(os.tmpdir(), 'rpf-ota-')), 'switch.sh');
    writeFileSync(file, script);
    execFileSync('busybox', ['sh', '-n', file]);
    expect(script).toContain("write_part 1 '02-00-00-00-00-01/abc123/part-001' 0 1024 a ");
    expect(script).toContain("write_part 2 '02-00-00-00-00-01/abc123/part-002' 8192 512 ffffffff ");
    expect(script).toMatch(/pivot_root \. old/);
    expect(script).toMatch(/reboot -n -f/);
    expect(() =>
      generateOtaSwitchScript({
        ...{
          jobId: 'x',
          root: '/run/a b',
          disk: '/dev/x',
          server: '1.2.3.4',
          port: 69,
          blockSize: 512,
          retries: 0,
          reportPrefix: 'a/',
          parts: [],
        },
      }),
    ).toThrow(/plain absolute path/);
  });
});
