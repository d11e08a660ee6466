// Test support: a process that plays a VM (or a manager) against the broker, one command per
// stdin line, one JSON result per stdout line. Run it through setpriv as whoever it should be.
// argv: SOCKET. Commands (JSON): {op:"open", name, memoryBytes, targetPid?}, {op:"resize",
// lease, memoryBytes}, {op:"release", lease}, {op:"list"}, {op:"limits"},
// {op:"raise-own-limit", bytes} (prlimit on itself), {op:"spawn-child"}, {op:"exit"}.
//
// Invariants:
// - Results are {ok: value} or {error: name, parameters}; nothing is thrown past a command.
// - fds: a pidfd opened for "open" is closed once the call settled (the client sent a dup);
//   the device fd of a granted Open is closed at once (the test looks at limits, not the fd).
// - Children made by "spawn-child" are killed when the actor exits.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { BrokerClient } from '../../../client/index.ts';
import { closeFd, pidfdOpen, prlimitMemlock } from '../../../native/sys.ts';

interface Command { op: string; name?: string; memoryBytes?: number; targetPid?: number; lease?: string; bytes?: number }

const socket = process.argv[2];
if (socket === undefined) throw new Error('usage: vm-actor SOCKET');
const client = await BrokerClient.connect(socket);
const children: ChildProcess[] = [];

async function run(c: Command): Promise<unknown> {
  switch (c.op) {
    case 'open': {
      const pidfd = c.targetPid === undefined ? undefined : pidfdOpen(c.targetPid);
      try {
        const { lease, fd } = await client.open({
          name: c.name ?? 'vm', memoryBytes: c.memoryBytes ?? 0, ...(pidfd === undefined ? {} : { targetPidFd: pidfd }),
        });
        closeFd(fd);
        return lease;
      } finally {
        if (pidfd !== undefined) closeFd(pidfd);
      }
    }
    case 'resize': return client.resize(c.lease ?? '', c.memoryBytes ?? 0);
    case 'release': return client.release(c.lease ?? '');
    case 'list': return client.list();
    case 'limits': return prlimitMemlock(0, null);
    case 'raise-own-limit': return prlimitMemlock(0, { soft: c.bytes ?? 0, hard: c.bytes ?? 0 });
    case 'spawn-child': {
      const child = spawn('sleep', ['3600'], { stdio: 'ignore' });
      children.push(child);
      return { pid: child.pid };
    }
    default: throw new Error(`unknown op ${c.op}`);
  }
}

function stop(): never {
  client.close();
  for (const child of children) child.kill('SIGKILL');
  process.exit(0);
}

process.stdout.write(`${JSON.stringify({ ok: { pid: process.pid } })}\n`);
for await (const line of createInterface({ input: process.stdin })) {
  const command = JSON.parse(line) as Command;
  if (command.op === 'exit') stop();
  try {
    process.stdout.write(`${JSON.stringify({ ok: await run(command) })}\n`);
  } catch (e) {
    const err = e as { errorName?: string; code?: string; parameters?: unknown; message?: string };
    process.stdout.write(`${JSON.stringify({ error: err.errorName ?? err.code ?? err.message, parameters: err.parameters })}\n`);
  }
}
stop();
