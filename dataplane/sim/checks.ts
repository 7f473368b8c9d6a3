// The simulator's invariants (reference §6.8), checked during a run where cheap and after it:
//   (1) write authority: never two nodes with authority at the same virtual instant (checked on
//       every scheduler turn); in the final logs every epoch's records come from one node, and
//       epochs never decrease along a shard's log;
//   (2) no acknowledged write lost: each is read back, at its acknowledged versions and seq, from
//       the final leader and from the follower, in a record the acknowledging node wrote;
//   (3) no two nodes hold different records at one position: both logs are walked record by
//       record and their chain hashes compared (and tips, committed seqs);
//   (4) versions gapless per aggregate, every read identical on both nodes;
//   (5) exactly-once: no write applied twice, multi-aggregate writes all-or-nothing, an
//       acknowledged (or 2002-answered) write applied exactly once, a write refused without an
//       unknown attempt absent; the bank's transfers conserve the total;
//   (6) convergence (converged() below; the bound is the caller's);
// plus `celer verify` (verifyShard) over both nodes' shard directories.
import { ErrorCode } from '../../client/errors.ts';
import { verifyShard } from '../cli/verify.ts';
import { equalBytes, hex } from '../storage/checksum.ts';
import { checkRecord, recordHash } from '../storage/record.ts';
import { readAll, type SeenBatch } from '../../test/sim/powerloss-common.ts';
import type { SimNode } from './sim-node.ts';
import { shardDir } from './sim-node.ts';
import { tagOf, type SimWrite } from './workload.ts';

/** Null when the pair has converged; else what is still different. */
export function converged(nodes: SimNode[]): string | null {
  for (const n of nodes) {
    if (!n.life.alive || n.life.paused || n.cluster === null) return `${n.name} is ${!n.life.alive ? 'down' : n.life.paused ? 'paused' : 'booting'}`;
  }
  const leaders = nodes.filter((n) => n.cluster!.hasAuthority());
  if (leaders.length !== 1) return `${leaders.length} nodes lead (roles ${nodes.map((n) => n.cluster!.role).join('/')})`;
  const l = leaders[0]!;
  const f = nodes.find((n) => n !== l)!;
  if (f.cluster!.role !== 'follower') return `${f.name} is ${f.cluster!.role}`;
  if (f.cluster!.epoch !== l.cluster!.epoch) return `epochs ${l.cluster!.epoch} / ${f.cluster!.epoch}`;
  for (let s = 0; s < l.shards.length; s++) {
    const a = l.shards[s]!.tip();
    const b = f.shards[s]!.tip();
    if (a.durableSeq !== a.committedSeq || b.durableSeq !== b.committedSeq || a.placedSeq !== a.durableSeq || b.placedSeq !== b.durableSeq) {
      return `shard ${s}: ${l.name} placed/durable/committed ${a.placedSeq}/${a.durableSeq}/${a.committedSeq}, ${f.name} ${b.placedSeq}/${b.durableSeq}/${b.committedSeq}`;
    }
    if (a.committedSeq !== b.committedSeq || !equalBytes(a.tipHash, b.tipHash)) return `shard ${s}: committed ${a.committedSeq} vs ${b.committedSeq}`;
  }
  return null;
}

/** Watches authority on every turn: the first instant two nodes hold it is a violation. */
export class AuthorityWatch {
  violation: string | null = null;
  private readonly nodes: SimNode[];
  private readonly now: () => number;
  constructor(nodes: SimNode[], now: () => number) {
    this.nodes = nodes;
    this.now = now;
  }
  check(): void {
    if (this.violation !== null) return;
    const holders = this.nodes.filter((n) => n.life.alive && n.cluster !== null && n.cluster.hasAuthority());
    if (holders.length > 1) this.violation = `at ${this.now().toFixed(1)} ms both nodes hold write authority (epochs ${holders.map((n) => `${n.name}:${n.cluster!.epoch}`).join(', ')})`;
  }
}

/**
 * (7) Step-downs (ClusterNode.stepDown) that answered steppedDown true: the lease then names the
 * peer at the handed-over epoch, so some node must come to lead at that epoch or a later one
 * (the peer at once on the handover, or a later election), and at exactly that epoch only the
 * peer. Checked on every turn while one is pending; the run fails on one never resolved.
 */
export class StepDownWatch {
  violation: string | null = null;
  private readonly pending: { from: string; to: string; epoch: number; at: number }[] = [];
  private readonly nodes: SimNode[];
  private readonly now: () => number;
  private readonly trace: (e: string) => void;
  constructor(nodes: SimNode[], now: () => number, trace: (e: string) => void) {
    this.nodes = nodes;
    this.now = now;
    this.trace = trace;
  }
  /** `from` stepped down, handing `epoch` to `to`. */
  expect(from: string, to: string, epoch: number): void {
    this.pending.push({ from, to, epoch, at: this.now() });
  }
  check(): void {
    if (this.pending.length === 0) return;
    for (const n of this.nodes) {
      if (!n.life.alive || n.cluster === null || !n.cluster.hasAuthority()) continue;
      const e = n.cluster.epoch;
      for (let i = this.pending.length - 1; i >= 0; i--) {
        const p = this.pending[i]!;
        if (e < p.epoch) continue;
        this.pending.splice(i, 1);
        this.trace(`step-down ${p.from}->${p.to} (epoch ${p.epoch}): ${n.name} leads at epoch ${e}, ${(this.now() - p.at).toFixed(1)} ms after${e === p.epoch ? ' (the handover)' : ' (a later election)'}`);
        if (e === p.epoch && n.name !== p.to) this.violation ??= `(7) ${p.from} handed epoch ${p.epoch} to ${p.to}, but ${n.name} leads at that epoch`;
      }
    }
  }
  /** Step-downs no node ever led after. */
  unresolved(): string[] {
    return this.pending.map((p) => `(7) ${p.from} stepped down at ${p.at.toFixed(1)} ms handing epoch ${p.epoch} to ${p.to} (steppedDown true), but no node led at that epoch or a later one afterwards`);
  }
}

interface RecordInfo {
  first: number;
  last: number;
  epoch: number;
  node: string;
  hash: Uint8Array;
}

async function walk(n: SimNode, shard: number): Promise<RecordInfo[]> {
  const sh = n.shards[shard]!;
  const end = sh.tip().durableSeq;
  const out: RecordInfo[] = [];
  let next = 1;
  while (next <= end) {
    const recs = await sh.readDurable(next, end, 1 << 20);
    if (recs.length === 0) break;
    for (const r of recs) {
      const c = checkRecord(r, 0, r.length);
      if (!c.ok || 'incomplete' in c) throw new Error(`${n.name} shard ${shard}: a durable record at seq ${next} fails its checks`);
      const h = c.header;
      out.push({ first: h.firstSeq, last: h.firstSeq + h.batchCount - 1, epoch: h.epoch, node: hex(h.nodeId).slice(0, 2), hash: recordHash(r, h.length) });
      next = h.firstSeq + h.batchCount;
    }
  }
  return out;
}

export interface FinalContext {
  nodes: SimNode[];
  leader: SimNode;
  follower: SimNode;
  writes: SimWrite[];
  aggregates: number;
  numShards: number;
  bankAccounts: number[];
  fail: (m: string) => void;
}

export async function finalChecks(x: FinalContext): Promise<void> {
  const { leader: L, follower: F, fail } = x;
  const nodeOfSeq: Map<number, string>[] = [];
  // (1) and (3): record by record.
  for (let s = 0; s < x.numShards; s++) {
    const a = await walk(L, s);
    const b = await walk(F, s);
    if (a.length !== b.length) fail(`(3) shard ${s}: ${L.name} holds ${a.length} records, ${F.name} ${b.length}`);
    const bySeq = new Map<number, string>();
    nodeOfSeq.push(bySeq);
    const epochNode = new Map<number, string>();
    let lastEpoch = 0;
    for (let i = 0; i < Math.min(a.length, b.length); i++) {
      const p = a[i]!;
      const q = b[i]!;
      if (p.first !== q.first || p.last !== q.last || !equalBytes(p.hash, q.hash)) {
        fail(`(3) shard ${s}: records differ at position ${p.first}..${p.last} (${L.name}) vs ${q.first}..${q.last} (${F.name}): hashes ${hex(p.hash).slice(0, 12)} / ${hex(q.hash).slice(0, 12)}`);
        break;
      }
      for (let seq = p.first; seq <= p.last; seq++) bySeq.set(seq, p.node);
      if (p.epoch < lastEpoch) fail(`(1) shard ${s}: record ${p.first}..${p.last} has epoch ${p.epoch} after a record of epoch ${lastEpoch}`);
      lastEpoch = Math.max(lastEpoch, p.epoch);
      const other = epochNode.get(p.epoch);
      if (other !== undefined && other !== p.node) fail(`(1) shard ${s}: epoch ${p.epoch} has records written by two nodes (${other} and ${p.node}); the second at seq ${p.first}`);
      epochNode.set(p.epoch, p.node);
    }
    // `celer verify` over both directories.
    for (const n of [L, F]) {
      const v = await verifyShard(n.disk, shardDir(s), s, x.numShards, 2);
      const end = n.shards[s]!.tip().durableSeq;
      if (v.problem !== null) fail(`celer verify of ${n.name} shard ${s}: ${v.problem}`);
      else if (v.lastSeq !== end) fail(`celer verify of ${n.name} shard ${s} ends at seq ${v.lastSeq}, the shard at ${end}`);
    }
  }
  // (2), (4), (5): read every aggregate on both nodes.
  const seen = new Map<number, { agg: number; part: number; batch: SeenBatch }[]>();
  let balance = 0;
  for (let agg = 0; agg < x.aggregates; agg++) {
    const shard = (agg + 1) % x.numShards;
    const got = [];
    for (const n of [L, F]) {
      const r = await readAll(n.shards[shard]!, agg, 4096);
      if ('code' in r) {
        if (r.code !== ErrorCode.AggregateNotFound) fail(`reading aggregate ${agg} on ${n.name} gave ${r.code} (${r.message})`);
        got.push([]);
      } else got.push(r.batches);
    }
    const [a, b] = got as [SeenBatch[], SeenBatch[]];
    const sig = (bs: SeenBatch[]): string => bs.map((z) => `${z.seq}:${z.from}-${z.to}:${z.events.map((e) => hex(e.data.subarray(0, 6))).join(',')}`).join(' ');
    if (sig(a) !== sig(b)) fail(`(3) aggregate ${agg} reads differently on ${L.name} and ${F.name}: ${sig(a).slice(-300)} vs ${sig(b).slice(-300)}`);
    let v = 0;
    for (const batch of a) {
      if (batch.from !== v + 1) fail(`(4) aggregate ${agg}: batch at version ${batch.from} follows version ${v} (a gap or an overlap)`);
      v = batch.to;
      const t = tagOf(batch.events[0]!);
      for (const e of batch.events) {
        const te = tagOf(e);
        if (te.id !== t.id || te.part !== t.part) fail(`aggregate ${agg}: batch ${batch.seq} mixes writes ${t.id} and ${te.id}`);
        if (x.bankAccounts.includes(agg)) balance += te.amount;
      }
      let l = seen.get(t.id);
      if (l === undefined) seen.set(t.id, (l = []));
      l.push({ agg, part: t.part, batch });
    }
  }
  if (balance !== 0) fail(`(5) the bank's accounts sum to ${balance}, not 0: a transfer was applied in part`);
  for (const w of x.writes) {
    const found = seen.get(w.id) ?? [];
    const desc = `write ${w.id} (client ${w.client}, ${w.status}, attempts ${w.attempts.join(' ')})`;
    const parts = new Set(found.map((f) => f.part));
    if (found.length > parts.size) {
      fail(`(5) ${desc} is applied more than once: ${found.map((f) => `seq ${f.batch.seq}`).join(', ')}`);
      continue;
    }
    if (found.length > 0 && found.length !== w.parts.length) fail(`(5) ${desc}: ${found.length} of its ${w.parts.length} aggregates hold it (all-or-nothing)`);
    if (w.status === 'acked' || w.status === 'applied-before') {
      if (found.length === 0) {
        fail(`(2) ${desc}: ${w.status === 'acked' ? `acknowledged by ${x.nodes[w.ack!.node]!.name} at seq ${w.ack!.firstSeq} (epoch ${w.ack!.epoch})` : 'answered 2002'} but LOST: not on ${L.name} (leader) nor ${F.name}`);
        continue;
      }
    }
    if (w.status === 'acked') {
      const ack = w.ack!;
      for (const f of found) {
        const [from, to] = ack.ranges[f.part]!;
        if (f.batch.from !== from || f.batch.to !== to || f.batch.seq !== ack.firstSeq + f.part) {
          fail(`(2) ${desc}: acknowledged at seq ${ack.firstSeq + f.part} versions ${from}..${to} but found at seq ${f.batch.seq} versions ${f.batch.from}..${f.batch.to}`);
        }
        const writer = nodeOfSeq[ack.shard]?.get(f.batch.seq);
        const ackName = hex(new Uint8Array([x.nodes[ack.node]!.s.index === 0 ? 0xa0 : 0xb0]));
        if (writer !== undefined && writer !== ackName) fail(`(1) ${desc}: acknowledged by ${x.nodes[ack.node]!.name} but its record was written by the other node`);
      }
      const p = w.parts;
      for (let j = 0; j < p.length; j++) {
        const [from] = ack.ranges[j]!;
        if (p[j]!.mode === 3 && from !== p[j]!.expect + 1) fail(`(4) ${desc}: guard expected version ${p[j]!.expect} but was acknowledged at ${from}`);
        if (p[j]!.mode === 1 && from !== 1) fail(`(4) ${desc}: guard no_stream but was acknowledged at ${from}`);
      }
    }
    if (w.status === 'refused' && !w.maybeApplied && found.length > 0) fail(`(5) ${desc}: refused, never with an unknown outcome, yet applied at seq ${found[0]!.batch.seq}`);
  }
}

/**
 * (3) during the run: node `n` just committed shard `shard` up to `seq`; if the peer has committed
 * that position too, both must hold the same record there. Returns a description of a violation.
 */
export async function committedAgree(n: SimNode, peer: SimNode, shard: number, seq: number): Promise<string | null> {
  const ps = peer.shards[shard];
  const ns = n.shards[shard];
  if (ps === undefined || ns === undefined || !peer.life.alive || ps.committedSeq < seq) return null;
  let mine: { hash: Uint8Array; epoch: number } | null;
  let theirs: { hash: Uint8Array; epoch: number } | null;
  try {
    mine = await ns.recordAt(seq);
    theirs = await ps.recordAt(seq);
  } catch {
    return null; // a log being reopened (truncateAfter): no verdict
  }
  if (mine === null || theirs === null || equalBytes(mine.hash, theirs.hash)) return null;
  return `(3) ${n.name} committed shard ${shard} up to seq ${seq}, where it holds a record of epoch ${mine.epoch} and ${peer.name} (committed to ${ps.committedSeq}) a different one of epoch ${theirs.epoch}`;
}

/** (2) without convergence: every acknowledged write must still be on the node that leads (or the newest). */
export async function lostWrites(x: Omit<FinalContext, 'follower'>): Promise<void> {
  for (const w of x.writes) {
    if (w.status !== 'acked' && w.status !== 'applied-before') continue;
    const shard = (w.parts[0]!.agg + 1) % x.numShards;
    const sh = x.leader.shards[shard];
    if (sh === undefined || sh.state !== 'serving') continue;
    const r = await readAll(sh, w.parts[0]!.agg, 4096);
    if ('code' in r) {
      if (r.code === ErrorCode.AggregateNotFound) x.fail(`(2) write ${w.id} (${w.status}, attempts ${w.attempts.join(' ')}) is LOST: its aggregate ${w.parts[0]!.agg} does not exist on ${x.leader.name}`);
      continue;
    }
    if (!r.batches.some((b) => b.events[0] !== undefined && tagOf(b.events[0]).id === w.id)) {
      x.fail(`(2) write ${w.id} (${w.status}${w.ack !== null ? ` by ${x.nodes[w.ack.node]!.name} at seq ${w.ack.firstSeq}, epoch ${w.ack.epoch}` : ''}, attempts ${w.attempts.join(' ')}) is LOST: not on ${x.leader.name}, which leads`);
    }
  }
}
