// Test support: a CliIo that records what iommufdctl prints, for runCli tests.
//
// Invariants:
// - Nothing is written to the real stdout/stderr; nothing here holds an fd.
// - waitForRelease runs the test's `onHold` (which may inspect the held FD) and then resolves
//   with 'SIGTERM', as if the signal had come.
import type { CliIo } from '../../cli/io.ts';

export interface CapturedIo {
  io: CliIo;
  stdout: () => string;
  stderr: () => string;
}

export function captureIo(options: { env?: NodeJS.ProcessEnv; onHold?: () => void | Promise<void> } = {}): CapturedIo {
  let out = '';
  let err = '';
  const io: CliIo = {
    stdout: (text) => { out += text; },
    stderr: (text) => { err += text; },
    env: options.env ?? process.env,
    waitForRelease: async () => {
      await options.onHold?.();
      return 'SIGTERM';
    },
  };
  return { io, stdout: () => out, stderr: () => err };
}
