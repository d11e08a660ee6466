// The usage text documents every command and every option the parser accepts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCommand } from '../../cli/args.ts';
import { COMMAND_HELP, helpText, isHelpTopic, usageHint } from '../../cli/help.ts';

const COMMANDS = ['open', 'resize', 'release', 'list', 'status', 'exec', 'pass', 'hotplug', 'unplug', 'measure'];

test('every command has a help block, and nothing else does', () => {
  assert.deepEqual(Object.keys(COMMAND_HELP).sort(), [...COMMANDS].sort());
  for (const c of COMMANDS) assert.ok(isHelpTopic(c));
  assert.ok(!isHelpTopic('toString'));
  assert.ok(!isHelpTopic('help'));
});

test('every option a command accepts appears in its block (checked through the parser)', () => {
  // For each --option mentioned in a block's synopsis, the parser accepts it for that command
  // (it may then complain about its value, but never that the option does not apply).
  for (const [command, block] of Object.entries(COMMAND_HELP)) {
    const synopsis = block.split('\n')[0] ?? '';
    assert.ok(synopsis.startsWith(command), `${command}'s block starts with its synopsis`);
    for (const option of synopsis.match(/--[a-z-]+/g) ?? []) {
      try {
        parseCommand([command, option, 'x']);
      } catch (e) {
        assert.ok(e instanceof Error);
        assert.doesNotMatch(e.message, /does not apply|Unknown option/, `${command} ${option}`);
      }
    }
    // the probe itself can fail: an option of another command is reported as not applying
    assert.throws(() => parseCommand([command, command === 'open' ? '--qmp' : '--hold', 'x']), /does not apply|Unknown option/);
  }
  // and the reverse: an option the parser takes for exec/pass/open is named in the block
  for (const [command, options] of Object.entries({
    open: ['--name', '--memory', '--target-pid', '--request-id', '--hold'],
    exec: ['--name', '--memory', '--request-id', '--no-substitute', '--keep-fd'],
    pass: ['--qmp', '--fdname', '--name', '--memory', '--size-from-qmp', '--target-pid', '--request-id'],
    resize: ['--memory', '--qmp', '--size-from-qmp'],
    hotplug: ['--qmp', '--memory', '--id', '--node'],
    unplug: ['--qmp', '--id'],
    measure: ['--qmp'],
  })) {
    for (const o of options) assert.ok(COMMAND_HELP[command as keyof typeof COMMAND_HELP].includes(o), `${command} documents ${o}`);
  }
});

test('full help lists every command, the shared options and the exit codes', () => {
  const text = helpText();
  for (const c of COMMANDS) assert.match(text, new RegExp(`^  ${c}\\b`, 'm'));
  for (const o of ['--socket', '--json', '--timeout']) assert.ok(text.includes(o));
  assert.match(text, /Exit status: 0 ok; 1 refused.*2 usage error;\s+3 cannot reach the broker.*4 internal error/s);
});

test('topic help shows that command only; the usage hint points at it', () => {
  const text = helpText('pass');
  assert.ok(text.includes('--qmp SOCKET'));
  assert.ok(!text.includes('--keep-fd'));
  assert.match(usageHint('resize'), /^usage: iommufdctl resize LEASE \(--memory SIZE \| --qmp SOCKET --size-from-qmp\)\n.*help resize/s);
  assert.equal(usageHint('nonsense'), "see 'iommufdctl --help'\n");
});

test('pass says who may pass to whose QEMU; exec says what QEMU\'s ENOMEM means', () => {
  assert.match(COMMAND_HELP.pass, /only a\s+manager .* may Open for another process, even one running\s+as the caller's own uid.*target-not-self/s);
  assert.match(COMMAND_HELP.exec, /Cannot allocate memory.*means that limit was reached/s);
});
