// examples/projection-postgres against a real `celer serve --standalone --shards 3` and a real
// PostgreSQL 15 (the throw-away server of `celer bench --vs postgres`): writers keep appending to
// many aggregates while the projection runs as a child process and is SIGKILLed at seeded random
// points and restarted, 5–10 times. Then the writers stop, the projection catches up and is
// stopped with SIGTERM, and the read model must equal a full replay (every aggregate read with
// readAll, and the writers' own acknowledgements), the applied(shard, seq) ledger must hold
// exactly one row per committed batch, and every checkpoint must be its shard's committed seq + 1.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client as PgClient } from 'pg';
import { connect, normalizeKey, type CelerClient, type NormalizedKey, type ShardBatch } from '@celer/client';
import { checkBinaries, connectPostgres, startPostgres, type PostgresCluster } from '../../dataplane/cli/bench-postgres.ts';
import { batchAmount, batchHash, nextDigest } from '../../examples/projection-postgres/model.ts';
import { removeDir, ROOT, startCeler, tempDir, type CelerProcess } from './lib/celer-process.ts';
import { prng } from '../lib/prng.ts';

const SHARDS = 3;
const PROJECTION = join(ROOT, 'examples/projection-postgres/projection.ts');
/** Aggregates written: orgs × types × ids. */
const ORGS = 2;
const TYPES = 3;
const IDS = 20;
const WRITERS = 6;
/** A writer pauses up to this long between its appends, so the projection keeps up between kills. */
const WRITER_PAUSE_MAX_MS = 4;
/** A projection run lives KILL_AFTER_MIN_MS + up to KILL_AFTER_SPREAD_MS before its SIGKILL. */
const KILL_AFTER_MIN_MS = 150;
const KILL_AFTER_SPREAD_MS = 1_800;
/** Down time between a kill and the restart, up to this long (a backlog builds meanwhile). */
const DOWN_MAX_MS = 1_500;
/** Bounds on the last run's catch-up and on its exit after SIGTERM. */
const CATCH_UP_MS = 60_000;
const EXIT_MS = 15_000;

const seed = Number(process.env.CELER_PROJECTION_SEED ?? Math.floor(Math.random() * 2 ** 31));
const te = new TextEncoder();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let pgc: PostgresCluster | undefined;
let node: CelerProcess | undefined;
let dir: string | undefined;
let client: CelerClient | undefined;
let db: PgClient | undefined;
let child: ProjectionRun | undefined;
/** The writers run while this is true. */
let writing = false;

before(async () => {
  checkBinaries(); // PostgresUnavailableError names the Debian package (hack/deps.sh --test installs it)
  pgc = await startPostgres();
  dir = await tempDir('celer-e2e-projection-');
  node = await startCeler(dir, ['--shards', String(SHARDS)]);
  client = await connect(node.native, { clientId: 1 });
  db = await connectPostgres(pgc);
});

after(async () => {
  writing = false;
  await child?.kill('SIGKILL');
  await client?.close();
  await db?.end().catch(() => undefined);
  await node?.stop();
  pgc?.stop();
  if (dir) await removeDir(dir);
});

interface ProjectionRun {
  proc: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with how the process ended: its exit code, or the signal that ended it. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  kill(sig: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function startProjection(celer: string, pgUrl: string): ProjectionRun {
  const proc = spawn(process.execPath, [PROJECTION, '--celer', celer, '--pg', pgUrl], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
  return {
    proc,
    stdout: () => out,
    stderr: () => err,
    exited,
    kill: async (sig) => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
      return exited;
    },
  };
}

const tail = (s: string, n = 15): string => s.trimEnd().split('\n').slice(-n).join('\n');

/** Fails if the run ended by itself (the projection only ends on our signals). */
function assertAlive(run: ProjectionRun, i: number): void {
  if (run.proc.exitCode !== null || run.proc.signalCode !== null) {
    assert.fail(`projection run ${i} exited by itself with code ${run.proc.exitCode} (signal ${run.proc.signalCode})\nstderr:\n${tail(run.stderr())}\nstdout:\n${tail(run.stdout())}`);
  }
}

async function committedSeqs(c: CelerClient): Promise<bigint[]> {
  const out: bigint[] = [];
  for (let s = 0; s < SHARDS; s++) out.push((await c.readShard(s, { from: Number.MAX_SAFE_INTEGER })).committedSeq);
  return out;
}

/** Whether the projection has created its tables yet (a run may be killed before it does). */
async function haveSchema(d: PgClient): Promise<boolean> {
  const r = await d.query<{ ok: boolean }>("SELECT to_regclass('checkpoint') IS NOT NULL AND to_regclass('applied') IS NOT NULL AS ok");
  return r.rows[0]!.ok;
}

async function checkpoints(d: PgClient): Promise<bigint[]> {
  if (!(await haveSchema(d))) return [];
  const r = await d.query<{ shard: number; next_seq: string }>('SELECT shard, next_seq::text FROM checkpoint ORDER BY shard');
  return r.rows.map((row) => BigInt(row.next_seq));
}

const COLUMNS = ['org', 'type', 'id', 'version', 'event_count', 'batch_count', 'last_type', 'amount_total', 'last_shard', 'last_seq', 'digest'];

/** Where the read model differs from the replay, one line per aggregate (at most 10, then a count). */
function readModelDiff(actual: string[][], expected: string[][]): string[] {
  const byKey = (rows: string[][]) => new Map(rows.map((r) => [r.slice(0, 3).join('/'), r]));
  const a = byKey(actual);
  const e = byKey(expected);
  const out: string[] = [];
  for (const [k, want] of e) {
    const got = a.get(k);
    if (got === undefined) out.push(`${k}: missing from the read model`);
    else {
      const cols = COLUMNS.flatMap((c, i) => (got[i] === want[i] ? [] : [`${c} ${got[i]} (replay: ${want[i]})`]));
      if (cols.length > 0) out.push(`${k}: ${cols.join(', ')}`);
    }
  }
  for (const k of a.keys()) if (!e.has(k)) out.push(`${k}: in the read model but not in the replay`);
  return out.length > 10 ? [...out.slice(0, 10), `… and ${out.length - 10} more aggregates`] : out;
}

const keyText = (k: NormalizedKey): string => `${k.org}/${k.type}/${k.id}`;

test('the projection, SIGKILLed at random points and restarted, ends with the read model of a full replay and no batch applied twice', { timeout: 180_000 }, async () => {
  const t0 = performance.now();
  const r = prng(seed);
  const pgUrl = `postgres://postgres@${pgc!.host}:${pgc!.port}/postgres`;
  const kills = 5 + Math.floor(r() * 6);
  console.log(`projection-postgres: seed ${seed} (CELER_PROJECTION_SEED), ${kills} kills, ${WRITERS} writers on ${ORGS * TYPES * IDS} aggregates, ${SHARDS} shards`);

  // Writers: every acknowledged append is recorded per aggregate (events and amounts), independently of the feed.
  const acked = new Map<string, { events: number; amount: bigint }>();
  writing = true;
  let appends = 0;
  const writer = async (w: number): Promise<void> => {
    const wr = prng(seed + 1 + w);
    while (writing) {
      const key = { org: 1 + Math.floor(wr() * ORGS), type: 1 + Math.floor(wr() * TYPES), id: 1 + Math.floor(wr() * IDS) };
      const n = 1 + Math.floor(wr() * 3);
      const events = Array.from({ length: n }, () => {
        const amount = Math.floor(wr() * 200) - 50;
        return { type: amount >= 0 ? 'Deposited' : 'Withdrawn', data: te.encode(JSON.stringify({ amount, by: w })) };
      });
      await client!.append(key, events);
      const a = acked.get(keyText(normalizeKey(key))) ?? { events: 0, amount: 0n };
      a.events += n;
      for (const e of events) a.amount += BigInt((JSON.parse(new TextDecoder().decode(e.data)) as { amount: number }).amount);
      acked.set(keyText(normalizeKey(key)), a);
      appends++;
      const pause = Math.floor(wr() * (WRITER_PAUSE_MAX_MS + 1));
      if (pause > 0) await sleep(pause);
    }
  };
  const writers = Array.from({ length: WRITERS }, (_, w) => writer(w));
  for (const w of writers) w.catch(() => undefined); // a failure surfaces at the Promise.all below

  // Kill and restart.
  let waitedForLock = 0;
  for (let i = 1; i <= kills; i++) {
    child = startProjection(node!.native, pgUrl);
    const lifeMs = KILL_AFTER_MIN_MS + Math.floor(r() * KILL_AFTER_SPREAD_MS);
    await sleep(lifeMs);
    assertAlive(child, i);
    const end = await child.kill('SIGKILL');
    assert.equal(end.signal, 'SIGKILL', `run ${i} ended by our SIGKILL`);
    if (/another instance holds the projection lock/.test(child.stdout())) waitedForLock++;
    const applied = (await haveSchema(db!)) ? (await db!.query<{ n: string }>('SELECT count(*)::text AS n FROM applied')).rows[0]!.n : '0';
    const committed = (await committedSeqs(client!)).reduce((a, b) => a + b, 0n);
    console.log(`  run ${i}: SIGKILL after ${lifeMs} ms; ${applied} batches in the read model, ${committed} committed (${committed - BigInt(applied)} behind)`);
    if (process.env.CELER_PROJECTION_VERBOSE) console.log(child.stdout());
    child = undefined;
    await sleep(Math.floor(r() * DOWN_MAX_MS));
  }

  // The last run catches up once the writers stop, then stops on SIGTERM.
  child = startProjection(node!.native, pgUrl);
  await sleep(300);
  writing = false;
  await Promise.all(writers);
  const committed = await committedSeqs(client!);
  const totalBatches = committed.reduce((a, b) => a + b, 0n);
  const catchUpFrom = performance.now();
  for (;;) {
    assertAlive(child, kills + 1);
    const cps = await checkpoints(db!);
    if (cps.length === SHARDS && cps.every((cp, s) => cp === committed[s]! + 1n)) break;
    if (performance.now() - catchUpFrom > CATCH_UP_MS) {
      assert.fail(`the projection did not catch up within ${CATCH_UP_MS} ms: checkpoints ${cps.join(', ')}, committed ${committed.join(', ')}\n${tail(child.stdout())}`);
    }
    await sleep(100);
  }
  const stopped = await Promise.race([child.kill('SIGTERM'), sleep(EXIT_MS).then(() => null)]);
  assert.notEqual(stopped, null, `the projection exits within ${EXIT_MS} ms of SIGTERM`);
  assert.deepEqual(stopped, { code: 0, signal: null }, `exit 0 after SIGTERM; stderr:\n${tail(child.stderr())}`);
  assert.match(child.stdout(), /SIGTERM: stopped cleanly/);
  const lastRun = child.stdout();
  child = undefined;

  // Replay 1: every shard from seq 1 — the positions and keys the ledger must hold, once each.
  const ledger: string[] = [];
  const keys = new Map<string, NormalizedKey>();
  for (let s = 0; s < SHARDS; s++) {
    let from = 1n;
    while (from <= committed[s]!) {
      const page = await client!.readShard(s, { from });
      for (const b of page.batches) {
        if (b.position.seq > committed[s]!) break;
        ledger.push(`${s}:${b.position.seq} ${keyText(b.key)} ${b.fromVersion}-${b.toVersion}`);
        keys.set(keyText(b.key), b.key);
      }
      from = page.next;
    }
  }
  assert.equal(BigInt(ledger.length), totalBatches, 'the shard scan found every committed batch');

  // Replay 2: every aggregate with readAll, folded the way the read model is defined.
  assert.deepEqual([...keys.keys()].sort(), [...acked.keys()].sort(), 'the feed holds exactly the aggregates the writers wrote');
  const expected: string[][] = [];
  for (const k of [...keys.values()].sort((a, b) => (a.org !== b.org ? (a.org < b.org ? -1 : 1) : a.type !== b.type ? (a.type < b.type ? -1 : 1) : a.id < b.id ? -1 : a.id > b.id ? 1 : 0))) {
    let version = 0n;
    let events = 0;
    let batches = 0;
    let lastType = '';
    let amount = 0n;
    let last = { shard: 0, seq: 0n };
    let digest = '';
    for await (const b of client!.readAll(k)) {
      const sb: ShardBatch = { ...b, key: k, op: 'write', minVersion: 1n };
      assert.equal(b.fromVersion, version + 1n, `${keyText(k)}: versions are gapless`);
      version = b.toVersion;
      events += b.events.length;
      batches++;
      lastType = b.events[b.events.length - 1]!.type;
      amount += batchAmount(sb);
      last = b.position;
      digest = nextDigest(digest, batchHash(sb));
    }
    const a = acked.get(keyText(k))!;
    assert.equal(events, a.events, `${keyText(k)}: readAll has the events the writers were acknowledged`);
    assert.equal(amount, a.amount, `${keyText(k)}: and their amounts`);
    expected.push([String(k.org), String(k.type), String(k.id), String(version), String(events), String(batches), lastType, String(amount), String(last.shard), String(last.seq), digest]);
  }

  const model = await db!.query<Record<string, string | number>>(
    `SELECT org::text, type::text, id::text, version::text, event_count::text, batch_count::text, last_type, amount_total::text,
            last_shard::text, last_seq::text, digest FROM aggregate_summary AS s ORDER BY s.org, s.type, s.id`,
  );
  const actual = model.rows.map((row) => Object.values(row).map(String));
  assert.deepEqual(readModelDiff(actual, expected), [], 'the read model equals the full replay');

  const rows = await db!.query<{ shard: number; seq: string; k: string; v: string }>(
    `SELECT shard, seq::text, org::text || '/' || type::text || '/' || id::text AS k, from_version::text || '-' || to_version::text AS v
       FROM applied AS a ORDER BY a.shard, a.seq`,
  );
  assert.equal(BigInt(rows.rows.length), totalBatches, 'applied holds one row per committed batch');
  assert.deepEqual(rows.rows.map((row) => `${row.shard}:${row.seq} ${row.k} ${row.v}`), ledger, 'and exactly the committed positions, each once, with their keys');
  assert.deepEqual(await checkpoints(db!), committed.map((c) => c + 1n), "every checkpoint is its shard's committed seq + 1");

  const txns = /applied by this run in (\d+) transactions/.exec(lastRun)?.[1] ?? '?';
  // PostgreSQL logs each connection that vanished inside a transaction: kills that interrupted one.
  const pgLog = readFileSync(join(pgc!.dir, 'primary.log'), 'utf8');
  const openAtKill = pgLog.split('unexpected EOF on client connection with an open transaction').length - 1;
  console.log(
    `projection-postgres: ${kills} SIGKILLs + 1 SIGTERM; ${appends} appends = ${totalBatches} batches (${committed.join(' + ')}) on ${keys.size} aggregates; ` +
      `read model = replay, ${rows.rows.length} ledger rows, checkpoints = committed + 1; ${openAtKill} transactions cut by the kills (PostgreSQL log); ` +
      `${waitedForLock} restarts waited for the instance lock; ` +
      `last run: ${txns} transactions; ${((performance.now() - t0) / 1000).toFixed(1)} s`,
  );
});
