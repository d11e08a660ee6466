// FrameDecoder and encodeFrame. fds here are plain numbers (>= 1000) that are never opened or
// closed: the decoder does no I/O, so no real fd is involved.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  FrameDecoder, FramingError, MAX_FDS_PER_FRAME, MAX_FRAME_BYTES, MAX_REPLY_FRAME_BYTES, encodeFrame, type Frame,
} from '../../protocol/framing.ts';

const text = (frames: Frame[]): string[] => frames.map((f) => f.bytes.toString('utf8'));

test('splits NUL-terminated messages and keeps an unfinished one for later', () => {
  const d = new FrameDecoder();
  assert.deepEqual(text(d.push(Buffer.from('{"a":1}\0{"b"'), [])), ['{"a":1}']);
  assert.equal(d.hasPartialFrame, true);
  assert.deepEqual(text(d.push(Buffer.from(':2}\0\0{}\0'), [])), ['{"b":2}', '', '{}']);
  assert.equal(d.hasPartialFrame, false);
  assert.deepEqual(d.push(Buffer.alloc(0), []), []);
});

test('fds belong to the message that holds the chunk\'s last byte (what a Unix stream recvmsg delivers)', () => {
  const d = new FrameDecoder();
  // fd-less messages glued in front of an fd-carrying one: the fds are the last message's.
  const first = d.push(Buffer.from('one\0two\0'), [1001]);
  assert.deepEqual(first.map((f) => [f.bytes.toString(), f.fds]), [['one', []], ['two', [1001]]]);
  // A read that ends inside a message (its first piece carried the fds): they wait for its NUL.
  assert.deepEqual(d.push(Buffer.from('three\0fo'), [1002, 1003]).map((f) => [f.bytes.toString(), f.fds]), [['three', []]]);
  assert.deepEqual(d.push(Buffer.from('ur\0'), []).map((f) => [f.bytes.toString(), f.fds]), [['four', [1002, 1003]]]);
  // A chunk that only terminates a message still ends it.
  d.push(Buffer.from('five'), []);
  assert.deepEqual(d.push(Buffer.from('\0'), [1004]).map((f) => f.fds), [[1004]]);
  assert.deepEqual(d.takeHeldFds(), []);
});

test('a frame of exactly MAX_FRAME_BYTES is accepted, one byte more is a FramingError', () => {
  const exact = Buffer.alloc(MAX_FRAME_BYTES + 1, 0x61);
  exact[MAX_FRAME_BYTES] = 0;
  const frames = new FrameDecoder().push(exact, []);
  assert.equal(frames.length, 1);
  assert.equal(frames[0]?.bytes.length, MAX_FRAME_BYTES);

  const over = Buffer.alloc(MAX_FRAME_BYTES + 2, 0x61);
  over[MAX_FRAME_BYTES + 1] = 0;
  assert.throws(() => new FrameDecoder().push(over, []), (e: unknown) => e instanceof FramingError && e.problem === 'frame-too-large');
});

test('an unterminated frame is refused as soon as it passes the cap, without waiting for the NUL', () => {
  const d = new FrameDecoder({ maxFrameBytes: 10 });
  d.push(Buffer.from('0123456789'), [2001]);
  assert.throws(() => d.push(Buffer.from('x'), [2002]), (e: unknown) => e instanceof FramingError && e.problem === 'frame-too-large');
  assert.deepEqual(d.takeHeldFds().sort(), [2001, 2002]);
});

test('more than MAX_FDS_PER_FRAME fds on one message is a FramingError; the fds are all returned', () => {
  const d = new FrameDecoder();
  const fds = Array.from({ length: MAX_FDS_PER_FRAME + 1 }, (_, i) => 3000 + i);
  assert.throws(() => d.push(Buffer.from('{}\0'), fds), (e: unknown) => e instanceof FramingError && e.problem === 'too-many-fds');
  assert.deepEqual(d.takeHeldFds().sort(), fds);
  // Exactly the cap is fine, even spread over two chunks of one message.
  const ok = new FrameDecoder();
  ok.push(Buffer.from('{'), [1, 2]);
  assert.deepEqual(ok.push(Buffer.from('}\0'), [3, 4]).map((f) => f.fds), [[1, 2, 3, 4]]);
});

test('after a FramingError the decoder stays failed and keeps every fd for takeHeldFds', () => {
  const d = new FrameDecoder({ maxFrameBytes: 4 });
  // The chunk completes "ok" (with fd 10) and then breaks the cap: "ok" is never returned.
  assert.throws(() => d.push(Buffer.from('ok\0toolong'), [10]), FramingError);
  assert.equal(d.failed, true);
  assert.throws(() => d.push(Buffer.from('a\0'), [11]), (e: unknown) => e instanceof FramingError && e.problem === 'decoder-failed');
  assert.deepEqual(d.takeHeldFds().sort((a, b) => a - b), [10, 11]);
  assert.deepEqual(d.takeHeldFds(), []);
});

test('takeHeldFds at EOF returns the fds of an unfinished message', () => {
  const d = new FrameDecoder();
  d.push(Buffer.from('{"method":'), [4001]);
  assert.equal(d.hasPartialFrame, true);
  assert.deepEqual(d.takeHeldFds(), [4001]);
});

test('frames are copies: reusing the chunk buffer does not change them', () => {
  const d = new FrameDecoder();
  const chunk = Buffer.from('abc\0de');
  const [frame] = d.push(chunk, []);
  chunk.fill(0x7a);
  assert.equal(frame?.bytes.toString(), 'abc');
  assert.deepEqual(text(d.push(Buffer.from('f\0'), [])), ['def']);
});

test('NUL is searched for only in new bytes (no rescanning of buffered ones)', (t) => {
  let scanned = 0;
  const original = Buffer.prototype.indexOf;
  t.mock.method(Buffer.prototype, 'indexOf', function (this: Buffer, value: number, byteOffset?: number) {
    scanned += this.length - (byteOffset ?? 0);
    return original.call(this, value, byteOffset);
  });
  const d = new FrameDecoder();
  const total = 4096;
  for (let i = 0; i < total; i++) d.push(Buffer.from('x'), []);
  const frames = d.push(Buffer.from('\0'), []);
  t.mock.restoreAll();
  assert.equal(frames[0]?.bytes.length, total);
  // At least every pushed byte (so the spy saw the scans), at most every pushed byte once.
  assert.ok(scanned >= total && scanned <= total + 1, `scanned ${scanned} bytes for ${total + 1} pushed`);
});

test('encodeFrame writes JSON and one NUL; strings containing U+0000 are escaped', () => {
  const frame = encodeFrame({ a: 'x\u0000y', b: [1, 2] });
  assert.equal(frame[frame.length - 1], 0);
  assert.equal(frame.indexOf(0), frame.length - 1);
  assert.deepEqual(JSON.parse(frame.subarray(0, -1).toString('utf8')), { a: 'x\u0000y', b: [1, 2] });
  assert.throws(() => encodeFrame(undefined), TypeError);
  assert.throws(() => encodeFrame({ big: 'x'.repeat(100) }, 50), (e: unknown) => e instanceof FramingError && e.problem === 'frame-too-large');
  assert.ok(MAX_REPLY_FRAME_BYTES >= MAX_FRAME_BYTES);
});

test('encodeFrame output decodes back to the same value', () => {
  fc.assert(fc.property(fc.jsonValue(), (value) => {
    const frames = new FrameDecoder({ maxFrameBytes: MAX_REPLY_FRAME_BYTES }).push(encodeFrame(value), []);
    assert.equal(frames.length, 1);
    assert.deepEqual(JSON.parse(frames[0]?.bytes.toString('utf8') ?? ''), JSON.parse(JSON.stringify(value)));
  }));
});

// --- properties -------------------------------------------------------------------------

interface Message { bytes: Uint8Array; fds: number[] }

/** Messages without NUL, each with 0-2 fds; fd numbers are unique across the whole stream. */
const messages = fc.array(
  fc.record({ bytes: fc.uint8Array({ minLength: 0, maxLength: 40, min: 1, max: 255 }), fdCount: fc.integer({ min: 0, max: 2 }) }),
  { maxLength: 12 },
).map((list) => {
  let next = 1000;
  return list.map(({ bytes, fdCount }): Message => ({ bytes, fds: Array.from({ length: fdCount }, () => next++) }));
});

/**
 * What recvmsg could return for these messages, each sent with one sendmsg: a message may be
 * split anywhere (its fds come with its first piece); consecutive pieces are glued into one read
 * until a piece that carries fds, which ends the read (the kernel stops right after it).
 */
function chunkings(list: Message[]): fc.Arbitrary<{ chunk: Buffer; fds: number[] }[]> {
  const pieces = list.map((m) => fc.array(fc.integer({ min: 0, max: m.bytes.length + 1 }), { maxLength: 3 }));
  return fc.tuple(fc.tuple(...pieces), fc.array(fc.boolean(), { minLength: 64, maxLength: 64 })).map(([cuts, merges]) => {
    const units: { chunk: Buffer; fds: number[] }[] = [];
    list.forEach((m, i) => {
      const whole = Buffer.concat([Buffer.from(m.bytes), Buffer.from([0])]);
      const points = [...new Set([0, ...(cuts[i] ?? []), whole.length])].sort((a, b) => a - b);
      for (let p = 0; p + 1 < points.length; p++) {
        units.push({ chunk: whole.subarray(points[p], points[p + 1]), fds: p === 0 ? m.fds : [] });
      }
    });
    const out: { chunk: Buffer; fds: number[] }[] = [];
    units.forEach((u, i) => {
      const last = out[out.length - 1];
      if (last !== undefined && merges[i % 64] === true && last.fds.length === 0) {
        last.chunk = Buffer.concat([last.chunk, u.chunk]);
        last.fds = u.fds;
      } else {
        out.push({ ...u });
      }
    });
    return out;
  });
}

test('property: any chunking a Unix stream socket can produce yields the same frames and fds', () => {
  fc.assert(fc.property(messages.chain((list) => fc.tuple(fc.constant(list), chunkings(list))), ([list, chunks]) => {
    const d = new FrameDecoder();
    const frames = chunks.flatMap(({ chunk, fds }) => d.push(chunk, fds));
    assert.deepEqual(frames.map((f) => [Buffer.from(f.bytes), f.fds]), list.map((m) => [Buffer.from(m.bytes), m.fds]));
    assert.deepEqual(d.takeHeldFds(), []);
  }));
});

test('property: random bytes and fds never throw anything but FramingError, and never lose an fd', () => {
  const chunk = fc.record({
    bytes: fc.uint8Array({ maxLength: 24 }).map((b) => Buffer.from(b.map((x) => (x % 4 === 0 ? 0 : x)))),
    fdCount: fc.integer({ min: 0, max: 3 }),
  });
  fc.assert(fc.property(
    fc.array(chunk, { maxLength: 20 }), fc.integer({ min: 0, max: 16 }), fc.integer({ min: 0, max: 4 }),
    (chunks, maxFrameBytes, maxFdsPerFrame) => {
      const d = new FrameDecoder({ maxFrameBytes, maxFdsPerFrame });
      const pushed: number[] = [];
      const delivered: number[] = [];
      let next = 5000;
      let failedAt: number | undefined;
      chunks.forEach(({ bytes, fdCount }, i) => {
        const fds = Array.from({ length: fdCount }, () => next++);
        pushed.push(...fds);
        try {
          for (const frame of d.push(bytes, fds)) {
            assert.ok(frame.bytes.length <= maxFrameBytes);
            assert.ok(frame.fds.length <= maxFdsPerFrame);
            assert.equal(frame.bytes.indexOf(0), -1);
            delivered.push(...frame.fds);
          }
        } catch (error) {
          assert.ok(error instanceof FramingError, String(error));
          failedAt ??= i;
        }
      });
      assert.equal(d.failed, failedAt !== undefined);
      const all = [...delivered, ...d.takeHeldFds()].sort((a, b) => a - b);
      assert.deepEqual(all, pushed);
    },
  ));
});

test('property: frames over the cap are refused however the bytes are chunked', () => {
  fc.assert(fc.property(
    fc.integer({ min: 1, max: 64 }), fc.integer({ min: 0, max: 3 }), fc.array(fc.integer({ min: 1, max: 70 }), { maxLength: 8 }),
    (cap, excess, sizes) => {
      const stream = Buffer.concat([Buffer.alloc(cap + excess, 0x61), Buffer.from([0])]);
      const d = new FrameDecoder({ maxFrameBytes: cap });
      const frames: Frame[] = [];
      let refused = false;
      let offset = 0;
      for (const size of [...sizes, stream.length]) {
        if (offset >= stream.length) break;
        try {
          frames.push(...d.push(stream.subarray(offset, offset + size), []));
        } catch (error) {
          assert.ok(error instanceof FramingError);
          refused = true;
          break;
        }
        offset += size;
      }
      assert.equal(refused, excess > 0);
      assert.equal(frames.length, excess > 0 ? 0 : 1);
    },
  ));
});
