// The RLIMIT_MEMLOCK a lease sets on its target: the VM's memory plus an overhead (libvirt adds
// 1 GiB for VFIO), rounded up to the page size because the kernel charges whole pages.
//
// Invariants:
// - Pure arithmetic on safe integers: every input and every result is a non-negative integer
//   <= Number.MAX_SAFE_INTEGER, so the sum and the rounding are exact in a double.
// - limitBytesFor(m, o, p) >= m + o, is a multiple of p, and is the smallest such value.
// - limitBytesFor(m, o, p) is representable exactly when m <= largestMemoryBytes(o, p); anything
//   else throws RangeError rather than returning a rounded, wrong limit.

function checkBytes(what: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new RangeError(`${what} must be a non-negative safe integer, got ${String(value)}`);
  }
}

/** A power of two that is a safe integer (bitwise tricks stop at 2^31, so divide instead). */
function checkPageSize(pageSize: number): void {
  let rest = pageSize;
  while (Number.isSafeInteger(rest) && rest > 1 && rest % 2 === 0) rest /= 2;
  if (rest !== 1) {
    throw new RangeError(`pageSize must be a power of two, got ${String(pageSize)}`);
  }
}

/** The largest multiple of pageSize that is still a safe integer. */
function largestPageMultiple(pageSize: number): number {
  return Math.floor(Number.MAX_SAFE_INTEGER / pageSize) * pageSize;
}

/**
 * The largest memory size whose limit (with this overhead and page size) is representable.
 * Throws RangeError for invalid inputs, or if the overhead alone is already too large.
 */
export function largestMemoryBytes(overheadBytes: number, pageSize: number): number {
  checkBytes('overheadBytes', overheadBytes);
  checkPageSize(pageSize);
  const room = largestPageMultiple(pageSize) - overheadBytes;
  if (room < 0) {
    throw new RangeError(`overheadBytes ${overheadBytes} leaves no representable limit with page size ${pageSize}`);
  }
  return room;
}

/**
 * memoryBytes + overheadBytes rounded up to a multiple of pageSize.
 * Throws RangeError if an input is not a non-negative safe integer, pageSize is not a power of
 * two, or the result would exceed Number.MAX_SAFE_INTEGER.
 */
export function limitBytesFor(memoryBytes: number, overheadBytes: number, pageSize: number): number {
  checkBytes('memoryBytes', memoryBytes);
  checkBytes('overheadBytes', overheadBytes);
  checkPageSize(pageSize);
  // Both terms are <= 2^53 - 1; if the true sum is larger, its double is >= 2^53 (rounding is
  // monotonic and 2^53 is exact), so this comparison cannot be fooled by rounding.
  const sum = memoryBytes + overheadBytes;
  const remainder = sum % pageSize;
  const limit = remainder === 0 ? sum : sum + (pageSize - remainder);
  if (limit > Number.MAX_SAFE_INTEGER) {
    throw new RangeError(
      `limit for memoryBytes ${memoryBytes} + overheadBytes ${overheadBytes} rounded to page size ${pageSize} ` +
      `exceeds ${Number.MAX_SAFE_INTEGER} (largest memoryBytes here: ${Math.max(0, largestPageMultiple(pageSize) - overheadBytes)})`,
    );
  }
  return limit;
}
