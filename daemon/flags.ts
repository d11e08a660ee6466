// iommufd-brokerd's command line: parsed once, checked, then frozen; with it, the defaults and
// fixed numbers of the sockets the daemon binds (main.ts writes none of them inline).
//
// Invariants:
// - Unknown flags and positionals are errors (UsageError), never ignored.
// - --vfio-root (a fake sysfs and /dev tree for VFIO devices) is accepted only with
//   --device simulated, which is itself refused under systemd (shell/device.ts).
// - Sizes (--overhead/--budget) stay text here; config.ts parses them with the policy file so
//   one place says what a size may look like.
import { parseArgs } from 'node:util';
import { DEFAULT_SOCKET } from '../protocol/address.ts';
import { UsageError } from '../shared/usage-error.ts';

export const DEFAULT_STATE_DIR = '/var/lib/iommufd-broker';
export const DEFAULT_DEVICE = '/dev/iommu';
/** Varlink connections at once, all peers together (each costs two fds: socket and peer pidfd). */
export const DEFAULT_MAX_CONNECTIONS = 1024;
/** Varlink connections one uid may hold at once. */
export const DEFAULT_MAX_CONNECTIONS_PER_UID = 64;
/** Of the connections, how many are kept for managers and root (others share the rest). */
export const DEFAULT_RESERVED_CONNECTIONS = 64;
/** Seconds a message may take from its first byte to its NUL. */
export const DEFAULT_FRAME_TIMEOUT_SECONDS = 10;
/** Seconds a connection may stay silent with nothing in flight. */
export const DEFAULT_IDLE_TIMEOUT_SECONDS = 300;
/** listen(2) backlog of the Varlink socket the daemon binds itself (systemd's Backlog= otherwise). */
export const LISTEN_BACKLOG = 128;
/** Mode of the admin API socket the daemon binds itself (--admin-socket): its owner only. */
export const ADMIN_SOCKET_MODE = 0o600;

export const USAGE = `usage: iommufd-brokerd [options]
  --socket PATH        Varlink socket to bind when systemd passes none (default ${DEFAULT_SOCKET})
  --admin-socket PATH  admin HTTP API socket to bind when systemd passes none (default: no admin API)
  --socket-mode MODE   permissions of sockets the daemon binds itself (octal, default 0660)
  --state-dir DIR      where the lease journal lives (default ${DEFAULT_STATE_DIR})
  --config FILE        policy file, TOML or JSON (default: built-in policy, see docs/CONFIG.md)
  --device PATH        the iommufd device (default ${DEFAULT_DEVICE}), or "simulated" for tests
  --vfio-root DIR      only with --device simulated: look VFIO devices up in DIR/sys/bus/pci/devices
                       and DIR/dev/vfio/devices (a test's fake tree) instead of the host's
  --overhead SIZE      limit = VM memory + overhead (default 1G, like libvirt); overrides the file
  --budget SIZE        host-wide sum of limits (default MemTotal minus a reserve); overrides the file
  --idle-timeout SECS  close a client connection idle this long with nothing in flight (default ${DEFAULT_IDLE_TIMEOUT_SECONDS}, 0 = never)
  --frame-timeout SECS close a connection whose message is still unfinished this long after its
                       first byte, however slowly bytes keep coming (default ${DEFAULT_FRAME_TIMEOUT_SECONDS}, 0 = never)
  --max-connections N  Varlink connections at once, all clients together (default ${DEFAULT_MAX_CONNECTIONS})
  --max-connections-per-uid N
                       Varlink connections one uid may hold (default ${DEFAULT_MAX_CONNECTIONS_PER_UID})
  --reserved-connections N
                       of --max-connections, how many only managers and root may use: all other
                       clients together get at most max - reserved (default ${DEFAULT_RESERVED_CONNECTIONS})
  --log-level LEVEL    pino level: fatal error warn info debug trace (default info)
  --help               this text`;

export { UsageError };

export interface Flags {
  readonly socket: string;
  readonly adminSocket: string | undefined;
  readonly socketMode: number;
  readonly stateDir: string;
  readonly config: string | undefined;
  readonly device: string;
  /** The simulated world's VFIO tree (undefined: the host's sysfs and /dev). */
  readonly vfioRoot: string | undefined;
  readonly overhead: string | undefined;
  readonly budget: string | undefined;
  readonly logLevel: string;
  readonly idleTimeoutMs: number;
  readonly frameTimeoutMs: number;
  readonly maxConnections: number;
  readonly maxConnectionsPerUid: number;
  readonly reservedConnections: number;
  readonly help: boolean;
}

const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace'];

export function parseFlags(argv: readonly string[]): Readonly<Flags> {
  let values;
  try {
    ({ values } = parseArgs({
      args: [...argv], strict: true, allowPositionals: false,
      options: {
        socket: { type: 'string' }, 'admin-socket': { type: 'string' }, 'socket-mode': { type: 'string' },
        'state-dir': { type: 'string' }, config: { type: 'string' }, device: { type: 'string' }, 'vfio-root': { type: 'string' },
        overhead: { type: 'string' }, budget: { type: 'string' }, 'log-level': { type: 'string' },
        'idle-timeout': { type: 'string' }, 'frame-timeout': { type: 'string' },
        'max-connections': { type: 'string' }, 'max-connections-per-uid': { type: 'string' },
        'reserved-connections': { type: 'string' },
        help: { type: 'boolean' },
      },
    }));
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : String(e));
  }
  const modeText = values['socket-mode'] ?? '0660';
  if (!/^0?[0-7]{3}$/.test(modeText)) throw new UsageError(`--socket-mode must be octal like 0660, got "${modeText}"`);
  const logLevel = values['log-level'] ?? 'info';
  if (!LOG_LEVELS.includes(logLevel)) throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(', ')}, got "${logLevel}"`);
  const idleTimeoutMs = durationMs('--idle-timeout', values['idle-timeout'] ?? String(DEFAULT_IDLE_TIMEOUT_SECONDS));
  const frameTimeoutMs = durationMs('--frame-timeout', values['frame-timeout'] ?? String(DEFAULT_FRAME_TIMEOUT_SECONDS));
  const maxConnections = count('--max-connections', values['max-connections'], DEFAULT_MAX_CONNECTIONS, 1);
  const maxConnectionsPerUid = count('--max-connections-per-uid', values['max-connections-per-uid'], DEFAULT_MAX_CONNECTIONS_PER_UID, 1);
  const reservedConnections = count('--reserved-connections', values['reserved-connections'], DEFAULT_RESERVED_CONNECTIONS, 0);
  if (reservedConnections >= maxConnections) {
    throw new UsageError(`--reserved-connections (${reservedConnections}) must be less than --max-connections (${maxConnections}), or no client but a manager could connect`);
  }
  const device = values.device ?? DEFAULT_DEVICE;
  const vfioRoot = values['vfio-root'];
  if (vfioRoot !== undefined && device !== 'simulated') {
    throw new UsageError('--vfio-root is for tests only and needs --device simulated: a real broker opens VFIO devices only through the host\'s sysfs and /dev');
  }
  return Object.freeze({
    socket: values.socket ?? DEFAULT_SOCKET,
    adminSocket: values['admin-socket'],
    socketMode: parseInt(modeText, 8),
    stateDir: values['state-dir'] ?? DEFAULT_STATE_DIR,
    config: values.config,
    device,
    vfioRoot,
    overhead: values.overhead,
    budget: values.budget,
    logLevel,
    idleTimeoutMs,
    frameTimeoutMs,
    maxConnections,
    maxConnectionsPerUid,
    reservedConnections,
    help: values.help === true,
  });
}

/** Seconds ("300", "1.5") or milliseconds ("250ms") as whole milliseconds. */
function durationMs(flag: string, text: string): number {
  const match = /^(\d+(?:\.\d+)?)(s|ms)?$/.exec(text);
  if (match?.[1] === undefined) throw new UsageError(`${flag} takes seconds like 300, 1.5 or 250ms, got "${text}"`);
  return Math.round(Number(match[1]) * (match[2] === 'ms' ? 1 : 1000));
}

/** A whole number >= min, or the default when the flag is absent. */
function count(flag: string, text: string | undefined, fallback: number, min: number): number {
  if (text === undefined) return fallback;
  const n = /^\d{1,9}$/.test(text) ? Number(text) : NaN;
  if (!(n >= min)) throw new UsageError(`${flag} takes a whole number >= ${min}, got "${text}"`);
  return n;
}
