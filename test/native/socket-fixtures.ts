// Test support: real connected UnixConnection pairs over a temporary listening socket, and
// helpers to collect what arrives.
//
// Invariants: every fixture cleans up what it created (listener closed, temp dir removed);
// the connections it returns belong to the test, which closes them.
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../native/binding.ts';
import { UnixConnection, UnixServer, type ConnectionOptions } from '../../native/socket.ts';
import { sys } from '../../native/sys.ts';

interface Closable { close(): void }
const tracked = new Set<Closable>();

/** Registers a server or connection to be closed by closeTracked(). */
export function track<T extends Closable>(resource: T): T {
  tracked.add(resource);
  return resource;
}

/**
 * For afterEach: closes what a test left open because it failed or timed out. Open watchers
 * keep the loop alive, so without this a failing test would hang its file instead of failing.
 */
export async function closeTracked(): Promise<void> {
  for (const resource of tracked) resource.close();
  tracked.clear();
  await new Promise((resolve) => setImmediate(resolve));
}

export function makeTempDir(): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'native-test-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Raw fds from listen + connect + accept on a temp path: [listener, client, server]; the caller closes them. */
export function rawSocketPair(): [number, number, number] {
  const temp = makeTempDir();
  try {
    const listener = sys('listen', native.listenUnix(join(temp.dir, 'raw.sock'), 4, 0o600));
    const client = sys('connect', native.connectUnix(join(temp.dir, 'raw.sock')));
    const server = sys('accept4', native.accept(listener));
    return [listener, client, server];
  } finally {
    temp.remove();
  }
}

export interface Pair { client: UnixConnection; server: UnixConnection }

/** A connected pair: `client` from connect(), `server` from the listener's accept. */
export async function connectedPair(clientOptions: ConnectionOptions = {}, serverOptions: ConnectionOptions = {}): Promise<Pair> {
  const temp = makeTempDir();
  const listener = UnixServer.listen(join(temp.dir, 'pair.sock'), { mode: 0o600, backlog: 4, ...serverOptions });
  try {
    const accepted = once(listener, 'connection') as Promise<[UnixConnection]>;
    const client = track(UnixConnection.connect(join(temp.dir, 'pair.sock'), clientOptions));
    const [server] = await accepted;
    return { client, server: track(server) };
  } finally {
    listener.close();
    temp.remove();
  }
}

export async function closePair(pair: Pair): Promise<void> {
  const closed = [pair.client, pair.server].filter((c) => !c.closed)
    .map((c) => new Promise<void>((resolve) => c.once('close', resolve)));
  pair.client.close();
  pair.server.close();
  await Promise.all(closed);
}

export interface Received { data: Buffer; fdsByChunk: number[][] }

/** Collects 'data' until `bytes` bytes arrived; resolves with the data and the fds per chunk. */
export function receive(conn: UnixConnection, bytes: number): Promise<Received> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    const fdsByChunk: number[][] = [];
    let length = 0;
    const onData = (chunk: Buffer, fds: number[]): void => {
      chunks.push(chunk);
      fdsByChunk.push(fds);
      length += chunk.length;
      if (length >= bytes) {
        conn.off('data', onData);
        conn.off('error', reject);
        resolve({ data: Buffer.concat(chunks), fdsByChunk });
      }
    };
    conn.on('data', onData);
    conn.once('error', reject);
  });
}
