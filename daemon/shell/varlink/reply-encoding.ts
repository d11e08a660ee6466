// The daemon's side of writing a reply: what a handler returned or threw, as one Varlink frame
// that can always be sent.
//
// Invariants:
// - Never throws: a reply that cannot be encoded (larger than the reply cap, or not matching
//   the registry: a daemon bug either way) becomes an InternalError frame, and the fds it
//   would have carried are closed here (they are the daemon's own, so closed directly), so the
//   peer still gets one reply per call.
// - What a handler threw is answered by its stable Varlink name (BrokerError,
//   VarlinkServiceError); anything else is logged in full and answered InternalError with a
//   reason that names at most a syscall and its errno name, never internals.
import type { Logger } from 'pino';
import { FramingError, MAX_REPLY_FRAME_BYTES } from '../../../protocol/framing.ts';
import { encodeBrokerError, encodeError } from '../../../protocol/encode.ts';
import type { ErrorParametersOf, QualifiedErrorName } from '../../../protocol/method-table.ts';
import { BrokerError, VarlinkServiceError } from '../../../protocol/errors.ts';
import { closeFd, SysError } from '../../../native/sys.ts';

/**
 * Encodes one reply; never throws. A reply that cannot be encoded is answered with
 * InternalError instead, its fds closed. Returns the frame and the fds to send with it.
 */
export function encodeOrInternalError(
  encode: () => Buffer, fds: number[], log: Logger, peer: { pid: number; uid: number },
): { frame: Buffer; fds: number[] } {
  try {
    return { frame: encode(), fds };
  } catch (err) {
    fds.forEach(closeFd);
    log.error({ err, peer }, 'a reply could not be encoded; answering InternalError instead');
    return { frame: encodeBrokerError(new BrokerError('InternalError', { reason: unsendableReason(err) })), fds: [] };
  }
}

/** Why a reply could not be sent, for the InternalError that replaces it (no internals). */
function unsendableReason(err: unknown): string {
  if (err instanceof FramingError && err.problem === 'frame-too-large') {
    return `the reply would be larger than the ${MAX_REPLY_FRAME_BYTES}-byte reply limit; the broker log has the details`;
  }
  return 'the reply could not be encoded; the broker log has the details';
}

/** Turns what a handler threw into a Varlink error reply; unexpected errors are logged in full. */
export function errorReply(err: unknown, log: Logger): Buffer {
  if (err instanceof BrokerError) return encodeBrokerError(err);
  if (err instanceof VarlinkServiceError) {
    return encodeError(err.qualifiedName as QualifiedErrorName, err.parameters as ErrorParametersOf<QualifiedErrorName>);
  }
  log.error({ err }, 'internal error while handling a call');
  const reason = err instanceof SysError ? `${err.syscall} failed: ${err.code}` : 'unexpected failure; the broker log has the details';
  return encodeBrokerError(new BrokerError('InternalError', { reason }));
}
