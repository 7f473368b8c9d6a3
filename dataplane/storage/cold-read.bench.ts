// Cold-read latency with and without a concurrent W1 write load, measured through the public client
// against a real node (`bin/celer serve`), so it covers whatever engine and disk I/O the node runs.
//
//   node dataplane/storage/cold-read.bench.ts [--root CHECKOUT] [--dir DIR] [--reads N]
//        [--rate N] [--readers N] [--writers N] [--event-bytes N] [--memory-budget-mb N]
//
// --root picks the checkout whose bin/celer serves (default: this one), so two builds of the addon
// can be compared with the same client. The node has one shard on one worker thread, so reads and
// group commits share one io_uring ring: the case where a read can queue behind a flush.
//
// Steps: start the node on a fresh data directory (--memory-budget-mb, default 16, the smallest
// allowed); write 2 × --reads aggregates of one --event-bytes event each; restart the node, so
// its caches are empty; read --reads of them (shuffled, each once) with no writes: the idle
// figure. Then start --writers W1 writers (one 25-byte event per append to an aggregate of their
// own, closed loop) and read the other half the same way. Every aggregate is read once after the
// restart, so each read is a cold load from the segments (O_DIRECT: no page cache either).
//
// Reads start at --rate per second (0: closed loop), up to --readers at once. A fixed rate keeps
// the readers' CPU the same whatever their latency, so the W1 figures of two builds compare too
// (the shard is one JS thread); latency counts from each read's actual start.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { connect, type CelerClient } from '../../client/index.ts';

/** The W1 payload (as in dataplane/cli/bench.ts): a "Hello World"-sized event. */
const W1_PAYLOAD = new TextEncoder().encode('{"hello":"world","n":42}!');
/** Appends in flight while filling: enough for large group commits, few enough not to hit the shard's queue limit. */
const FILL_CONCURRENCY = 256;
/** W1 runs this long before the loaded reads start, so they see a steady write load. */
const WRITE_WARMUP_MS = 1000;
/** How long the node may take to print `ready` (recovery of an empty directory takes well under a second). */
const NODE_START_TIMEOUT_MS = 30_000;

const { values } = parseArgs({
  options: {
    root: { type: 'string' },
    dir: { type: 'string' },
    reads: { type: 'string', default: '3000' },
    rate: { type: 'string', default: '200' },
    readers: { type: 'string', default: '16' },
    writers: { type: 'string', default: '64' },
    'event-bytes': { type: 'string', default: '1024' },
    'memory-budget-mb': { type: 'string', default: '16' },
  },
});

function positiveInt(name: string, v: string | undefined): number {
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--${name} must be a positive integer; got ${v}`);
  return n;
}

const root = resolve(values.root ?? new URL('../..', import.meta.url).pathname);
const reads = positiveInt('reads', values.reads);
const rate = Number(values.rate);
if (!Number.isFinite(rate) || rate < 0) throw new Error(`--rate must be a number ≥ 0; got ${values.rate}`);
const readers = positiveInt('readers', values.readers);
const writers = positiveInt('writers', values.writers);
const eventBytes = positiveInt('event-bytes', values['event-bytes']);
const budgetMb = positiveInt('memory-budget-mb', values['memory-budget-mb']);
const ownDir = values.dir === undefined;
const dataDir = values.dir ?? mkdtempSync(join(process.env['CELER_TEST_DISK_DIR'] ?? tmpdir(), 'celer-cold-read-'));

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Starts `bin/celer serve` and resolves with its native address once it printed `ready`. */
function startNode(): Promise<{ child: ChildProcess; address: string }> {
  const args = ['serve', '--standalone', '--data-dir', dataDir, '--shards', '1', '--workers', '1', '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--grpc', 'off', '--memory-budget-mb', String(budgetMb)];
  const child = spawn(join(root, 'bin/celer'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const stderr: string[] = [];
  createInterface({ input: child.stderr! }).on('line', (l) => {
    stderr.push(l);
    if (stderr.length > 50) stderr.shift();
  });
  return new Promise((res, rej) => {
    let address: string | undefined;
    const timer = setTimeout(() => rej(new Error(`node not ready after ${NODE_START_TIMEOUT_MS} ms:\n${stderr.join('\n')}`)), NODE_START_TIMEOUT_MS);
    child.once('exit', (code) => {
      clearTimeout(timer);
      rej(new Error(`node exited with ${code}:\n${stderr.join('\n')}`));
    });
    createInterface({ input: child.stdout! }).on('line', (l) => {
      const m = /^listening native (\S+)/.exec(l);
      if (m) address = m[1];
      if (l === 'ready' && address !== undefined) {
        clearTimeout(timer);
        child.removeAllListeners('exit');
        res({ child, address });
      }
    });
  });
}

async function stopNode(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

/** Fisher-Yates with a fixed seed (xorshift32), so runs read the same aggregates in the same order. */
function shuffled(n: number): number[] {
  const ids = Array.from({ length: n }, (_, i) => i + 1);
  let s = 0x9e3779b9;
  for (let i = n - 1; i > 0; i--) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const j = (s >>> 0) % (i + 1);
    [ids[i], ids[j]] = [ids[j]!, ids[i]!];
  }
  return ids;
}

/** Reads each id once with `readers` concurrent readers; returns the sorted latencies in ms. */
async function readPhase(client: CelerClient, org: bigint, ids: readonly number[]): Promise<{ sorted: Float64Array; seconds: number }> {
  const latencies = new Float64Array(ids.length);
  let next = 0;
  const t0 = performance.now();
  const reader = async (): Promise<void> => {
    while (next < ids.length) {
      const i = next++;
      // Read i is due at t0 + i / rate; a reader that is late starts it at once.
      const wait = rate > 0 ? t0 + (i * 1000) / rate - performance.now() : 0;
      if (wait > 0) await new Promise((r) => setTimeout(r, wait));
      const s = performance.now();
      const page = await client.read({ org, type: 1n, id: BigInt(ids[i]!) });
      latencies[i] = performance.now() - s;
      const events = page.batches.reduce((n, b) => n + b.events.length, 0);
      if (events !== 1) throw new Error(`aggregate ${ids[i]} read back ${events} events, expected 1`);
    }
  };
  await Promise.all(Array.from({ length: readers }, reader));
  return { sorted: latencies.sort(), seconds: (performance.now() - t0) / 1000 };
}

function report(label: string, r: { sorted: Float64Array; seconds: number }, extra = ''): void {
  const f = (p: number): string => percentile(r.sorted, p).toFixed(2).padStart(7);
  console.log(
    `${label.padEnd(22)} ${String(r.sorted.length).padStart(6)} reads ${(r.sorted.length / r.seconds).toFixed(0).padStart(6)}/s  ms p50 ${f(50)}  p90 ${f(90)}  p99 ${f(99)}  max ${f(100)}${extra}`,
  );
}

/** Writes aggregates 1..count of `org` (type 1), one event each, on a node of its own. */
async function fill(org: bigint, count: number): Promise<void> {
  const { child, address } = await startNode();
  const client = await connect(address, { clientId: 1, connectionsPerNode: 4 });
  try {
    const payload = new Uint8Array(eventBytes).fill(0x61);
    let filled = 0;
    const t0 = performance.now();
    const filler = async (): Promise<void> => {
      while (filled < count) {
        const id = BigInt(++filled);
        await client.append({ org, type: 1n, id }, [{ type: 'Filled', data: payload }], { expectedVersion: 'no_stream' });
      }
    };
    await Promise.all(Array.from({ length: FILL_CONCURRENCY }, filler));
    console.log(`filled ${count} aggregates of one ${eventBytes}-byte event in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  } finally {
    await client.close();
    await stopNode(child);
  }
}

async function main(): Promise<void> {
  const org = BigInt(Date.now());
  console.log(`cold reads against ${root} (data ${dataDir}, --memory-budget-mb ${budgetMb}, ${rate > 0 ? `${rate} reads/s` : 'closed loop'}, up to ${readers} readers)`);
  await fill(org, 2 * reads);
  const { child, address } = await startNode();
  const stopOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.once('exit', stopOnExit);
  const client = await connect(address, { clientId: 1, connectionsPerNode: 4 });
  const writeClient = await connect(address, { clientId: 2, connectionsPerNode: 4 });
  try {

    const order = shuffled(2 * reads);
    report('idle', await readPhase(client, org, order.slice(0, reads)));

    let stop = false;
    let writes = 0;
    let writeErrors = 0;
    const writer = async (w: number): Promise<void> => {
      while (!stop) {
        try {
          await writeClient.append({ org, type: 2n, id: BigInt(w + 1) }, [{ type: 'Hello', data: W1_PAYLOAD }]);
          writes++;
        } catch {
          writeErrors++;
        }
      }
    };
    const load = Array.from({ length: writers }, (_, w) => writer(w));
    await new Promise((r) => setTimeout(r, WRITE_WARMUP_MS));
    const w0 = writes;
    const loaded = await readPhase(client, org, order.slice(reads));
    const wps = (writes - w0) / loaded.seconds;
    stop = true;
    await Promise.all(load);
    report(`under W1 (${writers} writers)`, loaded, `   W1 ${wps.toFixed(0)} writes/s${writeErrors > 0 ? `, ${writeErrors} errors` : ''}`);
  } finally {
    await client.close();
    await writeClient.close();
    process.removeListener('exit', stopOnExit);
    await stopNode(child);
  }
}

try {
  await main();
} finally {
  if (ownDir) rmSync(dataDir, { recursive: true, force: true });
}
