// The PostgreSQL peer of `celer bench --vs postgres`: the same closed-loop workload against a
// throw-away PostgreSQL 15 on this machine, either one durable server (fsync=on,
// synchronous_commit=on, full_page_writes=on, every commit flushed before it returns; the peer of
// Celer standalone) or, with `standby`, a primary plus a synchronous streaming standby
// (synchronous_standby_names = FIRST 1, so every commit also waits for the standby's flush; the
// peer of a replicated Celer). Each writer owns one stream and one connection and appends in its
// own transaction with an INSERT at its last version + 1 into a table keyed by (stream, version), so
// a unique violation (SQLSTATE 23505) plays the part of Celer's 2003 wrong-expected-version.
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
/** The standby's name in the primary's synchronous_standby_names and its primary_conninfo. */
export const STANDBY_APPLICATION_NAME = 'celer_bench_standby';
/** How long the harness waits for pg_stat_replication to report the standby as sync. */
export const SYNC_WAIT_MS = 30_000;
const SYNC_POLL_MS = 100;
/** Ports are picked here, below Linux's default ephemeral range (32768–60999), so outgoing sockets cannot take them. */
const PORT_MIN = 20_000;
const PORT_MAX = 32_767;
/** Port candidates tried before giving up. */
const PORT_ATTEMPTS = 50;
/** Connections opened at once while the writers connect. */
const CONNECT_PARALLELISM = 32;
/** Bounds on the server's start and stop (pg_ctl -w waits up to this long) and on pg_basebackup. */
const PG_CTL_TIMEOUT_S = 60;
const SPAWN_TIMEOUT_MS = (PG_CTL_TIMEOUT_S + 30) * 1000;
const LOG_TAIL_LINES = 15;

/** The settings the benchmark relies on, written explicitly so a changed default cannot alter them. */
export const POSTGRES_DURABILITY = { fsync: 'on', synchronous_commit: 'on', full_page_writes: 'on' } as const;

export function postgresNote(standby: boolean): string {
  const durable = 'fsync=on, synchronous_commit=on, full_page_writes=on';
  return standby
    ? `PostgreSQL 15 primary + synchronous streaming standby on this machine (${durable}, synchronous_standby_names = 'FIRST 1 (${STANDBY_APPLICATION_NAME})'; ` +
        'each commit returns once it is flushed on the primary and on the standby), the peer of a replicated Celer'
    : `PostgreSQL 15 as a single durable server (${durable}; each commit is flushed to disk before it returns), like Celer standalone; ` +
        'with a synchronous standby (--pg-standby), as a replicated Celer would be compared against, every commit would also wait for the standby';
}

export class PostgresUnavailableError extends Error {}

export interface PostgresCluster {
  /** The temp directory holding the data directories, the unix sockets and the server logs. */
  dir: string;
  host: string;
  /** The primary's port (the only server without a standby). */
  port: number;
  /** Set when started with a synchronous standby. */
  standby?: { port: number; applicationName: string };
  /** Data directories of the servers started so far, primary first; each postmaster.pid names a postmaster. */
  dataDirs: string[];
  /**
   * Stops the servers (standby first; fast shutdown, or immediate when `immediate`) and removes
   * `dir`. Idempotent, synchronous so signal handlers can use it.
   */
  stop(immediate?: boolean): void;
}

export interface StartOptions {
  binDir?: string;
  out?: (line: string) => void;
  /** Also start a synchronous streaming standby and wait until the primary reports it sync. */
  standby?: boolean;
  /** Bound on that wait (default SYNC_WAIT_MS). */
  syncWaitMs?: number;
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

const logTail = (log: string): string => (existsSync(log) ? readFileSync(log, 'utf8').split('\n').slice(-LOG_TAIL_LINES).join('\n') : '');
const conf = (settings: Record<string, string | number>): string =>
  `\n# celer bench --vs postgres\n${Object.entries(settings).map(([k, v]) => `${k} = ${v}`).join('\n')}\n`;

/**
 * initdb + start a throw-away primary on 127.0.0.1 at a free port and, with `standby`, a
 * synchronous streaming standby (pg_basebackup -R). The caller must call stop(); a SIGINT or
 * SIGTERM before that stops the servers and is then re-raised.
 */
export async function startPostgres(o: StartOptions = {}): Promise<PostgresCluster> {
  const bin = o.binDir ?? POSTGRES_BIN_DIR;
  checkBinaries(bin, o.standby);
  const say = o.out ?? ((): void => {});
  const asPostgres = process.getuid?.() === 0;
  const dir = mkdtempSync(join(tmpdir(), 'celer-bench-pg-'));
  const primary = join(dir, 'primary');
  let stopped = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    cluster.stop(true);
    process.kill(process.pid, sig);
  };
  const cluster: PostgresCluster = {
    dir,
    host: '127.0.0.1',
    port: 0,
    dataDirs: [],
    stop(immediate = false) {
      if (stopped) return;
      stopped = true;
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      // The standby first, so the primary's shutdown does not wait on a walsender.
      for (const data of [...cluster.dataDirs].reverse()) {
        const pid = postmasterPid(data);
        const r = run(join(bin, 'pg_ctl'), ['-D', data, '-m', immediate ? 'immediate' : 'fast', '-t', String(PG_CTL_TIMEOUT_S), '-w', 'stop'], asPostgres);
        if (!r.ok && pid !== undefined) signal(pid, 'SIGQUIT');
        // pg_ctl returns once postmaster.pid is gone, a moment before the postmaster has exited.
        if (pid !== undefined) waitForExit(pid);
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const startServer = (data: string, role: string): void => {
    const log = join(dir, `${role}.log`);
    cluster.dataDirs.push(data); // from here on a half-started postmaster may exist; stop() handles both
    const start = run(join(bin, 'pg_ctl'), ['-D', data, '-l', log, '-t', String(PG_CTL_TIMEOUT_S), '-w', 'start'], asPostgres);
    if (!start.ok) throw new Error(`PostgreSQL ${role} did not start: ${start.output}\n${logTail(log)}`);
  };
  try {
    if (asPostgres) {
      const { uid, gid } = postgresIds();
      chownSync(dir, uid, gid);
    }
    say(`postgres: initdb ${primary}`);
    const init = run(join(bin, 'initdb'), ['-D', primary, '-U', 'postgres', '--auth=trust', '-E', 'UTF8', '--no-locale', '--no-sync'], asPostgres);
    if (!init.ok) throw new Error(`initdb failed: ${init.output}`);
    cluster.port = await freePort();
    const settings: Record<string, string | number> = {
      listen_addresses: "'127.0.0.1'",
      port: cluster.port,
      unix_socket_directories: `'${dir}'`,
      max_connections: POSTGRES_MAX_CONNECTIONS,
      ...POSTGRES_DURABILITY,
    };
    if (o.standby) {
      Object.assign(settings, { wal_level: 'replica', max_wal_senders: 4, synchronous_standby_names: `'FIRST 1 (${STANDBY_APPLICATION_NAME})'` });
      appendFileSync(join(primary, 'pg_hba.conf'), '\nhost replication postgres 127.0.0.1/32 trust\n');
    }
    appendFileSync(join(primary, 'postgresql.conf'), conf(settings));
    startServer(primary, 'primary');
    say(`postgres: primary started on 127.0.0.1:${cluster.port}`);
    if (o.standby) await startStandby(o, cluster, bin, asPostgres, startServer, say);
    else say(`postgres: PostgreSQL 15 cluster in ${dir}, listening on 127.0.0.1:${cluster.port}`);
    return cluster;
  } catch (e) {
    cluster.stop(true);
    throw e;
  }
}

async function startStandby(
  o: StartOptions,
  cluster: PostgresCluster,
  bin: string,
  asPostgres: boolean,
  startServer: (data: string, role: string) => void,
  say: (line: string) => void,
): Promise<void> {
  const standby = join(cluster.dir, 'standby');
  say(`postgres: pg_basebackup of the primary into ${standby}`);
  // -R writes standby.signal and a primary_conninfo into postgresql.auto.conf.
  const backup = run(join(bin, 'pg_basebackup'), ['-h', cluster.host, '-p', String(cluster.port), '-U', 'postgres', '-D', standby, '-R', '-X', 'stream', '-c', 'fast', '--no-sync'], asPostgres);
  if (!backup.ok) throw new Error(`pg_basebackup failed: ${backup.output}`);
  const port = await freePort();
  appendFileSync(join(standby, 'postgresql.conf'), conf({ port }));
  // postgresql.auto.conf overrides postgresql.conf, and pg_basebackup's primary_conninfo there has no
  // application_name: the standby would connect as "walreceiver", match no synchronous_standby_names
  // entry and stay async. So the full conninfo goes into postgresql.auto.conf, after -R's line.
  appendFileSync(
    join(standby, 'postgresql.auto.conf'),
    `primary_conninfo = 'host=${cluster.host} port=${cluster.port} user=postgres application_name=${STANDBY_APPLICATION_NAME}'\n`,
  );
  cluster.standby = { port, applicationName: STANDBY_APPLICATION_NAME };
  startServer(standby, 'standby');
  const waitMs = o.syncWaitMs ?? SYNC_WAIT_MS;
  say(`postgres: standby started on 127.0.0.1:${port}; waiting up to ${waitMs / 1000}s for pg_stat_replication to report it sync`);
  const t0 = performance.now();
  await waitForSync(cluster, waitMs, join(cluster.dir, 'standby.log'));
  say(`postgres: standby ${STANDBY_APPLICATION_NAME} is synchronous (sync_state = sync) after ${((performance.now() - t0) / 1000).toFixed(1)}s`);
}

export interface ReplicationRow {
  application_name: string;
  state: string;
  sync_state: string;
}

export async function replicationState(c: PostgresCluster): Promise<ReplicationRow[]> {
  const admin = await connectPostgres(c);
  try {
    return (await admin.query<ReplicationRow>('SELECT application_name, state, sync_state FROM pg_stat_replication ORDER BY application_name')).rows;
  } finally {
    await admin.end();
  }
}

/** Polls the primary's pg_stat_replication until the standby shows sync_state = 'sync', at most `waitMs`. */
async function waitForSync(c: PostgresCluster, waitMs: number, standbyLog: string): Promise<void> {
  const deadline = performance.now() + waitMs;
  let rows: ReplicationRow[] = [];
  for (;;) {
    rows = await replicationState(c);
    if (rows.some((r) => r.application_name === STANDBY_APPLICATION_NAME && r.sync_state === 'sync')) return;
    if (performance.now() >= deadline) break;
    await new Promise((r) => setTimeout(r, SYNC_POLL_MS));
  }
  const seen = rows.length === 0 ? 'no standby connected' : rows.map((r) => `application_name=${r.application_name} state=${r.state} sync_state=${r.sync_state}`).join('; ');
  throw new Error(
    `the PostgreSQL standby did not become synchronous within ${waitMs / 1000}s: pg_stat_replication on the primary shows ${seen} ` +
      `(expected application_name=${STANDBY_APPLICATION_NAME} with sync_state=sync). Standby log:\n${logTail(standbyLog)}`,
  );
}

/** Throws PostgresUnavailableError, naming the Debian package, when the server binaries are absent. */
export function checkBinaries(bin: string = POSTGRES_BIN_DIR, standby = false): void {
  for (const b of ['initdb', 'pg_ctl', 'postgres', ...(standby ? ['pg_basebackup'] : [])]) {
    if (!existsSync(join(bin, b))) {
      throw new PostgresUnavailableError(`PostgreSQL 15 not found (${join(bin, b)} is missing); install the Debian package \`postgresql\` (apt-get install -y postgresql)`);
    }
  }
}

function postmasterPid(data: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(data, 'postmaster.pid'), 'utf8').split('\n')[0]);
    return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined; // no pid file: nothing is running
  }
}

/** Last resort when pg_ctl cannot stop the server: SIGQUIT (immediate shutdown) to the postmaster. */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // no such process
  }
}

/** The state letter of /proc/PID/stat (Z = exited, not yet reaped), or undefined when the process is gone. */
export function processState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
  } catch {
    return undefined;
  }
}

/** Blocks (stop() is synchronous) until `pid` has exited, at most PG_CTL_TIMEOUT_S. */
function waitForExit(pid: number): void {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + PG_CTL_TIMEOUT_S * 1000;
  for (;;) {
    const state = processState(pid);
    if (state === undefined || state === 'Z' || Date.now() >= deadline) return;
    Atomics.wait(pause, 0, 0, 10);
  }
}

/** A connection to the primary, or to the server at `port` (the standby's, for reads there). */
export async function connectPostgres(c: PostgresCluster, port: number = c.port): Promise<Client> {
  const { default: pg } = await import('pg');
  const client = new pg.Client({ host: c.host, port, user: 'postgres', database: 'postgres' });
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

/**
 * The workload against a running cluster: (re)creates an empty `events`, then N writers on N
 * connections, each appending to its own stream, one autocommit INSERT (one transaction) per write.
 */
export async function runPostgresWorkload(c: PostgresCluster, o: LoopOptions): Promise<BenchResult> {
  checkWriters(o.writers);
  const admin = await connectPostgres(c);
  try {
    // Every round starts from an empty table, as every Celer round starts on fresh aggregates.
    await admin.query('DROP TABLE IF EXISTS events');
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
    const where = c.standby ? `primary 127.0.0.1:${c.port} + synchronous standby 127.0.0.1:${c.standby.port}` : `127.0.0.1:${c.port}`;
    const header =
      `PostgreSQL 15 at ${where}: ${o.writers} writers on ${o.writers} connections, one ${PAYLOAD.length}-byte event per ` +
      `INSERT at the stream's next version (autocommit), ${o.warmupS}s warm-up + ${o.durationS}s measured`;
    return await runClosedLoop(o, 'postgres', header, append, (e) => (e as { code?: string }).code === UNIQUE_VIOLATION);
  } finally {
    await Promise.allSettled(clients.map((cl) => cl.end()));
  }
}
