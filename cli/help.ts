// iommufdctl's usage text: one block per command, the shared notes after them.
//
// Invariants:
// - Every command parseCommand accepts has a block here, and every option it accepts is shown
//   (test/cli/help.test.ts checks both against the parser's tables).
// - What `open` does with its FD, and how `exec` and `pass` choose their target, is stated
//   here: it is the documentation of those decisions.
import type { CommandKind } from './args.ts';
import { DEFAULT_SOCKET } from '../protocol/address.ts';
import { DEFAULT_CALL_TIMEOUT_MS } from '../client/defaults.ts';

type Topic = Exclude<CommandKind, 'help'>;

export const COMMAND_HELP: Readonly<Record<Topic, string>> = {
  open: `open --name NAME --memory SIZE [--target-pid PID] [--request-id ID] [--hold]
    Ask for an iommufd FD and a lease whose RLIMIT_MEMLOCK fits a VM with SIZE of RAM. The
    target is iommufdctl itself unless --target-pid names another process (yours, or one you
    manage). An FD cannot outlive iommufdctl: without --hold it is closed at once and only the
    lease remains (a lease on iommufdctl itself then ends as it exits); with --hold the FD is
    kept open until SIGINT, SIGTERM or SIGHUP. To give the FD to QEMU use 'exec' or 'pass'.`,
  resize: `resize LEASE (--memory SIZE | --qmp SOCKET --size-from-qmp)
    Change the lease's memory size: raise it before memory hotplug, lower it after unplug ('hotplug'
    and 'unplug' do both in the safe order). With --size-from-qmp the size is what the QEMU at
    SOCKET will pin, read from its memory layout (see 'measure'). Managers only.`,
  release: `release LEASE
    Give up control of the lease (no more resize). The target keeps its RLIMIT_MEMLOCK, and the
    lease stays listed and charged to the budget until the target exits.`,
  list: `list
    Show the leases you may see.`,
  status: `status
    Show the broker's device, capabilities and budget (with a bar of how much is held), and for
    each lease you may see a bar of its target's pinned memory against its limit. With --json:
    the Status reply only (use 'list --json' for the leases).`,
  exec: `exec --name NAME --memory SIZE [--device ADDR]... [--request-id ID] [--no-substitute] [--keep-fd N]... -- PROGRAM [ARG...]
    Open for iommufdctl's own process, then execve PROGRAM (found on PATH) in its place: same
    pid, so the lease and the limit apply to PROGRAM. Every {iommufd} in PROGRAM's arguments
    becomes the FD number, e.g.
      iommufdctl exec --name vm1 --memory 8G -- qemu-system-x86_64 ... \\
        -object iommufd,id=iommufd0,fd={iommufd}
    Some argument must contain {iommufd} unless --no-substitute is given. The FD number and the
    lease id are also in $IOMMUFD_BROKER_FD and $IOMMUFD_BROKER_LEASE. PROGRAM inherits stdin,
    stdout, stderr and the FD; other fds iommufdctl inherited (a tap device, say) only when
    named with --keep-fd N (repeatable). --device ADDR (repeatable, a PCI address such as
    0000:00:03.0 or 00:03.0) also asks the broker for that VFIO device's cdev, if its policy
    gives it to you; every {vfio:ADDR} becomes that fd's number, and each device needs one:
      -device vfio-pci,iommufd=iommufd0,fd={vfio:0000:00:03.0}
    ($IOMMUFD_BROKER_DEVICE_FDS lists them as ADDR=FD,...). Before the execve one line on stderr names the lease and
    its limit: QEMU's own "vfio_container_dma_map(...) = -12 (Cannot allocate memory)" or "DMA
    mapping failed" names neither, and means that limit was reached (resize the lease).`,
  pass: `pass --qmp SOCKET --fdname NAME --name NAME (--memory SIZE | --size-from-qmp) [--device ADDR]... [--target-pid PID] [--request-id ID]
    Open for a running (or -S paused) QEMU and hand it the FD over its QMP socket (QMP getfd
    NAME); QEMU then takes it as fd=NAME, e.g. QMP object-add
    {"qom-type":"iommufd","id":"iommufd0","fd":"NAME"}. The target is the process at the other
    end of the QMP socket unless --target-pid names it. If QEMU refuses the FD, the lease is
    released again. With --size-from-qmp the memory size is what that QEMU will pin ('measure').
    --device ADDR (repeatable) also opens that VFIO device and hands it over as getfd
    vfio-ADDR (e.g. vfio-0000:00:03.0), for QMP device_add
    {"driver":"vfio-pci","iommufd":"iommufd0","fd":"vfio-0000:00:03.0","bus":"rp1"}.
    Who may pass to whose QEMU: the target is another process than iommufdctl, and only a
    manager (policy [managers], root by default) may Open for another process, even one running
    as the caller's own uid; anyone else is refused with PermissionDenied (target-not-self).
    An unprivileged user starts its own QEMU with 'exec' instead, or asks its manager to 'pass'.`,
  hotplug: `hotplug LEASE --qmp SOCKET --memory SIZE [--id DIMM] [--node N]
    Add a SIZE DIMM to the running QEMU at SOCKET without risking it: first Resize the lease up
    by SIZE, then QMP object-add memory-backend-ram (id DIMM-mem) and device_add pc-dimm (id
    DIMM, default the first free dimm-<n>). If a step fails, the steps taken are undone (the
    backend deleted, the limit lowered back), except after a device_add with no answer: the
    DIMM may be in use, so the limit stays raised and the error says so. Managers only.`,
  unplug: `unplug LEASE --qmp SOCKET --id DIMM
    Remove the DIMM: QMP device_del, wait (up to --timeout) for QEMU's DEVICE_DELETED (the guest
    must release the memory), object-del its backend, and only then Resize the lease down by the
    DIMM's size. If any step before the lowering fails, the limit stays where it was.`,
  measure: `measure --qmp SOCKET
    Show what the QEMU at SOCKET will pin through VFIO (read from 'info mtree -f' and 'info
    ramblock'): each RAM/ROM region mapped now and its RAM blocks, and the estimate that
    --size-from-qmp leases (every block at full size, aliases counted again, plus 1 MiB).
    Asks nothing of the broker.`,
};

const SHARED = `Options for every command:
  --socket PATH       the broker's socket (default ${DEFAULT_SOCKET})
  --json              print the broker's reply as JSON; failures as one JSON object on stderr
  --timeout SECONDS   how long to wait for each reply (default ${DEFAULT_CALL_TIMEOUT_MS / 1000})
  -h, --help          this text (or 'iommufdctl help COMMAND')

SIZE: bytes, or a number with a binary unit: 512M, 8G, 8GiB, 1.5G (G = 2^30, as QEMU's -m).
  Decimal units (MB, GB) are refused: they are ambiguous.

Exit status: 0 ok; 1 refused by the broker (for 'pass', 'hotplug', 'unplug', also by QEMU);
  2 usage error; 3 cannot reach the broker or QEMU's QMP socket, or no reply or event in time;
  4 internal error (including QEMU output 'measure' does not understand).
`;

export function isHelpTopic(topic: string): topic is Topic {
  return Object.hasOwn(COMMAND_HELP, topic);
}

/** The full usage, or one command's block (plus the shared notes). */
export function helpText(topic?: Topic): string {
  const blocks = topic === undefined ? Object.values(COMMAND_HELP) : [COMMAND_HELP[topic]];
  return `usage: iommufdctl [--socket PATH] [--json] [--timeout SECONDS] COMMAND ...\n\nCommands:\n` +
    blocks.map((b) => `  ${b}\n`).join('\n') + '\n' + SHARED;
}

/** One line pointing at the help, for usage errors. */
export function usageHint(topic?: string): string {
  return topic !== undefined && isHelpTopic(topic)
    ? `usage: iommufdctl ${COMMAND_HELP[topic].split('\n')[0] ?? topic}\n  (see 'iommufdctl help ${topic}')\n`
    : `see 'iommufdctl --help'\n`;
}
