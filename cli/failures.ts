// How iommufdctl reports a failure: the exit code, and the words (or JSON) on stderr.
//
// Invariants:
// - Exit codes are a contract: 0 ok, 1 refused (by the broker, or by QEMU: a QMP command it
//   answered with an error, in any command that talks QMP), 2 usage error, 3 the broker or
//   QEMU's QMP socket cannot be reached, the connection was lost or did not answer in time,
//   4 internal error (also: QMP sizing that could not understand QEMU's answer). Anything not
//   recognised below is 4.
// - Every broker error name has an explanation here (the Record type makes a new name in
//   protocol/errors.ts fail to compile until it is explained).
// - Pure: an error in, text and a number out; no I/O.
// - Sizes are printed in one style, formatSize's exact binary units ("4 GiB", "82048 KiB"):
//   a refusal's *Bytes parameters too (the --json form keeps the broker's byte counts).
// - Messages are printed with control characters escaped (output.ts printable): they carry
//   QEMU's words (QMP error descs, rows it printed), and a guest may own QEMU; no failure text
//   can move the cursor or forge a line (such as the one saying where the limit was left).
// - A HotplugError exits as its cause would (a QEMU or broker refusal 1, silence 3); without a
//   cause (nothing to plug into, no such lease or DIMM) it is a refusal, 1. Its text always
//   says where the lease's limit was left.
import { SysError } from '../native/sys.ts';
import { BrokerError, type BrokerErrorName } from '../protocol/errors.ts';
import { UsageError } from './args.ts';
import { BrokerClientError, VarlinkServiceError } from '../client/errors.ts';
import { ProgramNotFound } from './exec-program.ts';
import { HotplugError } from '../client/memory-hotplug-error.ts';
import { printable } from './output.ts';
import { QmpError } from '../client/qmp.ts';
import { SizingError } from '../client/qmp-sizing.ts';
import { describeBrokerError } from '../protocol/errors.ts';
import { formatSize } from '../shared/sizes.ts';

export const EXIT_OK = 0;
export const EXIT_REFUSED = 1;
export const EXIT_USAGE = 2;
export const EXIT_UNREACHABLE = 3;
export const EXIT_INTERNAL = 4;

/** What each refusal means for the person who typed the command, and what to do about it. */
export const BROKER_ERROR_EXPLANATIONS: Readonly<Record<BrokerErrorName, string>> = {
  PermissionDenied: 'the broker\'s policy does not let this caller do that',
  BudgetExceeded: 'the broker\'s memory budget cannot cover this request: release or shrink other leases, or raise the budget',
  LimitExceeded: 'the request is above a limit configured in the broker\'s policy',
  NoSuchLease: 'no lease with that id is visible to you (it ended, or belongs to someone else); see `iommufdctl list`',
  TargetGone: 'the target process has exited (or could not be identified)',
  TargetAlreadyLeased: 'that process already holds a lease: resize or release it instead of opening another',
  TargetBypassesAccounting: 'the target holds a capability (CAP_IPC_LOCK) that makes the kernel skip pinned-memory accounting, '
    + 'so a limit would be fiction: run it without that capability',
  DuplicateRequest: 'a lease was already made for this request id (see the lease named)',
  DeviceUnavailable: 'the broker cannot open the iommufd device (/dev/iommu): is the kernel built with CONFIG_IOMMUFD?',
  NoSuchDevice: 'that PCI address is not a device bound to vfio-pci with a VFIO cdev (/dev/vfio/devices/vfioN) on the broker\'s host: '
    + 'bind it to vfio-pci, or check the address (lspci -D)',
  DeviceBusy: 'that VFIO device is held by another lease until that lease\'s target exits',
  KernelRefused: 'the kernel refused an operation the broker needed',
  LeaseNotResizable: 'the broker lost this lease\'s FD in a restart (no systemd fd store), so its limit can no longer '
    + 'change; open a new lease when the VM next starts',
  ShuttingDown: 'the broker is stopping; retry once it is back',
  JournalUnavailable: 'the broker cannot write its lease journal (full or failing disk under its state dir): '
    + 'free space there; it recovers by itself and takes changes again',
  ClosesPending: 'the broker is still closing files this user sent it whose close blocks (e.g. sockets with SO_LINGER); '
    + 'calls carrying fds are refused until they finish: stop whatever sends them, then retry',
  InternalError: 'the broker hit a bug or an unexpected OS failure; its log has the details',
};

export function exitCodeFor(error: unknown): number {
  if (error instanceof HotplugError) return error.cause === undefined ? EXIT_REFUSED : exitCodeFor(error.cause);
  if (error instanceof SizingError) return EXIT_INTERNAL;
  if (error instanceof UsageError || error instanceof ProgramNotFound) return EXIT_USAGE;
  if (error instanceof BrokerError || error instanceof VarlinkServiceError) return EXIT_REFUSED;
  if (error instanceof BrokerClientError) {
    switch (error.errorName) {
      case 'BrokerUnreachable':
      case 'ConnectionLost':
      case 'Timeout':
        return EXIT_UNREACHABLE;
      case 'ProtocolViolation':
      case 'ClientClosed':
        return EXIT_INTERNAL;
    }
  }
  if (error instanceof QmpError) {
    switch (error.errorName) {
      case 'QmpCommandFailed':
        return EXIT_REFUSED;
      case 'QmpUnreachable':
      case 'QmpConnectionLost':
      case 'QmpTimeout':
      case 'QmpEventTimeout':
        return EXIT_UNREACHABLE;
      case 'QmpProtocolViolation':
        return EXIT_INTERNAL;
    }
  }
  return EXIT_INTERNAL;
}

/** The failure as one JSON object (for --json): a stable name, its parameters, and the message. */
export function failureJson(error: unknown): Record<string, unknown> {
  if (error instanceof BrokerError) {
    return { error: error.qualifiedName, parameters: error.parameters, message: error.message };
  }
  if (error instanceof VarlinkServiceError) {
    return { error: error.qualifiedName, parameters: error.parameters, message: error.message };
  }
  if (error instanceof BrokerClientError) {
    return { error: error.errorName, parameters: { socket: error.socketPath, ...(error.errno === undefined ? {} : { errno: error.errno }) }, message: error.message };
  }
  if (error instanceof QmpError) {
    return { error: error.errorName, parameters: { socket: error.socketPath, ...(error.qmpClass === undefined ? {} : { class: error.qmpClass }) }, message: error.message };
  }
  if (error instanceof HotplugError) {
    const cause = error.cause === undefined ? {} : { cause: failureJson(error.cause)['error'] };
    return {
      error: error.errorName, message: error.message,
      parameters: { step: error.step, lease: error.lease, limit: error.limit, undone: error.undone, undoFailures: error.undoFailures, ...cause },
    };
  }
  if (error instanceof SizingError) return { error: error.errorName, parameters: {}, message: error.message };
  if (error instanceof UsageError) return { error: 'UsageError', parameters: {}, message: error.message };
  if (error instanceof ProgramNotFound) return { error: 'ProgramNotFound', parameters: { program: error.program }, message: error.message };
  if (error instanceof SysError) return { error: 'InternalError', parameters: { syscall: error.syscall, errno: error.code }, message: error.message };
  return { error: 'InternalError', parameters: {}, message: error instanceof Error ? error.message : String(error) };
}

/** The failure in words, ending with '\n'. */
export function failureText(error: unknown): string {
  if (error instanceof BrokerError) {
    const name: BrokerErrorName = error.errorName;
    return `iommufdctl: the broker refused: ${refusal(error)}\n  ${BROKER_ERROR_EXPLANATIONS[name]}\n${refusalHint(error)}`;
  }
  if (error instanceof HotplugError) return hotplugText(error);
  if (error instanceof SizingError) return `iommufdctl: cannot size the lease from QMP: ${printable(error.message)}\n`;
  if (error instanceof VarlinkServiceError) {
    return `iommufdctl: the broker refused the call: ${printable(error.message)}\n` +
      (error.errorName === 'MethodNotFound' || error.errorName === 'InterfaceNotFound'
        ? '  the broker does not know this call: is it an older version than iommufdctl?\n' : '');
  }
  if (error instanceof BrokerClientError) {
    const hint = error.errorName === 'ProtocolViolation' ? '\n  iommufdctl and the broker disagree on the protocol (different versions?)' : '';
    return `iommufdctl: ${printable(error.message)}${hint}\n`;
  }
  if (error instanceof QmpError || error instanceof ProgramNotFound || error instanceof UsageError) {
    return `iommufdctl: ${printable(error.message)}\n`;
  }
  return `iommufdctl: internal error: ${printable(error instanceof Error ? error.message : String(error))}\n`;
}

/** The refusal's name and parameters, byte counts in formatSize's units. */
function refusal(error: BrokerError): string {
  const parameters: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(error.parameters)) {
    parameters[key] = key.endsWith('Bytes') && typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? formatSize(value) : value;
  }
  return describeBrokerError(error.errorName, parameters);
}

/** What to do about the refusals whose fix is not obvious from the explanation. */
function refusalHint(error: BrokerError): string {
  if (error.errorName === 'PermissionDenied' && (error.parameters as { rule?: unknown }).rule === 'target-not-self') {
    return '  only a manager (policy [managers]) may open for another process, even a QEMU of your own uid: start QEMU with ' +
      "'iommufdctl exec' so that it is the caller itself, or have a manager run 'pass'\n";
  }
  return '';
}

const LIMIT_STATE = {
  unchanged: 'the lease\'s limit is where it was before',
  raised: 'the lease\'s limit was LEFT RAISED on purpose (lowering it could make a DMA map fail and abort QEMU)',
  lowered: 'the lease\'s limit was lowered',
} as const;

function hotplugText(error: HotplugError): string {
  const lines = [`iommufdctl: ${printable(error.message)}`];
  for (const step of error.undone) lines.push(`  undone: ${printable(step)}`);
  for (const step of error.undoFailures) lines.push(`  NOT undone (finish by hand): ${printable(step)}`);
  lines.push(`  ${LIMIT_STATE[error.limit]}`);
  return `${lines.join('\n')}\n`;
}
