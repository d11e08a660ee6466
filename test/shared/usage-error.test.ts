// shared/usage-error.ts: one UsageError for both programs' command lines.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UsageError } from '../../shared/usage-error.ts';
import { parseFlags, UsageError as DaemonUsageError } from '../../daemon/flags.ts';
import { parseCommand, UsageError as CliUsageError } from '../../cli/args.ts';
import { filesMatching } from '../support/sources.ts';

test('the daemon and iommufdctl throw the same UsageError class, defined once', () => {
  assert.equal(DaemonUsageError, UsageError);
  assert.equal(CliUsageError, UsageError);
  assert.deepEqual(filesMatching(/class UsageError\b/), ['shared/usage-error.ts']);
  assert.throws(() => parseFlags(['--bogus']), (e: unknown) => e instanceof UsageError && e.command === undefined && e.name === 'UsageError');
  assert.throws(() => parseCommand(['open', '--bogus']), (e: unknown) => e instanceof UsageError && e.command === 'open');
});
