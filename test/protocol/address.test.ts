// protocol/address.ts: the default socket path is one fact, spelled once, and systemd's socket
// unit listens where the daemon and the client expect it.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { DEFAULT_SOCKET } from '../../protocol/address.ts';
import { DEFAULT_SOCKET as CLIENT_DEFAULT_SOCKET } from '../../client/index.ts';
import { parseFlags } from '../../daemon/flags.ts';
import { filesMatching } from '../support/sources.ts';

test('the default socket path is written once, in protocol/address.ts', () => {
  assert.deepEqual(filesMatching(/\/run\/iommufd-broker\/broker\.sock/), ['protocol/address.ts']);
});

test('the daemon, the client library and systemd/iommufd-broker.socket all use DEFAULT_SOCKET', () => {
  assert.equal(parseFlags([]).socket, DEFAULT_SOCKET);
  assert.equal(CLIENT_DEFAULT_SOCKET, DEFAULT_SOCKET);
  const unit = readFileSync(new URL('../../systemd/iommufd-broker.socket', import.meta.url), 'utf8');
  assert.match(unit, new RegExp(`^ListenStream=${DEFAULT_SOCKET.replaceAll('.', '\\.')}$`, 'm'));
});
