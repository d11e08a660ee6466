import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DEFAULT_DEVICE, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_UID, DEFAULT_RESERVED_CONNECTIONS,
  DEFAULT_STATE_DIR, parseFlags, UsageError, USAGE,
} from '../../daemon/flags.ts';
import { DEFAULT_SOCKET } from '../../protocol/address.ts';
import { readFileSync } from 'node:fs';

test('defaults are the production paths and a 0660 socket', () => {
  const f = parseFlags([]);
  assert.equal(f.socket, DEFAULT_SOCKET);
  assert.equal(f.stateDir, DEFAULT_STATE_DIR);
  assert.equal(f.device, DEFAULT_DEVICE);
  assert.equal(f.vfioRoot, undefined, 'VFIO devices come from the host\'s sysfs and /dev');
  assert.equal(f.socketMode, 0o660);
  assert.equal(f.adminSocket, undefined);
  assert.equal(f.logLevel, 'info');
  assert.equal(f.idleTimeoutMs, 300_000);
  assert.equal(f.frameTimeoutMs, 10_000);
  assert.deepEqual([f.maxConnections, f.maxConnectionsPerUid, f.reservedConnections], [1024, 64, 64]);
  assert.deepEqual([f.maxConnections, f.maxConnectionsPerUid, f.reservedConnections],
    [DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_UID, DEFAULT_RESERVED_CONNECTIONS]);
  assert.ok(Object.isFrozen(f));
});

test('every flag lands in its field', () => {
  const f = parseFlags(['--socket', '/s', '--admin-socket', '/a', '--socket-mode', '0600', '--state-dir', '/d',
    '--config', '/c.toml', '--device', 'simulated', '--overhead', '64M', '--budget', '8G', '--log-level', 'debug', '--idle-timeout', '1.5',
    '--frame-timeout', '2', '--max-connections', '100', '--max-connections-per-uid', '7', '--reserved-connections', '9',
    '--vfio-root', '/fake']);
  assert.deepEqual({ ...f }, { socket: '/s', adminSocket: '/a', socketMode: 0o600, stateDir: '/d', config: '/c.toml',
    device: 'simulated', vfioRoot: '/fake', overhead: '64M', budget: '8G', logLevel: 'debug', idleTimeoutMs: 1500, frameTimeoutMs: 2000,
    maxConnections: 100, maxConnectionsPerUid: 7, reservedConnections: 9, help: false });
  assert.equal(parseFlags(['--frame-timeout', '300ms']).frameTimeoutMs, 300);
  assert.equal(parseFlags(['--frame-timeout', '0']).frameTimeoutMs, 0);
  assert.equal(parseFlags(['--reserved-connections', '0']).reservedConnections, 0);
  assert.equal(parseFlags(['--idle-timeout', '250ms']).idleTimeoutMs, 250);
  assert.equal(parseFlags(['--idle-timeout', '0']).idleTimeoutMs, 0);
});

test('unknown flags, positionals, bad modes and levels are usage errors that say what was wrong', () => {
  assert.throws(() => parseFlags(['--sockett', '/x']), (e: unknown) => e instanceof UsageError && /sockett/.test(e.message));
  assert.throws(() => parseFlags(['stray']), UsageError);
  assert.throws(() => parseFlags(['--socket-mode', '660x']), /--socket-mode must be octal/);
  assert.throws(() => parseFlags(['--log-level', 'loud']), /--log-level must be one of/);
  assert.throws(() => parseFlags(['--idle-timeout', '5m']), /--idle-timeout takes seconds/);
  assert.throws(() => parseFlags(['--frame-timeout', 'soon']), /--frame-timeout takes seconds/);
  assert.throws(() => parseFlags(['--max-connections', '0']), /--max-connections takes a whole number >= 1, got "0"/);
  assert.throws(() => parseFlags(['--max-connections-per-uid=-3']), /--max-connections-per-uid takes a whole number >= 1/);
  assert.throws(() => parseFlags(['--reserved-connections', '1.5']), /--reserved-connections takes a whole number >= 0/);
  assert.throws(() => parseFlags(['--max-connections', '8', '--reserved-connections', '8']), /must be less than --max-connections/);
});

test('--help names every connection limit with its default', () => {
  for (const flag of ['--max-connections ', '--max-connections-per-uid', '--reserved-connections', '--frame-timeout', '--idle-timeout']) {
    assert.ok(USAGE.includes(flag), flag);
  }
  assert.match(USAGE, new RegExp(`default ${DEFAULT_MAX_CONNECTIONS}\\)`));
  assert.match(USAGE, new RegExp(`default ${DEFAULT_RESERVED_CONNECTIONS}\\)`));
});

test('main.ts writes no socket numbers inline: backlogs, modes and limits are named in flags.ts', () => {
  const main = readFileSync(new URL('../../daemon/main.ts', import.meta.url), 'utf8');
  assert.deepEqual(main.match(/\b(backlog|mode|\w*[cC]onnections\w*|\w*[tT]imeout\w*): (0o)?\d[\d_]*/g), null);
});

test('--vfio-root (a fake VFIO tree) is accepted only with the simulated device', () => {
  assert.throws(() => parseFlags(['--vfio-root', '/fake']), (e: unknown) => e instanceof UsageError && /needs --device simulated/.test(e.message));
  assert.throws(() => parseFlags(['--vfio-root', '/fake', '--device', '/dev/iommu']), UsageError);
  assert.equal(parseFlags(['--vfio-root', '/fake', '--device', 'simulated']).vfioRoot, '/fake');
});
