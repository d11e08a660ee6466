// Kept lease FDs (issue #10 item 3): on `simulated-per-fd`, the simulated device modelling the per-fd
// backend's lifecycle, BrokerService keeps one duplicate of each handed-out FD, gives the fd
// store a copy under lease-<id>, closes it when the target exits (a kept one would hold the
// VM's pinned pages), and at start takes stored FDs back by name: matched to live journaled
// leases, the rest closed; a lease whose FD did not come back is listed as not resizable and
// its Resize is LeaseNotResizable.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { closeFd, fstatFd, memfd, pidfdOpen, SysError } from '../../../native/sys.ts';
import { BrokerError } from '../../../protocol/errors.ts';
import { defaultPolicy } from '../../../daemon/core/policy.ts';
import { createDevice } from '../../../daemon/shell/device.ts';
import { LeaseJournal } from '../../../daemon/shell/journal/journal.ts';
import { currentBoot } from '../../../daemon/shell/journal/boot.ts';
import type { FdStore } from '../../../daemon/shell/lease-fds.ts';
import type { ConnectionPeer } from '../../../daemon/shell/peer.ts';
import { BrokerService } from '../../../daemon/shell/service.ts';
import { BrokerClient } from '../../../client/index.ts';
import { openFds } from '../../support/fds.ts';
import { BrokerProcess } from '../../support/daemon.ts';
import { LineReader, exited, spawnStripped } from '../../support/children.ts';
import { grantLine, sleeper, writeJournal } from '../../support/journal-files.ts';

const MiB = 1024 ** 2;
const ROOT: ConnectionPeer = { pid: process.pid, uid: 0, gid: 0, groups: [], pidfd: undefined };
const SIMULATED_FD = /memfd:iommufd-broker-simulated/;

/** The fds of this process that are simulated device FDs. */
function deviceFds(): number[] {
  return [...openFds()].filter(([, target]) => SIMULATED_FD.test(target)).map(([fd]) => fd);
}

/** An fd store that records what it was told, with what each stored fd pointed at. */
function recordingStore(): FdStore & { events: string[] } {
  const events: string[] = [];
  return {
    events,
    store: (name, fd) => events.push(`store ${name} ${readlinkSync(`/proc/self/fd/${fd}`)}`),
    remove: (name) => events.push(`remove ${name}`),
  };
}

function service(stateDir: string, fdStore?: FdStore): { service: BrokerService; journal: LeaseJournal; opened: ReturnType<typeof LeaseJournal.open> } {
  const opened = LeaseJournal.open(stateDir);
  const s = new BrokerService({
    policy: Object.freeze({ ...defaultPolicy(64 * MiB), overheadBytes: MiB }), device: createDevice('simulated-per-fd'),
    journal: opened.journal, log: pino({ level: 'silent' }), haveSysResource: false, version: '0.0.0-test',
    ...(fdStore === undefined ? {} : { fdStore }),
  });
  return { service: s, journal: opened.journal, opened };
}

async function strippedTarget(): Promise<ChildProcess> {
  const child = spawn('setpriv', ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--',
    'sh', '-c', 'echo ready; exec sleep 600'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(child.stdout, 'data');
  return child;
}

async function until(what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
  assert.ok(check(), what);
}

function isClosed(fd: number): boolean {
  try {
    fstatFd(fd);
    return false;
  } catch (e) {
    return e instanceof SysError && e.code === 'EBADF';
  }
}

test('a lease keeps one duplicate of its FD, stores it as lease-<id>, and closes it when the target exits', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'service-fds-'));
  const store = recordingStore();
  const { service: s, journal } = service(join(dir, 'state'), store);
  const target = await strippedTarget();
  try {
    const before = deviceFds().length;
    const { lease, fd } = await s.open(ROOT, { name: 'vm-kept', memoryBytes: 2 * MiB }, pidfdOpen(target.pid ?? -1));
    closeFd(fd); // the reply's FD, as the server closes it once sent
    assert.equal(deviceFds().length, before + 1, 'the broker keeps exactly one duplicate of the lease\'s FD');
    assert.equal(store.events.length, 1);
    assert.match(store.events[0] ?? '', new RegExp(`^store lease-${lease.id} .*memfd:iommufd-broker-simulated`));
    assert.deepEqual(s.status().backend, {
      kind: 'simulated', reason: createDevice('simulated-per-fd').backend.reason, notResizableCount: 0, notResizable: [],
    });
    const resized = await s.resize(ROOT, { lease: lease.id, memoryBytes: MiB });
    assert.equal(resized.lease.limitBytes, 2 * MiB, 'the kept FD is resizable');

    target.kill('SIGKILL');
    await until('the kept duplicate is closed once the target exited', () => deviceFds().length === before);
    assert.deepEqual(store.events.slice(1), [`remove lease-${lease.id}`]);
  } finally {
    if (target.exitCode === null && target.signalCode === null) target.kill('SIGKILL');
    s.close();
    journal.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('restore takes stored FDs back by name; an unclaimed one is closed and removed; a lease without its FD is not resizable', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'service-fds-'));
  const stateDir = join(dir, 'state');
  const boot = currentBoot().id;
  const kept = await sleeper();
  const lost = await sleeper();
  writeJournal(stateDir, [grantLine(2, 1, kept, boot), grantLine(2, 2, lost, boot)]);
  const store = recordingStore();
  const { service: s, journal, opened } = service(stateDir, store);
  const keptFd = memfd('iommufd-broker-simulated');
  const orphanFd = memfd('iommufd-broker-simulated');
  try {
    const result = s.restore(opened.leases, opened.earlierBoot, new Map([
      ['lease-l-0000000000000001', keptFd], ['lease-l-00000000000000ff', orphanFd],
    ]));
    assert.deepEqual(result, { adopted: 2, dropped: 0, fdsTakenBack: 1, fdsClosed: 1 });
    assert.ok(!isClosed(keptFd), 'the matched FD is kept');
    assert.ok(isClosed(orphanFd), 'a stored FD no lease claims is closed');
    assert.deepEqual(store.events, ['remove lease-l-00000000000000ff'], 'and the store forgets it');

    const backend = s.status().backend;
    assert.equal(backend?.notResizableCount, 1);
    assert.deepEqual(backend?.notResizable, ['l-0000000000000002']);
    const wire = s.list(ROOT).leases;
    assert.equal(wire.find((l) => l.id === 'l-0000000000000001')?.resizable, undefined);
    assert.equal(wire.find((l) => l.id === 'l-0000000000000002')?.resizable, false);

    await assert.rejects(s.resize(ROOT, { lease: 'l-0000000000000002', memoryBytes: MiB }),
      (e: unknown) => e instanceof BrokerError && e.errorName === 'LeaseNotResizable');
    const ok = await s.resize(ROOT, { lease: 'l-0000000000000001', memoryBytes: MiB });
    assert.equal(ok.lease.limitBytes, 2 * MiB);

    kept.child.kill('SIGKILL');
    await until('the taken-back FD is closed when its target exits', () => isClosed(keptFd));
    assert.deepEqual(store.events.slice(1), ['remove lease-l-0000000000000001']);
  } finally {
    for (const t of [kept, lost]) t.child.kill('SIGKILL');
    s.close();
    journal.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('restore: a stored FD whose lease\'s target is gone is closed and removed from the store', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'service-fds-'));
  const stateDir = join(dir, 'state');
  const gone = await sleeper();
  writeJournal(stateDir, [grantLine(2, 3, gone, currentBoot().id)]);
  gone.child.kill('SIGKILL');
  await once(gone.child, 'exit');
  const store = recordingStore();
  const { service: s, journal, opened } = service(stateDir, store);
  const fd = memfd('iommufd-broker-simulated');
  try {
    const result = s.restore(opened.leases, opened.earlierBoot, new Map([['lease-l-0000000000000003', fd]]));
    assert.deepEqual(result, { adopted: 0, dropped: 1, fdsTakenBack: 0, fdsClosed: 0 });
    assert.ok(isClosed(fd), 'a kept FD would hold the dead VM\'s pinned pages');
    assert.deepEqual(store.events, ['remove lease-l-0000000000000003']);
  } finally {
    s.close();
    journal.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the daemon (simulated-per-fd): one kept FD per lease; after SIGKILL and a start without an fd store, Status lists the lease as not resizable', async () => {
  const extraArgs = ['--overhead', '1M', '--device', 'simulated-per-fd'];
  const broker = await BrokerProcess.start({ extraArgs });
  const pid = broker.child.pid ?? -1;
  const daemonDeviceFds = (p: number): number => [...openFds(p)].filter(([, t]) => SIMULATED_FD.test(t)).length;
  const holder = new LineReader(spawnStripped('scripts/standin-vm.ts', [broker.socket, 'vm-fd', String(2 * MiB)]));
  const held = await holder.next<{ lease: { id: string } }>();
  const id = held.lease.id;
  let again: BrokerProcess | undefined;
  try {
    await until('the daemon holds exactly one duplicate of the lease\'s FD', () => daemonDeviceFds(pid) === 1);
    const started = await broker.waitForLog((l) => l.msg.startsWith('backend simulated:'));
    assert.match(started.msg, /keeps a duplicate of each lease's FD/);
    // Run by hand, no fd store: the start says the kept FDs will not survive a restart.
    const warned = await broker.waitForLog((l) => l.msg.startsWith('fd store: '));
    assert.match(warned.msg, /not run by systemd.*LeaseNotResizable/);
    await broker.stop('SIGKILL');

    again = await BrokerProcess.start({ dir: broker.dir, extraArgs });
    const client = await BrokerClient.connect(again.socket);
    try {
      const status = await client.status();
      assert.equal(status.backend?.kind, 'simulated');
      assert.equal(status.backend?.notResizableCount, 1);
      assert.deepEqual(status.backend?.notResizable, [id]);
      assert.equal((await client.list()).leases[0]?.resizable, false);
      await assert.rejects(client.resize(id, MiB), (e: { errorName?: string }) => e.errorName === 'LeaseNotResizable');
      holder.send('exit');
      await exited(holder.child);
      await again.waitForLog((l) => l['audit'] === 'release' && l['lease'] === id);
      assert.equal((await client.status()).backend?.notResizableCount, 0);
    } finally {
      client.close();
    }
  } finally {
    if (holder.child.exitCode === null) holder.send('exit');
    if (again === undefined) {
      await broker.stop('SIGKILL'); // a failure before the restart: the first daemon still runs
      broker.cleanup();
    }
    await again?.stop();
    again?.cleanup();
  }
});
