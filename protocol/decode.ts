// The one gate every incoming Varlink call passes before any handler runs. Pure: bytes and fd
// numbers in, values out; closes nothing. What the daemon sends back is encoded by encode.ts;
// the client's side of the wire (encodeCall, decodeReply) is reply.ts.
//
// Invariants:
// - decodeCall never throws. Its result either is a DecodedCall whose parameters passed the
//   method's strict zod schema and whose fd references all resolved, or a Rejection carrying a
//   registry error (protocol/errors.ts) and every fd of the frame in `fdsToClose`.
// - fd ownership: the frame's fds pass to the result. A DecodedCall hands the referenced fd to
//   the handler (Open: `targetPidFd`) and lists the rest in `unusedFds` (the shell closes
//   them on every path; with today's rules it is always empty, because an unreferenced fd
//   rejects the call). A Rejection lists all of them in `fdsToClose`.
// - Rejections are fatal (close the connection) exactly when the message cannot be understood
//   as a call: bad UTF-8, bad JSON, or an envelope outside the Varlink call shape. A valid
//   call to an unknown method, with bad parameters or bad fds, is answered and the connection
//   stays open.
// - A oneway call gets no reply, not even an error (`reply: false`); fatal rejections are
//   always answered (best effort) before closing.
import { z } from 'zod';
import type { Frame, FramingError } from './framing.ts';
import { firstProblem, parseJsonBytes } from './json-message.ts';
import {
  callFdParameter, lookupMethod, type ParametersOf, type QualifiedErrorName, type QualifiedMethod,
} from './method-table.ts';

/** The Varlink call object. Unknown fields are refused (fatal). */
const callEnvelope = z.object({
  method: z.string(),
  parameters: z.record(z.string(), z.unknown()).optional(),
  more: z.boolean().optional(),
  oneway: z.boolean().optional(),
  upgrade: z.boolean().optional(),
}).strict();
const CALL_ENVELOPE_FIELDS = Object.keys(callEnvelope.shape);

interface CallCommon {
  kind: 'call';
  /** The caller wants no reply: run the handler, send nothing (not even an error). */
  oneway: boolean;
  /** The caller accepts several replies; we always send exactly one, without `continues`. */
  more: boolean;
  /** fds that arrived with the call but belong to no parameter: the shell closes them. */
  unusedFds: number[];
}

/** Extra fields a method's handler gets besides its parameters: resolved fds. */
type ResolvedFds<Q extends QualifiedMethod> = Q extends 'io.iommufd.Broker.Open'
  ? {
    /** The fd referenced by targetPidFileDescriptor (a pidfd, unchecked), owned by the handler. */
    targetPidFd: number | undefined;
  }
  : unknown;

type CallOf<Q extends QualifiedMethod> = CallCommon & { method: Q; parameters: ParametersOf<Q> } & ResolvedFds<Q>;

/** A validated call; switch on `method` (qualified, e.g. "io.iommufd.Broker.Open"). */
export type DecodedCall = { [Q in QualifiedMethod]: CallOf<Q> }[QualifiedMethod];

/** An error as it goes on the wire. */
export interface WireError {
  name: QualifiedErrorName;
  parameters: Record<string, unknown>;
}

export interface Rejection {
  kind: 'rejection';
  /** The message cannot be understood: send `error` (best effort), then close the connection. */
  fatal: boolean;
  /** Whether to send `error` at all (false for a oneway call). */
  reply: boolean;
  error: WireError;
  /** Every fd that came with the frame; the shell closes them. */
  fdsToClose: number[];
}

const INVALID_PARAMETER = 'org.varlink.service.InvalidParameter';

function invalidParameter(parameter: string, reason: string): WireError {
  return { name: INVALID_PARAMETER, parameters: { parameter, reason } };
}

function reject(frame: Frame, how: { fatal: boolean; reply: boolean }, error: WireError): Rejection {
  return { kind: 'rejection', fatal: how.fatal, reply: how.reply, error, fdsToClose: [...frame.fds] };
}

const FATAL = { fatal: true, reply: true } as const;

const PROTO_KEY_REASON = 'unknown field';

/**
 * Whether an object has an own "__proto__" key. JSON.parse makes it an own data property, but
 * zod copies objects by assignment, where "__proto__" sets the prototype instead: the key
 * vanishes and a strict schema passes as if it were absent. Only own keys are looked at, never
 * recursively: a peer's JSON may nest thousands deep, and every parameter object is flat (a
 * nested object in any field fails its schema anyway).
 */
function hasOwnProtoKey(value: unknown): boolean {
  return typeof value === 'object' && value !== null && Object.hasOwn(value, '__proto__');
}

/** Validates one frame as a call: UTF-8, JSON, envelope, method, parameters, fds. */
export function decodeCall(frame: Frame): DecodedCall | Rejection {
  const json = parseJsonBytes(frame.bytes);
  if (!json.ok) return reject(frame, FATAL, invalidParameter('', json.reason));
  if (hasOwnProtoKey(json.value)) return reject(frame, FATAL, invalidParameter('__proto__', PROTO_KEY_REASON));
  const envelope = callEnvelope.safeParse(json.value);
  if (!envelope.success) {
    const problem = firstProblem(envelope.error, json.value, CALL_ENVELOPE_FIELDS);
    return reject(frame, FATAL, invalidParameter(problem.path, `not a Varlink call: ${problem.reason}`));
  }
  const { method, parameters = {}, more = false, oneway = false, upgrade = false } = envelope.data;
  const answer = { fatal: false, reply: !oneway };

  if (method.lastIndexOf('.') <= 0) {
    return reject(frame, answer, invalidParameter('method', 'a method name is qualified by its interface, e.g. io.iommufd.Broker.Open'));
  }
  const found = lookupMethod(method);
  if (!found.found) {
    return reject(frame, answer, found.missing === 'interface'
      ? { name: 'org.varlink.service.InterfaceNotFound', parameters: { interface: found.interface } }
      : { name: 'org.varlink.service.MethodNotFound', parameters: { method } });
  }
  if (upgrade) {
    return reject(frame, answer, invalidParameter('upgrade', 'protocol upgrades are not supported by this service'));
  }
  if (oneway && more) {
    return reject(frame, { fatal: false, reply: true }, invalidParameter('more', 'a call cannot be both oneway and more'));
  }

  // From the raw JSON: zod's copy of the envelope has already lost an own "__proto__" key.
  if (hasOwnProtoKey((json.value as { parameters?: unknown }).parameters)) {
    return reject(frame, answer, invalidParameter('__proto__', PROTO_KEY_REASON));
  }
  const schema = found.spec.parameters;
  const checked = schema.safeParse(parameters);
  if (!checked.success) {
    const known = schema instanceof z.ZodObject ? Object.keys(schema.shape) : [];
    const problem = firstProblem(checked.error, parameters, known);
    return reject(frame, answer, invalidParameter(problem.path, problem.reason));
  }
  const validated = checked.data as Record<string, unknown>;

  const fds = frame.fds;
  const maxFds = found.spec.maxFds;
  if (fds.length > maxFds) {
    return reject(frame, answer, invalidParameter('fileDescriptors',
      `${method} accepts at most ${maxFds} file descriptor(s); ${fds.length} arrived`));
  }
  const fdParameter = callFdParameter[found.qualified];
  let referencedIndex: number | undefined;
  if (fdParameter !== undefined) {
    const index = validated[fdParameter];
    if (typeof index === 'number') {
      if (index >= fds.length) {
        return reject(frame, answer, invalidParameter(fdParameter,
          `refers to file descriptor index ${index}, but the call carried ${fds.length} file descriptor(s)`));
      }
      referencedIndex = index;
    }
  }
  const unreferenced = fds.length - (referencedIndex === undefined ? 0 : 1);
  if (unreferenced > 0) {
    return reject(frame, answer, invalidParameter('fileDescriptors',
      `unexpected file descriptors: ${unreferenced} arrived that no parameter refers to`));
  }

  const call = {
    kind: 'call',
    method: found.qualified,
    parameters: validated,
    oneway,
    more,
    unusedFds: fds.filter((_, i) => i !== referencedIndex),
    ...(found.qualified === 'io.iommufd.Broker.Open'
      ? { targetPidFd: referencedIndex === undefined ? undefined : fds[referencedIndex] }
      : {}),
  };
  // The method and the parameters were checked together against the registry entry above.
  return call as DecodedCall;
}

/**
 * What to do after FrameDecoder.push threw: answer InvalidParameter (best effort), close the
 * connection, and close `heldFds` (from decoder.takeHeldFds()).
 */
export function framingRejection(error: FramingError, heldFds: number[]): Rejection {
  return { kind: 'rejection', fatal: true, reply: true, error: invalidParameter('', error.message), fdsToClose: heldFds };
}
