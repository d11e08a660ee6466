// The policy: the operator's file (TOML or JSON) plus the --overhead/--budget flags, read once,
// validated with zod, resolved to numeric ids and frozen. docs/CONFIG.md documents every key.
//
// Invariants:
// - The result is a deeply frozen Policy (daemon/core/policy.ts); nothing else builds one
//   from operator input.
// - Strict: an unknown key, a wrong type or an unreadable size is a PolicyError naming the
//   source (file or flag), the key path, what was wrong and what is accepted. Nothing is
//   ignored or guessed.
// - The file can never choose the device: `device` anywhere in it is refused (the simulated
//   device is a daemon flag, so that a policy file cannot turn accounting off).
// - The file is refused if others could have written it (group/world-writable, or owned by
//   someone other than root or the daemon's uid): it decides who gets locked memory.
// - A table that is present is the whole allow-list: [open] without `users` allows no user by
//   uid; only an absent [open] means "any user". [managers] likewise (absent: uid 0 only).
// - Flags win over the file. Without a budget anywhere: MemTotal minus a reserve (the file's
//   limits.reserve, else max(1 GiB, 10 % of MemTotal)).
// - [[devices]]: each entry names one canonical PCI address (the wire's PCI_ADDRESS_PATTERN,
//   so an entry can never name a device no Open could ask for) at most once, and who may have
//   it (users, groups, vms); an entry that gives its device to no one is refused as a mistake.
//   No [[devices]]: no VFIO device is handed out.
// - Fds: the config file's fd is opened, read and closed inside readPolicyFile().
import { closeSync, constants, fstatSync, openSync, readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { z } from 'zod';
import { parseSize } from '../../shared/sizes.ts';
import { NAME_PATTERN, PCI_ADDRESS_PATTERN } from '../../protocol/methods.ts';
import { DEFAULT_OVERHEAD_BYTES, type DeviceGrant, type Policy } from '../core/policy.ts';
import { AccountFiles } from './accounts.ts';

const GiB = 1024 ** 3;
/** Without a budget or reserve: keep this percentage of MemTotal for the host ... */
export const DEFAULT_RESERVE_PERCENT = 10;
/** ... but never less than this. */
export const MIN_DEFAULT_RESERVE_BYTES = GiB;

/** A policy that cannot be used; `source` is a file path or a flag, `key` a dotted key path. */
export class PolicyError extends Error {
  constructor(readonly source: string, readonly key: string | null, readonly reason: string) {
    super(`${source}: ${key === null ? '' : `${key}: `}${reason}`);
    this.name = 'PolicyError';
  }
}

export interface LoadPolicyOptions {
  /** .toml or .json; absent: the built-in defaults. */
  configPath?: string;
  /** --overhead SIZE: overrides limits.overhead. */
  overhead?: string;
  /** --budget SIZE: overrides limits.budget and limits.reserve. */
  budget?: string;
  /** MemTotal (procfs.memTotalBytes()), for the default budget. */
  memTotalBytes: number;
  /** For tests: where names are looked up (default /etc/passwd and /etc/group). */
  passwdFile?: string;
  groupFile?: string;
}

const principal = z.union([z.string().min(1), z.number().int().nonnegative()]);
const principals = z.array(principal);
const size = z.union([z.string(), z.number().int().nonnegative()]);

const tables = {
  open: z.object({ users: z.union([z.literal('any'), principals]).optional(), groups: principals.optional() }).strict(),
  managers: z.object({ users: principals.optional(), groups: principals.optional() }).strict(),
  observers: z.object({ users: principals.optional(), groups: principals.optional() }).strict(),
  limits: z.object({
    overhead: size.optional(), perVmMax: size.optional(), perUidLeases: z.number().int().min(1).optional(),
    perUidBytes: size.optional(), budget: size.optional(), reserve: size.optional(),
  }).strict(),
  targets: z.object({ allowIpcLock: z.boolean().optional(), requireNoNewPrivs: z.boolean().optional() }).strict(),
  devices: z.object({
    address: z.string().regex(PCI_ADDRESS_PATTERN, 'not a canonical PCI address'),
    vms: z.array(z.string().regex(NAME_PATTERN, 'not a VM name')).optional(),
    users: principals.optional(), groups: principals.optional(),
  }).strict(),
} as const;
const PolicyFile = z.object({
  open: tables.open.optional(), managers: tables.managers.optional(), observers: tables.observers.optional(),
  limits: tables.limits.optional(), targets: tables.targets.optional(), devices: z.array(tables.devices).optional(),
}).strict();
type PolicyFile = z.infer<typeof PolicyFile>;

const SIZE_HELP = 'a size such as "1G", "512MiB" or "1.5G" (binary units), or a whole number of bytes';
const USERS_HELP = 'a list of user names and numeric uids, e.g. ["alice", 1000]';
const GROUPS_HELP = 'a list of group names and numeric gids, e.g. ["kvm", 107]';
/** What each key accepts, for error messages. */
const KEY_HELP: Readonly<Record<string, string>> = {
  'open.users': `${USERS_HELP}, or "any"`, 'open.groups': GROUPS_HELP,
  'managers.users': USERS_HELP, 'managers.groups': GROUPS_HELP,
  'observers.users': USERS_HELP, 'observers.groups': GROUPS_HELP,
  'limits.overhead': SIZE_HELP, 'limits.perVmMax': SIZE_HELP, 'limits.perUidBytes': SIZE_HELP,
  'limits.budget': SIZE_HELP, 'limits.reserve': SIZE_HELP,
  'limits.perUidLeases': 'a whole number >= 1', 'targets.allowIpcLock': 'true or false',
  'targets.requireNoNewPrivs': 'true or false',
  devices: 'an array of tables ([[devices]]) with the keys address, vms, users, groups',
  'devices.address': 'a PCI address as sysfs names it, DDDD:BB:DD.F in lowercase hex, e.g. "0000:00:03.0"',
  'devices.vms': 'a list of VM names, e.g. ["vm1"]',
  'devices.users': USERS_HELP, 'devices.groups': GROUPS_HELP,
};

/** The keys of a table ('' = the top level: the table names). */
function keysOf(table: string): string {
  return (table === '' ? Object.keys(tables) : Object.keys(tables[table as keyof typeof tables].shape)).join(', ');
}

/** Reads and parses the file: a plain object, or PolicyError. */
function readPolicyFile(path: string): unknown {
  const kind = extname(path).toLowerCase();
  if (kind !== '.toml' && kind !== '.json') {
    throw new PolicyError(path, null, `unknown file type "${kind}": a policy file ends in .toml or .json`);
  }
  let text: string;
  let fd: number | undefined; // owner: this function
  try {
    fd = openSync(path, constants.O_RDONLY);
    const st = fstatSync(fd);
    if (!st.isFile()) throw new PolicyError(path, null, 'is not a regular file');
    const euid = process.geteuid?.() ?? 0;
    if ((st.mode & 0o022) !== 0 || (st.uid !== 0 && st.uid !== euid)) {
      throw new PolicyError(path, null, `may be written by others (owner uid ${st.uid}, mode ${(st.mode & 0o777).toString(8)}): `
        + 'it decides who may lock memory, so it must be owned by root (or the daemon\'s user) and not group/world-writable');
    }
    text = readFileSync(fd, 'utf8');
  } catch (e) {
    if (e instanceof PolicyError) throw e;
    throw new PolicyError(path, null, `cannot be read (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  try {
    return kind === '.toml' ? parseToml(text) : JSON.parse(text) as unknown;
  } catch (e) {
    if (e instanceof TomlError) throw new PolicyError(path, null, `not valid TOML at line ${e.line}, column ${e.column}: ${e.message.split('\n')[0]}`);
    throw new PolicyError(path, null, `not valid JSON: ${e instanceof Error ? e.message : String(e)}`);
  }
}

/** `device` may not appear at the top or in any table. */
function refuseDevice(path: string, raw: unknown): void {
  if (typeof raw !== 'object' || raw === null) return;
  const found = Object.hasOwn(raw, 'device') ? 'device'
    : Object.entries(raw).find(([, v]) => typeof v === 'object' && v !== null && Object.hasOwn(v, 'device'))?.[0];
  if (found !== undefined) {
    throw new PolicyError(path, found === 'device' ? 'device' : `${found}.device`,
      'the device cannot be chosen in the policy file: it is the daemon\'s --device flag only '
      + '(so no policy file can switch the broker to the simulated device, which does no accounting)');
  }
}

function validate(path: string, raw: unknown): PolicyFile {
  refuseDevice(path, raw);
  const parsed = PolicyFile.safeParse(raw);
  if (parsed.success) return parsed.data;
  const issue = parsed.error.issues[0]!;
  const at = issue.path.filter((p) => typeof p === 'string').join('.');
  if (issue.code === 'unrecognized_keys') {
    const key = [at, issue.keys[0]].filter((k) => k !== '').join('.');
    throw new PolicyError(path, key, `unknown key; accepted ${at === '' ? 'tables' : `keys in [${at}]`}: ${keysOf(at)}`);
  }
  const key = issue.path.map(String).join('.');
  const help = KEY_HELP[at] ?? (at === '' ? `a table of tables (${keysOf('')})` : `a table with the keys ${keysOf(at)}`);
  throw new PolicyError(path, key === '' ? null : key, `${issue.message}; accepted: ${help}`);
}

/** A size from the file or a flag, in bytes. */
function bytes(value: string | number, source: string, key: string | null): number {
  if (typeof value === 'number') return value;
  try {
    return parseSize(value);
  } catch (e) {
    throw new PolicyError(source, key, e instanceof Error ? e.message : String(e));
  }
}

function ids(list: readonly (string | number)[], resolve: (name: string) => number, source: string, key: string): readonly number[] {
  const out: number[] = [];
  for (const entry of list) {
    let id: number;
    try {
      id = typeof entry === 'number' ? entry : resolve(entry);
    } catch (e) {
      throw new PolicyError(source, key, e instanceof Error ? e.message : String(e));
    }
    if (!out.includes(id)) out.push(id);
  }
  return Object.freeze(out);
}

/** The [[devices]] entries, resolved to ids and frozen; one entry per address, each giving its device to someone. */
function deviceGrants(
  entries: PolicyFile['devices'], uid: (n: string) => number, gid: (n: string) => number, source: string,
): readonly DeviceGrant[] {
  const out: DeviceGrant[] = [];
  for (const [i, entry] of (entries ?? []).entries()) {
    const key = `devices.${i}`;
    if (out.some((d) => d.address === entry.address)) {
      throw new PolicyError(source, `${key}.address`, `${entry.address} has two [[devices]] entries: merge them into one`);
    }
    const grant: DeviceGrant = Object.freeze({
      address: entry.address,
      vms: Object.freeze([...new Set(entry.vms ?? [])]),
      users: ids(entry.users ?? [], uid, source, `${key}.users`),
      groups: ids(entry.groups ?? [], gid, source, `${key}.groups`),
    });
    if (grant.vms.length + grant.users.length + grant.groups.length === 0) {
      throw new PolicyError(source, key, `the entry for ${entry.address} gives it to no one: list vms, users or groups`);
    }
    out.push(grant);
  }
  return Object.freeze(out);
}

/** The reserve kept for the host when no budget is given: max(1 GiB, 10 % of MemTotal). */
export function defaultReserveBytes(memTotalBytes: number): number {
  return Math.max(MIN_DEFAULT_RESERVE_BYTES, Math.floor((memTotalBytes * DEFAULT_RESERVE_PERCENT) / 100));
}

/** Builds the frozen Policy from the file (if any), the flags and MemTotal. Throws PolicyError. */
export function loadPolicy(options: LoadPolicyOptions): Readonly<Policy> {
  const { memTotalBytes } = options;
  if (!Number.isSafeInteger(memTotalBytes) || memTotalBytes <= 0) {
    throw new RangeError(`memTotalBytes must be a positive safe integer, got ${String(memTotalBytes)}`);
  }
  const source = options.configPath ?? '(built-in defaults)';
  const file: PolicyFile = options.configPath === undefined ? {} : validate(options.configPath, readPolicyFile(options.configPath));
  const accounts = new AccountFiles(options.passwdFile, options.groupFile);
  const uid = (n: string): number => accounts.uid(n);
  const gid = (n: string): number => accounts.gid(n);
  const limits = file.limits ?? {};

  const overheadBytes = options.overhead !== undefined ? bytes(options.overhead, '--overhead', null)
    : limits.overhead !== undefined ? bytes(limits.overhead, source, 'limits.overhead') : DEFAULT_OVERHEAD_BYTES;

  if (limits.budget !== undefined && limits.reserve !== undefined) {
    throw new PolicyError(source, 'limits.reserve', 'set either limits.budget or limits.reserve, not both (the budget is MemTotal minus the reserve)');
  }
  let budgetBytes: number;
  if (options.budget !== undefined) budgetBytes = bytes(options.budget, '--budget', null);
  else if (limits.budget !== undefined) budgetBytes = bytes(limits.budget, source, 'limits.budget');
  else {
    const reserve = limits.reserve !== undefined ? bytes(limits.reserve, source, 'limits.reserve') : defaultReserveBytes(memTotalBytes);
    budgetBytes = memTotalBytes - reserve;
    if (budgetBytes <= 0) {
      throw new PolicyError(source, limits.reserve !== undefined ? 'limits.reserve' : null,
        `MemTotal (${memTotalBytes} bytes) leaves no budget after a reserve of ${reserve} bytes; set limits.budget or --budget`);
    }
  }

  const perVmMaxBytes = limits.perVmMax === undefined ? null : bytes(limits.perVmMax, source, 'limits.perVmMax');
  if (perVmMaxBytes !== null && perVmMaxBytes <= overheadBytes) {
    throw new PolicyError(source, 'limits.perVmMax', `${perVmMaxBytes} bytes is not more than the overhead `
      + `(${overheadBytes} bytes) added to every VM: no lease could ever be granted`);
  }

  const open = file.open;
  const managers = file.managers;
  return Object.freeze({
    openUsers: open === undefined ? 'any'
      : open.users === 'any' ? 'any' : ids(open.users ?? [], uid, source, 'open.users'),
    openGroups: ids(open?.groups ?? [], gid, source, 'open.groups'),
    managerUsers: managers === undefined ? Object.freeze([0]) : ids(managers.users ?? [], uid, source, 'managers.users'),
    managerGroups: ids(managers?.groups ?? [], gid, source, 'managers.groups'),
    observerUsers: ids(file.observers?.users ?? [], uid, source, 'observers.users'),
    observerGroups: ids(file.observers?.groups ?? [], gid, source, 'observers.groups'),
    perVmMaxBytes,
    perUidMaxLeases: limits.perUidLeases ?? null,
    perUidMaxBytes: limits.perUidBytes === undefined ? null : bytes(limits.perUidBytes, source, 'limits.perUidBytes'),
    overheadBytes,
    budgetBytes,
    allowTargetsWithIpcLock: file.targets?.allowIpcLock ?? false,
    requireTargetNoNewPrivs: file.targets?.requireNoNewPrivs ?? false,
    devices: deviceGrants(file.devices, uid, gid, source),
  } satisfies Policy);
}
