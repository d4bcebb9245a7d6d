/** Errors of the TFTP server and client. */

/** Thrown by a resolver to refuse a file: the server answers error 2 (access violation) with this message. */
export class TftpAccessError extends Error {
  override name = 'TftpAccessError';
}

/** A transfer that failed: `code` is the TFTP error code (0 for timeouts and local failures). */
export class TftpError extends Error {
  override name = 'TftpError';
  constructor(
    message: string,
    readonly code: number,
  ) {
    super(message);
  }
}
