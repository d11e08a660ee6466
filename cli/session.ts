// The two resources a CLI command borrows for its lifetime: a broker connection, and a pidfd
// for --target-pid.
//
// Invariants:
// - withBroker closes its connection on every path out of `fn`.
// - openTargetPidfd hands its pidfd to the caller, who closes it.
import { pidfdOpen, SysError } from '../native/sys.ts';
import { UsageError, type CommonOptions } from './args.ts';
import { BrokerClient } from '../client/client.ts';

/** Connects, runs `fn`, and closes the connection whatever happens. */
export async function withBroker<T>(common: CommonOptions, fn: (client: BrokerClient) => Promise<T>): Promise<T> {
  const client = await BrokerClient.connect(common.socketPath, { timeoutMs: common.timeoutMs });
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

/** A pidfd for --target-pid; the caller owns it. A pid that does not exist is the user's mistake. */
export function openTargetPidfd(pid: number): number {
  try {
    return pidfdOpen(pid);
  } catch (error) {
    if (error instanceof SysError && error.code === 'ESRCH') throw new UsageError(`--target-pid ${pid}: no such process`);
    throw error;
  }
}
