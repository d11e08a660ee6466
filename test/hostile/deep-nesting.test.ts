// JSON nested as deep as a 64 KiB frame allows (~32,000 levels), in the parameters, in the
// envelope and at the top level. Any recursive walk over a peer's JSON would overflow the stack
// and take the whole daemon down with one frame; the daemon must answer (or close that
// connection) and go on serving everyone else.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_FRAME_BYTES } from '../../protocol/framing.ts';
import { BrokerProcess } from '../support/daemon.ts';
import { GET_INFO, RawPeer, errorOf, isGetInfoReply } from './support/raw-peer.ts';

let broker: BrokerProcess;
before(async () => { broker = await BrokerProcess.start(); });
after(async () => { await broker.stop(); broker.cleanup(); });

/** The deepest nesting of `open`/`close` that keeps `prefix + nesting + suffix` within one frame. */
function deepest(prefix: string, open: string, close: string, suffix: string): { text: string; depth: number } {
  const depth = Math.floor((MAX_FRAME_BYTES - prefix.length - suffix.length - 1) / (open.length + close.length));
  return { text: `${prefix}${open.repeat(depth)}1${close.repeat(depth)}${suffix}`, depth };
}

const CASES: Array<[string, { text: string; depth: number }, 'answer' | 'close']> = [
  ['arrays in a parameter', deepest('{"method":"io.iommufd.Broker.Status","parameters":{"x":', '[', ']', '}}'), 'answer'],
  ['objects in a parameter', deepest('{"method":"io.iommufd.Broker.Status","parameters":{"x":', '{"a":', '}', '}}'), 'answer'],
  ['objects under __proto__', deepest('{"method":"io.iommufd.Broker.Open","parameters":{"name":"vm","memoryBytes":1,"__proto__":', '{"__proto__":', '}', '}}'), 'answer'],
  ['objects in the envelope', deepest('{"method":"io.iommufd.Broker.Status","more":', '{"a":', '}', '}'), 'close'],
  ['arrays at the top level', deepest('', '[', ']', ''), 'close'],
];

for (const [what, { text, depth }, expected] of CASES) {
  test(`JSON nested ${depth} levels deep (${what}): ${expected === 'answer' ? 'an error reply' : 'that connection closes'}, the daemon lives`, async () => {
    assert.ok(Buffer.byteLength(text) <= MAX_FRAME_BYTES, 'the frame is within the size cap');
    const peer = RawPeer.connect(broker.socket);
    peer.send(Buffer.from(`${text}\0`));
    if (expected === 'answer') peer.send(GET_INFO);
    peer.shutdownWrite();
    await peer.untilEnded();
    peer.close();
    if (expected === 'answer') {
      assert.equal(errorOf(peer.replies[0]), 'org.varlink.service.InvalidParameter', `${JSON.stringify(peer.replies[0] ?? null).slice(0, 300)}; daemon stderr: ${broker.stderr.slice(-300)}`);
      assert.ok(isGetInfoReply(peer.replies[1]), 'the same connection still answers');
    } else {
      assert.ok(peer.replies.every((r) => errorOf(r) !== undefined), 'no success reply for a broken envelope');
    }
    assert.equal(broker.child.exitCode, null, `the daemon is alive; stderr: ${broker.stderr.slice(-500)}`);
    const other = RawPeer.connect(broker.socket);
    other.send(GET_INFO);
    await other.until(1);
    other.close();
    assert.ok(isGetInfoReply(other.replies[0]), 'and answers a fresh connection');
  });
}
