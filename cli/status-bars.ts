// Bars for `iommufdctl status`: how much of the budget is held, and how much of each lease's
// limit its target has pinned, readable at a glance.
//
// Invariants:
// - Pure: values in, text out; no I/O. ASCII only ('#' held, '-' free, inside [ ]), so the bars
//   survive any terminal, `LANG=C`, logs and copy-paste.
// - A bar never overstates or hides: anything above 0 shows at least one '#', anything below
//   the whole leaves at least one '-', and the percentage is rounded down ("<1%" above 0).
// - What the broker did not send (pinned bytes of an unreadable /proc entry) is drawn as '?'
//   and said in words, never as 0. A target that pinned more than its limit (it holds
//   CAP_IPC_LOCK, or the limit was lowered under pinned memory) gets a full bar and "OVER LIMIT".
import type { Lease, Status } from '../protocol/methods.ts';
import { formatSize } from '../shared/sizes.ts';

export const BAR_WIDTH = 30;

/** `[###-------]` for used of total; total 0 draws an empty bar. */
export function bar(used: number, total: number, width = BAR_WIDTH): string {
  let filled = total <= 0 ? 0 : Math.floor((Math.min(used, total) / total) * width);
  if (used > 0 && total > 0 && filled === 0) filled = 1;
  if (used < total && filled === width) filled = width - 1;
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}]`;
}

/** "14%", "<1%" for a sliver, "112%" when over; "-" when there is no total to compare with. */
export function percent(used: number, total: number): string {
  if (total <= 0) return '-';
  const p = Math.floor((used / total) * 100);
  return used > 0 && p === 0 ? '<1%' : `${p}%`;
}

/** The budget as one bar and a percentage (the sizes are on the status block's budget line). */
export function budgetBar(budget: Status['budget']): string {
  return `${bar(budget.usedBytes, budget.totalBytes)} ${percent(budget.usedBytes, budget.totalBytes).padStart(4)}`;
}

/** One row per lease: id, name, a pinned-vs-limit bar, the percentage and the sizes. */
export function leaseBarRows(leases: readonly Lease[], printable: (text: string) => string): string[][] {
  return leases.map((l) => {
    const limit = formatSize(l.limitBytes);
    if (l.pinnedBytes === undefined) {
      return [l.id, printable(l.name), `[${'?'.repeat(BAR_WIDTH)}]`, '?', `- of ${limit} (pinned memory unreadable)`];
    }
    const over = l.pinnedBytes > l.limitBytes;
    return [l.id, printable(l.name), bar(l.pinnedBytes, l.limitBytes), percent(l.pinnedBytes, l.limitBytes),
      `${formatSize(l.pinnedBytes)} of ${limit}${over ? ' OVER LIMIT' : ''}`];
  });
}
