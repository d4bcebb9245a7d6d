/**
 * Entry of the bundled action (dist/index.js), for both the main and the post step: GitHub runs the
 * same file twice and the saved `isPost` state tells the second run apart (as actions/checkout does).
 * The only top-level error handler lives here.
 */
import * as core from '@actions/core';
import { State } from './action/constants.js';
import { ReportedFailure, run } from './action/main.js';
import { codeOf, messageOf } from './protocol/errors.js';
import { runPost } from './post.js';

/** Any thrown value, an Error or not, coded or not, fails the step with a message that says what it was. */
function fail(err: unknown): void {
  // Already reported with outputs, summary and a titled annotation: only the exit code is left to set.
  if (err instanceof ReportedFailure) {
    process.exitCode = 1;
    return;
  }
  let message: string;
  try {
    message = messageOf(err) || String(err);
  } catch {
    message = 'a thrown value that cannot be turned into text';
  }
  core.setFailed(`${codeOf(err)}: ${message || 'failed without a message'}`);
}

// A throw outside the awaited chain (a callback, a promise nobody awaits) would crash Node with a
// stack trace and no failed step: it fails the step like any other, then ends the process as the
// crash would have.
for (const event of ['uncaughtException', 'unhandledRejection'] as const) {
  process.on(event, (err: unknown) => {
    fail(err);
    process.exit(1);
  });
}

// Inside an async function, so that a throw while deciding which step this is fails the step too.
void (async () => {
  const isPost = core.getState(State.isPost) === 'true';
  if (!isPost) core.saveState(State.isPost, 'true');
  await (isPost ? runPost() : run());
})().catch(fail);
