// How the admin HTTP API says no: the same error names as the Varlink replies, an HTTP status
// chosen per name, and one body shape.
//
// Invariants:
// - A body is always `{ error, parameters }` where `error` is the fully qualified name a
//   Varlink reply would carry (io.iommufd.Broker.NoSuchLease, org.varlink.service.
//   InvalidParameter, ...) and `parameters` its documented parameters. Only a failed policy
//   reload, which has no Varlink counterpart, uses the admin's own io.iommufd.Admin.PolicyRejected.
// - Status codes, decided once here (docs: the table below):
//     PermissionDenied 403 · NoSuchLease, NoSuchDevice 404 · TargetGone 410 ·
//     BudgetExceeded, LimitExceeded, TargetAlreadyLeased, TargetBypassesAccounting,
//     DuplicateRequest, DeviceBusy 409 (valid request, refused by the current budget, caps or lease state:
//     the body's name and parameters say which) · PolicyRejected 422 · InvalidParameter 400
//     (413/415 when fastify refused the body's size or type) · MethodNotFound 404 ·
//     KernelRefused 502 (the broker acted, the kernel said no: not a broker bug) ·
//     DeviceUnavailable, ShuttingDown, JournalUnavailable 503 · InternalError 500.
// - Anything that is not a known refusal is logged in full and answered as InternalError with
//   no internals in the body.
import { z } from 'zod';
import type { Logger } from 'pino';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import {
  BrokerError, qualifiedBrokerError, qualifiedServiceError, type BrokerErrorName,
} from '../../../protocol/errors.ts';
import { SysError } from '../../../native/sys.ts';
import { PolicyError } from '../config.ts';

export const ADMIN_INTERFACE = 'io.iommufd.Admin';
/** The policy file could not be loaded; the old policy stays. Parameters: source, key, reason. */
export const POLICY_REJECTED = `${ADMIN_INTERFACE}.PolicyRejected`;

export const HTTP_STATUS: Readonly<Record<BrokerErrorName, number>> = {
  PermissionDenied: 403,
  NoSuchLease: 404,
  TargetGone: 410,
  BudgetExceeded: 409,
  LimitExceeded: 409,
  TargetAlreadyLeased: 409,
  TargetBypassesAccounting: 409,
  DuplicateRequest: 409,
  NoSuchDevice: 404,
  DeviceBusy: 409,
  KernelRefused: 502,
  DeviceUnavailable: 503,
  ShuttingDown: 503,
  JournalUnavailable: 503,
  InternalError: 500,
};

/** The body of every non-2xx answer. */
export const AdminErrorBody = z.object({
  error: z.string(),
  parameters: z.record(z.string(), z.unknown()),
}).strict();
export type AdminErrorBody = z.infer<typeof AdminErrorBody>;

export interface AdminFailure {
  status: number;
  body: AdminErrorBody;
  /** The unqualified name, for the request metrics' outcome label. */
  outcome: string;
}

export function brokerFailure(error: BrokerError): AdminFailure {
  return {
    status: HTTP_STATUS[error.errorName],
    body: { error: error.qualifiedName, parameters: { ...error.parameters } },
    outcome: error.errorName,
  };
}

function invalidParameter(status: number, parameter: string, reason: string): AdminFailure {
  return { status, body: { error: qualifiedServiceError('InvalidParameter'), parameters: { parameter, reason } }, outcome: 'InvalidParameter' };
}

/** No route for this method and path. */
export function notFound(method: string, path: string): AdminFailure {
  return {
    status: 404,
    body: { error: qualifiedServiceError('MethodNotFound'), parameters: { method: `${method} ${path}` } },
    outcome: 'MethodNotFound',
  };
}

/** Whatever a route or fastify threw, as an answer; unexpected failures are logged here. */
export function toFailure(error: unknown, log: Logger): AdminFailure {
  if (error instanceof BrokerError) return brokerFailure(error);
  if (error instanceof PolicyError) {
    return {
      status: 422,
      body: { error: POLICY_REJECTED, parameters: { source: error.source, key: error.key, reason: error.reason } },
      outcome: 'PolicyRejected',
    };
  }
  if (hasZodFastifySchemaValidationErrors(error)) {
    const first = error.validation[0];
    const where = error.validationContext ?? 'request';
    const path = first?.instancePath.replace(/^\//, '').replace(/\//g, '.') ?? '';
    const unknownKey = first?.params['keys'];
    const parameter = Array.isArray(unknownKey) && typeof unknownKey[0] === 'string' ? unknownKey[0] : path === '' ? where : path;
    return invalidParameter(400, parameter, `${where}: ${first?.message ?? 'invalid'}`);
  }
  const status = httpStatusOf(error);
  if (status !== undefined && status >= 400 && status < 500) {
    // fastify's own refusals: unparsable JSON (400), body too large (413), unsupported type (415).
    return invalidParameter(status, 'body', error instanceof Error ? error.message : 'the request body was refused');
  }
  log.error({ err: error }, 'admin API: internal error while handling a request');
  const reason = error instanceof SysError ? `${error.syscall} failed: ${error.code}` : 'unexpected failure; the broker log has the details';
  return { status: 500, body: { error: qualifiedBrokerError('InternalError'), parameters: { reason } }, outcome: 'InternalError' };
}

function httpStatusOf(error: unknown): number | undefined {
  if (typeof error !== 'object' || error === null || !('statusCode' in error)) return undefined;
  return typeof error.statusCode === 'number' ? error.statusCode : undefined;
}
