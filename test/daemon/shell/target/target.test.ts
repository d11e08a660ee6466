// Targets (issue #8 items 6, 12, 13): what describeTarget accepts (whole, live processes only),
// the capability facts it gathers, how a refused limit read is reported, and what setLimit says
// when the undo after a lost race fails. Real processes; the race is played with fake ops.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BrokerError, VarlinkServiceError } from '../../../../protocol/errors.ts';
import { constants } from 'node:os';
import { PIDFD_THREAD, SysError, closeFd, pidfdOpen } from '../../../../native/sys.ts';
import { describeTarget, readLimit, setLimit, type LimitOps, type Target } from '../../../../daemon/shell/target/target.ts';
import { leakedSince, openFds } from '../../../support/fds.ts';
import { closesDone } from '../../../native/fd-audit.ts';
import { NOBODY } from '../../../support/children.ts';
import { readFileSync } from 'node:fs';
import { IPC_LOCK_BIT, PYTHON, STRIP_ALL_BUT_IPC_LOCK, capset, python, startChild, stopChild } from './helpers.ts';

const STRIP = ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all'];

/** Polls /proc/PID/status until its State letter is `state` (a hang guard, not a timing assertion). */
async function waitForState(pid: number, state: string): Promise<void> {
  for (let i = 0; i < 400; i++) {
    if (new RegExp(`^State:\\s+${state}`, 'm').test(readFileSync(`/proc/${pid}/status`, 'utf8'))) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`pid ${pid} never reached state ${state}`);
}

/**
 * describeTarget must refuse this pidfd with `check`, and close it. A refused fd came from a
 * client, so it is closed off the event loop (closeOffLoop): wait for the closer threads.
 */
async function refuses(pidfd: number, check: (e: unknown) => boolean): Promise<void> {
  const before = openFds();
  assert.throws(() => describeTarget(pidfd), check);
  await closesDone();
  before.delete(pidfd);
  await closesDone();
  assert.deepEqual(leakedSince(before), [], 'the refused pidfd was closed');
}

function invalidPidfd(e: unknown): boolean {
  return e instanceof VarlinkServiceError && e.errorName === 'InvalidParameter'
    && e.parameters['parameter'] === 'targetPidFileDescriptor' && /names thread \d+ of process \d+, not a process/.test(String(e.parameters['reason']));
}

test('a thread pidfd is refused: of a thread that is not the leader, and PIDFD_THREAD of the leader itself', async () => {
  const child = await startChild(['setpriv', ...STRIP, ...python(
    'import threading, os',
    'threading.Thread(target=lambda: __import__("time").sleep(3600), daemon=True).start()',
    'print([t for t in os.listdir("/proc/self/task") if int(t) != os.getpid()][0], flush=True)',
  )]);
  try {
    const tid = Number(child.lines[0]);
    assert.ok(Number.isSafeInteger(tid) && tid !== child.pid, `no thread id in ${child.lines.join('|')}`);
    await refuses(pidfdOpen(tid, PIDFD_THREAD), invalidPidfd);
    await refuses(pidfdOpen(child.pid, PIDFD_THREAD), invalidPidfd);
    const whole = describeTarget(pidfdOpen(child.pid));
    assert.equal(whole.pid, child.pid, 'the process pidfd is accepted');
    closeFd(whole.pidfd);
  } finally {
    await stopChild(child);
  }
});

test('a zombie is TargetGone, although its pidfd still answers signal 0', async () => {
  const child = await startChild(['setpriv', ...STRIP, ...python(
    'import os, time',
    'pid = os.fork()',
    'if pid == 0: os._exit(0)',
    'while open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z": time.sleep(0.01)',
    'print(pid, flush=True)',
  )]);
  try {
    const zombie = Number(child.lines[0]);
    assert.ok(Number.isSafeInteger(zombie) && zombie > 0, `no zombie pid in ${child.lines.join('|')}`);
    await refuses(pidfdOpen(zombie), (e) => e instanceof BrokerError && e.errorName === 'TargetGone'
      && e.parameters.pid === zombie && /zombie/.test(e.parameters.reason));
  } finally {
    await stopChild(child);
  }
});

test('a process whose leader thread exited while another thread runs is live, not TargetGone', async () => {
  // Its leader shows "State: Z", but the process keeps its fds and may pin: refusing it at Open
  // is harmless, but after a broker restart it would drop a live lease and return its bytes.
  const child = await startChild(['setpriv', ...STRIP, PYTHON, '-c', [
    'import ctypes, threading, time',
    'threading.Thread(target=lambda: time.sleep(3600)).start()',
    "print('ready', flush=True)",
    'ctypes.CDLL(None).pthread_exit(None)',
  ].join('\n')]);
  try {
    await waitForState(child.pid, 'Z');
    const target = describeTarget(pidfdOpen(child.pid));
    assert.equal(target.pid, child.pid);
    closeFd(target.pidfd);
  } finally {
    child.process.kill('SIGKILL');
    await stopChild(child);
  }
});

test('describeTarget reports the set CAP_IPC_LOCK is in (permitted only here) and NoNewPrivs', async () => {
  const child = await startChild(['setpriv', '--no-new-privs', ...STRIP_ALL_BUT_IPC_LOCK, ...python(...capset(0, IPC_LOCK_BIT, 0))]);
  try {
    const { usage: _usage, ...target } = describeTarget(pidfdOpen(child.pid));
    assert.equal(target.ipcLockSet, 'permitted');
    assert.equal(target.noNewPrivs, true);
    closeFd(target.pidfd);
  } finally {
    await stopChild(child);
  }
});

test('a refused limit read is KernelRefused naming the read, not an InternalError', async () => {
  // Another uid's process: without CAP_SYS_RESOURCE (root here lacks it) prlimit may not even read its limit.
  const child = await startChild(['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...STRIP, ...python()]);
  let target: Target | undefined;
  try {
    const { usage: _usage, ...described } = describeTarget(pidfdOpen(child.pid));
    target = described;
    const t = described;
    assert.throws(() => readLimit(t, false), (e: unknown) => e instanceof BrokerError && e.errorName === 'KernelRefused'
      && e.parameters.errno === 'EPERM' && e.parameters.operation === `prlimit(${child.pid}, RLIMIT_MEMLOCK) (reading the current limit)`
      && /lacks CAP_SYS_RESOURCE/.test(e.parameters.reason));
  } finally {
    if (target !== undefined) closeFd(target.pidfd);
    await stopChild(child);
  }
});

/** Plays "the target died right after prlimit": alive before, dead after; the undo does `undo`. */
function racingOps(undo: () => void): { ops: LimitOps; calls: string[] } {
  const calls: string[] = [];
  let probes = 0;
  return {
    calls,
    ops: {
      pidfdIsAlive: () => probes++ === 0,
      prlimitMemlock: (_pid, set) => {
        calls.push(JSON.stringify(set));
        if (calls.length === 1) return { soft: 1024, hard: 2048 };
        undo();
        return { soft: 4096, hard: 4096 };
      },
    },
  };
}

const fakeTarget: Target = { pid: 4242, pidfd: -1, uid: 0,
  ids: { realUid: 0, effectiveUid: 0, savedUid: 0, realGid: 0, effectiveGid: 0, savedGid: 0 }, startTime: '1', ipcLockSet: undefined, noNewPrivs: false };
const limit = { soft: 4096, hard: 4096 };

test('setLimit says "undone" only when the undo worked, and otherwise what is left on the pid', () => {
  const ok = racingOps(() => undefined);
  assert.throws(() => setLimit(fakeTarget, limit, false, ok.ops), (e: unknown) => e instanceof BrokerError
    && e.errorName === 'TargetGone' && /the change was undone/.test(e.parameters.reason));
  assert.deepEqual(ok.calls, [JSON.stringify(limit), JSON.stringify({ soft: 1024, hard: 2048 })], 'the undo put the old limit back');

  const refused = racingOps(() => { throw new SysError('prlimit', constants.errno.EPERM); });
  assert.throws(() => setLimit(fakeTarget, limit, false, refused.ops), (e: unknown) => e instanceof BrokerError
    && e.errorName === 'TargetGone' && !/was undone/.test(e.parameters.reason)
    && /undoing the change failed \(EPERM\).*pid 4242 may be left with RLIMIT_MEMLOCK soft 4096, hard 4096 instead of soft 1024, hard 2048/
      .test(e.parameters.reason));

  const vanished = racingOps(() => { throw new SysError('prlimit', constants.errno.ESRCH); });
  assert.throws(() => setLimit(fakeTarget, limit, false, vanished.ops), (e: unknown) => e instanceof BrokerError
    && e.errorName === 'TargetGone' && /no process holds its pid any more, so nothing was left to undo/.test(e.parameters.reason));
});
