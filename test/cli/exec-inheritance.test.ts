// The in-process checks of exec-inheritance.ts (its effect on an exec'd program is tested end to
// end in cli-handoff.test.ts): reading fd flags, and refusing --keep-fd of an fd we do not have.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UsageError } from '../../cli/args.ts';
import { checkKeptFds, fdFlags } from '../../cli/exec-inheritance.ts';
import { closeFd, memfd, setCloexec } from '../../native/sys.ts';

const O_CLOEXEC = 0o2000000;
const O_RDWR = 0o2;

test('fdFlags reads the open-file flags and FD_CLOEXEC of an fd, and undefined for a closed one', () => {
  const fd = memfd('flags-probe');
  try {
    const flags = fdFlags(fd);
    assert.ok(flags !== undefined);
    assert.equal(flags & O_RDWR, O_RDWR);
    assert.equal(flags & O_CLOEXEC, O_CLOEXEC, 'memfds are created close-on-exec');
    setCloexec(fd, false);
    assert.equal((fdFlags(fd) ?? O_CLOEXEC) & O_CLOEXEC, 0);
  } finally {
    closeFd(fd);
  }
  assert.equal(fdFlags(fd), undefined);
});

test('checkKeptFds accepts open fds and refuses a closed one as a usage error', () => {
  const fd = memfd('kept-probe');
  try {
    assert.doesNotThrow(() => checkKeptFds([fd]));
  } finally {
    closeFd(fd);
  }
  assert.throws(() => checkKeptFds([fd]), (e: unknown) => e instanceof UsageError && e.message.includes(`no open fd ${fd}`));
});
