// A stand-in for QEMU: opens a lease for itself and holds the FD, as `iommufdctl exec` would
// before exec'ing QEMU. Used by `npm start` (the demo) and by the tests.
// argv: SOCKET NAME MEMORY_BYTES. Prints one JSON line (the lease or the error), then obeys
// stdin lines: "limits" -> prints {soft, hard} of RLIMIT_MEMLOCK as JSON; "release" -> releases
// its own lease and prints the reply (or error) as JSON; "exit" -> exits 0.
// Run it through setpriv with every capability dropped so it is a target without CAP_IPC_LOCK.
//
// Invariants: it holds its lease's FD until it exits (the lease's target is this process); each
// broker connection is closed once its call answered; a refusal is printed as its stable error
// name, never thrown.
import { readFileSync, readlinkSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { BrokerClient } from '../client/index.ts';

function memlock(): { soft: string; hard: string } {
  const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max locked memory'));
  const parts = (line ?? '').trim().split(/\s{2,}/);
  return { soft: parts[1] ?? '?', hard: parts[2] ?? '?' };
}

const [socket, name, memory] = process.argv.slice(2);
if (socket === undefined || name === undefined || memory === undefined) throw new Error('usage: SOCKET NAME MEMORY_BYTES');
const client = await BrokerClient.connect(socket);
let leaseId: string | undefined;
try {
  const { lease, fd } = await client.open({ name, memoryBytes: Number(memory) });
  leaseId = lease.id;
  process.stdout.write(`${JSON.stringify({ lease, fd, fdTarget: readlinkSync(`/proc/self/fd/${fd}`), limits: memlock() })}\n`);
} catch (e) {
  const err = e as { errorName?: string; parameters?: unknown; message?: string };
  process.stdout.write(`${JSON.stringify({ error: err.errorName ?? err.message, parameters: err.parameters })}\n`);
}
client.close();
for await (const line of createInterface({ input: process.stdin })) {
  if (line === 'limits') process.stdout.write(`${JSON.stringify(memlock())}\n`);
  if (line === 'release') {
    const again = await BrokerClient.connect(socket);
    try {
      process.stdout.write(`${JSON.stringify({ ok: await again.release(leaseId ?? '') })}\n`);
    } catch (e) {
      const err = e as { errorName?: string; parameters?: unknown };
      process.stdout.write(`${JSON.stringify({ error: err.errorName, parameters: err.parameters })}\n`);
    } finally {
      again.close();
    }
  }
  if (line === 'exit') process.exit(0);
}
