import { describe, expect, it } from 'vitest';
import { wiringPiTable, wiringPiToBcm } from '../../runner-agent/src/targets/wiringpi.js';

/**
 * The 40-pin header, physical pin → BCM GPIO, from the Raspberry Pi pinout (pins 1–40; power and
 * ground are absent). Every wiringPi pin must land on a header pin, and every header GPIO must have
 * exactly one wiringPi number: an independent check of the table.
 */
const HEADER_PIN_TO_BCM: Record<number, number> = {
  3: 2,
  5: 3,
  7: 4,
  8: 14,
  10: 15,
  11: 17,
  12: 18,
  13: 27,
  15: 22,
  16: 23,
  18: 24,
  19: 10,
  21: 9,
  22: 25,
  23: 11,
  24: 8,
  26: 7,
  27: 0,
  28: 1,
  29: 5,
  31: 6,
  32: 12,
  33: 13,
  35: 19,
  36: 16,
  37: 26,
  38: 20,
  40: 21,
};

describe('wiringPi → BCM', () => {
  it("matches wiringPi's documented examples", () => {
    expect(wiringPiToBcm(0)).toBe(17);
    expect(wiringPiToBcm(1)).toBe(18);
    expect(wiringPiToBcm(2)).toBe(27);
    expect(wiringPiToBcm(7)).toBe(4);
    expect(wiringPiToBcm(8)).toBe(2);
    expect(wiringPiToBcm(21)).toBe(5);
    expect(wiringPiToBcm(29)).toBe(21);
    expect(wiringPiToBcm(31)).toBe(1);
  });

  it('covers each header GPIO exactly once', () => {
    const bcms = [...wiringPiTable().values()].sort((a, b) => a - b);
    expect(bcms).toEqual(Object.values(HEADER_PIN_TO_BCM).sort((a, b) => a - b));
    expect(new Set(bcms).size).toBe(28);
  });

  it('has nothing for the old P5 header pins or beyond the table', () => {
    for (const pin of [17, 18, 19, 20, 32, 40, -1]) expect(wiringPiToBcm(pin)).toBeUndefined();
  });
});
