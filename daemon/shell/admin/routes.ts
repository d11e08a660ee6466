// The admin API's routes: each one a thin call into the same BrokerService the Varlink layer
// uses, with zod schemas (through fastify's type provider) for what goes in and out.
//
// Invariants:
// - No broker logic here: who may see or change which lease, the budget, the limits and the
//   journal are all decided by BrokerService (list/resize/release/status), exactly as for a
//   Varlink call from the same peer. A route only translates HTTP to a service call and back.
// - Schemas come from protocol/methods.ts (the Varlink contract): a lease, a status or a resize
//   reply has one shape on both faces. Request schemas are strict; replies are checked against
//   their schema before they are sent.
// - Every route runs after the admin check (api.ts, auth.ts): `callerOf` always finds a manager,
//   or an observer on a read (GET/HEAD); a route that changes anything is reached by managers only.
import { z } from 'zod';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest, RawServerDefault } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Logger } from 'pino';
import { BrokerError } from '../../../protocol/errors.ts';
import { pendingCloses } from '../../../native/sys.ts';
import { brokerMethods, Lease, Status } from '../../../protocol/methods.ts';
import type { Policy } from '../../core/policy.ts';
import { AdminErrorBody } from './errors.ts';
import { PROMETHEUS_CONTENT_TYPE, type Metrics } from './metrics.ts';
import type { ConnectionPeer } from '../peer.ts';
import type { BrokerService } from '../service.ts';

export type AdminApp = FastifyInstance<RawServerDefault, IncomingMessage, ServerResponse, FastifyBaseLogger, ZodTypeProvider>;

/** The part of BrokerService the admin API calls. */
export type AdminService = Pick<BrokerService, 'status' | 'list' | 'visibleLease' | 'allVisible' | 'resize' | 'release' | 'policy' | 'journalStats'>;

export interface AdminRouteDeps {
  service: AdminService;
  metrics: Metrics;
  /** Loads the policy file again and hands it to the service (what SIGHUP does); throws PolicyError. */
  reloadPolicy: () => void;
  log: Logger;
  /** The manager behind a request (set by the admin check). */
  callerOf: (request: FastifyRequest) => ConnectionPeer;
}

const ids = z.array(z.number().int().nonnegative());
const capBytes = z.number().int().nonnegative().nullable();
/** The policy in force, as the reload route reports it. */
export const PolicyReply = z.object({
  policy: z.object({
    openUsers: z.union([z.literal('any'), ids]), openGroups: ids, managerUsers: ids, managerGroups: ids,
    observerUsers: ids, observerGroups: ids,
    perVmMaxBytes: capBytes, perUidMaxLeases: z.number().int().positive().nullable(), perUidMaxBytes: capBytes,
    overheadBytes: z.number().int().nonnegative(), budgetBytes: z.number().int().nonnegative(),
    allowTargetsWithIpcLock: z.boolean(), requireTargetNoNewPrivs: z.boolean(),
    /** The [[devices]] allowlist: each address and who may have it. */
    devices: z.array(z.object({ address: z.string(), vms: z.array(z.string()), users: ids, groups: ids }).strict()),
  }).strict(),
}).strict();

const LeaseParams = z.object({ id: brokerMethods.Release.parameters.shape.lease }).strict();
/** List's paging as a query string (?limit=100&cursor=...): the same bounds and cursor as Varlink. */
const ListQuery = z.object({
  limit: z.coerce.number().pipe(brokerMethods.List.parameters.shape.limit.unwrap()).optional(),
  cursor: brokerMethods.List.parameters.shape.cursor,
}).strict();
const ResizeBody = brokerMethods.Resize.parameters.omit({ lease: true });
const Health = z.object({ status: z.literal('ok') }).strict();
const failures = { '4xx': AdminErrorBody, '5xx': AdminErrorBody } as const;

export function registerAdminRoutes(app: AdminApp, deps: AdminRouteDeps): void {
  const { service, metrics, callerOf } = deps;

  app.get('/healthz', { schema: { response: { 200: Health, ...failures } } }, () => ({ status: 'ok' as const }));

  app.get('/v1/status', { schema: { response: { 200: Status, ...failures } } }, () => service.status());

  app.get('/v1/leases', { schema: { querystring: ListQuery, response: { 200: brokerMethods.List.reply, ...failures } } },
    (request) => service.list(callerOf(request), {
      ...(request.query.limit === undefined ? {} : { limit: request.query.limit }),
      ...(request.query.cursor === undefined ? {} : { cursor: request.query.cursor }),
    }));

  app.get('/v1/leases/:id', { schema: { params: LeaseParams, response: { 200: Lease, ...failures } } }, (request) => {
    const found = service.visibleLease(callerOf(request), request.params.id);
    if (found === undefined) throw new BrokerError('NoSuchLease', { lease: request.params.id });
    return found;
  });

  app.patch('/v1/leases/:id', { schema: { params: LeaseParams, body: ResizeBody, response: { 200: brokerMethods.Resize.reply, ...failures } } },
    (request) => service.resize(callerOf(request), { lease: request.params.id, memoryBytes: request.body.memoryBytes }));

  app.delete('/v1/leases/:id', { schema: { params: LeaseParams, response: { 200: brokerMethods.Release.reply, ...failures } } },
    (request) => service.release(callerOf(request), { lease: request.params.id }));

  app.post('/v1/policy/reload', { schema: { response: { 200: PolicyReply, ...failures } } }, (request) => {
    const peer = callerOf(request);
    deps.reloadPolicy();
    deps.log.info({ audit: 'policy-reload', peer: { uid: peer.uid, pid: peer.pid } }, 'policy reloaded through the admin API');
    return { policy: policyToWire(service.policy) };
  });

  app.get('/metrics', async (request, reply) => {
    const text = metrics.render({ status: service.status(), leases: service.allVisible(callerOf(request)), journal: service.journalStats(),
      pendingCloses: pendingCloses() });
    return reply.type(PROMETHEUS_CONTENT_TYPE).send(text);
  });
}

function policyToWire(p: Readonly<Policy>): z.infer<typeof PolicyReply>['policy'] {
  return {
    openUsers: p.openUsers === 'any' ? 'any' : [...p.openUsers], openGroups: [...p.openGroups],
    managerUsers: [...p.managerUsers], managerGroups: [...p.managerGroups],
    observerUsers: [...p.observerUsers], observerGroups: [...p.observerGroups],
    perVmMaxBytes: p.perVmMaxBytes, perUidMaxLeases: p.perUidMaxLeases, perUidMaxBytes: p.perUidMaxBytes,
    overheadBytes: p.overheadBytes, budgetBytes: p.budgetBytes, allowTargetsWithIpcLock: p.allowTargetsWithIpcLock,
    requireTargetNoNewPrivs: p.requireTargetNoNewPrivs,
    devices: p.devices.map((d) => ({ address: d.address, vms: [...d.vms], users: [...d.users], groups: [...d.groups] })),
  };
}
