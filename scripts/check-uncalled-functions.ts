// Fails when a function under a path prefix was never called in any process of a test run,
// reading the raw V8 coverage files that c8 keeps (its --temp-directory).
//
// Why this exists: c8 (v8-to-istanbul 9) records a function only when it has a name. V8 reports
// a never-called arrow such as `.map((v) => v * 2)` as an unnamed function entry with
// isBlockCoverage false, which v8-to-istanbul drops: it is neither a function nor a branch, and
// its line counts as covered because other code on that line ran. Under tsx even
// `export const f = (n) => ...` is unnamed to V8 (esbuild's keepNames wraps it in
// __name(...), which defeats V8's name inference), so "100 % functions" from c8 ignores every
// arrow function. This check counts every function V8 reports, named or not.
//
// Invariants:
// - A function is called if any process reported a non-zero count for it; functions are keyed
//   by script URL and byte range, which are identical across processes since each one
//   transpiles the same source with the same tsx.
// - Positions are mapped back to the .ts source with the source map Node itself recorded in the
//   coverage file (source-map-cache), through node:module's SourceMap.
// - Reads files only; writes nothing; owns no fd beyond readFileSync's.
import { readFileSync, readdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { SourceMap, type SourceMapPayload } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';

interface V8Range { startOffset: number; endOffset: number; count: number }
interface V8Function { functionName: string; isBlockCoverage: boolean; ranges: V8Range[] }
interface V8Script { url: string; functions: V8Function[] }
interface CacheEntry { lineLengths: number[]; data: SourceMapPayload | null }
interface CoverageFile { result: V8Script[]; 'source-map-cache'?: Record<string, CacheEntry> }

export interface UncalledFunction {
  /** The .ts file (absolute path). */
  file: string;
  /** 1-based line and column in the original source (the generated position if unmapped). */
  line: number;
  column: number;
  /** V8's name for it; '(anonymous)' for arrows and callbacks. */
  name: string;
}

/** 0-based line/column of a byte offset in generated code whose line lengths are known. */
function lineColumn(lineLengths: readonly number[], offset: number): { line: number; column: number } {
  let rest = offset;
  for (let line = 0; line < lineLengths.length; line++) {
    const length = lineLengths[line] ?? 0;
    if (rest <= length) return { line, column: rest };
    rest -= length + 1;
  }
  return { line: lineLengths.length, column: rest };
}

function locate(url: string, offset: number, cache: CacheEntry | undefined): Omit<UncalledFunction, 'name'> {
  const file = fileURLToPath(url);
  if (cache === undefined) return { file, line: 0, column: offset + 1 };
  const at = lineColumn(cache.lineLengths, offset);
  if (cache.data !== null) {
    const entry: Partial<{ originalLine: number; originalColumn: number }> = new SourceMap(cache.data).findEntry(at.line, at.column);
    if (entry.originalLine !== undefined && entry.originalColumn !== undefined) {
      return { file, line: entry.originalLine + 1, column: entry.originalColumn + 1 };
    }
  }
  return { file, line: at.line + 1, column: at.column + 1 };
}

/** Every function of a script under `prefix` (an absolute directory) that no process called. */
export function uncalledFunctions(coverageDir: string, prefix: string): UncalledFunction[] {
  const prefixUrl = pathToFileURL(resolve(prefix)).href.replace(/\/?$/, '/');
  const calls = new Map<string, { url: string; offset: number; name: string; count: number }>();
  const caches = new Map<string, CacheEntry>();
  for (const name of readdirSync(coverageDir).filter((n) => n.endsWith('.json')).sort()) {
    const report = JSON.parse(readFileSync(join(coverageDir, name), 'utf8')) as CoverageFile;
    for (const [url, entry] of Object.entries(report['source-map-cache'] ?? {})) {
      if (url.startsWith(prefixUrl)) caches.set(url, entry);
    }
    for (const script of report.result) {
      if (!script.url.startsWith(prefixUrl)) continue;
      for (const fn of script.functions) {
        const whole = fn.ranges[0];
        if (whole === undefined) continue;
        const key = `${script.url}#${whole.startOffset}-${whole.endOffset}`;
        const seen = calls.get(key);
        calls.set(key, {
          url: script.url, offset: whole.startOffset, name: fn.functionName === '' ? '(anonymous)' : fn.functionName,
          count: (seen?.count ?? 0) + whole.count,
        });
      }
    }
  }
  return [...calls.values()]
    .filter((c) => c.count === 0)
    .map((c) => ({ ...locate(c.url, c.offset, caches.get(c.url)), name: c.name }))
    .sort((a, b) => a.file.localeCompare(b.file) || a.line - b.line || a.column - b.column);
}

function main(argv: readonly string[]): number {
  const [coverageDir, prefix] = argv;
  if (coverageDir === undefined || prefix === undefined) {
    console.error('usage: check-uncalled-functions.ts V8_COVERAGE_DIR SOURCE_DIR');
    return 2;
  }
  const uncalled = uncalledFunctions(coverageDir, prefix);
  for (const u of uncalled) console.error(`never called: ${u.name} at ${u.file}:${u.line}:${u.column}`);
  console.log(`check-uncalled-functions: ${uncalled.length} function(s) under ${prefix} never called`);
  return uncalled.length === 0 ? 0 : 1;
}

if (process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exitCode = main(process.argv.slice(2));
}
