// What a QEMU will pin through VFIO, read from QEMU itself over QMP: the size a lease needs,
// instead of "RAM + 1 GiB".
//
// What VFIO pins: its memory listener maps every RAM or ROM section of the system address space
// (AS "memory"), page by page, each mapping charged again (an alias of the same RAM counts
// twice); I/O regions, ROM devices (romd) and other devices' BARs (ramd) are not pinned. That
// set changes while the guest runs: firmware maps option ROM BARs while it copies them
// (the transient peak), the VGA VRAM BAR appears once the BAR is programmed (not yet under -S),
// the legacy window below 1 MiB switches between RAM, ROM and holes.
//
// The estimate, per region name N (the flat view's region names, the RAM blocks' names without
// their device path):  max(bytes of N mapped now, bytes of RAM blocks named N)
// summed over N, plus PINNED_MARGIN_BYTES. So every RAM block counts at its full size even when
// it is not mapped now (option ROMs, pc.rom, VRAM under -S, RAM hidden behind the VGA window),
// and aliases visible now count as often as they are mapped. fw_cfg blobs (/rom@...) are never
// mapped into guest memory and VFIO device BAR mmaps are never pinned: both are left out.
//
// Invariants:
// - Sources: HMP `info mtree -f` and `info ramblock` through `human-monitor-command`, and
//   `query-memory-size-summary` as a check: an estimate below the guest's RAM (base + plugged)
//   means the text was not understood, and is refused (SizingFailed), never returned.
// - Parsing is pure and tolerant of the known format variants (with or without "prio N, ",
//   "nv-" types, " @offset" and trailing " KVM"; `info ramblock` with or without newer QEMUs'
//   HVA and RO columns); a flat view without AS "memory" is refused, and so is any
//   `info ramblock` row not understood (skipping it would leave a block out of the estimate).
// - RAM blocks without a name are left out: QEMU names a block when it registers it for
//   migration, which every pinned kind (guest RAM, DIMMs in use, ROMs, VRAM) is; a VFIO BAR mmap
//   (ram_device, never pinned) is not, and QEMU 10 prints it unnamed. An unnamed block that is
//   mapped now still counts through the flat view.
// - QEMU's text is untrusted (a guest may own QEMU): a row longer than MAX_ROW_CHARS is refused
//   before any pattern runs on it, so no reply can make the parse take more than linear time
//   in the rows' number.
// - Every count is a whole number of 4 KiB pages of a range (VFIO maps page-aligned parts only).
// - Numbers are QEMU's word too: a range, block or total past 2^53, or a base-memory or
//   plugged-memory that is not a whole non-negative number, is refused (SizingFailed), so an
//   estimate is always a safe integer a lease can ask for.
import { formatSize } from '../shared/sizes.ts';

export const PAGE_BYTES = 4096;
/** Slack for what the model above cannot see (e.g. an alias firmware maps later); documented in README. */
export const PINNED_MARGIN_BYTES = 1024 * 1024;

export class SizingError extends Error {
  readonly errorName = 'SizingFailed';
  constructor(message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'SizingError';
  }
}

/** One region name in the estimate. */
export interface PinnedRegion {
  name: string;
  /** Bytes of this name VFIO would map now (page-aligned parts of RAM/ROM flat ranges). */
  mappedBytes: number;
  /** Bytes of RAM blocks with this name (0 if none). */
  blockBytes: number;
  /** max(mappedBytes, blockBytes): what the estimate counts. */
  countedBytes: number;
}

export interface PinnedEstimate {
  regions: PinnedRegion[];
  /** What VFIO would have pinned now (sum of mappedBytes). */
  mappedBytes: number;
  marginBytes: number;
  /** The size to lease: sum of countedBytes plus the margin, page-aligned. */
  estimateBytes: number;
  /** The guest's RAM as query-memory-size-summary says (base-memory + plugged-memory). */
  guestRamBytes: number;
}

/**
 * The longest `info mtree -f` / `info ramblock` row parsed. Real rows are under 200 characters;
 * the row patterns backtrack quadratically on long runs of spaces (16,000 took 182 ms), and a
 * QMP line may be 1 MiB, so a longer row is refused before any pattern sees it (1,024: a
 * 1 MiB reply of such rows parses in well under a second).
 */
export const MAX_ROW_CHARS = 1024;

const FLAT_RANGE = /^\s+([0-9a-f]+)-([0-9a-f]+) \((?:prio -?\d+, )?(nv-)?([a-z/]+)\): (.+)$/;
const PINNED_TYPES = new Set(['ram', 'rom']);

function pageAlignedBytes(start: bigint, lastByte: bigint): number {
  const page = BigInt(PAGE_BYTES);
  const first = (start + page - 1n) / page * page;
  const end = (lastByte + 1n) / page * page;
  return end > first ? safeBytes(end - first, 'a range') : 0;
}

/** A byte count QEMU printed, as a number; past 2^53 it is no size a lease can have: refused. */
function safeBytes(bytes: bigint, what: string): number {
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw new SizingError(`QEMU printed ${what} of ${bytes} bytes, past 2^53: no size is guessed`);
  return Number(bytes);
}

/** The rows of a table QEMU printed, each checked against MAX_ROW_CHARS first. */
function rowsOf(text: string, what: string): string[] {
  const rows = text.split(/\r?\n/);
  const long = rows.find((r) => r.length > MAX_ROW_CHARS);
  if (long !== undefined) throw new SizingError(`${what} printed a row of ${long.length} characters (at most ${MAX_ROW_CHARS} are parsed), so no size is guessed`);
  return rows;
}

/** Bytes VFIO maps now, per region name, from `info mtree -f` (the flat view of AS "memory"). */
export function parseFlatView(text: string): Map<string, number> {
  const views = text.split(/^(?=FlatView #)/m);
  const view = views.find((v) => /^ AS "memory", root: /m.test(v));
  if (view === undefined) throw new SizingError('`info mtree -f` shows no flat view for AS "memory"');
  const mapped = new Map<string, number>();
  for (const line of rowsOf(view, '`info mtree -f`')) {
    const m = FLAT_RANGE.exec(line);
    if (m === null) continue;
    const [, start = '', end = '', , type = '', rest = ''] = m;
    if (!PINNED_TYPES.has(type)) continue;
    const name = rest.replace(/ KVM$/, '').replace(/ @[0-9a-f]+$/, '');
    const bytes = pageAlignedBytes(BigInt(`0x${start}`), BigInt(`0x${end}`));
    mapped.set(name, (mapped.get(name) ?? 0) + bytes);
  }
  return mapped;
}

/** A VFIO device's BAR mmap (ram_device): "0000:00:03.0 BAR 0 mmaps[0]". Not pinnable. */
const VFIO_BAR_MMAP = / BAR \d+ mmaps\[\d+\]$/;

/**
 * One `info ramblock` row: name, PSize, Offset, Used, Total, and in newer QEMUs (10.0 has them,
 * 7.2 does not) HVA and RO (`rw`/`ro`).
 */
const RAM_BLOCK_ROW = /^(.*?)\s+\d+ [KMGT]?i?B\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x[0-9a-f]+(?:\s+0x[0-9a-f]+\s+r[ow])?\s*$/;

/** RAM block bytes per region name, from `info ramblock` (device path prefixes dropped). */
export function parseRamBlocks(text: string): Map<string, number> {
  const blocks = new Map<string, number>();
  const lines = rowsOf(text, '`info ramblock`');
  const header = lines.findIndex((l) => /Block Name\s+PSize\s+Offset\s+Used\s+Total/.test(l));
  if (header === -1) throw new SizingError('`info ramblock` printed no block table');
  for (const line of lines.slice(header + 1)) {
    if (line.trim() === '') continue;
    const m = RAM_BLOCK_ROW.exec(line);
    // A row skipped would be a block left out of the estimate: refuse instead.
    if (m === null) throw new SizingError(`an \`info ramblock\` row is not understood, so no size is guessed: ${JSON.stringify(line.trim())}`);
    const [, rawName = '', used = ''] = m;
    const idstr = rawName.trim();
    // No name: RAM QEMU never registered for migration, such as a VFIO BAR mmap (ram_device;
    // QEMU 10 prints those unnamed). Guest RAM, ROMs and VRAM migrate, so they are always named.
    if (idstr === '' || idstr.startsWith('/rom@') || VFIO_BAR_MMAP.test(idstr)) continue;
    const name = idstr.startsWith('/') ? idstr : idstr.slice(idstr.lastIndexOf('/') + 1);
    blocks.set(name, (blocks.get(name) ?? 0) + pageAlignedBytes(0n, BigInt(`0x${used}`) - 1n));
  }
  return blocks;
}

/** The estimate from the three QMP answers (pure). */
export function estimatePinned(flatView: string, ramBlocks: string, summary: { 'base-memory'?: unknown; 'plugged-memory'?: unknown }): PinnedEstimate {
  const mapped = parseFlatView(flatView);
  const blocks = parseRamBlocks(ramBlocks);
  const names = [...new Set([...mapped.keys(), ...blocks.keys()])].sort();
  const regions = names.map((name) => {
    const mappedBytes = mapped.get(name) ?? 0;
    const blockBytes = blocks.get(name) ?? 0;
    return { name, mappedBytes, blockBytes, countedBytes: Math.max(mappedBytes, blockBytes) };
  });
  const base = summary['base-memory'];
  const plugged = summary['plugged-memory'] ?? 0;
  if (typeof base !== 'number' || typeof plugged !== 'number') throw new SizingError('query-memory-size-summary has no base-memory');
  const guestRamBytes = base + plugged;
  if (![base, plugged, guestRamBytes].every((n) => Number.isSafeInteger(n) && n >= 0)) {
    throw new SizingError(`query-memory-size-summary says base-memory ${base} and plugged-memory ${plugged}, not byte counts: no size is guessed`);
  }
  const counted = regions.reduce((sum, r) => sum + r.countedBytes, 0);
  const mappedBytes = regions.reduce((sum, r) => sum + r.mappedBytes, 0);
  // Each part is below 2^53 (safeBytes); their sum may not be (past 2^53 it is neither exact nor a size).
  if (!Number.isSafeInteger(counted + PINNED_MARGIN_BYTES)) {
    throw new SizingError(`the memory layout QEMU printed adds up to about ${counted} bytes, past 2^53: no size is guessed`);
  }
  if (counted < guestRamBytes) {
    throw new SizingError(`the memory layout QEMU printed accounts for ${formatSize(counted)}, less than the guest's ` +
      `${formatSize(guestRamBytes)} of RAM: this QEMU's output is not understood, so no size is guessed`);
  }
  return {
    regions,
    mappedBytes,
    marginBytes: PINNED_MARGIN_BYTES,
    estimateBytes: Math.ceil((counted + PINNED_MARGIN_BYTES) / PAGE_BYTES) * PAGE_BYTES,
    guestRamBytes,
  };
}

/** The QMP calls sizing needs (QmpClient has it). */
export interface SizingQmp {
  execute(command: string, args?: Record<string, unknown>): Promise<unknown>;
}

async function hmp(qmp: SizingQmp, commandLine: string): Promise<string> {
  const out = await qmp.execute('human-monitor-command', { 'command-line': commandLine });
  if (typeof out !== 'string') throw new SizingError(`\`${commandLine}\` did not return text`);
  return out;
}

/** Reads the running (or -S paused) QEMU's layout and estimates what it will pin. */
export async function measurePinned(qmp: SizingQmp): Promise<PinnedEstimate> {
  const flat = await hmp(qmp, 'info mtree -f');
  const ramblock = await hmp(qmp, 'info ramblock');
  const summary = await qmp.execute('query-memory-size-summary');
  if (typeof summary !== 'object' || summary === null) throw new SizingError('query-memory-size-summary returned no object');
  return estimatePinned(flat, ramblock, summary as Record<string, unknown>);
}
