// Kernel facts the broker is built on, proved on the real 6.12 kernel with no broker involved:
// the root side through the project's native helper, the unprivileged side with lab-client.
//
// Invariants:
// - Runs only inside the lab VM (real root, every capability, a real /dev/iommu): outside it
//   the first test fails saying so, never skips.
// - Each test owns the /dev/iommu fds it opens and closes them; the file checks that this
//   process holds exactly the fds it held before.
// - Sizes are a few hundred KiB: TCG is slow and the point is the edge, not the volume.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { constants } from 'node:fs';
import { closeFd, fstatFd, openFile, prlimitMemlock } from '../../../native/sys.ts';
import { openFds, leakedSince } from '../../support/fds.ts';
import { LabClient, NOBODY } from '../harness/lab-client.ts';
import { errnoOf, ioasAlloc, optionGet, optionSet, OPTION_PINNED_LIMIT, OPTION_RLIMIT_MODE, OPTION_UNDEFINED, PINNED_UNLIMITED } from '../harness/iommu-option.ts';

const DEVICE = '/dev/iommu';
/** Which lab kernel booted (test/lab/guest-suite passes it): the per-FD option exists only on 'patched'. */
const KERNEL = process.env['LAB_KERNEL'] ?? '(LAB_KERNEL unset)';
const PAGE = 4096;
const LIMIT = 256 * 1024;

/** A fresh /dev/iommu fd with RLIMIT_MODE=1 (per-process accounting), as the broker makes it. */
function openPerProcessFd(): number {
  const fd = openFile(DEVICE, constants.O_RDWR);
  const set = optionSet(fd, OPTION_RLIMIT_MODE, 1n);
  if (!set.ok) {
    closeFd(fd);
    throw new Error(`SET RLIMIT_MODE=1 as root failed: ${set.errno}`);
  }
  return fd;
}

describe('kernel facts: iommufd on the lab kernel, without the broker', () => {
  let fdsBefore: Map<number, string>;
  before(() => { fdsBefore = openFds(); });
  after(() => { assert.deepEqual(leakedSince(fdsBefore), [], 'fds leaked by the kernel-facts tests'); });

  test('/dev/iommu exists and is a character device', () => {
    const fd = openFile(DEVICE, constants.O_RDWR);
    try {
      assert.equal(fstatFd(fd).mode & constants.S_IFMT, constants.S_IFCHR);
    } finally {
      closeFd(fd);
    }
  });

  test('RLIMIT_MODE: 0 on a fresh FD, SET 1 as root works, then GET says 1', () => {
    const fd = openFile(DEVICE, constants.O_RDWR);
    try {
      assert.deepEqual(optionGet(fd, OPTION_RLIMIT_MODE), { ok: true, value: 0n });
      assert.deepEqual(optionSet(fd, OPTION_RLIMIT_MODE, 1n), { ok: true, value: null });
      assert.deepEqual(optionGet(fd, OPTION_RLIMIT_MODE), { ok: true, value: 1n });
    } finally {
      closeFd(fd);
    }
  });

  test('an option id no kernel defines (2) is EOPNOTSUPP', () => {
    const fd = openFile(DEVICE, constants.O_RDWR);
    try {
      assert.equal(errnoOf(optionGet(fd, OPTION_UNDEFINED)), 'EOPNOTSUPP');
    } finally {
      closeFd(fd);
    }
  });

  // The broker's backend probe (daemon/shell/device.ts) is this one GET: EOPNOTSUPP means memlock.
  test(`GET of the per-FD limit option (${OPTION_PINNED_LIMIT}) on a fresh FD: ${KERNEL === 'patched' ? 'no limit' : 'EOPNOTSUPP'} on the ${KERNEL} kernel`, () => {
    const fd = openFile(DEVICE, constants.O_RDWR);
    try {
      assert.match(KERNEL, /^(un)?patched$/, 'test/lab/guest-suite must say which kernel booted');
      const got = optionGet(fd, OPTION_PINNED_LIMIT);
      if (KERNEL === 'patched') assert.deepEqual(got, { ok: true, value: PINNED_UNLIMITED });
      else assert.equal(errnoOf(got), 'EOPNOTSUPP');
    } finally {
      closeFd(fd);
    }
  });

  test('SET RLIMIT_MODE once an object exists is EBUSY (the broker must set it before handing out)', () => {
    const fd = openFile(DEVICE, constants.O_RDWR);
    try {
      assert.equal(errnoOf(ioasAlloc(fd)), 'OK');
      assert.equal(errnoOf(optionSet(fd, OPTION_RLIMIT_MODE, 1n)), 'EBUSY');
      assert.deepEqual(optionGet(fd, OPTION_RLIMIT_MODE), { ok: true, value: 0n });
    } finally {
      closeFd(fd);
    }
  });

  test('unprivileged, mode 1: maps up to RLIMIT_MEMLOCK, VmLck grows by that, one page more is ENOMEM', async () => {
    const fd = openPerProcessFd();
    const client = LabClient.spawn({ unprivileged: true, passFd: fd });
    try {
      closeFd(fd); // the child has its own copy (its fd 3)
      const [capEff, euid] = await client.ok('caps');
      assert.equal(BigInt(`0x${capEff ?? 'x'}`), 0n, 'the unprivileged client must have no capabilities');
      assert.equal(Number(euid), NOBODY);
      prlimitMemlock(client.pid, { soft: LIMIT, hard: LIMIT });
      assert.deepEqual(await client.rlimit(), { soft: LIMIT, hard: LIMIT });

      assert.equal(await client.okNumber(`option-get ${OPTION_RLIMIT_MODE}`), 1);
      assert.equal(await client.errnoOf(`option-set ${OPTION_RLIMIT_MODE} 1`), 'EPERM');
      const ioas = await client.okNumber('ioas-alloc');
      await client.ok(`mock-domain ${ioas}`);

      const start = await client.vm();
      const iova = await client.okNumber(`map ${ioas} ${LIMIT}`);
      const full = await client.vm();
      assert.equal(full.lockedBytes - start.lockedBytes, LIMIT, 'VmLck grows by the mapped size');
      assert.equal(full.pinnedBytes - start.pinnedBytes, LIMIT, 'VmPin grows by the mapped size');
      assert.equal(await client.errnoOf(`map ${ioas} ${PAGE}`), 'ENOMEM');
      assert.deepEqual(await client.vm(), full, 'a refused map leaves nothing pinned');
      await client.ok(`unmap ${ioas} ${iova}`);
      assert.deepEqual(await client.vm(), start, 'unmap returns the charge');
      assert.equal(await client.errnoOf(`map ${ioas} ${LIMIT + PAGE}`), 'ENOMEM');

      assert.equal(await client.errnoOf(`rlimit-set ${LIMIT * 2} ${LIMIT * 2}`), 'EPERM', 'raising its own hard limit');
      assert.deepEqual(await client.exit(), { code: 0, signal: null });
    } finally {
      await client.kill();
    }
  });

  test('a process with CAP_IPC_LOCK is not charged at all (why the broker refuses such targets)', async () => {
    const fd = openPerProcessFd();
    const client = LabClient.spawn({ unprivileged: false, passFd: fd });
    try {
      closeFd(fd);
      const [capEff] = await client.ok('caps');
      const CAP_IPC_LOCK = 14n;
      assert.equal((BigInt(`0x${capEff ?? 'x'}`) >> CAP_IPC_LOCK) & 1n, 1n, 'the root client holds CAP_IPC_LOCK');
      prlimitMemlock(client.pid, { soft: LIMIT, hard: LIMIT });
      const ioas = await client.okNumber('ioas-alloc');
      await client.ok(`mock-domain ${ioas}`);
      const start = await client.vm();
      assert.equal(await client.errnoOf(`map ${ioas} ${LIMIT * 4}`), 'OK', 'four times the limit maps');
      const end = await client.vm();
      assert.equal(end.lockedBytes, start.lockedBytes, 'and VmLck does not move');
      assert.equal(end.pinnedBytes - start.pinnedBytes, LIMIT * 4, 'though the pages are pinned (VmPin)');
      assert.deepEqual(await client.exit(), { code: 0, signal: null });
    } finally {
      await client.kill();
    }
  });
});

