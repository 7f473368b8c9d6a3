// One simulated cluster node: a SimDisk (test/sim/sim-disk.ts) holding its shards, the real Shards
// opened as replicas with the cluster's commit step, and the real ClusterNode over the simulated
// S3 and network, on a drifted clock. It can lose power at any step (SimDisk.crash: what was not
// synced may be gone; every in-memory object of the incarnation is abandoned, its timers, messages
// and S3 answers never run again), restart on the image the crash left, and pause (SIGSTOP).
import { ClusterNode, type ClusterNodeOptions } from '../cluster/cluster-node.ts';
import { localShardPort } from '../cluster/local-shard.ts';
import type { ClusterTiming } from '../cluster/timing.ts';
import { Shard } from '../shard/shard.ts';
import type { Disk, SegmentFile } from '../storage/disk.ts';
import { SimDisk } from '../../test/sim/sim-disk.ts';
import { NodeClock, NodeLife, type Drift, type Scheduler } from './scheduler.ts';
import type { SimBucket } from './sim-s3.ts';
import type { SimNet } from './sim-net.ts';

export const SIM_SEGMENT_BYTES = 64 * 1024;
export const ROUTING_ID = 2;
export const NODE_NAMES = ['a', 'b'] as const;

export function shardDir(id: number): string {
  return `/data/shard-${String(id).padStart(3, '0')}`;
}

export interface NodeSetup {
  index: number;
  numShards: number;
  timing: ClusterTiming;
  sched: Scheduler;
  bucket: SimBucket;
  net: SimNet;
  rng: () => number;
  trace: (e: string) => void;
  unsafe?: ClusterNodeOptions['unsafe'];
  memoryBudgetBytes: number;
  /** Sees every log line of the node. */
  onNote?: (m: string) => void;
  /** A replica's committed seq moved (the cluster called commitTo): the simulator compares it with the peer. */
  onCommitTo?: (node: SimNode, shard: number, committed: number) => void;
}

/** The node's id in records (16 bytes) and in S3 keys. */
export function nodeIdBytes(index: number): Uint8Array {
  return Uint8Array.from({ length: 16 }, (_, i) => (index === 0 ? 0xa0 : 0xb0) + i);
}

export class SimNode {
  readonly s: NodeSetup;
  readonly name: string;
  readonly life = new NodeLife();
  disk: SimDisk;
  shards: Shard[] = [];
  cluster: ClusterNode | null = null;
  clock: NodeClock | null = null;
  drift: Drift = { offsetMs: 0, rate: 0 };
  /** Disk operations of the live incarnation in flight and not held by a pause. */
  private diskOps = 0;
  /** The disk step at which the power goes (null: none planned). */
  crashAtStep: number | null = null;
  /** The power goes at the node's next fsync. */
  crashOnFsync = false;
  restarts = 0;
  readonly log: string[] = [];

  constructor(s: NodeSetup) {
    this.s = s;
    this.name = NODE_NAMES[s.index]!;
    this.disk = new SimDisk({ seed: Math.floor(s.rng() * 2 ** 31), afterCrash: 'hang' });
    s.sched.busy.push(() => this.life.alive && !this.life.paused && this.diskOps > 0);
  }

  get inc(): number {
    return this.life.incarnation;
  }

  /** Why the last boot failed (a shard that did not open), or null. */
  bootError: string | null = null;

  /** boot(), with a failure kept in bootError (the run reports it) instead of thrown. */
  start(): Promise<void> {
    return this.boot().catch((e: Error) => {
      this.bootError ??= e.message;
      this.s.trace(`${this.name} cannot boot: ${e.message}`);
    });
  }

  /** Boots an incarnation on the current disk image: shards, then the cluster node, then start(). */
  async boot(): Promise<void> {
    const inc = this.life.start();
    this.diskOps = 0;
    this.s.trace(`${this.name} boots (incarnation ${inc})`);
    const disk = this.disk;
    disk.onOp = (op) => {
      if (!this.life.alive || this.inc !== inc) return;
      if ((this.crashAtStep !== null && op.n >= this.crashAtStep) || (this.crashOnFsync && op.kind === 'fsync')) {
        this.crashAtStep = null;
        this.crashOnFsync = false;
        this.crash(`at disk step ${op.n} (${op.kind} ${op.path})`);
      }
    };
    const clock = new NodeClock(this.s.sched, this.life, inc, this.drift, Math.floor(this.s.rng() * 1e6));
    this.clock = clock;
    const gated = this.gatedDisk(disk, inc);
    for (let id = 0; id < this.s.numShards; id++) await gated.mkdirp(shardDir(id));
    if (this.inc !== inc || !this.life.alive) return;
    const holder: { node: ClusterNode | null } = { node: null };
    const shards: Shard[] = [];
    for (let id = 0; id < this.s.numShards; id++) {
      const sh = await Shard.open({
        disk: gated,
        clock,
        dir: shardDir(id),
        shard: id,
        numShards: this.s.numShards,
        routing: ROUTING_ID,
        segmentBytes: SIM_SEGMENT_BYTES,
        memoryBudgetBytes: this.s.memoryBudgetBytes,
        nodeId: nodeIdBytes(this.s.index),
        log: (m) => this.note(inc, `shard ${id}: ${m}`),
        commitStep: { commit: (from, to, records) => holder.node!.commitStep(id).commit(from, to, records), send: (records) => holder.node!.commitStep(id).send?.(records) },
        replica: true,
      });
      if (this.inc !== inc || !this.life.alive) return;
      if (sh.state !== 'serving') throw new Error(`${this.name}: shard ${id} did not open: ${sh.state} ${sh.reason ?? ''}`);
      shards.push(sh);
    }
    const transport = this.s.net.attach(this.s.index, this.life, inc);
    const opts: ClusterNodeOptions = {
      nodeId: `node-${this.name}`,
      clientAddress: `${this.name}:7000`,
      replicationAddress: `${this.name}:7003`,
      timing: this.s.timing,
      clock,
      store: this.s.bucket.client(this.name, this.life, inc),
      transport,
      shards: shards.map((sh) => {
        const port = localShardPort(sh);
        const commitTo = port.commitTo;
        return {
          ...port,
          commitTo: async (seq: number) => {
            const before = sh.committedSeq;
            const r = await commitTo(seq);
            if (r > before && this.inc === inc) this.s.onCommitTo?.(this, sh.id, r);
            return r;
          },
        };
      }),
      log: (m) => this.note(inc, m),
    };
    if (this.s.unsafe !== undefined) opts.unsafe = this.s.unsafe;
    const node = new ClusterNode(opts);
    holder.node = node;
    this.shards = shards;
    this.cluster = node;
    void node.start();
  }

  private note(inc: number, m: string): void {
    if (inc !== this.inc || !this.life.alive) return;
    this.s.onNote?.(m);
    const line = `${this.s.sched.now.toFixed(1)} ${this.name}: ${m}`;
    this.log.push(line);
    if (this.log.length > 400) this.log.splice(0, 100);
    this.s.trace(line);
  }

  /** Power loss: the disk keeps what was synced (and maybe more); nothing of the incarnation runs again. */
  crash(why: string): void {
    if (!this.life.alive) return;
    this.s.trace(`${this.name} loses power ${why}`);
    this.life.kill();
    this.s.net.detach(this.s.index);
    this.disk.onOp = null;
    this.disk = this.disk.crash(this.s.rng);
    this.shards = [];
    this.cluster = null;
    this.clock = null;
    this.diskOps = 0;
  }

  pause(): void {
    if (!this.life.alive || this.life.paused) return;
    this.s.trace(`${this.name} pauses`);
    this.life.pause();
  }

  resume(): void {
    if (!this.life.paused) return;
    this.s.trace(`${this.name} resumes`);
    this.life.resume();
  }

  /** The disk as the incarnation sees it: operations wait out a pause before and after; counted for the scheduler. */
  private gatedDisk(d: SimDisk, inc: number): Disk {
    const op = async <T>(f: () => Promise<T>): Promise<T> => {
      await this.life.gate(inc);
      this.diskOps++;
      let out: T;
      try {
        out = await f();
      } finally {
        if (this.inc === inc) this.diskOps--;
      }
      await this.life.gate(inc);
      return out;
    };
    const seg = (s: SegmentFile): SegmentFile => ({
      path: s.path,
      sizeBytes: s.sizeBytes,
      writeAndSync: (w) => op(() => s.writeAndSync(w)),
      read: (o, l) => op(() => s.read(o, l)),
      close: () => op(() => s.close()),
    });
    return {
      direct: d.direct,
      allocAligned: (n) => d.allocAligned(n),
      openSegment: (p, o) => op(async () => seg(await d.openSegment(p, o))),
      mkdirp: (p) => op(() => d.mkdirp(p)),
      list: (p) => op(() => d.list(p)),
      readFile: (p) => op(() => d.readFile(p)),
      readRange: (p, o, l) => op(() => d.readRange(p, o, l)),
      writeFileDurable: (p, b) => op(() => d.writeFileDurable(p, b)),
      rename: (a, b) => op(() => d.rename(a, b)),
      remove: (p) => op(() => d.remove(p)),
      syncDir: (p) => op(() => d.syncDir(p)),
      lock: (p) => op(async () => {
        const l = await d.lock(p);
        return { release: () => op(() => l.release()) };
      }),
    };
  }
}
