// loadPolicy on real files: defaults, the shipped example, JSON, name resolution, flag
// overrides, strictness (unknown keys, wrong types, `device`), file safety, frozen result.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_OVERHEAD_BYTES, type Policy } from '../../../daemon/core/policy.ts';
import { PolicyError, defaultReserveBytes, loadPolicy, type LoadPolicyOptions } from '../../../daemon/shell/config.ts';
import { leakedSince, openFds } from '../../support/fds.ts';

const GiB = 1024 ** 3;
const MEM = 64 * GiB;
const EXAMPLE = join(import.meta.dirname, '..', '..', '..', 'examples', 'policy.toml');

const dir = mkdtempSync(join(tmpdir(), 'config-test-'));
const passwdFile = join(dir, 'passwd');
const groupFile = join(dir, 'group');
writeFileSync(passwdFile, 'root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/sh\nbob:x:1001:1001::/home/bob:/bin/sh\nprometheus:x:998:998::/var/lib/prometheus:/usr/sbin/nologin\n');
writeFileSync(groupFile, 'root:x:0:\nkvm:x:107:alice\nlibvirt:x:990:\n');
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

let counter = 0;
/** Writes a policy file (mode 0644, ours) and returns its path. */
function policyFile(text: string, ext = 'toml'): string {
  const path = join(dir, `policy-${counter++}.${ext}`);
  writeFileSync(path, text, { mode: 0o644 });
  return path;
}

function load(options: Partial<LoadPolicyOptions> = {}): Readonly<Policy> {
  return loadPolicy({ memTotalBytes: MEM, passwdFile, groupFile, ...options });
}

/** Expects a PolicyError from loading `text`, with this key and a message matching `reason`. */
function rejects(text: string, key: string | null, reason: RegExp, ext = 'toml'): PolicyError {
  const path = policyFile(text, ext);
  let caught: unknown;
  assert.throws(() => load({ configPath: path }), (e: unknown) => { caught = e; return true; });
  assert.ok(caught instanceof PolicyError, `expected a PolicyError, got ${String(caught)}`);
  assert.equal(caught.name, 'PolicyError');
  assert.equal(caught.source, path);
  assert.equal(caught.key, key, caught.message);
  assert.match(caught.message, reason);
  assert.ok(caught.message.startsWith(`${path}: ${key === null ? '' : `${key}: `}`), caught.message);
  return caught;
}

test('without a file: anyone opens, root manages, 1 GiB overhead, budget = MemTotal - reserve', () => {
  assert.deepEqual(load(), {
    openUsers: 'any', openGroups: [], managerUsers: [0], managerGroups: [], observerUsers: [], observerGroups: [],
    perVmMaxBytes: null, perUidMaxLeases: null, perUidMaxBytes: null,
    overheadBytes: DEFAULT_OVERHEAD_BYTES, budgetBytes: MEM - defaultReserveBytes(MEM),
    allowTargetsWithIpcLock: false, requireTargetNoNewPrivs: false, devices: [],
  });
  assert.equal(defaultReserveBytes(MEM), Math.floor(MEM / 10), '10 % of 64 GiB');
  assert.equal(defaultReserveBytes(4 * GiB), GiB, 'at least 1 GiB');
  assert.equal(load({ memTotalBytes: 4 * GiB }).budgetBytes, 3 * GiB);
  assert.throws(() => load({ memTotalBytes: GiB }), (e: unknown) => e instanceof PolicyError && /leaves no budget.*--budget/.test(e.message));
  assert.throws(() => load({ memTotalBytes: 0 }), RangeError);
});

test('the shipped example loads to exactly what its comments say', () => {
  assert.deepEqual(load({ configPath: EXAMPLE }), {
    openUsers: [1000], openGroups: [107], managerUsers: [0], managerGroups: [990], observerUsers: [998], observerGroups: [],
    perVmMaxBytes: 256 * GiB, perUidMaxLeases: 8, perUidMaxBytes: 512 * GiB,
    overheadBytes: GiB, budgetBytes: 200 * GiB, allowTargetsWithIpcLock: false, requireTargetNoNewPrivs: false,
    devices: [{ address: '0000:00:03.0', vms: ['vm1'], users: [], groups: [] }],
  });
});

test('the result is deeply frozen', () => {
  const policy = load({ configPath: EXAMPLE });
  assert.ok(Object.isFrozen(policy));
  for (const list of [policy.openUsers, policy.openGroups, policy.managerUsers, policy.managerGroups, policy.observerUsers, policy.observerGroups]) {
    assert.ok(Object.isFrozen(list));
  }
  assert.throws(() => { (policy as { budgetBytes: number }).budgetBytes = 1; }, TypeError);
  assert.throws(() => { (policy.managerUsers as number[]).push(1000); }, TypeError);
  assert.ok(Object.isFrozen(load().managerUsers));
});

test('JSON with the same keys gives the same policy as TOML', () => {
  const json = policyFile(JSON.stringify({
    open: { users: ['alice', 1000], groups: ['kvm'] },
    managers: { users: ['root'], groups: ['libvirt'] },
    observers: { users: ['prometheus'] },
    limits: { overhead: '1G', perVmMax: '256G', perUidLeases: 8, perUidBytes: '512G', budget: '200G' },
    targets: { allowIpcLock: false },
    devices: [{ address: '0000:00:03.0', vms: ['vm1'] }],
  }), 'json');
  assert.deepEqual(load({ configPath: json }), load({ configPath: EXAMPLE }));
});

test('names and ids resolve, duplicates collapse, unknown names are errors naming them', () => {
  const p = load({ configPath: policyFile('[open]\nusers = ["bob", 1001, "alice", 5]\ngroups = [107, "kvm"]\n') });
  assert.deepEqual(p.openUsers, [1001, 1000, 5]);
  assert.deepEqual(p.openGroups, [107]);
  rejects('[open]\nusers = ["mallory"]\n', 'open.users', /unknown user "mallory": not in .*passwd.*numeric uid/);
  rejects('[managers]\ngroups = ["kvmm"]\n', 'managers.groups', /unknown group "kvmm": not in .*group/);
  rejects('[observers]\nusers = ["grafana"]\n', 'observers.users', /unknown user "grafana": not in .*passwd/);
  assert.deepEqual(load({ configPath: policyFile('[observers]\ngroups = ["kvm", 990]\n') }).observerGroups, [107, 990]);
  rejects('[open]\nusers = ["1000"]\n', 'open.users', /write 1000 without quotes/);
});

test('present tables are whole allow-lists; absent ones keep the defaults', () => {
  const groupsOnly = load({ configPath: policyFile('[open]\ngroups = ["kvm"]\n') });
  assert.deepEqual(groupsOnly.openUsers, []);
  assert.deepEqual(groupsOnly.openGroups, [107]);
  assert.deepEqual(groupsOnly.managerUsers, [0], '[managers] absent: root');
  const managers = load({ configPath: policyFile('[managers]\ngroups = ["libvirt"]\n') });
  assert.deepEqual(managers.managerUsers, []);
  assert.equal(managers.openUsers, 'any', '[open] absent: anyone');
  assert.equal(load({ configPath: policyFile('[open]\nusers = "any"\n') }).openUsers, 'any');
  assert.deepEqual(load({ configPath: policyFile('') }), load(), 'an empty file is the defaults');
});

test('flags override the file; bad flags name the flag', () => {
  const path = policyFile('[limits]\noverhead = "2G"\nbudget = "100G"\n');
  assert.equal(load({ configPath: path }).overheadBytes, 2 * GiB);
  const p = load({ configPath: path, overhead: '512M', budget: '10G' });
  assert.equal(p.overheadBytes, 512 * 1024 ** 2);
  assert.equal(p.budgetBytes, 10 * GiB);
  const reserve = policyFile('[limits]\nreserve = "4G"\n');
  assert.equal(load({ configPath: reserve }).budgetBytes, MEM - 4 * GiB);
  assert.equal(load({ configPath: reserve, budget: '1T' }).budgetBytes, 1024 * GiB, '--budget beats reserve');
  assert.equal(load({ overhead: '0' }).overheadBytes, 0);
  assert.throws(() => load({ budget: '200GB' }), (e: unknown) =>
    e instanceof PolicyError && e.source === '--budget' && e.key === null && /^--budget: .*ambiguous/.test(e.message));
  assert.throws(() => load({ overhead: 'lots' }), (e: unknown) => e instanceof PolicyError && e.source === '--overhead');
});

test('unknown tables and keys are refused with the key path and what is accepted', () => {
  rejects('[limits]\nperVmMx = "1G"\n', 'limits.perVmMx',
    /unknown key; accepted keys in \[limits\]: overhead, perVmMax, perUidLeases, perUidBytes, budget, reserve$/);
  rejects('[quota]\nx = 1\n', 'quota', /unknown key; accepted tables: open, managers, observers, limits, targets/);
  rejects('{"targets": {"allowIPCLock": true}}', 'targets.allowIPCLock', /accepted keys in \[targets\]: allowIpcLock/, 'json');
});

test('values of the wrong type or range say what is accepted', () => {
  rejects('[limits]\nperUidLeases = "8"\n', 'limits.perUidLeases', /accepted: a whole number >= 1/);
  rejects('[limits]\nperUidLeases = 0\n', 'limits.perUidLeases', /accepted: a whole number >= 1/);
  rejects('[open]\nusers = "alice"\n', 'open.users', /accepted: a list of user names and numeric uids.*or "any"/);
  rejects('[open]\nusers = [-1]\n', 'open.users.0', /accepted: a list of user names/);
  rejects('[targets]\nallowIpcLock = "no"\n', 'targets.allowIpcLock', /accepted: true or false/);
  rejects('limits = 5\n', 'limits', /accepted: a table with the keys overhead, perVmMax/);
  rejects('[limits]\noverhead = 1.5\n', 'limits.overhead', /accepted: a size such as/);
  rejects('[limits]\nperVmMax = "8GB"\n', 'limits.perVmMax', /ambiguous.*8GiB/);
  rejects('[limits]\nbudget = "-1G"\n', 'limits.budget', /cannot read "-1G" as a size/);
  rejects('[limits]\nbudget = "1G"\nreserve = "1G"\n', 'limits.reserve', /either limits.budget or limits.reserve/);
  rejects('[limits]\nreserve = "64G"\n', 'limits.reserve', /leaves no budget/);
  rejects('[limits]\nperVmMax = "1G"\n', 'limits.perVmMax', /not more than the overhead.*no lease could ever be granted/);
  rejects('[1, 2]', null, /accepted: a table of tables/, 'json');
});

test('the file can never choose the device', () => {
  rejects('device = "simulated"\n', 'device', /--device flag only.*simulated device/);
  rejects('[limits]\ndevice = "simulated"\n', 'limits.device', /--device flag only/);
  rejects('{"targets": {"device": "/dev/iommu"}}', 'targets.device', /cannot be chosen in the policy file/, 'json');
});

test('unreadable, unparsable, misnamed and unsafe files are refused', () => {
  rejects('[open\n', null, /not valid TOML at line 1/);
  rejects('{"open": ', null, /not valid JSON/, 'json');
  rejects('open: {}\n', null, /unknown file type ".yaml": a policy file ends in .toml or .json/, 'yaml');
  const missing = join(dir, 'nope.toml');
  assert.throws(() => load({ configPath: missing }), (e: unknown) => e instanceof PolicyError && /cannot be read \(ENOENT\)/.test(e.message));
  assert.throws(() => load({ configPath: dir + '/.toml' }), PolicyError);

  const writable = policyFile('[targets]\nallowIpcLock = true\n');
  assert.equal(load({ configPath: writable }).allowTargetsWithIpcLock, true);
  assert.equal(load({ configPath: policyFile('[targets]\nrequireNoNewPrivs = true\n') }).requireTargetNoNewPrivs, true);
  rejects('[targets]\nrequireNoNewPrivs = "yes"\n', 'targets.requireNoNewPrivs', /true or false/);
  chmodSync(writable, 0o666);
  assert.throws(() => load({ configPath: writable }), (e: unknown) => e instanceof PolicyError && /mode 666.*not group\/world-writable/.test(e.message));
  chmodSync(writable, 0o644);
  chownSync(writable, 65534, 65534);
  assert.throws(() => load({ configPath: writable }), (e: unknown) => e instanceof PolicyError && /owner uid 65534/.test(e.message));
});

test('loading leaves no fd open, on success or failure', () => {
  const before = openFds();
  load({ configPath: EXAMPLE });
  assert.throws(() => load({ configPath: policyFile('[limits]\nx = 1\n') }), PolicyError);
  assert.throws(() => load({ configPath: policyFile('[open\n') }), PolicyError);
  assert.deepEqual(leakedSince(before), [], 'an fd leaked');
});

test('[[devices]]: each PCI address once, given to VM names, users and groups (names resolved); none by default', () => {
  assert.deepEqual(load().devices, []);
  const p = load({ configPath: policyFile(`
[[devices]]
address = "0000:00:03.0"
vms = ["vm1", "vm1", "vm2"]
users = ["alice", 1001]

[[devices]]
address = "0000:81:00.1"
groups = ["kvm"]
`) });
  assert.deepEqual(p.devices, [
    { address: '0000:00:03.0', vms: ['vm1', 'vm2'], users: [1000, 1001], groups: [] },
    { address: '0000:81:00.1', vms: [], users: [], groups: [107] },
  ]);
  assert.ok(Object.isFrozen(p.devices) && Object.isFrozen(p.devices[0]) && Object.isFrozen(p.devices[0]?.vms));
  const json = load({ configPath: policyFile(JSON.stringify({ devices: [{ address: '0000:00:03.0', users: [0] }] }), 'json') });
  assert.deepEqual(json.devices, [{ address: '0000:00:03.0', vms: [], users: [0], groups: [] }]);
});

test('[[devices]] refusals say which entry and what is accepted', () => {
  rejects('[[devices]]\naddress = "00:03.0"\nusers = [0]\n', 'devices.0.address', /not a canonical PCI address; accepted: a PCI address as sysfs names it, DDDD:BB:DD\.F/);
  rejects('[[devices]]\naddress = "0000:00:03.0/../x"\nusers = [0]\n', 'devices.0.address', /not a canonical PCI address/);
  rejects('[[devices]]\naddress = "0000:00:03.0"\nusers = [0]\npath = "/dev/vfio/devices/vfio0"\n', 'devices.path',
    /unknown key; accepted keys in \[devices\]: address, vms, users, groups/);
  rejects('[[devices]]\naddress = "0000:00:03.0"\n', 'devices.0', /gives it to no one: list vms, users or groups/);
  rejects('[[devices]]\naddress = "0000:00:03.0"\nusers = [0]\n[[devices]]\naddress = "0000:00:03.0"\ngroups = [0]\n',
    'devices.1.address', /0000:00:03\.0 has two \[\[devices\]\] entries/);
  rejects('[[devices]]\naddress = "0000:00:03.0"\nusers = ["mallory"]\n', 'devices.0.users', /mallory/);
  rejects('[[devices]]\naddress = "0000:00:03.0"\nvms = ["-bad"]\n', 'devices.0.vms.0', /not a VM name/);
  rejects('[devices]\naddress = "0000:00:03.0"\n', 'devices', /an array of tables \(\[\[devices\]\]\)/);
});
