// The schema registry of a new leader, through real routers and real shard workers in cluster mode
// (no network, no S3: the commit step is a hook the test holds). Node A leads at epoch 1 and
// registers a schema; node B holds that record durable but never heard that it committed, so it
// adopts it as its tail when it leads at epoch 2. B's write gate opens at once, while the tail's
// commit step is still running, and reads see committed records only: the registry must wait for
// that tail before it calls itself complete, or a write naming the schema is let through unchecked.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  decodeError,
  decodeListSchemasOk,
  decodeRegisterSchemaOk,
  encodeListSchemasRequest,
  encodeReadRequest,
  encodeRegisterSchemaRequest,
  encodeWriteRequest,
  Expect,
  Op,
  type WireEvent,
  type WireSchema,
} from '../../client/wire.ts';
import { openDataMeta } from '../storage/meta.ts';
import { workerShardPorts } from './cluster-shards.ts';
import { Router, type ClusterHooks } from './router.ts';

const te = new TextEncoder();
const dirs: string[] = [];
const routers: Router[] = [];

after(async () => {
  for (const r of routers) await r.close();
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const SCHEMA: WireSchema = {
  org: 1n,
  type: 2n,
  eventType: 'Deposited',
  major: 1,
  minor: 0,
  format: 'json',
  schema: JSON.stringify({ type: 'object', properties: { amount: { type: 'number' } }, required: ['amount'] }),
};

const deposited = (amount: unknown): WireEvent => ({ type: 'Deposited', data: te.encode(JSON.stringify({ amount })), schemaMajor: 1, schemaMinor: 0 });

function writeBody(id: bigint, events: WireEvent[]): Uint8Array {
  return encodeWriteRequest({ clientId: 0n, writes: [{ key: { org: 1n, type: 2n, id }, expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events }] });
}

/** A cluster node's router whose lease (gate, epoch) and commit step the test drives. */
async function clusterRouter(name: string, commit: ClusterHooks['commit']): Promise<{ router: Router; lead: (epoch: number) => void }> {
  const dir = await mkdtemp(join(tmpdir(), `celer-router-failover-${name}-`));
  dirs.push(dir);
  openDataMeta(dir, { numShards: 1, routing: 'id' }, { numShards: 1, routing: 'id' });
  let epoch: number | null = null;
  const router = await Router.start({
    dataDir: dir,
    numShards: 1,
    routing: 'id',
    workers: 1,
    segmentBytes: 1024 * 1024,
    memoryBudgetBytes: 8 * 1024 * 1024,
    unsafeNoDirectIo: false,
    forceSyncIo: false,
    log: () => {},
    cluster: {
      commit,
      send: () => {},
      writeGate: () => (epoch === null ? { message: 'not the leader: a follower', leader: null } : null),
      // As server/node.ts wires it: -1 while the node takes no writes.
      epoch: () => epoch ?? -1,
    },
  });
  routers.push(router);
  return { router, lead: (e) => void (epoch = e) };
}

test('right after a failover, a write against a schema registered in the adopted tail is refused (2022), not let through', { timeout: 30_000 }, async () => {
  // Node A: its commit step succeeds at once (the follower took every group).
  const a = await clusterRouter('a', () => Promise.resolve());
  const [portA] = workerShardPorts(a.router, 1);
  await portA!.becomeLeader(1);
  a.lead(1);
  const reg = await a.router.dispatch(Op.RegisterSchema, encodeRegisterSchemaRequest(SCHEMA));
  assert.equal(reg.op, Op.RegisterSchemaOk, reg.op === Op.Error ? decodeError(reg.body).message : '');
  const tipA = await portA!.tip();
  const records = await portA!.readDurable(1, tipA.durableSeq, 1 << 20);

  // Node B: the commit step of the tail it adopts is held until the test lets it go, as when
  // it goes to S3 (or to an old leader that does not answer) after the gate has opened.
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  const commits: string[] = [];
  const b = await clusterRouter('b', (_shard, from, to) => {
    commits.push(`${from}..${to}`);
    // A later range's commit means a write got past the schema check while the tail was held:
    // let everything go so the test can see what that write did.
    if (commits.length > 1) release();
    return held;
  });
  const [portB] = workerShardPorts(b.router, 1);
  assert.equal(await portB!.applyReplicated(records), tipA.durableSeq, 'the registration is durable on B');
  const tipB = await portB!.tip();
  assert.equal(tipB.committedSeq, 0, 'B never heard that it committed');
  await portB!.becomeLeader(2);
  b.lead(2);

  const refused = b.router.dispatch(Op.Write, writeBody(1n, [deposited('one')]));
  // The tail commits a while later (or at once, should the write have reached its shard).
  const timer = setTimeout(release, 300);
  const res = await refused;
  clearTimeout(timer);
  assert.equal(commits[0], `1..${tipA.durableSeq}`, 'the adopted tail went through the commit step');
  assert.equal(res.op, Op.Error, `the write naming schema 1.0 with a string amount must be refused, but it was ${res.op === Op.WriteOk ? 'stored' : `answered op ${res.op}`}`);
  const e = decodeError(res.body);
  assert.equal(e.code, 2022, e.message);
  assert.equal(e.detail.validator, 'data/amount must be number');
  const read = await b.router.dispatch(Op.Read, encodeReadRequest({ key: { org: 1n, type: 2n, id: 1n }, from: 1n, to: 0n, maxBytes: 0, eventTypes: [] }));
  assert.equal(decodeError(read.body).code, 1001, 'nothing of the refused write landed');

  // The cache is complete now: a valid write lands, the schema is listed, registering it again is a no-op.
  assert.equal((await b.router.dispatch(Op.Write, writeBody(1n, [deposited(1)]))).op, Op.WriteOk);
  assert.deepEqual(decodeListSchemasOk((await b.router.dispatch(Op.ListSchemas, encodeListSchemasRequest({ org: 1n }))).body), [SCHEMA]);
  assert.deepEqual(decodeRegisterSchemaOk((await b.router.dispatch(Op.RegisterSchema, encodeRegisterSchemaRequest(SCHEMA))).body), { registered: false });
});
