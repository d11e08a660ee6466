// Keys that are special to JavaScript objects ("__proto__", "constructor", "toString") in a
// call's parameters or method name. protocol/methods.ts promises strict parameter objects: an
// unknown field is an InvalidParameter, never ignored, whatever its name.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BrokerProcess } from '../support/daemon.ts';
import { RawPeer, errorOf } from './support/raw-peer.ts';

let broker: BrokerProcess;
before(async () => { broker = await BrokerProcess.start(); });
after(async () => { await broker.stop(); broker.cleanup(); });

async function ask(text: string): Promise<Record<string, unknown>> {
  const peer = RawPeer.connect(broker.socket);
  peer.send(Buffer.from(`${text}\0`));
  await peer.until(1);
  peer.close();
  return peer.replies[0] ?? {};
}

test('"constructor" and "toString" are unknown fields and unknown methods like any other', async () => {
  for (const params of ['{"constructor":1}', '{"toString":"x"}', '{"hasOwnProperty":null}']) {
    const reply = await ask(`{"method":"io.iommufd.Broker.Status","parameters":${params}}`);
    assert.equal(errorOf(reply), 'org.varlink.service.InvalidParameter', `${params}: ${JSON.stringify(reply)}`);
  }
  for (const method of ['io.iommufd.Broker.constructor', 'io.iommufd.Broker.toString', 'io.iommufd.Broker.__proto__']) {
    const reply = await ask(`{"method":"${method}","parameters":{}}`);
    assert.equal(errorOf(reply), 'org.varlink.service.MethodNotFound', `${method}: ${JSON.stringify(reply)}`);
  }
});

test('a "__proto__" key in the parameters is an unknown field, not silently dropped', async () => {
  for (const text of [
    '{"method":"io.iommufd.Broker.Status","parameters":{"__proto__":{"x":1}}}',
    '{"method":"io.iommufd.Broker.Open","parameters":{"name":"vm","memoryBytes":4096,"__proto__":{"memoryBytes":1}}}',
  ]) {
    const reply = await ask(text);
    assert.equal(errorOf(reply), 'org.varlink.service.InvalidParameter', `${text}: ${JSON.stringify(reply)}`);
    assert.equal((reply['parameters'] as { parameter?: string }).parameter, '__proto__');
  }
});
