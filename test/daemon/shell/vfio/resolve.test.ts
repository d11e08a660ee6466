// From a PCI address to an open VFIO cdev, through a fake sysfs and /dev tree: the one right
// shape opens, every other shape is refused saying what was found, and no refusal leaks an fd.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BrokerError, brokerErrorParameters } from '../../../../protocol/errors.ts';
import { closeFd, fstatFd } from '../../../../native/sys.ts';
import { openDevice, openDevices, splitRdev, vfioRootsUnder } from '../../../../daemon/shell/vfio/resolve.ts';
import { openFds, leakedSince } from '../../../support/fds.ts';
import { canMknod, FakeVfioTree } from '../../../support/vfio-tree.ts';

const skip = canMknod() ? false : 'needs mknod (root with CAP_MKNOD) to make the fake cdev nodes';
const trees: FakeVfioTree[] = [];
after(() => { for (const t of trees) t.remove(); });

function tree(): FakeVfioTree {
  const t = new FakeVfioTree();
  trees.push(t);
  return t;
}

const A = '0000:00:03.0';
const B = '0000:00:04.0';

/** Runs `open`, expects NoSuchDevice (or `name`), and proves this process holds no new fd after. */
function refused(open: () => unknown, found: string | RegExp, name = 'NoSuchDevice'): Record<string, unknown> {
  const before = openFds();
  let caught: unknown;
  try {
    const result = open();
    assert.fail(`expected ${name}, got ${JSON.stringify(result)}`);
  } catch (e) {
    caught = e;
  }
  assert.deepEqual(leakedSince(before), [], 'a refusal closes every fd it opened');
  assert.ok(caught instanceof BrokerError, String(caught));
  assert.equal(caught.errorName, name, caught.message);
  brokerErrorParameters[caught.errorName as keyof typeof brokerErrorParameters].parse(caught.parameters);
  const parameters = caught.parameters as Record<string, unknown>;
  if (name === 'NoSuchDevice') {
    if (typeof found === 'string') assert.equal(parameters['found'], found, caught.message);
    else assert.match(String(parameters['reason']), found);
  }
  return parameters;
}

describe('openDevice: the one right shape', { skip }, () => {
  it('opens the cdev sysfs names, O_RDWR and close-on-exec, and checks its device number', () => {
    const t = tree();
    t.add(A, { cdevs: ['vfio7'] });
    const d = openDevice(vfioRootsUnder(t.root), A);
    try {
      assert.deepEqual([d.address, d.cdev], [A, 'vfio7']);
      const st = fstatFd(d.fd);
      assert.equal(st.mode & 0o170000, 0o020000);
      assert.deepEqual(splitRdev(st.rdev), { major: 1, minor: 3 });
      const flags = Number.parseInt(/^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${d.fd}`, 'utf8'))?.[1] ?? '0', 8);
      assert.equal(flags & 0o3, 0o2, 'O_RDWR');
      assert.notEqual(flags & 0o2000000, 0, 'O_CLOEXEC');
    } finally {
      closeFd(d.fd);
    }
  });

  it('splitRdev reads the large-number encoding too', () => {
    // makedev(0x123, 0x45678) in glibc's encoding
    const major = 0x123n;
    const minor = 0x45678n;
    const rdev = ((major & 0xfffn) << 8n) | ((major & ~0xfffn) << 32n) | (minor & 0xffn) | ((minor & ~0xffn) << 12n);
    assert.deepEqual(splitRdev(Number(rdev)), { major: 0x123, minor: 0x45678 });
  });
});

describe('openDevice: everything else is refused, saying what was found', { skip }, () => {
  it('an address with no PCI device: absent', () => {
    const t = tree();
    refused(() => openDevice(vfioRootsUnder(t.root), A), 'absent');
    writeFileSync(join(t.pciDevices, B), 'a file, not a device directory');
    refused(() => openDevice(vfioRootsUnder(t.root), B), 'absent');
  });

  it('a device bound to another driver, or to none: not-vfio-pci, naming the driver', () => {
    const t = tree();
    t.add(A, { driver: 'e1000e', cdevs: null });
    const p = refused(() => openDevice(vfioRootsUnder(t.root), A), 'not-vfio-pci');
    assert.match(String(p['reason']), /bound to driver e1000e, not vfio-pci/);
    t.add(B, { driver: null, cdevs: null });
    assert.match(String(refused(() => openDevice(vfioRootsUnder(t.root), B), 'not-vfio-pci')['reason']), /bound to no driver/);
  });

  it('vfio-pci without vfio-dev/ (no CONFIG_VFIO_DEVICE_CDEV), or an empty one: no-vfio-cdev', () => {
    const t = tree();
    t.add(A, { cdevs: null });
    assert.match(String(refused(() => openDevice(vfioRootsUnder(t.root), A), 'no-vfio-cdev')['reason']), /CONFIG_VFIO_DEVICE_CDEV/);
    t.add(B, { cdevs: [] });
    refused(() => openDevice(vfioRootsUnder(t.root), B), 'no-vfio-cdev');
  });

  it('two vfioN entries: not-a-vfio-cdev (exactly one, never a guess)', () => {
    const t = tree();
    t.add(A, { cdevs: ['vfio0', 'vfio1'] });
    assert.match(String(refused(() => openDevice(vfioRootsUnder(t.root), A), 'not-a-vfio-cdev')['reason']), /2 vfioN entries \(vfio0, vfio1\)/);
  });

  it('a symlinked vfio-dev directory, or a symlinked vfioN entry: not-a-vfio-cdev', () => {
    const t = tree();
    const real = t.add(A, { cdevs: null });
    const elsewhere = join(t.root, 'elsewhere');
    mkdirSync(join(elsewhere, 'vfio0'), { recursive: true });
    writeFileSync(join(elsewhere, 'vfio0', 'dev'), '1:3\n');
    t.node('vfio0', 'char');
    symlinkSync(elsewhere, join(real, 'vfio-dev'));
    assert.match(String(refused(() => openDevice(vfioRootsUnder(t.root), A), 'not-a-vfio-cdev')['reason']), /symbolic link/);

    const realB = t.add(B, { cdevs: [] });
    symlinkSync(join(elsewhere, 'vfio0'), join(realB, 'vfio-dev', 'vfio0'));
    assert.match(String(refused(() => openDevice(vfioRootsUnder(t.root), B), 'not-a-vfio-cdev')['reason']), /symbolic link/);
  });

  it('a vfioN entry whose dev is unreadable or not major:minor: not-a-vfio-cdev', () => {
    const t = tree();
    t.add(A, { dev: '1:3:7' });
    refused(() => openDevice(vfioRootsUnder(t.root), A), /not "major:minor"/);
    const real = t.add(B, { cdevs: ['vfio1'] });
    rmSync(join(real, 'vfio-dev', 'vfio1', 'dev'));
    refused(() => openDevice(vfioRootsUnder(t.root), B), /cannot be read/);
  });

  it('no node under /dev: no-vfio-cdev', () => {
    const t = tree();
    t.add(A, { node: 'none' });
    refused(() => openDevice(vfioRootsUnder(t.root), A), 'no-vfio-cdev');
  });

  it('a node that is a symlink (even to a char device), a regular file, a directory or a FIFO is never opened', () => {
    const t = tree();
    const cases = [['symlink-to-null', /a symbolic link/], ['file', /a regular file/], ['dir', /a directory/], ['fifo', /a FIFO/]] as const;
    for (const [i, [kind, why]] of cases.entries()) {
      const address = `0000:00:1${i}.0`;
      t.add(address, { cdevs: [`vfio${i}`], node: kind });
      // A FIFO would block an open until a writer comes: reaching this line at all shows it was not opened.
      const p = refused(() => openDevice(vfioRootsUnder(t.root), address), 'not-a-vfio-cdev');
      assert.match(String(p['reason']), why);
    }
  });

  it('a char device with another device number than sysfs names: refused after the open, its fd closed', () => {
    const t = tree();
    t.add(A, { nodeNumbers: '1:5' }); // the zero device where sysfs says 1:3
    const p = refused(() => openDevice(vfioRootsUnder(t.root), A), 'not-a-vfio-cdev');
    assert.match(String(p['reason']), /opened as device 1:5 .* sysfs says vfio0 is character device 1:3/);
  });

  it('refuses an address that is not canonical before touching any path (a bug upstream, not a client path)', () => {
    const t = tree();
    for (const bad of ['../../../../dev', '0000:00:03.0/../../x', '0000:00:03.0\u0000', '00:03.0', '0'.repeat(4096)]) {
      assert.throws(() => openDevice(vfioRootsUnder(t.root), bad), /not a canonical PCI address/);
    }
  });
});

describe('openDevices: all or nothing', { skip }, () => {
  it('opens every device in order', () => {
    const t = tree();
    t.add(A, { cdevs: ['vfio0'] });
    t.add(B, { cdevs: ['vfio1'] });
    const opened = openDevices(vfioRootsUnder(t.root), [B, A]);
    try {
      assert.deepEqual(opened.map((d) => [d.address, d.cdev]), [[B, 'vfio1'], [A, 'vfio0']]);
    } finally {
      for (const d of opened) closeFd(d.fd);
    }
  });

  it('closes the fds already opened when a later device is refused', () => {
    const t = tree();
    t.add(A, { cdevs: ['vfio0'] });
    t.add(B, { cdevs: ['vfio1'], nodeNumbers: '1:5' });
    refused(() => openDevices(vfioRootsUnder(t.root), [A, B]), 'not-a-vfio-cdev');
    refused(() => openDevices(vfioRootsUnder(t.root), [A, '0000:00:05.0']), 'absent');
  });
});
