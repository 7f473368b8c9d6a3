// The simulator's clients: seeded closed-loop writers outside both nodes (their time is the global
// clock; a pause or crash of a node does not stop them). Each sends its writes to the node it
// believes leads: ClusterNode.writeGate() (a refusal names the leader), then
// shard.handle(Op.Write, ...). Kinds of client:
//   - 'eo': exactly-once writes (clientId + clientSeq, Expect.Any) to shared aggregates, one or
//     several aggregates of one shard; a few without clientSeq (never retried);
//   - 'guard': exact-version guards on aggregates it owns (and a clientSeq);
//   - 'bank': transfers between accounts of one shard, a debit and a credit in one write, both
//     guarded by exact versions.
// On 2007, 9200, 2008 or no answer (outcome unknown) a write with a clientSeq is retried, with the
// same clientSeq and body, on the other node. Every answer is recorded for the checks.
import { decodeDetailsOk, decodeError, decodeWriteOk, encodeKeyRequest, encodeWriteRequest, Expect, Op, type WireEvent } from '../../client/wire.ts';
import type { NormalizedKey } from '../../client/key.ts';
import { ErrorCode } from '../../client/errors.ts';
import type { ShardResult } from '../shard/shard.ts';
import type { Scheduler } from './scheduler.ts';
import type { Part as PowerlossPart } from '../../test/sim/powerloss-common.ts';
import type { SimNode } from './sim-node.ts';

export interface Part extends PowerlossPart {
  /** Bank transfers: the amount this part moves (debit negative). */
  amount: number;
}

export interface SimWrite {
  id: number;
  client: number;
  clientId: bigint;
  parts: Part[];
  body: Uint8Array;
  hasSeq: boolean;
  /** Final client-side outcome. */
  status: 'pending' | 'acked' | 'refused' | 'unknown' | 'applied-before';
  /** Some attempt had an unknown outcome (it may be applied even when a later one was refused). */
  maybeApplied: boolean;
  ack: { node: number; epoch: number; firstSeq: number; shard: number; ranges: [number, number][]; at: number } | null;
  attempts: string[];
}

export function keyOf(agg: number): NormalizedKey {
  return { org: 7n, type: 3n, id: BigInt(agg + 1) };
}

export function shardOfAgg(agg: number, numShards: number): number {
  return (agg + 1) % numShards;
}

/** Reads a write id, part and amount from an event the workload wrote. */
export function tagOf(e: WireEvent): { id: number; part: number; amount: number } {
  const v = new DataView(e.data.buffer, e.data.byteOffset, e.data.length);
  return { id: v.getUint32(0), part: v.getUint8(4), amount: v.getInt32(6) };
}

export type Answer = { k: 'down' } | { k: 'refused'; leader: string | null } | { k: 'timeout' } | { k: 'answer'; res: ShardResult; epoch: number };

export const CLIENT_TIMEOUT_MS = 4000;

/** A request from a client to node `i`, over a short client link, answered only by the incarnation that got it. */
export function request(sched: Scheduler, rng: () => number, node: SimNode, shard: number, op: number, body: Uint8Array, gate: boolean): Promise<Answer> {
  return new Promise<Answer>((resolve) => {
    let done = false;
    const finish = (a: Answer): void => {
      if (done) return;
      done = true;
      resolve(a);
    };
    sched.after(CLIENT_TIMEOUT_MS, () => finish({ k: 'timeout' }));
    const hop = (): number => 0.05 + rng() * 0.5;
    sched.after(hop(), () => {
      const c = node.cluster;
      if (!node.life.alive || c === null) {
        sched.after(hop(), () => finish({ k: 'down' }));
        return;
      }
      const inc = node.inc;
      node.life.run(inc, () => {
        const answer = (a: Answer): void => node.life.run(inc, () => sched.after(hop(), () => finish(a)));
        if (gate) {
          const refusal = c.writeGate();
          if (refusal !== null) return answer({ k: 'refused', leader: refusal.leader });
        }
        const sh = node.shards[shard];
        if (sh === undefined) return answer({ k: 'down' });
        sh.handle(op, body).then(
          (res) => answer({ k: 'answer', res, epoch: c.epoch }),
          () => answer({ k: 'answer', res: { op: Op.Error, body: new Uint8Array(0) }, epoch: c.epoch }),
        );
      });
    });
  });
}

export interface WorkloadOptions {
  sched: Scheduler;
  rng: () => number;
  nodes: SimNode[];
  numShards: number;
  trace: (e: string) => void;
  /** Clients stop starting writes at this global time. */
  stopAtMs: number;
}

export interface Workload {
  writes: SimWrite[];
  aggregates: number;
  bankAccounts: number[];
  done: Promise<void>;
  /** Runs one more write per shard (the liveness probe after the faults); resolves with the first that failed, else the last. */
  probe(): Promise<SimWrite>;
}

const UNKNOWN: number[] = [ErrorCode.NotAcknowledged, ErrorCode.ShardUnavailable, ErrorCode.StorageFailed, 0];

export function startWorkload(o: WorkloadOptions): Workload {
  const { sched, rng, nodes, numShards } = o;
  const int = (n: number): number => Math.floor(rng() * n);
  const shared = 3 + int(6);
  const guardClients = 1 + int(2);
  const eoClients = 1 + int(3);
  const bank = rng() < 0.6;
  // Aggregates: [0, shared) shared; then two per guard client; then the bank's accounts (one shard).
  const owned: number[][] = [];
  let next = shared;
  for (let g = 0; g < guardClients; g++) owned.push([next++, next++]);
  const bankAccounts: number[] = [];
  if (bank) {
    while ((next + 1) % numShards !== 0) next++;
    for (let i = 0; i < 4; i++) bankAccounts.push(next + i * numShards);
    next += 4 * numShards;
  }
  const writes: SimWrite[] = [];
  const w: Workload = { writes, aggregates: next, bankAccounts, done: Promise.resolve(), probe: () => Promise.reject(new Error('unset')) };

  const event = (id: number, part: number, e: number, amount: number): WireEvent => {
    const size = 10 + (rng() < 0.05 ? 2000 + int(6000) : int(200));
    const data = new Uint8Array(size);
    for (let b = 10; b < size; b++) data[b] = int(256);
    const v = new DataView(data.buffer);
    v.setUint32(0, id);
    v.setUint8(4, part);
    v.setUint8(5, e);
    v.setInt32(6, amount);
    return { type: amount !== 0 ? 'transfer' : 'noted', data };
  };

  const makeWrite = (client: number, clientId: bigint, parts: Omit<Part, 'events'>[], hasSeq: boolean): SimWrite => {
    const id = writes.length;
    const full: Part[] = parts.map((p, j) => ({ ...p, events: Array.from({ length: p.amount !== 0 ? 1 : 1 + int(3) }, (_, e) => event(id, j, e, p.amount)) }));
    const body = encodeWriteRequest({
      clientId,
      writes: full.map((p) => ({ key: keyOf(p.agg), expectMode: p.mode, expectVersion: BigInt(p.expect), clientSeq: p.clientSeq, events: p.events })),
    });
    const sw: SimWrite = { id, client, clientId, parts: full, body, hasSeq, status: 'pending', maybeApplied: false, ack: null, attempts: [] };
    writes.push(sw);
    return sw;
  };

  /** Sends `sw` until it has a definite answer or the client gives up; returns the last write answer's result. */
  const submit = async (c: { target: number }, sw: SimWrite): Promise<ShardResult | null> => {
    const shard = shardOfAgg(sw.parts[0]!.agg, numShards);
    for (let attempt = 0; attempt < 12; attempt++) {
      const node = nodes[c.target]!;
      const a = await request(sched, rng, node, shard, Op.Write, sw.body, true);
      sw.attempts.push(`${node.name}:${a.k === 'answer' ? (a.res.op === Op.WriteOk ? 'ok' : a.res.body.length >= 2 ? decodeError(a.res.body).code : 'throw') : a.k}@${sched.now.toFixed(0)}`);
      if (a.k === 'down' || a.k === 'refused') {
        // Nothing was sent to a shard: definitely not applied. Go where the refusal points.
        c.target = 1 - c.target;
        await sched.sleep(20 + int(80));
        continue;
      }
      if (a.k === 'timeout') {
        sw.maybeApplied = true;
        if (!sw.hasSeq) break;
        c.target = 1 - c.target;
        continue;
      }
      if (a.res.op === Op.WriteOk) {
        const ok = decodeWriteOk(a.res.body);
        sw.status = 'acked';
        sw.ack = { node: c.target, epoch: a.epoch, firstSeq: Number(ok.firstSeq), shard: ok.shard, ranges: ok.ranges.map((r) => [Number(r.fromVersion), Number(r.toVersion)]), at: sched.now };
        o.trace(`client ${sw.client} write ${sw.id} acked by ${node.name} epoch ${a.epoch} seq ${ok.firstSeq}`);
        return a.res;
      }
      const code = a.res.body.length >= 2 ? decodeError(a.res.body).code : 0;
      if (code === ErrorCode.AlreadyApplied) {
        sw.status = 'applied-before';
        return a.res;
      }
      if (code === ErrorCode.WrongExpectedVersion) {
        sw.status = 'refused';
        return a.res;
      }
      if (code === ErrorCode.NotLeader) {
        c.target = 1 - c.target;
        await sched.sleep(20 + int(80));
        continue;
      }
      if (code === ErrorCode.ServerBusy || code === ErrorCode.DuplicateInFlight) {
        await sched.sleep(20 + int(100));
        continue;
      }
      if (UNKNOWN.includes(code)) {
        sw.maybeApplied = true;
        if (!sw.hasSeq) break;
        c.target = 1 - c.target;
        await sched.sleep(10 + int(50));
        continue;
      }
      sw.status = 'refused';
      sw.attempts.push(`unexpected ${code}`);
      return a.res;
    }
    sw.status = sw.maybeApplied ? 'unknown' : 'refused';
    return null;
  };

  const details = async (c: { target: number }, agg: number): Promise<number | null> => {
    const a = await request(sched, rng, nodes[c.target]!, shardOfAgg(agg, numShards), Op.Details, encodeKeyRequest(keyOf(agg)), false);
    if (a.k !== 'answer') return null;
    if (a.res.op === Op.DetailsOk) return Number(decodeDetailsOk(a.res.body).version);
    if (a.res.body.length >= 2 && decodeError(a.res.body).code === ErrorCode.AggregateNotFound) return 0;
    return null;
  };

  const loop = async (client: number, kind: 'eo' | 'guard' | 'bank'): Promise<void> => {
    const clientId = 5000n + BigInt(client);
    const c = { target: int(2) };
    let seq = 0n;
    const known = new Map<number, number>();
    await sched.sleep(int(300));
    while (sched.now < o.stopAtMs) {
      seq += 1n;
      let sw: SimWrite;
      if (kind === 'eo') {
        const withSeq = rng() < 0.85;
        const first = int(shared);
        const aggs = [first];
        if (rng() < 0.3) for (let a = 0; a < shared; a++) if (a !== first && shardOfAgg(a, numShards) === shardOfAgg(first, numShards) && aggs.length < 3) aggs.push(a);
        sw = makeWrite(client, clientId, aggs.map((agg) => ({ agg, mode: Expect.Any, expect: 0, clientSeq: withSeq ? seq : 0n, amount: 0 })), withSeq);
      } else if (kind === 'guard') {
        const mine = owned[client % owned.length]!;
        const agg = mine[int(mine.length)]!;
        if (!known.has(agg)) {
          const v = await details(c, agg);
          if (v === null) {
            c.target = 1 - c.target;
            await sched.sleep(50);
            continue;
          }
          known.set(agg, v);
        }
        const v = known.get(agg)!;
        sw = makeWrite(client, clientId, [{ agg, mode: v === 0 ? Expect.NoStream : Expect.Exact, expect: v, clientSeq: seq, amount: 0 }], true);
      } else {
        const i = int(bankAccounts.length);
        const j = (i + 1 + int(bankAccounts.length - 1)) % bankAccounts.length;
        const from = bankAccounts[i]!;
        const to = bankAccounts[j]!;
        const vs: number[] = [];
        for (const agg of [from, to]) {
          if (!known.has(agg)) {
            const v = await details(c, agg);
            if (v !== null) known.set(agg, v);
          }
          vs.push(known.get(agg) ?? -1);
        }
        if (vs.includes(-1)) {
          c.target = 1 - c.target;
          await sched.sleep(50);
          continue;
        }
        const amount = 1 + int(100);
        sw = makeWrite(client, clientId, [
          { agg: from, mode: vs[0] === 0 ? Expect.NoStream : Expect.Exact, expect: vs[0]!, clientSeq: seq, amount: -amount },
          { agg: to, mode: vs[1] === 0 ? Expect.NoStream : Expect.Exact, expect: vs[1]!, clientSeq: seq, amount },
        ], true);
      }
      await submit(c, sw);
      if (sw.status === 'acked') sw.ack!.ranges.forEach(([, to], j) => known.set(sw.parts[j]!.agg, to));
      else for (const p of sw.parts) known.delete(p.agg);
      await sched.sleep(10 + int(60));
    }
  };

  const loops: Promise<void>[] = [];
  let n = 0;
  for (let i = 0; i < eoClients; i++) loops.push(loop(n++, 'eo'));
  for (let i = 0; i < guardClients; i++) loops.push(loop(n++, 'guard'));
  if (bank) for (let i = 0; i < 1 + int(2); i++) loops.push(loop(n++, 'bank'));
  w.done = Promise.all(loops).then(() => {});
  const probeClient = n++;
  let probeSeq = 0n;
  w.probe = async () => {
    // One write per shard: an aggregate of each.
    let last: SimWrite | null = null;
    for (let shard = 0; shard < numShards; shard++) {
      probeSeq += 1n;
      let agg = 0;
      while (shardOfAgg(agg, numShards) !== shard) agg++;
      const sw = makeWrite(probeClient, 9000n, [{ agg, mode: Expect.Any, expect: 0, clientSeq: probeSeq, amount: 0 }], true);
      const c = { target: int(2) };
      for (let round = 0; round < 5 && sw.status !== 'acked' && sw.status !== 'applied-before'; round++) await submit(c, sw);
      if (last === null || (sw.status !== 'acked' && sw.status !== 'applied-before')) last = sw;
    }
    return last!;
  };
  return w;
}
