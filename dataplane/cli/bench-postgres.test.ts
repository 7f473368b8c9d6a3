// The PostgreSQL peer of `celer bench --vs postgres`, run briefly against a real PostgreSQL 15
// (hack/deps.sh installs the Debian package `postgresql`), alone and as primary + synchronous standby.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  checkWriters,
  connectPostgres,
  POSTGRES_MAX_WRITERS,
  PostgresUnavailableError,
  processState,
  replicationState,
  runPostgresWorkload,
  startPostgres,
  STANDBY_APPLICATION_NAME,
  type PostgresCluster,
} from './bench-postgres.ts';

const WRITERS = 4;

test('the PostgreSQL peer lands every write with gapless versions per stream and removes its cluster afterwards', async () => {
  const cluster = await startPostgres();
  let rows: { stream: string; n: string; max: string; min: string }[];
  let durability: Record<string, string>;
  try {
    assert.ok(existsSync(cluster.dir), 'the cluster directory exists while the server runs');
    const result = await runPostgresWorkload(cluster, { writers: WRITERS, durationS: 1, warmupS: 0, out: () => {} });
    assert.equal(result.errors, 0);
    assert.ok(result.writes > 0, 'some writes were measured');
    const check = await connectPostgres(cluster);
    try {
      rows = (await check.query<{ stream: string; n: string; max: string; min: string }>(
        'SELECT stream::text, count(*)::text AS n, max(version)::text AS max, min(version)::text AS min FROM events GROUP BY stream ORDER BY stream',
      )).rows;
      const settings = await check.query<{ name: string; setting: string }>(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes')",
      );
      durability = Object.fromEntries(settings.rows.map((r) => [r.name, r.setting]));
    } finally {
      await check.end();
    }
  } finally {
    cluster.stop();
  }
  assert.deepEqual(rows.map((r) => r.stream), Array.from({ length: WRITERS }, (_, i) => String(i)), 'one stream per writer');
  for (const r of rows) {
    assert.equal(r.min, '1', `stream ${r.stream} starts at version 1`);
    assert.equal(r.n, r.max, `stream ${r.stream} has no gaps: ${r.n} events up to version ${r.max}`);
  }
  assert.deepEqual(durability, { fsync: 'on', synchronous_commit: 'on', full_page_writes: 'on' });
  assert.equal(existsSync(cluster.dir), false, 'the cluster directory is removed after stop');
});

test('the PostgreSQL peer refuses more writers than its connection limit allows, naming the bound', () => {
  assert.doesNotThrow(() => checkWriters(POSTGRES_MAX_WRITERS));
  assert.throws(() => checkWriters(POSTGRES_MAX_WRITERS + 1), /max_connections = \d+.*--writers must be ≤ \d+/);
});

test('missing PostgreSQL binaries fail with the Debian package to install', async () => {
  await assert.rejects(startPostgres({ binDir: '/nonexistent/postgresql/bin' }), (e: unknown) => {
    assert.ok(e instanceof PostgresUnavailableError);
    assert.match(e.message, /Debian package `postgresql`/);
    return true;
  });
});

/**
 * A running process's start time (field 22 of /proc/PID/stat), so a reused pid is not taken for the
 * old process; undefined when it is gone or has exited (a zombie waiting for init to reap it).
 */
function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return processState(pid) === 'Z' ? undefined : stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Every process of the cluster: each postmaster (from its postmaster.pid) and all its children, with start times. */
function clusterProcesses(c: PostgresCluster): Map<number, string> {
  const postmasters = c.dataDirs.map((d) => Number(readFileSync(join(d, 'postmaster.pid'), 'utf8').split('\n')[0]));
  const found = new Map<number, string>();
  for (const pid of postmasters) found.set(pid, startTime(pid)!);
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (postmasters.includes(Number(fields[1]))) found.set(Number(entry), fields[19]!);
    } catch {
      // exited while we looked
    }
  }
  return found;
}

/** The standby applies WAL shortly after the primary's commit returns (synchronous_commit=on waits for its flush, not its replay). */
async function standbyRows(c: PostgresCluster, expected: string): Promise<string> {
  const standby = await connectPostgres(c, c.standby!.port);
  try {
    let got = '';
    for (let i = 0; i < 200; i++) {
      got = (await standby.query<{ s: string }>("SELECT coalesce(string_agg(stream || ':' || n, ',' ORDER BY stream), '') AS s FROM (SELECT stream, count(*) AS n FROM events GROUP BY stream) t")).rows[0]!.s;
      if (got === expected) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    return got;
  } finally {
    await standby.end();
  }
}

test('with a standby, the primary reports it sync, every write lands on the standby too, and teardown leaves no postgres process', async () => {
  const lines: string[] = [];
  const cluster = await startPostgres({ standby: true, out: (l) => lines.push(l) });
  let processes: Map<number, string>;
  try {
    assert.equal(cluster.dataDirs.length, 2, 'a primary and a standby were started');
    assert.ok(cluster.standby !== undefined && cluster.standby.port !== cluster.port);
    assert.ok(lines.some((l) => /standby .* is synchronous/.test(l)), `progress lines name the sync: ${lines.join(' | ')}`);
    const replication = await replicationState(cluster);
    assert.deepEqual(replication.map((r) => [r.application_name, r.state, r.sync_state]), [[STANDBY_APPLICATION_NAME, 'streaming', 'sync']]);
    processes = clusterProcesses(cluster);
    assert.ok(processes.size > 2, `the postmasters have children (walsender, walreceiver, …): ${[...processes.keys()].join(' ')}`);

    const result = await runPostgresWorkload(cluster, { writers: 3, durationS: 1, warmupS: 0, out: () => {} });
    assert.equal(result.errors, 0);
    assert.ok(result.writes > 0, 'some writes were measured');
    const primary = await connectPostgres(cluster);
    let expected: string;
    let settings: Record<string, string>;
    try {
      expected = (await primary.query<{ s: string }>("SELECT string_agg(stream || ':' || n, ',' ORDER BY stream) AS s FROM (SELECT stream, count(*) AS n FROM events GROUP BY stream) t")).rows[0]!.s;
      const rows = await primary.query<{ name: string; setting: string }>(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'synchronous_standby_names')",
      );
      settings = Object.fromEntries(rows.rows.map((r) => [r.name, r.setting]));
    } finally {
      await primary.end();
    }
    assert.match(expected, /^0:\d+,1:\d+,2:\d+$/, 'three streams on the primary');
    assert.equal(await standbyRows(cluster, expected), expected, 'the standby holds the same rows per stream');
    assert.deepEqual(settings, { fsync: 'on', synchronous_commit: 'on', full_page_writes: 'on', synchronous_standby_names: `FIRST 1 (${STANDBY_APPLICATION_NAME})` });

    // A second round starts from an empty table again.
    const again = await runPostgresWorkload(cluster, { writers: 2, durationS: 1, warmupS: 0, out: () => {} });
    assert.equal(again.errors, 0);
  } finally {
    cluster.stop();
  }
  const left = [...processes].filter(([pid, start]) => startTime(pid) === start);
  assert.deepEqual(left, [], 'no process of the cluster is left after stop');
  assert.equal(existsSync(cluster.dir), false, 'the cluster directory is removed after stop');
});
