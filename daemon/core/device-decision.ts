// Whether an Open may have the VFIO devices it names: the policy's [[devices]] allowlist, then
// whether another lease holds one. Called by decideOpen (open-decision.ts) as its rules 6 and 7.
//
// Invariants:
// - Pure: values in, a refusal or undefined out. No I/O; nothing here changes the ledger.
// - Default deny: a device with no [[devices]] entry is given to nobody, managers included.
// - An entry gives its device to a caller whose uid is in `users` or who is in one of `groups`
//   (primary gid or supplementary), or, when the caller is a manager, to an Open whose VM name
//   is in `vms`. A non-manager's VM name never counts: anyone may call its own VM anything.
// - Devices are judged in the order the Open names them, the allowlist for all of them before
//   any busy check, so a caller learns it may not have a device before it learns who holds it
//   (and a caller that may not have a device never learns whether another lease holds it).
// - Whether the address is a real VFIO device is the shell's question (daemon/shell/vfio/),
//   asked only after this decision allowed it: a caller the policy refuses learns nothing
//   about the host's devices.
import { BrokerError } from '../../protocol/errors.ts';
import type { Ledger } from './ledger.ts';
import { describePeer, inAnyGroup, type DeviceGrant, type Peer, type Policy } from './policy.ts';

export interface DeviceRequest {
  readonly peer: Peer;
  /** Whether the peer is a manager (policy.ts isManager): only then does `name` count. */
  readonly manager: boolean;
  /** The VM name the Open gives. */
  readonly name: string;
  /** Canonical PCI addresses, distinct (protocol/methods.ts checked them). */
  readonly addresses: readonly string[];
}

/** The first refusal for the devices asked for, or undefined when the Open may have them all. */
export function checkDevices(policy: Policy, ledger: Ledger, request: DeviceRequest): BrokerError | undefined {
  for (const address of request.addresses) {
    const grant = policy.devices.find((d) => d.address === address);
    const why = grant === undefined ? noEntry(address) : refusedBy(grant, request);
    if (why !== undefined) return new BrokerError('PermissionDenied', { rule: 'device-not-allowed', reason: why });
  }
  for (const address of request.addresses) {
    const holder = ledger.byDevice(address);
    if (holder !== undefined) return new BrokerError('DeviceBusy', { address, lease: holder.id });
  }
  return undefined;
}

function noEntry(address: string): string {
  return `device ${address} has no [[devices]] entry in the policy, so it is given to nobody`;
}

/** Why this entry does not give its device to the request, or undefined when it does. */
function refusedBy(grant: DeviceGrant, request: DeviceRequest): string | undefined {
  const { peer } = request;
  if (grant.users.includes(peer.uid) || inAnyGroup(peer, grant.groups)) return undefined;
  if (request.manager && grant.vms.includes(request.name)) return undefined;
  const vmPart = grant.vms.length === 0 ? 'no VM names'
    : request.manager ? `VM names ${list(grant.vms)}, and this Open's VM is "${request.name}"`
      : `VM names ${list(grant.vms)}, which count only when a manager opens (anyone may name its own VM anything)`;
  return `device ${grant.address} is given to users ${list(grant.users)}, groups ${list(grant.groups)} and ${vmPart}; `
    + `${describePeer(peer)} is none of those users or groups`;
}

function list(items: readonly (string | number)[]): string {
  return items.length === 0 ? '[]' : `[${items.join(', ')}]`;
}
