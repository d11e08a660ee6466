// Which capability sets count as "may hold CAP_IPC_LOCK" (issue #8 items 6 and 13), against real
// processes: root children whose sets we shape with setpriv and capset(2), and a child in its
// own user namespace (unshare --user --map-root-user), whose full CapEff does not reach the host.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { capabilityFacts, inInitialUserNamespace, ipcLockSetOf } from '../../../../daemon/shell/target/caps.ts';
import { readProcStatus, type ProcStatus } from '../../../../daemon/shell/target/procfs.ts';
import { IPC_LOCK_BIT, STRIP_ALL_BUT_IPC_LOCK, capset, python, startChild, stopChild } from './helpers.ts';

const IPC = 1n << 14n;

function status(fields: Partial<ProcStatus>): ProcStatus {
  return {
    ...readProcStatus(process.pid), capEff: 0n, capPrm: 0n, capInh: 0n, capBnd: 0n, capAmb: 0n, noNewPrivs: false, ...fields,
  };
}

test('ipcLockSetOf: effective, permitted, ambient, inheritable (unless NoNewPrivs); the bounding set alone is not counted', () => {
  assert.equal(ipcLockSetOf(status({ capEff: IPC, capPrm: IPC })), 'effective');
  assert.equal(ipcLockSetOf(status({ capPrm: IPC })), 'permitted');
  assert.equal(ipcLockSetOf(status({ capAmb: IPC })), 'ambient');
  assert.equal(ipcLockSetOf(status({ capInh: IPC })), 'inheritable');
  assert.equal(ipcLockSetOf(status({ capInh: IPC, noNewPrivs: true })), undefined, 'NoNewPrivs: no exec can use pI & fI');
  assert.equal(ipcLockSetOf(status({ capBnd: IPC })), undefined);
  assert.equal(ipcLockSetOf(status({ capEff: ~IPC & ((1n << 41n) - 1n), capPrm: ~IPC & ((1n << 41n) - 1n) })), undefined,
    'every other capability is fine');
});

test('a root process that dropped CAP_IPC_LOCK from its effective set only still holds it in permitted', async () => {
  const child = await startChild(['setpriv', ...STRIP_ALL_BUT_IPC_LOCK, ...python(...capset(0, IPC_LOCK_BIT, 0))]);
  try {
    const s = readProcStatus(child.pid);
    assert.equal(s.capEff, 0n, 'CapEff alone says it has no CAP_IPC_LOCK');
    assert.equal(s.capPrm, IPC);
    assert.deepEqual(capabilityFacts(child.pid, s), { ipcLockSet: 'permitted', noNewPrivs: false });
  } finally {
    await stopChild(child);
  }
});

test('CAP_IPC_LOCK in inheritable only counts, unless NoNewPrivs is set', async () => {
  const inheritable = await startChild(['setpriv', ...STRIP_ALL_BUT_IPC_LOCK, ...python(...capset(0, 0, IPC_LOCK_BIT))]);
  try {
    const s = readProcStatus(inheritable.pid);
    assert.deepEqual([s.capEff, s.capPrm, s.capInh, s.noNewPrivs], [0n, 0n, IPC, false]);
    assert.deepEqual(capabilityFacts(inheritable.pid, s), { ipcLockSet: 'inheritable', noNewPrivs: false });
  } finally {
    await stopChild(inheritable);
  }
  const nnp = await startChild(['setpriv', '--no-new-privs', ...STRIP_ALL_BUT_IPC_LOCK, ...python(...capset(0, 0, IPC_LOCK_BIT))]);
  try {
    const s = readProcStatus(nnp.pid);
    assert.deepEqual([s.capInh, s.noNewPrivs], [IPC, true]);
    assert.deepEqual(capabilityFacts(nnp.pid, s), { ipcLockSet: undefined, noNewPrivs: true });
  } finally {
    await stopChild(nnp);
  }
});

test('root only inside its own user namespace: full CapEff, yet not capable(CAP_IPC_LOCK) on the host', async () => {
  assert.equal(inInitialUserNamespace(process.pid), true, 'the test runs in the daemon\'s (initial) namespace');
  const child = await startChild(['unshare', '--user', '--map-root-user', ...python()]);
  try {
    const s = readProcStatus(child.pid);
    assert.equal(s.capEff & IPC, IPC, 'its own namespace gives it every capability');
    assert.equal(inInitialUserNamespace(child.pid), false);
    assert.equal(s.noNewPrivs, false);
    assert.deepEqual(capabilityFacts(child.pid, s), { ipcLockSet: undefined, noNewPrivs: true }, 'no exec brings it host capabilities');
  } finally {
    await stopChild(child);
  }
});

test('the namespace check works for a reader without ptrace access to the target, as the broker under systemd is', () => {
  // Under its unit the broker runs as its own user: a stat of /proc/PID/ns/user of a target of
  // another uid is EACCES there (every Open of the host lab failed with InternalError). Run the
  // check as uid 65534 against this (root) process and a root-owned child namespace.
  const child = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups',
    process.execPath, '--import', 'tsx', '-e',
    `import('${new URL('../../../../daemon/shell/target/caps.ts', import.meta.url).pathname}')`
    + `.then((m) => console.log(JSON.stringify(m.inInitialUserNamespace(${process.pid}))))`
    + `.catch((e) => { console.log('threw ' + e.message); process.exitCode = 1; })`,
  ], { encoding: 'utf8', cwd: new URL('../../../..', import.meta.url).pathname });
  assert.equal(child.stdout.trim(), 'true', `as uid 65534: ${child.stdout}${child.stderr}`);
});
