// Every method of io.iommufd.Broker and org.varlink.service: parameters and replies as zod
// schemas. The daemon validates calls with these (protocol/decode.ts) before any handler runs;
// the client validates replies with the same schemas.
//
// Invariants:
// - Parameter objects are strict: an unknown field is an InvalidParameter, never ignored.
// - Byte counts are integers in [0, 2^53); fd references are indexes into the fds that came
//   with the same message (systemd's convention), resolved by the decoder.
import { z } from 'zod';
import { BROKER_INTERFACE, SERVICE_INTERFACE } from './errors.ts';

/** Largest byte count we accept: JSON numbers are exact up to 2^53. */
export const MAX_BYTES = Number.MAX_SAFE_INTEGER;
/** VM names: what libvirt and KubeVirt use for domain names, printable and short. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$/;
/** Lease ids are made by the daemon: "l-" and 16 hex digits. */
export const LEASE_ID_PATTERN = /^l-[0-9a-f]{16}$/;

const byteCount = z.number().int().min(0).max(MAX_BYTES);
const positiveBytes = z.number().int().min(1).max(MAX_BYTES);
const fdIndex = z.number().int().min(0).max(15);
const leaseId = z.string().regex(LEASE_ID_PATTERN, 'a lease id looks like l-0123456789abcdef');

export const deviceKinds = ['iommufd', 'simulated'] as const;
export const accountingModes = ['process', 'none'] as const;

export const Lease = z.object({
  id: z.string(),
  name: z.string(),
  /** The target process whose RLIMIT_MEMLOCK the broker set. */
  pid: z.number().int(),
  /** The target's real uid (from /proc/PID/status). */
  uid: z.number().int(),
  /** The uid of the peer that asked for the lease. */
  ownerUid: z.number().int(),
  memoryBytes: byteCount,
  limitBytes: byteCount,
  /** "process": iommufd RLIMIT_MODE=1, pins charged to the target's own mm; "none": simulated device. */
  accountingMode: z.enum(accountingModes),
  deviceKind: z.enum(deviceKinds),
  requestId: z.string().optional(),
  createdAt: z.string(),
  /** VmPin / VmLck of the target right now, from /proc/PID/status (absent if unreadable). */
  pinnedBytes: byteCount.optional(),
  lockedBytes: byteCount.optional(),
}).strict();
export type Lease = z.infer<typeof Lease>;

export const Status = z.object({
  version: z.string(),
  device: z.object({
    kind: z.enum(deviceKinds),
    path: z.string(),
    /** IOMMU_OPTION_RLIMIT_MODE GET worked on a fresh FD (null: not probed, e.g. simulated). */
    rlimitModeSupported: z.boolean().nullable(),
    /** Whether the kernel knows a per-FD pinned-page limit option (no kernel does today). */
    perFdLimitOption: z.boolean().nullable(),
    note: z.string(),
  }).strict(),
  capabilities: z.object({
    sysResource: z.boolean(),
    note: z.string(),
  }).strict(),
  budget: z.object({ totalBytes: byteCount, usedBytes: byteCount, freeBytes: byteCount }).strict(),
  leases: z.number().int().nonnegative(),
  overheadBytes: byteCount,
  /** Whether lease changes can be made durable; while not, since when and why (absent from older brokers). */
  journal: z.object({
    healthy: z.boolean(),
    degradedSince: z.string().optional(),
    reason: z.string().optional(),
  }).strict().optional(),
}).strict();
export type Status = z.infer<typeof Status>;

export const brokerMethods = {
  Open: {
    parameters: z.object({
      name: z.string().regex(NAME_PATTERN, 'names are 1-128 chars of [A-Za-z0-9._:@+-], starting alphanumeric'),
      memoryBytes: positiveBytes,
      targetPidFileDescriptor: fdIndex.optional(),
      requestId: z.string().min(1).max(128).optional(),
    }).strict(),
    reply: z.object({ lease: Lease, fileDescriptor: fdIndex }).strict(),
    /** How many fds a call may carry. */
    maxFds: 1,
  },
  Resize: {
    parameters: z.object({ lease: leaseId, memoryBytes: positiveBytes }).strict(),
    reply: z.object({ lease: Lease, previousLimitBytes: byteCount }).strict(),
    maxFds: 0,
  },
  Release: {
    parameters: z.object({ lease: leaseId }).strict(),
    reply: z.object({ limitRestored: z.boolean() }).strict(),
    maxFds: 0,
  },
  List: {
    parameters: z.object({}).strict(),
    reply: z.object({ leases: z.array(Lease) }).strict(),
    maxFds: 0,
  },
  Status: {
    parameters: z.object({}).strict(),
    reply: Status,
    maxFds: 0,
  },
} as const;

export const serviceMethods = {
  GetInfo: {
    parameters: z.object({}).strict(),
    reply: z.object({
      vendor: z.string(), product: z.string(), version: z.string(), url: z.string(),
      interfaces: z.array(z.string()),
    }).strict(),
    maxFds: 0,
  },
  GetInterfaceDescription: {
    parameters: z.object({ interface: z.string() }).strict(),
    reply: z.object({ description: z.string() }).strict(),
    maxFds: 0,
  },
} as const;

export type BrokerMethod = keyof typeof brokerMethods;
export type ServiceMethod = keyof typeof serviceMethods;
export type BrokerParameters<M extends BrokerMethod> = z.infer<(typeof brokerMethods)[M]['parameters']>;
export type BrokerReply<M extends BrokerMethod> = z.infer<(typeof brokerMethods)[M]['reply']>;

export function qualifiedBrokerMethod(m: BrokerMethod): string {
  return `${BROKER_INTERFACE}.${m}`;
}
export function qualifiedServiceMethod(m: ServiceMethod): string {
  return `${SERVICE_INTERFACE}.${m}`;
}
