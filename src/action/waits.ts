/**
 * Waits of the main step that end early. Every await gives way at once when the run is aborted (a
 * signal, queue-timeout or job-timeout passing), and some have a deadline of their own.
 */

/** Resolves or rejects with `promise`, or rejects with the signal's reason as soon as it aborts. */
export function unlessAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    // Nobody waits for `promise` now: its own failure must not surface as an unhandled rejection.
    promise.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** Sleeps `ms`, or less when the signal aborts (then rejects with its reason). */
export function delay(ms: number, signal: AbortSignal): Promise<void> {
  return unlessAborted(new Promise<void>((resolve) => setTimeout(resolve, ms).unref()), signal);
}

/** `promise`, or a rejection with `onTimeout()` when it has not settled within `ms`. */
export function withTimer<T>(promise: Promise<T>, ms: number, onTimeout: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(onTimeout()), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Aborts `controller` with `reason()` once `ms` have passed: a deadline over several awaits, each
 * of which gives way through `unlessAborted`. Returns what stops the timer.
 */
export function abortAfter(controller: AbortController, ms: number, reason: () => Error): () => void {
  const timer = setTimeout(() => controller.abort(reason()), ms);
  return () => clearTimeout(timer);
}
