// Name -> id resolution from passwd/group files: the format, lazy reads, caching, errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AccountError, AccountFiles, parseAccountFile } from '../../../daemon/shell/accounts.ts';

test('parseAccountFile reads name and id, skipping comments, blanks and NIS entries', () => {
  const ids = parseAccountFile('p', '# comment\n\nroot:x:0:0:root:/root:/bin/bash\n+nisuser::::::\n-@netgroup\nqemu:x:64055:64055::/:/usr/sbin/nologin\nroot:x:5:5::/:/bin/sh\n');
  assert.deepEqual([...ids], [['root', 0], ['qemu', 64055]], 'the first root wins');
});

test('a malformed line is an error naming file and line', () => {
  assert.throws(() => parseAccountFile('/etc/group', 'kvm:x:107:\nbroken line\n'), (e: unknown) =>
    e instanceof AccountError && e.message.startsWith('/etc/group:2: '));
  assert.throws(() => parseAccountFile('g', 'kvm:x:abc:\n'), /g:1: /);
  assert.throws(() => parseAccountFile('g', ':x:1:\n'), /g:1: /);
});

test('AccountFiles resolves users and groups, reads each file once, and only when needed', () => {
  const dir = mkdtempSync(join(tmpdir(), 'accounts-'));
  const passwd = join(dir, 'passwd');
  writeFileSync(passwd, 'alice:x:1000:1000::/home/alice:/bin/sh\n');
  const accounts = new AccountFiles(passwd, join(dir, 'no-such-group-file'));
  assert.equal(accounts.uid('alice'), 1000, 'the missing group file is never read for a user');
  writeFileSync(passwd, 'alice:x:2000:2000::/home/alice:/bin/sh\n');
  assert.equal(accounts.uid('alice'), 1000, 'read once: a later change is not seen');
  assert.throws(() => accounts.gid('kvm'), (e: unknown) =>
    e instanceof AccountError && /cannot read .*no-such-group-file to resolve group names \(ENOENT\)/.test(e.message));
  assert.throws(() => accounts.uid('bob'), /unknown user "bob": not in .*passwd.*write the numeric uid instead/);
  assert.throws(() => accounts.uid('1000'), /write 1000 without quotes/);
  rmSync(dir, { recursive: true });
});

test('the system files resolve root by default', () => {
  const accounts = new AccountFiles();
  assert.equal(accounts.uid('root'), 0);
  assert.equal(accounts.gid('root'), 0);
});
