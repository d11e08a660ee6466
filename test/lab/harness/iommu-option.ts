// The project's typed ioctls (native/iommufd.ts), with failures turned into values so the
// kernel-facts test can assert on the errno a call gave. The unprivileged side uses lab-client.c.
//
// Invariants:
// - Every call is exactly the project's function; only SysError is caught, and it becomes
//   its symbolic errno name (never a number). Anything else propagates.
// - Nothing here owns an fd: callers pass fds they own.
import { SysError } from '../../../native/sys.ts';
import * as iommufd from '../../../native/iommufd.ts';

export const OPTION_RLIMIT_MODE = iommufd.IOMMU_OPTION_RLIMIT_MODE;
/** No kernel defines option 2 (6.12 knows 0 and 1; the lab's series adds 4 and 5). */
export const OPTION_UNDEFINED = 2;
export const OPTION_PINNED_LIMIT = iommufd.IOMMU_OPTION_PINNED_LIMIT;
export const PINNED_UNLIMITED = iommufd.PINNED_UNLIMITED;

export type Outcome<T> = { ok: true; value: T } | { ok: false; errno: string };

function attempt<T>(fn: () => T): Outcome<T> {
  try {
    return { ok: true, value: fn() };
  } catch (e) {
    if (e instanceof SysError) return { ok: false, errno: e.code };
    throw e;
  }
}

export function optionGet(fd: number, optionId: number): Outcome<bigint> {
  return attempt(() => iommufd.optionGet(fd, optionId));
}

export function optionSet(fd: number, optionId: number, value: bigint): Outcome<null> {
  return attempt(() => { iommufd.optionSet(fd, optionId, value); return null; });
}

export function ioasAlloc(fd: number): Outcome<number> {
  return attempt(() => iommufd.ioasAlloc(fd));
}

/** The errno name of an outcome, or 'OK' (so an assertion message shows what happened). */
export function errnoOf<T>(o: Outcome<T>): string {
  return o.ok ? 'OK' : o.errno;
}
