// Sizing a lease from what QEMU will pin: the parsers on QEMU 7.2's real output (saved from
// `-M q35 -m 64M` with default devices, paused under -S and running SeaBIOS, and `-M pc` with a
// 64 MiB DIMM), on QEMU 10.0's (the host lab's QEMU 10.0.13, `-M q35 -m 64M,slots=2,maxmem=512M`,
// default devices and a pcie-root-port, under -S and running SeaBIOS, and under -S with the edu
// device attached by vfio-pci in the host lab: its `info ramblock` has two more columns, and an
// unnamed row for the device's BAR mmap), on the format variants of other versions, and against the host's real QEMU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { estimatePinned, measurePinned, parseFlatView, parseRamBlocks, MAX_ROW_CHARS, PINNED_MARGIN_BYTES, SizingError } from '../../client/qmp-sizing.ts';
import { QmpClient } from '../../client/qmp.ts';
import { startQemu, stopQemu } from './qemu.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const fixture = (name: string, version = '7.2'): string => readFileSync(join(import.meta.dirname, 'fixtures', `qemu-${version}-${name}.txt`), 'utf8');
const summary = (base: number, plugged = 0): Record<string, unknown> => ({ 'base-memory': base, 'plugged-memory': plugged });

test('running q35 with std VGA and e1000e: mapped now = the 82,048 kB VmPin measured on QEMU 10; every ROM counted', () => {
  const e = estimatePinned(fixture('q35-running.mtree'), fixture('q35-running.ramblock'), summary(64 * MiB));
  assert.equal(e.mappedBytes, 82_048 * KiB, 'RAM less the VGA window, VRAM, pc.bios');
  const counted = Object.fromEntries(e.regions.map((r) => [r.name, [r.mappedBytes / KiB, r.blockBytes / KiB]]));
  assert.deepEqual(counted, {
    'e1000e.rom': [0, 256], 'pc.bios': [256, 256], 'pc.ram': [65_408, 65_536], 'pc.rom': [0, 128], 'vga.rom': [0, 64], 'vga.vram': [16_384, 16_384],
  });
  assert.equal(e.estimateBytes, 82_624 * KiB + PINNED_MARGIN_BYTES);
  assert.ok(e.estimateBytes > 82_304 * KiB, 'above the transient peak while SeaBIOS copies option ROMs (facts)');
});

test('the same VM under -S (before firmware): VRAM not mapped yet but counted, the BIOS alias counted twice', () => {
  const e = estimatePinned(fixture('q35-S.mtree'), fixture('q35-S.ramblock'), summary(64 * MiB));
  assert.equal(e.mappedBytes, 65_664 * KiB);
  const bios = e.regions.find((r) => r.name === 'pc.bios');
  assert.deepEqual([bios?.mappedBytes, bios?.countedBytes], [384 * KiB, 384 * KiB], 'pc.bios at 4 GiB - 256 KiB and its ISA alias');
  assert.equal(e.regions.find((r) => r.name === 'vga.vram')?.countedBytes, 16 * MiB);
  assert.equal(e.estimateBytes, 82_752 * KiB + PINNED_MARGIN_BYTES);
});

test('a plugged DIMM counts by its backend name, once', () => {
  const e = estimatePinned(fixture('pc-running-dimm.mtree'), fixture('pc-running-dimm.ramblock'), summary(64 * MiB, 64 * MiB));
  assert.deepEqual(e.regions.find((r) => r.name === 'dimm-0-mem'), { name: 'dimm-0-mem', mappedBytes: 64 * MiB, blockBytes: 64 * MiB, countedBytes: 64 * MiB });
  assert.equal(e.guestRamBytes, 128 * MiB);
  assert.equal(e.estimateBytes, (82_624 + 65_536) * KiB + PINNED_MARGIN_BYTES);
});

test('QEMU 10.0 (HVA and RO columns in info ramblock): under -S every RAM block counts, VRAM and ROMs included', () => {
  const e = estimatePinned(fixture('q35-S.mtree', '10.0'), fixture('q35-S.ramblock', '10.0'), summary(64 * MiB));
  assert.equal(e.mappedBytes, 65_664 * KiB, 'RAM less the legacy window, pc.rom, pc.bios and its ISA alias');
  const counted = Object.fromEntries(e.regions.map((r) => [r.name, [r.mappedBytes / KiB, r.blockBytes / KiB]]));
  assert.deepEqual(counted, {
    'e1000e.rom': [0, 256], 'pc.bios': [384, 256], 'pc.ram': [65_152, 65_536], 'pc.rom': [128, 128], 'vga.rom': [0, 64], 'vga.vram': [0, 16_384],
  });
  assert.equal(e.estimateBytes, 82_752 * KiB + PINNED_MARGIN_BYTES, 'the 16 MiB VRAM SeaBIOS maps later is in the estimate');
});

test('QEMU 10.0 running SeaBIOS: mapped now = the 82,048 kB VmPin measured on QEMU 10, the estimate as on 7.2', () => {
  const e = estimatePinned(fixture('q35-running.mtree', '10.0'), fixture('q35-running.ramblock', '10.0'), summary(64 * MiB));
  assert.equal(e.mappedBytes, 82_048 * KiB);
  assert.equal(e.regions.find((r) => r.name === 'vga.vram')?.blockBytes, 16 * MiB);
  assert.equal(e.estimateBytes, 82_624 * KiB + PINNED_MARGIN_BYTES);
});

test('QEMU 10.0 with the edu device by vfio-pci (host lab, under -S): its BAR mmap is an unnamed RAM block, never pinned, not counted', () => {
  const without = estimatePinned(fixture('q35-S.mtree', '10.0'), fixture('q35-S.ramblock', '10.0'), summary(64 * MiB));
  const blocks = parseRamBlocks(fixture('q35-S-vfio.ramblock', '10.0'));
  assert.deepEqual([...blocks.keys()].sort(), ['e1000e.rom', 'pc.bios', 'pc.ram', 'pc.rom', 'vga.rom', 'vga.vram'],
    'the 1 MiB rw block without a name (edu\'s BAR 0 mmap, a ram_device QEMU never registers for migration) is left out');
  const e = estimatePinned(fixture('q35-S-vfio.mtree', '10.0'), fixture('q35-S-vfio.ramblock', '10.0'), summary(64 * MiB));
  assert.equal(e.estimateBytes, without.estimateBytes, 'the VFIO device adds nothing VFIO pins: sizing before device_add is right');
});

const BLOCKS_HEADER = '              Block Name    PSize              Offset               Used              Total\r\n';

test('format variants: no "prio", nv- types, " KVM", offsets; only ram/rom pinned; partial pages dropped', () => {
  const flat = [
    'FlatView #0', ' AS "I/O", root: io', '  0000000000000000-0000000000000fff (prio 0, ram): not-memory-as',
    'FlatView #1', ' AS "memory", root: system', ' Root memory region: system',
    '  0000000000000000-0000000000000fff (ram): a KVM',
    '  0000000000001000-0000000000002fff (prio 1, nv-ram): b @0000000000001000',
    '  0000000000003000-0000000000003fff (prio 0, romd): flash',
    '  0000000000004000-0000000000004fff (prio 0, ramd): 0000:00:03.0 BAR 0 mmaps[0]',
    '  0000000000005000-0000000000005fff (prio 0, i/o): io-thing',
    '  0000000000006800-0000000000007fff (prio 0, ram): half',
    '  0000000000008000-0000000000008fff (prio 0, rom): a @0000000000001000',
  ].join('\r\n');
  assert.deepEqual([...parseFlatView(flat)], [['a', 8192], ['b', 8192], ['half', 4096]]);
  const blocks = BLOCKS_HEADER + [
    '                     a    4 KiB  0x0000000000000000 0x0000000000002000 0x0000000000002000',
    '  0000:00:03.0/dev.rom    4 KiB  0x0000000000002000 0x0000000000000800 0x0000000000001000',
    '    /rom@etc/acpi/tables    4 KiB  0x0000000000003000 0x0000000000020000 0x0000000000200000',
    '0000:00:03.0 BAR 0 mmaps[0]    4 KiB  0x0000000000004000 0x0000000000100000 0x0000000000100000',
  ].join('\r\n');
  assert.deepEqual([...parseRamBlocks(blocks)], [['a', 8192], ['dev.rom', 0]], 'fw_cfg blobs and VFIO BAR mmaps are never pinned');
});

test('output that is not understood is refused, never guessed', () => {
  assert.throws(() => parseFlatView('FlatView #0\n AS "I/O", root: io\n'), SizingError);
  assert.throws(() => parseRamBlocks('unknown command: info ramblock'), SizingError);
  // A block row in a layout not understood is refused: skipping it would leave that block out
  // of the estimate (QEMU 10's extra columns once made every row vanish, VRAM and ROMs with them).
  assert.throws(() => parseRamBlocks(`${BLOCKS_HEADER}  pc.ram    4 KiB  0x0 0x0000000001000000 0x0000000001000000 0x7f00 rw extra\n`),
    /info ramblock.*not understood.*pc\.ram/);
  const flat = 'FlatView #0\n AS "memory", root: system\n  0000000000000000-0000000000ffffff (prio 0, ram): pc.ram\n';
  const blocks = `${BLOCKS_HEADER}  pc.ram    4 KiB  0x0 0x0000000001000000 0x0000000001000000\n`;
  assert.equal(estimatePinned(flat, blocks, summary(16 * MiB)).estimateBytes, 16 * MiB + PINNED_MARGIN_BYTES);
  assert.throws(() => estimatePinned(flat, blocks, summary(32 * MiB)), /accounts for 16 MiB, less than the guest's 32 MiB of RAM/);
  assert.throws(() => estimatePinned(flat, blocks, {}), /no base-memory/);
});

test('the host\'s real QEMU: -M pc -m 64M with default devices, paused under -S', async () => {
  const qemu = await startQemu(['-M', 'pc', '-accel', 'tcg', '-m', '64M,slots=2,maxmem=512M', '-S']);
  try {
    const qmp = await QmpClient.connect(qemu.qmp);
    try {
      const e = await measurePinned(qmp);
      assert.equal(e.guestRamBytes, 64 * MiB);
      assert.equal(e.mappedBytes, 65_664 * KiB, 'RAM less the legacy window, pc.rom, pc.bios and its ISA alias');
      assert.deepEqual(e.regions.map((r) => r.name), ['e1000.rom', 'pc.bios', 'pc.ram', 'pc.rom', 'vga.rom', 'vga.vram']);
      assert.equal(e.estimateBytes, 82_752 * KiB + PINNED_MARGIN_BYTES);
    } finally {
      qmp.close();
    }
  } finally {
    await stopQemu(qemu);
  }
});

test('a hostile QEMU\'s overlong rows are refused before any pattern runs on them (the patterns backtrack quadratically)', () => {
  // Seen: one 16,000-space row took 182 ms in parseRamBlocks, so a 1 MiB QMP line (what the
  // QMP client accepts) would hold iommufdctl for minutes. Real rows are under 200 characters.
  const spaces = ' '.repeat(MAX_ROW_CHARS + 1);
  assert.throws(() => parseRamBlocks(`${BLOCKS_HEADER}a${spaces}x\n`), /row of \d+ characters/);
  assert.throws(() => parseFlatView(`FlatView #0\n AS "memory", root: system\n  0000000000000000-${spaces}\n`), /row of \d+ characters/);
  const longest = `${BLOCKS_HEADER}  ${'r'.repeat(MAX_ROW_CHARS - 80)}    4 KiB  0x0 0x0000000001000000 0x0000000001000000\n`;
  assert.equal(parseRamBlocks(longest).size, 1, 'a long but bounded name still parses');
});

test('a hostile QEMU\'s numbers: sizes past 2^53 and a base-memory that is no byte count are refused, never an estimate', () => {
  // QEMU's hex is unbounded: a range of 300 hex digits came out as an estimate of Infinity, and
  // iommufdctl then failed in formatSize (an internal error) instead of refusing with SizingFailed.
  const flat = (ranges: string): string => `FlatView #0\n AS "memory", root: system\n${ranges}`;
  const blocks = `${BLOCKS_HEADER}  pc.ram    4 KiB  0x0 0x0000000001000000 0x0000000001000000\n`;
  const pcRam = '  0000000000000000-0000000000ffffff (prio 0, ram): pc.ram\n';
  const huge = `  0000000000000000-${'f'.repeat(300)} (prio 0, ram): pc.ram\n`;
  assert.throws(() => estimatePinned(flat(huge), blocks, summary(16 * MiB)), SizingError);
  // Each range a safe size, their sum not.
  const half = '  0000000000000000-000fffffffffffff (prio 0, ram): ';
  assert.throws(() => estimatePinned(flat(`${half}a\n${half}b\n${half}c\n`), blocks, summary(16 * MiB)), SizingError);
  const hugeBlock = `${BLOCKS_HEADER}  pc.ram    4 KiB  0x0 0x${'f'.repeat(40)} 0x${'f'.repeat(40)}\n`;
  assert.throws(() => estimatePinned(flat(pcRam), hugeBlock, summary(16 * MiB)), SizingError);
  // A negative or fractional guest RAM would make the "less than the guest's RAM" check vacuous.
  for (const bad of [summary(-1), summary(16 * MiB, -16 * MiB), summary(0.5), summary(2 ** 60)]) {
    assert.throws(() => estimatePinned(flat(pcRam), blocks, bad), SizingError, JSON.stringify(bad));
  }
  assert.equal(estimatePinned(flat(pcRam), blocks, summary(16 * MiB)).estimateBytes, 16 * MiB + PINNED_MARGIN_BYTES, 'the honest control');
});
