// The iommufd ioctls the broker (IOMMU_OPTION, including the per-FD pinned-memory limit of
// kernel/iommufd-pinned-limit/) and the kernel lab's in-process checks
// (IOMMU_IOAS_ALLOC) use, as typed functions over ioctl(). Mapping, unmapping, destroying and
// the selftest mock domain are not here: the daemon never does them, and the lab does them in
// its own C client (test/lab/client/lab-client.c).
//
// Invariants:
// - Struct layouts follow include/uapi/linux/iommufd.h exactly: little-endian fields at fixed offsets, `size` first and equal to the
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

export const IOMMU_IOAS_ALLOC = iommufdIo(IOMMUFD_CMD_BASE + 1);
export const IOMMU_OPTION = iommufdIo(IOMMUFD_CMD_BASE + 7);

export const IOMMU_OPTION_RLIMIT_MODE = 0;
export const IOMMU_OPTION_HUGE_PAGES = 1;
/**
 * The per-FD pinned-memory limit (kernel/iommufd-pinned-limit/, not upstream): bytes, U64_MAX =
 * no limit (the default); raising needs CAP_SYS_RESOURCE of the caller, lowering does not. A
 * kernel without the series answers EOPNOTSUPP to GET, which is how the broker probes for it.
 */
export const IOMMU_OPTION_PINNED_LIMIT = 4;
/** The bytes currently charged against IOMMU_OPTION_PINNED_LIMIT (GET only). */
export const IOMMU_OPTION_PINNED_USAGE = 5;
/** IOMMU_OPTION_PINNED_LIMIT's "no limit". */
export const PINNED_UNLIMITED = 0xffff_ffff_ffff_ffffn;
export const IOMMU_OPTION_OP_SET = 0;
export const IOMMU_OPTION_OP_GET = 1;

export const OPTION_SIZE = 24;
export const IOAS_ALLOC_SIZE = 12;

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


/** IOMMU_OPTION SET PINNED_LIMIT on this FD (global: object 0). Raising needs CAP_SYS_RESOURCE (EPERM). */
export function setPinnedLimit(fd: number, limitBytes: number): void {
  optionSet(fd, IOMMU_OPTION_PINNED_LIMIT, BigInt(limitBytes));
}

/** IOMMU_OPTION GET PINNED_USAGE: the bytes this FD holds pinned now. */
export function pinnedUsage(fd: number): bigint {
  return optionGet(fd, IOMMU_OPTION_PINNED_USAGE);
}
