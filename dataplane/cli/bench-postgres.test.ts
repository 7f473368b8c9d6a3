// The PostgreSQL peer of `celer bench --vs postgres`, run briefly against a real PostgreSQL 15
// (hack/deps.sh installs the Debian package `postgresql`).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { checkWriters, connectPostgres, POSTGRES_MAX_WRITERS, PostgresUnavailableError, runPostgresWorkload, startPostgres } from './bench-postgres.ts';

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
