// Slow and silent clients of the admin API (daemon/shell/admin/api.ts). The API serves at most
// MAX_ADMIN_CONNECTIONS connections; one that connects and never sends a byte never reaches
// the admin check (it runs per request) and, before the idle timeout, was never closed by Node
// (its requestTimeout/headersTimeout start only with a request's first byte). So whoever could
// connect could fill every slot with silent connections and shut the managers out for good.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { MAX_ADMIN_CONNECTIONS } from '../../daemon/shell/admin/api.ts';
import { startHarness } from '../daemon/shell/admin/fixtures.ts';

function getStatus(socketPath: string, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    request({ socketPath, path, agent: false }, (res) => { res.resume().on('end', () => resolve(res.statusCode ?? 0)); })
      .on('error', reject).end();
  });
}

test('connections that never send a byte are closed by the idle timeout: every slot filled, a manager still gets in', { timeout: 60_000 }, async () => {
  const h = await startHarness({ injectAs: null, apiOptions: { idleTimeoutMs: 300 } });
  const path = join(h.dir, 'admin.sock');
  const silent: Socket[] = [];
  try {
    await h.api.listen({ path, mode: 0o600 });
    for (let i = 0; i < MAX_ADMIN_CONNECTIONS; i++) {
      const s = connect(path);
      s.on('error', () => {});
      silent.push(s);
      await once(s, 'connect');
    }
    // Each is closed by the server (an 'end' from it), never by this test.
    await Promise.all(silent.map(async (s) => { if (!s.closed) await once(s, 'close'); }));
    assert.equal(await getStatus(path, '/healthz'), 200);
  } finally {
    for (const s of silent) s.destroy();
    await h.close();
  }
});
