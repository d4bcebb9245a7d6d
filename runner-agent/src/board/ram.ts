/**
 * What of a Pi's RAM stage 2 may use: the facts both `--check` (per model, image/models.ts) and the
 * stage-2 script's own probe on the board (stage2-script.ts) build on, so the two agree.
 */
const MiB = 1024 * 1024;

/**
 * What U-Boot keeps at the top of the ARM's RAM on Debian's Pi builds: relocated code, malloc
 * (4 MiB), stack and the EFI area (16 MiB). `bdinfo` on the six builds under QEMU's Pi machines
 * (test/qemu/pi-builds.test.ts): 20.6–20.8 MiB below the top; 21 MiB covers all of them.
 */
export const UBOOT_RESERVE = 21 * MiB;
/**
 * U-Boot does not relocate over the firmware's device tree: when the tree lies within 64 MiB of
 * the top, the top becomes the tree's address (board_get_usable_ram_top, board/raspberrypi/rpi/rpi.c).
 */
export const FIRMWARE_DTB_WINDOW = 64 * MiB;
/** Room left between the load buffer and U-Boot's reserve: for a build whose reserve grows. */
export const RAM_MARGIN = 4 * MiB;
