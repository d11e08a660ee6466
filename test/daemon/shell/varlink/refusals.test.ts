// What the Varlink server turns away before any method runs is counted in /metrics (by stage
// and reason) and a refused connection is audited: through the real daemon and sockets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_MAX_CONNECTIONS_PER_UID } from '../../../../daemon/flags.ts';
import { UnixConnection } from '../../../../native/socket.ts';
import { BrokerProcess } from '../../../support/daemon.ts';
import { sampleValue, scrape } from '../../../support/metrics.ts';
import { exchange } from '../../../support/raw-varlink.ts';

/** daemon/flags.ts: the default --max-connections-per-uid. */
const PER_UID = DEFAULT_MAX_CONNECTIONS_PER_UID;

const refused = (stage: string, reason: string): string => `iommufd_broker_refused_total{stage="${stage}",reason="${reason}"}`;

test('malformed frames, unknown methods and one connection too many are counted and audited', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'iommufd-refusals-'));
  chmodSync(dir, 0o755);
  const admin = join(dir, 'admin.sock');
  const broker = await BrokerProcess.start({ dir, extraArgs: ['--admin-socket', admin] });
  const held: UnixConnection[] = [];
  try {
    assert.doesNotMatch(await scrape(admin), /^iommufd_broker_refused_total\{/m, 'nothing refused yet');

    await exchange(broker.socket, Buffer.from('not json\0'), [], Infinity);
    await exchange(broker.socket, Buffer.from(`${JSON.stringify({ method: 'io.iommufd.Broker.Explode', parameters: {} })}\0`), [], 1);
    await exchange(broker.socket, Buffer.from(`${JSON.stringify({ method: 'io.iommufd.Broker.Explode', parameters: {} })}\0`), [], 1);
    let metrics = await scrape(admin);
    assert.equal(sampleValue(metrics, refused('message', 'org.varlink.service.InvalidParameter')), 1);
    assert.equal(sampleValue(metrics, refused('message', 'org.varlink.service.MethodNotFound')), 2);
    assert.equal(sampleValue(metrics, 'iommufd_broker_requests_total{api="varlink",method="io.iommufd.Broker.Explode",outcome="org.varlink.service.MethodNotFound"}'), 0,
      'a refused message is not also counted as a request');

    for (let i = 0; i < PER_UID; i++) held.push(UnixConnection.connect(broker.socket));
    const extra = UnixConnection.connect(broker.socket);
    const line = await broker.waitForLog((l) => l.msg === 'connection refused: too many connections');
    extra.close();
    assert.equal(line['audit'], 'deny');
    assert.equal(line['action'], 'connect');
    assert.equal(line['maxConnectionsPerUid'], PER_UID);
    metrics = await scrape(admin);
    assert.equal(sampleValue(metrics, refused('connection', 'too-many-connections')), 1);
  } finally {
    for (const c of held) c.close();
    await broker.stop();
    broker.cleanup();
  }
});
