// Builds the project's small C programs (bench/*.c, test/hostile/fixtures/*.c) with the system
// gcc, once per source content, for the benchmarks and the hostile tests.
//
// Invariants:
// - The binary lives in a cache dir keyed by the sha256 of the source and the flags, so a
//   changed source is always rebuilt and an unchanged one never is.
// - A binary appears under its final name only complete: gcc writes a temp name, then rename.
// - Warnings are errors: a C program that does not build cleanly is reported with gcc's output.
// - No fds are kept: execFileSync opens and closes its own pipes.
import { createHash } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';

const FLAGS = ['-O2', '-std=gnu11', '-Wall', '-Wextra', '-Werror'];

/** Where built programs are cached (outside the repo: CI may check out read-only). */
export const C_CACHE_DIR = join(tmpdir(), 'iommufd-broker-c-cache');

/** Compiles `source` (absolute path) if needed and returns the binary's path. */
export function buildC(source: string, extraFlags: readonly string[] = []): string {
  const text = readFileSync(source);
  const flags = [...FLAGS, ...extraFlags];
  const key = createHash('sha256').update(text).update('\0').update(flags.join(' ')).digest('hex').slice(0, 16);
  const dir = join(C_CACHE_DIR, key);
  const binary = join(dir, basename(source, '.c'));
  if (existsSync(binary)) return binary;
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const temp = `${binary}.${process.pid}.tmp`;
  try {
    execFileSync('gcc', [...flags, '-o', temp, source], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const stderr = (e as { stderr?: Buffer }).stderr?.toString() ?? String(e);
    throw new Error(`building ${source} with gcc failed:\n${stderr}`);
  }
  renameSync(temp, binary);
  return binary;
}
