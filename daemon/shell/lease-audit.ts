// The audit log of leases: the line the service writes for each change of a lease and for each
// refusal.
//
// Invariants:
// - A change (grant, resize, release) is logged at info with `audit: <action>`, the lease's id,
//   name, target pid, size and limit, and its VFIO devices (address=cdev); `peer` is the
//   caller's uid and pid, absent when no caller asked (a target's exit, a restore).
// - A refusal is logged at warn with `audit: 'deny'` only when it is a BrokerError, with its
//   stable name and parameters, the caller and what it asked; anything else is not logged here.
// - Writes log lines only: no state, no fds.
import type { Logger } from 'pino';
import { BrokerError } from '../../protocol/errors.ts';
import type { LeaseRecord } from '../core/ledger.ts';
import type { ConnectionPeer as Peer } from './peer.ts';

/** Logs a change of lease `r` (`action`: grant, resize, release), with the caller if there was one. */
export function auditLease(log: Logger, action: string, peer: Peer | undefined, r: LeaseRecord, extra: Record<string, unknown> = {}): void {
  log.info({
    audit: action, peer: peer === undefined ? undefined : { uid: peer.uid, pid: peer.pid },
    lease: r.id, name: r.name, targetPid: r.targetPid, memoryBytes: r.memoryBytes, limitBytes: r.limitBytes,
    ...(r.devices === undefined ? {} : { devices: r.devices.map((d) => `${d.address}=${d.cdev}`) }), ...extra,
  }, `${action} ${r.id}`);
}

/** Logs a refused `action` if `err` is a BrokerError (a decision); anything else is not logged here. */
export function auditDenial(log: Logger, action: string, peer: Peer, err: unknown, request: Record<string, unknown>): void {
  if (!(err instanceof BrokerError)) return;
  log.warn({
    audit: 'deny', action, peer: { uid: peer.uid, pid: peer.pid }, request, error: err.errorName, ...err.parameters,
  }, `deny ${action}: ${err.message}`);
}
