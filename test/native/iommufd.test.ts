// native/iommufd.ts: request numbers and struct bytes against include/uapi/linux/iommufd.h
// (this host has no /dev/iommu; the kernel lab runs the ioctls for real), and that the
// wrappers turn a refused ioctl into a SysError naming the command.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  encodeDestroy, encodeIoasAlloc, encodeIoasMap, encodeIoasUnmap, encodeOption, encodeTestMockDomain,
  IOMMU_DESTROY, IOMMU_IOAS_ALLOC, IOMMU_IOAS_MAP, IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_READABLE,
  IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_UNMAP, IOMMU_OPTION, IOMMU_OPTION_HUGE_PAGES, IOMMU_OPTION_OP_GET,
  IOMMU_OPTION_OP_SET, IOMMU_OPTION_RLIMIT_MODE, IOMMU_TEST_CMD, ioasAlloc, ioasMap, ioasUnmap, optionGet,
  optionSet, testMockDomain, destroyObject,
} from '../../native/iommufd.ts';
import { closeFd, memfd, SysError } from '../../native/sys.ts';
import { withNoFdLeak } from './fd-audit.ts';

/** Hex of a buffer in 4-byte little-endian groups, for readable diffs. */
function hex(buf: Buffer): string {
  return (buf.toString('hex').match(/.{1,8}/g) ?? []).join(' ');
}

test('request numbers are _IO(\';\', 0x80 + n) with no size or direction bits', () => {
  assert.equal(IOMMU_DESTROY, 0x3b80);
  assert.equal(IOMMU_IOAS_ALLOC, 0x3b81);
  assert.equal(IOMMU_IOAS_MAP, 0x3b85);
  assert.equal(IOMMU_IOAS_UNMAP, 0x3b86);
  assert.equal(IOMMU_OPTION, 0x3b87);
  assert.equal(IOMMU_TEST_CMD, 0x3ba0);
  assert.equal(IOMMU_OPTION_RLIMIT_MODE, 0);
  assert.equal(IOMMU_OPTION_HUGE_PAGES, 1);
  assert.equal(IOMMU_OPTION_OP_SET, 0);
  assert.equal(IOMMU_OPTION_OP_GET, 1);
  assert.deepEqual([IOMMU_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_WRITEABLE, IOMMU_IOAS_MAP_READABLE], [1, 2, 4]);
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

test('struct iommu_ioas_map: 40 bytes, u64 user_va/length/iova at 16/24/32', () => {
  const buf = encodeIoasMap(3, 0x7f0000001000n, 0x200000n, 0x100000n,
    IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE);
  assert.equal(hex(buf), [
    '28000000', '07000000', '03000000', '00000000', // size, flags, ioas_id, __reserved
    '00100000', '007f0000', // user_va
    '00002000', '00000000', // length
    '00001000', '00000000', // iova
  ].join(' '));
});

test('struct iommu_ioas_unmap: 24 bytes, size/ioas_id then u64 iova/length', () => {
  assert.equal(hex(encodeIoasUnmap(5, 0x100000n, 0x200000n)), '18000000 05000000 00001000 00000000 00002000 00000000');
});

test('struct iommu_destroy: 8 bytes, size/id', () => {
  assert.equal(hex(encodeDestroy(9)), '08000000 09000000');
});

test('struct iommu_test_cmd MOCK_DOMAIN: 72 bytes (size covers `last`), op 2, id = the IOAS', () => {
  const buf = encodeTestMockDomain(4);
  assert.equal(buf.length, 72);
  assert.equal(buf.readUInt32LE(0), 72);
  assert.equal(buf.readUInt32LE(4), 2);
  assert.equal(buf.readUInt32LE(8), 4);
  assert.ok(buf.subarray(12).every((byte) => byte === 0), 'reserved, union and last are zero');
});

test('the wrappers throw SysError ENOTTY naming the command when the fd is not an iommufd', async () => {
  await withNoFdLeak(() => {
    const fd = memfd('not-iommufd');
    try {
      const calls: Array<[string, () => unknown]> = [
        ['IOMMU_OPTION', () => optionGet(fd, IOMMU_OPTION_RLIMIT_MODE)],
        ['IOMMU_OPTION', () => optionSet(fd, IOMMU_OPTION_RLIMIT_MODE, 1n)],
        ['IOMMU_IOAS_ALLOC', () => ioasAlloc(fd)],
        ['IOMMU_IOAS_MAP', () => ioasMap(fd, 1, 0x1000n, 0x1000n, 0n, IOMMU_IOAS_MAP_READABLE)],
        ['IOMMU_IOAS_UNMAP', () => ioasUnmap(fd, 1, 0n, 0x1000n)],
        ['IOMMU_DESTROY', () => destroyObject(fd, 1)],
        ['IOMMU_TEST_CMD(MOCK_DOMAIN)', () => testMockDomain(fd, 1)],
      ];
      for (const [command, call] of calls) {
        assert.throws(call, (e: unknown) => e instanceof SysError && e.code === 'ENOTTY' && e.syscall === `ioctl(${command})`, command);
      }
    } finally {
      closeFd(fd);
    }
  });
});
