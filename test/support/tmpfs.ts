// Test support: a real disk that runs full, as a tiny tmpfs mounted for one test.
//
// Invariants:
// - Only root with CAP_SYS_ADMIN can mount: `tmpfsUnavailable` says why a test must skip
//   (computed once, by mounting and unmounting a probe), never a silent pass.
// - Every mount is undone by its test (`unmount`), before the directory is removed.
import { execFileSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export function mountTmpfs(dir: string, sizeBytes: number): void {
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${sizeBytes},mode=0700`, 'tmpfs', dir], { stdio: 'pipe' });
}

export function unmount(dir: string): void {
  execFileSync('umount', [dir], { stdio: 'pipe' });
}

/** Why tmpfs mounts are impossible here, or false if they work. */
export const tmpfsUnavailable: string | false = (() => {
  const probe = mkdtempSync(join(tmpdir(), 'tmpfs-probe-'));
  try {
    mountTmpfs(probe, 64 * 1024);
    unmount(probe);
    return false;
  } catch (e) {
    return `cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN): ${e instanceof Error ? e.message.split('\n')[0] : String(e)}`;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
})();

/** Fills the file system of `dir` to the last byte with `dir/filler`; returns its path (delete it to free the space). */
export function fillUp(dir: string): string {
  const path = join(dir, 'filler');
  const fd = openSync(path, 'w', 0o600);
  const block = Buffer.alloc(4096, 0x2e);
  try {
    for (;;) {
      try {
        writeSync(fd, block);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw e;
      }
    }
  } finally {
    closeSync(fd);
  }
  return path;
}
