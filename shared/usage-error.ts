// The one error class for "this program was called wrongly": iommufd-brokerd's flags
// (daemon/flags.ts) and iommufdctl's arguments (cli/args.ts) both throw it.
//
// Invariants:
// - The message names the offending flag or option and says what is expected; callers print
//   it with the usage text and exit 2 without contacting anything.
// - `command` is the iommufdctl subcommand whose usage applies, when there is one (the daemon
//   has none); nothing else rides on the error.

export class UsageError extends Error {
  override readonly name = 'UsageError';
  readonly command: string | undefined;

  constructor(message: string, command?: string) {
    super(message);
    this.command = command;
  }
}
