// iommufd-brokerd: start-up order, sockets, signals.
//
// Invariants:
// - Start order: flags -> policy -> device -> journal restore -> sockets -> READY. Nothing is
//   served before every journaled lease is re-adopted or dropped, so the budget is exact
//   from the first call.
// - A bad flag or policy file stops the start with one line that says what to fix (exit 2);
//   nothing falls back silently (the simulated device is only ever chosen by its flag).
// - SIGTERM/SIGINT: stop accepting, finish in-flight calls, close the journal, exit 0.
//   Leases stay journaled and are re-adopted by the next start.
// - SIGHUP: reload the policy atomically; a bad file is logged and the old policy stays.
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import pino from 'pino';
import { UnixServer } from '../native/socket.ts';
import { createDevice, assertDeviceAllowed, SIMULATED } from './shell/device.ts';
import { loadPolicy, PolicyError } from './shell/config.ts';
import { LeaseJournal } from './shell/journal.ts';
import { memTotalBytes, ownCapabilities } from './shell/procfs.ts';
import { BrokerService } from './shell/service.ts';
import { VarlinkServer } from './shell/varlink-server.ts';
import { makeDispatcher } from './shell/dispatch.ts';

export const DEFAULT_SOCKET = '/run/iommufd-broker/broker.sock';
export const DEFAULT_STATE_DIR = '/var/lib/iommufd-broker';
export const DEFAULT_DEVICE = '/dev/iommu';

const USAGE = `usage: iommufd-brokerd [options]
  --socket PATH        Varlink socket to bind when not socket-activated (default ${DEFAULT_SOCKET})
  --socket-mode MODE   permissions of a socket the daemon binds itself (octal, default 0660)
  --state-dir DIR      where the lease journal lives (default ${DEFAULT_STATE_DIR})
  --config FILE        policy file, TOML or JSON (default: built-in policy, see docs/CONFIG.md)
  --device PATH        the iommufd device (default ${DEFAULT_DEVICE}), or "simulated" for tests
  --overhead SIZE      limit = VM memory + overhead (default 1G, like libvirt); overrides the file
  --budget SIZE        host-wide sum of limits (default MemTotal minus a reserve); overrides the file
  --log-level LEVEL    pino level (default info)`;

interface Flags {
  socket: string; socketMode: number; stateDir: string; config: string | undefined;
  device: string; overhead: string | undefined; budget: string | undefined; logLevel: string;
}

export function parseFlags(argv: string[]): Flags {
  const { values } = parseArgs({
    args: argv, strict: true, allowPositionals: false,
    options: {
      socket: { type: 'string' }, 'socket-mode': { type: 'string' }, 'state-dir': { type: 'string' },
      config: { type: 'string' }, device: { type: 'string' }, overhead: { type: 'string' },
      budget: { type: 'string' }, 'log-level': { type: 'string' }, help: { type: 'boolean' },
    },
  });
  if (values.help === true) { process.stdout.write(`${USAGE}\n`); process.exit(0); }
  const modeText = values['socket-mode'] ?? '0660';
  if (!/^0?[0-7]{3}$/.test(modeText)) throw new UsageError(`--socket-mode must be octal like 0660, got "${modeText}"`);
  return {
    socket: values.socket ?? DEFAULT_SOCKET, socketMode: parseInt(modeText, 8),
    stateDir: values['state-dir'] ?? DEFAULT_STATE_DIR, config: values.config,
    device: values.device ?? DEFAULT_DEVICE, overhead: values.overhead, budget: values.budget,
    logLevel: values['log-level'] ?? 'info',
  };
}

class UsageError extends Error {}

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

export async function main(argv: string[]): Promise<void> {
  let flags: Flags;
  try {
    flags = parseFlags(argv);
  } catch (e) {
    process.stderr.write(`iommufd-brokerd: ${e instanceof Error ? e.message : String(e)}\n${USAGE}\n`);
    process.exit(2);
  }
  const log = pino({ name: 'iommufd-brokerd', level: flags.logLevel });
  const loadCurrentPolicy = (): ReturnType<typeof loadPolicy> => loadPolicy({
    memTotalBytes: memTotalBytes(),
    ...(flags.config === undefined ? {} : { configPath: flags.config }),
    ...(flags.overhead === undefined ? {} : { overhead: flags.overhead }),
    ...(flags.budget === undefined ? {} : { budget: flags.budget }),
  });
  let policy: ReturnType<typeof loadPolicy>;
  try {
    assertDeviceAllowed(flags.device, process.env);
    policy = loadCurrentPolicy();
  } catch (e) {
    process.stderr.write(`iommufd-brokerd: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(2);
  }

  const device = createDevice(flags.device);
  if (flags.device === SIMULATED) {
    log.warn({ device: device.info }, 'SIMULATED DEVICE: leases get a memfd, not an iommufd. No pinned-memory accounting. Tests and demos only.');
  } else if (device.info.rlimitModeSupported !== true) {
    log.error({ device: device.info }, `device not usable: ${device.info.note}`);
  } else {
    log.info({ device: device.info }, 'device ready');
  }
  const haveSysResource = ownCapabilities().sysResource;
  if (!haveSysResource) {
    log.warn('running without CAP_SYS_RESOURCE: limits can only be lowered, and only on processes with the broker\'s own uids/gids; raises will fail with KernelRefused (EPERM)');
  }

  const { journal, leases } = LeaseJournal.open(flags.stateDir);
  const service = new BrokerService({ policy, device, journal, log, haveSysResource, version: version() });
  const restored = service.restore(leases);
  log.info({ ...restored, stateDir: flags.stateDir }, 'journal restored');

  const server = new VarlinkServer(makeDispatcher(service), log, { maxConnections: 1024, maxConnectionsPerUid: 64 });
  server.serve(UnixServer.listen(flags.socket, { mode: flags.socketMode, backlog: 128 }));
  log.info({ socket: flags.socket, budget: service.status().budget }, 'serving');

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping: finishing in-flight calls');
    void server.close().then(() => {
      service.close();
      journal.close();
      log.info('stopped; leases stay journaled for the next start');
      process.exit(0);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    try {
      service.replacePolicy(loadCurrentPolicy());
      log.info('policy reloaded');
    } catch (err) {
      log.error({ err: err instanceof PolicyError ? err.message : err }, 'policy reload rejected; the old policy stays');
    }
  });
}
