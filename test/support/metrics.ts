// Test support: a daemon's /metrics over its admin socket, and one sample's value from it.
//
// Invariants:
// - One request per scrape on its own connection (no agent keeps a socket open afterwards).
// - A series is matched exactly (name plus labels as printed); printed twice fails the test,
//   absent reads as 0.
import assert from 'node:assert/strict';
import { request } from 'node:http';

/** GET /metrics over the admin Unix socket. */
export function scrape(socketPath: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: '/metrics', agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => { body += c; }).on('end', () => resolve(body));
    });
    req.on('error', reject).end();
  });
}

/** The value of the sample `series` (name plus labels, exactly as printed); 0 if absent. */
export function sampleValue(metrics: string, series: string): number {
  const lines = metrics.split('\n').filter((l) => l.startsWith(`${series} `));
  assert.ok(lines.length <= 1, `${series} printed twice`);
  return lines[0] === undefined ? 0 : Number(lines[0].slice(series.length + 1));
}
