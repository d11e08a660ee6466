// native/iommufd.ts: request numbers and struct bytes against include/uapi/linux/iommufd.h
// (this host has no /dev/iommu; the kernel lab runs the ioctls for real), and that the
// wrappers turn a refused ioctl into a SysError naming the command.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  encodeIoasAlloc, encodeOption, IOMMU_IOAS_ALLOC, IOMMU_OPTION, IOMMU_OPTION_HUGE_PAGES,
  IOMMU_OPTION_OP_GET, IOMMU_OPTION_OP_SET, IOMMU_OPTION_RLIMIT_MODE, ioasAlloc, optionGet, optionSet,
} from '../../native/iommufd.ts';
import { closeFd, memfd, SysError } from '../../native/sys.ts';
import { withNoFdLeak } from './fd-audit.ts';

/** Hex of a buffer in 4-byte little-endian groups, for readable diffs. */
function hex(buf: Buffer): string {
  return (buf.toString('hex').match(/.{1,8}/g) ?? []).join(' ');
}

test('request numbers are _IO(\';\', 0x80 + n) with no size or direction bits', () => {
  assert.equal(IOMMU_IOAS_ALLOC, 0x3b81);
  assert.equal(IOMMU_OPTION, 0x3b87);
  assert.equal(IOMMU_OPTION_RLIMIT_MODE, 0);
  assert.equal(IOMMU_OPTION_HUGE_PAGES, 1);
  assert.equal(IOMMU_OPTION_OP_SET, 0);
  assert.equal(IOMMU_OPTION_OP_GET, 1);
});

test('struct iommu_option: 24 bytes, size/option_id/op/__reserved/object_id/val64', () => {
  const set = encodeOption(IOMMU_OPTION_OP_SET, IOMMU_OPTION_RLIMIT_MODE, 0, 1n);
  assert.equal(hex(set), '18000000 00000000 00000000 00000000 01000000 00000000');
  const get = encodeOption(IOMMU_OPTION_OP_GET, IOMMU_OPTION_HUGE_PAGES, 7, 0x1122334455667788n);
  assert.equal(hex(get), '18000000 01000000 01000000 07000000 88776655 44332211');
});

test('struct iommu_ioas_alloc: 12 bytes, flags 0, out_ioas_id zeroed', () => {
  assert.equal(hex(encodeIoasAlloc()), '0c000000 00000000 00000000');
});

test('the wrappers throw SysError ENOTTY naming the command when the fd is not an iommufd', async () => {
  await withNoFdLeak(() => {
    const fd = memfd('not-iommufd');
    try {
      const calls: Array<[string, () => unknown]> = [
        ['IOMMU_OPTION', () => optionGet(fd, IOMMU_OPTION_RLIMIT_MODE)],
        ['IOMMU_OPTION', () => optionSet(fd, IOMMU_OPTION_RLIMIT_MODE, 1n)],
        ['IOMMU_IOAS_ALLOC', () => ioasAlloc(fd)],
      ];
      for (const [command, call] of calls) {
        assert.throws(call, (e: unknown) => e instanceof SysError && e.code === 'ENOTTY' && e.syscall === `ioctl(${command})`, command);
      }
    } finally {
      closeFd(fd);
    }
  });
});
