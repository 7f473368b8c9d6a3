// The `celer` command line: serve, write, read, subscribe, watch, details, delete, trim, schema, verify, bench, cluster status.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Batch, ExpectedVersion } from '@celer/client';
import { CelerError } from '../../client/errors.ts';
import { formatKey, parseKey, toU128 } from '../../client/key.ts';
import { ConfigError } from '../storage/meta.ts';
import { int, parse, UsageError } from './args.ts';
import { parseServeArgs } from './serve-args.ts';

// Commands load what they need on demand, so `celer write` does not pay for the server's imports.
const connect = async (...a: Parameters<typeof import('@celer/client').connect>) => (await import('@celer/client')).connect(...a);
const VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const USAGE = `celer ${VERSION} — a replicated, append-only event store

usage:
  celer serve --standalone --data-dir DIR [--shards N] [--routing org|type|id]
              [--listen HOST:PORT] [--http HOST:PORT] [--grpc HOST:PORT|off]
              [--memory-budget-mb N] [--segment-mb N] [--workers N] [--sync-io] [--unsafe-no-direct-io]
  celer serve --node-id ID --data-dir DIR --listen HOST:PORT [--http HOST:PORT] [--replication HOST:PORT]
              --peers ADDRS --s3-bucket B [--s3-prefix P] [--s3-endpoint URL] [--s3-region R]
              [--lease-ttl-ms N] [--renew-deadline-ms N] [--renew-interval-ms N] [--max-clock-drift-ms N]
              [--advertise HOST] [--cluster-id ID] [--shards N] [--routing org|type|id]
              (a two-node cluster member; S3 credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
               AWS_REGION, AWS_ENDPOINT_URL)
  celer write   [--addr HOST:PORT] KEY --type TYPE (--data TEXT | --data-file FILE)
                [--expected-version any|no_stream|stream_exists|N] [--client-id ID] [--client-seq N]
                [--schema-version MAJOR.MINOR]
  celer read    [--addr HOST:PORT] KEY [--from N] [--to N] [--types A,B]   (one JSON line per batch)
  celer subscribe [--addr HOST:PORT] KEY|ORG|ORG/TYPE [--from VERSION|CHECKPOINT] [--count N]
                (history, then the live tail; one JSON line per batch; an org's batches carry
                 "checkpoint": pass it as --from to resume right after that batch)
  celer watch   [--addr HOST:PORT] KEY|ORG|ORG/TYPE [--max-latency-ms N] [--count N]
                (one JSON line per change after commit, from now on)
  celer details [--addr HOST:PORT] KEY
  celer delete  [--addr HOST:PORT] KEY [--expected-version N] [--allow-recreate] [--client-id ID]
                (a tombstone: reads then get 1001; with --allow-recreate a later write recreates it)
  celer trim    [--addr HOST:PORT] KEY --keep-from VERSION   (versions below VERSION become unreadable: 1000)
  celer schema register [--addr HOST:PORT] --org ORG --type TYPE --event-type E --version MAJOR.MINOR
                --format json|avro|protobuf --file FILE
                (registered schemas are immutable; a new minor must only add; events naming the
                 version are then validated on every write, unless they carry an iv)
  celer schema list [--addr HOST:PORT] --org ORG [--type TYPE]   (one JSON line per schema)
  celer cluster status [--addr HTTP_HOST:PORT[,HTTP_HOST:PORT]] [--json] [--timeout-ms N]
                (both nodes' GET /status; one address finds the peer; default 127.0.0.1:7401)
  celer verify  --data-dir DIR
  celer bench   [--addr HOST:PORT[,HOST:PORT…]] [--transport native|grpc] [--guard none|exact] [--writers N]
                [--duration-s S] [--warmup-s S] [--connections N] [--rounds N]
                [--vs-addr HOST:PORT[,…]]          (alternating rounds against another Celer, e.g. standalone vs cluster)
                [--vs postgres [--pg-standby]]   (alternating rounds against a throw-away local PostgreSQL 15
                                                  [primary + synchronous standby]; medians and the ratio)
                [--subscribers N|N,M… [--slow-subscriber-ms MS] [--subscriber-nice 0..19]]
                                                 (N live subscribers on the bench's org during the run, one of
                                                  them sleeping MS (default 50) per batch, their thread at that
                                                  nice (default 0); prints delivery latency; a list alternates
                                                  rounds of each count)

KEY is org/type/id, each part decimal or a UUID. --addr defaults to 127.0.0.1:7400.
Run "celer COMMAND --help" for the flags of one command.`;

const out = (s: string): void => void process.stdout.write(s + '\n');
const errOut = (s: string): void => void process.stderr.write(s + '\n');

/** stdout was closed by its reader (a pipe into `head`): the streaming commands stop quietly, as Unix tools do. */
let stdoutGone = false;
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code !== 'EPIPE') throw e;
  stdoutGone = true;
});

/**
 * One line of a streaming command (subscribe, watch): waits while stdout's buffer is full, so a
 * slow reader paces the subscription (past its queue it is dropped with 2012, and the message says
 * where to resume) instead of the lines piling up in memory. false once stdout is gone.
 */
async function outPaced(s: string): Promise<boolean> {
  if (stdoutGone) return false;
  if (!process.stdout.write(s + '\n')) {
    await new Promise<void>((resolve) => {
      const done = (): void => {
        process.stdout.off('drain', done).off('error', done).off('close', done);
        resolve();
      };
      process.stdout.on('drain', done).on('error', done).on('close', done);
    });
  }
  return !stdoutGone;
}

async function serve(args: string[]): Promise<number> {
  const options = await parseServeArgs(args);
  const log = (m: string): void => errOut(`celer: ${m}`);
  const { startNode } = await import('../server/node.ts');
  const node = await startNode({ ...options, log });
  out(`listening native ${node.listen.native}`);
  if (node.listen.grpc) out(`listening grpc ${node.listen.grpc}`);
  out(`listening http ${node.listen.http}`);
  out(`ready`);
  await new Promise<void>((res) => {
    const stop = (sig: string): void => {
      log(`${sig}: closing (finishing writes in flight)`);
      res();
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
  });
  await node.close();
  return 0;
}

function parseExpected(v: string | undefined): ExpectedVersion {
  if (v === undefined || v === 'any') return 'any';
  if (v === 'no_stream' || v === 'stream_exists') return v;
  if (/^\d+$/.test(v)) return BigInt(v);
  throw new UsageError(`--expected-version must be any, no_stream, stream_exists or a version number; got "${v}"`);
}

function keyArg(text: string) {
  try {
    return parseKey(text);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

const json = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x));

async function write(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, {
    addr: { type: 'string' },
    type: { type: 'string' },
    data: { type: 'string' },
    'data-file': { type: 'string' },
    'expected-version': { type: 'string' },
    'client-id': { type: 'string' },
    'client-seq': { type: 'string' },
    'schema-version': { type: 'string' },
  }, 1);
  const key = keyArg(positionals[0]!);
  if (!values.type) throw new UsageError('--type TYPE is required');
  if ((values.data === undefined) === (values['data-file'] === undefined)) throw new UsageError('give exactly one of --data TEXT or --data-file FILE');
  const data = values.data !== undefined ? new TextEncoder().encode(values.data) : new Uint8Array(readFileSync(values['data-file']!));
  const sv = values['schema-version'];
  const svm = sv === undefined ? null : /^(\d+)\.(\d+)$/.exec(sv);
  if (sv !== undefined && svm === null) throw new UsageError(`--schema-version must be MAJOR.MINOR (e.g. 1.0); got "${sv}"`);
  const c = await connect(values.addr ?? '127.0.0.1:7400');
  try {
    const r = await c.append(key, [{ type: values.type, data, ...(svm ? { schemaVersion: { major: Number(svm[1]), minor: Number(svm[2]) } } : {}) }], {
      expectedVersion: parseExpected(values['expected-version']),
      ...(values['client-id'] !== undefined ? { clientId: values['client-id'] } : {}),
      ...(values['client-seq'] !== undefined ? { clientSeq: BigInt(values['client-seq']) } : {}),
    });
    out(json(r));
  } finally {
    await c.close();
  }
  return 0;
}

function showBatch(b: Batch): string {
  const td = new TextDecoder('utf-8', { fatal: true });
  const text = (d: Uint8Array): string => {
    try {
      return td.decode(d);
    } catch {
      return 'base64:' + Buffer.from(d).toString('base64');
    }
  };
  return json({ ...b, events: b.events.map((e) => ({ ...e, data: text(e.data), ...(e.metadata ? { metadata: text(e.metadata) } : {}) })) });
}

async function read(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { addr: { type: 'string' }, from: { type: 'string' }, to: { type: 'string' }, types: { type: 'string' } }, 1);
  const key = keyArg(positionals[0]!);
  const c = await connect(values.addr ?? '127.0.0.1:7400');
  try {
    const from = int(values.from, '--from', 0);
    const to = int(values.to, '--to', 0);
    for await (const b of c.readAll(key, {
      ...(from !== undefined ? { from } : {}),
      ...(to !== undefined ? { to } : {}),
      ...(values.types ? { eventTypes: values.types.split(',') } : {}),
    })) {
      out(showBatch(b));
    }
  } finally {
    await c.close();
  }
  return 0;
}

/** KEY (org/type/id) → a key; ORG or ORG/TYPE → an org filter. */
function feedTarget(text: string): { key: ReturnType<typeof parseKey> } | { org: bigint; type?: bigint } {
  const parts = text.split('/');
  if (parts.length === 3) return { key: keyArg(text) };
  if (parts.length > 3 || parts.some((p) => p === '')) throw new UsageError(`"${text}" is neither KEY (org/type/id) nor ORG or ORG/TYPE`);
  try {
    const org = toU128(parts[0]!, 'org');
    return parts.length === 2 ? { org, type: toU128(parts[1]!, 'type') } : { org };
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

async function subscribe(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { addr: { type: 'string' }, from: { type: 'string' }, count: { type: 'string' } }, 1);
  const target = feedTarget(positionals[0]!);
  const count = int(values.count, '--count', 1);
  const c = await connect(values.addr ?? '127.0.0.1:7400');
  let n = 0;
  try {
    if ('key' in target) {
      const from = int(values.from, '--from', 1);
      for await (const b of c.subscribe(target.key, from !== undefined ? { from } : {})) {
        if (!(await outPaced(showBatch(b)))) break;
        if (count !== undefined && ++n >= count) break;
      }
    } else {
      for await (const b of c.subscribe(target, values.from !== undefined ? { from: values.from } : {})) {
        if (!(await outPaced(showBatch(b)))) break;
        if (count !== undefined && ++n >= count) break;
      }
    }
  } finally {
    await c.close();
  }
  return 0;
}

async function watch(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { addr: { type: 'string' }, 'max-latency-ms': { type: 'string' }, count: { type: 'string' } }, 1);
  const target = feedTarget(positionals[0]!);
  const count = int(values.count, '--count', 1);
  const maxLatencyMs = int(values['max-latency-ms'], '--max-latency-ms', 0);
  const c = await connect(values.addr ?? '127.0.0.1:7400');
  let n = 0;
  try {
    for await (const note of c.watch(target, maxLatencyMs !== undefined ? { maxLatencyMs } : {})) {
      if (!(await outPaced(json(note.op === 'heartbeat' ? note : { ...note, key: formatKey(note.key) })))) break;
      if (count !== undefined && ++n >= count) break;
    }
  } finally {
    await c.close();
  }
  return 0;
}

async function details(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { addr: { type: 'string' } }, 1);
  const c = await connect(values.addr ?? '127.0.0.1:7400');
  try {
    out(json(await c.details(keyArg(positionals[0]!))));
  } finally {
    await c.close();
  }
  return 0;
}

async function del(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { addr: { type: 'string' }, 'expected-version': { type: 'string' }, 'allow-recreate': { type: 'boolean' }, 'client-id': { type: 'string' } }, 1);
  const expected = int(values['expected-version'], '--expected-version', 1);
  const c = await connect(values.addr ?? '127.0.0.1:7400');
  try {
    out(
      json(
        await c.delete(keyArg(positionals[0]!), {
          ...(expected !== undefined ? { expectedVersion: expected } : {}),
          allowRecreate: values['allow-recreate'] === true,
          ...(values['client-id'] !== undefined ? { clientId: values['client-id'] } : {}),
        }),
      ),
    );
  } finally {
    await c.close();
  }
  return 0;
}

async function trim(args: string[]): Promise<number> {
  const { values, positionals } = parse(args, { addr: { type: 'string' }, 'keep-from': { type: 'string' } }, 1);
  const keep = int(values['keep-from'], '--keep-from', 1);
  if (keep === undefined) throw new UsageError('trim needs --keep-from VERSION: the first version to keep readable');
  const c = await connect(values.addr ?? '127.0.0.1:7400');
  try {
    out(json(await c.trimStart(keyArg(positionals[0]!), keep)));
  } finally {
    await c.close();
  }
  return 0;
}

function partArg(v: string | undefined, flag: string): bigint {
  if (v === undefined) throw new UsageError(`${flag} is required`);
  try {
    return toU128(v, flag);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

async function schema(args: string[]): Promise<number> {
  const sub = args[0];
  if (sub === 'register') {
    const { values } = parse(args.slice(1), {
      addr: { type: 'string' },
      org: { type: 'string' },
      type: { type: 'string' },
      'event-type': { type: 'string' },
      version: { type: 'string' },
      format: { type: 'string' },
      file: { type: 'string' },
    });
    const org = partArg(values.org, '--org');
    const type = partArg(values.type, '--type');
    const eventType = values['event-type'];
    if (!eventType) throw new UsageError('--event-type E is required');
    const m = /^(\d+)\.(\d+)$/.exec(values.version ?? '');
    if (m === null) throw new UsageError(`--version must be MAJOR.MINOR (e.g. 1.0); got "${values.version ?? ''}"`);
    const format = values.format;
    if (format !== 'json' && format !== 'avro' && format !== 'protobuf') throw new UsageError(`--format must be json, avro or protobuf; got "${format ?? ''}"`);
    if (!values.file) throw new UsageError('--file FILE (the schema text) is required');
    const text = readFileSync(values.file, 'utf8');
    const version = { major: Number(m[1]), minor: Number(m[2]) };
    const c = await connect(values.addr ?? '127.0.0.1:7400');
    try {
      const r = await c.registerSchema({ org, type, eventType, version, format, schema: text });
      out(json({ org, type, eventType, version: `${version.major}.${version.minor}`, format, registered: r.registered }));
    } finally {
      await c.close();
    }
    return 0;
  }
  if (sub === 'list') {
    const { values } = parse(args.slice(1), { addr: { type: 'string' }, org: { type: 'string' }, type: { type: 'string' } });
    const org = partArg(values.org, '--org');
    const type = values.type === undefined ? undefined : partArg(values.type, '--type');
    const c = await connect(values.addr ?? '127.0.0.1:7400');
    try {
      for (const s of await c.listSchemas(type === undefined ? { org } : { org, type })) {
        out(json({ org: s.org, type: s.type, eventType: s.eventType, version: `${s.version.major}.${s.version.minor}`, format: s.format, schema: s.schema }));
      }
    } finally {
      await c.close();
    }
    return 0;
  }
  throw new UsageError(`expected "schema register" or "schema list"; got "schema ${sub ?? ''}"`);
}

async function cluster(args: string[]): Promise<number> {
  if (args[0] !== 'status') throw new UsageError(`expected "cluster status"; got "cluster ${args[0] ?? ''}"`);
  const { values } = parse(args.slice(1), { addr: { type: 'string' }, json: { type: 'boolean' }, 'timeout-ms': { type: 'string' } });
  const { clusterStatus, parseHttpAddrs } = await import('./cluster-status.ts');
  let addrs: string[];
  try {
    addrs = parseHttpAddrs(values.addr ?? '127.0.0.1:7401');
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  return clusterStatus({ addrs, json: values.json === true, timeoutMs: int(values['timeout-ms'], '--timeout-ms', 1), out });
}

async function verify(args: string[]): Promise<number> {
  const { values } = parse(args, { 'data-dir': { type: 'string' } });
  if (!values['data-dir']) throw new UsageError('--data-dir DIR is required');
  const { verifyDataDir } = await import('./verify.ts');
  const report = await verifyDataDir(resolve(values['data-dir']), out);
  out(report.ok ? 'verify: every checksum and chain link holds' : 'verify: FAILED (see the first bad record above)');
  return report.ok ? 0 : 1;
}

async function bench(args: string[]): Promise<number> {
  const { values } = parse(args, {
    addr: { type: 'string' },
    transport: { type: 'string' },
    guard: { type: 'string' },
    writers: { type: 'string' },
    'duration-s': { type: 'string' },
    'warmup-s': { type: 'string' },
    connections: { type: 'string' },
    vs: { type: 'string' },
    'pg-standby': { type: 'boolean' },
    'vs-addr': { type: 'string' },
    rounds: { type: 'string' },
    subscribers: { type: 'string' },
    'slow-subscriber-ms': { type: 'string' },
    'subscriber-nice': { type: 'string' },
  });
  const vsAddresses = values['vs-addr']?.split(',').map((a) => a.trim()).filter((a) => a !== '');
  if (vsAddresses !== undefined && (vsAddresses.length === 0 || values.vs !== undefined || values['pg-standby'])) throw new UsageError('--vs-addr HOST:PORT[,…] (another Celer) cannot be combined with --vs postgres');
  const transport = values.transport ?? 'native';
  if (transport !== 'native' && transport !== 'grpc') throw new UsageError(`--transport must be native or grpc; got "${transport}"`);
  const guard = values.guard ?? 'none';
  if (guard !== 'none' && guard !== 'exact') throw new UsageError(`--guard must be none (W1) or exact (W2); got "${guard}"`);
  if (values.vs !== undefined && values.vs !== 'postgres') throw new UsageError(`--vs accepts only postgres; got "${values.vs}"`);
  const vs = values.vs ?? (values['pg-standby'] ? 'postgres' : undefined);
  const addresses = (values.addr ?? (transport === 'grpc' ? '127.0.0.1:7402' : '127.0.0.1:7400')).split(',').map((a) => a.trim()).filter((a) => a !== '');
  if (addresses.length === 0) throw new UsageError('--addr needs at least one HOST:PORT');
  if (transport === 'grpc' && addresses.length > 1) throw new UsageError('--transport grpc takes one --addr');
  const writers = int(values.writers, '--writers', 1) ?? 64;
  const subs = await import('./bench-subscribers.ts');
  let subscriberCounts: number[];
  try {
    subscriberCounts = values.subscribers === undefined ? [0] : subs.parseSubscriberCounts(values.subscribers);
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
  const slowSubscriberMs = int(values['slow-subscriber-ms'], '--slow-subscriber-ms', 0) ?? subs.SLOW_SUBSCRIBER_MS_DEFAULT;
  if (values['slow-subscriber-ms'] !== undefined && !subscriberCounts.some((n) => n > 0)) throw new UsageError('--slow-subscriber-ms needs --subscribers N with N ≥ 1');
  const subscriberNice = int(values['subscriber-nice'], '--subscriber-nice', 0) ?? 0;
  if (subscriberNice > subs.SUBSCRIBER_NICE_MAX) throw new UsageError(`--subscriber-nice takes 0..${subs.SUBSCRIBER_NICE_MAX}; got ${subscriberNice}`);
  if (values['subscriber-nice'] !== undefined && !subscriberCounts.some((n) => n > 0)) throw new UsageError('--subscriber-nice needs --subscribers N with N ≥ 1');
  if (subscriberCounts.some((n) => n > 0) && transport !== 'native') throw new UsageError('--subscribers needs --transport native (the subscribers use the native protocol)');
  const compareSubscribers = subscriberCounts.length > 1;
  if (compareSubscribers && (vs !== undefined || vsAddresses !== undefined)) throw new UsageError('--subscribers N,M (compare subscriber counts) cannot be combined with --vs or --vs-addr');
  if (vs === 'postgres') {
    // Fail on the peer's preconditions before spending a Celer run.
    const pg = await import('./bench-postgres.ts');
    try {
      pg.checkWriters(writers);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    pg.checkBinaries(undefined, values['pg-standby']);
  }
  const { runBenchCommand } = await import('./bench-rounds.ts');
  await runBenchCommand({
    addresses,
    transport,
    guard,
    writers,
    durationS: int(values['duration-s'], '--duration-s', 1) ?? 10,
    warmupS: int(values['warmup-s'], '--warmup-s', 0) ?? 2,
    connections: int(values.connections, '--connections', 1) ?? 4,
    rounds: int(values.rounds, '--rounds', 1) ?? (vs === undefined && vsAddresses === undefined && !compareSubscribers ? 1 : 3),
    subscribers: subscriberCounts[0]!,
    slowSubscriberMs,
    subscriberNice,
    ...(compareSubscribers ? { subscriberCounts } : {}),
    vs,
    ...(vsAddresses !== undefined ? { vsAddresses } : {}),
    pgStandby: values['pg-standby'] ?? false,
    out,
  });
  return 0;
}

const COMMANDS: Record<string, (args: string[]) => Promise<number>> = { serve, write, read, subscribe, watch, details, delete: del, trim, schema, verify, bench, cluster };

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    out(USAGE);
    return cmd === undefined ? 2 : 0;
  }
  if (cmd === '--version') {
    out(VERSION);
    return 0;
  }
  const run = COMMANDS[cmd];
  if (run === undefined) {
    errOut(`celer: unknown command "${cmd}"\n\n${USAGE}`);
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    out(USAGE);
    return 0;
  }
  try {
    return await run(rest);
  } catch (e) {
    if (e instanceof UsageError) {
      errOut(`celer ${cmd}: ${e.message}\nRun "celer --help" for usage.`);
      return 2;
    }
    if (e instanceof ConfigError) {
      errOut(`celer ${cmd}: ${e.message}`);
      return 1;
    }
    if (e instanceof CelerError) {
      errOut(`celer ${cmd}: error ${e.code}: ${e.message}`);
      return 1;
    }
    errOut(`celer ${cmd}: ${(e as Error).message}`);
    return 1;
  }
}

process.exitCode = await main(process.argv.slice(2));
