// What a program exec'd by `iommufdctl exec` inherits from this Node process, made to look as
// if a shell had started it: stdio blocking and inheritable, default signal dispositions, and
// only the fds meant for it.
//
// Invariants (each one a Node behaviour observed on Node 20 and undone here):
// - Node marks every fd it inherited close-on-exec at start-up (uv_disable_stdio_inheritance),
//   stdin/stdout/stderr included: CLOEXEC is cleared on 0-2 (a closed one stays closed) and on
//   the --keep-fd fds, and on nothing else. The iommufd FD is cleared by the caller.
// - A stdio pipe or tty that Node initialised is O_NONBLOCK (tsx's register() reads
//   process.stdout.isTTY, which initialises stdout); a program that does not expect it loses
//   output on EAGAIN. Any of 0-2 found O_NONBLOCK is switched back to blocking through its
//   stream's handle (the only fcntl(F_SETFL) Node offers).
// - Node ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across execve, a caught
//   one is reset to its default. Installing no-op listeners makes them caught, so the program
//   starts with the defaults.
// - Called only on the way to execve: it changes this process's own state for good.
import { readFileSync } from 'node:fs';
import { fstatFd, setCloexec, SysError } from '../native/sys.ts';
import { UsageError } from './args.ts';

const O_NONBLOCK = 0o4000;
const STDIO = [0, 1, 2] as const;

/** An fd's open-file flags from /proc/self/fdinfo, or undefined if the fd is not open. */
export function fdFlags(fd: number): number | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8');
  } catch {
    return undefined;
  }
  const match = /^flags:\s*([0-7]+)$/m.exec(text);
  return match?.[1] === undefined ? undefined : parseInt(match[1], 8);
}

/** Refuses a --keep-fd that is not open here, before any lease is made. */
export function checkKeptFds(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      fstatFd(fd);
    } catch (error) {
      if (error instanceof SysError && error.code === 'EBADF') throw new UsageError(`--keep-fd ${fd}: iommufdctl has no open fd ${fd}`, 'exec');
      throw error;
    }
  }
}

interface BlockingHandle { setBlocking(blocking: boolean): number }

function blockingHandle(stream: unknown): BlockingHandle | undefined {
  const handle: unknown = typeof stream === 'object' && stream !== null ? (stream as { _handle?: unknown })._handle : undefined;
  if (typeof handle !== 'object' || handle === null) return undefined;
  const setBlocking: unknown = (handle as { setBlocking?: unknown }).setBlocking;
  return typeof setBlocking === 'function' ? (handle as BlockingHandle) : undefined;
}

function stdioStream(fd: (typeof STDIO)[number]): unknown {
  return fd === 0 ? process.stdin : fd === 1 ? process.stdout : process.stderr;
}

/** Makes the process fit to execve: stdio and `keepFds` inheritable and blocking, default signals. */
export function prepareInheritance(keepFds: readonly number[]): void {
  for (const fd of STDIO) {
    try {
      setCloexec(fd, false);
    } catch (error) {
      if (!(error instanceof SysError) || error.code !== 'EBADF') throw error;
    }
    const flags = fdFlags(fd);
    if (flags === undefined || (flags & O_NONBLOCK) === 0) continue;
    const handle = blockingHandle(stdioStream(fd));
    if (handle === undefined) continue; // not a handle Node made non-blocking; leave it as inherited
    const result = handle.setBlocking(true);
    if (result < 0) throw new SysError('fcntl(F_SETFL)', result, `making fd ${fd} blocking`);
  }
  for (const fd of keepFds) setCloexec(fd, false);
  for (const signal of ['SIGPIPE', 'SIGXFSZ'] as const) process.on(signal, () => {});
}
