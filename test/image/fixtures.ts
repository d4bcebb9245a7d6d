/** Bytes that stand in for the real boot files in the image tests. */
import { randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { buildScriptImage } from '../../runner-agent/src/board/uimage.js';

/** An arm64 Linux Image: its header carries "ARMd" at byte 56. */
export function fakeArm64Image(size = 200 * 1024): Buffer {
  const b = randomBytes(size);
  b.writeUInt32LE(0x644d5241, 56);
  return b;
}

/** An ARM zImage: magic 0x016F2818 at byte 0x24. */
export function fakeZImage(size = 150 * 1024): Buffer {
  const b = randomBytes(size);
  b.writeUInt32LE(0x016f2818, 0x24);
  return b;
}

/** Raspberry Pi OS ships kernel8.img gzip-compressed. */
export function fakeGzipArm64Image(size = 300 * 1024): Buffer {
  return gzipSync(fakeArm64Image(size));
}

export function fakeUboot(size = 600 * 1024): Buffer {
  return randomBytes(size);
}

export function stage1Script(): Buffer {
  return buildScriptImage('echo "rpi-flash: stage 1 (test)"\n', { name: 'rpi-flash stage 1', timestamp: 0 });
}

/** Raspberry Pi OS (bookworm) config.txt as shipped. */
export const PI_OS_CONFIG = `# For more options and information see
# http://rptl.io/configtxt
# Some settings may impact device functionality. See link above for details

# Uncomment some or all of these to enable the optional hardware interfaces
#dtparam=i2c_arm=on
#dtparam=i2s=on
#dtparam=spi=on

# Enable audio (loads snd_bcm2835)
dtparam=audio=on

# Automatically load overlays for detected cameras
camera_auto_detect=1

# Automatically load overlays for detected DSI displays
display_auto_detect=1

# Automatically load initramfs files, if found
auto_initramfs=1

# Enable DRM VC4 V3D driver
dtoverlay=vc4-kms-v3d
max_framebuffers=2

# Don't have the firmware create an initial video= setting in cmdline.txt.
# Use the kernel's default instead.
disable_fw_kms_setup=1

# Run in 64-bit mode
arm_64bit=1

# Disable compensation for displays with overscan
disable_overscan=1

# Run as fast as firmware / board allows
arm_boost=1

[cm4]
# Enable host mode on the 2711 built-in XHCI USB controller.
# This line should be removed if the legacy DWC2 controller is required
# (e.g. for USB device mode) or if USB 4-lane MIPI is required
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
`;

export const PI_OS_CMDLINE =
  'console=serial0,115200 console=tty1 root=PARTUUID=5eed1234-02 rootfstype=ext4 fsck.repair=yes rootwait quiet ' +
  'init=/usr/lib/raspberrypi-sys-mods/firstboot\n';
