// The manager's side of the broker in the lab: Status, List, Resize, Release (and Open as an
// exact Varlink reply), sent from a root lab-client (uid 0 is the default policy's manager)
// and validated with the project's own wire schemas (protocol/methods.ts).
//
// Invariants:
// - Every reply is parsed with the schema of its method; a reply that does not match, or a
//   Varlink error where success was required, throws with the reply text.
// - `call` returns errors as values ({ error, parameters }) so tests can assert on names.
// - The manager's lab-client process is owned by the Manager and ends with `close()`.
// - Waiting for the broker to notice something (a target's exit) is a bounded poll that
//   fails with what it last saw; nothing asserts on time.
import { brokerMethods, type BrokerMethod, type BrokerReply, type Lease, type Status } from '../../../protocol/methods.ts';
import { BROKER_INTERFACE } from '../../../protocol/errors.ts';
import { LabClient, type VarlinkReply } from './lab-client.ts';

export interface CallResult { fds: number; fd: number; reply: VarlinkReply }

/** Sends one Varlink call from `client` (any lab-client) and returns the raw reply. */
export async function varlinkCall(client: LabClient, socket: string, method: string, parameters: object): Promise<CallResult> {
  const r = await client.command(`call ${socket} ${method} ${JSON.stringify(parameters)}`);
  if (!r.ok) throw new Error(`Varlink call ${method} failed before a reply: ${r.line}`);
  const [fds, fd] = r.words.map(Number);
  if (fds === undefined || fd === undefined) throw new Error(`call reply incomplete: ${r.line}`);
  const json = r.line.split(' ').slice(3).join(' ');
  return { fds, fd, reply: JSON.parse(json) as VarlinkReply };
}

/** The qualified name of a broker error, e.g. io.iommufd.Broker.TargetBypassesAccounting. */
export function brokerError(name: string): string {
  return `${BROKER_INTERFACE}.${name}`;
}

/** Parses a successful reply of `method`, or throws with the reply. */
export function expectReply<M extends BrokerMethod>(method: M, result: CallResult): BrokerReply<M> {
  if (result.reply.error !== undefined) {
    throw new Error(`${method} failed: ${result.reply.error} ${JSON.stringify(result.reply.parameters ?? {})}`);
  }
  return brokerMethods[method].reply.parse(result.reply.parameters) as BrokerReply<M>;
}

export class Manager {
  private constructor(readonly socket: string, readonly client: LabClient) {}

  /** A manager talking to the broker at `socket`, as root. */
  static start(socket: string): Manager {
    return new Manager(socket, LabClient.spawn({ unprivileged: false }));
  }

  call(method: BrokerMethod, parameters: object): Promise<CallResult> {
    return varlinkCall(this.client, this.socket, `${BROKER_INTERFACE}.${method}`, parameters);
  }

  async status(): Promise<Status> {
    return expectReply('Status', await this.call('Status', {}));
  }

  async list(): Promise<Lease[]> {
    return expectReply('List', await this.call('List', {})).leases;
  }

  async lease(id: string): Promise<Lease | undefined> {
    return (await this.list()).find((l) => l.id === id);
  }

  async resize(lease: string, memoryBytes: number): Promise<BrokerReply<'Resize'>> {
    return expectReply('Resize', await this.call('Resize', { lease, memoryBytes }));
  }

  async release(lease: string): Promise<BrokerReply<'Release'>> {
    return expectReply('Release', await this.call('Release', { lease }));
  }

  /**
   * Polls List until `done(leases)` holds (the broker reacts to a target's exit on its own
   * loop). Fails after `attempts` polls, `intervalMs` apart, with the last List it saw.
   */
  async waitForLeases(what: string, done: (leases: Lease[]) => boolean, attempts = 300, intervalMs = 100): Promise<Lease[]> {
    let last: Lease[] = [];
    for (let i = 0; i < attempts; i++) {
      last = await this.list();
      if (done(last)) return last;
      await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
    throw new Error(`the broker never reached: ${what}; last List: ${JSON.stringify(last)}`);
  }

  async close(): Promise<void> {
    await this.client.exit();
  }
}

/**
 * Open sent by `client` itself, so the broker's peer and target is that very process.
 * Requires success and exactly one fd, which becomes the client's current FD.
 */
export async function openAsTarget(client: LabClient, socket: string, name: string, memoryBytes: number): Promise<{ lease: Lease; fd: number }> {
  const result = await varlinkCall(client, socket, `${BROKER_INTERFACE}.Open`, { name, memoryBytes });
  const reply = expectReply('Open', result);
  if (result.fds !== 1) throw new Error(`Open succeeded but ${result.fds} fds came with the reply`);
  return { lease: reply.lease, fd: result.fd };
}
