// The one rule both commands start by (bin/iommufd-brokerd, bin/iommufdctl): run the prebuilt
// esbuild bundle in dist/ (plain JavaScript, nothing to transpile), unless a source it was made
// from is newer, in which case run the TypeScript sources through tsx and say so on stderr.
//
// Invariants:
// - A bundle never runs code older than the sources beside it: a bundle runs only if its mtime
//   is at least that of every .ts/.json file under the listed source paths.
// - A source path that does not exist counts as no source: the installed package
//   (scripts/package) ships the bundles and no TypeScript, so there the bundle always runs and
//   tsx (not shipped either) is never needed.
// - bin/ is CommonJS (bin/package.json) so that `iommufdctl` starts without Node's ESM loader:
//   its bundle is CommonJS too and is require()d; under TCG every VM start pays for each
//   module system initialised (`npm run bench -- --only cli` measures it against `node -e 0`).
//   Only the fallback to the sources (tsx) and the daemon's ESM bundle use import().
'use strict';
const { readdirSync, statSync } = require('node:fs');
const { join } = require('node:path');
const { pathToFileURL } = require('node:url');

const root = join(__dirname, '..');

/** The newest mtime (ms) of the .ts/.json files under `paths` (relative to the tree); 0 if none. */
function newestSource(paths) {
  let newest = 0;
  const visit = (path) => {
    const st = statSync(path, { throwIfNoEntry: false });
    if (st === undefined) return;
    if (st.isDirectory()) {
      for (const name of readdirSync(path)) visit(join(path, name));
    } else if (path.endsWith('.ts') || path.endsWith('.json')) {
      newest = Math.max(newest, st.mtimeMs);
    }
  };
  for (const p of paths) visit(join(root, p));
  return newest;
}

/**
 * The absolute path of `spec.bundle` when it is current, else undefined after one line on
 * stderr naming `spec.command` and why (the caller then runs the sources: importSources).
 * @param {{ command: string, bundle: string, sources: string[] }} spec
 */
function currentBundle(spec) {
  const bundle = join(root, spec.bundle);
  const builtAt = statSync(bundle, { throwIfNoEntry: false })?.mtimeMs;
  if (builtAt !== undefined && builtAt >= newestSource(spec.sources)) return bundle;
  process.stderr.write(`${spec.command}: ${builtAt === undefined ? 'no bundle' : 'the bundle is older than the sources'} `
    + `(${bundle}); running the TypeScript sources through tsx (slower start). \`npm run build\` makes the bundle.\n`);
  return undefined;
}

/** Imports a .ts entry (relative to the tree) through tsx. */
async function importSources(entry) {
  const { register } = await import('tsx/esm/api');
  register();
  return import(pathToFileURL(join(root, entry)).href);
}

module.exports = { currentBundle, importSources };
