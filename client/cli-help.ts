// iommufdctl's usage text: one block per command, the shared notes after them.
//
// Invariants:
// - Every command parseCommand accepts has a block here, and every option it accepts is shown
//   (test/client/cli-help.test.ts checks both against the parser's tables).
// - What `open` does with its FD, and how `exec` and `pass` choose their target, is stated
//   here: it is the documentation of those decisions.
import type { CommandKind } from './cli-args.ts';
import { DEFAULT_CALL_TIMEOUT_MS, DEFAULT_SOCKET } from './defaults.ts';

type Topic = Exclude<CommandKind, 'help'>;

export const COMMAND_HELP: Readonly<Record<Topic, string>> = {
  open: `open --name NAME --memory SIZE [--target-pid PID] [--request-id ID] [--hold]
    Ask for an iommufd FD and a lease whose RLIMIT_MEMLOCK fits a VM with SIZE of RAM. The
    target is iommufdctl itself unless --target-pid names another process (yours, or one you
    manage). An FD cannot outlive iommufdctl: without --hold it is closed at once and only the
    lease remains (a lease on iommufdctl itself then ends as it exits); with --hold the FD is
    kept open until SIGINT, SIGTERM or SIGHUP. To give the FD to QEMU use 'exec' or 'pass'.`,
  resize: `resize LEASE --memory SIZE
    Change the lease's memory size: raise it before memory hotplug, lower it after unplug.`,
  release: `release LEASE
    Give up control of the lease (no more resize). The target keeps its RLIMIT_MEMLOCK, and the
    lease stays listed and charged to the budget until the target exits.`,
  list: `list
    Show the leases you may see.`,
  status: `status
    Show the broker's device, capabilities and budget (with a bar of how much is held), and for
    each lease you may see a bar of its target's pinned memory against its limit. With --json:
    the Status reply only (use 'list --json' for the leases).`,
  exec: `exec --name NAME --memory SIZE [--request-id ID] [--no-substitute] [--keep-fd N]... -- PROGRAM [ARG...]
    Open for iommufdctl's own process, then execve PROGRAM (found on PATH) in its place: same
    pid, so the lease and the limit apply to PROGRAM. Every {iommufd} in PROGRAM's arguments
    becomes the FD number, e.g.
      iommufdctl exec --name vm1 --memory 8G -- qemu-system-x86_64 ... \\
        -object iommufd,id=iommufd0,fd={iommufd}
    Some argument must contain {iommufd} unless --no-substitute is given. The FD number and the
    lease id are also in $IOMMUFD_BROKER_FD and $IOMMUFD_BROKER_LEASE. PROGRAM inherits stdin,
    stdout, stderr and the FD; other fds iommufdctl inherited (a tap device, say) only when
    named with --keep-fd N (repeatable).`,
  pass: `pass --qmp SOCKET --fdname NAME --name NAME --memory SIZE [--target-pid PID] [--request-id ID]
    Open for a running QEMU and hand it the FD over its QMP socket (QMP getfd NAME); QEMU then
    takes it as fd=NAME, e.g. QMP object-add {"qom-type":"iommufd","id":"iommufd0","fd":"NAME"}.
    The target is the process at the other end of the QMP socket unless --target-pid names
    it. If QEMU refuses the FD, the lease is released again.`,
};

const SHARED = `Options for every command:
  --socket PATH       the broker's socket (default ${DEFAULT_SOCKET})
  --json              print the broker's reply as JSON; failures as one JSON object on stderr
  --timeout SECONDS   how long to wait for each reply (default ${DEFAULT_CALL_TIMEOUT_MS / 1000})
  -h, --help          this text (or 'iommufdctl help COMMAND')

SIZE: bytes, or a number with a binary unit: 512M, 8G, 8GiB, 1.5G (G = 2^30, as QEMU's -m).
  Decimal units (MB, GB) are refused: they are ambiguous.

Exit status: 0 ok; 1 refused by the broker (for 'pass', also by QEMU); 2 usage error;
  3 cannot reach the broker (or QEMU's QMP socket); 4 internal error.
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
