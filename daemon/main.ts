// iommufd-brokerd: start-up order, sockets, signals.
//
// Invariants:
// - Start order: flags -> policy -> device (its probe chooses the backend, logged with why) ->
//   journal restore (taking back the lease FDs systemd's fd store kept) -> sockets -> READY=1. Nothing is
//   served before every journaled lease is re-adopted or dropped, so the budget is exact from
//   the first call, and systemd hears READY=1 only then.
// - A bad flag, policy file or set of passed sockets, an unusable, locked or corrupt state
//   dir or journal, a journal the ledger refuses, or a socket path that cannot be bound stops
//   the start with one line on stderr that says what to fix (exit 2), never a stack trace (the
//   details go to the log); nothing falls back silently (the simulated device is only ever
//   chosen by its flag, and is refused under systemd).
// - After the start the daemon exits non-zero only when BrokerService says it cannot vouch for
//   its state (deps.fatal, exit 1): a failing disk degrades the journal instead (shell/journal/journal.ts).
// - Sockets come from systemd by name (LISTEN_FDNAMES) when activated; otherwise the daemon
//   binds its own paths with their final permissions from the start.
// - SIGTERM/SIGINT: STOPPING=1, stop accepting, finish in-flight calls, close the journal,
//   exit 0. Leases stay journaled and are re-adopted by the next start.
// - SIGHUP: RELOADING=1, reload the policy atomically (a bad file is logged and the old policy
//   stays), READY=1.
import { readFileSync } from 'node:fs';
import pino, { type Logger } from 'pino';
import { UnixServer } from '../native/socket.ts';
import { formatSizeApprox } from '../shared/sizes.ts';
import { ADMIN_SOCKET_MODE, LISTEN_BACKLOG, parseFlags, USAGE, type Flags } from './flags.ts';
import { ADMIN_SOCKET_NAME, BROKER_SOCKET_NAME, listenFdsFromEnv, SOCKET_NAMES } from './shell/systemd/activation.ts';
import { createDevice, assertDeviceAllowed, SIMULATED } from './shell/device.ts';
import { HOST_VFIO_ROOTS, vfioRootsUnder } from './shell/vfio/resolve.ts';
import { loadPolicy } from './shell/config.ts';
import { LeaseJournal } from './shell/journal/journal.ts';
import { Notifier } from './shell/systemd/notify.ts';
import { fdStoreWarning } from './shell/systemd/fd-store-check.ts';
import { memTotalBytes, ownCapabilities } from './shell/target/procfs.ts';
import { BrokerService } from './shell/service.ts';
import { VarlinkServer } from './shell/varlink/server.ts';
import { makeDispatcher } from './shell/varlink/dispatch.ts';
import { isManager } from './core/policy.ts';
import type { AdminApi } from './shell/admin/api.ts';
import { Metrics, withMetrics } from './shell/admin/metrics.ts';

function version(): string {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

function fail(message: string): never {
  process.stderr.write(`iommufd-brokerd: ${message}\n`);
  process.exit(2);
}

/** A start-up step failed: the details to the log, one line to stderr, exit 2. */
function startFailed(log: Logger, e: unknown, prefix = ''): never {
  log.error({ err: e }, 'start-up failed');
  fail(`${prefix}${e instanceof Error ? e.message : String(e)}`.replace(/\s*\n\s*/g, ' '));
}

function policyLoader(flags: Flags): () => ReturnType<typeof loadPolicy> {
  return () => loadPolicy({
    memTotalBytes: memTotalBytes(),
    ...(flags.config === undefined ? {} : { configPath: flags.config }),
    ...(flags.overhead === undefined ? {} : { overhead: flags.overhead }),
    ...(flags.budget === undefined ? {} : { budget: flags.budget }),
  });
}

/** One line for STATUS= and humans: leases and budget. */
function summary(service: BrokerService): string {
  const s = service.status();
  return `${s.leases} lease${s.leases === 1 ? '' : 's'}, ${formatSizeApprox(s.budget.usedBytes)} of `
    + `${formatSizeApprox(s.budget.totalBytes)} budget used, device ${s.device.kind}`;
}

function announceDevice(log: Logger, device: ReturnType<typeof createDevice>): void {
  log.info({ backend: device.backend }, `backend ${device.backend.kind}: ${device.backend.reason}`);
  if (device.info.kind === SIMULATED) {
    log.warn({ device: device.info }, 'SIMULATED DEVICE: leases get a memfd, not an iommufd. No pinned-memory accounting. Tests and demos only.');
  } else if (device.info.rlimitModeSupported !== true) {
    log.error({ device: device.info }, `device not usable: ${device.info.note}`);
  } else {
    log.info({ device: device.info }, 'device ready');
  }
}

export async function main(argv: string[]): Promise<void> {
  let flags: Readonly<Flags>;
  try {
    flags = parseFlags(argv);
  } catch (e) {
    fail(`${e instanceof Error ? e.message : String(e)}\n${USAGE}`);
  }
  if (flags.help) { process.stdout.write(`${USAGE}\n`); return; }
  const log = pino({ name: 'iommufd-brokerd', level: flags.logLevel });
  const loadCurrentPolicy = policyLoader(flags);
  let policy: ReturnType<typeof loadPolicy>;
  try {
    assertDeviceAllowed(flags.device, process.env); // before the LISTEN_*/NOTIFY_* variables are consumed
    policy = loadCurrentPolicy();
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e));
  }
  const notifier = Notifier.fromEnv(process.env, process.pid, log);
  let activated: ReturnType<typeof listenFdsFromEnv>;
  try {
    activated = listenFdsFromEnv(process.env, process.pid, SOCKET_NAMES);
  } catch (e) {
    fail(e instanceof Error ? e.message : String(e));
  }
  for (const w of activated.warnings) log.warn(w);

  const device = createDevice(flags.device);
  announceDevice(log, device);
  const fdStoreProblem = fdStoreWarning({ keepsFds: device.fdLimits !== undefined, supervised: notifier.enabled, fdStoreMax: notifier.fdStoreMax });
  if (fdStoreProblem !== undefined) log.warn(`fd store: ${fdStoreProblem}`);
  const vfio = flags.vfioRoot === undefined ? HOST_VFIO_ROOTS : vfioRootsUnder(flags.vfioRoot);
  if (flags.vfioRoot !== undefined) {
    log.warn({ vfio }, 'SIMULATED VFIO DEVICES: devices are looked up in a fake tree, not the host\'s sysfs and /dev. Tests only.');
  }
  const haveSysResource = ownCapabilities().sysResource;
  if (!haveSysResource) {
    log.warn('running without CAP_SYS_RESOURCE: limits can only be lowered, and only on processes with the broker\'s own uids/gids; raises will fail with KernelRefused (EPERM)');
  }

  let opened: ReturnType<typeof LeaseJournal.open>;
  let restored: ReturnType<BrokerService['restore']>;
  let service: BrokerService;
  try {
    opened = LeaseJournal.open(flags.stateDir, { log });
    const { journal } = opened;
    // The notifier hears about every lease change, so systemctl status shows the current summary.
    service = new BrokerService({
      policy, device, journal, log, haveSysResource, version: version(), vfio,
      // Kept lease FDs go to systemd's fd store, so a restart can still resize their leases.
      ...(notifier.enabled ? { fdStore: notifier } : {}),
      onLeasesChanged: () => notifier.status(summary(service)),
      fatal: (err, why) => {
        log.fatal({ err }, `giving up: ${why}; exiting for a restart that replays the journal`);
        process.exit(1);
      },
    });
    restored = service.restore(opened.leases, opened.earlierBoot, activated.stored);
  } catch (e) {
    startFailed(log, e);
  }
  const { journal } = opened;
  // The dropped leases' releases, before anything is served. If the disk fails here the journal
  // is degraded and recovers by itself, as at any other time.
  await journal.flush().catch((err: unknown) => log.error({ err }, 'journal: the releases of dropped leases are not durable yet'));
  log.info({ ...restored, stateDir: flags.stateDir }, 'journal restored');

  const reloadPolicy = (): void => service.replacePolicy(loadCurrentPolicy());
  const metrics = new Metrics();
  const { maxConnections, maxConnectionsPerUid, reservedConnections, idleTimeoutMs, frameTimeoutMs } = flags;
  const { maxPendingClosesPerUid, maxPendingCloses } = flags;
  const server = new VarlinkServer(withMetrics(makeDispatcher(service), metrics), log,
    { maxConnections, maxConnectionsPerUid, reservedConnections, idleTimeoutMs, frameTimeoutMs, maxPendingClosesPerUid, maxPendingCloses },
    {
      refused: (r) => metrics.observeRefusal(r.stage, r.reason),
      // The policy in force now (SIGHUP may change it), with the identity the kernel gave at accept.
      mayUseReserve: (peer) => peer.uid === 0 || isManager(service.policy, peer),
    });
  const brokerFd = activated.fds.get(BROKER_SOCKET_NAME);
  try {
    server.serve(brokerFd !== undefined ? UnixServer.adopt(brokerFd)
      : UnixServer.listen(flags.socket, { mode: flags.socketMode, backlog: LISTEN_BACKLOG }));
  } catch (e) {
    startFailed(log, e, `socket ${flags.socket}: `);
  }
  const adminFd = activated.fds.get(ADMIN_SOCKET_NAME);
  const adminWhere = adminFd !== undefined ? { fd: adminFd }
    : flags.adminSocket !== undefined ? { path: flags.adminSocket, mode: ADMIN_SOCKET_MODE } : undefined;
  let admin: AdminApi | undefined;
  if (adminWhere !== undefined) {
    // Loaded only when there is an admin socket: fastify is most of what a start evaluates.
    const { AdminApi } = await import('./shell/admin/api.ts');
    admin = await AdminApi.create({ service, metrics, log, reloadPolicy });
    try {
      await admin.listen(adminWhere);
    } catch (e) {
      fail(`admin socket: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  log.info({ socket: brokerFd !== undefined ? `systemd fd ${brokerFd}` : flags.socket, budget: service.status().budget }, 'serving');
  notifier.ready(summary(service));
  notifier.startWatchdog();

  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    notifier.stopping('finishing in-flight calls');
    notifier.stopWatchdog();
    log.info({ signal }, 'stopping: finishing in-flight calls');
    void Promise.all([server.close(), admin?.close()]).then(async () => {
      service.close();
      await journal.flush().catch((err: unknown) => log.error({ err }, 'journal: the last records may not be on disk'));
      journal.close();
      log.info('stopped; leases stay journaled for the next start');
      process.exit(0);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGHUP', () => {
    notifier.reloading('reloading the policy');
    try {
      reloadPolicy();
      log.info('policy reloaded');
      notifier.ready(summary(service));
    } catch (err) {
      const why = err instanceof Error ? err.message : String(err);
      log.error({ err: why }, 'policy reload rejected; the old policy stays');
      notifier.ready(`policy reload rejected, old policy kept: ${why}`);
    }
  });
}
