// A real two-node Celer cluster for end-to-end tests: the test S3 server (Ceph RGW from
// hack/s3.sh, once per suite file), two `celer serve` cluster members on fixed free ports, and
// the tools the cluster suites share: start / stop / SIGKILL / SIGSTOP / SIGCONT a node, wait for
// roles, /status and /metrics, a write load through connect([a, b]) that records every
// acknowledgement, reading every aggregate back from each node, and `celer verify` of both data
// directories (equal last seq and chain tip per shard). Always call destroy() (and stopS3) in
// `after`: they kill what runs, also paused processes, and remove the directories.
import { after, before } from 'node:test';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { appendFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { connect, type CelerClient, type ClientOptions } from '@celer/client';
import type { NodeStatus } from '../../../dataplane/server/status.ts';
import { CELER, removeDir, ROOT, runCeler, tempDir } from './celer-process.ts';
import { waitUntil } from './wait.ts';

const run = promisify(execFile);
const te = new TextEncoder();
const td = new TextDecoder();
const S3_SH = join(ROOT, 'hack/s3.sh');

/** hack/s3.sh start: a few seconds warm; a cold machine also installs the ceph packages. */
const S3_START_TIMEOUT_MS = 600_000;
/** Longest a node may take to print "ready". */
const NODE_START_TIMEOUT_MS = 60_000;
/** SIGTERM → exit; after that SIGKILL. */
const NODE_STOP_TIMEOUT_MS = 20_000;
/** One /status or /metrics request. */
const HTTP_TIMEOUT_MS = 2_000;

export { now, sleep } from './wait.ts';
import { now, sleep } from './wait.ts';

// ---------------------------------------------------------------------------------------------
// The S3 server

export interface S3Server {
  dir: string;
  env: Record<string, string>;
  /** SIGSTOP / SIGCONT the radosgw (the S3 front end): requests hang, connections still open. */
  freeze(): Promise<void>;
  thaw(): Promise<void>;
  stop(): Promise<void>;
}

/** extraBind: an address RGW also listens on (hack/s3.sh CELER_S3_EXTRA_BIND), e.g. a pod network's bridge. */
export async function startS3(opts: { extraBind?: string } = {}): Promise<S3Server> {
  const dir = await tempDir('celer-cl-s3-');
  let stdout: string;
  try {
    const env = opts.extraBind === undefined ? process.env : { ...process.env, CELER_S3_EXTRA_BIND: opts.extraBind };
    ({ stdout } = await run('bash', [S3_SH, 'start', dir], { timeout: S3_START_TIMEOUT_MS, maxBuffer: 16 << 20, env }));
  } catch (e) {
    const x = e as { stderr?: string; message: string };
    await run('bash', [S3_SH, 'stop', dir], { timeout: 60_000 }).catch(() => {});
    await removeDir(dir);
    throw new Error(`hack/s3.sh start failed (the cluster suites need Ceph RGW; they do not skip): ${x.stderr || x.message}`);
  }
  const env: Record<string, string> = {};
  for (const m of stdout.matchAll(/^export ([A-Z0-9_]+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  for (const k of ['AWS_ENDPOINT_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION', 'CELER_S3_BUCKET']) {
    if (!env[k]) throw new Error(`hack/s3.sh printed no ${k}: ${stdout}`);
  }
  const rgwPid = async (): Promise<number> => Number(await readFile(join(dir, 'run/client.rgw.a.pid'), 'utf8'));
  let frozen = false;
  const server: S3Server = {
    dir,
    env,
    async freeze() {
      process.kill(await rgwPid(), 'SIGSTOP');
      frozen = true;
    },
    async thaw() {
      process.kill(await rgwPid(), 'SIGCONT');
      frozen = false;
    },
    async stop() {
      if (frozen) await server.thaw().catch(() => {});
      await run('bash', [S3_SH, 'stop', dir], { timeout: 60_000 }).catch(() => {});
      await removeDir(dir);
    },
  };
  return server;
}

// ---------------------------------------------------------------------------------------------
// Ports

const reserved = new Set<number>();

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** A base port P with P..P+3 free (native, http, grpc, replication), in 10000-19999. */
async function pickBase(): Promise<number> {
  for (let i = 0; i < 500; i++) {
    const base = 10_000 + 4 * Math.floor(Math.random() * 2_499);
    if ([0, 1, 2, 3].some((d) => reserved.has(base + d))) continue;
    const free = await Promise.all([0, 1, 2, 3].map((d) => portFree(base + d)));
    if (free.every(Boolean)) {
      for (const d of [0, 1, 2, 3]) reserved.add(base + d);
      return base;
    }
  }
  throw new Error('no four consecutive free ports found in 10000-19999');
}

// ---------------------------------------------------------------------------------------------
// The cluster

export interface NodeHandle {
  index: number;
  id: string;
  dataDir: string;
  native: string;
  http: string;
  replication: string;
  proc: ChildProcess | null;
  paused: boolean;
  /** Everything the node printed, all runs, with the test's own markers. */
  log: string;
  /** Resolves when the current process has exited. */
  exited: Promise<void>;
  /** Set when the test sent the signal that ends the current process. */
  expectExit: boolean;
  /** How the last process ended when the test did not end it (another process signalled it, or it crashed). */
  unexpectedExit: string | null;
}

export interface ClusterOptions {
  shards?: number;
  /** Extra `celer serve` flags for both nodes. */
  args?: string[];
  /** Extra flags per node index. */
  nodeArgs?: [string[], string[]];
}

export class Cluster {
  readonly s3: S3Server;
  readonly dir: string;
  readonly prefix: string;
  readonly nodes: NodeHandle[] = [];
  readonly options: ClusterOptions;
  private readonly logFile: string;

  private constructor(s3: S3Server, dir: string, options: ClusterOptions) {
    this.s3 = s3;
    this.dir = dir;
    this.options = options;
    this.prefix = `e2e-${randomUUID()}/`;
    this.logFile = join(dir, 'nodes.log');
  }

  /** Makes the two node handles (ports, data directories); starts nothing. */
  static async create(s3: S3Server, options: ClusterOptions = {}): Promise<Cluster> {
    const dir = await tempDir('celer-cl-');
    const c = new Cluster(s3, dir, options);
    for (const i of [0, 1]) {
      const base = await pickBase();
      c.nodes.push({
        index: i,
        id: `n${i}`,
        dataDir: join(dir, `n${i}`),
        native: `127.0.0.1:${base}`,
        http: `127.0.0.1:${base + 1}`,
        replication: `127.0.0.1:${base + 3}`,
        proc: null,
        paused: false,
        log: '',
        exited: Promise.resolve(),
        expectExit: false,
        unexpectedExit: null,
      });
    }
    return c;
  }

  get addresses(): string[] {
    return this.nodes.map((n) => n.native);
  }

  /** Prefixes a line to the node's log (and the suite's log file), so the logs show what the test did. */
  mark(i: number, text: string): void {
    this.append(this.nodes[i]!, `---- test: ${text} (${new Date().toISOString()})\n`);
  }

  private append(n: NodeHandle, s: string): void {
    n.log += s;
    const lines = s.split('\n');
    if (lines.at(-1) === '') lines.pop();
    try {
      appendFileSync(this.logFile, lines.map((l) => `${n.id} ${l}\n`).join(''));
    } catch {
      // the directory is gone (destroy): the in-memory log is enough
    }
  }

  running(i: number): boolean {
    const p = this.nodes[i]!.proc;
    return p !== null && p.exitCode === null && p.signalCode === null;
  }

  /** Starts node i (its data directory is kept across restarts) and waits for "ready". */
  async start(i: number, extra: string[] = []): Promise<void> {
    const n = this.nodes[i]!;
    if (this.running(i)) throw new Error(`${n.id} is already running`);
    const args = [
      'serve',
      '--node-id', n.id,
      '--data-dir', n.dataDir,
      '--listen', n.native,
      '--peers', this.nodes.map((x) => x.replication).join(','),
      '--s3-bucket', this.s3.env.CELER_S3_BUCKET!,
      '--s3-prefix', this.prefix,
      '--shards', String(this.options.shards ?? 2),
      ...(this.options.args ?? []),
      ...(this.options.nodeArgs?.[i] ?? []),
      ...extra,
    ];
    this.mark(i, `start ${args.slice(1).join(' ')}`);
    const proc = spawn(CELER, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...this.s3.env } });
    n.proc = proc;
    n.paused = false;
    n.expectExit = false;
    n.unexpectedExit = null;
    n.exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    let out = '';
    proc.stderr!.on('data', (d: Buffer) => this.append(n, d.toString()));
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new Error(`${n.id} did not print ready in ${NODE_START_TIMEOUT_MS} ms; log:\n${tail(n.log)}`));
      }, NODE_START_TIMEOUT_MS);
      const onExit = (code: number | null, sig: string | null): void => {
        clearTimeout(timer);
        reject(new Error(`${n.id} exited (${code ?? sig}) before it was ready; log:\n${tail(n.log)}`));
      };
      proc.once('exit', onExit);
      proc.stdout!.on('data', (d: Buffer) => {
        const s = d.toString();
        this.append(n, s);
        out += s;
        if (/^ready$/m.test(out)) {
          clearTimeout(timer);
          proc.off('exit', onExit);
          proc.once('exit', (code, sig) => {
            this.append(n, `---- exited: ${code ?? sig}${n.expectExit ? '' : ' (NOT by the test)'}\n`);
            if (!n.expectExit) n.unexpectedExit = `exit ${code ?? sig}`;
          });
          resolve();
        }
      });
    });
  }

  async startBoth(extra: [string[], string[]] = [[], []]): Promise<void> {
    await Promise.all([this.start(0, extra[0]), this.start(1, extra[1])]);
  }

  /** Sends `signal` (SIGKILL: a crash; SIGTERM: a clean stop) and waits for the exit. */
  async kill(i: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const n = this.nodes[i]!;
    if (!this.running(i)) return;
    this.mark(i, signal);
    n.expectExit = true;
    n.proc!.kill(signal);
    if (n.paused && signal !== 'SIGKILL') n.proc!.kill('SIGCONT');
    n.paused = false;
    if (signal === 'SIGKILL') return n.exited;
    const done = await Promise.race([n.exited.then(() => true), sleep(NODE_STOP_TIMEOUT_MS).then(() => false)]);
    if (!done) {
      this.mark(i, `no exit ${NODE_STOP_TIMEOUT_MS} ms after ${signal}: SIGKILL`);
      n.proc!.kill('SIGKILL');
      await n.exited;
      throw new Error(`${n.id} did not exit within ${NODE_STOP_TIMEOUT_MS} ms of ${signal}`);
    }
  }

  stop(i: number): Promise<void> {
    return this.kill(i, 'SIGTERM');
  }

  /** SIGSTOP: the whole process (every worker thread) freezes; sockets stay open. */
  pause(i: number): void {
    this.mark(i, 'SIGSTOP');
    this.nodes[i]!.proc!.kill('SIGSTOP');
    this.nodes[i]!.paused = true;
  }

  resume(i: number): void {
    this.mark(i, 'SIGCONT');
    this.nodes[i]!.proc!.kill('SIGCONT');
    this.nodes[i]!.paused = false;
  }

  async status(i: number): Promise<NodeStatus> {
    const r = await fetch(`http://${this.nodes[i]!.http}/status`, { signal: AbortSignal.timeout(HTTP_TIMEOUT_MS) });
    if (r.status !== 200) throw new Error(`${this.nodes[i]!.id} /status: HTTP ${r.status}`);
    return (await r.json()) as NodeStatus;
  }

  /** Every sample of /metrics, by its full series name (`name{labels}`). */
  async metrics(i: number): Promise<Map<string, number>> {
    const r = await fetch(`http://${this.nodes[i]!.http}/metrics`, { signal: AbortSignal.timeout(HTTP_TIMEOUT_MS) });
    const text = await r.text();
    const m = new Map<string, number>();
    for (const line of text.split('\n')) {
      if (line === '' || line.startsWith('#')) continue;
      const sp = line.lastIndexOf(' ');
      m.set(line.slice(0, sp), Number(line.slice(sp + 1)));
    }
    return m;
  }

  /** The sum of every series of `name` whose labels include all of `labels` (`kind="put"` …). */
  async metric(i: number, name: string, ...labels: string[]): Promise<number> {
    let sum = 0;
    for (const [k, v] of await this.metrics(i)) {
      const base = k.includes('{') ? k.slice(0, k.indexOf('{')) : k;
      if (base === name && labels.every((l) => k.includes(l))) sum += v;
    }
    return sum;
  }

  async postStepDown(i: number, body: unknown): Promise<{ status: number; body: unknown }> {
    const r = await fetch(`http://${this.nodes[i]!.http}/admin/step-down`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(10_000),
    });
    return { status: r.status, body: await r.json().catch(() => null) };
  }

  /**
   * Waits until the running, unpaused nodes have exactly one leader and every other running
   * node is a ready follower that knows it (and, when `epochAbove` is given, the leader's epoch
   * exceeds it). Returns the leader's and the follower's index (follower -1 when only one runs).
   */
  async waitForRoles(timeoutMs = 30_000, opts: { epochAbove?: number; leader?: number } = {}): Promise<{ leader: number; follower: number; epoch: number }> {
    return this.waitFor(
      `one leader${opts.leader !== undefined ? ` (n${opts.leader})` : ''} and a follower${opts.epochAbove !== undefined ? ` with epoch > ${opts.epochAbove}` : ''}`,
      async () => {
        const live = [0, 1].filter((i) => this.running(i) && !this.nodes[i]!.paused);
        const st = await Promise.all(live.map((i) => this.status(i)));
        const leaders = live.filter((_, k) => st[k]!.role === 'leader' && st[k]!.ready);
        if (leaders.length !== 1) return null;
        const leader = leaders[0]!;
        const ls = st[live.indexOf(leader)]!;
        if (opts.leader !== undefined && leader !== opts.leader) return null;
        if (opts.epochAbove !== undefined && ls.epoch <= opts.epochAbove) return null;
        const others = live.filter((i) => i !== leader);
        for (const o of others) {
          const s = st[live.indexOf(o)]!;
          if (s.role !== 'follower' || !s.ready || s.epoch !== ls.epoch) return null;
        }
        return { leader, follower: others[0] ?? -1, epoch: ls.epoch };
      },
      timeoutMs,
    );
  }

  /**
   * Polls node i's /status until `done` holds and returns its role changes with their times (ms
   * since the call), e.g. "0 boot, 1630 catching-up, 12980 follower".
   */
  async roleTimeline(i: number, done: (s: NodeStatus) => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<string> {
    const t0 = now();
    const seen: string[] = [];
    let last = '';
    await this.waitFor(`${this.nodes[i]!.id} to settle (roles so far: ${seen.join(', ')})`, async () => {
      const s = await this.status(i).catch(() => null);
      const role = s === null ? 'no answer' : `${s.role}${s.ready ? '' : ' (not ready)'}`;
      if (role !== last) seen.push(`${(now() - t0).toFixed(0)} ms ${role}`);
      last = role;
      return s !== null && (await done(s));
    }, timeoutMs);
    return seen.join(', ');
  }

  /** Waits until node i reports role `role` (any readiness). */
  async waitForRole(i: number, role: NodeStatus['role'], timeoutMs = 30_000): Promise<NodeStatus> {
    return this.waitFor(`${this.nodes[i]!.id} role ${role}`, async () => {
      const s = await this.status(i);
      return s.role === role ? s : null;
    }, timeoutMs);
  }

  /**
   * Waits until both nodes run, every shard has equal placed, durable and committed seqs on both
   * and the leader sees no lag. Returns the per-shard committed seqs.
   */
  async waitConverged(timeoutMs = 30_000): Promise<string[]> {
    let last = '';
    return this.waitFor(
      'both nodes at equal placed/durable/committed seqs on every shard',
      async () => {
        const [a, b] = await Promise.all([this.status(0), this.status(1)]);
        const key = (s: NodeStatus): string => s.shards.map((x) => `${x.placedSeq}/${x.durableSeq}/${x.committedSeq}`).join(' ');
        last = `n0 ${a.role} ${key(a)} | n1 ${b.role} ${key(b)}`;
        if (key(a) !== key(b)) return null;
        if (a.shards.some((x) => x.placedSeq !== x.committedSeq || x.durableSeq !== x.committedSeq)) return null;
        const leader = a.role === 'leader' ? a : b.role === 'leader' ? b : null;
        if (leader === null || (leader.peer?.lagRecords ?? 0) !== 0) return null;
        return a.shards.map((x) => x.committedSeq!);
      },
      timeoutMs,
    ).catch((e: Error) => {
      throw new Error(`${e.message}; last: ${last}`);
    });
  }

  /** Both nodes' /status in one line each (for failure messages and the printed output). */
  async describe(): Promise<string> {
    const lines: string[] = [];
    for (const i of [0, 1]) {
      const n = this.nodes[i]!;
      if (!this.running(i)) {
        lines.push(`${n.id}: not running`);
        continue;
      }
      if (n.paused) {
        lines.push(`${n.id}: paused`);
        continue;
      }
      try {
        const s = await this.status(i);
        lines.push(
          `${n.id}: role ${s.role} epoch ${s.epoch} ready ${s.ready} leader ${s.leader} lease ${s.leaseRemainingMs} peer ${JSON.stringify(s.peer)} s3Fallback ${JSON.stringify(s.s3Fallback)} shards ${s.shards.map((x) => `${x.state}:${x.placedSeq}/${x.durableSeq}/${x.committedSeq}`).join(' ')}`,
        );
      } catch (e) {
        lines.push(`${n.id}: /status failed: ${(e as Error).message}`);
      }
    }
    return lines.join('\n');
  }

  /**
   * What in a node's log means the cluster cannot recover by itself, or null: the node exited
   * without the test ending it, or it leads (by its log) while one of its shards has stopped taking
   * writes (and no truncation has lifted that since) for more than 2 s. Waits fail at once on it
   * instead of running into their timeout.
   */
  fatalLine(): string | null {
    for (const n of this.nodes) {
      if (n.unexpectedExit !== null) return `${n.id} exited by itself or by a signal the test did not send (${n.unexpectedExit})`;
      let leading = false;
      const stopped = new Map<string, string>();
      for (const line of n.log.split('\n')) {
        if (line.startsWith('---- test: start')) {
          leading = false;
          stopped.clear();
        }
        if (/cluster: (won the lease|leader with epoch)/.test(line)) leading = true;
        if (/cluster: (leaving the leader role|lost the race|stepping down|handed)/.test(line) || /SIGTERM: closing/.test(line)) leading = false;
        const stop = /shard (\d+) takes no more writes/.exec(line);
        if (stop) stopped.set(stop[1]!, line);
        const cut = /shard (\d+): truncated after/.exec(line);
        if (cut) stopped.delete(cut[1]!);
      }
      const key = `${n.id}`;
      if (leading && stopped.size > 0) {
        const since = this.wedgedSince.get(key) ?? now();
        this.wedgedSince.set(key, since);
        if (now() - since > 2_000) return `${n.id} leads while a shard takes no writes: ${[...stopped.values()].join(' | ')}`;
      } else {
        this.wedgedSince.delete(key);
      }
    }
    return null;
  }
  private readonly wedgedSince = new Map<string, number>();

  /** waitUntil, failing at once when fatalLine() finds something. */
  async waitFor<T>(what: string, probe: () => T | Promise<T>, timeoutMs = 30_000): Promise<NonNullable<T>> {
    let fatal: string | null = null;
    try {
      return await waitUntil(what, async () => {
        fatal = this.fatalLine();
        if (fatal !== null) return { fatal } as unknown as NonNullable<T>;
        return probe();
      }, timeoutMs).then((v) => {
        if (fatal !== null) throw new Error(`while waiting for ${what}: ${fatal}`);
        return v;
      });
    } catch (e) {
      throw new Error(`${(e as Error).message}\n${await this.describe()}`);
    }
  }

  /** The last lines of both nodes' logs. */
  logs(lines = 60): string {
    return this.nodes.map((n) => `===== ${n.id} (last ${lines} lines)\n${tail(n.log, lines)}`).join('\n');
  }

  /** A client that talks to node i only (reads there; a follower serves committed data). */
  async clientOf(i: number, options: ClientOptions = {}): Promise<CelerClient> {
    return connect(this.nodes[i]!.native, { failoverTimeoutMs: 0, ...options });
  }

  /** A client given both addresses: it follows the leader. */
  async client(options: ClientOptions = {}): Promise<CelerClient> {
    return connect(this.addresses, options);
  }

  /**
   * Stops both nodes (SIGTERM), runs `celer verify` on each data directory and checks that both
   * pass and have the same record count, last seq and chain tip on every shard. Returns the
   * per-shard "last seq X, chain tip Y" lines of n0.
   */
  async stopAndVerify(): Promise<string[]> {
    await Promise.all([this.stop(0), this.stop(1)]);
    const reports = await Promise.all(this.nodes.map((n) => runCeler(['verify', '--data-dir', n.dataDir])));
    const summary = reports.map((r, i) => {
      if (r.code !== 0) throw new Error(`celer verify of ${this.nodes[i]!.id} failed (${r.code}): ${r.stdout}${r.stderr}`);
      return [...r.stdout.matchAll(/^shard (\d+): ok\s+\d+ segments, (\d+) records, last seq (\d+), chain tip ([0-9a-f]+)/gm)].map((m) => `shard ${m[1]}: ${m[2]} records, last seq ${m[3]}, chain tip ${m[4]}`);
    });
    if (summary[0]!.length === 0) throw new Error(`celer verify printed no shard lines: ${reports[0]!.stdout}`);
    if (summary[0]!.join('\n') !== summary[1]!.join('\n')) {
      throw new Error(`the nodes' logs differ:\nn0:\n${summary[0]!.join('\n')}\nn1:\n${summary[1]!.join('\n')}`);
    }
    return summary[0]!;
  }

  /** Kills whatever runs (paused ones too) and removes the directories. The S3 server stays. */
  async destroy(): Promise<void> {
    for (const i of [0, 1]) {
      const n = this.nodes[i]!;
      if (!this.running(i)) continue;
      n.expectExit = true;
      n.proc!.kill('SIGKILL');
      if (n.paused) n.proc!.kill('SIGCONT');
      await Promise.race([n.exited, sleep(10_000)]);
    }
    if (process.env.CELER_E2E_KEEP) console.log(`kept ${this.dir}`);
    else await removeDir(this.dir);
  }
}

function tail(s: string, lines = 40): string {
  return s.split('\n').slice(-lines).join('\n');
}

/** Runs `fn`; on failure prints both nodes' status and log tails before rethrowing. */
export async function withLogs<T>(c: Cluster, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    console.log(`---- failure: ${(e as Error).message}\n${await c.describe()}\n${c.logs()}`);
    throw e;
  }
}

export * from './cluster-load.ts';

export { te, td };

/**
 * The usual suite setup: one RGW and one (not yet started) cluster for the file, torn down after
 * it whatever happened. `suite.c` / `suite.s3` are valid inside tests.
 */
export function clusterSuite(options: ClusterOptions = {}): { readonly c: Cluster; readonly s3: S3Server } {
  let s3: S3Server | undefined;
  let c: Cluster | undefined;
  before(async () => {
    s3 = await startS3();
    c = await Cluster.create(s3, options);
  });
  after(async () => {
    await c?.destroy();
    await s3?.stop();
  });
  return {
    get c(): Cluster {
      if (c === undefined) throw new Error('the cluster suite did not start');
      return c;
    },
    get s3(): S3Server {
      if (s3 === undefined) throw new Error('the cluster suite did not start');
      return s3;
    },
  };
}
