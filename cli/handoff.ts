// The two iommufdctl commands that hand the iommufd FD to QEMU: `exec` (become QEMU, same
// pid) and `pass` (send it to a running QEMU over QMP).
//
// Invariants:
// - `exec`: the program and every --keep-fd are checked before the broker is asked; the broker
//   connection is closed before execve. The exec'd program inherits exactly the iommufd FD,
//   the --device VFIO fds, stdin/stdout/stderr and the --keep-fd fds (exec-inheritance.ts). If
//   execve fails, every fd the lease brought is closed and the lease ends with this process
//   (its target).
// - `exec` writes one line to stderr before the execve, naming the pid, the lease and its limit
//   (formatSize), and what QEMU's ENOMEM from a DMA map means: QEMU's own message names neither.
//   Nothing else is written on success, nothing at all to stdout. There is no supervising
//   parent: the lease's target must be QEMU's own pid (a later Resize reaches only the target),
//   and a process that is not a manager may only Open for itself.
// - `pass`: QMP is reached before the broker is asked, so an unreachable QEMU costs no lease.
//   The FD goes to QmpClient.getfd, which closes our copy once sent. If QEMU does not take it,
//   the lease is released again (best effort, reported). The target pidfd (ours) is closed
//   once Open answered. Each --device fd goes to getfd under vfioFdname(address) after the
//   iommufd; if one is refused, the fds not yet sent are closed, QEMU is asked to close those it
//   took (best effort) and the lease is released.
import { closeFd, execve, pidfdOpen, setCloexec, SysError } from '../native/sys.ts';
import type { Lease } from '../protocol/methods.ts';
import { formatSize } from '../shared/sizes.ts';
import { vfioFdname, type Command, type CommonOptions } from './args.ts';
import { EXIT_OK, failureText } from './failures.ts';
import type { CliIo } from './io.ts';
import { formatLease } from './output.ts';
import { openTargetPidfd, withBroker } from './session.ts';
import { BrokerClient } from '../client/client.ts';
import { checkKeptFds, prepareInheritance } from './exec-inheritance.ts';
import { buildArgv, buildEnv, resolveProgram } from './exec-program.ts';
import { noteOverhead, sizedOpenRequest } from './memory.ts';
import { QmpClient } from '../client/qmp.ts';
import type { PinnedEstimate } from '../client/qmp-sizing.ts';

export async function runExec(command: Extract<Command, { kind: 'exec' }>, io: CliIo): Promise<number> {
  const path = resolveProgram(command.program, io.env['PATH']);
  checkKeptFds(command.keepFds);
  const devicesAsked = command.devices.length === 0 ? {} : { devices: command.devices };
  const { lease, fd, devices } = await withBroker(command.common, (c) => c.open({ ...command.request, ...devicesAsked }));
  try {
    setCloexec(fd, false);
    for (const d of devices) setCloexec(d.fd, false);
    const argv = buildArgv(command.program, command.args, fd, command.substitute, devices);
    const envp = buildEnv(io.env, fd, lease.id, devices);
    io.stderr(execNote(lease));
    prepareInheritance(command.keepFds);
    execve(path, argv, envp);
  } catch (error) {
    closeFd(fd);
    for (const d of devices) closeFd(d.fd);
    if (error instanceof SysError && error.syscall === 'execve') {
      throw new Error(`cannot execute ${path} (${error.code}); lease ${lease.id} ends as iommufdctl exits`, { cause: error });
    }
    throw error;
  }
}

/** The line `exec` prints before becoming QEMU: who the lease limits, to what, and what ENOMEM means. */
export function execNote(lease: Lease): string {
  return `iommufdctl: pid ${lease.pid} runs under lease ${lease.id}, which limits what it may pin to ${formatSize(lease.limitBytes)} (RLIMIT_MEMLOCK); ` +
    'a "vfio_container_dma_map(...) = -12 (Cannot allocate memory)" or "DMA mapping failed" from QEMU means that limit was reached: ' +
    `a manager raises it with 'iommufdctl resize ${lease.id}'\n`;
}

/** A pidfd for the process at the other end of the QMP socket; the caller owns it. */
function qmpPeerPidfd(qmp: QmpClient): number {
  try {
    return qmp.peerPidfd();
  } catch (error) {
    // SO_PEERPIDFD is Linux 6.5+; before that, the pid from SO_PEERCRED (a reuse window remains).
    if (!(error instanceof SysError) || error.code !== 'ENOPROTOOPT') throw error;
    return pidfdOpen(qmp.peerCred().pid);
  }
}

export async function runPass(command: Extract<Command, { kind: 'pass' }>, io: CliIo): Promise<number> {
  const { common, fdname } = command;
  const qmp = await QmpClient.connect(command.qmpSocket, { timeoutMs: common.timeoutMs });
  try {
    let request = command.request;
    let estimate: PinnedEstimate | undefined;
    if ('sizeFromQmp' in request) ({ request, estimate } = await sizedOpenRequest(qmp, request));
    const pidfd = command.targetPid === undefined ? qmpPeerPidfd(qmp) : openTargetPidfd(command.targetPid);
    const client = await connectOrClose(common, pidfd);
    try {
      let opened;
      try {
        opened = await client.open({ ...request, targetPidFd: pidfd, ...(command.devices.length === 0 ? {} : { devices: command.devices }) });
      } finally {
        closeFd(pidfd);
      }
      const { lease } = opened;
      const passed = await handOver(qmp, [{ fdname, fd: opened.fd }, ...opened.devices.map((d) => ({ fdname: vfioFdname(d.address), fd: d.fd }))]);
      if (passed !== undefined) {
        await releaseAfterFailedHandoff(client, lease.id, io);
        throw passed;
      }
      const devices = opened.devices.map((d) => ({ address: d.address, fdname: vfioFdname(d.address) }));
      if (common.json) {
        io.stdout(`${JSON.stringify({ lease, fdname, ...(devices.length === 0 ? {} : { devices }), ...(estimate === undefined ? {} : { estimate }) })}\n`);
      } else {
        io.stdout(formatLease(lease));
        io.stdout(`QEMU (pid ${lease.pid}) holds the FD as '${fdname}': use fd=${fdname}\n`);
        for (const d of devices) {
          io.stdout(`QEMU holds VFIO device ${d.address} as '${d.fdname}': device_add vfio-pci,iommufd=ID,fd=${d.fdname}\n`);
        }
      }
      if (estimate !== undefined) noteOverhead(io, lease, estimate);
      return EXIT_OK;
    } finally {
      client.close();
    }
  } finally {
    qmp.close();
  }
}

/**
 * getfd of each fd in order (each call takes its fd). On the first refusal: closes the fds not
 * yet sent, asks QEMU to close the ones it took (best effort), and returns the error.
 */
async function handOver(qmp: QmpClient, fds: readonly { fdname: string; fd: number }[]): Promise<unknown> {
  for (const [i, { fdname, fd }] of fds.entries()) {
    try {
      await qmp.getfd(fdname, fd);
    } catch (error) {
      for (const rest of fds.slice(i + 1)) closeFd(rest.fd);
      for (const taken of fds.slice(0, i)) await qmp.closefd(taken.fdname).catch(() => undefined);
      return error;
    }
  }
  return undefined;
}

/** Connects to the broker; if that fails, closes `pidfd` (which the caller would have sent). */
async function connectOrClose(common: CommonOptions, pidfd: number): Promise<BrokerClient> {
  try {
    return await BrokerClient.connect(common.socketPath, { timeoutMs: common.timeoutMs });
  } catch (error) {
    closeFd(pidfd);
    throw error;
  }
}

async function releaseAfterFailedHandoff(client: BrokerClient, lease: string, io: CliIo): Promise<void> {
  try {
    await client.release(lease);
    io.stderr(`QEMU did not take the FD; lease ${lease} was released\n`);
  } catch (error) {
    io.stderr(`QEMU did not take the FD, and releasing lease ${lease} failed too (release it by hand):\n  ${failureText(error)}`);
  }
}
