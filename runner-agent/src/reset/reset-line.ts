/**
 * The reset line of a target (DESIGN §1, "reset: pull RUN low via GPIO, release"): one small
 * interface with a driver per kind of reset spec, so a job resets a real Pi, a relay, an emulated
 * board and the simulated board the same way.
 */
import { CodedError } from '../../../src/protocol/errors.js';
import type { Logger } from '../log.js';
import type { Target } from '../targets/database.js';

export interface ResetLine {
  /** What drives the line, for logs: "gpio:17 (sysfs GPIO)". */
  describe(): string;
  /** Pull the board's RUN line low (or power-cycle) and let it run again. */
  pulse(): Promise<void>;
  /** Release whatever the line holds between pulses (nothing, for most drivers). */
  close(): Promise<void>;
}

export interface ResetContext {
  log: Logger;
  /** How long RUN is held low; 200 ms unless configured. */
  pulseMs: number;
  /** Limit for external commands and QMP exchanges; 30 s unless configured. */
  cmdTimeoutMs?: number;
  /** Where sysfs GPIO lives, for base detection; '/sys/class/gpio' unless configured. */
  gpioRoot?: string;
  /** The simulated lab, for `sim` targets. */
  sim?: { reset(targetName: string): Promise<void> };
}

export const DEFAULT_PULSE_MS = 200;
export const DEFAULT_CMD_TIMEOUT_MS = 30_000;
export const DEFAULT_GPIO_ROOT = '/sys/class/gpio';

/** Every pulse failure crosses the wire as RESET_FAILED and names the target and its spec. */
export function resetFailed(target: Target, reason: string): CodedError {
  return new CodedError('RESET_FAILED', `cannot reset ${target.name} (${target.resetText}): ${reason}`);
}

/** Runs a pulse body and turns any failure into RESET_FAILED. */
export async function asResetFailure(target: Target, body: () => Promise<void>): Promise<void> {
  try {
    await body();
  } catch (err) {
    if (err instanceof CodedError && err.code === 'RESET_FAILED') throw err;
    throw resetFailed(target, err instanceof Error ? err.message : String(err));
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
