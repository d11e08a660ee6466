// exec's pure half: PATH resolution as execvp does it, {iommufd} substitution, the environment.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildArgv, buildEnv, DEVICE_FDS_ENV, FD_ENV, LEASE_ENV, ProgramNotFound, resolveProgram } from '../../cli/exec-program.ts';

let dir: string;
before(() => {
  dir = mkdtempSync(join(tmpdir(), 'iommufdctl-exec-'));
  for (const d of ['a', 'b', 'c']) mkdirSync(join(dir, d));
  writeFileSync(join(dir, 'a', 'tool'), 'not executable');
  writeFileSync(join(dir, 'b', 'tool'), '#!/bin/sh\n');
  chmodSync(join(dir, 'b', 'tool'), 0o755);
  writeFileSync(join(dir, 'c', 'tool'), '#!/bin/sh\n');
  chmodSync(join(dir, 'c', 'tool'), 0o755);
  mkdirSync(join(dir, 'c', 'dironly'));
});
after(() => rmSync(dir, { recursive: true, force: true }));

test('the first executable regular file on PATH wins; non-executable files are skipped', () => {
  const path = ['a', 'b', 'c'].map((d) => join(dir, d)).join(':');
  assert.equal(resolveProgram('tool', path), join(dir, 'b', 'tool'));
  assert.equal(resolveProgram('tool', [join(dir, 'c'), join(dir, 'b')].join(':')), join(dir, 'c', 'tool'));
});

test('directories are not programs, and a missing program says where it looked', () => {
  assert.throws(() => resolveProgram('dironly', join(dir, 'c')), ProgramNotFound);
  assert.throws(() => resolveProgram('tool', join(dir, 'a')), (e: unknown) =>
    e instanceof ProgramNotFound && e.program === 'tool' && e.message.includes(join(dir, 'a')));
});

test('a name with a slash is used as given (relative or absolute), never searched', () => {
  assert.equal(resolveProgram(join(dir, 'b', 'tool'), '/nonexistent'), join(dir, 'b', 'tool'));
  assert.throws(() => resolveProgram(join(dir, 'a', 'tool'), join(dir, 'b')), /not an executable regular file/);
});

test('an unset PATH falls back to the standard directories', () => {
  const expected = ['/usr/local/bin/sh', '/usr/bin/sh', '/bin/sh'].find((p) => existsSync(p));
  assert.ok(expected !== undefined, 'this machine has a sh in a standard directory');
  assert.equal(resolveProgram('sh', undefined), expected);
  assert.throws(() => resolveProgram('sh', ''), ProgramNotFound, 'an empty PATH is the current directory only');
});

test('every {iommufd} in every argument becomes the fd number', () => {
  assert.deepEqual(buildArgv('q{iommufd}', ['-object', 'iommufd,id=a,fd={iommufd}', '{iommufd}{iommufd}', 'plain'], 42, true),
    ['q42', '-object', 'iommufd,id=a,fd=42', '4242', 'plain']);
  assert.deepEqual(buildArgv('q', ['fd={iommufd}'], 42, false), ['q', 'fd={iommufd}']);
});

test('the environment is ours plus the fd and the lease, replacing stale values', () => {
  const env = buildEnv({ PATH: '/bin', HOME: '/root', [FD_ENV]: '999', EMPTY: '', GONE: undefined }, 7, 'l-0123456789abcdef');
  assert.deepEqual(env.sort(), ['EMPTY=', 'HOME=/root', `${FD_ENV}=7`, `${LEASE_ENV}=l-0123456789abcdef`, 'PATH=/bin'].sort());
});

test('every {vfio:ADDR} becomes its device\'s fd number, however ADDR is spelled; nothing else changes', () => {
  const devices = [{ address: '0000:00:03.0', fd: 8 }, { address: 'abcd:81:1f.7', fd: 9 }];
  assert.deepEqual(buildArgv('q', ['fd={iommufd}', 'vfio-pci,fd={vfio:0000:00:03.0}', '{vfio:00:03.0}{vfio:ABCD:81:1F.7}', '{vfio}', '{vfio:00:05.0}'], 7, true, devices),
    ['q', 'fd=7', 'vfio-pci,fd=8', '89', '{vfio}', '{vfio:00:05.0}']);
  assert.deepEqual(buildArgv('q', ['fd={vfio:00:03.0}'], 7, false, devices), ['q', 'fd={vfio:00:03.0}']);
});

test('the environment lists the device fds, replacing a stale list, and has none without devices', () => {
  const env = buildEnv({ [DEVICE_FDS_ENV]: 'stale' }, 7, 'l-0123456789abcdef', [{ address: '0000:00:03.0', fd: 8 }, { address: '0000:00:04.0', fd: 9 }]);
  assert.deepEqual(env.filter((e) => e.startsWith(DEVICE_FDS_ENV)), [`${DEVICE_FDS_ENV}=0000:00:03.0=8,0000:00:04.0=9`]);
  assert.deepEqual(buildEnv({ [DEVICE_FDS_ENV]: 'stale' }, 7, 'l-0123456789abcdef').filter((e) => e.startsWith(DEVICE_FDS_ENV)), []);
});
