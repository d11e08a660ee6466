// Command-line parsing for iommufdctl: argv in, one typed Command (or a UsageError) out.
//
// Invariants:
// - Pure: no I/O, no environment reads, nothing contacts the broker. Every value the broker
//   would refuse for its shape (name, lease id, size, pid) is refused here first, as a
//   UsageError (exit code 2) that names the offending option and says what is expected.
// - Each subcommand accepts exactly its own options; an option meant for another subcommand
//   is a usage error, never silently ignored.
// - `exec` takes its program and arguments only after `--`, verbatim (nothing after `--` is
//   parsed as an option). With substitution on, every {vfio:ADDR} token must name a --device
//   and every --device must have a token, so no device fd is passed that QEMU is not told of.
import { parseArgs } from 'node:util';
import { canonicalPciAddress } from '../shared/pci-address.ts';
import {
  commonOptions, devicesOption, dimmIdOption, fdnameOption, keepFdOption, leaseArg, namedRequest, nodeOption, openRequest, optionalPid, required, sizeOption,
} from './arg-values.ts';
import { UsageError } from '../shared/usage-error.ts';

/** The CLI's usage mistakes are the shared UsageError (shared/usage-error.ts), with the subcommand. */
export { UsageError };

/** The token `exec` replaces with the received fd number. */
export const FD_TOKEN = '{iommufd}';
/** `exec` replaces {vfio:ADDR} with the fd number of the VFIO device ADDR (as typed; compared canonical). */
export const VFIO_TOKEN = /\{vfio:([^{}]*)\}/g;
/** The QMP getfd name `pass` gives a VFIO device's fd: device_add vfio-pci,fd=NAME. */
export function vfioFdname(address: string): string {
  return `vfio-${address}`;
}

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

/** `pass` with --size-from-qmp: the size is read from QEMU over --qmp, not given. */
export interface SizedRequest {
  name: string;
  sizeFromQmp: true;
  requestId?: string;
}

export type Command =
  | { kind: 'help'; topic?: string }
  | { kind: 'open'; common: CommonOptions; request: OpenRequest; targetPid?: number; hold: boolean }
  | ({ kind: 'resize'; common: CommonOptions; lease: string } & ({ memoryBytes: number } | { sizeFromQmp: string }))
  | { kind: 'release'; common: CommonOptions; lease: string }
  | { kind: 'list'; common: CommonOptions }
  | { kind: 'status'; common: CommonOptions }
  | {
    kind: 'exec'; common: CommonOptions; request: OpenRequest; substitute: boolean;
    /** --device: canonical PCI addresses, opened with the lease; {vfio:ADDR} becomes each one's fd. */
    devices: string[];
    /** Inherited fds (besides 0-2) the program must inherit in turn, from --keep-fd. */
    keepFds: number[];
    program: string; args: string[];
  }
  | {
    kind: 'pass'; common: CommonOptions; request: OpenRequest | SizedRequest; qmpSocket: string; fdname: string; targetPid?: number;
    /** --device: canonical PCI addresses, each passed with getfd under vfioFdname(address). */
    devices: string[];
  }
  | { kind: 'hotplug'; common: CommonOptions; lease: string; qmpSocket: string; sizeBytes: number; dimmId?: string; node?: number }
  | { kind: 'unplug'; common: CommonOptions; lease: string; qmpSocket: string; dimmId: string }
  | { kind: 'measure'; common: CommonOptions; qmpSocket: string };

export type CommandKind = Command['kind'];

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
  'size-from-qmp': { type: 'boolean' },
  id: { type: 'string' },
  node: { type: 'string' },
  device: { type: 'string', multiple: true },
} as const;

type OptionName = keyof typeof optionSpec;
type Values = {
  [K in OptionName]?: (typeof optionSpec)[K] extends { multiple: true } ? string[]
    : (typeof optionSpec)[K]['type'] extends 'string' ? string : boolean;
};

const GLOBAL_OPTIONS: readonly OptionName[] = ['socket', 'json', 'timeout', 'help'];
const COMMAND_OPTIONS: Record<Exclude<CommandKind, 'help'>, readonly OptionName[]> = {
  open: ['name', 'memory', 'target-pid', 'request-id', 'hold'],
  resize: ['memory', 'qmp', 'size-from-qmp'],
  release: [],
  list: [],
  status: [],
  exec: ['name', 'memory', 'request-id', 'no-substitute', 'keep-fd', 'device'],
  pass: ['qmp', 'fdname', 'name', 'memory', 'size-from-qmp', 'target-pid', 'request-id', 'device'],
  hotplug: ['qmp', 'memory', 'id', 'node'],
  unplug: ['qmp', 'id'],
  measure: ['qmp'],
};
/** Positional arguments each command takes after its name. */
const POSITIONALS: Record<Exclude<CommandKind, 'help'>, readonly string[]> = {
  open: [], resize: ['LEASE'], release: ['LEASE'], list: [], status: [], exec: [], pass: [],
  hotplug: ['LEASE'], unplug: ['LEASE'], measure: [],
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
    case 'resize': {
      const lease = leaseArg(rest[0], word);
      return sizedFromQmp(values, word)
        ? { kind: 'resize', common, lease, sizeFromQmp: required(values.qmp, 'qmp', word) }
        : { kind: 'resize', common, lease, memoryBytes: sizeOption(values.memory, word) };
    }
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
      const devices = devicesOption(values.device, word);
      if (substitute) checkVfioTokens([program, ...args], devices, word);
      return { kind: 'exec', common, request: openRequest(values, word), substitute, devices, keepFds, program, args };
    }
    case 'pass': {
      const targetPid = optionalPid(values['target-pid'], word);
      const qmpSocket = required(values.qmp, 'qmp', word);
      let request: OpenRequest | SizedRequest;
      if (sizedFromQmp(values, word)) {
        const { name, requestId } = namedRequest(values, word);
        request = { name, sizeFromQmp: true, ...(requestId === undefined ? {} : { requestId }) };
      } else {
        request = openRequest(values, word);
      }
      const devices = devicesOption(values.device, word);
      const fdname = fdnameOption(values.fdname, word);
      const clash = devices.find((d) => vfioFdname(d) === fdname);
      if (clash !== undefined) throw new UsageError(`--fdname ${fdname} is the name the device ${clash} is passed under; choose another`, word);
      return {
        kind: 'pass', common, request, qmpSocket, fdname, devices,
        ...(targetPid === undefined ? {} : { targetPid }),
      };
    }
    case 'hotplug': {
      const dimmId = dimmIdOption(values.id, word);
      const node = nodeOption(values.node, word);
      return {
        kind: 'hotplug', common, lease: leaseArg(rest[0], word), qmpSocket: required(values.qmp, 'qmp', word),
        sizeBytes: sizeOption(values.memory, word), ...(dimmId === undefined ? {} : { dimmId }), ...(node === undefined ? {} : { node }),
      };
    }
    case 'unplug':
      return {
        kind: 'unplug', common, lease: leaseArg(rest[0], word), qmpSocket: required(values.qmp, 'qmp', word),
        dimmId: required(dimmIdOption(values.id, word), 'id', word),
      };
    case 'measure':
      return { kind: 'measure', common, qmpSocket: required(values.qmp, 'qmp', word) };
  }
}

/** --size-from-qmp instead of --memory (exactly one of them); --qmp with resize only when sizing. */
function sizedFromQmp(values: Values, command: string): boolean {
  if (values['size-from-qmp'] === true) {
    if (values.memory !== undefined) throw new UsageError('give --memory SIZE or --size-from-qmp, not both', command);
    return true;
  }
  if (command === 'resize' && values.qmp !== undefined) throw new UsageError('--qmp applies to resize only with --size-from-qmp', command);
  return false;
}

/** Every {vfio:ADDR} names a --device, and every --device has a {vfio:ADDR}. */
function checkVfioTokens(argv: readonly string[], devices: readonly string[], command: string): void {
  const named = new Set<string>();
  for (const arg of argv) {
    for (const match of arg.matchAll(VFIO_TOKEN)) {
      const typed = match[1] ?? '';
      const address = canonicalPciAddress(typed);
      if (address === undefined || !devices.includes(address)) {
        throw new UsageError(`{vfio:${typed}} names no --device given (${devices.length === 0 ? 'none was' : devices.join(', ')}); `
          + 'add --device for it, or fix the address', command);
      }
      named.add(address);
    }
  }
  const unused = devices.find((d) => !named.has(d));
  if (unused !== undefined) {
    throw new UsageError(`--device ${unused} appears in no argument: put {vfio:${unused}} where its fd number goes `
      + `(e.g. -device vfio-pci,iommufd=iommufd0,fd={vfio:${unused}}) or pass --no-substitute`, command);
  }
}

function commandWord(args: readonly string[]): string | undefined {
  return args.find((a) => isCommandKind(a));
}

