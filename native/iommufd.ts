// The iommufd ioctls the broker and the kernel lab use, as typed functions over ioctl().
//
// Invariants:
// - Struct layouts follow include/uapi/linux/iommufd.h (and iommufd_test.h for the selftest
//   command) exactly: little-endian fields at fixed offsets, `size` first and equal to the
//   whole struct, reserved fields zero (the kernel rejects non-zero trailing bytes with E2BIG).
//   Each encode* function builds one struct and is unit-tested byte by byte.
// - Every command is _IO(';', nr): no size or direction bits in the request number.
// - A failed ioctl throws SysError naming the command (e.g. 'ioctl(IOMMU_OPTION)'); no
//   function here owns an fd: the iommufd fd belongs to the caller.
import { ioctl } from './sys.ts';

const IOMMUFD_TYPE = 0x3b; // ';'
const IOMMUFD_CMD_BASE = 0x80;
function iommufdIo(nr: number): number {
  return (IOMMUFD_TYPE << 8) | nr;
}

export const IOMMU_DESTROY = iommufdIo(IOMMUFD_CMD_BASE + 0);
export const IOMMU_IOAS_ALLOC = iommufdIo(IOMMUFD_CMD_BASE + 1);
export const IOMMU_IOAS_MAP = iommufdIo(IOMMUFD_CMD_BASE + 5);
export const IOMMU_IOAS_UNMAP = iommufdIo(IOMMUFD_CMD_BASE + 6);
export const IOMMU_OPTION = iommufdIo(IOMMUFD_CMD_BASE + 7);
/** CONFIG_IOMMUFD_TEST only (the selftest interface the kernel lab enables). */
export const IOMMU_TEST_CMD = iommufdIo(IOMMUFD_CMD_BASE + 32);

export const IOMMU_OPTION_RLIMIT_MODE = 0;
export const IOMMU_OPTION_HUGE_PAGES = 1;
export const IOMMU_OPTION_OP_SET = 0;
export const IOMMU_OPTION_OP_GET = 1;

export const IOMMU_IOAS_MAP_FIXED_IOVA = 1;
export const IOMMU_IOAS_MAP_WRITEABLE = 2;
export const IOMMU_IOAS_MAP_READABLE = 4;

export const IOMMU_TEST_OP_MOCK_DOMAIN = 2;

export const OPTION_SIZE = 24;
export const IOAS_ALLOC_SIZE = 12;
export const IOAS_MAP_SIZE = 40;
export const IOAS_UNMAP_SIZE = 24;
export const DESTROY_SIZE = 8;
/** u32 size, op, id, __reserved; a 48-byte union; u32 last; padded to 8: 72. */
export const TEST_CMD_SIZE = 72;

/** struct iommu_option: size@0 option_id@4 op(u16)@8 __reserved(u16)@10 object_id@12 val64@16. */
export function encodeOption(op: number, optionId: number, objectId: number, val64: bigint): Buffer {
  const buf = Buffer.alloc(OPTION_SIZE);
  buf.writeUInt32LE(OPTION_SIZE, 0);
  buf.writeUInt32LE(optionId, 4);
  buf.writeUInt16LE(op, 8);
  buf.writeUInt32LE(objectId, 12);
  buf.writeBigUInt64LE(val64, 16);
  return buf;
}

/** struct iommu_ioas_alloc: size@0 flags@4 out_ioas_id@8. */
export function encodeIoasAlloc(): Buffer {
  const buf = Buffer.alloc(IOAS_ALLOC_SIZE);
  buf.writeUInt32LE(IOAS_ALLOC_SIZE, 0);
  return buf;
}

/** struct iommu_ioas_map: size@0 flags@4 ioas_id@8 __reserved@12 user_va@16 length@24 iova@32. */
export function encodeIoasMap(ioasId: number, userVa: bigint, length: bigint, iova: bigint, flags: number): Buffer {
  const buf = Buffer.alloc(IOAS_MAP_SIZE);
  buf.writeUInt32LE(IOAS_MAP_SIZE, 0);
  buf.writeUInt32LE(flags, 4);
  buf.writeUInt32LE(ioasId, 8);
  buf.writeBigUInt64LE(userVa, 16);
  buf.writeBigUInt64LE(length, 24);
  buf.writeBigUInt64LE(iova, 32);
  return buf;
}

/** struct iommu_ioas_unmap: size@0 ioas_id@4 iova@8 length@16 (written back: bytes unmapped). */
export function encodeIoasUnmap(ioasId: number, iova: bigint, length: bigint): Buffer {
  const buf = Buffer.alloc(IOAS_UNMAP_SIZE);
  buf.writeUInt32LE(IOAS_UNMAP_SIZE, 0);
  buf.writeUInt32LE(ioasId, 4);
  buf.writeBigUInt64LE(iova, 8);
  buf.writeBigUInt64LE(length, 16);
  return buf;
}

/** struct iommu_destroy: size@0 id@4. */
export function encodeDestroy(id: number): Buffer {
  const buf = Buffer.alloc(DESTROY_SIZE);
  buf.writeUInt32LE(DESTROY_SIZE, 0);
  buf.writeUInt32LE(id, 4);
  return buf;
}

/** struct iommu_test_cmd: size@0 op@4 id@8 __reserved@12 union@16..63 last@64, 72 bytes. */
export function encodeTestMockDomain(ioasId: number): Buffer {
  const buf = Buffer.alloc(TEST_CMD_SIZE);
  buf.writeUInt32LE(TEST_CMD_SIZE, 0);
  buf.writeUInt32LE(IOMMU_TEST_OP_MOCK_DOMAIN, 4);
  buf.writeUInt32LE(ioasId, 8);
  return buf;
}

/** IOMMU_OPTION GET: the option's value (RLIMIT_MODE is global: objectId 0). */
export function optionGet(fd: number, optionId: number, objectId = 0): bigint {
  const buf = encodeOption(IOMMU_OPTION_OP_GET, optionId, objectId, 0n);
  ioctl(fd, IOMMU_OPTION, buf, 'IOMMU_OPTION');
  return buf.readBigUInt64LE(16);
}

/** IOMMU_OPTION SET. RLIMIT_MODE needs CAP_SYS_RESOURCE and an fd with no objects yet (EBUSY). */
export function optionSet(fd: number, optionId: number, value: bigint, objectId = 0): void {
  ioctl(fd, IOMMU_OPTION, encodeOption(IOMMU_OPTION_OP_SET, optionId, objectId, value), 'IOMMU_OPTION');
}

/** IOMMU_IOAS_ALLOC: a new IO address space; returns its id. */
export function ioasAlloc(fd: number): number {
  const buf = encodeIoasAlloc();
  ioctl(fd, IOMMU_IOAS_ALLOC, buf, 'IOMMU_IOAS_ALLOC');
  return buf.readUInt32LE(8);
}

/**
 * IOMMU_IOAS_MAP of [userVa, userVa+length) at iova (with FIXED_IOVA) or at an iova the kernel
 * picks; returns the iova used. Pins pages (charged per RLIMIT_MODE) once a domain is attached.
 */
export function ioasMap(fd: number, ioasId: number, userVa: bigint, length: bigint, iova: bigint, flags: number): bigint {
  const buf = encodeIoasMap(ioasId, userVa, length, iova, flags);
  ioctl(fd, IOMMU_IOAS_MAP, buf, 'IOMMU_IOAS_MAP');
  return buf.readBigUInt64LE(32);
}

/** IOMMU_IOAS_UNMAP of [iova, iova+length); returns the bytes unmapped. */
export function ioasUnmap(fd: number, ioasId: number, iova: bigint, length: bigint): bigint {
  const buf = encodeIoasUnmap(ioasId, iova, length);
  ioctl(fd, IOMMU_IOAS_UNMAP, buf, 'IOMMU_IOAS_UNMAP');
  return buf.readBigUInt64LE(16);
}

/** IOMMU_DESTROY of any object id (IOAS, HWPT, device...). */
export function destroyObject(fd: number, id: number): void {
  ioctl(fd, IOMMU_DESTROY, encodeDestroy(id), 'IOMMU_DESTROY');
}

export interface MockDomain { stdevId: number; hwptId: number; idevId: number }

/** Selftest: attaches a mock device + domain to the IOAS so IOAS_MAP really pins pages. */
export function testMockDomain(fd: number, ioasId: number): MockDomain {
  const buf = encodeTestMockDomain(ioasId);
  ioctl(fd, IOMMU_TEST_CMD, buf, 'IOMMU_TEST_CMD(MOCK_DOMAIN)');
  return { stdevId: buf.readUInt32LE(16), hwptId: buf.readUInt32LE(20), idevId: buf.readUInt32LE(24) };
}
