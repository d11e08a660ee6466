// Lab assertion 5: `iommufdctl exec` opens a lease for itself, then execs the program in the
// same process with the FD number substituted into its arguments; that program maps under
// the limit and fails beyond it.
//
// Invariants:
// - The whole chain runs as uid 65534 with no capabilities: setpriv -> node iommufdctl exec
//   -> execve(lab-client --fd N). The pid never changes, so the lease's target is the program.
// - What the program got is read from the kernel (/proc/PID/cmdline, /proc/PID/environ,
//   /proc/PID/fd/N), not from what the CLI says it did.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readlinkSync } from 'node:fs';
import { CTL, LabBroker, MiB, PAGE } from '../harness/lab-broker.ts';
import { LAB_CLIENT, LabClient, NOBODY } from '../harness/lab-client.ts';
import { Manager } from '../harness/manager.ts';

const OVERHEAD = 256 * 1024;
const MEMORY = 768 * 1024;
const LIMIT = 1 * MiB;

describe('broker on /dev/iommu: iommufdctl exec', () => {
  let broker: LabBroker;
  let manager: Manager;
  let program: LabClient;

  before(async () => {
    broker = await LabBroker.start({ overheadBytes: OVERHEAD, budgetBytes: 16 * MiB });
    manager = Manager.start(broker.socket);
    program = LabClient.spawn({
      unprivileged: true,
      argv: [process.execPath, CTL, 'exec', '--socket', broker.socket, '--name', 'lab-exec', '--memory', String(MEMORY),
        '--', LAB_CLIENT, '--fd', '{iommufd}'],
      timeoutMs: 300_000, // the first command waits for node + tsx to start under TCG
    });
  });
  after(async () => {
    await program.kill();
    await manager.close();
    assert.deepEqual(await broker.stop(), { code: 0, signal: null });
  });

  test('the exec\'d program is the lease\'s target, with the FD number in its argv', async () => {
    assert.equal(await program.okNumber('pid'), program.pid, 'iommufdctl exec\'d in place: same pid');
    const [capEff, euid] = await program.ok('caps');
    assert.equal(BigInt(`0x${capEff ?? 'x'}`), 0n);
    assert.equal(Number(euid), NOBODY);

    const leases = await manager.list();
    const lease = leases.find((l) => l.pid === program.pid);
    assert.ok(lease !== undefined, `a lease targets pid ${program.pid}: ${JSON.stringify(leases)}`);
    assert.equal(lease.name, 'lab-exec');
    assert.equal(lease.limitBytes, LIMIT);
    assert.equal(lease.uid, NOBODY);

    const argv = readFileSync(`/proc/${program.pid}/cmdline`, 'utf8').split('\0').filter((a) => a !== '');
    assert.equal(argv.includes('{iommufd}'), false, `the token was substituted: ${argv.join(' ')}`);
    const fdArg = argv[argv.indexOf('--fd') + 1];
    assert.match(fdArg ?? '', /^\d+$/, `argv: ${argv.join(' ')}`);
    assert.equal(readlinkSync(`/proc/${program.pid}/fd/${fdArg ?? ''}`), '/dev/iommu', 'that fd is /dev/iommu');
    const environ = readFileSync(`/proc/${program.pid}/environ`, 'utf8').split('\0');
    assert.ok(environ.includes(`IOMMUFD_BROKER_FD=${fdArg ?? ''}`), 'the environment names the same fd');
    assert.ok(environ.includes(`IOMMUFD_BROKER_LEASE=${lease.id}`), 'and the lease');
    assert.deepEqual(await program.rlimit(), { soft: LIMIT, hard: LIMIT });
    assert.equal(await program.okNumber('option-get 0'), 1, 'the fd it got has per-process accounting');
  });

  test('the exec\'d program maps under its limit and fails beyond it', async () => {
    const ioas = await program.okNumber('ioas-alloc');
    await program.ok(`mock-domain ${ioas}`);
    assert.equal(await program.errnoOf(`map ${ioas} ${LIMIT + PAGE}`), 'ENOMEM');
    const start = await program.vm();
    await program.ok(`map ${ioas} ${LIMIT}`);
    assert.equal((await program.vm()).lockedBytes - start.lockedBytes, LIMIT);
    assert.equal(await program.errnoOf(`map ${ioas} ${PAGE}`), 'ENOMEM');
    assert.deepEqual(await program.exit(), { code: 0, signal: null });
    await manager.waitForLeases('the exec\'d program\'s lease to end with it', (ls) => ls.length === 0);
  });
});
