// The client's side of the wire: encoding a call, and checking a reply against the same
// registry schemas the daemon uses. Pure: bytes and fd numbers in, values out; closes nothing.
//
// Invariants:
// - decodeReply never throws. A reply is accepted only if it is strict UTF-8 JSON in the Varlink
//   reply shape, its parameters pass the method's strict reply schema, and its fds are exactly
//   the ones its fd parameters refer to, each once (Open: the iommufd at `fileDescriptor`, and
//   one per entry of `devices`, at its `fileDescriptor`); anything else is
//   `kind: 'invalid'` (the client reports a protocol violation and should close the connection).
// - Error replies come back as values: a BrokerError for io.iommufd.Broker.* (parameters checked
//   against errors.ts), the name and parameters for org.varlink.service.*. An error name outside
//   the registries is invalid: we never invent meaning for a name we do not know.
// - fd ownership: the frame's fds pass to the result: `fd` and `fds` (accepted reply; `fd` is
//   one of `fds`) are the caller's, every other result lists all of them in `fdsToClose`.
// - `continues: true` is invalid: the broker never streams (see docs/PROTOCOL.md, `more`).
import { z } from 'zod';
import { BrokerError, type BrokerErrorName, type BrokerErrorParameters } from './errors.ts';
import { encodeFrame, MAX_FRAME_BYTES, type Frame } from './framing.ts';
import { firstProblem, parseJsonBytes } from './json-message.ts';
import {
  lookupError, lookupMethod, replyFdListParameter, replyFdParameter,
  type ParametersOf, type QualifiedMethod, type QualifiedServiceError, type ReplyOf,
} from './method-table.ts';

/** The Varlink reply object. */
const replyEnvelope = z.object({
  parameters: z.record(z.string(), z.unknown()).optional(),
  continues: z.boolean().optional(),
  error: z.string().optional(),
}).strict();
const REPLY_ENVELOPE_FIELDS = Object.keys(replyEnvelope.shape);

export interface CallFlags {
  /** No reply wanted (the broker runs the method and sends nothing). */
  oneway?: boolean;
  /** Accepted, but the broker always answers with a single reply. */
  more?: boolean;
}

/** One call message. Requests are capped at MAX_FRAME_BYTES, like the daemon's decoder. */
export function encodeCall<Q extends QualifiedMethod>(method: Q, parameters: ParametersOf<Q>, flags: CallFlags = {}): Buffer {
  return encodeFrame({
    method,
    parameters,
    ...(flags.oneway === true ? { oneway: true } : {}),
    ...(flags.more === true ? { more: true } : {}),
  }, MAX_FRAME_BYTES);
}

export type DecodedReply<Q extends QualifiedMethod> =
  | {
    kind: 'reply';
    parameters: ReplyOf<Q>;
    /** The fd the reply refers to (Open: `fileDescriptor`), owned by the caller; else undefined. */
    fd: number | undefined;
    /** Every fd of the reply, by index (`fd` among them), owned by the caller. */
    fds: number[];
  }
  | { kind: 'broker-error'; error: BrokerError; fdsToClose: number[] }
  | {
    kind: 'service-error';
    name: QualifiedServiceError;
    parameters: Record<string, unknown>;
    fdsToClose: number[];
  }
  | {
    kind: 'invalid';
    /** What was wrong with the reply, for a ProtocolViolation message. */
    reason: string;
    fdsToClose: number[];
  };

/** Checks a reply frame to a call of `method`. */
export function decodeReply<Q extends QualifiedMethod>(frame: Frame, method: Q): DecodedReply<Q> {
  const fds = [...frame.fds];
  const invalid = (reason: string): DecodedReply<Q> => ({ kind: 'invalid', reason, fdsToClose: fds });

  const json = parseJsonBytes(frame.bytes);
  if (!json.ok) return invalid(json.reason);
  const envelope = replyEnvelope.safeParse(json.value);
  if (!envelope.success) {
    const problem = firstProblem(envelope.error, json.value, REPLY_ENVELOPE_FIELDS);
    return invalid(`not a Varlink reply: ${describe(problem.path, problem.reason)}`);
  }
  const { parameters = {}, continues = false, error } = envelope.data;
  if (continues) return invalid('the reply has continues: true, but the broker never sends several replies');

  if (error !== undefined) {
    const found = lookupError(error);
    if (!found.found) return invalid(`unknown error ${JSON.stringify(error.slice(0, 200))}`);
    const checked = found.schema.safeParse(parameters);
    if (!checked.success) {
      const problem = firstProblem(checked.error, parameters, []);
      return invalid(`the parameters of ${error} do not match the protocol: ${describe(problem.path, problem.reason)}`);
    }
    if (found.kind === 'broker') {
      // The schema for this very name just accepted the parameters.
      const brokerError = new BrokerError(found.name, checked.data as BrokerErrorParameters<BrokerErrorName>);
      return { kind: 'broker-error', error: brokerError, fdsToClose: fds };
    }
    return {
      kind: 'service-error',
      name: `org.varlink.service.${found.name}`,
      parameters: checked.data as Record<string, unknown>,
      fdsToClose: fds,
    };
  }

  const found = lookupMethod(method);
  if (!found.found) return invalid(`${method} is not a method of the protocol`);
  const checked = found.spec.reply.safeParse(parameters);
  if (!checked.success) {
    const problem = firstProblem(checked.error, parameters, []);
    return invalid(`the reply to ${method} does not match the protocol: ${describe(problem.path, problem.reason)}`);
  }
  const data = checked.data as Record<string, unknown>;
  const fdParameter = replyFdParameter[found.qualified];
  const index = fdParameter === undefined ? undefined : data[fdParameter];
  const referenced = typeof index === 'number' ? [index] : [];
  const listParameter = replyFdListParameter[found.qualified];
  const list = listParameter === undefined ? undefined : data[listParameter];
  // The reply schema made every entry an object with an integer fileDescriptor.
  if (Array.isArray(list)) for (const entry of list as { fileDescriptor: number }[]) referenced.push(entry.fileDescriptor);
  const beyond = referenced.find((i) => i >= fds.length);
  if (beyond !== undefined) {
    return invalid(`the reply to ${method} refers to file descriptor index ${beyond}, but ${fds.length} arrived`);
  }
  if (new Set(referenced).size !== referenced.length) {
    return invalid(`the reply to ${method} refers to one file descriptor index twice`);
  }
  if (fds.length !== referenced.length) {
    return invalid(`the reply to ${method} carried ${fds.length} file descriptor(s); ${referenced.length} expected`);
  }
  return {
    kind: 'reply',
    // Checked above by the reply schema of this very method.
    parameters: checked.data as ReplyOf<Q>,
    fd: typeof index === 'number' ? fds[index] : undefined,
    fds,
  };
}

function describe(path: string, reason: string): string {
  return path === '' ? reason : `${path}: ${reason}`;
}
