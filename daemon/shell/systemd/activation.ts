// Socket activation: adopting the listening sockets systemd passes (sd_listen_fds(3) protocol).
//
// Invariants:
// - Sockets are matched by name (LISTEN_FDNAMES), never by position: a socket unit that adds,
//   drops or reorders sockets cannot make the daemon serve the admin API on the clients' socket.
// - LISTEN_PID must equal our pid, else the variables were inherited from an ancestor that was
//   activated, and the fds are not ours: nothing is touched (and a warning says so).
// - LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are removed from the environment object we were
//   given in every case, so no child we spawn can mistake them for its own.
// - Every passed socket (fds 3 .. 3+LISTEN_FDS-1) ends in exactly one place: returned to the
//   caller (CLOEXEC set, verified AF_UNIX SOCK_STREAM), or closed here (unknown name: a
//   returned warning; any error: all of them are closed before ActivationError is thrown).
// - An fd in that range that is not a socket is never closed: LISTEN_FDS may overstate what was
//   passed, and the fd may then be one of Node's own (epoll, eventfd). It is reported instead.
// - The fd store: fds systemd kept for us (FDSTORE=1, FDNAME=lease-<id>, see lease-fds.ts) come
//   back in the same range under those names, of any file type (iommufds). Each is returned in
//   `stored` (CLOEXEC set), or closed here, exactly once (even one that is a socket): a second
//   fd under the same name, or every stored fd when ActivationError is thrown.
// - fd ownership: until this function returns, the passed fds are owned by it; afterwards each
//   returned fd is owned by the caller (who hands a socket to the server that listens on it,
//   and the stored fds to BrokerService.restore).
import { closeFdQuietly, isUnixStreamSocket, setCloexec, SysError } from '../../../native/sys.ts';
import { leaseIdOfStoreName } from '../lease-fds.ts';

/** The FileDescriptorName= of each socket unit (systemd/iommufd-broker*.socket): the contract. */
export const BROKER_SOCKET_NAME = 'broker';
export const ADMIN_SOCKET_NAME = 'admin';
export const SOCKET_NAMES: readonly string[] = [BROKER_SOCKET_NAME, ADMIN_SOCKET_NAME];

/** sd_listen_fds(3): the first passed fd. */
export const LISTEN_FDS_START = 3;
/** More sockets than any sane unit passes; a larger LISTEN_FDS is treated as garbage. */
const MAX_LISTEN_FDS = 64;

export type ActivationProblem =
  | 'MalformedEnvironment' // LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES do not parse, or disagree
  | 'NotAUnixStreamSocket' // a known name refers to something else (or to no open fd)
  | 'DuplicateName' // two passed fds carry the same known name
  | 'CloexecFailed';

/** The passed sockets cannot be used as they are; the message says which fd, name and why. */
export class ActivationError extends Error {
  readonly problem: ActivationProblem;
  constructor(problem: ActivationProblem, message: string) {
    super(message);
    this.name = 'ActivationError';
    this.problem = problem;
  }
}

export interface ActivatedSockets {
  /** name -> listening fd (AF_UNIX, SOCK_STREAM, CLOEXEC). Owned by the caller. */
  fds: Map<string, number>;
  /** fd store name (lease-<id>) -> the fd systemd kept for us (CLOEXEC). Owned by the caller. */
  stored: Map<string, number>;
  /** One line per thing that was ignored or closed, for the daemon's log. */
  warnings: string[];
}

const VARIABLES = ['LISTEN_PID', 'LISTEN_FDS', 'LISTEN_FDNAMES'] as const;

/**
 * Takes the sockets systemd passed for the names in `knownNames` (e.g. ['broker', 'admin']).
 * `env` is normally process.env; the three LISTEN_* variables are deleted from it.
 * Returns an empty map when the process was not socket-activated.
 * Throws ActivationError (having closed every passed fd) when the passed sockets are unusable.
 */
export function listenFdsFromEnv(env: NodeJS.ProcessEnv, ownPid: number, knownNames: readonly string[]): ActivatedSockets {
  const pidText = env['LISTEN_PID'];
  const countText = env['LISTEN_FDS'];
  const namesText = env['LISTEN_FDNAMES'];
  for (const v of VARIABLES) delete env[v];

  const result: ActivatedSockets = { fds: new Map(), stored: new Map(), warnings: [] };
  if (pidText === undefined || countText === undefined) return result;

  const pid = parseDecimal(pidText);
  if (pid === undefined || pid < 1) {
    throw new ActivationError('MalformedEnvironment', `LISTEN_PID="${pidText}" is not a process id; no passed socket was used`);
  }
  if (pid !== ownPid) {
    result.warnings.push(`LISTEN_PID=${pid} is not this process (${ownPid}): the LISTEN_FDS sockets were meant for another process and were left alone`);
    return result;
  }
  const count = parseDecimal(countText);
  if (count === undefined || count > MAX_LISTEN_FDS) {
    throw new ActivationError('MalformedEnvironment', `LISTEN_FDS="${countText}" is not a count of 0..${MAX_LISTEN_FDS}; no passed socket was used`);
  }
  const passed = Array.from({ length: count }, (_, i) => LISTEN_FDS_START + i);

  // Without LISTEN_FDNAMES every fd is named "unknown" (as sd_listen_fds_with_names does).
  const names = namesText === undefined || (namesText === '' && count === 0) ? passed.map(() => 'unknown') : namesText.split(':');
  if (names.length !== count) {
    closeSockets(passed);
    throw new ActivationError('MalformedEnvironment',
      `LISTEN_FDNAMES="${namesText ?? ''}" names ${names.length} sockets but LISTEN_FDS=${count}; all passed sockets were closed`);
  }

  const problems: Array<{ problem: ActivationProblem; text: string }> = [];
  const keep = new Map<string, number>();
  const stored = new Map<string, number>();
  const unknown: number[] = [];
  passed.forEach((fd, i) => {
    const name = names[i] ?? 'unknown';
    if (leaseIdOfStoreName(name) !== undefined) {
      const cloexec = stored.has(name) ? 'a second fd under this name' : errnoOf(() => setCloexec(fd, true));
      if (cloexec === undefined) stored.set(name, fd);
      else {
        closeFdQuietly(fd);
        result.warnings.push(`stored fd ${fd} ("${name}") was closed: ${cloexec}`);
      }
      return;
    }
    if (!knownNames.includes(name)) {
      unknown.push(fd);
      result.warnings.push(`passed fd ${fd} is named "${name}", not one of ${knownNames.join(', ')}: ${isSocket(fd) ? 'closed' : 'not a socket, left alone'}`);
      return;
    }
    const kind = unixStreamKind(fd);
    if (kind !== true) {
      const why = kind === false ? 'is a socket but not AF_UNIX SOCK_STREAM' : `cannot be inspected (${kind})`;
      problems.push({ problem: 'NotAUnixStreamSocket', text: `passed fd ${fd} ("${name}") ${why}` });
      return;
    }
    if (keep.has(name)) {
      problems.push({ problem: 'DuplicateName', text: `passed fds ${keep.get(name)} and ${fd} are both named "${name}": which one to serve is ambiguous` });
      return;
    }
    const cloexec = errnoOf(() => setCloexec(fd, true));
    if (cloexec !== undefined) {
      problems.push({ problem: 'CloexecFailed', text: `passed fd ${fd} ("${name}"): setting FD_CLOEXEC failed (${cloexec})` });
      return;
    }
    keep.set(name, fd);
  });

  const first = problems[0];
  if (first !== undefined) {
    // A stored fd may be a socket too: closed once, as a stored fd, never again as a passed socket.
    const storedFds = new Set(stored.values());
    closeSockets(passed.filter((fd) => !storedFds.has(fd)));
    for (const fd of storedFds) closeFdQuietly(fd);
    throw new ActivationError(first.problem, `${problems.map((p) => p.text).join('; ')}; all passed sockets were closed`);
  }
  closeSockets(unknown);
  result.fds = keep;
  result.stored = stored;
  return result;
}

/** A plain non-negative decimal integer, as systemd writes it (no sign, no spaces, no hex). */
function parseDecimal(text: string): number | undefined {
  if (!/^[0-9]{1,9}$/.test(text)) return undefined;
  return Number(text);
}

/** The errno name `call` failed with (a SysError), or undefined if it succeeded. */
function errnoOf(call: () => void): string | undefined {
  try {
    call();
    return undefined;
  } catch (error) {
    if (error instanceof SysError) return error.code;
    throw error;
  }
}

/** true: an AF_UNIX stream socket; false: another kind of socket; a string: the errno naming why fd cannot be inspected. */
function unixStreamKind(fd: number): boolean | string {
  try {
    return isUnixStreamSocket(fd);
  } catch (error) {
    if (error instanceof SysError) return error.code;
    throw error;
  }
}

/** Whether fd is an open socket of any kind. */
function isSocket(fd: number): boolean {
  return typeof unixStreamKind(fd) === 'boolean';
}

/** close() each fd that is a socket, once (see the invariant on non-sockets); nothing to report. */
function closeSockets(fds: readonly number[]): void {
  for (const fd of fds) if (isSocket(fd)) closeFdQuietly(fd);
}
