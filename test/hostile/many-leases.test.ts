// Issue #8 item 10 at the real numbers: a daemon holding thousands of leases whose names and
// request ids are as long as the protocol allows, so that all of them together are more JSON
// than the 8 MiB reply cap. An unpaged List would have had to refuse that reply (and used to
// exit on the unhandled rejection); now List answers page by page, every page under the cap,
// and the daemon stays up. Targets are real idle processes (bench/hold-targets.c, made cheap
// with clone(CLONE_VM)), one lease each, opened by managers
// naming them by pidfd, with the simulated device.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { buildC } from '../../bench/c-build.ts';
import { BrokerClient } from '../../client/index.ts';
import { closeFd, pidfdOpen } from '../../native/sys.ts';
import { MAX_REPLY_FRAME_BYTES } from '../../protocol/framing.ts';
import { MAX_LIST_LIMIT, MAX_REQUEST_ID_LENGTH } from '../../protocol/methods.ts';
import { BrokerProcess, REPO } from '../support/daemon.ts';
import { exited } from '../support/children.ts';
import { exchange } from '../support/raw-varlink.ts';
import { STRIP } from './support/processes.ts';

/** Control characters JSON writes as \u00XX: 6 bytes on the wire for one character. */
const SIX_BYTE_CHARS = [...Array.from({ length: 0x20 }, (_, c) => String.fromCharCode(c))]
  .filter((ch) => Buffer.byteLength(JSON.stringify(ch)) === 8);

/** The longest requestId there is (128 characters, 770 bytes of JSON), unique per index. */
function longRequestId(i: number): string {
  let id = '';
  for (let n = i, k = 0; k < 4; k++, n = Math.floor(n / SIX_BYTE_CHARS.length)) id += SIX_BYTE_CHARS[n % SIX_BYTE_CHARS.length];
  return id.padEnd(MAX_REQUEST_ID_LENGTH, '\u0001');
}

/** The longest name there is (128 characters), unique per index. */
const longName = (i: number): string => `vm-${String(i).padStart(6, '0')}-`.padEnd(128, 'x');

/** Starts `n` idle, capability-less target processes; resolves with their pids and a stopper. */
async function holdTargets(n: number): Promise<{ pids: number[]; stop: () => Promise<void> }> {
  const holder = spawn('setpriv', [...STRIP, '--', buildC(join(REPO, 'bench/hold-targets.c')), String(n)],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const pids: number[] = [];
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: holder.stdout }).on('line', (l) => { if (l === 'ready') resolve(); else pids.push(Number(l)); });
    holder.once('exit', (code) => reject(new Error(`hold-targets exited ${String(code)}`)));
  });
  return { pids, stop: async () => { holder.stdin.end(); await exited(holder); } };
}

test('thousands of leases with the longest names and request ids: List pages them all under the reply cap, and the daemon stays up', async () => {
  const sample = { name: longName(0), requestId: longRequestId(0) };
  assert.equal(SIX_BYTE_CHARS.length, 27, 'U+0000-U+001F but \\b \\t \\n \\f \\r');
  assert.equal(Buffer.byteLength(JSON.stringify(sample.requestId)), 6 * MAX_REQUEST_ID_LENGTH + 2);
  // Enough leases that all of them in one reply would be over the cap (~1.1 KB each).
  const leases = 7600;
  const broker = await BrokerProcess.start({ extraArgs: ['--overhead', '0', '--budget', '1T'] });
  let targets: { pids: number[]; stop: () => Promise<void> } | undefined;
  try {
    targets = await holdTargets(leases);
    assert.equal(targets.pids.length, leases);
    const { pids } = targets;
    const socket = broker.socket;
    // 16 managers at once, each with its share of the targets (group commit batches their syncs).
    const managers = 16;
    await Promise.all(Array.from({ length: managers }, async (_, m) => {
      const client = await BrokerClient.connect(socket, { timeoutMs: 60_000 });
      try {
        for (let i = m; i < leases; i += managers) {
          const pidfd = pidfdOpen(pids[i] ?? -1);
          try {
            const { fd } = await client.open({ name: longName(i), memoryBytes: 4096, targetPidFd: pidfd, requestId: longRequestId(i) });
            closeFd(fd);
          } finally {
            closeFd(pidfd);
          }
        }
      } finally {
        client.close();
      }
    }));

    // What an old client sends, List with no parameters, gets the first page and a cursor.
    const raw = await exchange(socket, Buffer.from(`${JSON.stringify({ method: 'io.iommufd.Broker.List' })}\0`), [], 1);
    assert.equal(raw.replies.length, 1, `List was answered (the connection ${raw.closedByPeer ? 'was closed by the daemon' : 'stayed open'})`);
    const first = raw.replies[0]?.['parameters'] as { leases: unknown[]; next?: string } | undefined;
    assert.equal(raw.replies[0]?.['error'], undefined, String(JSON.stringify(raw.replies[0])).slice(0, 300));
    assert.equal(first?.leases.length, MAX_LIST_LIMIT);
    assert.equal(typeof first?.next, 'string');

    // Page by page, every page under the cap, every lease exactly once.
    const client = await BrokerClient.connect(socket, { timeoutMs: 60_000 });
    try {
      let cursor: string | undefined;
      const seen = new Set<string>();
      let totalJsonBytes = 0;
      let pages = 0;
      do {
        const page = await client.listPage(cursor === undefined ? {} : { cursor });
        const bytes = Buffer.byteLength(JSON.stringify({ parameters: page }));
        assert.ok(bytes < MAX_REPLY_FRAME_BYTES, `page ${pages}: ${bytes} bytes`);
        assert.ok(page.leases.length <= MAX_LIST_LIMIT);
        for (const l of page.leases) {
          assert.ok(!seen.has(l.id), `${l.id} listed twice`);
          seen.add(l.id);
          totalJsonBytes += Buffer.byteLength(JSON.stringify(l)) + 1;
        }
        cursor = page.next;
        pages++;
      } while (cursor !== undefined);
      assert.equal(seen.size, leases, 'every lease was listed');
      assert.equal(pages, Math.ceil(leases / MAX_LIST_LIMIT));
      assert.ok(totalJsonBytes > MAX_REPLY_FRAME_BYTES, `all leases together are ${totalJsonBytes} bytes: more than one reply may carry`);

      const all = await client.list();
      assert.equal(all.leases.length, leases, 'the client library follows the cursor to the end');
      assert.equal((await client.status()).leases, leases, 'the daemon is still up and serving');
    } finally {
      client.close();
    }
    assert.equal(broker.child.exitCode, null);
  } finally {
    await broker.stop();
    broker.cleanup();
    await targets?.stop();
  }
});
