// Test support: a program run under test/support/fdstore-standin.c that does what the broker
// does with systemd's fd store, through the broker's own code: takes the stored fds back by
// name (listenFdsFromEnv), reports them on stdout as one JSON line, then stores a fresh memfd
// under each name given as an argument (Notifier.store) and removes each name given as -NAME
// (Notifier.remove), and waits to be killed.
//
// Invariants: it reports each stored fd with what it points at and whether it is close-on-exec
// (as the broker's code left it); the memfds it stores stay open in this process until it is
// killed, so the stand-in's copies are not the only ones.
import { readFileSync, readlinkSync } from 'node:fs';
import { memfd } from '../../native/sys.ts';
import { listenFdsFromEnv, SOCKET_NAMES } from '../../daemon/shell/systemd/activation.ts';
import { Notifier } from '../../daemon/shell/systemd/notify.ts';

const quiet = { info: () => {}, warn: (m: string) => process.stderr.write(`${m}\n`) };
const taken = listenFdsFromEnv(process.env, process.pid, SOCKET_NAMES);
const notifier = Notifier.fromEnv(process.env, process.pid, quiet);
const stored = Object.fromEntries([...taken.stored].map(([name, fd]) => [name, { fd, target: readlinkSync(`/proc/self/fd/${fd}`), cloexec: (parseInt(/^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1] ?? '0', 8) & 0o2000000) !== 0 }]));
process.stdout.write(`${JSON.stringify({ stored, warnings: taken.warnings, env: process.env['LISTEN_FDS'] ?? null })}\n`);
for (const arg of process.argv.slice(2)) {
  if (arg.startsWith('-')) notifier.remove(arg.slice(1));
  else notifier.store(arg, memfd(`fdstore-test-${arg}`)); // the memfd stays open in this process until it is killed
}
process.stdout.write('done\n');
setInterval(() => {}, 1 << 30);
