// S3ObjectStore (dataplane/cluster/s3-store.ts) against a real S3 server: Ceph RGW 16 started by
// hack/s3.sh in a temp directory. Conditional creates and replacements (also racing), paging,
// delete, prefixes, the observer, and the failure mapping: a black-hole server and a frozen
// (SIGSTOPped) radosgw must give ObjectStoreError('timeout') within the deadline, a refused
// connection 'error', and a scripted server's 503/409/404 answers 'throttled'/'error'/lost race.
// If the server cannot start, the suite fails: it never skips.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ObjectStoreError, type S3RequestKind, type S3RequestResult } from '../../dataplane/cluster/object-store.ts';
import { S3ObjectStore, type S3ObjectStoreOptions } from '../../dataplane/cluster/s3-store.ts';
import { removeDir, ROOT, tempDir } from './lib/celer-process.ts';

const run = promisify(execFile);
const te = new TextEncoder();
const td = new TextDecoder();
const S3_SH = join(ROOT, 'hack/s3.sh');

/** hack/s3.sh start: a few seconds warm; a cold machine also installs the ceph packages. */
const START_TIMEOUT_MS = 600_000;
/** Requests against the real server: generous, a loaded 2-core machine runs other suites too. */
const REQUEST_TIMEOUT_MS = 10_000;
/** Deadline of the timeout cases, and how much later than it the error may arrive. */
const SHORT_TIMEOUT_MS = 300;
const TIMEOUT_SLACK_MS = 1500;
const RACERS = 20;
/** More than one default ListObjectsV2 page (1000 keys). */
const MANY_KEYS = 1050;
const PUT_CONCURRENCY = 32;

let dir = '';
const env: Record<string, string> = {};
/** Each run writes under its own prefix, so a reused server does not see older runs' keys. */
const RUN = `e2e-${randomUUID()}/`;
const stores: S3ObjectStore[] = [];

function store(options: Partial<S3ObjectStoreOptions> = {}): S3ObjectStore {
  const s = new S3ObjectStore({ bucket: env.CELER_S3_BUCKET!, prefix: RUN, requestTimeoutMs: REQUEST_TIMEOUT_MS, ...options });
  stores.push(s);
  return s;
}

before(async () => {
  dir = await tempDir('celer-s3-e2e-');
  let stdout: string;
  try {
    ({ stdout } = await run('bash', [S3_SH, 'start', dir], { timeout: START_TIMEOUT_MS, maxBuffer: 16 << 20 }));
  } catch (e) {
    const x = e as { stderr?: string; message: string };
    throw new Error(`hack/s3.sh start failed (this suite needs Ceph RGW; it does not skip): ${x.stderr || x.message}`);
  }
  for (const m of stdout.matchAll(/^export ([A-Z0-9_]+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  for (const k of ['AWS_ENDPOINT_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_REGION', 'CELER_S3_BUCKET']) {
    assert.ok(env[k], `hack/s3.sh printed no ${k}: ${stdout}`);
  }
  // What a cluster node gets: the standard AWS environment; the store takes its endpoint from it.
  Object.assign(process.env, env);
});

after(async () => {
  for (const s of stores) s.destroy();
  if (dir) {
    await run('bash', [S3_SH, 'stop', dir], { timeout: 60_000 });
    await removeDir(dir);
  }
});

test('hack/s3.sh start on a running DIR prints the same exports without a restart', async () => {
  const pid = await readFile(join(dir, 'run/client.rgw.a.pid'), 'utf8');
  const { stdout } = await run('bash', [S3_SH, 'start', dir], { timeout: 60_000 });
  const again: Record<string, string> = {};
  for (const m of stdout.matchAll(/^export ([A-Z0-9_]+)=(.*)$/gm)) again[m[1]!] = m[2]!;
  assert.deepEqual(again, env);
  assert.equal(stdout.trim().split('\n').length, 5, `only the export lines on stdout: ${stdout}`);
  assert.equal(await readFile(join(dir, 'run/client.rgw.a.pid'), 'utf8'), pid, 'radosgw was restarted');
});

test('putIfAbsent creates a new key and refuses an existing one', async () => {
  const s = store();
  const created = await s.putIfAbsent('absent/a', te.encode('one'));
  assert.ok(created.ok);
  assert.doesNotMatch(created.etag, /"/, 'ETags come back unquoted');
  const got = await s.get('absent/a');
  assert.ok(got);
  assert.equal(td.decode(got.body), 'one');
  assert.equal(got.etag, created.etag);

  assert.deepEqual(await s.putIfAbsent('absent/a', te.encode('two')), { ok: false, reason: 'exists' });
  assert.equal(td.decode((await s.get('absent/a'))!.body), 'one', 'the refused write changed nothing');
  assert.equal(await s.get('absent/never-written'), null);
});

test('putIfMatch replaces only on the current ETag; stale, wrong and missing-key are lost races', async () => {
  const s = store();
  const v1 = await s.putIfAbsent('match/a', te.encode('v1'));
  assert.ok(v1.ok);
  const v2 = await s.putIfMatch('match/a', te.encode('v2'), v1.etag);
  assert.ok(v2.ok, 'current ETag');
  assert.notEqual(v2.etag, v1.etag);
  assert.equal(td.decode((await s.get('match/a'))!.body), 'v2');

  assert.deepEqual(await s.putIfMatch('match/a', te.encode('stale'), v1.etag), { ok: false, reason: 'precondition' });
  assert.deepEqual(await s.putIfMatch('match/a', te.encode('wrong'), '0123456789abcdef0123456789abcdef'), { ok: false, reason: 'precondition' });
  assert.deepEqual(await s.putIfMatch('match/missing', te.encode('x'), v1.etag), { ok: false, reason: 'precondition' });
  assert.equal(await s.get('match/missing'), null, 'If-Match on a missing key created nothing');
  const now = await s.get('match/a');
  assert.equal(td.decode(now!.body), 'v2');
  assert.equal(now!.etag, v2.etag);

  // An ETag as S3 prints it (quoted) is accepted too: the store strips the quotes RGW 16 rejects.
  const v3 = await s.putIfMatch('match/a', te.encode('v3'), `"${v2.etag}"`);
  assert.ok(v3.ok, 'quoted current ETag');
});

test(`${RACERS} racing putIfAbsent: exactly one creates the key`, async () => {
  const s = store();
  const results = await Promise.all(Array.from({ length: RACERS }, (_, i) => s.putIfAbsent('race/create', te.encode(`racer ${i}`))));
  const winners = results.flatMap((r, i) => (r.ok ? [i] : []));
  assert.equal(winners.length, 1, `winners: ${winners.join(', ')}`);
  for (const r of results) if (!r.ok) assert.equal(r.reason, 'exists');
  const got = await s.get('race/create');
  assert.equal(td.decode(got!.body), `racer ${winners[0]}`);
  assert.equal(got!.etag, (results[winners[0]!] as { etag: string }).etag);
});

test(`${RACERS} racing putIfMatch on one ETag: exactly one replaces`, async () => {
  const s = store();
  const base = await s.putIfAbsent('race/renew', te.encode('epoch 0'));
  assert.ok(base.ok);
  // Distinct bodies: RGW's ETag is the MD5 of the body, so equal bodies would have equal ETags.
  const settled = await Promise.allSettled(Array.from({ length: RACERS }, (_, i) => s.putIfMatch('race/renew', te.encode(`epoch 1 by ${i}`), base.etag)));
  const winners = settled.flatMap((r, i) => (r.status === 'fulfilled' && r.value.ok ? [i] : []));
  assert.equal(winners.length, 1, `winners: ${winners.join(', ')}`);
  // A loser gets 412, or, when it passed RGW's ETag check together with the winner and lost at
  // the RADOS layer, 500 (ECANCELED): an unknown outcome to the store, so an ObjectStoreError.
  for (const r of settled) {
    if (r.status === 'fulfilled') {
      if (!r.value.ok) assert.equal(r.value.reason, 'precondition');
    } else {
      assert.ok(r.reason instanceof ObjectStoreError && r.reason.result === 'error' && /HTTP 500/.test(r.reason.message), String(r.reason));
    }
  }
  // Whatever the losers were told, none of them landed.
  const got = await s.get('race/renew');
  assert.equal(td.decode(got!.body), `epoch 1 by ${winners[0]}`);
  assert.equal(got!.etag, (settled[winners[0]!] as PromiseFulfilledResult<{ etag: string }>).value.etag);
});

test(`list returns every key across pages (${MANY_KEYS} keys), sorted, without the store prefix`, async () => {
  const calls: S3RequestKind[] = [];
  const s = store({ observe: (kind) => calls.push(kind) });
  const keys = Array.from({ length: MANY_KEYS }, (_, i) => `many/k${String(i).padStart(5, '0')}`);
  for (let i = 0; i < keys.length; i += PUT_CONCURRENCY) {
    const results = await Promise.all(keys.slice(i, i + PUT_CONCURRENCY).map((k) => s.putIfAbsent(k, te.encode(k))));
    for (const r of results) assert.ok(r.ok);
  }
  await s.putIfAbsent('manyother/x', te.encode('not under many/'));

  calls.length = 0;
  const listed = await s.list('many/');
  assert.deepEqual(listed.map((o) => o.key), keys);
  assert.ok(listed.every((o, i) => o.size === keys[i]!.length));
  assert.equal(calls.filter((k) => k === 'list').length, 2, 'two pages of at most 1000');

  const small = store({ listPageSize: 100, observe: (kind) => calls.push(kind) });
  calls.length = 0;
  assert.deepEqual((await small.list('many/')).map((o) => o.key), keys);
  assert.equal(calls.length, Math.ceil(MANY_KEYS / 100), 'pages of 100');

  assert.deepEqual(await s.list('many/nothing-here'), []);
});

test('delete removes a key; deleting a missing key is not an error', async () => {
  const s = store();
  const put = await s.putIfAbsent('del/a', te.encode('x'));
  assert.ok(put.ok);
  await s.delete('del/a');
  assert.equal(await s.get('del/a'), null);
  assert.deepEqual(await s.list('del/'), []);
  await s.delete('del/a');
  await s.delete('del/never');
  // The key is free again for a create.
  assert.ok((await s.putIfAbsent('del/a', te.encode('y'))).ok);
});

test('stores with different prefixes do not see each other', async () => {
  const a = store({ prefix: `${RUN}iso-a/` });
  const b = store({ prefix: `${RUN}iso-b/` });
  assert.ok((await a.putIfAbsent('k', te.encode('from a'))).ok);
  assert.ok((await b.putIfAbsent('k', te.encode('from b'))).ok, 'same key, other prefix: a different object');
  assert.equal(td.decode((await a.get('k'))!.body), 'from a');
  assert.equal(td.decode((await b.get('k'))!.body), 'from b');
  assert.deepEqual(await a.list(''), [{ key: 'k', size: 6 }]);
  await b.delete('k');
  assert.equal(td.decode((await a.get('k'))!.body), 'from a', "b's delete left a's object");
  // The prefix is really on the server's key.
  const root = store({ prefix: RUN });
  assert.ok((await root.list('iso-')).some((o) => o.key === 'iso-a/k'));
});

test('the observer sees every request with its kind, result and duration', async () => {
  const seen: Array<[S3RequestKind, S3RequestResult, number]> = [];
  const s = store({ observe: (kind, result, ms) => seen.push([kind, result, ms]) });
  const put = await s.putIfAbsent('obs/a', te.encode('1'));
  assert.ok(put.ok);
  await s.putIfAbsent('obs/a', te.encode('2'));
  await s.putIfMatch('obs/a', te.encode('3'), put.etag);
  await s.putIfMatch('obs/a', te.encode('4'), put.etag);
  await s.get('obs/a');
  await s.get('obs/missing');
  await s.list('obs/');
  await s.delete('obs/a');
  assert.deepEqual(
    seen.map(([k, r]) => `${k}:${r}`),
    [
      'put_if_absent:ok',
      'put_if_absent:precondition_failed',
      'put_if_match:ok',
      'put_if_match:precondition_failed',
      'get:ok',
      'get:not_found',
      'list:ok',
      'delete:ok',
    ],
  );
  for (const [, , ms] of seen) assert.ok(ms >= 0 && ms < REQUEST_TIMEOUT_MS, `duration ${ms}`);
});

/** Awaits `p`, which must fail with ObjectStoreError(result) within `withinMs`. */
async function expectStoreError(p: Promise<unknown>, result: string, withinMs: number): Promise<ObjectStoreError> {
  const started = performance.now();
  const e = await p.then(
    (v) => assert.fail(`expected ObjectStoreError('${result}'), got ${JSON.stringify(v)}`),
    (e: unknown) => e,
  );
  const ms = performance.now() - started;
  assert.ok(e instanceof ObjectStoreError, `not an ObjectStoreError: ${String(e)}`);
  assert.equal(e.result, result, e.message);
  assert.ok(ms < withinMs, `took ${Math.round(ms)} ms, bound ${withinMs} ms`);
  return e;
}

test('a black-hole server, a frozen radosgw and a refused connection fail within the bound', async () => {
  const results: S3RequestResult[] = [];
  const observe = (_k: S3RequestKind, r: S3RequestResult): void => void results.push(r);
  // Accepts connections and never answers.
  const sockets = new Set<Socket>();
  const hole: TcpServer = createTcpServer((sock) => {
    sockets.add(sock);
    sock.on('error', () => {});
  });
  await new Promise<void>((r) => hole.listen(0, '127.0.0.1', r));
  const holeUrl = `http://127.0.0.1:${(hole.address() as AddressInfo).port}`;
  try {
    const s = store({ endpoint: holeUrl, requestTimeoutMs: SHORT_TIMEOUT_MS, observe });
    await expectStoreError(s.get('t/a'), 'timeout', SHORT_TIMEOUT_MS + TIMEOUT_SLACK_MS);
    await expectStoreError(s.putIfAbsent('t/a', te.encode('x')), 'timeout', SHORT_TIMEOUT_MS + TIMEOUT_SLACK_MS);
    await expectStoreError(s.putIfMatch('t/a', te.encode('x'), 'abc'), 'timeout', SHORT_TIMEOUT_MS + TIMEOUT_SLACK_MS);
    await expectStoreError(s.list('t/'), 'timeout', SHORT_TIMEOUT_MS + TIMEOUT_SLACK_MS);
    await expectStoreError(s.delete('t/a'), 'timeout', SHORT_TIMEOUT_MS + TIMEOUT_SLACK_MS);
    assert.deepEqual(results, ['timeout', 'timeout', 'timeout', 'timeout', 'timeout']);
  } finally {
    for (const sock of sockets) sock.destroy();
    await new Promise((r) => hole.close(r));
  }

  // Nothing listens there any more: refused at once, an 'error' (outcome unknown), not a timeout.
  const refused = store({ endpoint: holeUrl, requestTimeoutMs: 5000 });
  await expectStoreError(refused.putIfAbsent('t/a', te.encode('x')), 'error', 4000);

  // The real server, frozen: requests time out; thawed, it answers again.
  const pid = Number(await readFile(join(dir, 'run/client.rgw.a.pid'), 'utf8'));
  const s = store({ requestTimeoutMs: SHORT_TIMEOUT_MS });
  assert.ok((await s.putIfAbsent('t/frozen', te.encode('before'))).ok);
  process.kill(pid, 'SIGSTOP');
  try {
    await expectStoreError(s.get('t/frozen'), 'timeout', SHORT_TIMEOUT_MS + TIMEOUT_SLACK_MS);
    await expectStoreError(s.putIfAbsent('t/frozen2', te.encode('x')), 'timeout', SHORT_TIMEOUT_MS + TIMEOUT_SLACK_MS);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  const after = store();
  assert.equal(td.decode((await after.get('t/frozen'))!.body), 'before');
});

test('S3 error answers map to throttled / error / lost race (scripted server)', async () => {
  // Answers each request with the next scripted status and S3 error code.
  const script: Array<[number, string]> = [];
  const server: HttpServer = createHttpServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const [status, code] = script.shift() ?? [500, 'InternalError'];
      res.writeHead(status, { 'content-type': 'application/xml', 'x-amz-request-id': 'scripted' });
      res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>scripted</Message></Error>`);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  try {
    const s = store({ endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, requestTimeoutMs: 5000 });
    script.push([503, 'SlowDown']);
    await expectStoreError(s.putIfMatch('m/a', te.encode('x'), 'abc'), 'throttled', 4000);
    script.push([503, 'ServiceUnavailable']);
    await expectStoreError(s.get('m/a'), 'throttled', 4000);
    script.push([409, 'ConditionalRequestConflict']);
    await expectStoreError(s.putIfAbsent('m/a', te.encode('x')), 'error', 4000);
    script.push([500, 'InternalError']);
    await expectStoreError(s.list('m/'), 'error', 4000);
    // AWS's answer to If-Match on a missing key.
    script.push([404, 'NoSuchKey']);
    assert.deepEqual(await s.putIfMatch('m/a', te.encode('x'), 'abc'), { ok: false, reason: 'precondition' });
    script.push([404, 'NoSuchKey']);
    assert.equal(await s.get('m/a'), null);
    script.push([404, 'NoSuchBucket']);
    await expectStoreError(s.get('m/a'), 'error', 4000);
    script.push([412, 'PreconditionFailed']);
    assert.deepEqual(await s.putIfAbsent('m/a', te.encode('x')), { ok: false, reason: 'exists' });
    assert.equal(script.length, 0, 'one request per call: the SDK did not retry');
  } finally {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  }
});
