// daemon/shell/peer.ts: a connection's peer is the core's Peer plus the pidfd it owns; the
// identity fields are declared once (daemon/core/policy.ts).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { filesMatching } from '../../support/sources.ts';

test('one Peer type: only the core declares the identity, the shell extends it with the pidfd', () => {
  assert.deepEqual(filesMatching(/interface Peer\b/), ['daemon/core/policy.ts']);
  assert.deepEqual(filesMatching(/interface ConnectionPeer extends Peer\b/), ['daemon/shell/peer.ts']);
});
