// The PostgreSQL peer of `celer bench --vs postgres`: the W1 workload against a throw-away
// PostgreSQL 15 cluster on this machine. Durability matches Celer's standalone ack (fsync=on,
// synchronous_commit=on, full_page_writes=on, every commit flushed before it returns); there is no
// standby, as Celer's standalone has no replica. Each writer owns one stream and one connection and
// appends with an optimistic-concurrency INSERT at its last version + 1, so a unique violation
// (SQLSTATE 23505) plays the part of Celer's 2003 wrong-expected-version.
import { spawnSync } from 'node:child_process';
import { appendFileSync, chownSync, existsSync, mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from 'pg';
import { PAYLOAD, runClosedLoop, type BenchResult, type LoopOptions } from './bench.ts';

/** Where Debian's `postgresql` package (PostgreSQL 15, bookworm) puts the server binaries. */
export const POSTGRES_BIN_DIR = '/usr/lib/postgresql/15/bin';
/** max_connections set on the throw-away cluster. Each writer holds one; one more is the harness's own. */
export const POSTGRES_MAX_CONNECTIONS = 1024;
/** Writers the peer accepts: max_connections less the harness's setup/check connection. */
export const POSTGRES_MAX_WRITERS = POSTGRES_MAX_CONNECTIONS - 1;
/** Ports are picked here, below Linux's default ephemeral range (32768–60999), so outgoing sockets cannot take them. */
const PORT_MIN = 20_000;
const PORT_MAX = 32_767;
/** Port candidates tried before giving up. */
const PORT_ATTEMPTS = 50;
/** Connections opened at once while the writers connect. */
const CONNECT_PARALLELISM = 32;
/** Bounds on the server's start and stop (pg_ctl -w waits up to this long). */
const PG_CTL_TIMEOUT_S = 60;
const SPAWN_TIMEOUT_MS = (PG_CTL_TIMEOUT_S + 30) * 1000;

/** The settings the benchmark relies on, written explicitly so a changed default cannot alter them. */
export const POSTGRES_DURABILITY = { fsync: 'on', synchronous_commit: 'on', full_page_writes: 'on' } as const;

export const POSTGRES_NOTE =
  'PostgreSQL 15 as a single durable server (fsync=on, synchronous_commit=on, full_page_writes=on; each commit is ' +
  'flushed to disk before it returns), like Celer standalone; with a synchronous standby, as a replicated Celer would ' +
  'be compared against, every PostgreSQL commit would also wait for the standby and be slower.';

export class PostgresUnavailableError extends Error {}

export interface PostgresCluster {
  /** The temp directory holding the data directory, the unix socket and the server log. */
  dir: string;
  host: string;
  port: number;
  /** Stops the server (fast shutdown, or immediate when `immediate`) and removes `dir`. Idempotent, synchronous so signal handlers can use it. */
  stop(immediate?: boolean): void;
}

export interface StartOptions {
  binDir?: string;
  out?: (line: string) => void;
}

function run(cmd: string, args: string[], asPostgres: boolean): { ok: boolean; output: string } {
  // initdb refuses to run as root; as root the cluster belongs to the package's `postgres` user.
  const [file, argv] = asPostgres ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args];
  const r = spawnSync(file, argv, { encoding: 'utf8', timeout: SPAWN_TIMEOUT_MS });
  const output = `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`.trim();
  return { ok: r.status === 0, output };
}

function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen({ port, host: '127.0.0.1', exclusive: true }, () => s.close(() => resolve(true)));
  });
}

async function freePort(): Promise<number> {
  for (let i = 0; i < PORT_ATTEMPTS; i++) {
    const port = PORT_MIN + Math.floor(Math.random() * (PORT_MAX - PORT_MIN + 1));
    if (await portIsFree(port)) return port;
  }
  throw new Error(`no free loopback port found in ${PORT_MIN}–${PORT_MAX} after ${PORT_ATTEMPTS} tries`);
}

function postgresIds(): { uid: number; gid: number } {
  const line = readFileSync('/etc/passwd', 'utf8')
    .split('\n')
    .find((l) => l.startsWith('postgres:'));
  const [, , uid, gid] = line?.split(':') ?? [];
  if (uid === undefined || gid === undefined) throw new PostgresUnavailableError('no `postgres` user; install the Debian package `postgresql` (apt-get install -y postgresql)');
  return { uid: Number(uid), gid: Number(gid) };
}

/** initdb + start a throw-away cluster on 127.0.0.1 at a free port. The caller must call stop(). */
export async function startPostgres(o: StartOptions = {}): Promise<PostgresCluster> {
  const bin = o.binDir ?? POSTGRES_BIN_DIR;
  checkBinaries(bin);
  const asPostgres = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), 'celer-bench-pg-'));
  const data = join(dir, 'data');
  const log = join(dir, 'server.log');
  let stopped = false;
  let started = false;
  const cluster: PostgresCluster = {
    dir,
    host: '127.0.0.1',
    port: 0,
    stop(immediate = false) {
      if (stopped) return;
      stopped = true;
      if (started) {
        const r = run(join(bin, 'pg_ctl'), ['-D', data, '-m', immediate ? 'immediate' : 'fast', '-t', String(PG_CTL_TIMEOUT_S), '-w', 'stop'], asPostgres);
        if (!r.ok) killPostmaster(data);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    if (asPostgres) {
      const { uid, gid } = postgresIds();
      chownSync(dir, uid, gid);
    }
    const init = run(join(bin, 'initdb'), ['-D', data, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-locale', '--no-sync'], asPostgres);
    if (!init.ok) throw new Error(`initdb failed: ${init.output}`);
    cluster.port = await freePort();
    const settings: Record<string, string | number> = {
      listen_addresses: "'127.0.0.1'",
      port: cluster.port,
      unix_socket_directories: `'${dir}'`,
      max_connections: POSTGRES_MAX_CONNECTIONS,
      ...POSTGRES_DURABILITY,
    };
    appendFileSync(join(data, 'postgresql.conf'), `\n# celer bench --vs postgres\n${Object.entries(settings).map(([k, v]) => `${k} = ${v}`).join('\n')}\n`);
    started = true; // from here on a half-started postmaster may exist; stop() handles both
    const start = run(join(bin, 'pg_ctl'), ['-D', data, '-l', log, '-t', String(PG_CTL_TIMEOUT_S), '-w', 'start'], asPostgres);
    if (!start.ok) {
      const tail = existsSync(log) ? readFileSync(log, 'utf8').split('\n').slice(-15).join('\n') : '';
      throw new Error(`PostgreSQL did not start: ${start.output}\n${tail}`);
    }
    o.out?.(`postgres: PostgreSQL 15 cluster in ${dir}, listening on 127.0.0.1:${cluster.port}`);
    return cluster;
  } catch (e) {
    cluster.stop(true);
    throw e;
  }
}

/** Throws PostgresUnavailableError, naming the Debian package, when the server binaries are absent. */
export function checkBinaries(bin: string = POSTGRES_BIN_DIR): void {
  for (const b of ['initdb', 'pg_ctl', 'postgres']) {
    if (!existsSync(join(bin, b))) {
      throw new PostgresUnavailableError(`PostgreSQL 15 not found (${join(bin, b)} is missing); install the Debian package \`postgresql\` (apt-get install -y postgresql)`);
    }
  }
}

/** Last resort when pg_ctl cannot stop the server: SIGQUIT (immediate shutdown) to the postmaster. */
function killPostmaster(data: string): void {
  try {
    const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
    if (Number.isSafeInteger(pid) && pid > 0) process.kill(pid, 'SIGQUIT');
  } catch {
    // no pid file or no such process: nothing is running
  }
}

export async function connectPostgres(c: PostgresCluster): Promise<Client> {
  const { default: pg } = await import('pg');
  const client = new pg.Client({ host: c.host, port: c.port, user: 'postgres', database: 'postgres' });
  await client.connect();
  return client;
}

export const EVENTS_DDL = 'CREATE TABLE events (stream bigint, version bigint, type text, data bytea, PRIMARY KEY (stream, version))';
const APPEND_SQL = 'INSERT INTO events (stream, version, type, data) VALUES ($1, $2, $3, $4)';
/** SQLSTATE unique_violation: the optimistic-concurrency conflict, Celer's 2003. */
const UNIQUE_VIOLATION = '23505';

export function checkWriters(writers: number): void {
  if (writers > POSTGRES_MAX_WRITERS) {
    throw new RangeError(
      `--vs postgres runs one PostgreSQL connection per writer and sets max_connections = ${POSTGRES_MAX_CONNECTIONS} ` +
        `(one kept for the harness), so --writers must be ≤ ${POSTGRES_MAX_WRITERS}; got ${writers}`,
    );
  }
}

/** W1 against a running cluster: creates `events`, then N writers on N connections, each appending to its own stream. */
export async function runPostgresWorkload(c: PostgresCluster, o: LoopOptions): Promise<BenchResult> {
  checkWriters(o.writers);
  const admin = await connectPostgres(c);
  try {
    await admin.query(EVENTS_DDL);
  } finally {
    await admin.end();
  }
  const clients: Client[] = [];
  try {
    for (let i = 0; i < o.writers; i += CONNECT_PARALLELISM) {
      const batch = await Promise.all(Array.from({ length: Math.min(CONNECT_PARALLELISM, o.writers - i) }, () => connectPostgres(c)));
      clients.push(...batch);
    }
    const versions = new Array<number>(o.writers).fill(0);
    const data = Buffer.from(PAYLOAD);
    const append = async (i: number): Promise<void> => {
      const next = versions[i]! + 1;
      try {
        // A named statement is parsed and planned once per connection, as a driver's prepared append would be.
        await clients[i]!.query({ name: 'append', text: APPEND_SQL, values: [i, next, 'Hello', data] });
      } catch (e) {
        if ((e as { code?: string }).code === UNIQUE_VIOLATION) {
          // Someone else holds this version: re-read the stream's head, as a client handling 2003 would.
          const r = await clients[i]!.query<{ v: string | null }>('SELECT max(version)::text AS v FROM events WHERE stream = $1', [i]);
          versions[i] = Number(r.rows[0]?.v ?? 0);
        }
        throw e;
      }
      versions[i] = next;
    };
    const header =
      `W1 against PostgreSQL 15 at 127.0.0.1:${c.port}: ${o.writers} writers on ${o.writers} connections, one ${PAYLOAD.length}-byte event per ` +
      `INSERT (autocommit), ${o.warmupS}s warm-up + ${o.durationS}s measured`;
    return await runClosedLoop(o, 'postgres', header, append);
  } finally {
    await Promise.allSettled(clients.map((cl) => cl.end()));
  }
}

/**
 * Starts a throw-away cluster, runs W1 against it and always stops and removes it, also on
 * SIGINT/SIGTERM (the signal is re-raised afterwards so the process still ends as it would have).
 */
export async function runPostgresBench(o: LoopOptions & StartOptions): Promise<BenchResult & { clusterDir: string }> {
  checkWriters(o.writers);
  o.out(`postgres: ${POSTGRES_NOTE}`);
  const cluster = await startPostgres(o);
  const onSignal = (sig: NodeJS.Signals): void => {
    cluster.stop(true);
    process.kill(process.pid, sig);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    const r = await runPostgresWorkload(cluster, o);
    return { ...r, clusterDir: cluster.dir };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    cluster.stop();
  }
}
