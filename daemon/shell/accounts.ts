// User and group names to ids, from the local files /etc/passwd and /etc/group.
//
// Invariants:
// - Only the files are read (no NSS: LDAP/sssd/systemd-homed users are not found); a name that
//   is not there is an error that says so and tells the operator to write the numeric id.
// - A file is read at most once per AccountFiles instance, and only when a name needs it.
// - Lines are "name:password:id:..." as in passwd(5)/group(5); comments (#), blank lines and
//   NIS compat entries (+/-) are skipped; a line whose id is not a decimal number is an error
//   naming the file and line, never skipped silently.
import { readFileSync } from 'node:fs';

export const PASSWD_FILE = '/etc/passwd';
export const GROUP_FILE = '/etc/group';

/** A name could not be resolved, or an account file could not be read. */
export class AccountError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AccountError';
  }
}

/** name -> id from one passwd(5)- or group(5)-style file. */
export function parseAccountFile(path: string, text: string): Map<string, number> {
  const ids = new Map<string, number>();
  text.split('\n').forEach((line, index) => {
    if (line.trim() === '' || line.startsWith('#') || line.startsWith('+') || line.startsWith('-')) return;
    const fields = line.split(':');
    const name = fields[0];
    const id = fields[2];
    if (name === undefined || name === '' || id === undefined || !/^\d+$/.test(id) || !Number.isSafeInteger(Number(id))) {
      throw new AccountError(`${path}:${index + 1}: not a "name:password:id:..." line`);
    }
    // The first entry wins, as in getpwnam(3) over the files backend.
    if (!ids.has(name)) ids.set(name, Number(id));
  });
  return ids;
}

export class AccountFiles {
  readonly #paths: { user: string; group: string };
  readonly #cache = new Map<'user' | 'group', Map<string, number>>();

  constructor(passwdFile: string = PASSWD_FILE, groupFile: string = GROUP_FILE) {
    this.#paths = { user: passwdFile, group: groupFile };
  }

  /** The uid of a user name; throws AccountError naming the name and file if there is none. */
  uid(name: string): number {
    return this.#lookup('user', name);
  }

  /** The gid of a group name; throws AccountError naming the name and file if there is none. */
  gid(name: string): number {
    return this.#lookup('group', name);
  }

  #lookup(kind: 'user' | 'group', name: string): number {
    const path = this.#paths[kind];
    const id = this.#table(kind).get(name);
    if (id === undefined) {
      const numeric = /^\d+$/.test(name) ? ` (to give a numeric ${kind === 'user' ? 'uid' : 'gid'}, write ${name} without quotes)` : '';
      throw new AccountError(`unknown ${kind} "${name}": not in ${path}${numeric}; ${kind}s known only to NSS services `
        + `(LDAP, sssd) are not looked up: write the numeric ${kind === 'user' ? 'uid' : 'gid'} instead`);
    }
    return id;
  }

  #table(kind: 'user' | 'group'): Map<string, number> {
    let table = this.#cache.get(kind);
    if (table === undefined) {
      const path = this.#paths[kind];
      let text: string;
      try {
        text = readFileSync(path, 'utf8');
      } catch (e) {
        throw new AccountError(`cannot read ${path} to resolve ${kind} names (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
      }
      table = parseAccountFile(path, text);
      this.#cache.set(kind, table);
    }
    return table;
  }
}
