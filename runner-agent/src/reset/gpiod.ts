/**
 * `gpiod:<chip>:<line>`: the reset line through libgpiod 1.6's command-line tools (Debian `gpiod`),
 * for kernels where sysfs GPIO is gone. The character device addresses lines by chip and offset,
 * so the sysfs base-offset problem does not arise.
 *
 * A pulse is `gpioset --mode=time --usec=<pulse> <chip> <offset>=0` (drives the line low for the
 * pulse, then exits) followed by `gpioget <chip> <offset>`: releasing a line leaves many drivers
 * (the Pi's among them) driving it as an output, and reading it requests it as an input, which
 * hands RUN back to the board's pull-up. A line given by name is found with `gpiofind <name>`.
 * libgpiod 2.x changed these tools' options; its errors are explained as such.
 */
import type { Target } from '../targets/database.js';
import { asResetFailure, DEFAULT_CMD_TIMEOUT_MS, type ResetContext, type ResetLine } from './reset-line.js';
import { outputTail, runProcess, type ProcessResult } from './run-process.js';

/** `gpiochip0`, `/dev/gpiochip0` and `0` name the same chip; a label does not compare. */
function chipNumber(chip: string): number | undefined {
  const m = /^(?:\/dev\/)?(?:gpiochip)?(\d+)$/.exec(chip);
  return m ? Number(m[1]) : undefined;
}

export function createGpiodResetLine(target: Target, chip: string, line: string, ctx: ResetContext): ResetLine {
  const toolTimeoutMs = ctx.cmdTimeoutMs ?? DEFAULT_CMD_TIMEOUT_MS;
  const log = ctx.log.child({ target: target.name, reset: 'gpiod' });

  const tool = async (name: string, args: string[], timeoutMs = toolTimeoutMs): Promise<ProcessResult> => {
    let result: ProcessResult;
    try {
      result = await runProcess(name, args, { timeoutMs });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new Error(`${name} not found on PATH: install the libgpiod 1.6 tools (Debian package "gpiod")`, {
          cause: err,
        });
      }
      throw err;
    }
    if (result.timedOut) throw new Error(`${name} ${args.join(' ')} did not finish within ${timeoutMs} ms`);
    if (result.code !== 0) {
      const stderr = outputTail(result.stderr);
      const v2 = /unrecognized option|invalid option|unknown option/i.test(stderr)
        ? " (these options are libgpiod 1.6's; libgpiod 2.x changed the command line)"
        : '';
      throw new Error(
        `${name} ${args.join(' ')} failed (status ${result.code ?? result.signal})${stderr ? `: ${stderr}` : ''}${v2}`,
      );
    }
    return result;
  };

  /** The chip and offset to drive: the line as given, or where gpiofind says a named line is. */
  const resolveLine = async (): Promise<{ chip: string; offset: number }> => {
    if (/^\d+$/.test(line)) return { chip, offset: Number(line) };
    let found: ProcessResult;
    try {
      found = await tool('gpiofind', [line]);
    } catch (err) {
      throw new Error(`no GPIO line is named "${line}" (${(err as Error).message})`, { cause: err });
    }
    const m = /^(\S+)\s+(\d+)\s*$/.exec(found.stdout.trim());
    if (!m) throw new Error(`gpiofind ${line} printed "${found.stdout.trim()}", not "<chip> <offset>"`);
    const foundChip = m[1] as string;
    const wanted = chipNumber(chip);
    if (wanted !== undefined && chipNumber(foundChip) !== wanted) {
      throw new Error(`line "${line}" is on ${foundChip}, not on ${chip}`);
    }
    return { chip: foundChip, offset: Number(m[2]) };
  };

  return {
    describe: () => `gpiod:${chip}:${line} (libgpiod)`,
    pulse: () =>
      asResetFailure(target, async () => {
        const where = await resolveLine();
        const offset = String(where.offset);
        log.debug('pulsing reset line', { chip: where.chip, offset, ms: ctx.pulseMs });
        try {
          await tool(
            'gpioset',
            [`--mode=time`, `--usec=${Math.round(ctx.pulseMs * 1000)}`, where.chip, `${offset}=0`],
            ctx.pulseMs + toolTimeoutMs,
          );
        } catch (err) {
          // Hand the line back to the pull-up even when gpioset failed midway (it may have driven
          // it); its own error is the one worth reporting.
          await tool('gpioget', [where.chip, offset]).catch((e: Error) => {
            log.warn('could not return the reset line to input', { error: e.message });
          });
          throw err;
        }
        // A line left driving low would hold the board in reset: failing to release it is a failure.
        await tool('gpioget', [where.chip, offset]);
      }),
    close: async () => {},
  };
}
