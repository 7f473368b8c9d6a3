// RSS of a node after writing N distinct aggregates with a small memory budget:
//   node_modules/.bin/node hack/rss-bench.ts [--checkout DIR] [--aggregates 1000000] [--budget-mb 64]
// Starts `DIR/bin/celer serve --standalone` (DIR defaults to this checkout, so an older checkout
// can be measured the same way, same run), writes one event to each of N distinct aggregates from
// 256 concurrent writers, then prints the node's VmRSS (from /proc) and its cache usage.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '../client/index.ts';

const { values } = parseArgs({
  options: { checkout: { type: 'string', default: resolve(import.meta.dirname, '..') }, aggregates: { type: 'string', default: '1000000' }, 'budget-mb': { type: 'string', default: '64' }, dir: { type: 'string' } },
});
const total = Number(values.aggregates);
const dataDir = mkdtempSync(join(values.dir ?? '/var/tmp', 'celer-rss-'));
const node = spawn(join(values.checkout, 'bin/celer'), ['serve', '--standalone', '--data-dir', dataDir, '--shards', '2', '--listen', '127.0.0.1:0', '--grpc', 'off', '--memory-budget-mb', values['budget-mb']], { stdio: ['ignore', 'pipe', 'inherit'] });
let out = '';
const addr = await new Promise<string>((res, rej) => {
  node.stdout.on('data', (c: Buffer) => {
    out += c.toString();
    const m = /listening native (\S+)/.exec(out);
    if (m && out.includes('ready')) res(m[1]!);
  });
  node.on('exit', (code) => rej(new Error(`node exited ${code}`)));
});
const c = await connect(addr, { clientId: 'a3f1c2d4-0000-4000-8000-000000000009' });
const data = new TextEncoder().encode('{"hello":"world","n":1}');
let next = 0;
const t0 = performance.now();
await Promise.all(
  Array.from({ length: 256 }, async () => {
    for (;;) {
      const i = next++;
      if (i >= total) return;
      await c.append({ org: 1, type: 2, id: BigInt(i) }, [{ type: 'Created', data }], { expectedVersion: 'no_stream' });
      if (i % 100_000 === 0) process.stderr.write(`\r${i} written`);
    }
  }),
);
const secs = (performance.now() - t0) / 1000;
await new Promise((r) => setTimeout(r, 2000));
const status = readFileSync(`/proc/${node.pid}/status`, 'utf8');
const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
const httpAddr = /listening http (\S+)/.exec(out)?.[1];
const metrics = httpAddr === undefined ? '' : await (await fetch(`http://${httpAddr}/metrics`)).text();
const caches = metrics.split('\n').filter((l) => l.startsWith('celer_cache_bytes'));
console.log(`${values.checkout}: ${total} aggregates in ${secs.toFixed(1)} s with --memory-budget-mb ${values['budget-mb']}: node RSS ${(rssKb / 1024).toFixed(0)} MiB; ${caches.join('; ')}`);
await c.close();
node.kill('SIGTERM');
await new Promise((r) => node.on('exit', r));
rmSync(dataDir, { recursive: true, force: true });
