// Test helper (not a test): a process that was given sockets the way systemd gives them, calls
// listenFdsFromEnv and prints what it got as one JSON line on stdout.
//   argv[2]: comma-separated known names (default "broker,admin")
//   argv[3]: "serve" -> then listen on every adopted fd with node:net and answer each
//            connection with the socket's name, until stdin closes.
// fd ownership: the adopted fds belong to this probe; in "serve" mode each net.Server owns one.
import { readFileSync, readlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import { native } from '../../../../native/binding.ts';
import { ActivationError, listenFdsFromEnv } from '../../../../daemon/shell/systemd/activation.ts';

const O_CLOEXEC = 0o2000000;

function describeFd(fd: number): { target: string | null; cloexec: boolean | null } {
  try {
    const target = readlinkSync(`/proc/self/fd/${fd}`);
    const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))?.[1];
    return { target, cloexec: flags === undefined ? null : (parseInt(flags, 8) & O_CLOEXEC) !== 0 };
  } catch {
    return { target: null, cloexec: null };
  }
}

const knownNames = (process.argv[2] ?? 'broker,admin').split(',');

// Node marks every inherited fd >= 3 close-on-exec at start-up. listenFdsFromEnv does not rely
// on that; to observe that it sets FD_CLOEXEC itself, clear it on the passed fds first.
const passedCount = Number(process.env['LISTEN_FDS'] ?? '0');
for (let fd = 3; fd < 3 + passedCount && fd < 10; fd++) native.setCloexec(fd, false);
const serve = process.argv[3] === 'serve';
// What fds 3..9 were before the call (the range any test passes sockets in).
const range = [3, 4, 5, 6, 7, 8, 9];
const before = Object.fromEntries(range.map((fd) => [fd, describeFd(fd)]));

const report: Record<string, unknown> = { pid: process.pid, before };
let adopted = new Map<string, number>();
try {
  const result = listenFdsFromEnv(process.env, process.pid, knownNames);
  adopted = result.fds;
  report['ok'] = true;
  report['sockets'] = Object.fromEntries([...result.fds].map(([name, fd]) => [name, { fd, ...describeFd(fd) }]));
  report['stored'] = Object.fromEntries([...result.stored].map(([name, fd]) => [name, { fd, ...describeFd(fd) }]));
  report['warnings'] = result.warnings;
} catch (error) {
  report['ok'] = false;
  report['problem'] = error instanceof ActivationError ? error.problem : 'not an ActivationError';
  report['message'] = error instanceof Error ? error.message : String(error);
}
report['after'] = Object.fromEntries(range.map((fd) => [fd, describeFd(fd)]));
report['listenVariablesLeft'] = Object.keys(process.env).filter((k) => k.startsWith('LISTEN_'));
process.stdout.write(`${JSON.stringify(report)}\n`);

if (serve) {
  const servers = [...adopted].map(([name, fd]) =>
    createServer((conn) => conn.end(`${name}\n`)).listen({ fd }));
  process.stdin.resume();
  process.stdin.on('end', () => { for (const s of servers) s.close(); });
}
