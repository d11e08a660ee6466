// Test support for the admin API: a real BrokerService (simulated device, journal in a temp
// dir) with leases on real target processes, and the AdminApi around it.
//
// Invariants:
// - Targets run under our uid through setpriv with every capability dropped (no CAP_IPC_LOCK),
//   so this broker (no CAP_SYS_RESOURCE here) may lower their RLIMIT_MEMLOCK; they print a
//   line once setpriv is done, and are killed by close().
// - fd ownership: the journal's fd belongs to the service's journal (closed by close()); each
//   target pidfd passes to the service with open(); each lease's device fd is closed at once.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { closeFd, pidfdOpen } from '../../../../native/sys.ts';
import type { Lease } from '../../../../protocol/methods.ts';
import { defaultPolicy, type Policy } from '../../../../daemon/core/policy.ts';
import { AdminApi, type AdminApiOptions } from '../../../../daemon/shell/admin/api.ts';
import { createDevice } from '../../../../daemon/shell/device.ts';
import { LeaseJournal } from '../../../../daemon/shell/journal/journal.ts';
import { Metrics } from '../../../../daemon/shell/admin/metrics.ts';
import type { ConnectionPeer } from '../../../../daemon/shell/peer.ts';
import { BrokerService } from '../../../../daemon/shell/service.ts';

export const MiB = 1024 ** 2;
export const ROOT_PEER: ConnectionPeer = { pid: process.pid, uid: 0, gid: 0, groups: [], pidfd: undefined };
export const NOBODY_PEER: ConnectionPeer = { pid: process.pid, uid: 65534, gid: 65534, groups: [], pidfd: undefined };

/** uid 0 manages; 1 MiB overhead; a 64 MiB budget. */
export function testPolicy(over: Partial<Policy> = {}): Readonly<Policy> {
  return Object.freeze({ ...defaultPolicy(64 * MiB), overheadBytes: MiB, ...over });
}

export interface Harness {
  dir: string;
  service: BrokerService;
  metrics: Metrics;
  /** Every log line, parsed. */
  logs: Record<string, unknown>[];
  api: AdminApi;
  /** Grants a lease on a fresh stripped target process. */
  lease(name: string, memoryBytes: number): Promise<{ lease: Lease; target: ChildProcess }>;
  close(): Promise<void>;
}

export interface HarnessOptions {
  policy?: Readonly<Policy>;
  /** Whom inject()ed requests come from (default ROOT_PEER); null: use the real SO_PEERCRED. */
  injectAs?: ConnectionPeer | null | (() => ConnectionPeer | undefined);
  /** What POST /v1/policy/reload does; gets the service and the harness's temp dir. */
  reloadPolicy?: (service: BrokerService, dir: string) => void;
  apiOptions?: Partial<AdminApiOptions>;
}

export async function startHarness(options: HarnessOptions = {}): Promise<Harness> {
  const dir = mkdtempSync(join(tmpdir(), 'admin-api-'));
  const logs: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => { logs.push(JSON.parse(line) as Record<string, unknown>); } });
  const { journal } = LeaseJournal.open(join(dir, 'state'));
  const service = new BrokerService({
    policy: options.policy ?? testPolicy(), device: createDevice('simulated'), journal, log, haveSysResource: false, version: '0.0.0-test',
  });
  const metrics = new Metrics();
  const targets: ChildProcess[] = [];
  const injectAs = options.injectAs === undefined ? ROOT_PEER : options.injectAs;
  const api = await AdminApi.create({
    service, metrics, log,
    reloadPolicy: () => options.reloadPolicy?.(service, dir),
    ...(injectAs === null ? {} : { identify: typeof injectAs === 'function' ? injectAs : () => injectAs }),
    ...options.apiOptions,
  });
  return {
    dir, service, metrics, logs, api,
    async lease(name, memoryBytes) {
      const target = await strippedTarget();
      targets.push(target);
      const pid = target.pid ?? -1;
      const { lease, fd } = await service.open(ROOT_PEER, { name, memoryBytes }, pidfdOpen(pid));
      closeFd(fd);
      return { lease, target };
    },
    async close() {
      await api.close();
      service.close();
      journal.close();
      for (const t of targets) {
        if (t.exitCode === null && t.signalCode === null) {
          t.kill('SIGKILL');
          await once(t, 'exit');
        }
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A `sleep` under our uid with no capabilities, once it runs. */
async function strippedTarget(): Promise<ChildProcess> {
  const child = spawn('setpriv', ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--',
    'sh', '-c', 'echo ready; exec sleep 600'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [chunk] = await once(child.stdout, 'data') as [Buffer];
  if (!chunk.toString().startsWith('ready')) throw new Error(`target said ${chunk.toString()}`);
  return child;
}

/** RLIMIT_MEMLOCK soft limit of pid in bytes, from /proc/PID/limits. */
export function memlockOf(pid: number): number {
  const line = readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n').find((l) => l.startsWith('Max locked memory'));
  const soft = (line ?? '').trim().split(/\s{2,}/)[1];
  return Number(soft);
}
