// What the host lab's checks read from the system they run in (the lab VM: systemd 257 as
// PID 1, the broker installed from its .deb): commands, systemd unit properties, /proc, the
// broker over Varlink (the client library) as root, who is a manager in the packaged policy.
//
// Invariants:
// - Nothing here decides a verdict: it returns what it read; the suite asserts.
// - Every wait is bounded (waitFor's deadline, the client's timeouts); a broker connection is
//   closed before its helper returns. Timeouts are generous: everything runs under TCG.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { BrokerClient } from '../../../client/index.ts';

export const SERVICE = 'iommufd-broker.service';
export const POLICY = '/etc/iommufd-broker/policy.toml';
export const MiB = 1024 ** 2;
export const CALL = { timeoutMs: 120_000 };

/** Runs a command to its end; never throws on a non-zero exit. */
export function sh(cmd: string, args: readonly string[], input?: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 300_000, ...(input === undefined ? {} : { input }) });
  if (r.error !== undefined) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `systemctl show -p P1 -p P2 UNIT` as a record. */
export function unitProps(unit: string, ...props: string[]): Record<string, string> {
  const out = execFileSync('systemctl', ['show', ...props.flatMap((p) => ['-p', p]), unit], { encoding: 'utf8' });
  return Object.fromEntries(out.split('\n').filter(Boolean).map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
}

export function mainPid(): number {
  return Number(unitProps(SERVICE, 'MainPID').MainPID);
}

/** One field of /proc/PID/status (e.g. VmPin -> kB as a number, CapEff -> the hex text). */
export function procStatus(pid: number): Record<string, string> {
  return Object.fromEntries(readFileSync(`/proc/${pid}/status`, 'utf8').split('\n').filter(Boolean)
    .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]));
}

export function kB(pid: number, field: 'VmPin' | 'VmLck'): number {
  const v = procStatus(pid)[field];
  if (v === undefined) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(v.replace(/ kB$/, ''));
}

/** RLIMIT_MEMLOCK of a process, soft and hard, in bytes (-1 for unlimited). */
export function memlock(pid: number): { soft: number; hard: number } {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max locked memory'));
  const f = line?.slice('Max locked memory'.length).trim().split(/\s+/);
  if (f === undefined || f.length < 2) throw new Error(`no memlock line in /proc/${pid}/limits`);
  const n = (s: string | undefined): number => (s === 'unlimited' ? -1 : Number(s));
  return { soft: n(f[0]), hard: n(f[1]) };
}

export async function waitFor<T>(what: string, seconds: number, probe: () => T | undefined | false | Promise<T | undefined | false>): Promise<T> {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${seconds} s waiting for ${what}`);
    await sleep(500);
  }
}

/** One call on a fresh connection to the broker's socket (as root: a manager). */
export async function broker<T>(fn: (c: BrokerClient) => Promise<T>): Promise<T> {
  const c = await BrokerClient.connect(undefined, CALL);
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}

/** The overhead the broker applies now (the packaged policy's, unless a check changed it). */
export async function overheadBytes(): Promise<number> {
  return (await broker((c) => c.status())).overheadBytes;
}

/**
 * Replaces [limits] overhead in the policy, reloads, and waits until Status shows it. A Status
 * call first starts the socket-activated service if nothing has yet (reload needs it running).
 * Returns what puts the policy's overhead line back as it was (for t.after): the checks never
 * assume which overhead the package ships.
 */
export async function setOverhead(overhead: string, bytes: number): Promise<() => Promise<void>> {
  const before = await overheadBytes();
  const text = readFileSync(POLICY, 'utf8');
  const line = /^overhead\s*=.*$/m.exec(text)?.[0];
  if (line === undefined) throw new Error(`no overhead line in ${POLICY}`);
  await applyOverhead(text.replace(line, `overhead = "${overhead}"`), overhead, bytes);
  return async () => applyOverhead(readFileSync(POLICY, 'utf8').replace(/^overhead\s*=.*$/m, () => line), line, before);
}

async function applyOverhead(policy: string, what: string, bytes: number): Promise<void> {
  writeFileSync(POLICY, policy);
  const r = sh('systemctl', ['reload', SERVICE]);
  if (r.status !== 0) throw new Error(`systemctl reload: ${r.stderr}`);
  await waitFor(`the broker to report overhead ${what} after systemctl reload`, 120, async () => (await overheadBytes()) === bytes);
}

/** Which lab kernel this boot runs (test/hostlab/run's iommufd_hostlab.kernel=): the patched one has the per-fd option. */
export function labKernel(): 'unpatched' | 'patched' {
  const k = /(?:^|\s)iommufd_hostlab\.kernel=(\S+)/.exec(readFileSync('/proc/cmdline', 'utf8'))?.[1];
  if (k !== 'unpatched' && k !== 'patched') throw new Error(`iommufd_hostlab.kernel=${k ?? '(none)'} on the kernel command line`);
  return k;
}

/** The broker's journal since the unit's first start, as its JSON lines (pino). */
export function journal(): Array<Record<string, unknown>> {
  const out = execFileSync('journalctl', ['-u', SERVICE, '-o', 'cat', '--no-pager'], { encoding: 'utf8', maxBuffer: 64 * MiB });
  return out.split('\n').flatMap((l) => {
    if (!l.startsWith('{')) return [];
    try {
      return [JSON.parse(l) as Record<string, unknown>];
    } catch {
      return [];
    }
  });
}
