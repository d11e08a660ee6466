// Test support: one broker call from a separate process (run as another uid for permission tests).
// argv: SOCKET METHOD JSON_PARAMS. Prints {ok: reply} or {error, parameters} as one JSON line.
// METHOD "open-target" opens a pidfd for params.targetPid and passes it as the target.
//
// Invariants: one connection, one call, closed before the process ends; a refusal is printed
// as its stable error name, never as a thrown stack.
import { BrokerClient } from '../../client/index.ts';
import { pidfdOpen } from '../../native/sys.ts';

const [socket, method, params] = process.argv.slice(2);
if (socket === undefined || method === undefined) throw new Error('usage: SOCKET METHOD [JSON_PARAMS]');
const p = JSON.parse(params ?? '{}') as Record<string, unknown>;
const client = await BrokerClient.connect(socket);
try {
  const reply = method === 'open' ? await client.open(p as { name: string; memoryBytes: number })
    : method === 'open-target' ? await client.open({ name: String(p['name']), memoryBytes: Number(p['memoryBytes']), targetPidFd: pidfdOpen(Number(p['targetPid'])) })
    : method === 'resize' ? await client.resize(String(p['lease']), Number(p['memoryBytes']))
      : method === 'release' ? await client.release(String(p['lease']))
        : method === 'list' ? await client.list()
          : await client.status();
  process.stdout.write(`${JSON.stringify({ ok: reply })}\n`);
} catch (e) {
  const err = e as { errorName?: string; parameters?: unknown; message?: string };
  process.stdout.write(`${JSON.stringify({ error: err.errorName ?? err.message, parameters: err.parameters })}\n`);
} finally {
  client.close();
}
