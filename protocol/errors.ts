// The one registry of error names on the wire, shared by daemon, client and the admin API.
//
// Invariants:
// - A name, once published, never changes meaning; docs/PROTOCOL.md lists exactly these
//   (a test checks both directions).
// - Every error carries parameters that say why: which rule, what was requested, what was
//   available. An errno appears only as its symbolic name inside KernelRefused /
//   DeviceUnavailable / JournalUnavailable, never as the contract.
import { z } from 'zod';

export const BROKER_INTERFACE = 'io.iommufd.Broker';
export const SERVICE_INTERFACE = 'org.varlink.service';

const bytes = z.number().int().nonnegative();

/** Parameters of each io.iommufd.Broker error (the wire shape, also used by the admin API). */
export const brokerErrorParameters = {
  PermissionDenied: z.object({ rule: z.string(), reason: z.string() }),
  BudgetExceeded: z.object({ requestedBytes: bytes, availableBytes: bytes, budgetBytes: bytes }),
  LimitExceeded: z.object({ rule: z.string(), reason: z.string(), requested: z.number(), maximum: z.number() }),
  NoSuchLease: z.object({ lease: z.string() }),
  TargetGone: z.object({ pid: z.number().int(), reason: z.string() }),
  TargetAlreadyLeased: z.object({ pid: z.number().int(), lease: z.string() }),
  TargetBypassesAccounting: z.object({ pid: z.number().int(), capability: z.string(), set: z.string(), reason: z.string() }),
  DuplicateRequest: z.object({ requestId: z.string(), lease: z.string() }),
  DeviceUnavailable: z.object({ device: z.string(), reason: z.string(), errno: z.string().optional() }),
  /**
   * A requested PCI address is not a VFIO cdev-bound device: `found` says what the broker saw
   * ('absent', 'not-vfio-pci', 'no-vfio-cdev', 'not-a-vfio-cdev').
   */
  NoSuchDevice: z.object({ address: z.string(), found: z.string(), reason: z.string() }),
  /** A requested device is held by another live lease (released ones hold theirs until the target exits). */
  DeviceBusy: z.object({ address: z.string(), lease: z.string() }),
  KernelRefused: z.object({ operation: z.string(), errno: z.string(), reason: z.string() }),
  ShuttingDown: z.object({ reason: z.string() }),
  /** The lease journal cannot make records durable (e.g. a full disk); `since` is ISO 8601. */
  JournalUnavailable: z.object({ reason: z.string(), errno: z.string(), since: z.string() }),
  /** A bug or an unexpected OS failure; the broker log has the details. */
  InternalError: z.object({ reason: z.string() }),
} as const;

export type BrokerErrorName = keyof typeof brokerErrorParameters;
export type BrokerErrorParameters<N extends BrokerErrorName> = z.infer<(typeof brokerErrorParameters)[N]>;

/** org.varlink.service errors we emit (from the Varlink specification). */
export const serviceErrorParameters = {
  InterfaceNotFound: z.object({ interface: z.string() }),
  MethodNotFound: z.object({ method: z.string() }),
  MethodNotImplemented: z.object({ method: z.string() }),
  InvalidParameter: z.object({ parameter: z.string(), reason: z.string().optional() }),
  PermissionDenied: z.object({}),
  ExpectedMore: z.object({}),
} as const;

export type ServiceErrorName = keyof typeof serviceErrorParameters;

export const brokerErrorNames = Object.keys(brokerErrorParameters) as BrokerErrorName[];
export const serviceErrorNames = Object.keys(serviceErrorParameters) as ServiceErrorName[];

/** Fully qualified names, as they appear in the `error` field of a reply. */
export function qualifiedBrokerError(name: BrokerErrorName): string {
  return `${BROKER_INTERFACE}.${name}`;
}
export function qualifiedServiceError(name: ServiceErrorName): string {
  return `${SERVICE_INTERFACE}.${name}`;
}

/**
 * An error a handler (or the core) decided on. Thrown inside the daemon, sent as a Varlink
 * error reply, and rebuilt by the client with the same name and parameters.
 */
export class BrokerError<N extends BrokerErrorName = BrokerErrorName> extends Error {
  readonly errorName: N;
  readonly parameters: BrokerErrorParameters<N>;
  constructor(name: N, parameters: BrokerErrorParameters<N>) {
    super(describeBrokerError(name, parameters as Record<string, unknown>));
    this.name = 'BrokerError';
    this.errorName = name;
    this.parameters = parameters;
  }
  get qualifiedName(): string {
    return qualifiedBrokerError(this.errorName);
  }
}

/** One human sentence for logs and the CLI: the name, then every parameter. */
export function describeBrokerError(name: string, parameters: Record<string, unknown>): string {
  const detail = Object.entries(parameters)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
    .join(', ');
  return detail === '' ? name : `${name}: ${detail}`;
}

/**
 * An org.varlink.service.* error: thrown by a daemon handler (e.g. InterfaceNotFound) and
 * rebuilt by the client from an error reply.
 */
export class VarlinkServiceError extends Error {
  /** Fully qualified, as on the wire, e.g. org.varlink.service.InvalidParameter. */
  readonly qualifiedName: string;
  readonly parameters: Record<string, unknown>;
  constructor(qualifiedName: string, parameters: Record<string, unknown>) {
    super(describeBrokerError(qualifiedName, parameters));
    this.name = 'VarlinkServiceError';
    this.qualifiedName = qualifiedName;
    this.parameters = parameters;
  }
  /** The short name, e.g. InvalidParameter. */
  get errorName(): string {
    return this.qualifiedName.slice(this.qualifiedName.lastIndexOf('.') + 1);
  }
}
