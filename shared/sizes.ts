// Human byte sizes, the one place that reads and writes them: parsing for config files and the
// CLI ("8G", "8GiB", "512 MiB", "1.5G", "4096"), formatSize/formatSizeApprox for the CLI and
// logs, describeBytes for the daemon's refusal reasons. Not protocol: the wire only ever
// carries byte counts as JSON integers. Pure functions (the core imports describeBytes).
//
// Invariants:
// - Every unit is binary: K = Ki = KiB = 2^10, M = 2^20, G = 2^30, T = 2^40 (QEMU's and
//   libvirt's shorthand: `-m 8G` is 8 GiB). Letters are case-insensitive.
// - Decimal-looking units (KB, MB, GB, TB, any case) are refused, not guessed: libvirt and
//   Kubernetes read "GB"/"G" as 10^9 while QEMU reads "G" as 2^30, and a limit that comes out 7%
//   too small makes QEMU abort on a DMA map. Decimal amounts are written as plain bytes.
// - Results are whole bytes in [0, Number.MAX_SAFE_INTEGER]; a fraction that does not come to a
//   whole number of bytes is an error, never rounded. Arithmetic is exact (BigInt).
// - formatSize is exact too: parseSize(formatSize(n)) === n for every valid n.

const UNIT_SHIFT: Readonly<Record<string, bigint>> = {
  '': 0n, b: 0n,
  k: 10n, ki: 10n, kib: 10n,
  m: 20n, mi: 20n, mib: 20n,
  g: 30n, gi: 30n, gib: 30n,
  t: 40n, ti: 40n, tib: 40n,
};

const DECIMAL_UNITS = new Set(['kb', 'mb', 'gb', 'tb']);

/** Longest input considered: far more than any real size, small enough to keep BigInt cheap. */
const MAX_INPUT_LENGTH = 64;

const ACCEPTED_FORMS = 'a whole number of bytes (4096) or a number with a binary unit K, M, G or T, '
  + 'optionally written Ki/KiB etc. (512M, 512MiB, 8G, 1.5 GiB)';

const SIZE_PATTERN = /^(\d+)(?:\.(\d+))?\s?([A-Za-z]*)$/;

/** A size string that could not be read; the message says what was wrong and what is accepted. */
export class SizeError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SizeError';
  }
}

/** Parses a size into bytes. Throws SizeError with the reason and the accepted forms. */
export function parseSize(text: string): number {
  const input = text.trim();
  if (input.length === 0) throw new SizeError(`empty size: expected ${ACCEPTED_FORMS}`);
  if (input.length > MAX_INPUT_LENGTH) {
    throw new SizeError(`size is ${input.length} characters long (at most ${MAX_INPUT_LENGTH}): expected ${ACCEPTED_FORMS}`);
  }
  const match = SIZE_PATTERN.exec(input);
  if (match === null) throw new SizeError(`cannot read ${JSON.stringify(input)} as a size: expected ${ACCEPTED_FORMS}`);
  const [, whole = '', fraction = '', unitText = ''] = match;
  const unit = unitText.toLowerCase();
  if (DECIMAL_UNITS.has(unit)) {
    throw new SizeError(`${JSON.stringify(input)}: the unit ${unitText} is ambiguous (10^n for libvirt and Kubernetes, 2^n for QEMU); `
      + `write ${whole}${fraction === '' ? '' : `.${fraction}`}${unitText.charAt(0).toUpperCase()}iB for binary units, or the exact number of bytes`);
  }
  const shift = UNIT_SHIFT[unit];
  if (shift === undefined) throw new SizeError(`${JSON.stringify(input)}: unknown unit ${JSON.stringify(unitText)}: expected ${ACCEPTED_FORMS}`);
  const scaled = BigInt(whole + fraction) << shift;
  const divisor = 10n ** BigInt(fraction.length);
  if (scaled % divisor !== 0n) {
    throw new SizeError(`${JSON.stringify(input)} is not a whole number of bytes (${formatRatio(scaled, divisor)} bytes)`);
  }
  const bytes = scaled / divisor;
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new SizeError(`${JSON.stringify(input)} is too large: at most ${Number.MAX_SAFE_INTEGER} bytes (2^53 - 1)`);
  }
  return Number(bytes);
}

const FORMAT_UNITS: readonly { name: string; shift: bigint }[] = [
  { name: 'TiB', shift: 40n },
  { name: 'GiB', shift: 30n },
  { name: 'MiB', shift: 20n },
  { name: 'KiB', shift: 10n },
];

/** Fraction digits formatSize may use; finer amounts drop to the next smaller unit. */
const FORMAT_FRACTION_DIGITS = 3;

/**
 * Formats a byte count exactly: the largest unit in which it is at least 1 and can be written
 * with at most 3 decimals ("8 GiB", "1.5 GiB", "1.125 GiB", "512 KiB"), else plain bytes ("1000 B").
 */
export function formatSize(bytes: number): string {
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    throw new RangeError(`formatSize: expected a whole number of bytes in [0, 2^53), got ${bytes}`);
  }
  const value = BigInt(bytes);
  const scale = 10n ** BigInt(FORMAT_FRACTION_DIGITS);
  for (const unit of FORMAT_UNITS) {
    const unitBytes = 1n << unit.shift;
    if (value < unitBytes) continue;
    const thousandths = value * scale;
    if (thousandths % unitBytes !== 0n) continue;
    return `${formatRatio(thousandths / unitBytes, scale)} ${unit.name}`;
  }
  return `${bytes} B`;
}

/**
 * Formats a byte count for a person at a glance: formatSize when that is exact in the largest
 * unit that fits ("8 GiB", "1.5 GiB"), else that unit rounded to 2 decimals and marked "~"
 * ("~21.19 GiB" where formatSize would say "22215258 KiB"). Never parse this back.
 */
export function formatSizeApprox(bytes: number): string {
  const exact = formatSize(bytes);
  const unit = FORMAT_UNITS.find((u) => bytes >= 2 ** Number(u.shift));
  if (unit === undefined || exact.endsWith(` ${unit.name}`)) return exact;
  return `~${(bytes / 2 ** Number(unit.shift)).toFixed(2)} ${unit.name}`;
}

/** describeBytes' units: up to PiB, so any safe integer gets a readable unit. */
const DESCRIBE_UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

/**
 * The daemon's style, for refusal reasons and logs: "5368709120 bytes (5 GiB)", the exact count
 * for the record and a 2-decimal binary unit for the operator ("1536 bytes (1.50 KiB)").
 */
export function describeBytes(bytes: number): string {
  let value = bytes;
  let unit = '';
  for (const u of DESCRIBE_UNITS) {
    if (value < 1024) break;
    value /= 1024;
    unit = u;
  }
  if (unit === '') return `${bytes} bytes`;
  const shown = Number.isInteger(value) ? String(value) : value.toFixed(2);
  return `${bytes} bytes (${shown} ${unit})`;
}

/** numerator/denominator as a decimal string, for denominators that are powers of ten. */
function formatRatio(numerator: bigint, denominator: bigint): string {
  const whole = numerator / denominator;
  const rest = numerator % denominator;
  if (rest === 0n) return whole.toString();
  const digits = denominator.toString().length - 1;
  return `${whole}.${rest.toString().padStart(digits, '0').replace(/0+$/, '')}`;
}
