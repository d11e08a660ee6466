// iommufd-brokerd's command line: parsed once, checked, then frozen.
//
// Invariants:
// - Unknown flags and positionals are errors (UsageError), never ignored.
// - Sizes (--overhead/--budget) stay text here; config.ts parses them with the policy file so
//   one place says what a size may look like.
import { parseArgs } from 'node:util';

export const DEFAULT_SOCKET = '/run/iommufd-broker/broker.sock';
export const DEFAULT_STATE_DIR = '/var/lib/iommufd-broker';
export const DEFAULT_DEVICE = '/dev/iommu';

export const USAGE = `usage: iommufd-brokerd [options]
  --socket PATH        Varlink socket to bind when systemd passes none (default ${DEFAULT_SOCKET})
  --admin-socket PATH  admin HTTP API socket to bind when systemd passes none (default: no admin API)
  --socket-mode MODE   permissions of sockets the daemon binds itself (octal, default 0660)
  --state-dir DIR      where the lease journal lives (default ${DEFAULT_STATE_DIR})
  --config FILE        policy file, TOML or JSON (default: built-in policy, see docs/CONFIG.md)
  --device PATH        the iommufd device (default ${DEFAULT_DEVICE}), or "simulated" for tests
  --overhead SIZE      limit = VM memory + overhead (default 1G, like libvirt); overrides the file
  --budget SIZE        host-wide sum of limits (default MemTotal minus a reserve); overrides the file
  --idle-timeout SECS  close a client connection idle this long with nothing in flight (default 300, 0 = never)
  --log-level LEVEL    pino level: fatal error warn info debug trace (default info)
  --help               this text`;

export class UsageError extends Error {
  override name = 'UsageError';
}

export interface Flags {
  readonly socket: string;
  readonly adminSocket: string | undefined;
  readonly socketMode: number;
  readonly stateDir: string;
  readonly config: string | undefined;
  readonly device: string;
  readonly overhead: string | undefined;
  readonly budget: string | undefined;
  readonly logLevel: string;
  readonly idleTimeoutMs: number;
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
        'state-dir': { type: 'string' }, config: { type: 'string' }, device: { type: 'string' },
        overhead: { type: 'string' }, budget: { type: 'string' }, 'log-level': { type: 'string' },
        'idle-timeout': { type: 'string' },
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
  const idleText = values['idle-timeout'] ?? '300';
  const idleMatch = /^(\d+(?:\.\d+)?)(s|ms)?$/.exec(idleText);
  if (idleMatch?.[1] === undefined) throw new UsageError(`--idle-timeout takes seconds like 300, 1.5 or 250ms, got "${idleText}"`);
  const idleTimeoutMs = Math.round(Number(idleMatch[1]) * (idleMatch[2] === 'ms' ? 1 : 1000));
  return Object.freeze({
    socket: values.socket ?? DEFAULT_SOCKET,
    adminSocket: values['admin-socket'],
    socketMode: parseInt(modeText, 8),
    stateDir: values['state-dir'] ?? DEFAULT_STATE_DIR,
    config: values.config,
    device: values.device ?? DEFAULT_DEVICE,
    overhead: values.overhead,
    budget: values.budget,
    logLevel,
    idleTimeoutMs,
    help: values.help === true,
  });
}
