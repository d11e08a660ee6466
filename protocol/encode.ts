// What the daemon sends back on the wire: success replies and error replies, as frames. Pure:
// values in, bytes out. The incoming side is decode.ts; the client's side is reply.ts.
//
// Invariants:
// - Only names from the registries go on the wire: encodeError refuses anything else, and
//   refuses parameters that do not match that error's schema (a TypeError: a daemon bug).
// - Error parameters are sent as the schema parsed them: fields it does not declare are dropped.
import type { BrokerError } from './errors.ts';
import type { Rejection } from './decode.ts';
import { encodeFrame } from './framing.ts';
import { firstProblem } from './json-message.ts';
import { lookupError, type ErrorParametersOf, type QualifiedErrorName } from './method-table.ts';

/** A success reply. The shell sends the reply's fds (if any) with these bytes. */
export function encodeReply(parameters: Record<string, unknown>): Buffer {
  return encodeFrame({ parameters });
}

/**
 * An error reply. Throws TypeError (a daemon bug) if the name is not in the registries or the
 * parameters do not match its schema; fields the schema does not declare are not sent.
 */
export function encodeError<Q extends QualifiedErrorName>(name: Q, parameters: ErrorParametersOf<Q>): Buffer {
  const found = lookupError(name);
  if (!found.found) throw new TypeError(`encodeError: ${name} is not an error in protocol/errors.ts`);
  const checked = found.schema.safeParse(parameters);
  if (!checked.success) {
    const problem = firstProblem(checked.error, parameters, []);
    throw new TypeError(`encodeError: parameters of ${name} do not match the registry: ${problem.path || '(object)'}: ${problem.reason}`);
  }
  return encodeFrame({ error: name, parameters: checked.data });
}

/** The error reply for a BrokerError a handler threw. */
export function encodeBrokerError(error: BrokerError): Buffer {
  return encodeError(`io.iommufd.Broker.${error.errorName}`, error.parameters);
}

/** The error reply for a Rejection (send it only when `rejection.reply`). */
export function encodeRejection(rejection: Rejection): Buffer {
  return encodeError(rejection.error.name, rejection.error.parameters as ErrorParametersOf<QualifiedErrorName>);
}
