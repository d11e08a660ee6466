// Test support: the fds a process holds, to prove nothing leaks.
//
// Invariants:
// - An fd is named by its number and what /proc/PID/fd/N points at: a number reused for
//   another file counts as a leak, not as the old fd.
// - Reads /proc only and holds no fd (readdir's own directory fd is listed, gone by the
//   readlink, and skipped).
// - settledLeaks waits by polling, bounded by its timeout: it never asserts on time, only on
//   what is still open when the wait ends.
import { readdirSync, readlinkSync } from 'node:fs';

/** fd number -> what it points at, for the given pid (default: this process). */
export function openFds(pid: number | 'self' = 'self'): Map<number, string> {
  const dir = `/proc/${pid}/fd`;
  const out = new Map<number, string>();
  for (const name of readdirSync(dir)) {
    try {
      out.set(Number(name), readlinkSync(`${dir}/${name}`));
    } catch {
      // the fd readdir itself used, closed by now
    }
  }
  return out;
}

/** Fds present now that were not in `before`, described for an assertion message. */
export function leakedSince(before: Map<number, string>, pid: number | 'self' = 'self'): string[] {
  return [...openFds(pid)].filter(([fd, target]) => before.get(fd) !== target).map(([fd, t]) => `${fd} -> ${t}`);
}

/**
 * Waits until `pid` holds exactly the fds of `before` again (a peer's close reaches the daemon
 * asynchronously), then returns what is still extra — [] on success.
 */
export async function settledLeaks(before: Map<number, string>, pid: number, timeoutMs = 5000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  let leaked = leakedSince(before, pid);
  while (leaked.length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    leaked = leakedSince(before, pid);
  }
  return leaked;
}
