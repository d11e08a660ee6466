// The pure half of `iommufdctl exec`: finding the program on PATH and building the argv and
// environment it is exec'd with. The impure half (Open, clear CLOEXEC, execve) is in
// cli/handoff.ts, with what the program inherits from Node in cli/exec-inheritance.ts.
//
// Invariants:
// - The program is resolved before the broker is contacted, so a typo never costs a lease.
// - Resolution follows execvp: a name with a '/' is used as given; otherwise each PATH entry
//   in order (an empty entry means the current directory); the first regular file we may
//   execute wins. Nothing here executes anything.
// - Substitution replaces every occurrence of FD_TOKEN in every argument (argv[0] included)
//   with the decimal fd number, and every {vfio:ADDR} naming a device that was opened with the
//   decimal number of that device's fd (args.ts checked that each token names one), and
//   nothing else.
import { accessSync, constants, statSync } from 'node:fs';
import { join } from 'node:path';
import { canonicalPciAddress } from '../shared/pci-address.ts';
import { FD_TOKEN, VFIO_TOKEN } from './args.ts';

/** execvp's fallback when PATH is unset. */
const DEFAULT_PATH = '/usr/local/bin:/usr/bin:/bin';

/** Environment variables the exec'd program finds the fd and lease in. */
export const FD_ENV = 'IOMMUFD_BROKER_FD';
export const LEASE_ENV = 'IOMMUFD_BROKER_LEASE';
/** The VFIO device fds, as "ADDR=FD" separated by commas (absent: none). */
export const DEVICE_FDS_ENV = 'IOMMUFD_BROKER_DEVICE_FDS';

/** A VFIO device's canonical address and its inherited fd number. */
export interface DeviceFd { address: string; fd: number }

export class ProgramNotFound extends Error {
  readonly program: string;
  constructor(program: string, reason: string) {
    super(`cannot run '${program}': ${reason}`);
    this.name = 'ProgramNotFound';
    this.program = program;
  }
}

function isExecutableFile(path: string): boolean {
  try {
    if (!statSync(path).isFile()) return false;
    accessSync(path, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** The path execve should get for `program`, or ProgramNotFound saying why. */
export function resolveProgram(program: string, pathVariable: string | undefined): string {
  if (program.includes('/')) {
    if (!isExecutableFile(program)) throw new ProgramNotFound(program, 'not an executable regular file');
    return program;
  }
  const entries = (pathVariable ?? DEFAULT_PATH).split(':');
  for (const dir of entries) {
    const candidate = dir === '' ? program : join(dir, program);
    if (isExecutableFile(candidate)) return dir === '' ? `./${program}` : candidate;
  }
  throw new ProgramNotFound(program, `not found in PATH (${pathVariable ?? DEFAULT_PATH})`);
}

/** argv for execve: the program name as typed, then its arguments, FD_TOKEN and {vfio:ADDR} replaced. */
export function buildArgv(program: string, args: readonly string[], fd: number, substitute: boolean, devices: readonly DeviceFd[] = []): string[] {
  const all = [program, ...args];
  if (!substitute) return all;
  const vfio = (token: string, typed: string): string => {
    const address = canonicalPciAddress(typed);
    const device = devices.find((d) => d.address === address);
    return device === undefined ? token : String(device.fd);
  };
  return all.map((a) => a.split(FD_TOKEN).join(String(fd)).replace(VFIO_TOKEN, vfio));
}

/** envp for execve: ours, plus where the fd, the device fds and the lease are. */
export function buildEnv(env: NodeJS.ProcessEnv, fd: number, lease: string, devices: readonly DeviceFd[] = []): string[] {
  const out: string[] = [];
  for (const [k, v] of Object.entries(env)) {
    if (v !== undefined && k !== FD_ENV && k !== LEASE_ENV && k !== DEVICE_FDS_ENV) out.push(`${k}=${v}`);
  }
  out.push(`${FD_ENV}=${fd}`, `${LEASE_ENV}=${lease}`);
  if (devices.length > 0) out.push(`${DEVICE_FDS_ENV}=${devices.map((d) => `${d.address}=${d.fd}`).join(',')}`);
  return out;
}
