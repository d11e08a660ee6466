// Every method of io.iommufd.Broker and org.varlink.service: parameters and replies as zod
// schemas. The daemon validates calls with these (protocol/decode.ts) before any handler runs;
// the client validates replies with the same schemas.
//
// Invariants:
// - Parameter objects are strict: an unknown field is an InvalidParameter, never ignored.
// - Byte counts are integers in [0, 2^53); fd references are indexes into the fds that came
//   with the same message (systemd's convention), resolved by the decoder.
// - Every string a reply can carry many times over (a Lease's) has a bounded length here, so a
//   List page of MAX_LIST_LIMIT leases provably fits MAX_REPLY_FRAME_BYTES (the bound is
//   computed from these schemas in test/protocol/list-page-bound.test.ts).
import { z } from 'zod';

/** Largest byte count we accept: JSON numbers are exact up to 2^53. */
export const MAX_BYTES = Number.MAX_SAFE_INTEGER;
/** VM names: what libvirt and KubeVirt use for domain names, printable and short. */
export const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$/;
/** Lease ids are made by the daemon: "l-" and 16 hex digits. */
export const LEASE_ID_PATTERN = /^l-[0-9a-f]{16}$/;
/** Open's requestId: 1-128 UTF-16 code units (JSON escapes a control character to 6 bytes). */
export const MAX_REQUEST_ID_LENGTH = 128;
/** Lease.createdAt: ISO 8601, UTC, with milliseconds (what Date.toISOString() writes). */
export const CREATED_AT_PATTERN = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
/**
 * List paging. A page holds at most MAX_LIST_LIMIT leases (DEFAULT_LIST_LIMIT when the call
 * names no limit): small enough that a page of the longest leases the schemas allow fits the
 * reply cap with room to spare, and that one call reads at most this many /proc files.
 */
export const MAX_LIST_LIMIT = 1000;
export const DEFAULT_LIST_LIMIT = 1000;
/**
 * A List cursor, as the broker hands it out in `next`: opaque to clients (they pass it back
 * unchanged). It names a position in the broker's lease order (grant time in ms, then id), so
 * it stays valid when the lease it came from has ended meanwhile. At most 15 digits: every
 * cursor that matches names a safe integer (years 0000-9999 need at most 15).
 */
export const LIST_CURSOR_PATTERN = /^-?[0-9]{1,15}\/l-[0-9a-f]{16}$/;
/**
 * A PCI address as the wire carries it: canonical `DDDD:BB:DD.F`, lowercase hex (domain,
 * bus, device 00-1f, function 0-7), exactly as sysfs names it under /sys/bus/pci/devices.
 * One spelling only, so that "no duplicates" and the policy's allowlist compare exactly;
 * iommufdctl accepts the short `BB:DD.F` (domain 0000) and uppercase, and sends this form.
 */
export const PCI_ADDRESS_PATTERN = /^[0-9a-f]{4}:[0-9a-f]{2}:[01][0-9a-f]\.[0-7]$/;
/** Most VFIO devices one Open may ask for (and one lease may hold). */
export const MAX_DEVICES_PER_LEASE = 8;
/** A VFIO device cdev's name under /dev/vfio/devices, as sysfs lists it in vfio-dev/. */
export const VFIO_CDEV_PATTERN = /^vfio[0-9]{1,10}$/;

const byteCount = z.number().int().min(0).max(MAX_BYTES);
const positiveBytes = z.number().int().min(1).max(MAX_BYTES);
const fdIndex = z.number().int().min(0).max(15);
const leaseId = z.string().regex(LEASE_ID_PATTERN, 'a lease id looks like l-0123456789abcdef');
const vmName = z.string().regex(NAME_PATTERN, 'names are 1-128 chars of [A-Za-z0-9._:@+-], starting alphanumeric');
const requestId = z.string().min(1).max(MAX_REQUEST_ID_LENGTH);
const listCursor = z.string().regex(LIST_CURSOR_PATTERN, 'a cursor is the `next` of an earlier List reply, passed back unchanged');
const pciAddress = z.string().regex(PCI_ADDRESS_PATTERN, 'a PCI address is DDDD:BB:DD.F in lowercase hex, e.g. 0000:00:03.0');
/** Open's devices: 1-8 distinct canonical PCI addresses (the one input check for them). */
const deviceAddresses = z.array(pciAddress).min(1).max(MAX_DEVICES_PER_LEASE)
  .refine((list) => new Set(list).size === list.length, 'each device may be named only once');
/** A device a lease holds: its PCI address and the vfio cdev the broker opened for it. */
export const LeaseDevice = z.object({
  address: pciAddress,
  cdev: z.string().regex(VFIO_CDEV_PATTERN, 'a vfio cdev name is vfio followed by its number'),
}).strict();
export type LeaseDevice = z.infer<typeof LeaseDevice>;

export const deviceKinds = ['iommufd', 'simulated'] as const;
export const accountingModes = ['process', 'none'] as const;

export const Lease = z.object({
  id: leaseId,
  name: vmName,
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
  requestId: requestId.optional(),
  /** Always 24 characters (CREATED_AT_PATTERN). */
  createdAt: z.string().regex(CREATED_AT_PATTERN, 'an ISO 8601 UTC time with milliseconds, as Date.toISOString() writes it'),
  /** VmPin / VmLck of the target right now, from /proc/PID/status (absent if unreadable). */
  pinnedBytes: byteCount.optional(),
  lockedBytes: byteCount.optional(),
  /** When the lease was released; it stays charged until its target exits (absent: not released). */
  releasedAt: z.string().optional(),
  /** The VFIO devices this lease holds, in the order Open named them (absent: none). */
  devices: z.array(LeaseDevice).min(1).max(MAX_DEVICES_PER_LEASE).optional(),
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
  budget: z.object({ totalBytes: byteCount, usedBytes: byteCount, freeBytes: byteCount, releasedBytes: byteCount }).strict(),
  leases: z.number().int().nonnegative(),
  /** VFIO devices held by live leases, released ones included (absent from older brokers). */
  devicesHeld: z.number().int().nonnegative().optional(),
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
      name: vmName,
      memoryBytes: positiveBytes,
      targetPidFileDescriptor: fdIndex.optional(),
      requestId: requestId.optional(),
      /** VFIO devices to open for this VM, by PCI address; their fds come with the iommufd. */
      devices: deviceAddresses.optional(),
    }).strict(),
    reply: z.object({
      lease: Lease,
      fileDescriptor: fdIndex,
      /** One per requested device, in the order asked: its fd's index among the reply's fds (absent: none asked). */
      devices: z.array(z.object({ address: pciAddress, fileDescriptor: fdIndex }).strict())
        .min(1).max(MAX_DEVICES_PER_LEASE).optional(),
    }).strict(),
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
    parameters: z.object({
      /** Most leases in this reply (default DEFAULT_LIST_LIMIT). */
      limit: z.number().int().min(1).max(MAX_LIST_LIMIT).optional(),
      /** Continue after this position: the `next` of the previous page. */
      cursor: listCursor.optional(),
    }).strict(),
    /** `next` is present exactly when more leases follow this page. */
    reply: z.object({ leases: z.array(Lease), next: listCursor.optional() }).strict(),
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
