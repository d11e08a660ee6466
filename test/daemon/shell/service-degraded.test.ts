// The daemon on a disk that runs full (a tiny tmpfs as its state dir): calls that need a
// record get JournalUnavailable, reads still work, an exited target's lease ends once (no
// spin on its pidfd, no flood of log lines), and everything recovers by itself once space
// returns, the exited target's release included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BrokerClient } from '../../../client/index.ts';
import { closeFd, pidfdOpen } from '../../../native/sys.ts';
import { replay } from '../../../daemon/shell/journal/format.ts';
import { BrokerProcess } from '../../support/daemon.ts';
import { sleeper } from '../../support/journal-files.ts';
import { fillUp, mountTmpfs, tmpfsUnavailable, unmount } from '../../support/tmpfs.ts';

const MiB = 1024 ** 2;

interface Refusal { errorName?: string; parameters?: Record<string, unknown> }

/** utime + stime of pid, in clock ticks (fields 14 and 15 of /proc/PID/stat). */
function cpuTicks(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

test('a full disk: JournalUnavailable, no spin on an exited target, recovery by itself', { skip: tmpfsUnavailable }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'degraded-daemon-'));
  const state = join(dir, 'state');
  mkdirSync(state);
  mountTmpfs(state, 128 * 1024);
  const targets: ChildProcess[] = [];
  let broker: BrokerProcess | undefined;
  let client: BrokerClient | undefined;
  try {
    broker = await BrokerProcess.start({ dir, extraArgs: ['--overhead', '1M'] });
    const daemonPid = broker.child.pid ?? 0;
    client = await BrokerClient.connect(broker.socket);
    const c = client;
    const open = async (n: number): Promise<{ id: string; target: ChildProcess } | Refusal> => {
      const t = await sleeper();
      targets.push(t.child);
      const pidfd = pidfdOpen(t.pid);
      try {
        const { lease, fd } = await c.open({ name: `vm-${n}`, memoryBytes: 1 * MiB, targetPidFd: pidfd });
        closeFd(fd);
        return { id: lease.id, target: t.child };
      } catch (e) {
        return e as Refusal;
      } finally {
        closeFd(pidfd);
      }
    };
    const first = await open(0);
    assert.ok('id' in first, JSON.stringify(first));
    const filler = fillUp(state);
    // Opens until one cannot be journaled (the journal's last page fills after a few).
    let refusal: Refusal | undefined;
    const granted: string[] = [first.id];
    for (let n = 1; n < 40 && refusal === undefined; n += 1) {
      const r = await open(n);
      if ('id' in r) granted.push(r.id);
      else refusal = r;
    }
    assert.equal(refusal?.errorName, 'JournalUnavailable', JSON.stringify(refusal));
    assert.equal(refusal.parameters?.['errno'], 'ENOSPC');
    // Reads still work, and say since when the journal is degraded.
    const status = await client.status();
    assert.equal(status.journal?.healthy, false);
    assert.equal(status.journal.degradedSince, refusal.parameters?.['since']);
    assert.deepEqual((await client.list()).leases.map((l) => l.id), granted);
    // Changes are refused before they touch anything.
    await assert.rejects(client.resize(first.id, 1), (e: Refusal) => e.errorName === 'JournalUnavailable');
    await assert.rejects(client.release(first.id), (e: Refusal) => e.errorName === 'JournalUnavailable');
    assert.deepEqual((await client.list()).leases.map((l) => l.id), granted, 'nothing changed');

    // The first target exits while the journal cannot record it: its lease ends once, in memory.
    const linesBefore = broker.logs.length;
    first.target.kill('SIGKILL');
    await broker.waitForLog((l) => l['audit'] === 'release' && l['lease'] === first.id);
    const ticksBefore = cpuTicks(daemonPid);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const ticks = cpuTicks(daemonPid) - ticksBefore;
    const since = broker.logs.slice(linesBefore);
    assert.ok(since.length <= 5, `the daemon logged ${since.length} lines: ${since.slice(0, 5).map((l) => l.msg).join(' | ')}`);
    assert.ok(!since.some((l) => /could not end the lease/.test(l.msg)), 'ending the lease must not fail');
    assert.ok(ticks < 50, `the daemon used ${ticks} clock ticks of CPU in 1 s while idle (spinning?)`);
    assert.equal(broker.logs.filter((l) => /journal degraded/.test(l.msg)).length, 1, 'the degradation is logged once');
    assert.ok(!(await client.list()).leases.some((l) => l.id === first.id));

    rmSync(filler);
    await broker.waitForLog((l) => /journal recovered/.test(l.msg), 60_000);
    assert.deepEqual((await client.status()).journal, { healthy: true });
    const file = join(state, 'leases.journal');
    assert.ok(!replay(file, readFileSync(file)).leases.has(first.id), 'the exited target\'s release is durable now');
    const again = await open(99);
    assert.ok('id' in again, `an Open after recovery: ${JSON.stringify(again)}`);
    assert.equal(broker.child.exitCode, null, 'the daemon never exited');
  } finally {
    client?.close();
    for (const t of targets) t.kill('SIGKILL');
    await broker?.stop();
    unmount(state);
    rmSync(dir, { recursive: true });
  }
});
