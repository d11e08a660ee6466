// The admin routes through fastify's inject(), against a real BrokerService whose leases hold
// real (capability-stripped) target processes: every route reaches the same core as Varlink,
// errors carry the Varlink names, and only managers get past the first hook.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadPolicy } from '../../../../daemon/shell/config.ts';
import type { AdminService } from '../../../../daemon/shell/admin/routes.ts';
import { MiB, NOBODY_PEER, ROOT_PEER, memlockOf, startHarness, testPolicy } from './fixtures.ts';
import { eventually } from '../../../hostile/support/processes.ts';

interface Answer { status: number; body: Record<string, unknown> }

function answer(r: { statusCode: number; body: string }): Answer {
  return { status: r.statusCode, body: JSON.parse(r.body) as Record<string, unknown> };
}

test('status, leases and one lease are the service\'s own answers', async () => {
  const h = await startHarness();
  try {
    const { lease } = await h.lease('vm1', 2 * MiB);
    const status = answer(await h.api.app.inject({ method: 'GET', url: '/v1/status' }));
    assert.equal(status.status, 200);
    assert.deepEqual(status.body, h.service.status());
    assert.deepEqual(status.body['budget'], { totalBytes: 64 * MiB, usedBytes: 3 * MiB, freeBytes: 61 * MiB, releasedBytes: 0 });
    const list = answer(await h.api.app.inject({ method: 'GET', url: '/v1/leases' }));
    assert.equal(list.status, 200);
    assert.deepEqual(list.body, h.service.list(ROOT_PEER));
    assert.deepEqual((list.body['leases'] as { id: string }[]).map((l) => l.id), [lease.id]);
    const one = answer(await h.api.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` }));
    assert.equal(one.status, 200);
    assert.equal(one.body['id'], lease.id);
    assert.equal(one.body['limitBytes'], 3 * MiB);
    const health = answer(await h.api.app.inject({ method: 'GET', url: '/healthz' }));
    assert.deepEqual(health, { status: 200, body: { status: 'ok' } });
  } finally {
    await h.close();
  }
});

test('GET /v1/leases is paged like Varlink List: limit, next, cursor; bounds are 400 InvalidParameter', async () => {
  const h = await startHarness();
  try {
    const a = (await h.lease('vm1', MiB)).lease;
    const b = (await h.lease('vm2', MiB)).lease;
    const first = answer(await h.api.app.inject({ method: 'GET', url: '/v1/leases?limit=1' }));
    assert.equal(first.status, 200);
    assert.deepEqual((first.body['leases'] as { id: string }[]).map((l) => l.id), [a.id]);
    const next = first.body['next'];
    assert.equal(typeof next, 'string');
    const second = answer(await h.api.app.inject({ method: 'GET', url: `/v1/leases?limit=1&cursor=${encodeURIComponent(String(next))}` }));
    assert.equal(second.status, 200);
    assert.deepEqual((second.body['leases'] as { id: string }[]).map((l) => l.id), [b.id]);
    assert.equal(second.body['next'], undefined, 'the last page has no next');
    for (const [query, parameter] of [['limit=1001', 'limit'], ['limit=0', 'limit'], ['limit=x', 'limit'], ['cursor=l-0000000000000000', 'cursor']]) {
      const bad = answer(await h.api.app.inject({ method: 'GET', url: `/v1/leases?${query}` }));
      assert.equal(bad.status, 400, query);
      assert.equal(bad.body['error'], 'org.varlink.service.InvalidParameter', query);
      assert.match(String((bad.body['parameters'] as { parameter: string }).parameter), new RegExp(parameter ?? ''), query);
    }
  } finally {
    await h.close();
  }
});

test('a lease that does not exist is 404 NoSuchLease; a malformed id is 400 InvalidParameter', async () => {
  const h = await startHarness();
  try {
    const missing = answer(await h.api.app.inject({ method: 'GET', url: '/v1/leases/l-0000000000000000' }));
    assert.deepEqual(missing, { status: 404, body: { error: 'io.iommufd.Broker.NoSuchLease', parameters: { lease: 'l-0000000000000000' } } });
    const del = answer(await h.api.app.inject({ method: 'DELETE', url: '/v1/leases/l-0000000000000000' }));
    assert.deepEqual(del, missing);
    const bad = answer(await h.api.app.inject({ method: 'GET', url: '/v1/leases/vm1' }));
    assert.equal(bad.status, 400);
    assert.equal(bad.body['error'], 'org.varlink.service.InvalidParameter');
    assert.equal((bad.body['parameters'] as { parameter: string }).parameter, 'id');
  } finally {
    await h.close();
  }
});

test('PATCH resizes through the core: the target\'s RLIMIT_MEMLOCK and the budget follow', async () => {
  const h = await startHarness();
  try {
    const { lease, target } = await h.lease('vm1', 2 * MiB);
    assert.equal(memlockOf(target.pid ?? -1), 3 * MiB);
    const r = answer(await h.api.app.inject({ method: 'PATCH', url: `/v1/leases/${lease.id}`, payload: { memoryBytes: MiB } }));
    assert.equal(r.status, 200);
    assert.equal(r.body['previousLimitBytes'], 3 * MiB);
    assert.equal((r.body['lease'] as { limitBytes: number }).limitBytes, 2 * MiB);
    assert.equal(memlockOf(target.pid ?? -1), 2 * MiB);
    assert.equal(h.service.status().budget.usedBytes, 2 * MiB);
    assert.ok(h.logs.some((l) => l['audit'] === 'resize' && l['lease'] === lease.id), 'the service audited the resize');
  } finally {
    await h.close();
  }
});

test('PATCH refusals keep their Varlink names: budget 409, kernel 502, bad bodies 400', async () => {
  const h = await startHarness();
  try {
    const { lease, target } = await h.lease('vm1', 2 * MiB);
    const url = `/v1/leases/${lease.id}`;
    const over = answer(await h.api.app.inject({ method: 'PATCH', url, payload: { memoryBytes: 100 * MiB } }));
    assert.equal(over.status, 409);
    assert.equal(over.body['error'], 'io.iommufd.Broker.BudgetExceeded');
    assert.equal((over.body['parameters'] as { budgetBytes: number }).budgetBytes, 64 * MiB);
    // Raising past the target's hard limit needs CAP_SYS_RESOURCE, which this broker lacks.
    const raise = answer(await h.api.app.inject({ method: 'PATCH', url, payload: { memoryBytes: 16 * MiB } }));
    assert.equal(raise.status, 502);
    assert.equal(raise.body['error'], 'io.iommufd.Broker.KernelRefused');
    assert.equal((raise.body['parameters'] as { errno: string }).errno, 'EPERM');
    assert.equal(memlockOf(target.pid ?? -1), 3 * MiB, 'a refused resize changes nothing');
    const extra = answer(await h.api.app.inject({ method: 'PATCH', url, payload: { memoryBytes: MiB, lease: 'x' } }));
    assert.deepEqual([extra.status, extra.body['error'], (extra.body['parameters'] as { parameter: string }).parameter],
      [400, 'org.varlink.service.InvalidParameter', 'lease']);
    const zero = answer(await h.api.app.inject({ method: 'PATCH', url, payload: { memoryBytes: 0 } }));
    assert.deepEqual([zero.status, (zero.body['parameters'] as { parameter: string }).parameter], [400, 'memoryBytes']);
    const text = answer(await h.api.app.inject({ method: 'PATCH', url, payload: '{"memoryBytes":', headers: { 'content-type': 'application/json' } }));
    assert.deepEqual([text.status, text.body['error']], [400, 'org.varlink.service.InvalidParameter']);
    const big = answer(await h.api.app.inject({ method: 'PATCH', url, payload: { memoryBytes: MiB, pad: 'x'.repeat(20_000) } }));
    assert.deepEqual([big.status, big.body['error']], [413, 'org.varlink.service.InvalidParameter']);
    assert.equal(h.service.status().budget.usedBytes, 3 * MiB);
  } finally {
    await h.close();
  }
});

test('DELETE releases through the core: the limit is kept, the lease stays charged until its target exits', async () => {
  // Issue #8 item 5 changed this: a Release no longer returns the bytes of a live target (it
  // keeps its fd and its limit), and never restores the earlier limit (that is usually a raise).
  const h = await startHarness();
  try {
    const { lease, target } = await h.lease('vm1', 2 * MiB);
    const before = memlockOf(target.pid ?? -1);
    const r = answer(await h.api.app.inject({ method: 'DELETE', url: `/v1/leases/${lease.id}` }));
    assert.equal(r.status, 200);
    assert.deepEqual(r.body, { limitRestored: false });
    assert.equal(memlockOf(target.pid ?? -1), before, 'the limit is kept');
    const listed = h.service.list(ROOT_PEER).leases;
    assert.deepEqual(listed.map((l) => [l.id, l.releasedAt !== undefined]), [[lease.id, true]]);
    assert.equal(h.service.status().budget.usedBytes, lease.limitBytes);
    assert.equal(h.service.status().budget.releasedBytes, lease.limitBytes);
    const again = answer(await h.api.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` }));
    assert.equal(again.status, 200);

    const gone = once(target, 'exit');
    target.kill('SIGKILL');
    await gone;
    await eventually('the exited target\'s lease ends', () => h.service.status().budget.usedBytes === 0);
    assert.deepEqual(h.service.list(ROOT_PEER), { leases: [] });
    const after = answer(await h.api.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` }));
    assert.equal(after.status, 404);
  } finally {
    await h.close();
  }
});

test('an observer reads everything (every lease, /metrics) and changes nothing', async () => {
  const h = await startHarness({ injectAs: NOBODY_PEER, policy: testPolicy({ observerUsers: [NOBODY_PEER.uid] }) });
  try {
    const { lease, target } = await h.lease('vm1', 2 * MiB);
    const leases = answer(await h.api.app.inject({ method: 'GET', url: '/v1/leases' }));
    assert.equal(leases.status, 200);
    assert.deepEqual((leases.body['leases'] as Array<{ id: string }>).map((l) => l.id), [lease.id], 'a lease root opened');
    assert.equal(answer(await h.api.app.inject({ method: 'GET', url: `/v1/leases/${lease.id}` })).status, 200);
    const metrics = await h.api.app.inject({ method: 'GET', url: '/metrics' });
    assert.equal(metrics.statusCode, 200);
    assert.match(metrics.body, new RegExp(`iommufd_broker_lease_limit_bytes\\{lease="${lease.id}",name="vm1"\\} ${3 * MiB}`));
    for (const req of [
      { method: 'PATCH', url: `/v1/leases/${lease.id}`, payload: { memoryBytes: MiB } },
      { method: 'DELETE', url: `/v1/leases/${lease.id}` }, { method: 'POST', url: '/v1/policy/reload' },
    ] as const) {
      const r = answer(await h.api.app.inject(req));
      assert.equal(r.status, 403, `${req.method} ${req.url}`);
      assert.equal((r.body['parameters'] as { rule: string }).rule, 'admin-observers-read-only');
    }
    assert.equal(memlockOf(target.pid ?? -1), 3 * MiB, 'the limit is untouched');
    assert.equal(h.service.list(ROOT_PEER).leases.length, 1, 'the lease is still there');
  } finally {
    await h.close();
  }
});

test('a non-manager gets 403 PermissionDenied on every path, and nothing runs', async () => {
  const h = await startHarness({ injectAs: NOBODY_PEER });
  try {
    const { lease, target } = await h.lease('vm1', 2 * MiB);
    const requests = [
      { method: 'GET', url: '/healthz' }, { method: 'GET', url: '/v1/status' }, { method: 'GET', url: '/v1/leases' },
      { method: 'GET', url: `/v1/leases/${lease.id}` }, { method: 'PATCH', url: `/v1/leases/${lease.id}`, payload: { memoryBytes: MiB } },
      { method: 'DELETE', url: `/v1/leases/${lease.id}` }, { method: 'POST', url: '/v1/policy/reload' },
      { method: 'GET', url: '/metrics' }, { method: 'GET', url: '/no/such/path' },
    ] as const;
    for (const req of requests) {
      const r = answer(await h.api.app.inject(req));
      assert.equal(r.status, 403, `${req.method} ${req.url}`);
      assert.equal(r.body['error'], 'io.iommufd.Broker.PermissionDenied');
      const p = r.body['parameters'] as { rule: string; reason: string };
      assert.equal(p.rule, 'admin-managers');
      assert.match(p.reason, /uid 65534 .* is neither a manager nor an observer/);
    }
    assert.equal(memlockOf(target.pid ?? -1), 3 * MiB);
    assert.equal(h.service.list(ROOT_PEER).leases.length, 1);
    assert.equal(h.logs.filter((l) => l['audit'] === 'deny' && l['action'] === 'admin').length, requests.length);
  } finally {
    await h.close();
  }
});

test('a request whose peer is unknown is refused too', async () => {
  const h = await startHarness({ injectAs: () => undefined });
  try {
    const r = answer(await h.api.app.inject({ method: 'GET', url: '/v1/status' }));
    assert.equal(r.status, 403);
    assert.equal((r.body['parameters'] as { rule: string }).rule, 'admin-peer');
  } finally {
    await h.close();
  }
});

test('policy reload: a good file replaces the policy (and can demote the caller); a bad one is 422 and changes nothing', async () => {
  const h = await startHarness({
    reloadPolicy: (service, dir) => service.replacePolicy(loadPolicy({ configPath: join(dir, 'policy.json'), memTotalBytes: 1024 * MiB })),
  });
  try {
    const file = join(h.dir, 'policy.json');
    writeFileSync(file, JSON.stringify({ managers: { users: [0, 4242] }, limits: { budget: '128M', overhead: '1M' } }), { mode: 0o644 });
    const ok = answer(await h.api.app.inject({ method: 'POST', url: '/v1/policy/reload' }));
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    const policy = ok.body['policy'] as { managerUsers: number[]; budgetBytes: number };
    assert.deepEqual(policy.managerUsers, [0, 4242]);
    assert.equal(policy.budgetBytes, 128 * MiB);
    assert.equal(h.service.policy.budgetBytes, 128 * MiB);

    writeFileSync(file, JSON.stringify({ limits: { budget: '12 GB' } }));
    const bad = answer(await h.api.app.inject({ method: 'POST', url: '/v1/policy/reload' }));
    assert.equal(bad.status, 422);
    assert.equal(bad.body['error'], 'io.iommufd.Admin.PolicyRejected');
    assert.deepEqual(Object.keys(bad.body['parameters'] as object).sort(), ['key', 'reason', 'source']);
    assert.equal(h.service.policy.budgetBytes, 128 * MiB, 'the old policy stays');

    writeFileSync(file, JSON.stringify({ managers: { users: [4242] }, limits: { budget: '128M' } }));
    const demoted = await h.api.app.inject({ method: 'POST', url: '/v1/policy/reload' });
    assert.equal(demoted.statusCode, 200, demoted.body);
    assert.equal((await h.api.app.inject({ method: 'GET', url: '/v1/status' })).statusCode, 403, 'uid 0 is no manager any more');
  } finally {
    await h.close();
  }
});

test('an unknown path is 404 MethodNotFound; /metrics is Prometheus text with the admin requests counted', async () => {
  const h = await startHarness();
  try {
    const { lease } = await h.lease('vm1', 2 * MiB);
    const none = answer(await h.api.app.inject({ method: 'GET', url: '/v2/things?x=1' }));
    assert.deepEqual(none, { status: 404, body: { error: 'org.varlink.service.MethodNotFound', parameters: { method: 'GET /v2/things' } } });
    await h.api.app.inject({ method: 'GET', url: '/v1/leases/l-0000000000000000' });
    await h.api.app.inject({ method: 'PATCH', url: `/v1/leases/${lease.id}`, payload: { memoryBytes: MiB } });
    const r = await h.api.app.inject({ method: 'GET', url: '/metrics' });
    assert.equal(r.statusCode, 200);
    assert.equal(r.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8');
    const lines = r.body.split('\n');
    assert.ok(lines.includes(`iommufd_broker_lease_limit_bytes{lease="${lease.id}",name="vm1"} ${2 * MiB}`));
    assert.ok(lines.includes(`iommufd_broker_budget_used_bytes ${2 * MiB}`));
    assert.ok(lines.includes('iommufd_broker_requests_total{api="admin",method="GET /v1/leases/:id",outcome="NoSuchLease"} 1'));
    assert.ok(lines.includes('iommufd_broker_requests_total{api="admin",method="PATCH /v1/leases/:id",outcome="ok"} 1'));
    assert.ok(lines.includes('iommufd_broker_requests_total{api="admin",method="unmatched",outcome="MethodNotFound"} 1'));
  } finally {
    await h.close();
  }
});

test('an unexpected failure is 500 InternalError with no internals, and is logged', async () => {
  const broken: AdminService = {
    get policy() { return testPolicy(); },
    status: () => { throw new TypeError('secret detail'); },
    list: () => ({ leases: [] }), visibleLease: () => undefined, allVisible: () => [], resize: () => Promise.reject(new Error('unused')), release: () => Promise.resolve({ limitRestored: false }),
    journalStats: () => ({ records: 0, syncs: 0, compactions: 0, degraded: false }),
  };
  const h = await startHarness({ apiOptions: { service: broken } });
  try {
    const r = answer(await h.api.app.inject({ method: 'GET', url: '/v1/status' }));
    assert.equal(r.status, 500);
    assert.deepEqual(r.body, { error: 'io.iommufd.Broker.InternalError', parameters: { reason: 'unexpected failure; the broker log has the details' } });
    assert.ok(h.logs.some((l) => l['level'] === 50 && JSON.stringify(l).includes('secret detail')), 'the log has the details');
  } finally {
    await h.close();
  }
});

test('every route docs/ADMIN-API.md lists exists', async () => {
  const doc = readFileSync(new URL('../../../../docs/ADMIN-API.md', import.meta.url), 'utf8');
  const routes = [...doc.matchAll(/^\| `(GET|PATCH|DELETE|POST) (\/\S*)`/gm)].map((r) => ({ method: r[1] ?? '', url: r[2] ?? '' }));
  assert.equal(routes.length, 8);
  const h = await startHarness();
  try {
    for (const r of routes) assert.ok(h.api.app.hasRoute({ method: r.method as 'GET', url: r.url }), `${r.method} ${r.url}`);
  } finally {
    await h.close();
  }
});
