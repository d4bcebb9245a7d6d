/**
 * Names of the action's inputs, outputs and saved state, in one place: `action.yml`, the settings
 * parser, the outputs writer and the post step all refer to these, and a test checks that
 * `action.yml` declares exactly these inputs and outputs.
 */

export const Inputs = {
  agentUrl: 'agent-url',
  token: 'token',
  target: 'target',
  image: 'image',
  bootCheck: 'boot-check',
  bmap: 'bmap',
  writeZeros: 'write-zeros',
  method: 'method',
  connectTimeout: 'connect-timeout',
  queueTimeout: 'queue-timeout',
  jobTimeout: 'job-timeout',
  boardTimeout: 'board-timeout',
  bootTimeout: 'boot-timeout',
  caCert: 'ca-cert',
} as const;

export const Outputs = {
  result: 'result',
  resultCode: 'result-code',
  jobId: 'job-id',
  targetName: 'target-name',
  targetIp: 'target-ip',
  targetMac: 'target-mac',
  board: 'board',
  agent: 'agent',
  imageSha256: 'image-sha256',
  bytesWritten: 'bytes-written',
  flashSeconds: 'flash-seconds',
  bootSeconds: 'boot-seconds',
} as const;

/**
 * Saved state (`core.saveState`) that the post step reads. The token is never saved: the post step
 * reads the `token` input again, as GitHub gives inputs to post steps too.
 */
export const State = {
  /** Set by the main step before anything else: the same bundle then knows it runs as the post step. */
  isPost: 'isPost',
  agentUrl: 'agentUrl',
  target: 'target',
  /** The lease id once leased; cleared (empty) when the job ended and nothing is left to cancel. */
  lease: 'lease',
  job: 'job',
} as const;

export type InputName = (typeof Inputs)[keyof typeof Inputs];
export type OutputName = (typeof Outputs)[keyof typeof Outputs];
