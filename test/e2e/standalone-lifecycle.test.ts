// delete and trimStart (SPEC §5) against a real `celer serve --standalone`: a trimmed range reads
// as 1000, a deleted aggregate as 1001, allowRecreate lets a write bring it back from version + 1,
// exactly-once floors and tombstones survive a SIGKILL and restart, and watch / the org
// subscription carry the deletes and trims in commit order. The CLI and gRPC paths too.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  AggregateNotFoundError,
  AlreadyAppliedError,
  BadRequestError,
  ReadBelowTrimmedError,
  WrongExpectedVersionError,
  connect,
  type CelerClient,
  type WatchNotification,
} from '@celer/client';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { PROTO_LOADER_OPTIONS, PROTO_PATH } from '../../dataplane/server/grpc.ts';
import { removeDir, runCeler, startCeler, tempDir, type CelerProcess } from './lib/celer-process.ts';

const te = new TextEncoder();
const ev = (type: string) => ({ type, data: te.encode(`{"t":"${type}"}`) });
let node: CelerProcess;
let dir: string;
let client: CelerClient;
const ARGS = ['--shards', '2', '--routing', 'id', '--grpc', '127.0.0.1:0'];

before(async () => {
  dir = await tempDir('celer-e2e-life-');
  node = await startCeler(dir, ARGS);
  client = await connect(node.native, { clientId: 21 });
});

after(async () => {
  await client?.close();
  await node?.stop();
  await removeDir(dir);
});

const types = async (key: { org: number; type: number; id: number }, from?: number): Promise<string[]> => {
  const out: string[] = [];
  for await (const b of client.readAll(key, from === undefined ? {} : { from })) out.push(...b.events.map((e) => e.type));
  return out;
};

test('trim, delete, allowRecreate and floors on a real node, through a SIGKILL and restart', async () => {
  const trimmed = { org: 50, type: 1, id: 1 };
  const gone = { org: 50, type: 1, id: 2 };
  const again = { org: 50, type: 1, id: 3 };
  for (let v = 1; v <= 4; v++) {
    for (const k of [trimmed, gone, again]) await client.append(k, [ev(`E${v}`)], { clientSeq: v });
  }
  const t = await client.trimStart(trimmed, 3);
  assert.deepEqual([t.version, t.minVersion, t.unchanged], [4n, 3n, false]);
  await assert.rejects(client.trimStart(trimmed, 6), (e: unknown) => e instanceof BadRequestError && /at most 5/.test(e.message));
  await assert.rejects(client.delete(gone, { expectedVersion: 3 }), WrongExpectedVersionError);
  await client.delete(gone, { expectedVersion: 4 });
  await client.delete(again, { allowRecreate: true });

  const check = async (when: string) => {
    await assert.rejects(client.read(trimmed, { from: 2 }), (e: unknown) => e instanceof ReadBelowTrimmedError && e.code === 1000 && /first readable version is 3/.test(e.message), when);
    assert.deepEqual(await types(trimmed), ['E3', 'E4'], `${when}: a read without from starts at the trim`);
    assert.deepEqual((await client.details(trimmed)).minVersion, 3n);
    await assert.rejects(client.read(gone), (e: unknown) => e instanceof AggregateNotFoundError && /deleted at version 4/.test(e.message), when);
    const d = await client.details(gone);
    assert.deepEqual([d.version, d.deleted], [4n, true], `${when}: the version stays`);
    await assert.rejects(client.append(gone, [ev('X')]), (e: unknown) => e instanceof AggregateNotFoundError && /without allowRecreate/.test(e.message));
    // Floors outlive trims and deletes: the retry of a write that landed is still "already applied".
    await assert.rejects(client.append(trimmed, [ev('E2')], { clientSeq: 2 }), AlreadyAppliedError);
    await assert.rejects(client.append(again, [ev('E4')], { clientSeq: 4 }), AlreadyAppliedError);
  };
  await check('before the restart');
  assert.equal(await node.kill('SIGKILL'), null);
  node = await startCeler(dir, ARGS);
  await client.close();
  client = await connect(node.native, { clientId: 21 });
  await check('after a SIGKILL and restart');

  // Recreate: no_stream holds for the deleted aggregate; versions go on; the old events stay gone.
  const r = await client.append(again, [ev('New')], { expectedVersion: 'no_stream', clientSeq: 5 });
  assert.deepEqual([r.fromVersion, r.toVersion], [5n, 5n]);
  assert.deepEqual(await types(again), ['New']);
  await assert.rejects(client.read(again, { from: 1 }), ReadBelowTrimmedError);
  assert.equal((await client.details(again)).deleted, false);
  assert.equal((await client.delete(gone)).unchanged, true, 'deleting twice changes nothing');
});

test('watch and the org subscription carry deletes and trims, in commit order', async () => {
  const org = 51;
  const k = (id: number) => ({ org, type: 1, id });
  const watcher = client.watch({ org }, {});
  const notes: WatchNotification[] = [];
  const watching = (async () => {
    for await (const n of watcher) {
      if (n.op === 'heartbeat') continue;
      notes.push(n);
      if (notes.length === 4) break;
    }
  })();
  // Give the watcher its tip before writing (it starts at the tail).
  await new Promise((r) => setTimeout(r, 300));
  await client.append(k(2), [ev('A'), ev('B'), ev('C')]);
  await client.trimStart(k(2), 3);
  await client.delete(k(2));
  await client.append(k(4), [ev('D')]);
  await watching;
  assert.deepEqual(
    notes.map((n) => [n.op, Number(n.key.id), Number(n.fromVersion), Number(n.toVersion)]),
    [
      ['write', 2, 1, 3],
      ['trim', 2, 1, 2],
      ['delete', 2, 1, 3],
      ['write', 4, 1, 1],
    ],
  );
  const got: string[] = [];
  for await (const b of client.subscribe({ org }, { pollWaitMs: 100 })) {
    got.push(`${Number(b.key.id)}:${b.op}:${b.minVersion}:${b.events.length}`);
    if (got.length === 4) break;
  }
  // Shard 0 (id 2, 4 with --routing id) in commit order.
  assert.deepEqual(got, ['2:write:1:3', '2:trim:3:0', '2:delete:4:0', '4:write:1:1']);
});

test('the CLI and gRPC delete and trim', async () => {
  const key = { org: 52, type: 1, id: 1 };
  await client.append(key, [ev('A'), ev('B'), ev('C')]);
  const trim = await runCeler(['trim', '--addr', node.native, '52/1/1', '--keep-from', '2']);
  assert.equal(trim.code, 0, trim.stderr);
  assert.deepEqual(JSON.parse(trim.stdout), { position: { shard: 1, seq: JSON.parse(trim.stdout).position.seq }, version: '3', minVersion: '2', unchanged: false });
  const missing = await runCeler(['trim', '--addr', node.native, '52/1/1']);
  assert.equal(missing.code, 2, 'a usage error');
  assert.match(missing.stderr, /--keep-from/);

  const def = protoLoader.loadSync(PROTO_PATH, PROTO_LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as { celer: { v1: { EventStore: grpc.ServiceClientConstructor } } };
  const stub = new pkg.celer.v1.EventStore(node.grpc!, grpc.credentials.createInsecure());
  const unary = (m: string, req: unknown) =>
    new Promise<Record<string, unknown>>((res, rej) => (stub[m] as (r: unknown, cb: (e: grpc.ServiceError | null, v: Record<string, unknown>) => void) => void).call(stub, req, (e, v) => (e ? rej(e) : res(v))));
  try {
    const t = await unary('TrimStart', { key: { org: '52', type: '1', id: '1' }, keepFromVersion: '3' });
    assert.deepEqual([t.version, t.minVersion, t.unchanged], ['3', '3', false]);
    const d = await unary('Delete', { key: { org: '52', type: '1', id: '1' }, expectedVersion: '3' });
    assert.deepEqual([d.version, d.minVersion, d.unchanged], ['3', '4', false]);
    await assert.rejects(unary('Read', { key: { org: '52', type: '1', id: '1' } }), (e: grpc.ServiceError) => /deleted at version 3/.test(e.details));
  } finally {
    stub.close();
  }
  const del = await runCeler(['delete', '--addr', node.native, '52/1/1']);
  assert.equal(del.code, 0, del.stderr);
  assert.equal(JSON.parse(del.stdout).unchanged, true);
  const read = await runCeler(['read', '--addr', node.native, '52/1/1']);
  assert.notEqual(read.code, 0);
  assert.match(read.stderr, /1001/);
});
