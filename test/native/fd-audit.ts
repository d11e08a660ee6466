// Test support: what fds this process has open, and their flags, read from /proc/self.
//
// Invariants: read-only. Listing /proc/self/fd opens a directory fd of its own; it is closed
// again when the listing returns, and left out of the result.
import assert from 'node:assert/strict';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { native } from '../../native/binding.ts';

const O_CLOEXEC = 0o2000000;

export function listFds(): number[] {
  return readdirSync('/proc/self/fd').map(Number).filter(isOpen).sort((a, b) => a - b);
}

/** The open flags of fd (octal "flags:" line of /proc/self/fdinfo). */
export function fdFlags(fd: number): number {
  const match = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  assert.ok(match?.[1] !== undefined, `fd ${fd} has no flags line in fdinfo`);
  return parseInt(match[1], 8);
}

export function isCloexec(fd: number): boolean {
  return (fdFlags(fd) & O_CLOEXEC) !== 0;
}

/** lstat of the /proc link: opens no fd (a listing would reuse the number being asked about). */
export function isOpen(fd: number): boolean {
  return lstatSync(`/proc/self/fd/${fd}`, { throwIfNoEntry: false }) !== undefined;
}

/** Lets queued nextTicks and one turn of the loop run (e.g. 'close' events). */
export function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Waits until every fd handed to the helper's closer threads (closeLater) is closed; throws
 * (naming how many are left) if that takes longer than guardMs: a close that never finishes
 * is a leak for the purposes of these tests.
 */
export async function closesDone(guardMs = 5000): Promise<void> {
  const deadline = Date.now() + guardMs;
  while (native.pendingCloses() > 0) {
    if (Date.now() > deadline) throw new Error(`hang guard: ${native.pendingCloses()} closes still pending after ${guardMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/**
 * Runs body and asserts that every fd open afterwards was open before. (The runner may close
 * an fd of its own meanwhile, so the check is "nothing new stayed open", not set equality.)
 */
export async function withNoFdLeak(body: () => Promise<void> | void): Promise<void> {
  const before = new Set(listFds());
  await body();
  await settle();
  await closesDone();
  const leaked = listFds().filter((fd) => !before.has(fd));
  assert.deepEqual(leaked, [], `fds left open: ${leaked.map(describeFd).join(', ')}`);
}

function describeFd(fd: number): string {
  try {
    return `${fd} -> ${readlinkSync(`/proc/self/fd/${fd}`)}`;
  } catch {
    return `${fd} (closed meanwhile)`;
  }
}
