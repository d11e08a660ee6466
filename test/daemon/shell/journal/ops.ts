// Shared by journal.test.ts and writer.ts: a numbered sequence of journal operations
// and the live leases that must be recovered after any prefix of it. Not a test file itself.
//
// Op 2i grants lease i; op 2i+1 resizes lease i to twice its memory.
import { currentBoot } from '../../../../daemon/shell/journal/boot.ts';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { JOURNAL_FILE, replay } from '../../../../daemon/shell/journal/format.ts';
import type { JournaledLease, LeaseJournal } from '../../../../daemon/shell/journal/journal.ts';

const GiB = 1024 ** 3;
/** The running boot: a journal opened here stamps its grants with it. */
export const BOOT_ID = currentBoot().id;

/** Lease number i, as first granted. */
export function leaseFor(i: number): JournaledLease & { bootId: string } {
  return {
    id: `l-${i.toString(16).padStart(16, '0')}`,
    name: `vm-${i}`,
    targetPid: 1000 + i,
    targetUid: 1000,
    targetStartTime: String(5000 + i),
    ownerUid: 1000,
    memoryBytes: (i + 1) * GiB,
    limitBytes: (i + 2) * GiB,
    ...(i % 2 === 0 ? { requestId: `req-${i}` } : {}),
    createdAt: new Date(Date.UTC(2026, 0, 1, 0, 0, i % 60)).toISOString(),
    previousLimit: i % 3 === 0 ? { soft: -1, hard: -1 } : { soft: 8 * 1024 * 1024, hard: 8 * 1024 * 1024 },
    bootId: BOOT_ID,
  };
}

export function resized<L extends JournaledLease>(lease: L): L {
  return { ...lease, memoryBytes: lease.memoryBytes * 2, limitBytes: lease.memoryBytes * 2 + GiB };
}

/**
 * The live leases in dir's journal, read without taking the state dir's lock or compacting
 * (for a test that looks at a journal another LeaseJournal still holds open).
 */
export function peekLeases(dir: string): JournaledLease[] {
  const file = join(dir, JOURNAL_FILE);
  return [...replay(file, readFileSync(file)).leases.values()];
}

/** Journals operation `op`. */
export function journalOp(journal: LeaseJournal, op: number): void {
  const i = Math.floor(op / 2);
  if (op % 2 === 0) {
    journal.recordGrant(leaseFor(i));
  } else {
    const r = resized(leaseFor(i));
    journal.recordResize(r.id, r.memoryBytes, r.limitBytes);
  }
}

/** The live leases after the first `n` operations, in grant order. */
export function expectedAfter(n: number): JournaledLease[] {
  const leases: JournaledLease[] = [];
  for (let op = 0; op < n; op += 1) {
    const i = Math.floor(op / 2);
    if (op % 2 === 0) leases.push(leaseFor(i));
    else leases[i] = resized(leaseFor(i));
  }
  return leases;
}
