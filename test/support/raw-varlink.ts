// Test support: raw bytes (and fds) to a daemon's Varlink socket, and what comes back, below
// the client library, for malformed and unexpected input.
//
// Invariants:
// - The bytes go out exactly as given, the fds attached to their first byte
//   (UnixConnection.send), which takes the fds: they are closed once sent or with the connection.
// - A reply carrying fds fails the test (no reply the daemon sends to such input carries one).
// - The connection is closed on every outcome; the wait is bounded (10 s, then it rejects).
import assert from 'node:assert/strict';
import { UnixConnection } from '../../native/socket.ts';

export interface Outcome { replies: Array<Record<string, unknown>>; closedByPeer: boolean }

/** Sends raw bytes (and fds), collects NUL-separated replies until `expect` replies or the peer closes (Infinity: until it closes). */
export async function exchange(socket: string, data: Buffer, fds: number[], expect: number): Promise<Outcome> {
  const conn = UnixConnection.connect(socket);
  const replies: Array<Record<string, unknown>> = [];
  let pending = Buffer.alloc(0);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { conn.close(); reject(new Error(`no answer; got ${JSON.stringify(replies)}`)); }, 10_000);
    const done = (closedByPeer: boolean): void => { clearTimeout(timer); conn.close(); resolve({ replies, closedByPeer }); };
    conn.on('data', (chunk: Buffer, got: number[]) => {
      assert.equal(got.length, 0, 'no reply here carries fds');
      pending = Buffer.concat([pending, chunk]);
      let nul: number;
      while ((nul = pending.indexOf(0)) >= 0) {
        replies.push(JSON.parse(pending.subarray(0, nul).toString('utf8')) as Record<string, unknown>);
        pending = pending.subarray(nul + 1);
      }
      if (replies.length >= expect) done(false);
    });
    conn.on('end', () => done(true));
    conn.on('error', () => done(true));
    conn.send(data, fds);
  });
}
