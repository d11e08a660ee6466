// Test support for target.test.ts, caps.test.ts and procfs.test.ts: python3 children whose capability
// sets, threads, user namespace or state (zombie) we choose. Not a test file itself.
//
// Invariants:
// - A child prints "ready" (after its setup) and then waits on stdin; stopChild closes stdin and
//   resolves once Node has reaped it. Extra lines before "ready" are returned as `lines`.
// - Nothing here sleeps blindly: a child that never becomes ready fails the test with its output.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';

export const PYTHON = '/usr/bin/python3';
export const STRIP_ALL_BUT_IPC_LOCK = ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all,+ipc_lock'] as const;

export interface Child { process: ChildProcess; pid: number; lines: string[] }

/** Runs argv (ending in a python3 program built by `python()`) until it prints "ready". */
export async function startChild(argv: readonly string[]): Promise<Child> {
  const [cmd, ...args] = argv;
  assert.ok(cmd !== undefined);
  const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'inherit'] });
  assert.ok(child.pid !== undefined, `spawn ${cmd} failed`);
  let out = '';
  for await (const chunk of child.stdout!) {
    out += String(chunk);
    if (out.includes('ready\n')) break;
  }
  assert.ok(out.includes('ready\n'), `child ${argv.join(' ')} never became ready: ${out}`);
  return { process: child, pid: child.pid, lines: out.split('\n').filter((l) => l !== '' && l !== 'ready') };
}

/** Closes the child's stdin (it exits) and waits until it has been reaped. */
export async function stopChild(child: Child): Promise<void> {
  if (child.process.exitCode !== null || child.process.signalCode !== null) return;
  const exited = once(child.process, 'exit');
  child.process.stdin!.end();
  await exited;
}

/** A python3 program: `setup` lines, then print "ready" and wait for stdin to close. */
export function python(...setup: string[]): string[] {
  return [PYTHON, '-c', [...setup, "print('ready', flush=True)", 'import sys; sys.stdin.read()'].join('\n')];
}

/** Python lines that set the capability sets with capset(2) (bit masks of the low 32 capabilities). */
export function capset(effective: number, permitted: number, inheritable: number): string[] {
  return [
    'import ctypes',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'class Hdr(ctypes.Structure): _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]',
    'class Data(ctypes.Structure): _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]',
    'hdr = Hdr(0x20080522, 0); data = (Data * 2)()',
    `data[0].effective = ${effective}; data[0].permitted = ${permitted}; data[0].inheritable = ${inheritable}`,
    'assert libc.capset(ctypes.byref(hdr), data) == 0, ctypes.get_errno()',
  ];
}

export const IPC_LOCK_BIT = 1 << 14;
