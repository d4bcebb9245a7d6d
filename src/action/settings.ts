/**
 * The action's inputs, parsed once into typed settings (DESIGN §3.1). Every check that can fail
 * without the network happens here, before anything connects, and every problem names its input.
 */
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import path from 'node:path';
import { BootCheckError, parseBootCheck } from '../protocol/boot-check.js';
import { CodedError, messageOf } from '../protocol/errors.js';
import { Inputs } from './constants.js';
import { JOB_METHODS, type JobMethod } from '../protocol/messages.js';

export interface ActionSettings {
  /** The agent's WebSocket URL as given (ws:// or wss://); the client adds the endpoint path. */
  agentUrl: URL;
  /** Bearer token for the agent; registered as a secret so the log masks it. */
  token: string;
  /** Name, MAC or IP from the agent's targets database. */
  target: string;
  /** The `image` input as given: a path, a glob or an http(s) URL. `image.ts` resolves it. */
  image: string;
  /** A spec in the grammar of protocol/boot-check.ts; undefined lets the agent use its default (`tcp:22`). */
  bootCheck?: string;
  /** The image's block map: found beside the image (`auto`), none, or the file given (bmap.ts). */
  bmap: BmapSetting;
  /** Write every byte of the image, zeros included (the agent's default otherwise: only what is mapped). */
  writeZeros?: boolean;
  /** What the job does with the image: write it to the card (`flash`, the default) or boot it over the network. */
  method: JobMethod;
  /** Milliseconds to open the WebSocket and finish the hello exchange. */
  connectTimeoutMs: number;
  /** Milliseconds to wait for the lease while someone else holds the target. */
  queueTimeoutMs: number;
  /** Milliseconds from the lease to the result: upload, flash and boot check together. */
  jobTimeoutMs: number;
  /** Seconds the board may take to fetch its flash script after the reset; undefined = the agent's default. */
  boardTimeoutSeconds?: number;
  /** Seconds the new system may take to pass the boot check; undefined = the agent's default. */
  bootTimeoutSeconds?: number;
  /** PEM certificate(s) to trust for a wss:// agent with a private CA. */
  caCert?: string;
  /** Who holds the lease, shown to others waiting for the target (repository, run, job). */
  holder: string;
  /** Where relative image paths and globs are resolved. */
  workspace: string;
}

/** `file`: a path as given, relative to the workspace. */
export type BmapSetting = { kind: 'auto' } | { kind: 'none' } | { kind: 'file'; path: string };

export type GetInput = (name: string) => string;

export const DEFAULT_CONNECT_TIMEOUT_SECONDS = 30;
export const DEFAULT_QUEUE_TIMEOUT_SECONDS = 1800;
export const DEFAULT_JOB_TIMEOUT_SECONDS = 1800;
/** setTimeout holds at most 2^31-1 ms; anything longer would fire at once. */
const MAX_TIMEOUT_SECONDS = Math.floor((2 ** 31 - 1) / 1000);

/** INPUT_INVALID with every problem found in the inputs, one per line, each naming its input. */
export class InputError extends CodedError {
  constructor(readonly problems: string[]) {
    super(
      'INPUT_INVALID',
      problems.length === 1 ? `Invalid input: ${problems[0]}` : `Invalid inputs:\n- ${problems.join('\n- ')}`,
    );
    this.name = 'InputError';
  }
}

export interface ParseOptions {
  env?: NodeJS.ProcessEnv;
  /** Called with the token so the log masks it (`core.setSecret`). */
  registerSecret?: (secret: string) => void;
}

export function parseSettings(getInput: GetInput, options: ParseOptions = {}): ActionSettings {
  const env = options.env ?? process.env;
  const problems: string[] = [];
  const input = (name: string) => getInput(name).trim();
  const required = (name: string): string => {
    const value = input(name);
    if (value === '') problems.push(`${name}: required, but empty`);
    return value;
  };

  const agentUrl = parseAgentUrl(required(Inputs.agentUrl), problems);

  // The token is read untrimmed-then-trimmed: a trailing newline from a secret file is common and harmless.
  const token = required(Inputs.token);
  if (token !== '') {
    options.registerSecret?.(token);
    if (/[\s\p{Cc}]/u.test(token)) problems.push(`${Inputs.token}: contains whitespace or control characters`);
  }

  const target = required(Inputs.target);
  const image = required(Inputs.image);
  if (image !== '') checkImageSpec(image, problems, options.registerSecret);

  const bootCheck = checkBootCheck(input(Inputs.bootCheck), problems);
  const bmapInput = input(Inputs.bmap);
  const bmap: BmapSetting =
    bmapInput === '' || bmapInput === 'auto'
      ? { kind: 'auto' }
      : bmapInput === 'none'
        ? { kind: 'none' }
        : { kind: 'file', path: bmapInput };
  const writeZerosInput = input(Inputs.writeZeros);
  let writeZeros: boolean | undefined;
  if (writeZerosInput === 'true') writeZeros = true;
  else if (writeZerosInput === 'false') writeZeros = false;
  else if (writeZerosInput !== '') problems.push(`${Inputs.writeZeros}: "${writeZerosInput}" is not true or false`);
  const methodInput = input(Inputs.method) || 'flash';
  const method = (JOB_METHODS as readonly string[]).includes(methodInput) ? (methodInput as JobMethod) : 'flash';
  if (method !== methodInput)
    problems.push(`${Inputs.method}: "${methodInput}" is not one of ${JOB_METHODS.join(', ')}`);

  const seconds = (name: string, fallback?: number): number | undefined => {
    const raw = input(name);
    if (raw === '') return fallback;
    if (!/^\d+(\.\d+)?$/.test(raw)) {
      problems.push(`${name}: "${raw}" is not a number of seconds (expected e.g. 30 or 1.5)`);
      return fallback;
    }
    const value = Number(raw);
    if (value <= 0) problems.push(`${name}: must be more than 0 seconds, got ${raw}`);
    else if (value > MAX_TIMEOUT_SECONDS)
      problems.push(`${name}: ${raw} seconds is too long (at most ${MAX_TIMEOUT_SECONDS})`);
    return value;
  };
  const connectTimeout = seconds(Inputs.connectTimeout, DEFAULT_CONNECT_TIMEOUT_SECONDS)!;
  const queueTimeout = seconds(Inputs.queueTimeout, DEFAULT_QUEUE_TIMEOUT_SECONDS)!;
  const jobTimeout = seconds(Inputs.jobTimeout, DEFAULT_JOB_TIMEOUT_SECONDS)!;
  const boardTimeoutSeconds = seconds(Inputs.boardTimeout);
  const bootTimeoutSeconds = seconds(Inputs.bootTimeout);

  const caCert = parseCaCert(input(Inputs.caCert), problems, env);
  if (caCert !== undefined && agentUrl?.protocol === 'ws:') {
    problems.push(
      `${Inputs.caCert}: given, but ${Inputs.agentUrl} is ws:// (no TLS); use wss:// or drop ${Inputs.caCert}`,
    );
  }

  if (problems.length > 0) throw new InputError(problems);
  return {
    agentUrl: agentUrl!,
    token,
    target,
    image,
    ...(bootCheck !== undefined && { bootCheck }),
    bmap,
    ...(writeZeros !== undefined && { writeZeros }),
    method,
    connectTimeoutMs: connectTimeout * 1000,
    queueTimeoutMs: queueTimeout * 1000,
    jobTimeoutMs: jobTimeout * 1000,
    ...(boardTimeoutSeconds !== undefined && { boardTimeoutSeconds }),
    ...(bootTimeoutSeconds !== undefined && { bootTimeoutSeconds }),
    ...(caCert !== undefined && { caCert }),
    holder: describeHolder(env),
    workspace: env.GITHUB_WORKSPACE || process.cwd(),
  };
}

function parseAgentUrl(raw: string, problems: string[]): URL | undefined {
  if (raw === '') return undefined;
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    problems.push(`${Inputs.agentUrl}: "${raw}" is not a URL (expected e.g. wss://lab.example:8443)`);
    return undefined;
  }
  if (url.protocol !== 'ws:' && url.protocol !== 'wss:') {
    const hint =
      url.protocol === 'https:' ? ' (use wss:// for an https agent)' : url.protocol === 'http:' ? ' (use ws://)' : '';
    problems.push(`${Inputs.agentUrl}: scheme "${url.protocol.slice(0, -1)}" is not ws or wss${hint}`);
    return undefined;
  }
  if (url.username !== '' || url.password !== '') {
    // A token in the URL would end up in logs; it belongs in the masked `token` input.
    problems.push(`${Inputs.agentUrl}: must not carry credentials; put the secret in the ${Inputs.token} input`);
    return undefined;
  }
  return url;
}

/** Any `scheme://` other than http(s) is refused here, before a path lookup would report a confusing "not found". */
function checkImageSpec(image: string, problems: string[], registerSecret?: (secret: string) => void): void {
  const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(image)?.[1]?.toLowerCase();
  if (scheme === undefined) return;
  if (scheme !== 'http' && scheme !== 'https') {
    problems.push(`${Inputs.image}: URL scheme "${scheme}" is not supported (use a path, a glob, or an http(s) URL)`);
    return;
  }
  let url: URL;
  try {
    url = new URL(image);
  } catch {
    problems.push(`${Inputs.image}: "${image}" is not a valid URL`);
    return;
  }
  // Signed download URLs carry their secret in the query (or user info); the download library logs
  // the full URL at debug level, so mask those parts everywhere.
  if (url.search.length > 1) registerSecret?.(url.search.slice(1));
  if (url.password !== '') registerSecret?.(decodeURIComponent(url.password));
}

/** The agent's own grammar, so a spec it would refuse after the lease and the upload is refused here. */
function checkBootCheck(raw: string, problems: string[]): string | undefined {
  if (raw === '') return undefined;
  try {
    return parseBootCheck(raw).kind === 'none' ? 'none' : raw;
  } catch (err) {
    if (!(err instanceof BootCheckError)) throw err;
    problems.push(`${Inputs.bootCheck}: ${err.problem}`);
    return undefined;
  }
}

function parseCaCert(raw: string, problems: string[], env: NodeJS.ProcessEnv): string | undefined {
  if (raw === '') return undefined;
  let pem = raw;
  if (!raw.startsWith('-----BEGIN')) {
    // Not PEM text: a path to a PEM file, relative to the workspace.
    const file = path.resolve(env.GITHUB_WORKSPACE || process.cwd(), raw);
    try {
      pem = readFileSync(file, 'utf8');
    } catch (err) {
      problems.push(
        `${Inputs.caCert}: neither PEM text nor a readable file ` +
          `(${file}: ${(err as NodeJS.ErrnoException).code ?? messageOf(err)})`,
      );
      return undefined;
    }
  }
  if (!/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.test(pem)) {
    problems.push(`${Inputs.caCert}: holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)`);
    return undefined;
  }
  return pem;
}

function describeHolder(env: NodeJS.ProcessEnv): string {
  if (env.GITHUB_REPOSITORY) {
    const run = env.GITHUB_RUN_ID
      ? ` run ${env.GITHUB_RUN_ID}${env.GITHUB_RUN_ATTEMPT ? `.${env.GITHUB_RUN_ATTEMPT}` : ''}`
      : '';
    const job = env.GITHUB_JOB ? ` job ${env.GITHUB_JOB}` : '';
    return `${env.GITHUB_REPOSITORY}${run}${job}`;
  }
  return `rpi-flash on ${hostname()}`;
}
