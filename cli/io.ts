// What iommufdctl needs from its process, injectable so runCli can be driven by tests.
//
// Invariants:
// - The default streams touch process.stdout/stderr only when something is written (`exec`
//   writes nothing before execve; what Node did to stdio anyway is undone by
//   exec-inheritance.ts).
// - waitForRelease removes its signal listeners once it resolves, so the process can exit.
// - No fd is held here.

export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
  /** The environment: PATH for `exec`'s program lookup, and what the exec'd program inherits. */
  env: NodeJS.ProcessEnv;
  /** Resolves when `open --hold` should let go of its FD; the value says why (e.g. SIGTERM). */
  waitForRelease(): Promise<string>;
}

const RELEASE_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** Resolves on the first SIGINT, SIGTERM or SIGHUP. */
export function waitForSignal(): Promise<string> {
  return new Promise((resolve) => {
    const onSignal = (signal: NodeJS.Signals): void => {
      for (const s of RELEASE_SIGNALS) process.off(s, onSignal);
      resolve(signal);
    };
    for (const s of RELEASE_SIGNALS) process.on(s, onSignal);
  });
}

export function processIo(): CliIo {
  return {
    stdout: (text) => { process.stdout.write(text); },
    stderr: (text) => { process.stderr.write(text); },
    env: process.env,
    waitForRelease: waitForSignal,
  };
}
