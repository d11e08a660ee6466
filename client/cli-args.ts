// Command-line parsing for iommufdctl: argv in, one typed Command (or a UsageError) out.
//
// Invariants:
// - Pure: no I/O, no environment reads, nothing contacts the broker. Every value the broker
//   would refuse for its shape (name, lease id, size, pid) is refused here first, as a
//   UsageError (exit code 2) that names the offending option and says what is expected.
// - Each subcommand accepts exactly its own options; an option meant for another subcommand
//   is a usage error, never silently ignored.
// - `exec` takes its program and arguments only after `--`, verbatim (nothing after `--` is
//   parsed as an option).
import { parseArgs } from 'node:util';
import { LEASE_ID_PATTERN, NAME_PATTERN } from '../protocol/methods.ts';
import { parseSize } from '../protocol/sizes.ts';
import { DEFAULT_CALL_TIMEOUT_MS, DEFAULT_SOCKET } from './defaults.ts';

/** The token `exec` replaces with the received fd number. */
export const FD_TOKEN = '{iommufd}';

export interface CommonOptions {
  socketPath: string;
  json: boolean;
  timeoutMs: number;
}

export interface OpenRequest {
  name: string;
  memoryBytes: number;
  requestId?: string;
}

export type Command =
  | { kind: 'help'; topic?: string }
  | { kind: 'open'; common: CommonOptions; request: OpenRequest; targetPid?: number; hold: boolean }
  | { kind: 'resize'; common: CommonOptions; lease: string; memoryBytes: number }
  | { kind: 'release'; common: CommonOptions; lease: string }
  | { kind: 'list'; common: CommonOptions }
  | { kind: 'status'; common: CommonOptions }
  | {
    kind: 'exec'; common: CommonOptions; request: OpenRequest; substitute: boolean;
    /** Inherited fds (besides 0-2) the program must inherit in turn, from --keep-fd. */
    keepFds: number[];
    program: string; args: string[];
  }
  | { kind: 'pass'; common: CommonOptions; request: OpenRequest; qmpSocket: string; fdname: string; targetPid?: number };

export type CommandKind = Command['kind'];

/** A mistake in how iommufdctl was called; the CLI prints it with the usage and exits 2. */
export class UsageError extends Error {
  readonly command: string | undefined;
  constructor(message: string, command?: string) {
    super(message);
    this.name = 'UsageError';
    this.command = command;
  }
}

const optionSpec = {
  socket: { type: 'string' },
  json: { type: 'boolean' },
  timeout: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  name: { type: 'string' },
  memory: { type: 'string' },
  'target-pid': { type: 'string' },
  'request-id': { type: 'string' },
  hold: { type: 'boolean' },
  'no-substitute': { type: 'boolean' },
  qmp: { type: 'string' },
  fdname: { type: 'string' },
  'keep-fd': { type: 'string', multiple: true },
} as const;

type OptionName = keyof typeof optionSpec;
type Values = {
  [K in OptionName]?: (typeof optionSpec)[K] extends { multiple: true } ? string[]
    : (typeof optionSpec)[K]['type'] extends 'string' ? string : boolean;
};

const GLOBAL_OPTIONS: readonly OptionName[] = ['socket', 'json', 'timeout', 'help'];
const COMMAND_OPTIONS: Record<Exclude<CommandKind, 'help'>, readonly OptionName[]> = {
  open: ['name', 'memory', 'target-pid', 'request-id', 'hold'],
  resize: ['memory'],
  release: [],
  list: [],
  status: [],
  exec: ['name', 'memory', 'request-id', 'no-substitute', 'keep-fd'],
  pass: ['qmp', 'fdname', 'name', 'memory', 'target-pid', 'request-id'],
};
/** Positional arguments each command takes after its name. */
const POSITIONALS: Record<Exclude<CommandKind, 'help'>, readonly string[]> = {
  open: [], resize: ['LEASE'], release: ['LEASE'], list: [], status: [], exec: [], pass: [],
};

function isCommandKind(s: string): s is Exclude<CommandKind, 'help'> {
  return Object.hasOwn(COMMAND_OPTIONS, s);
}

/** Parses iommufdctl's arguments (without node and script path). Throws UsageError. */
export function parseCommand(argv: readonly string[]): Command {
  const dashDash = argv.indexOf('--');
  const head = dashDash === -1 ? argv.slice() : argv.slice(0, dashDash);
  const tail = dashDash === -1 ? undefined : argv.slice(dashDash + 1);

  let values: Values;
  let positionals: string[];
  try {
    const parsed = parseArgs({ args: head, options: optionSpec, strict: true, allowPositionals: true });
    values = parsed.values;
    positionals = parsed.positionals;
  } catch (e) {
    throw new UsageError(e instanceof Error ? e.message : String(e), commandWord(head));
  }

  const [word, ...rest] = positionals;
  if (word === undefined || word === 'help') {
    if (rest.length > 1) throw new UsageError(`help takes at most one topic, got: ${rest.join(' ')}`);
    const topic = rest[0];
    return topic === undefined ? { kind: 'help' } : { kind: 'help', topic };
  }
  if (!isCommandKind(word)) throw new UsageError(`unknown command '${word}'`);
  if (values.help === true) return { kind: 'help', topic: word };

  const allowed = new Set<OptionName>([...GLOBAL_OPTIONS, ...COMMAND_OPTIONS[word]]);
  for (const key of Object.keys(values) as OptionName[]) {
    if (!allowed.has(key)) throw new UsageError(`option --${key} does not apply to '${word}'`, word);
  }
  const wanted = POSITIONALS[word];
  if (rest.length !== wanted.length) {
    const expected = wanted.length === 0 ? 'no arguments' : wanted.join(' ');
    throw new UsageError(`'${word}' takes ${expected}, got ${rest.length === 0 ? 'none' : rest.join(' ')}`, word);
  }
  if (tail !== undefined && word !== 'exec') throw new UsageError(`'--' only applies to 'exec'`, word);

  const common = commonOptions(values, word);
  switch (word) {
    case 'open': {
      const targetPid = optionalPid(values['target-pid'], word);
      return {
        kind: 'open', common, request: openRequest(values, word), hold: values.hold === true,
        ...(targetPid === undefined ? {} : { targetPid }),
      };
    }
    case 'resize':
      return { kind: 'resize', common, lease: leaseArg(rest[0], word), memoryBytes: sizeOption(values.memory, word) };
    case 'release':
      return { kind: 'release', common, lease: leaseArg(rest[0], word) };
    case 'list':
      return { kind: 'list', common };
    case 'status':
      return { kind: 'status', common };
    case 'exec': {
      const [program, ...args] = tail ?? [];
      if (program === undefined || program === '') {
        throw new UsageError(`'exec' needs the program after '--', e.g. -- qemu-system-x86_64 ... fd=${FD_TOKEN}`, word);
      }
      const substitute = values['no-substitute'] !== true;
      if (substitute && ![program, ...args].some((a) => a.includes(FD_TOKEN))) {
        throw new UsageError(`no argument contains ${FD_TOKEN}; put it where the fd number goes ` +
          `(e.g. -object iommufd,id=iommufd0,fd=${FD_TOKEN}) or pass --no-substitute`, word);
      }
      const keepFds = (values['keep-fd'] ?? []).map((v) => keepFdOption(v, word));
      return { kind: 'exec', common, request: openRequest(values, word), substitute, keepFds, program, args };
    }
    case 'pass': {
      const targetPid = optionalPid(values['target-pid'], word);
      return {
        kind: 'pass', common, request: openRequest(values, word),
        qmpSocket: required(values.qmp, 'qmp', word), fdname: fdnameOption(values.fdname, word),
        ...(targetPid === undefined ? {} : { targetPid }),
      };
    }
  }
}

function commandWord(args: readonly string[]): string | undefined {
  return args.find((a) => isCommandKind(a));
}

function commonOptions(values: Values, command: string): CommonOptions {
  const socketPath = values.socket ?? DEFAULT_SOCKET;
  if (socketPath === '') throw new UsageError('--socket must not be empty', command);
  return { socketPath, json: values.json === true, timeoutMs: timeoutOption(values.timeout, command) };
}

function required(value: string | undefined, option: string, command: string): string {
  if (value === undefined || value === '') throw new UsageError(`'${command}' needs --${option}`, command);
  return value;
}

function openRequest(values: Values, command: string): OpenRequest {
  const name = required(values.name, 'name', command);
  if (!NAME_PATTERN.test(name)) {
    throw new UsageError(`--name '${name}' is not a valid name: 1-128 characters of [A-Za-z0-9._:@+-], starting with a letter or digit`, command);
  }
  const memoryBytes = sizeOption(values.memory, command);
  const requestId = values['request-id'];
  if (requestId === undefined) return { name, memoryBytes };
  if (requestId.length < 1 || requestId.length > 128) {
    throw new UsageError('--request-id must be 1-128 characters long', command);
  }
  return { name, memoryBytes, requestId };
}

function sizeOption(value: string | undefined, command: string): number {
  const text = required(value, 'memory', command);
  let bytes: number;
  try {
    bytes = parseSize(text);
  } catch (e) {
    throw new UsageError(`--memory '${text}': ${e instanceof Error ? e.message : String(e)}`, command);
  }
  if (bytes < 1) throw new UsageError(`--memory '${text}' must be at least one byte`, command);
  return bytes;
}

function leaseArg(value: string | undefined, command: string): string {
  if (value === undefined || !LEASE_ID_PATTERN.test(value)) {
    throw new UsageError(`'${value ?? ''}' is not a lease id (they look like l-0123456789abcdef; see 'iommufdctl list')`, command);
  }
  return value;
}

function optionalPid(value: string | undefined, command: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[1-9][0-9]{0,9}$/.test(value) || Number(value) > 0x3fffffff) {
    throw new UsageError(`--target-pid '${value}' is not a process id (a positive integer)`, command);
  }
  return Number(value);
}

function keepFdOption(value: string, command: string): number {
  if (!/^[0-9]{1,7}$/.test(value) || Number(value) < 3) {
    throw new UsageError(`--keep-fd '${value}' is not an fd number above 2 (0, 1 and 2 are always inherited)`, command);
  }
  return Number(value);
}

function timeoutOption(value: string | undefined, command: string): number {
  if (value === undefined) return DEFAULT_CALL_TIMEOUT_MS;
  const seconds = /^[0-9]+(\.[0-9]+)?$/.test(value) ? Number(value) : NaN;
  if (!(seconds > 0) || seconds > 86_400) {
    throw new UsageError(`--timeout '${value}' must be a number of seconds in (0, 86400]`, command);
  }
  return Math.ceil(seconds * 1000);
}

function fdnameOption(value: string | undefined, command: string): string {
  const fdname = required(value, 'fdname', command);
  // QEMU refuses names starting with a digit (they would read as fd numbers in fd=).
  if (/^[0-9]/.test(fdname) || /[\s,]/.test(fdname)) {
    throw new UsageError(`--fdname '${fdname}' must not start with a digit nor contain spaces or commas (QEMU takes it in fd=NAME)`, command);
  }
  return fdname;
}
