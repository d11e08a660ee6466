// The Varlink interface descriptions (IDL) the broker serves through
// org.varlink.service.GetInterfaceDescription, and the GetInfo answer.
//
// Invariants:
// - The IDL says exactly what methods.ts and errors.ts enforce: the same methods, errors and
//   types, the same fields, optionality and field types (test/protocol/interface.test.ts
//   renders the zod registries as IDL and compares them with this text, both directions).
// - The version comes from package.json; nothing here is computed at run time besides that.
import packageJson from '../package.json' with { type: 'json' };
import { BROKER_INTERFACE, SERVICE_INTERFACE } from './errors.ts';

export const BROKER_INTERFACE_DESCRIPTION = `# iommufd-broker hands an unprivileged QEMU (or the manager that starts it) an iommufd
# file descriptor whose pinned memory is limited by the VM's RAM size.
#
# For each lease the broker opens /dev/iommu, sets IOMMU_OPTION_RLIMIT_MODE to 1 (pinned
# pages are charged to the mapping process, not to its user), sets the target process's
# RLIMIT_MEMLOCK to the VM's memory plus an overhead, and passes the fd with SCM_RIGHTS.
# A lease ends on Release or when the target process exits.
#
# Byte counts are exact integers in [0, 2^53). File descriptors travel with the message
# and are referenced by their index among the fds of that message.
interface ${BROKER_INTERFACE}

# A limit the broker set on one target process.
type Lease (
  # Chosen by the broker: "l-" followed by 16 hex digits.
  id: string,
  # The VM name given to Open.
  name: string,
  # The target process whose RLIMIT_MEMLOCK the broker set.
  pid: int,
  # The target's real uid.
  uid: int,
  # The uid of the peer that asked for the lease; per-uid caps are charged to it.
  ownerUid: int,
  # The VM's memory size, as given to Open or the last Resize.
  memoryBytes: int,
  # The RLIMIT_MEMLOCK set on the target: memoryBytes plus the configured overhead,
  # rounded up to the page size.
  limitBytes: int,
  # process: RLIMIT_MODE=1, pins are charged to the target's own locked memory;
  # none: simulated device, nothing is pinned or charged.
  accountingMode: (process, none),
  # iommufd: a real /dev/iommu fd; simulated: a stand-in fd for hosts without iommufd.
  deviceKind: (iommufd, simulated),
  # The requestId given to Open, if any.
  requestId: ?string,
  # When the lease was granted (ISO 8601, UTC).
  createdAt: string,
  # The target's VmPin from /proc/PID/status right now; absent if unreadable.
  pinnedBytes: ?int,
  # The target's VmLck from /proc/PID/status right now; absent if unreadable.
  lockedBytes: ?int,
  # When the lease was released (ISO 8601, UTC); absent while it is not. A released lease
  # can no longer be resized, but stays charged to the budget and its owner until its
  # target exits: the target keeps its fd and its limit, and may still pin up to it.
  releasedAt: ?string,
  # The VFIO devices the lease holds (absent: none), in the order Open named them: each
  # one's PCI address (DDDD:BB:DD.F) and the cdev under /dev/vfio/devices the broker opened.
  # A device stays held until the lease's target exits, released or not.
  devices: ?[](address: string, cdev: string)
)

# Opens a new iommufd fd for a VM and limits the target's RLIMIT_MEMLOCK.
# The target is the caller itself, or (managers only) the process of the pidfd sent with
# the call and named by targetPidFileDescriptor. The reply carries the iommufd, referenced
# by fileDescriptor, and one fd per requested VFIO device, all in the same message. One
# lease per target process.
method Open(
  # The VM name: 1-128 of [A-Za-z0-9._:@+-], starting alphanumeric.
  name: string,
  # The VM's RAM size in bytes (at least 1).
  memoryBytes: int,
  # Index of a pidfd sent with this call: the process to limit instead of the caller.
  targetPidFileDescriptor: ?int,
  # An idempotency key (1-128 chars): the same owner repeating it while that lease lives
  # gets DuplicateRequest naming the lease.
  requestId: ?string,
  # VFIO devices to open for the VM: 1-8 distinct PCI addresses, DDDD:BB:DD.F in lowercase
  # hex. Each must be given to this caller or VM by the policy's [[devices]], be bound to
  # vfio-pci with a VFIO cdev, and be held by no other live lease.
  devices: ?[]string
) -> (
  lease: Lease,
  # Index of the iommufd among the fds of this reply (always 0).
  fileDescriptor: int,
  # Present when devices were asked for: each device's address and the index of its
  # /dev/vfio/devices/vfioN fd among the fds of this reply, in the order asked.
  devices: ?[](address: string, fileDescriptor: int)
)

# Changes a lease's memory size and the target's limit with it: raise before memory
# hotplug, lower after unplug. Managers only. Raising checks the caps and the budget on
# the increase; lowering is always allowed.
method Resize(
  # The lease id, as in Lease.id.
  lease: string,
  # The VM's new RAM size in bytes (at least 1).
  memoryBytes: int
) -> (
  lease: Lease,
  # The lease's limitBytes before this call.
  previousLimitBytes: int
)

# Ends the owner's and the managers' control of a lease: it can no longer be resized.
# It never changes the target's limit, and the lease stays charged (releasedAt is set) until
# its target exits. The lease's owner or a manager may release it; releasing again is a no-op.
method Release(
  # The lease id, as in Lease.id.
  lease: string
) -> (
  # Whether the target's earlier limit was put back: always false (a Release never raises
  # a live target's limit, so it keeps the lease's).
  limitRestored: bool
)

# The leases the caller may see: managers see all, others the leases they own or whose
# target runs as their uid. Oldest first (grant time, then id), one page per call: call
# again with cursor set to next until a reply has no next.
method List(
  # Most leases in this reply: 1-1000 (default 1000).
  limit: ?int,
  # The next of the previous reply, passed back unchanged (opaque); absent: from the start.
  cursor: ?string
) -> (
  leases: []Lease,
  # Present when more leases follow: the cursor for the next call.
  next: ?string
)

# The broker's state: device, capabilities, budget.
method Status() -> (
  # The broker's version.
  version: string,
  device: (
    kind: (iommufd, simulated),
    # The device path opened for leases.
    path: string,
    # Whether IOMMU_OPTION_RLIMIT_MODE worked on a fresh fd (null: not probed).
    rlimitModeSupported: ?bool,
    # Whether the kernel knows a per-fd pinned-page limit option (none does today).
    perFdLimitOption: ?bool,
    note: string
  ),
  capabilities: (
    # Whether the broker holds CAP_SYS_RESOURCE (needed to raise limits, and to set
    # limits on processes of other users).
    sysResource: bool,
    note: string
  ),
  # limitBytes summed over all leases whose targets live (released ones included), against
  # the configured budget; releasedBytes is the part held by released leases.
  budget: (totalBytes: int, usedBytes: int, freeBytes: int, releasedBytes: int),
  # How many leases are live.
  leases: int,
  # How many VFIO devices live leases hold (released ones included).
  devicesHeld: ?int,
  # What the broker adds to memoryBytes before rounding to the page size.
  overheadBytes: int,
  # Whether lease changes can be made durable; while not, since when (ISO 8601) and why.
  journal: ?(healthy: bool, degradedSince: ?string, reason: ?string)
)

# The policy does not allow this caller to do this (rule names which rule).
error PermissionDenied (rule: string, reason: string)

# The request would take the sum of all leases' limitBytes over the budget.
error BudgetExceeded (requestedBytes: int, availableBytes: int, budgetBytes: int)

# A cap other than the budget: per-vm-max, per-uid-leases, per-uid-bytes, or
# limit-representable (the limit would not be an exact integer).
error LimitExceeded (rule: string, reason: string, requested: float, maximum: float)

# No lease with this id is visible to the caller (unknown and invisible look the same).
error NoSuchLease (lease: string)

# The target process exited, or its pid was reused, before the broker could limit it.
error TargetGone (pid: int, reason: string)

# The target already has a lease; one lease per target process.
error TargetAlreadyLeased (pid: int, lease: string)

# The target holds a capability (CAP_IPC_LOCK) that exempts its pins from accounting,
# so a limit would not bind.
error TargetBypassesAccounting (pid: int, capability: string, set: string, reason: string)

# The owner already holds a live lease opened with this requestId.
error DuplicateRequest (requestId: string, lease: string)

# The iommufd device cannot be opened or prepared; errno is its symbolic name.
error DeviceUnavailable (device: string, reason: string, errno: ?string)

# A requested PCI address is not a device bound to vfio-pci with a VFIO cdev. found says
# what the broker saw: absent, not-vfio-pci, no-vfio-cdev or not-a-vfio-cdev.
error NoSuchDevice (address: string, found: string, reason: string)

# A requested VFIO device is held by another live lease (until that lease's target exits).
error DeviceBusy (address: string, lease: string)

# The kernel refused an operation (prlimit, ioctl, ...); errno is its symbolic name.
error KernelRefused (operation: string, errno: string, reason: string)

# The broker is stopping and takes no new work.
error ShuttingDown (reason: string)

# The lease journal cannot make records durable (full or failing disk); the change was
# refused. The broker retries by itself; errno is its symbolic name, since is ISO 8601.
error JournalUnavailable (reason: string, errno: string, since: string)

# A bug or an unexpected failure; the broker log has the details.
error InternalError (reason: string)
`;

export const SERVICE_INTERFACE_DESCRIPTION = `# The Varlink service interface, provided by every Varlink service.
interface ${SERVICE_INTERFACE}

# The service's vendor, product, version, URL, and the interfaces it implements.
method GetInfo() -> (
  vendor: string,
  product: string,
  version: string,
  url: string,
  interfaces: []string
)

# The description of an interface this service implements.
method GetInterfaceDescription(interface: string) -> (description: string)

# The requested interface is not implemented here.
error InterfaceNotFound (interface: string)

# The interface does not define the requested method.
error MethodNotFound (method: string)

# The interface defines the method, but this service does not implement it.
error MethodNotImplemented (method: string)

# A parameter is invalid. This service adds reason: what was wrong with it. An empty
# parameter means the message as a whole (not UTF-8, not JSON, a framing limit).
error InvalidParameter (parameter: string, reason: ?string)

# The caller may not use this service.
error PermissionDenied ()

# The method must be called with more set to true.
error ExpectedMore ()
`;

const interfaceDescriptions: Readonly<Record<string, string>> = {
  [SERVICE_INTERFACE]: SERVICE_INTERFACE_DESCRIPTION,
  [BROKER_INTERFACE]: BROKER_INTERFACE_DESCRIPTION,
};

/** The IDL for GetInterfaceDescription, or undefined (answer InterfaceNotFound). */
export function interfaceDescription(name: string): string | undefined {
  return Object.hasOwn(interfaceDescriptions, name) ? interfaceDescriptions[name] : undefined;
}

const homepage: unknown = 'homepage' in packageJson ? packageJson.homepage : undefined;

/** The reply to org.varlink.service.GetInfo. */
export const SERVICE_INFO = Object.freeze({
  vendor: 'iommufd-broker',
  product: 'iommufd-brokerd',
  version: packageJson.version,
  /** package.json's homepage; empty until the project publishes one. */
  url: typeof homepage === 'string' ? homepage : '',
  interfaces: Object.freeze([SERVICE_INTERFACE, BROKER_INTERFACE]),
});
