// Test support: a datagram socket standing in for systemd's NOTIFY_SOCKET.
//
// Invariants:
// - The socket lives in a child `perl` (perl-base is Essential on Debian, and its Socket module
//   binds abstract names, which nothing in Node can): that child owns the socket's fd, so the
//   test process's fd table is untouched.
// - Every datagram is kept, in arrival order; take() hands them out one by one, so a test can
//   assert an exact sequence (a message it did not expect shows up as the wrong next one).
// - start() resolves only once the socket is bound: no message can be lost to a race.
import { createInterface } from 'node:readline';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';

const RECEIVER = String.raw`
use strict; use Socket;
my $addr = $ARGV[0];
$addr = "\0" . substr($addr, 1) if substr($addr, 0, 1) eq '@';
socket(my $s, AF_UNIX, SOCK_DGRAM, 0) or die "socket: $!";
bind($s, pack_sockaddr_un($addr)) or die "bind $ARGV[0]: $!";
$| = 1; print "ready\n";
while (defined(recv($s, my $buf, 65536, 0))) { print unpack("H*", $buf), "\n"; }
`;

export class NotifyReceiver {
  readonly messages: string[] = [];
  #taken = 0;
  #wake: (() => void) | undefined;
  #stderr = '';

  private constructor(readonly address: string, private readonly child: ChildProcessWithoutNullStreams) {}

  /** Binds `address` ("/path" or "@abstract-name") in a child and resolves once it listens. */
  static start(address: string): Promise<NotifyReceiver> {
    const child = spawn('perl', ['-e', RECEIVER, address], { stdio: ['pipe', 'pipe', 'pipe'] });
    const receiver = new NotifyReceiver(address, child);
    child.stderr.setEncoding('utf8').on('data', (c: string) => { receiver.#stderr += c; });
    return new Promise((resolve, reject) => {
      let ready = false;
      createInterface({ input: child.stdout }).on('line', (line) => {
        if (!ready && line === 'ready') {
          ready = true;
          resolve(receiver);
        } else {
          receiver.messages.push(Buffer.from(line, 'hex').toString('utf8'));
          receiver.#wake?.();
        }
      });
      child.on('exit', (code) => {
        if (!ready) reject(new Error(`notify receiver for ${address} exited (${code}): ${receiver.#stderr}`));
        receiver.#wake?.();
      });
    });
  }

  /** The next datagram not yet taken (waits for it; fails after timeoutMs as a hang guard). */
  async take(timeoutMs = 10_000): Promise<string> {
    const deadline = setTimeout(() => this.#wake?.(), timeoutMs);
    try {
      while (this.messages.length <= this.#taken) {
        if (this.child.exitCode !== null) throw new Error(`notify receiver exited: ${this.#stderr}`);
        const before = this.messages.length;
        await new Promise<void>((resolve) => { this.#wake = resolve; });
        this.#wake = undefined;
        if (this.messages.length === before && this.child.exitCode === null) {
          throw new Error(`no datagram on ${this.address} within ${timeoutMs} ms (received so far: ${JSON.stringify(this.messages)})`);
        }
      }
    } finally {
      clearTimeout(deadline);
    }
    const message = this.messages[this.#taken] as string;
    this.#taken += 1;
    return message;
  }

  /** Takes datagrams until one satisfies `match`; returns the ones skipped and the match. */
  async takeUntil(match: (m: string) => boolean, timeoutMs = 10_000): Promise<{ skipped: string[]; match: string }> {
    const skipped: string[] = [];
    for (;;) {
      const m = await this.take(timeoutMs);
      if (match(m)) return { skipped, match: m };
      skipped.push(m);
    }
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.kill('SIGTERM');
    await exited;
  }
}
