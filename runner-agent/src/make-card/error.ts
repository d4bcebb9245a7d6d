/**
 * A refusal or failure of `make-card` told to the person at the terminal: its message is all there
 * is to it (the command prints it and exits 1). It carries no code because nothing reads one: it
 * never crosses a process boundary, and the image's own problems come as InjectError with theirs.
 */
export class MakeCardError extends Error {
  override name = 'MakeCardError';
}
