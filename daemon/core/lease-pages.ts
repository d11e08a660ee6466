// List paging: which leases one List reply carries, and the cursor for the rest.
//
// Invariants:
// - Pure: records in, a page out; no I/O, clock or process access.
// - One total order over leases: grant time (createdAt as epoch milliseconds), then id. Ids
//   are unique, so no two leases tie; the order does not depend on which leases are live.
// - A cursor names a position in that order ("<ms>/<id>", protocol/methods.ts
//   LIST_CURSOR_PATTERN), not a lease: a page continues strictly after it whether or not that
//   lease still lives. So a lease live through a whole walk is listed exactly once.
// - A page holds at most `limit` leases; `next` is present exactly when more follow.
// - A createdAt that does not parse as a time sorts as epoch 0 (the journal and Open only
//   ever store ISO times, so this is a guard, not a feature).
import type { LeaseRecord } from './ledger.ts';

/** Where a page starts: strictly after this (time, id). */
export interface PagePosition {
  readonly atMs: number;
  readonly id: string;
}

export interface LeasePage {
  readonly leases: LeaseRecord[];
  /** The position of the page's last lease, when more leases follow it. */
  readonly next?: PagePosition;
}

/** A lease's grant time in epoch ms (0 if its createdAt is not a time). */
export function grantedAtMs(lease: LeaseRecord): number {
  const ms = Date.parse(lease.createdAt);
  return Number.isNaN(ms) ? 0 : ms;
}

function positionOf(lease: LeaseRecord): PagePosition {
  return { atMs: grantedAtMs(lease), id: lease.id };
}

function compare(a: PagePosition, b: PagePosition): number {
  if (a.atMs !== b.atMs) return a.atMs < b.atMs ? -1 : 1;
  if (a.id === b.id) return 0;
  return a.id < b.id ? -1 : 1;
}

/** The cursor text of a position (what List's `next` carries). */
export function formatCursor(p: PagePosition): string {
  return `${p.atMs}/${p.id}`;
}

/**
 * The position a cursor names. The caller has checked it against LIST_CURSOR_PATTERN; anything
 * else gives undefined.
 */
export function parseCursor(cursor: string): PagePosition | undefined {
  const slash = cursor.indexOf('/');
  const atMs = Number(cursor.slice(0, slash));
  if (slash <= 0 || !Number.isSafeInteger(atMs)) return undefined;
  return { atMs, id: cursor.slice(slash + 1) };
}

/** The leases after `after` (from the start if absent), in order, at most `limit` of them. */
export function leasePage(leases: readonly LeaseRecord[], limit: number, after?: PagePosition): LeasePage {
  if (!Number.isSafeInteger(limit) || limit < 1) throw new RangeError(`a page holds at least 1 lease, got limit ${limit}`);
  const rest = leases
    .map((lease) => ({ lease, at: positionOf(lease) }))
    .filter((x) => after === undefined || compare(x.at, after) > 0)
    .sort((a, b) => compare(a.at, b.at));
  const page = rest.slice(0, limit).map((x) => x.lease);
  const boundary = rest.length > limit ? rest[limit - 1] : undefined;
  return boundary === undefined ? { leases: page } : { leases: page, next: boundary.at };
}
