/**
 * Issue 5, items 1 and 3 on a real U-Boot under QEMU: stage 1 (uboot/boot.cmd, loaded from the
 * card's boot partition like a Pi's distro boot does) gets an address, asks the project's TFTP
 * server for `<macdir>/flash.scr`, and without a job boots the installed system — a real Debian
 * arm64 kernel and an initramfs whose /init prints a marker unique to this image build.
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildScriptImage } from '../../runner-agent/src/board/uimage.js';
import { FLASH_SCRIPT, macDir } from '../../src/protocol/tftp-names.js';
import {
  DHCP_ONLY_ENV,
  INIT_BANNER,
  bootFromCard,
  buildDiskImage,
  buildTestOsImage,
  newMarker,
  stage1ScriptImage,
  testKernelGate,
  PREPARE_KERNEL_TIMEOUT_MS,
} from './os-image.js';
import { killAllQemuBoards } from './qemu-board.js';
import { BUILD_TIMEOUT_MS, qemuTestGate } from './test-uboot.js';

const uboot = await qemuTestGate('stage 1 boots the installed system (real U-Boot + Linux under QEMU)');
const kernelGate = await testKernelGate();
const run = uboot.run && kernelGate.run;
const title = uboot.run && !kernelGate.run ? `${uboot.title} (skipped: ${kernelGate.reason})` : uboot.title;

const MAC = '52:54:00:b0:07:01';
/** Boot of U-Boot + stage 1 + a 33 MB kernel under TCG on 2 busy cores. */
const BOOT_TIMEOUT_MS = 120_000;

describe.skipIf(!run)(title, () => {
  let ubootBin = '';
  let kernel: Buffer = Buffer.alloc(0);
  let workDir = '';
  let stage1: Buffer = Buffer.alloc(0);

  beforeAll(async () => {
    ubootBin = await uboot.ubootBin();
    kernel = await readFile(await kernelGate.kernel());
    stage1 = await stage1ScriptImage();
  }, BUILD_TIMEOUT_MS + PREPARE_KERNEL_TIMEOUT_MS);

  beforeEach(async () => {
    workDir = await mkdtemp(join(tmpdir(), 'rpi-flash-boot-'));
  });

  afterEach(async () => {
    await killAllQemuBoards();
    await rm(workDir, { recursive: true, force: true });
  });

  const sdImage = () => join(workDir, 'sd.img');
  const markerLine = (marker: string) => new RegExp(`${INIT_BANNER} ${marker}`);

  it("without a job (DHCP, server up) boots the card's kernel and initramfs with its command line", async () => {
    const marker = newMarker('dhcp');
    await buildTestOsImage({
      path: sdImage(),
      kernelImage: kernel,
      marker,
      bootargs: `rpiflash.test=${marker}`,
      extraFiles: { 'boot.scr': stage1 },
    });
    const result = await bootFromCard({
      ubootBin,
      workDir,
      mac: MAC,
      sdImage: sdImage(),
      server: 'up',
      env: DHCP_ONLY_ENV,
      until: markerLine(marker),
      timeoutMs: BOOT_TIMEOUT_MS,
    });

    // Address and server came from slirp's DHCP (the board's env had neither).
    expect(result.console).toMatch(/DHCP client bound to address 10\.0\.2\.15/);
    expect(result.console).toMatch(new RegExp(`rpi-flash: no job for ${macDir(MAC)} on 10\\.0\\.2\\.2`));
    expect(result.transfers).toContainEqual(
      expect.objectContaining({ path: `${macDir(MAC)}/${FLASH_SCRIPT}`, ok: false, error: 'File not found' }),
    );
    // The kernel got the image's command line, the initramfs ran: the marker is this build's.
    expect(result.console).toMatch(/rpi-flash: booting kernel8\.img initrd 0x44000000:[0-9a-f]+ fdt 0x40000000/);
    expect(result.console).toMatch(
      new RegExp(`Kernel command line: console=ttyAMA0 panic=-1 rpiflash\\.test=${marker}`),
    );
    console.info(
      `stage 1 start → no job: ${Math.round(result.at.networkDone! - result.at.stage1!)} ms; ` +
        `QEMU start → marker: ${Math.round(result.at.until)} ms`,
    );
  });

  it("takes a static address and server from rpi-flash.env (no DHCP) and boots a gzip'd kernel", async () => {
    const marker = newMarker('static');
    await buildTestOsImage({
      path: sdImage(),
      kernelImage: gzipSync(kernel, { level: 1 }),
      marker,
      env: { rpf_ipaddr: '10.0.2.15', rpf_netmask: '255.255.255.0', rpf_serverip: '10.0.2.2' },
      extraFiles: { 'boot.scr': stage1 },
    });
    const result = await bootFromCard({
      ubootBin,
      workDir,
      mac: MAC,
      sdImage: sdImage(),
      server: 'up',
      env: DHCP_ONLY_ENV,
      until: markerLine(marker),
      timeoutMs: BOOT_TIMEOUT_MS,
    });
    expect(result.console).not.toMatch(/BOOTP broadcast|DHCP client bound/);
    expect(result.transfers.map((t) => t.path)).toContain(`${macDir(MAC)}/${FLASH_SCRIPT}`);
    expect(result.console).toMatch(/Uncompressing Kernel Image/);
  });

  it('with the TFTP server down, still boots the installed system after a short wait', async () => {
    const marker = newMarker('down');
    await buildTestOsImage({ path: sdImage(), kernelImage: kernel, marker, extraFiles: { 'boot.scr': stage1 } });
    const result = await bootFromCard({
      ubootBin,
      workDir,
      mac: MAC,
      sdImage: sdImage(),
      server: 'down',
      until: markerLine(marker),
      timeoutMs: BOOT_TIMEOUT_MS,
    });
    expect(result.console).toMatch(/Retry count exceeded/);
    expect(result.console).toMatch(new RegExp(`rpi-flash: no job for ${macDir(MAC)}`));
  });

  it('runs the job when there is one, and does not boot the installed system', async () => {
    const marker = newMarker('job');
    await buildTestOsImage({
      path: sdImage(),
      kernelImage: Buffer.from('not a kernel'),
      marker,
      extraFiles: { 'boot.scr': stage1 },
    });
    // flash.scr lands on ${scriptaddr}, where the board loaded stage 1 itself: `source` runs a copy.
    const job = buildScriptImage(
      `echo "test job ${marker} ran with tftptimeout=\${tftptimeout}/\${tftptimeoutcountmax}"\n`,
      { name: 'test job' },
    );
    const result = await bootFromCard({
      ubootBin,
      workDir,
      mac: MAC,
      sdImage: sdImage(),
      server: 'up',
      tftpFiles: { [`${macDir(MAC)}/${FLASH_SCRIPT}`]: job },
      until: /flash\.scr returned without resetting/,
      timeoutMs: BOOT_TIMEOUT_MS,
    });
    // Stage 2 gets U-Boot's own TFTP patience back, not stage 1's short one.
    expect(result.console).toMatch(new RegExp(`test job ${marker} ran with tftptimeout=5000/10`));
    expect(result.console).not.toMatch(/rpi-flash: booting/);
  });

  it('without rpi-flash.env says what is missing instead of booting', async () => {
    await buildDiskImage({
      path: sdImage(),
      size: 8 * 1024 * 1024,
      bootPartitionSize: 4 * 1024 * 1024,
      files: { 'boot.scr': stage1 },
    });
    const result = await bootFromCard({
      ubootBin,
      workDir,
      mac: MAC,
      sdImage: sdImage(),
      server: 'up',
      until: /cannot boot the installed system[^\n]*\n/,
      timeoutMs: BOOT_TIMEOUT_MS,
    });
    expect(result.console).toMatch(/rpi-flash: no rpi-flash\.env on mmc 0:1/);
    expect(result.console).toMatch(/cannot boot the installed system: no rpf_kernel/);
  });
});
