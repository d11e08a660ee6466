import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_DEVICE, DEFAULT_SOCKET, DEFAULT_STATE_DIR, parseFlags, UsageError } from '../../daemon/flags.ts';

test('defaults are the production paths and a 0660 socket', () => {
  const f = parseFlags([]);
  assert.equal(f.socket, DEFAULT_SOCKET);
  assert.equal(f.stateDir, DEFAULT_STATE_DIR);
  assert.equal(f.device, DEFAULT_DEVICE);
  assert.equal(f.socketMode, 0o660);
  assert.equal(f.adminSocket, undefined);
  assert.equal(f.logLevel, 'info');
  assert.equal(f.idleTimeoutMs, 300_000);
  assert.ok(Object.isFrozen(f));
});

test('every flag lands in its field', () => {
  const f = parseFlags(['--socket', '/s', '--admin-socket', '/a', '--socket-mode', '0600', '--state-dir', '/d',
    '--config', '/c.toml', '--device', 'simulated', '--overhead', '64M', '--budget', '8G', '--log-level', 'debug', '--idle-timeout', '1.5']);
  assert.deepEqual({ ...f }, { socket: '/s', adminSocket: '/a', socketMode: 0o600, stateDir: '/d', config: '/c.toml',
    device: 'simulated', overhead: '64M', budget: '8G', logLevel: 'debug', idleTimeoutMs: 1500, help: false });
  assert.equal(parseFlags(['--idle-timeout', '250ms']).idleTimeoutMs, 250);
  assert.equal(parseFlags(['--idle-timeout', '0']).idleTimeoutMs, 0);
});

test('unknown flags, positionals, bad modes and levels are usage errors that say what was wrong', () => {
  assert.throws(() => parseFlags(['--sockett', '/x']), (e: unknown) => e instanceof UsageError && /sockett/.test(e.message));
  assert.throws(() => parseFlags(['stray']), UsageError);
  assert.throws(() => parseFlags(['--socket-mode', '660x']), /--socket-mode must be octal/);
  assert.throws(() => parseFlags(['--log-level', 'loud']), /--log-level must be one of/);
  assert.throws(() => parseFlags(['--idle-timeout', '5m']), /--idle-timeout takes seconds/);
});
