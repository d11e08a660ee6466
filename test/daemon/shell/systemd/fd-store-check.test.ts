// fdStoreWarning: said only when kept FDs would be lost in a restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fdStoreWarning } from '../../../../daemon/shell/systemd/fd-store-check.ts';

test('no kept FDs (memlock): nothing to say, supervised or not', () => {
  assert.equal(fdStoreWarning({ keepsFds: false, supervised: false, fdStoreMax: undefined }), undefined);
  assert.equal(fdStoreWarning({ keepsFds: false, supervised: true, fdStoreMax: undefined }), undefined);
});

test('kept FDs under systemd with FDSTORE= set: they survive, nothing to say', () => {
  assert.equal(fdStoreWarning({ keepsFds: true, supervised: true, fdStoreMax: 4096 }), undefined);
});

test('kept FDs run by hand: the warning says they are lost and what that costs', () => {
  const w = fdStoreWarning({ keepsFds: true, supervised: false, fdStoreMax: undefined }) ?? '';
  assert.match(w, /not run by systemd/);
  assert.match(w, /LeaseNotResizable/);
});

test('kept FDs under systemd without FDSTORE= (FileDescriptorStoreMax=0, or systemd < 254): the warning names the unit settings', () => {
  const w = fdStoreWarning({ keepsFds: true, supervised: true, fdStoreMax: undefined }) ?? '';
  assert.match(w, /FileDescriptorStoreMax=0/);
  assert.match(w, /FileDescriptorStorePreserve=yes/);
});
