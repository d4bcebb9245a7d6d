/**
 * Validation of messages crossing the WebSocket. Both sides treat the peer as untrusted: a
 * message that does not match its type is refused with BAD_MESSAGE naming the field, never
 * half-processed.
 */
import { CodedError } from './errors.js';
import { COMPRESSIONS, SHA256_PATTERN, type AgentMessage, type ClientMessage } from './messages.js';

type Json = Record<string, unknown>;

/** Longest text frame either side accepts; control messages are small. */
export const MAX_CONTROL_MESSAGE = 64 * 1024;

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
    default:
      fail(`unknown message type "${String(m.type).slice(0, 32)}"`);
  }
  return m as unknown as ClientMessage;
}

const AGENT_TYPES = new Set<AgentMessage['type']>([
  'welcome',
  'queued',
  'leased',
  'upload-ready',
  'upload-progress',
  'upload-done',
  'log',
  'phase',
  'progress',
  'result',
  'released',
  'error',
]);

/**
 * Parse a text frame from the agent. The client checks the shape it relies on (type and the
 * correlation id); the agent is trusted more than a client but still never crashes the client.
 */
export function parseAgentMessage(text: string): AgentMessage {
  const m = parseObject(text);
  if (typeof m.type !== 'string' || !AGENT_TYPES.has(m.type as AgentMessage['type']))
    fail(`unknown message type "${String(m.type).slice(0, 32)}" from the agent`);
  if (m.type !== 'error' && typeof m.re !== 'string') fail(`"${m.type}" message from the agent has no "re"`);
  return m as unknown as AgentMessage;
}
