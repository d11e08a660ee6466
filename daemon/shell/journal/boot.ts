// The running boot, as the journal records it: the kernel's boot id and when the boot began.
//
// Invariants:
// - The boot id is /proc/sys/kernel/random/boot_id (a fresh random UUID per boot); anything
//   that does not look like one is an error, never a guess.
// - The boot's start is `btime` of /proc/stat (wall-clock seconds): it is compared only with a
//   file's mtime, which is wall clock too.
import { readFileSync } from 'node:fs';

/** What /proc/sys/kernel/random/boot_id holds: a lowercase UUID. */
export const BOOT_ID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export interface Boot {
  id: string;
  /** When this boot began, in ms since the epoch (wall clock, second resolution). */
  startedAtMs: number;
}

export function currentBoot(): Boot {
  const id = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  if (!BOOT_ID_PATTERN.test(id)) throw new Error(`/proc/sys/kernel/random/boot_id: not a boot id (${JSON.stringify(id.slice(0, 40))})`);
  const btime = /^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1];
  if (btime === undefined) throw new Error('/proc/stat: no btime line');
  return { id, startedAtMs: Number(btime) * 1000 };
}
