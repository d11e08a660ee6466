// `npm start`: the broker's main job on an embedded default, narrated.
// Starts the daemon on a temp socket (the real /dev/iommu if this machine has one, else the
// SIMULATED device, said loudly), lets a capability-less stand-in QEMU get its FD and limit,
// resizes it as a manager would around hotplug, and shows the lease end when the VM exits.
//
// Invariants:
// - The simulated device is used only when /dev/iommu does not exist, and then the first line
//   says so; the daemon gets it through its explicit --device flag, as anywhere else.
// - Without CAP_SYS_RESOURCE the VM is sized below this process's memlock hard limit, so every
//   limit the demo sets is a lowering the kernel allows; a raise it cannot do is shown refused.
// - The daemon it starts is stopped (SIGTERM) and its temp dir removed on every path (finally).
import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { BrokerClient, BrokerError, formatSize, type Lease } from '../client/index.ts';
import { formatSizeApprox } from '../shared/sizes.ts';
import { prlimitMemlock } from '../native/sys.ts';
import { ownCapabilities } from '../daemon/shell/target/procfs.ts';
import { BrokerProcess } from '../test/support/daemon.ts';
import { LineReader, exited, spawnStripped } from '../test/support/children.ts';

const MiB = 1024 ** 2;
const say = (who: string, text: string): void => { process.stdout.write(`${who.padEnd(8)} ${text}\n`); };

const device = existsSync('/dev/iommu') ? '/dev/iommu' : 'simulated';
say('device', device === 'simulated'
  ? 'no /dev/iommu on this machine: using the SIMULATED device (an anonymous memfd stands in for the\n'
    + '         iommufd; sockets, credentials, pidfds, rlimits and the journal are all real)'
  : 'using the real /dev/iommu');

// Without CAP_SYS_RESOURCE (as on build machines) the broker can only lower limits, so the demo
// keeps the VM below the current hard memlock limit; with it, a 2 GiB VM and libvirt's 1 GiB overhead.
const canRaise = ownCapabilities().sysResource;
const hard = prlimitMemlock(process.pid, null).hard;
const overhead = canRaise ? 1024 * MiB : 1 * MiB;
const memory = canRaise ? 2048 * MiB : Math.max(1 * MiB, Math.floor((hard - overhead) / 2 / MiB) * MiB);
if (!canRaise) {
  say('note', `this process lacks CAP_SYS_RESOURCE and its memlock hard limit is ${formatSize(hard)}: the demo VM\n`
    + `         is sized below it (${formatSize(memory)} RAM + ${formatSize(overhead)} overhead), since limits can only be lowered here`);
}

const broker = await BrokerProcess.start({ extraArgs: ['--device', device, '--overhead', String(overhead)] });
say('daemon', `iommufd-brokerd pid ${broker.child.pid ?? '?'} on ${broker.socket}, journal in ${broker.stateDir}`);
const manager = await BrokerClient.connect(broker.socket);
try {
  const vm = new LineReader(spawnStripped('scripts/standin-vm.ts', [broker.socket, 'demo-vm', String(memory)]));
  say('vm', `a stand-in QEMU (pid ${vm.child.pid ?? '?'}, every capability dropped) asks for ${formatSize(memory)}`);
  const held = await vm.next<{ lease?: Lease; fd?: number; fdTarget?: string; error?: string; parameters?: unknown }>();
  if (held.lease === undefined) throw new Error(`the broker refused: ${held.error ?? '?'} ${JSON.stringify(held.parameters)}`);
  const { lease } = held;
  say('vm', `received fd ${held.fd ?? '?'} -> ${held.fdTarget ?? '?'} over SCM_RIGHTS`);
  say('vm', `lease ${lease.id}: limit ${formatSize(lease.limitBytes)} = ${formatSize(lease.memoryBytes)} RAM + overhead, `
    + `accounting ${lease.accountingMode}, device ${lease.deviceKind}`);
  say('kernel', memlockLine(lease.pid));

  const smaller = Math.max(MiB, memory - MiB);
  const down = await manager.resize(lease.id, smaller);
  say('manager', `memory unplugged: Resize to ${formatSize(smaller)} -> limit ${formatSize(down.lease.limitBytes)}`);
  say('kernel', memlockLine(lease.pid));
  try {
    const up = await manager.resize(lease.id, memory * 2);
    say('manager', `before a hotplug: Resize to ${formatSize(memory * 2)} -> limit ${formatSize(up.lease.limitBytes)}`);
  } catch (e) {
    if (!(e instanceof BrokerError)) throw e;
    say('manager', `before a hotplug: Resize to ${formatSize(memory * 2)} refused, as it must be here:\n         ${e.message}`);
  }

  vm.send('exit');
  await exited(vm.child);
  await broker.waitForLog((l) => l['audit'] === 'release' && l['lease'] === lease.id);
  const status = await manager.status();
  say('vm', `exited -> lease ended by the broker (pidfd readable); leases now ${status.leases}, `
    + `budget used ${formatSizeApprox(status.budget.usedBytes)} of ${formatSizeApprox(status.budget.totalBytes)}`);
} finally {
  manager.close();
  const code = await broker.stop();
  say('daemon', `stopped with SIGTERM, exit code ${String(code)}`);
  broker.cleanup();
}

function memlockLine(pid: number): string {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max locked memory')) ?? '';
  return `/proc/${pid}/limits: ${line.replace(/\s+/g, ' ').trim()} (${readlinkSync(`/proc/${pid}/exe`)})`;
}
