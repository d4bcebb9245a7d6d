/**
 * Entry of the bundled action (dist/index.js), for both the main and the post step: GitHub runs the
 * same file twice and the saved `isPost` state tells the second run apart (as actions/checkout does).
 * The only top-level error handler lives here.
 */
import * as core from '@actions/core';
import { State } from './action/constants.js';
import { ReportedFailure, run } from './action/main.js';
import { runPost } from './post.js';

const isPost = core.getState(State.isPost) === 'true';
if (!isPost) core.saveState(State.isPost, 'true');

(isPost ? runPost() : run()).catch((err: unknown) => {
  // Already reported with outputs, summary and a titled annotation: only the exit code is left to set.
  if (err instanceof ReportedFailure) process.exitCode = 1;
  else core.setFailed(`${(err as Error)?.message ?? err}`);
});
