// The value checks behind iommufdctl's options: each turns one option's text into a typed value
// or a UsageError that names the option and says what is expected.
//
// Invariants:
// - Pure: no I/O, no environment reads; every value the broker or QEMU would refuse for its
//   shape is refused here first (exit code 2, before anything is contacted).
import { LEASE_ID_PATTERN, MAX_DEVICES_PER_LEASE, NAME_PATTERN } from '../protocol/methods.ts';
import { canonicalPciAddress } from '../shared/pci-address.ts';
import { parseSize } from '../shared/sizes.ts';
import { UsageError } from '../shared/usage-error.ts';
import type { CommonOptions, OpenRequest } from './args.ts';
import { DEFAULT_SOCKET } from '../protocol/address.ts';
import { DEFAULT_CALL_TIMEOUT_MS } from '../client/defaults.ts';


/** The options parseArgs read, as the value checks see them. */
export interface OptionValues {
  socket?: string; timeout?: string; json?: boolean; name?: string; memory?: string; 'request-id'?: string;
}

export function commonOptions(values: OptionValues, command: string): CommonOptions {
  const socketPath = values.socket ?? DEFAULT_SOCKET;
  if (socketPath === '') throw new UsageError('--socket must not be empty', command);
  return { socketPath, json: values.json === true, timeoutMs: timeoutOption(values.timeout, command) };
}

export function required(value: string | undefined, option: string, command: string): string {
  if (value === undefined || value === '') throw new UsageError(`'${command}' needs --${option}`, command);
  return value;
}

/** --name and --request-id, checked. */
export function namedRequest(values: OptionValues, command: string): { name: string; requestId?: string } {
  const name = required(values.name, 'name', command);
  if (!NAME_PATTERN.test(name)) {
    throw new UsageError(`--name '${name}' is not a valid name: 1-128 characters of [A-Za-z0-9._:@+-], starting with a letter or digit`, command);
  }
  const requestId = values['request-id'];
  if (requestId === undefined) return { name };
  if (requestId.length < 1 || requestId.length > 128) {
    throw new UsageError('--request-id must be 1-128 characters long', command);
  }
  return { name, requestId };
}

/** --name, --memory and --request-id, checked. */
export function openRequest(values: OptionValues, command: string): OpenRequest {
  const { name, requestId } = namedRequest(values, command);
  const memoryBytes = sizeOption(values.memory, command);
  return requestId === undefined ? { name, memoryBytes } : { name, memoryBytes, requestId };
}

/** --device ADDR (repeatable): canonical PCI addresses, distinct, at most MAX_DEVICES_PER_LEASE. */
export function devicesOption(values: readonly string[] | undefined, command: string): string[] {
  const out: string[] = [];
  for (const typed of values ?? []) {
    const address = canonicalPciAddress(typed);
    if (address === undefined) {
      throw new UsageError(`--device '${typed}' is not a PCI address: DDDD:BB:DD.F or BB:DD.F in hex, as lspci -D prints it (e.g. 0000:00:03.0)`, command);
    }
    if (out.includes(address)) throw new UsageError(`--device ${address} is given twice`, command);
    out.push(address);
  }
  if (out.length > MAX_DEVICES_PER_LEASE) throw new UsageError(`at most ${MAX_DEVICES_PER_LEASE} --device per lease, got ${out.length}`, command);
  return out;
}

export function sizeOption(value: string | undefined, command: string): number {
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

export function leaseArg(value: string | undefined, command: string): string {
  if (value === undefined || !LEASE_ID_PATTERN.test(value)) {
    throw new UsageError(`'${value ?? ''}' is not a lease id (they look like l-0123456789abcdef; see 'iommufdctl list')`, command);
  }
  return value;
}

export function optionalPid(value: string | undefined, command: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[1-9][0-9]{0,9}$/.test(value) || Number(value) > 0x3fffffff) {
    throw new UsageError(`--target-pid '${value}' is not a process id (a positive integer)`, command);
  }
  return Number(value);
}

export function keepFdOption(value: string, command: string): number {
  if (!/^[0-9]{1,7}$/.test(value) || Number(value) < 3) {
    throw new UsageError(`--keep-fd '${value}' is not an fd number above 2 (0, 1 and 2 are always inherited)`, command);
  }
  return Number(value);
}

export function timeoutOption(value: string | undefined, command: string): number {
  if (value === undefined) return DEFAULT_CALL_TIMEOUT_MS;
  const seconds = /^[0-9]+(\.[0-9]+)?$/.test(value) ? Number(value) : NaN;
  if (!(seconds > 0) || seconds > 86_400) {
    throw new UsageError(`--timeout '${value}' must be a number of seconds in (0, 86400]`, command);
  }
  return Math.ceil(seconds * 1000);
}

export function fdnameOption(value: string | undefined, command: string): string {
  const fdname = required(value, 'fdname', command);
  // QEMU refuses names starting with a digit (they would read as fd numbers in fd=).
  if (/^[0-9]/.test(fdname) || /[\s,]/.test(fdname)) {
    throw new UsageError(`--fdname '${fdname}' must not start with a digit nor contain spaces or commas (QEMU takes it in fd=NAME)`, command);
  }
  return fdname;
}

/** A QEMU id for the DIMM (QEMU's id rule: a letter, then letters, digits, '-', '.', '_'). */
export function dimmIdOption(value: string | undefined, command: string): string | undefined {
  if (value === undefined) return undefined;
  if (!/^[A-Za-z][A-Za-z0-9._-]{0,63}$/.test(value)) {
    throw new UsageError(`--id '${value}' is not a QEMU id: a letter, then up to 63 letters, digits, '-', '.' or '_'`, command);
  }
  return value;
}

export function nodeOption(value: string | undefined, command: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[0-9]{1,4}$/.test(value)) throw new UsageError(`--node '${value}' is not a NUMA node number`, command);
  return Number(value);
}
