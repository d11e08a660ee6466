import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { BrokerError, brokerErrorParameters } from '../../../protocol/errors.ts';
import { checkDevices, type DeviceRequest } from '../../../daemon/core/device-decision.ts';
import { Ledger } from '../../../daemon/core/ledger.ts';
import { decideOpen, type OpenRequest } from '../../../daemon/core/open-decision.ts';
import type { DeviceGrant, Peer } from '../../../daemon/core/policy.ts';
import { GiB, PAGE, lease, peer, policy } from './lease-fixtures.ts';

const A = '0000:00:03.0';
const B = '0000:00:04.0';
const KVM = 107;
const alice = peer(1000);
const bob = peer(1001, undefined, 1001, [KVM]);
const root = peer(0);

function grant(fields: Partial<DeviceGrant> & { address: string }): DeviceGrant {
  return { vms: [], users: [], groups: [], ...fields };
}

function ask(who: Peer, addresses: string[], fields: Partial<DeviceRequest> = {}): DeviceRequest {
  return { peer: who, manager: who.uid === 0, name: 'vm1', addresses, ...fields };
}

function refusal(error: BrokerError | undefined): { errorName: string; parameters: Record<string, unknown> } {
  assert.ok(error instanceof BrokerError, 'expected a refusal');
  brokerErrorParameters[error.errorName].parse(error.parameters);
  return { errorName: error.errorName, parameters: error.parameters as Record<string, unknown> };
}

describe('checkDevices: the [[devices]] allowlist', () => {
  it('gives nothing by default, not even to a manager', () => {
    const e = refusal(checkDevices(policy(), new Ledger(), ask(root, [A])));
    assert.equal(e.errorName, 'PermissionDenied');
    assert.deepEqual(e.parameters, {
      rule: 'device-not-allowed', reason: `device ${A} has no [[devices]] entry in the policy, so it is given to nobody`,
    });
  });

  it('gives a device to a listed user, or a member of a listed group (primary or supplementary)', () => {
    const p = policy({ devices: [grant({ address: A, users: [1000] }), grant({ address: B, groups: [KVM] })] });
    assert.equal(checkDevices(p, new Ledger(), ask(alice, [A])), undefined);
    assert.equal(checkDevices(p, new Ledger(), ask(bob, [B])), undefined);
    assert.equal(checkDevices(p, new Ledger(), ask(peer(1002, undefined, KVM), [B])), undefined);
    const e = refusal(checkDevices(p, new Ledger(), ask(alice, [B])));
    assert.match(String(e.parameters.reason), /device 0000:00:04\.0 is given to users \[\], groups \[107\] and no VM names; uid 1000 .* is none of those users or groups/);
  });

  it('trusts a VM name only from a manager', () => {
    const p = policy({ devices: [grant({ address: A, vms: ['vm1'] })] });
    assert.equal(checkDevices(p, new Ledger(), ask(root, [A])), undefined);
    const other = refusal(checkDevices(p, new Ledger(), ask(root, [A], { name: 'vm2' })));
    assert.match(String(other.parameters.reason), /VM names \[vm1\], and this Open's VM is "vm2"/);
    // alice calls her own VM "vm1": the name is hers to choose, so it proves nothing.
    const self = refusal(checkDevices(p, new Ledger(), ask(alice, [A])));
    assert.match(String(self.parameters.reason), /VM names \[vm1\], which count only when a manager opens/);
  });

  it('judges every device of the Open, in the order asked, the allowlist before any busy check', () => {
    const p = policy({ devices: [grant({ address: A, users: [1000] })] });
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-held', targetPid: 5, devices: [{ address: A, cdev: 'vfio0' }] }));
    // B is not allowed: that is the answer, not "A is busy" (a refused caller learns nothing about holders).
    const e = refusal(checkDevices(p, ledger, ask(alice, [A, B])));
    assert.equal(e.errorName, 'PermissionDenied');
    assert.match(String(e.parameters.reason), /0000:00:04\.0/);
    const busy = refusal(checkDevices(p, ledger, ask(alice, [A])));
    assert.deepEqual([busy.errorName, busy.parameters], ['DeviceBusy', { address: A, lease: 'l-held' }]);
  });

  it('keeps a device held by a released lease until that lease leaves the ledger (its target exits)', () => {
    const p = policy({ devices: [grant({ address: A, users: [1000] })] });
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-held', targetPid: 5, devices: [{ address: A, cdev: 'vfio0' }] }));
    ledger.markReleased('l-held', '2025-01-02T00:00:00.000Z');
    assert.equal(refusal(checkDevices(p, ledger, ask(alice, [A]))).errorName, 'DeviceBusy');
    ledger.release('l-held');
    assert.equal(checkDevices(p, ledger, ask(alice, [A])), undefined);
  });

  it('asks nothing of an Open without devices', () => {
    assert.equal(checkDevices(policy(), new Ledger(), ask(alice, [])), undefined);
  });
});

describe('decideOpen: devices are rules 6 and 7', () => {
  const base = (fields: Partial<OpenRequest> & { peer: Peer }): OpenRequest => ({
    targetPid: fields.peer.pid, peerAlive: true, targetIsPeer: true, targetUid: fields.peer.uid,
    targetIpcLockSet: undefined, targetNoNewPrivs: false, name: 'vm1', memoryBytes: GiB, pageSize: PAGE, ...fields,
  });

  it('comes after "target already leased" and before the caps and the budget', () => {
    const p = policy({ budgetBytes: 0, devices: [grant({ address: A, users: [1000] })] });
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-same', targetPid: alice.pid }));
    const first = decideOpen(p, ledger, base({ peer: alice, devices: [B] }));
    assert.ok(!first.ok && first.error.errorName === 'TargetAlreadyLeased');
    const second = decideOpen(p, new Ledger(), base({ peer: alice, devices: [B] }));
    assert.ok(!second.ok && second.error.errorName === 'PermissionDenied');
    assert.equal((second.error.parameters as Record<string, unknown>)['rule'], 'device-not-allowed');
    const third = decideOpen(p, new Ledger(), base({ peer: alice, devices: [A] }));
    assert.ok(!third.ok && third.error.errorName === 'BudgetExceeded', 'an allowed device leaves the budget to decide');
  });

  it('grants an Open with allowed, free devices', () => {
    const p = policy({ devices: [grant({ address: A, users: [1000] })] });
    assert.equal(decideOpen(p, new Ledger(), base({ peer: alice, devices: [A] })).ok, true);
  });
});

describe('property: no two leases ever hold one device', () => {
  it('whatever Opens, exits and releases come, every granted device is held by exactly one lease', () => {
    const addresses = [A, B, '0000:00:05.0'];
    const p = policy({ devices: addresses.map((address) => grant({ address, users: [1000] })) });
    const op = fc.oneof(
      fc.record({ kind: fc.constant('open' as const), devices: fc.subarray(addresses, { minLength: 1 }) }),
      fc.record({ kind: fc.constantFrom('exit' as const, 'release' as const), which: fc.nat() }),
    );
    fc.assert(fc.property(fc.array(op, { maxLength: 30 }), (ops) => {
      const ledger = new Ledger();
      let pid = 100;
      for (const o of ops) {
        const live = ledger.all();
        if (o.kind === 'open') {
          pid++;
          const decision = decideOpen(p, ledger, base({ peer: { ...alice, pid }, devices: o.devices }));
          const busy = o.devices.some((d) => ledger.byDevice(d) !== undefined);
          assert.equal(decision.ok, !busy);
          if (decision.ok) {
            ledger.grant(lease({ id: `l-${pid}`, targetPid: pid, devices: o.devices.map((address, i) => ({ address, cdev: `vfio${i}` })) }));
          }
        } else if (live.length > 0) {
          const victim = live[o.which % live.length]!;
          if (o.kind === 'exit') ledger.release(victim.id);
          else if (victim.releasedAt === undefined) ledger.markReleased(victim.id, '2025-01-02T00:00:00.000Z');
        }
        const held = ledger.all().flatMap((l) => (l.devices ?? []).map((d) => d.address));
        assert.equal(new Set(held).size, held.length, 'a device held twice');
        assert.equal(ledger.devicesHeld(), held.length);
        for (const l of ledger.all()) for (const d of l.devices ?? []) assert.equal(ledger.byDevice(d.address)?.id, l.id);
      }
    }));
  });

  function base(fields: Partial<OpenRequest> & { peer: Peer }): OpenRequest {
    return {
      targetPid: fields.peer.pid, peerAlive: true, targetIsPeer: true, targetUid: fields.peer.uid,
      targetIpcLockSet: undefined, targetNoNewPrivs: false, name: 'vm1', memoryBytes: GiB, pageSize: PAGE, ...fields,
    };
  }
});
