// The fuzzer's hostile inputs: each FuzzCase is what one connection sends, and what the daemon
// must do about it. Pure: a Prng in, a FuzzCase out (fds are named by kind, made by the runner).
//
// Invariants:
// - Expectations follow the Varlink framing rules of protocol/framing.ts and decode.ts, stated
//   independently here: a frame that is not a call object (bad UTF-8 or JSON, a bad envelope,
//   over MAX_FRAME_BYTES, over MAX_FDS_PER_FRAME fds) ends the connection ("close"); a call
//   with a bad method, parameters or fd gets exactly one error reply; a valid oneway call gets
//   none. `replies` counts what must come back before the runner's sentinel call.
// - fds always ride on the first chunk of a case, which is the first message on a fresh
//   connection, so no earlier message can be glued in front of them.
// - Frames are counted as NUL terminators plus one for an unterminated tail.
import { MAX_FDS_PER_FRAME, MAX_FRAME_BYTES } from '../../../protocol/framing.ts';
import type { Prng } from '../support/prng.ts';

export type FdKind = 'memfd' | 'devnull' | 'directory' | 'socket' | 'exited-pidfd';
export const FD_KINDS: readonly FdKind[] = ['memfd', 'devnull', 'directory', 'socket', 'exited-pidfd'];

export interface FuzzCase {
  /** Which generator made it (one of CASE_KINDS). */
  generator: string;
  /** What exactly it is (a generator makes several kinds). */
  kind: string;
  bytes: Buffer;
  fds: FdKind[];
  /** Replies owed before the sentinel, or 'close': the daemon must end the connection. */
  expect: { replies: number } | { close: true; atLeast: number };
  frames: number;
}

const enc = (v: unknown): string => JSON.stringify(v);
const nul = (text: string): Buffer => Buffer.from(`${text}\0`);
const B = 'io.iommufd.Broker';
const S = 'org.varlink.service';

/** Calls the daemon answers (success or a broker error), one reply each. */
const VALID_CALLS: ReadonlyArray<() => Record<string, unknown>> = [
  () => ({ method: `${B}.Status` }),
  () => ({ method: `${B}.List`, parameters: {} }),
  () => ({ method: `${S}.GetInfo` }),
  () => ({ method: `${S}.GetInterfaceDescription`, parameters: { interface: B } }),
  () => ({ method: `${B}.Open`, parameters: { name: 'vm-fuzz', memoryBytes: 4096 } }),
  () => ({ method: `${B}.Resize`, parameters: { lease: 'l-0123456789abcdef', memoryBytes: 4096 } }),
  () => ({ method: `${B}.Release`, parameters: { lease: 'l-fedcba9876543210' } }),
];

const HUGE_NUMBERS = ['1e308', '1e309', '-1e309', '9007199254740992', '9007199254740993', '1e-400', '-0', '0.5',
  '123456789012345678901234567890', '-1', '0', '1E2', '4.0e3'];

const INVALID_UTF8: readonly number[][] = [[0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0x80], [0xe2, 0x82], [0xfe, 0xfe]];

/** Parameters that make a valid method's call invalid (answered with InvalidParameter). */
function badParameters(prng: Prng): Record<string, unknown> {
  const choices: Array<() => Record<string, unknown>> = [
    () => ({ name: prng.pick([5, null, [], {}, '', ' vm', 'x'.repeat(200), '-vm', 'vm/../x']), memoryBytes: 1 }),
    () => ({ name: 'vm', memoryBytes: prng.pick(['1G', null, true, [], {}, -1, 0, 1.5]) }),
    () => ({ name: 'vm', memoryBytes: 1, targetPidFileDescriptor: prng.pick([-1, 16, 1.5, '0', null]) }),
    () => ({ name: 'vm', memoryBytes: 1, requestId: prng.pick(['', 'r'.repeat(200), 7]) }),
    () => ({ name: 'vm', memoryBytes: 1, [prng.pick(['surprise', '__proto__x', 'constructor', 'Name'])]: 1 }),
    () => ({}),
  ];
  return prng.pick(choices)();
}

function answered(kind: string, frames: Buffer[], replies: number): FuzzCase {
  return { generator: '', kind, bytes: Buffer.concat(frames), fds: [], expect: { replies }, frames: frames.length };
}

function closing(kind: string, bytes: Buffer, atLeast = 0): FuzzCase {
  let frames = 0;
  for (let i = bytes.indexOf(0); i >= 0; i = bytes.indexOf(0, i + 1)) frames++;
  if (bytes.length > 0 && bytes[bytes.length - 1] !== 0) frames++;
  return { generator: '', kind, bytes, fds: [], expect: { close: true, atLeast }, frames };
}

const generators: Record<string, (prng: Prng) => FuzzCase> = {
  'random-bytes': (prng) => closing('random-bytes', prng.bytes(prng.int(1, 3000))),
  truncated: (prng) => {
    const text = enc(prng.pick(VALID_CALLS)());
    const cut = Buffer.from(text).subarray(0, prng.int(1, text.length - 1));
    return closing('truncated', prng.chance(0.5) ? Buffer.concat([cut, Buffer.from([0])]) : cut);
  },
  'missing-nul': (prng) => closing('missing-nul', Buffer.from(enc(prng.pick(VALID_CALLS)()))),
  'size-cap': (prng) => {
    const over = prng.int(0, 2) === 0 ? 0 : prng.pick([1, 2, 4096, 1 << 20]);
    const head = `{"method":"${B}.Status","parameters":{}`;
    const body = `${head}${' '.repeat(MAX_FRAME_BYTES + over - head.length - 1)}}`;
    return over === 0 ? answered('size-cap-exact', [nul(body)], 1) : closing('size-cap-over', nul(body));
  },
  'invalid-utf8': (prng) => {
    const text = enc({ method: `${B}.Open`, parameters: { name: 'vm-XX', memoryBytes: 1 } });
    const at = text.indexOf('XX');
    return closing('invalid-utf8', Buffer.concat([Buffer.from(text.slice(0, at)), Buffer.from(prng.pick(INVALID_UTF8)),
      Buffer.from(text.slice(at + 2)), Buffer.from([0])]));
  },
  'deep-nesting': (prng) => {
    const depth = prng.int(1, 40_000);
    const [open, close] = prng.chance(0.5) ? ['[', ']'] : ['{"a":', '}'];
    const nested = `${open.repeat(depth)}${prng.chance(0.5) ? '1' : '[]'}${close.repeat(depth)}`;
    const where = prng.int(0, 2);
    const text = where === 0 ? `{"method":"${B}.Status","parameters":{"x":${nested}}}`
      : where === 1 ? `{"method":"${B}.Status","more":${nested}}` : nested;
    if (Buffer.byteLength(text) > MAX_FRAME_BYTES || where !== 0) return closing('deep-nesting', nul(text));
    return answered('deep-nesting', [nul(text)], 1);
  },
  'huge-numbers': (prng) => {
    const n = prng.pick(HUGE_NUMBERS);
    const method = prng.pick(['Open', 'Resize']);
    const params = method === 'Open' ? `{"name":"vm","memoryBytes":${n}}` : `{"lease":"l-0123456789abcdef","memoryBytes":${n}}`;
    return answered('huge-numbers', [nul(`{"method":"${B}.${method}","parameters":${params}}`)], 1);
  },
  'wrong-types': (prng) => {
    if (prng.chance(0.5)) return answered('wrong-parameter-types', [nul(enc({ method: `${B}.Open`, parameters: badParameters(prng) }))], 1);
    const envelope = prng.pick<Record<string, unknown> | unknown[] | number | string | null>([
      { method: 7 }, { method: null }, { method: [`${B}.Status`] }, { method: `${B}.Status`, parameters: [] },
      { method: `${B}.Status`, parameters: 'x' }, { method: `${B}.Status`, more: 'yes' }, { method: `${B}.Status`, oneway: 1 },
      [], 42, 'call', null, {},
    ]);
    return closing('wrong-envelope-types', nul(enc(envelope)));
  },
  'unknown-names': (prng) => {
    const which = prng.int(0, 4);
    if (which === 4) return closing('unknown-envelope-field', nul(enc({ method: `${B}.Status`, [prng.pick(['id', 'params', 'Method'])]: 1 })));
    const method = which === 0 ? `${B}.${prng.pick(['Explode', '__proto__', 'constructor', 'open', 'Status.x'])}`
      : which === 1 ? `${prng.pick(['com.example', 'io.iommufd', 'org.varlink.service.x', ''])}.Nope`
        : which === 2 ? prng.pick(['Status', 'toString', '.', 'io.', '.Status']) : `${B}.Status`;
    const parameters = which === 3 ? { [prng.pick(['surprise', 'lease', '__proto__'])]: 1 } : {};
    return answered('unknown-names', [nul(enc({ method, parameters }))], 1);
  },
  flags: (prng) => {
    const call = prng.pick(VALID_CALLS)();
    const which = prng.int(0, 3);
    if (which === 0) return answered('oneway', [nul(enc({ ...call, oneway: true }))], 0);
    if (which === 1) return answered('oneway-and-more', [nul(enc({ ...call, oneway: true, more: true }))], 1);
    if (which === 2) return answered('upgrade', [nul(enc({ ...call, upgrade: true }))], 1);
    return answered('more', [nul(enc({ ...call, more: true }))], 1);
  },
  pipelined: (prng) => {
    const frames = Array.from({ length: prng.int(2, 40) }, () => nul(enc(prng.pick(VALID_CALLS)())));
    if (prng.chance(0.3)) {
      return closing('pipelined-then-garbage', Buffer.concat([...frames, prng.bytes(prng.int(1, 64)), Buffer.from([0])]), frames.length);
    }
    return answered('pipelined', frames, frames.length);
  },
  'stray-fds': (prng) => {
    const count = prng.chance(0.8) ? prng.int(1, MAX_FDS_PER_FRAME) : prng.int(MAX_FDS_PER_FRAME + 1, 253);
    const fds = Array.from({ length: count }, () => prng.pick(FD_KINDS));
    const first = prng.pick(VALID_CALLS)();
    const rest = Array.from({ length: prng.int(0, 3) }, () => nul(enc(prng.pick(VALID_CALLS)())));
    const c = count > MAX_FDS_PER_FRAME
      ? closing('too-many-fds', Buffer.concat([nul(enc(first)), ...rest]))
      : answered('stray-fds', [nul(enc(first)), ...rest], 1 + rest.length);
    return { ...c, fds };
  },
  'odd-fd-target': (prng) => {
    const kind = prng.pick(FD_KINDS);
    const c = answered('odd-fd-target', [nul(enc({ method: `${B}.Open`, parameters: { name: 'vm-odd', memoryBytes: 4096, targetPidFileDescriptor: 0 } }))], 1);
    return { ...c, fds: [kind] };
  },
};

export const CASE_KINDS = Object.keys(generators);

/** One hostile case, chosen uniformly among the generators. */
export function nextCase(prng: Prng): FuzzCase {
  const generator = prng.pick(CASE_KINDS);
  const generate = generators[generator];
  if (generate === undefined) throw new Error(`no generator ${generator}`);
  return { ...generate(prng), generator };
}
