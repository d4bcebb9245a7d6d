/**
 * Validation of messages crossing the WebSocket. Both sides treat the peer as untrusted: a
 * message that does not match its type is refused with BAD_MESSAGE naming the field, never
 * half-processed.
 */
import { CodedError } from './errors.js';
import {
  BMAP_MAX_BYTES,
  BOARD_ACTIONS,
  COMPRESSIONS,
  JOB_METHODS,
  SHA256_PATTERN,
  type AgentMessage,
  type ClientMessage,
} from './messages.js';

type Json = Record<string, unknown>;

/**
 * Longest text frame either side accepts. Control messages are small but for a `flash` request
 * carrying a block map (BMAP_MAX_BYTES, escaped in JSON); a binary chunk is larger still.
 */
export const MAX_CONTROL_MESSAGE = 640 * 1024;

function fail(message: string): never {
  throw new CodedError('BAD_MESSAGE', message);
}

function parseObject(text: string): Json {
  if (text.length > MAX_CONTROL_MESSAGE)
    fail(`control message of ${text.length} bytes is over the ${MAX_CONTROL_MESSAGE}-byte limit`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    fail('message is not valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) fail('message is not a JSON object');
  return value as Json;
}

function str(m: Json, key: string, opts: { optional?: boolean; max?: number; pattern?: RegExp } = {}): void {
  const v = m[key];
  if (v === undefined && opts.optional) return;
  if (typeof v !== 'string') fail(`"${key}" must be a string in a "${String(m.type)}" message`);
  if (v.length > (opts.max ?? 1024)) fail(`"${key}" is too long`);
  if (opts.pattern && !opts.pattern.test(v)) fail(`"${key}" is malformed: ${JSON.stringify(v.slice(0, 80))}`);
}

function int(m: Json, key: string, opts: { optional?: boolean; min?: number } = {}): void {
  const v = m[key];
  if (v === undefined && opts.optional) return;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < (opts.min ?? 0)) {
    fail(`"${key}" must be an integer ≥ ${opts.min ?? 0} in a "${String(m.type)}" message`);
  }
}

const ID = /^[\w.:-]{1,64}$/;

/** Parse and validate a text frame from a client. Throws CodedError(BAD_MESSAGE). */
export function parseClientMessage(text: string): ClientMessage {
  const m = parseObject(text);
  str(m, 'type', { max: 32 });
  str(m, 'id', { pattern: ID });
  switch (m.type) {
    case 'hello':
      int(m, 'protocol', { min: 0 });
      str(m, 'client', { optional: true, max: 256 });
      break;
    case 'lease':
      str(m, 'target', { max: 128 });
      str(m, 'holder', { optional: true, max: 256 });
      str(m, 'lease', { optional: true, pattern: ID });
      break;
    case 'upload-begin':
      str(m, 'sha256', { pattern: SHA256_PATTERN });
      int(m, 'size', { min: 1 });
      str(m, 'compression');
      if (!COMPRESSIONS.includes(m.compression as never)) {
        throw new CodedError(
          'UNSUPPORTED_COMPRESSION',
          `compression "${String(m.compression)}" is not one of ${COMPRESSIONS.join(', ')}`,
        );
      }
      int(m, 'imageSize', { optional: true, min: 1 });
      str(m, 'name', { optional: true, max: 256 });
      break;
    case 'upload-end':
      break;
    case 'flash': {
      str(m, 'sha256', { pattern: SHA256_PATTERN });
      str(m, 'bootCheck', { optional: true, max: 256 });
      str(m, 'bmap', { optional: true, max: BMAP_MAX_BYTES });
      if (m.writeZeros !== undefined && typeof m.writeZeros !== 'boolean') fail('"writeZeros" must be true or false');
      if (m.method !== undefined && !(JOB_METHODS as readonly unknown[]).includes(m.method))
        fail(`"method" must be one of ${JOB_METHODS.join(', ')}`);
      const t = m.timeouts;
      if (t !== undefined) {
        if (typeof t !== 'object' || t === null || Array.isArray(t)) fail('"timeouts" must be an object');
        for (const [key, value] of Object.entries(t)) {
          if (!['boardShow', 'stall', 'boot'].includes(key))
            fail(`"timeouts.${key}" is not a known timeout (boardShow, stall, boot)`);
          if (typeof value !== 'number' || !(value > 0) || value > 86_400)
            fail(`"timeouts.${key}" must be seconds between 0 and 86400`);
        }
      }
      break;
    }
    case 'cancel':
      str(m, 'lease', { optional: true, pattern: ID });
      str(m, 'reason', { optional: true, max: 256 });
      break;
    case 'board':
      str(m, 'action', { max: 32 });
      if (!BOARD_ACTIONS.includes(m.action as never))
        fail(`"action" must be one of ${BOARD_ACTIONS.join(', ')} in a "board" message`);
      str(m, 'target', { optional: m.action === 'status', max: 128 });
      str(m, 'reason', { optional: true, max: 256 });
      break;
    default:
      fail(`unknown message type "${String(m.type).slice(0, 32)}"`);
  }
  return m as unknown as ClientMessage;
}

type FieldKind = 'string' | 'integer' | 'number' | 'boolean' | 'object' | 'array';
/** A field the client reads: its kind, and `?` when it may be absent. */
type FieldSpec = FieldKind | `${FieldKind}?`;

/**
 * The fields the client reads from each agent message, beyond `type` and `re`. Only their presence
 * and JSON kind are checked: enough that a drifted agent is told apart from a message the client
 * misreads, without refusing what it would have read fine (a longer log line, a new phase name).
 */
const AGENT_FIELDS = {
  welcome: { protocol: 'integer', agent: 'string', name: 'string?', chunkSize: 'integer', maxPayload: 'integer' },
  queued: { position: 'integer', holder: 'string?' },
  leased: { lease: 'string', target: 'object', agent: 'string?' },
  'upload-ready': { offset: 'integer' },
  'upload-progress': { received: 'integer' },
  'upload-done': { sha256: 'string', size: 'integer', imageSize: 'integer', skipped: 'boolean' },
  log: { job: 'string', level: 'string', source: 'string', phase: 'string?', message: 'string', time: 'number' },
  phase: { job: 'string', phase: 'string', state: 'string', seconds: 'number?' },
  progress: { job: 'string', phase: 'string', done: 'number', total: 'number?', part: 'integer?', parts: 'integer?' },
  'job-running': { flash: 'string', job: 'string?' },
  result: {
    ok: 'boolean',
    code: 'string',
    message: 'string',
    job: 'string',
    target: 'object',
    sha256: 'string',
    imageSize: 'integer?',
    mappedBytes: 'integer?',
    wireBytes: 'integer?',
    bytesWritten: 'integer',
    card: 'string',
    timings: 'object',
    parts: 'array',
    tftpOptions: 'object?',
  },
  released: { lease: 'string' },
  'board-status': { boards: 'array', health: 'object?' },
  error: { code: 'string', message: 'string', fatal: 'boolean?' },
} as const satisfies Record<AgentMessage['type'], Record<string, FieldSpec>>;

/** Target fields inside `leased` and `result`. */
const TARGET_FIELDS = { name: 'string', mac: 'string', ip: 'string', model: 'string?' } as const;

function kindOf(value: unknown): FieldKind | 'null' | 'undefined' {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  if (typeof value === 'number') return Number.isSafeInteger(value) ? 'integer' : 'number';
  return typeof value as FieldKind | 'undefined';
}

function checkFields(m: Json, fields: Record<string, FieldSpec>, where: string): void {
  for (const [key, spec] of Object.entries(fields)) {
    const optional = spec.endsWith('?');
    const want = (optional ? spec.slice(0, -1) : spec) as FieldKind;
    const got = kindOf(m[key]);
    if (got === 'undefined' && optional) continue;
    if (got === want || (want === 'number' && got === 'integer')) continue;
    fail(got === 'undefined' ? `${where} has no "${key}"` : `"${key}" in ${where} is ${got}, not ${want}`);
  }
}

/**
 * An agent message the client cannot read. `re` is the request it answers, when that much could be
 * read, so the client can fail that request instead of leaving it waiting for an answer it dropped.
 */
export class UnreadableAgentMessage extends CodedError {
  constructor(
    message: string,
    readonly re?: string,
  ) {
    super('PROTOCOL_ERROR', message);
    this.name = 'UnreadableAgentMessage';
  }
}

/**
 * Parse a text frame from the agent, checking every field the client reads. The agent is trusted
 * more than a client, but a message that does not match its type is the sign of two protocol
 * versions apart, and is refused with PROTOCOL_ERROR naming the field rather than half-read.
 */
export function parseAgentMessage(text: string): AgentMessage {
  let re: string | undefined;
  try {
    const m = parseObject(text);
    if (typeof m.re === 'string') re = m.re;
    const type = String(m.type);
    if (!Object.hasOwn(AGENT_FIELDS, type)) fail(`unknown message type "${type.slice(0, 32)}"`);
    if (type !== 'error' && re === undefined) fail(`"${type}" message has no "re"`);
    if (m.re !== undefined && re === undefined) fail(`"re" in a "${type}" message is not a string`);
    checkFields(m, AGENT_FIELDS[type as AgentMessage['type']], `a "${type}" message`);
    if (type === 'leased' || type === 'result') checkFields(m.target as Json, TARGET_FIELDS, `the target of "${type}"`);
    return m as unknown as AgentMessage;
  } catch (err) {
    throw new UnreadableAgentMessage((err as Error).message, re);
  }
}
