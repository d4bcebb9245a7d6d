/**
 * wiringPi pin numbers → BCM GPIO numbers, for the seed system's database (DESIGN §3.3), whose
 * `reset gpio (wiring pi)` column names the lab server's reset lines in wiringPi numbering.
 *
 * The table is wiringPi's own `pinToGpioR2` (revision 2 and every later board), restricted to the
 * pins that exist on the 40-pin header of the Pi 2, 3, 4, 400, Zero and Zero 2 (checked against
 * wiringPi's `wiringPi.c` and its `pins` documentation). wiringPi pins 17–20 map to BCM 28–31 on the
 * old Model B rev 2's separate P5 header only; no 40-pin board has them, so they are refused rather
 * than silently driving a line that is not on the header. Revision 1 boards (a different table for
 * pins 2, 8 and 9) are not supported.
 */
const WIRINGPI_TO_BCM_40PIN: ReadonlyMap<number, number> = new Map([
  [0, 17], // header pin 11
  [1, 18], // 12 (PWM0)
  [2, 27], // 13
  [3, 22], // 15
  [4, 23], // 16
  [5, 24], // 18
  [6, 25], // 22
  [7, 4], // 7 (GPCLK0)
  [8, 2], // 3 (SDA1)
  [9, 3], // 5 (SCL1)
  [10, 8], // 24 (SPI CE0)
  [11, 7], // 26 (SPI CE1)
  [12, 10], // 19 (SPI MOSI)
  [13, 9], // 21 (SPI MISO)
  [14, 11], // 23 (SPI SCLK)
  [15, 14], // 8 (UART TX)
  [16, 15], // 10 (UART RX)
  // 17–20: P5 header of the Model B rev 2 (BCM 28–31), not on 40-pin boards.
  [21, 5], // 29
  [22, 6], // 31
  [23, 13], // 33
  [24, 19], // 35
  [25, 26], // 37
  [26, 12], // 32
  [27, 16], // 36
  [28, 20], // 38
  [29, 21], // 40
  [30, 0], // 27 (ID_SD, HAT EEPROM)
  [31, 1], // 28 (ID_SC, HAT EEPROM)
]);

/** The full table, for documentation and tests. */
export function wiringPiTable(): ReadonlyMap<number, number> {
  return WIRINGPI_TO_BCM_40PIN;
}

/** The BCM number of a wiringPi pin on a 40-pin header board, or undefined when it has none. */
export function wiringPiToBcm(pin: number): number | undefined {
  return WIRINGPI_TO_BCM_40PIN.get(pin);
}
