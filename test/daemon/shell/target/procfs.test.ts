// procfs readers against real processes: ourselves, our threads, and children whose ids,
// capabilities and locked memory we choose (setpriv, python3's mlock).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { copyFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { once } from 'node:events';
import { tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import {
  CAP_IPC_LOCK, CAP_SYS_RESOURCE, ProcessGone, ProcfsFormatError, hasCapability, memTotalBytes,
  ownCapabilities, pageSize, readProcStatus, readStartTime, startTimeFromStat,
} from '../../../../daemon/shell/target/procfs.ts';
import { leakedSince, openFds } from '../../../support/fds.ts';
import { PYTHON, startChild, stopChild } from './helpers.ts';



const waitForStdin = "import sys; print('ready', flush=True); sys.stdin.read()";

test('readProcStatus of our own process matches what node says about us', () => {
  const before = openFds();
  const status = readProcStatus(process.pid);
  assert.deepEqual(leakedSince(before), [], 'an fd leaked');
  assert.equal(status.pid, process.pid);
  assert.equal(status.tgid, process.pid);
  assert.equal(status.name, 'node');
  assert.equal(status.realUid, process.getuid!());
  assert.equal(status.effectiveUid, process.geteuid!());
  assert.equal(status.realGid, process.getgid!());
  assert.equal(status.effectiveGid, process.getegid!());
  // node's getgroups() adds the egid when it is not a supplementary group.
  const nodeGroups = new Set(process.getgroups!());
  for (const g of status.groups) assert.ok(nodeGroups.has(g), `group ${g} not in getgroups()`);
  for (const g of nodeGroups) assert.ok(status.groups.includes(g) || g === status.effectiveGid, `getgroups() has ${g}`);
  assert.equal(status.vmLckBytes, 0, 'this test process locks no memory');
  assert.equal(status.vmPinBytes, 0, 'this test process pins no memory');
});

test('a thread id reads as a thread: tgid is the process', () => {
  const tids = readdirSync(`/proc/${process.pid}/task`).map(Number).filter((t) => t !== process.pid);
  const tid = tids[0];
  assert.ok(tid !== undefined, 'node always runs helper threads');
  const status = readProcStatus(tid);
  assert.equal(status.pid, tid);
  assert.equal(status.tgid, process.pid);
});

test('real, effective, saved ids and groups are read in the kernel\'s order', async () => {
  const child = await startChild([
    'setpriv', '--ruid', '1', '--euid', '2', '--rgid', '3', '--egid', '4', '--groups', '5,7',
    PYTHON, '-c', waitForStdin,
  ]);
  try {
    const s = readProcStatus(child.pid);
    assert.deepEqual(
      [s.realUid, s.effectiveUid, s.savedUid, s.fsUid, s.realGid, s.effectiveGid, s.savedGid, s.fsGid],
      [1, 2, 2, 2, 3, 4, 4, 4],
    );
    assert.deepEqual(s.groups, [5, 7]);
    assert.equal(s.capEff, 0n, 'a non-root euid has no effective capabilities');
  } finally {
    await stopChild(child);
  }
});

test('capabilities of a child: only CAP_IPC_LOCK kept, then none', async () => {
  const ipcOnly = await startChild(['setpriv', '--bounding-set', '-all,+ipc_lock', PYTHON, '-c', waitForStdin]);
  try {
    const s = readProcStatus(ipcOnly.pid);
    assert.equal(s.capEff, 1n << 14n);
    assert.equal(hasCapability(s.capEff, CAP_IPC_LOCK), true);
    assert.equal(hasCapability(s.capEff, CAP_SYS_RESOURCE), false);
  } finally {
    await stopChild(ipcOnly);
  }
  const none = await startChild([
    'setpriv', '--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', PYTHON, '-c', waitForStdin,
  ]);
  try {
    const s = readProcStatus(none.pid);
    assert.equal(s.capEff, 0n);
    assert.equal(hasCapability(s.capEff, CAP_IPC_LOCK), false);
  } finally {
    await stopChild(none);
  }
});

test('VmLck of a child that mlock()s two pages is 8192 bytes; VmPin stays 0', async () => {
  const program = [
    'import ctypes, mmap, sys',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'buf = mmap.mmap(-1, 8192)',
    'addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))',
    'assert libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(8192)) == 0, ctypes.get_errno()',
    "print('ready', flush=True)",
    'sys.stdin.read()',
  ].join('\n');
  const child = await startChild([PYTHON, '-c', program]);
  try {
    const s = readProcStatus(child.pid);
    assert.equal(s.vmLckBytes, 8192);
    assert.equal(s.vmPinBytes, 0);
  } finally {
    await stopChild(child);
  }
});

test('a zombie has no VmLck/VmPin lines: undefined, not 0', async () => {
  // The python parent forks a child that exits at once and is never waited for.
  const program = [
    'import os, sys, time',
    'pid = os.fork()',
    'if pid == 0: os._exit(0)',
    'while open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] != "Z": time.sleep(0.01)',
    "print(pid, flush=True); print('ready', flush=True)",
    'sys.stdin.read()',
  ].join('\n');
  const child = spawn(PYTHON, ['-c', program], { stdio: ['pipe', 'pipe', 'inherit'] });
  let out = '';
  for await (const chunk of child.stdout) {
    out += String(chunk);
    if (out.includes('ready\n')) break;
  }
  try {
    const zombie = Number(out.split('\n')[0]);
    assert.ok(Number.isSafeInteger(zombie) && zombie > 0, `no zombie pid in ${out}`);
    const s = readProcStatus(zombie);
    assert.equal(s.vmLckBytes, undefined);
    assert.equal(s.vmPinBytes, undefined);
    assert.equal(s.realUid, process.getuid!());
  } finally {
    const exited = once(child, 'exit');
    child.stdin.end();
    await exited;
  }
});

test('readStartTime is stable for one process and later for a process started after us', async () => {
  const ours = readStartTime(process.pid);
  assert.match(ours, /^\d+$/);
  assert.equal(readStartTime(process.pid), ours);
  const child = await startChild([PYTHON, '-c', waitForStdin]);
  try {
    const theirs = readStartTime(child.pid);
    assert.equal(readStartTime(child.pid), theirs);
    // Loading node + tsx + this file takes far longer than one clock tick.
    assert.ok(BigInt(theirs) > BigInt(ours), `child ${theirs} should start after us ${ours}`);
  } finally {
    await stopChild(child);
  }
});

test('readStartTime of a process whose comm contains ") (" and spaces', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'procfs-'));
  const weird = join(dir, 'a) b (c) 1 2');
  copyFileSync(PYTHON, weird);
  execFileSync('chmod', ['755', weird]);
  const child = await startChild([weird, '-c', waitForStdin]);
  try {
    const stat = readFileSync(`/proc/${child.pid}/stat`, 'utf8');
    assert.ok(stat.includes('(a) b (c) 1 2)'), `comm not as expected: ${stat.slice(0, 60)}`);
    const start = readStartTime(child.pid);
    // The same field as counted by a naive split would be wrong; compare with /proc/PID/stat
    // parsed from the end, where the field count is fixed at 52 on this kernel.
    const fields = stat.trim().split(' ');
    assert.equal(start, fields[fields.length - 52 + 21]);
    assert.equal(readProcStatus(child.pid).name, 'a) b (c) 1 2');
  } finally {
    await stopChild(child);
    rmSync(dir, { recursive: true });
  }
});

test('startTimeFromStat rejects text without a command name or field 22', () => {
  assert.throws(() => startTimeFromStat('1 nocomm S 0', 'x'), ProcfsFormatError);
  assert.throws(() => startTimeFromStat('1 (a) S 0 1 2', 'x'), /field 22/);
  const line = '42 (x) S ' + Array.from({ length: 18 }, (_, i) => String(i + 4)).join(' ') + ' 777 0 0';
  assert.equal(startTimeFromStat(line, 'x'), '777');
});

test('a process that does not exist is ProcessGone, for every per-process reader', () => {
  const pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  const missing = pidMax + 1; // the kernel never hands out a pid above pid_max
  for (const read of [readProcStatus, readStartTime]) {
    assert.throws(() => read(missing), (e: unknown) => {
      assert.ok(e instanceof ProcessGone);
      assert.equal(e.name, 'ProcessGone');
      assert.equal(e.pid, missing);
      assert.equal(e.code, 'ENOENT');
      return true;
    });
  }
});

test('a child that exited and was reaped is ProcessGone', async () => {
  const child = await startChild([PYTHON, '-c', waitForStdin]);
  await stopChild(child);
  assert.throws(() => readProcStatus(child.pid), ProcessGone);
});

test('invalid pids are a RangeError, not a read of /proc/0 or /proc/-1', () => {
  for (const bad of [0, -1, 1.5, Number.NaN]) assert.throws(() => readProcStatus(bad), RangeError);
});

test('memTotalBytes agrees with os.totalmem(); pageSize with getconf', () => {
  assert.equal(memTotalBytes(), totalmem());
  const getconf = Number(execFileSync('getconf', ['PAGESIZE'], { encoding: 'utf8' }).trim());
  assert.equal(pageSize(), getconf);
});

test('ownCapabilities reflects /proc/self/status, bit by bit', () => {
  const before = openFds();
  const own = ownCapabilities();
  assert.deepEqual(leakedSince(before), [], 'an fd leaked');
  const hex = /CapEff:\s*([0-9a-f]+)/.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
  assert.ok(hex !== undefined);
  assert.equal(own.effective, BigInt(`0x${hex}`));
  assert.equal(own.sysResource, (own.effective & (1n << 24n)) !== 0n);
  assert.equal(own.ipcLock, (own.effective & (1n << 14n)) !== 0n);
});

test('hasCapability tests exactly one bit and rejects impossible numbers', () => {
  assert.equal(hasCapability(0x1fffeffffffn, CAP_SYS_RESOURCE), false); // these machines' root
  assert.equal(hasCapability(0x1fffeffffffn, CAP_IPC_LOCK), true);
  assert.equal(hasCapability(1n << 63n, 63), true);
  assert.equal(hasCapability(1n << 63n, 62), false);
  assert.throws(() => hasCapability(1n, 64), RangeError);
  assert.throws(() => hasCapability(1n, -1), RangeError);
});
