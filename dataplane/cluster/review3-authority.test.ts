// Review 3: write authority around lease writes whose outcome a node does not know, late
// heartbeat answers, and the step-down handover. Two real ClusterNodes (stub shards) on one
// virtual world clock; each node has its own view of it (its timers can stall while time moves:
// an event loop blocked by GC or a SIGSTOP), its own S3 client over one shared bucket (puts that
// fail, answers that are lost or late) and a link whose messages the test may hold and release.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MemoryStore, stubShard } from '../../test/lib/cluster-fixture.ts';
import { SimClock } from '../../test/sim/sim-clock.ts';
import { initHashing } from '../storage/checksum.ts';
import type { Clock } from '../storage/disk.ts';
import { ClusterNode } from './cluster-node.ts';
import type { ClusterMessage } from './messages.ts';
import { ObjectStoreError, type ETag, type ListedObject, type ObjectStore, type PutResult, type StoredObject } from './object-store.ts';
import type { Channel, PeerTransport } from './ports.ts';
import { DEFAULT_TIMING } from './timing.ts';

await initHashing();

const LEASE = 'cluster/lease.json';

const turn = (): Promise<void> => new Promise<void>((r) => setImmediate(r));



/** One node's clock over the world's: same time, but while `stalled` its due timers wait (they run, late, on resume()). */
class NodeClk implements Clock {
  stalled = false;
  private readonly world: SimClock;
  private pending: (() => void)[] = [];
  constructor(world: SimClock) {
    this.world = world;
  }
  nowMs(): number {
    return this.world.nowMs();
  }
  monoMs(): number {
    return this.world.monoMs();
  }
  after(ms: number, fn: () => void): () => void {
    let cancelled = false;
    const cancel = this.world.after(ms, () => {
      if (cancelled) return;
      if (this.stalled) this.pending.push(() => !cancelled && fn());
      else fn();
    });
    return () => {
      cancelled = true;
      cancel();
    };
  }
  resume(): void {
    this.stalled = false;
    for (const f of this.pending.splice(0)) f();
  }
}

/** One node's S3 client over the shared bucket; answers come through the world clock. */
class NodeStore implements ObjectStore {
  /** Puts fail before applying (503). */
  putsDown = false;
  /** The next lease put applies, then its answer is lost (500 after applying). */
  loseNextLeasePutAnswer = false;
  /** Extra delay of answers to lease puts / lease gets (ms). */
  leasePutDelayMs = 0;
  leaseGetDelayMs = 0;
  /** Lease puts sent (for the test to see a challenge leave). */
  leasePuts = 0;
  private readonly bucket: MemoryStore;
  private readonly world: SimClock;
  constructor(bucket: MemoryStore, world: SimClock) {
    this.bucket = bucket;
    this.world = world;
  }
  private later<T>(ms: number, f: () => Promise<T>): Promise<T> {
    return new Promise<T>((res, rej) => this.world.after(ms, () => void f().then(res, rej)));
  }
  get(key: string): Promise<StoredObject | null> {
    return this.later(key === LEASE ? this.leaseGetDelayMs : 0, () => this.bucket.get(key));
  }
  private put(key: string, f: () => Promise<PutResult>): Promise<PutResult> {
    if (key === LEASE) this.leasePuts++;
    if (this.putsDown) return this.later(1, () => Promise.reject(new ObjectStoreError('503 before applying', 'error')));
    if (key === LEASE && this.loseNextLeasePutAnswer) {
      this.loseNextLeasePutAnswer = false;
      // Applied now; the answer is lost.
      void f();
      return this.later(1, () => Promise.reject(new ObjectStoreError('500 after applying', 'error')));
    }
    // Applied when the answer leaves (a late answer means a late landing: the safe direction).
    return this.later(key === LEASE ? this.leasePutDelayMs : 0, f);
  }
  putIfAbsent(key: string, body: Uint8Array): Promise<PutResult> {
    return this.put(key, () => this.bucket.putIfAbsent(key, body));
  }
  putIfMatch(key: string, body: Uint8Array, etag: ETag): Promise<PutResult> {
    return this.put(key, () => this.bucket.putIfMatch(key, body, etag));
  }
  list(prefix: string): Promise<ListedObject[]> {
    return this.later(0, () => this.bucket.list(prefix));
  }
  delete(key: string): Promise<void> {
    return this.later(0, () => this.bucket.delete(key));
  }
}

interface Held {
  from: 0 | 1;
  ch: Channel;
  m: ClusterMessage;
}

/** The link: 1 ms a message; `cut` drops everything; `hold(from, m)` true keeps a message for release(). */
class Net {
  cut = false;
  hold: (from: 0 | 1, m: ClusterMessage) => boolean = () => false;
  readonly held: Held[] = [];
  readonly ends: [End, End];
  readonly world: SimClock;
  constructor(world: SimClock) {
    this.world = world;
    this.ends = [new End(this, 0), new End(this, 1)];
  }
  deliver(h: Held): void {
    this.world.after(1, () => {
      if (!this.cut) this.ends[1 - h.from]!.handler?.(h.ch, h.m);
    });
  }
  release(h: Held): void {
    this.held.splice(this.held.indexOf(h), 1);
    this.deliver(h);
  }
}

class End implements PeerTransport {
  handler: ((ch: Channel, m: ClusterMessage) => void) | null = null;
  private readonly net: Net;
  private readonly me: 0 | 1;
  constructor(net: Net, me: 0 | 1) {
    this.net = net;
    this.me = me;
  }
  send(ch: Channel, m: ClusterMessage): boolean {
    if (this.net.cut) return false;
    const h: Held = { from: this.me, ch, m };
    if (this.net.hold(this.me, m)) this.net.held.push(h);
    else this.net.deliver(h);
    return true;
  }
  connected(): boolean {
    return !this.net.cut;
  }
  queuedBytes(): number {
    return 0;
  }
  onMessage(h: (ch: Channel, m: ClusterMessage) => void): void {
    this.handler = h;
  }
  onLinkChange(): void {}
}

interface World {
  world: SimClock;
  bucket: MemoryStore;
  net: Net;
  a: ClusterNode;
  b: ClusterNode;
  clk: [NodeClk, NodeClk];
  s3: [NodeStore, NodeStore];
  logs: string[];
  overlap: { at: number; why: string } | null;
  /** Moves the world `ms` (1 ms a turn), noting the first instant both nodes hold write authority. */
  run(ms: number, until?: () => boolean): Promise<void>;
}

async function steadyPair(): Promise<World> {
  const world = new SimClock();
  const bucket = new MemoryStore();
  const net = new Net(world);
  const clk: [NodeClk, NodeClk] = [new NodeClk(world), new NodeClk(world)];
  const s3: [NodeStore, NodeStore] = [new NodeStore(bucket, world), new NodeStore(bucket, world)];
  const logs: string[] = [];
  const mk = (i: 0 | 1, name: string): ClusterNode =>
    new ClusterNode({
      nodeId: `node-${name}`,
      clientAddress: `${name}:7000`,
      replicationAddress: `${name}:7003`,
      timing: DEFAULT_TIMING,
      clock: clk[i],
      store: s3[i],
      transport: net.ends[i],
      shards: [stubShard(0)],
      log: (m) => logs.push(`${world.monoMs()} ${name}: ${m}`),
    });
  const a = mk(0, 'a');
  const b = mk(1, 'b');
  const w: World = {
    world,
    bucket,
    net,
    a,
    b,
    clk,
    s3,
    logs,
    overlap: null,
    async run(ms, until) {
      for (let i = 0; i < ms; i++) {
        if (until?.() === true) return;
        if (w.overlap === null && a.hasAuthority() && b.hasAuthority()) {
          w.overlap = { at: world.monoMs(), why: `A epoch ${a.epoch} (${a.leaseRemainingMs()} ms left), B epoch ${b.epoch} (${b.leaseRemainingMs()} ms left)` };
        }
        world.advance(1);
        await turn();
      }
      if (until !== undefined && !until()) throw new Error(`condition not reached within ${ms} ms\n${logs.slice(-30).join('\n')}`);
    },
  };
  void a.start();
  await w.run(3000, () => a.role === 'leader');
  void b.start();
  await w.run(3000, () => b.role === 'follower' && a.counters.heartbeatsAcked >= 3);
  await w.run(300);
  return w;
}

const fail = (w: World): string => `both nodes held write authority at ${w.overlap?.at} ms: ${w.overlap?.why}\n${w.logs.slice(-25).join('\n')}`;

// -------------------------------------------------------------------------------------------
// A1: an answer to a heartbeat the follower received after it had challenged revives the old leader

/**
 * The leader's heartbeats stop reaching the follower (held in the network) and its S3 renewals
 * fail; its event loop stalls just before the tick that would fence it. The follower waits out the
 * TTL and sends its lease write; then the last held heartbeat (sent while the leader still had
 * authority) reaches it, it answers, and the answer reaches the stalled leader before its tick.
 */
async function lateAnswerAfterChallenge(w: World): Promise<void> {
  const { a, b, net, clk, s3 } = w;
  net.hold = (from, m) => from === 0 && m.t === 'hb';
  s3[0].putsDown = true;
  // A stalls after its last heartbeat before its authority runs out.
  await w.run(1500, () => net.held.length > 0 && (a.leaseRemainingMs() ?? 0) < 250);
  clk[0].stalled = true;
  const last = net.held[net.held.length - 1]!;
  // B challenges.
  const puts = s3[1].leasePuts;
  await w.run(3000, () => s3[1].leasePuts > puts);
  assert.equal(b.role, 'follower');
  // The held heartbeat reaches B now; B answers; the answer reaches A (whose timers still wait).
  net.hold = () => false;
  net.release(last);
  await w.run(3);
}

test('A1: a heartbeat answered after the follower sent its lease write does not extend the old leader\'s authority (the follower then leads)', async () => {
  const w = await steadyPair();
  w.s3[1].leasePutDelayMs = 20; // B's lease write is on its way while the held heartbeat arrives
  await lateAnswerAfterChallenge(w);
  w.net.cut = true; // nothing more between them (so no 'stale' answer demotes A early)
  w.clk[0].resume();
  await w.run(2500);
  assert.equal(w.b.role, 'leader', 'B took the lease');
  assert.equal(w.overlap, null, fail(w));
});

test('A2: a node whose own lease write landed unseen, and which then answered the old leader\'s heartbeats, does not retake the lease within the TTL of the last one', async () => {
  const w = await steadyPair();
  w.s3[1].loseNextLeasePutAnswer = true; // B's lease write lands; B hears an error
  await lateAnswerAfterChallenge(w);
  w.clk[0].resume();
  // B (still a follower under epoch 1) answers A's heartbeats for a while: A leads on them.
  await w.run(1000);
  // The link goes; B reads a lease naming itself (its own unseen write) and takes it again.
  w.net.cut = true;
  await w.run(3000);
  assert.equal(w.overlap, null, fail(w));
});

// -------------------------------------------------------------------------------------------
// A3: the handover's receiver counts its authority from its read of the lease, the old leader its
// TTL from its step-back, which came before

test('A3: after a step-down, the new leader\'s authority ends before the old leader may challenge, however late the handover arrives', async () => {
  const w = await steadyPair();
  const { a, b, net, s3 } = w;
  // The handover message is late (a delay spike on the link); B's S3 writes fail meanwhile.
  net.hold = (from, m) => from === 0 && m.t === 'handover';
  s3[1].putsDown = true;
  const res = await (async () => {
    const p = a.stepDown(1000);
    let out: { steppedDown: boolean } | null = null;
    void p.then((r) => (out = r));
    await w.run(500, () => out !== null);
    return out!;
  })();
  assert.equal(res.steppedDown, true);
  await w.run(600);
  // Only the handover gets through: the link goes right after (B's heartbeats never reach A).
  net.hold = () => true;
  net.release(net.held.find((h) => h.m.t === 'handover')!);
  await w.run(2500);
  assert.equal(w.overlap, null, fail(w));
  void b;
});

/** Steps A down with the handover message held; returns once A has answered. */
async function stepDownHeld(w: World): Promise<void> {
  w.net.hold = (from, m) => from === 0 && m.t === 'handover';
  let out: { steppedDown: boolean; reason: string } | null = null;
  void w.a.stepDown(1000).then((r) => (out = r));
  await w.run(1000, () => out !== null);
  assert.equal(out!.steppedDown, true, out!.reason);
}

test('A3b: a handover a little late and a slow lease read, both nodes reaching S3, link gone after it: never two writers', async () => {
  const w = await steadyPair();
  await stepDownHeld(w);
  // Late enough to add up with the read below, early enough that B still counts itself as
  // hearing heartbeats (it does not poll the lease, which now names it, on its own).
  await w.run(450);
  w.s3[1].leaseGetDelayMs = 600;
  w.net.hold = () => true;
  w.net.release(w.net.held.find((x) => x.m.t === 'handover')!);
  await w.run(3000);
  assert.equal(w.overlap, null, fail(w));
  assert.ok(w.a.role === 'leader' || w.b.role === 'leader', 'somebody leads');
});

test('A4: a plain step-down still hands over at once, at exactly one epoch more, with no overlap', async () => {
  const w = await steadyPair();
  const epoch = w.a.epoch;
  await stepDownHeld(w);
  w.net.hold = () => false;
  const at = w.world.monoMs();
  w.net.release(w.net.held.find((x) => x.m.t === 'handover')!);
  await w.run(200, () => w.b.hasAuthority());
  assert.ok(w.world.monoMs() - at < 20, `B led ${w.world.monoMs() - at} ms after the handover`);
  assert.equal(w.b.epoch, epoch + 1);
  await w.run(2000);
  assert.equal(w.overlap, null, fail(w));
  assert.equal(w.b.role, 'leader');
  assert.equal(w.a.role, 'follower');
  assert.equal(w.b.epoch, epoch + 1);
});

// -------------------------------------------------------------------------------------------
// A5: the heartbeat's ETag counts only for that very object (observe(): hbLease.etag === l.etag)

test('A5: a lease object the leader wrote in S3 after the last acknowledged heartbeat counts from its first sight, not from that heartbeat', async () => {
  const w = await steadyPair();
  // The link goes both ways; the leader renews in S3 (each renewal late in its authority), the
  // follower polls and sees a new object each time: it must never challenge.
  w.net.cut = true;
  await w.run(4000);
  assert.ok(w.a.counters.leaseRenewalsS3 >= 3, 'A renewed in S3');
  assert.equal(w.overlap, null, fail(w));
  assert.equal(w.b.role, 'follower');
});

test('A5b: the ETag the last acknowledged heartbeat named counts from that heartbeat (a renewal whose answer was lost, then adopted by reading it)', async () => {
  const w = await steadyPair();
  const { a, net, s3, bucket } = w;
  const holdAcks = (): void => {
    net.hold = (from, m) => from === 1 && m.t === 'hbAck';
  };
  const answer = (): void => {
    net.hold = () => false;
    const last = net.held[net.held.length - 1];
    net.held.splice(0);
    if (last !== undefined) net.deliver(last);
  };
  // A's heartbeats go unanswered: it renews in S3; the write lands, its answer is lost.
  const puts0 = s3[0].leasePuts;
  holdAcks();
  s3[0].loseNextLeasePutAnswer = true;
  await w.run(2000, () => s3[0].leasePuts === puts0 + 1);
  await w.run(5);
  const landed = bucket.objects.get(LEASE)!.etag;
  answer();
  await w.run(300);
  // Unanswered again: the next renewal (If-Match the old ETag) meets 412; A reads the object,
  // which names it, and adopts it.
  holdAcks();
  await w.run(2000, () => s3[0].leasePuts === puts0 + 2);
  await w.run(5);
  assert.equal(bucket.objects.get(LEASE)!.etag, landed, `the second renewal failed (412)\n${w.logs.join('\n')}`);
  assert.equal(a.role, 'leader');
  answer();
  // Heartbeats are answered again and name that object; B has not read the lease since it booted.
  await w.run(600);
  assert.equal(bucket.objects.get(LEASE)!.etag, landed, 'heartbeats carry the authority: no S3 write since');
  assert.equal((w.b as unknown as { hbLease: { etag: string } | null }).hbLease?.etag, landed, 'the heartbeats name the adopted object');
  // The link goes, and A's S3 writes fail. B counts the TTL from its last heartbeat (the object
  // is the one that heartbeat named).
  net.cut = true;
  s3[0].putsDown = true;
  const cutAt = w.world.monoMs();
  await w.run(3000, () => w.b.role === 'leader');
  assert.ok(w.world.monoMs() - cutAt < DEFAULT_TIMING.leaseTtlMs + 100, `B led ${w.world.monoMs() - cutAt} ms after the last heartbeat`);
  await w.run(1500);
  assert.equal(w.overlap, null, fail(w));
});
