// iommufdctl: the command-line face of the client library. runCli(argv, io) -> exit code.
//
// Invariants:
// - runCli never throws and never calls process.exit: every outcome is an exit code
//   (failures.ts) plus text on io.stdout / io.stderr, so tests can drive it in-process.
// - Results go to stdout (a table or key/value block, or the reply as one JSON line with
//   --json); notes and failures go to stderr.
// - fd ownership: a received iommufd FD belongs to the command that asked for it and is closed
//   on every path out of it (except `exec`, which hands it to the new program image, and
//   `pass`, which hands it to QMP). A pidfd opened for --target-pid is closed once Open answered.
// - Every broker connection is closed before the command returns.
import { closeFd } from '../native/sys.ts';
import { parseCommand, UsageError, type Command } from './args.ts';
import { EXIT_OK, exitCodeFor, failureJson, failureText } from './failures.ts';
import { runExec, runPass } from './handoff.ts';
import { helpText, isHelpTopic, usageHint } from './help.ts';
import { processIo, type CliIo } from './io.ts';
import { runHotplug, runMeasure, runSizedResize, runUnplug } from './memory.ts';
import { formatLease, formatLeaseTable, formatRelease, formatResize, formatStatus } from './output.ts';
import { openTargetPidfd, withBroker } from './session.ts';

export type { CliIo } from './io.ts';

/** Runs one iommufdctl invocation (argv without node and the script) and returns its exit code. */
export async function runCli(argv: readonly string[], io: CliIo = processIo()): Promise<number> {
  let command: Command;
  try {
    command = parseCommand(argv);
  } catch (error) {
    if (!(error instanceof UsageError)) return fail(error, false, io);
    io.stderr(`iommufdctl: ${error.message}\n${usageHint(error.command)}`);
    return exitCodeFor(error);
  }
  if (command.kind === 'help') {
    if (command.topic !== undefined && !isHelpTopic(command.topic)) {
      io.stderr(`iommufdctl: no help on '${command.topic}': it is not a command\n${usageHint()}`);
      return exitCodeFor(new UsageError('unknown help topic'));
    }
    io.stdout(helpText(command.topic));
    return EXIT_OK;
  }
  try {
    return await run(command, io);
  } catch (error) {
    return fail(error, command.common.json, io);
  }
}

function fail(error: unknown, json: boolean, io: CliIo): number {
  io.stderr(json ? `${JSON.stringify(failureJson(error))}\n` : failureText(error));
  return exitCodeFor(error);
}

function printJson(io: CliIo, value: unknown): void {
  io.stdout(`${JSON.stringify(value)}\n`);
}

async function run(command: Exclude<Command, { kind: 'help' }>, io: CliIo): Promise<number> {
  const { common } = command;
  switch (command.kind) {
    case 'open':
      return runOpen(command, io);
    case 'resize': {
      if ('sizeFromQmp' in command) return runSizedResize(common, command.lease, command.sizeFromQmp, io);
      const { memoryBytes } = command;
      const reply = await withBroker(common, (c) => c.resize(command.lease, memoryBytes));
      if (common.json) printJson(io, reply);
      else io.stdout(formatResize(reply.lease, reply.previousLimitBytes));
      return EXIT_OK;
    }
    case 'release': {
      const reply = await withBroker(common, (c) => c.release(command.lease));
      if (common.json) printJson(io, reply);
      else io.stdout(formatRelease(command.lease, reply.limitRestored));
      return EXIT_OK;
    }
    case 'list': {
      const reply = await withBroker(common, (c) => c.list());
      if (common.json) printJson(io, reply);
      else io.stdout(formatLeaseTable(reply.leases));
      return EXIT_OK;
    }
    case 'status': {
      if (common.json) {
        printJson(io, await withBroker(common, (c) => c.status()));
        return EXIT_OK;
      }
      // The bars need each lease's pinned bytes: List, on the same connection.
      const [reply, visible] = await withBroker(common, async (c) => [await c.status(), await c.list()] as const);
      io.stdout(formatStatus(reply, visible.leases));
      return EXIT_OK;
    }
    case 'exec':
      return runExec(command, io);
    case 'pass':
      return runPass(command, io);
    case 'hotplug':
      return runHotplug(command, io);
    case 'unplug':
      return runUnplug(command, io);
    case 'measure':
      return runMeasure(command, io);
  }
}

async function runOpen(command: Extract<Command, { kind: 'open' }>, io: CliIo): Promise<number> {
  const { common, request, targetPid, hold } = command;
  const pidfd = targetPid === undefined ? undefined : openTargetPidfd(targetPid);
  let opened;
  try {
    opened = await withBroker(common, (c) => c.open({ ...request, ...(pidfd === undefined ? {} : { targetPidFd: pidfd }) }));
  } finally {
    if (pidfd !== undefined) closeFd(pidfd);
  }
  const { lease, fd } = opened;
  try {
    if (common.json) printJson(io, hold ? { lease, fd, pid: process.pid } : { lease });
    else io.stdout(formatLease(lease));
    const self = lease.pid === process.pid;
    if (!hold) {
      io.stderr(self
        ? `note: the lease's target is iommufdctl itself (pid ${process.pid}); it ends as iommufdctl exits. ` +
          `Use 'exec' or 'pass' to give the FD to QEMU, or --hold to keep it.\n`
        : `note: the iommufd FD was closed (it cannot outlive iommufdctl); the lease on pid ${lease.pid} stays ` +
          `until that process exits or 'iommufdctl release ${lease.id}'.\n`);
      return EXIT_OK;
    }
    io.stderr(`holding the iommufd FD as fd ${fd} of pid ${process.pid}; SIGINT, SIGTERM or SIGHUP lets go\n`);
    const why = await io.waitForRelease();
    io.stderr(`${why}: closing the FD${self ? ' (the lease ends as iommufdctl exits)' : ''}\n`);
    return EXIT_OK;
  } finally {
    closeFd(fd);
  }
}
