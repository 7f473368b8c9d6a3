// The replication link between the two simulated nodes: a PeerTransport (cluster/ports.ts) for
// each node incarnation, channels 'control' and 'data'. Messages travel as encoded frames
// (messages.ts encodeFrame/decodeFrame, so the receiver never shares the sender's buffers) and
// arrive through the virtual clock, with seeded loss, delay (and so reordering), duplication,
// partitions (one direction or both, per channel: messages vanish, the link looks up) and link
// flaps (the connection drops: connected(ch) is false, both sides hear onLinkChange, messages in
// flight on the old connection are lost; it reconnects after a while). A node that dies takes its
// connections with it; its restarted incarnation connects afresh.
import { decodeFrame, encodeFrame, type ClusterMessage } from '../cluster/messages.ts';
import type { Channel, PeerTransport } from '../cluster/ports.ts';
import type { NodeLife, Scheduler } from './scheduler.ts';

export const CHANNELS: readonly Channel[] = ['control', 'data'];

export interface NetFaults {
  lossP: number;
  dupP: number;
  /** Probability of a delay spike (`spikeMs`, default 20..300 ms) on a message. */
  spikeP: number;
  /** Base one-way latency range (ms). */
  latencyMs: [number, number];
  /** Range of a delay spike (ms); default [20, 300]. */
  spikeMs?: [number, number];
  /** Loss, duplication and spikes hit only these channels (default: both). */
  channels?: readonly Channel[];
}

export const CALM_NET: NetFaults = { lossP: 0, dupP: 0, spikeP: 0, latencyMs: [0.05, 0.4] };

interface End {
  life: NodeLife;
  inc: number;
  onMessage: ((ch: Channel, m: ClusterMessage) => void) | null;
  onLink: ((ch: Channel, up: boolean) => void) | null;
}

/** Reconnect delay after a flap or a peer's restart (ms). */
const CONNECT_MS = 5;

export class SimNet {
  faults: NetFaults = { ...CALM_NET };
  /** blocked[from][ch]: messages from `from` on `ch` are dropped (a partition). */
  readonly blocked = [
    { control: false, data: false },
    { control: false, data: false },
  ];
  private readonly ends: (End | null)[] = [null, null];
  /** Per channel: is the connection up, and its generation (messages of an older one are lost). */
  private readonly link = { control: { up: false, gen: 0, flapUntil: 0 }, data: { up: false, gen: 0, flapUntil: 0 } };
  private readonly sched: Scheduler;
  private readonly rng: () => number;
  private readonly trace: (e: string) => void;
  sent = 0;
  delivered = 0;

  constructor(sched: Scheduler, rng: () => number, trace: (e: string) => void) {
    this.sched = sched;
    this.rng = rng;
    this.trace = trace;
  }

  private live(i: number): boolean {
    const e = this.ends[i];
    return e !== null && e !== undefined && e.life.alive && e.life.incarnation === e.inc;
  }

  /** The transport of node `i`'s incarnation `inc` (replaces the old incarnation's). */
  attach(i: number, life: NodeLife, inc: number): PeerTransport {
    const end: End = { life, inc, onMessage: null, onLink: null };
    this.ends[i] = end;
    // The old connection (if any) died with the old incarnation; connect anew.
    for (const ch of CHANNELS) this.setLink(ch, false);
    this.sched.after(CONNECT_MS, () => this.reconnect());
    const peer = 1 - i;
    return {
      send: (ch, m) => this.send(i, peer, ch, m),
      connected: (ch) => this.ends[i] === end && this.live(i) && this.link[ch].up,
      queuedBytes: () => 0,
      onMessage: (h) => (end.onMessage = h),
      onLinkChange: (h) => (end.onLink = h),
    };
  }

  /** Node `i` died: its connections drop. */
  detach(i: number): void {
    for (const ch of CHANNELS) this.setLink(ch, false);
    this.ends[i] = null;
  }

  /** The connection of `ch` drops for `ms` (both sides see it), then reconnects. */
  flap(ch: Channel, ms: number): void {
    this.link[ch].flapUntil = Math.max(this.link[ch].flapUntil, this.sched.now + ms);
    this.setLink(ch, false);
    this.sched.after(ms, () => this.reconnect());
  }

  private reconnect(): void {
    for (const ch of CHANNELS) if (this.live(0) && this.live(1) && this.sched.now >= this.link[ch].flapUntil) this.setLink(ch, true);
  }

  private setLink(ch: Channel, up: boolean): void {
    const l = this.link[ch];
    if (l.up === up) return;
    l.up = up;
    l.gen++;
    this.trace(`net ${ch} ${up ? 'up' : 'down'}`);
    for (let i = 0; i < 2; i++) {
      const e = this.ends[i];
      if (e === null || e === undefined) continue;
      this.sched.after(0, () => e.life.run(e.inc, () => e.onLink?.(ch, up)));
    }
  }

  private send(from: number, to: number, ch: Channel, m: ClusterMessage): boolean {
    if (!this.live(from) || !this.link[ch].up) return false;
    this.sent++;
    const gen = this.link[ch].gen;
    const f = this.faults.channels === undefined || this.faults.channels.includes(ch) ? this.faults : { ...CALM_NET, latencyMs: this.faults.latencyMs };
    const frame = encodeFrame(m);
    if (this.blocked[from]![ch] || this.rng() < f.lossP) {
      this.trace(`net ${from}->${to} ${ch} ${m.t} lost`);
      return true;
    }
    const copies = this.rng() < f.dupP ? 2 : 1;
    for (let c = 0; c < copies; c++) {
      const [lo, hi] = f.latencyMs;
      const [slo, shi] = f.spikeMs ?? [20, 300];
      const delay = lo + this.rng() * (hi - lo) + (this.rng() < f.spikeP ? slo + this.rng() * (shi - slo) : 0);
      this.sched.after(delay, () => {
        const e = this.ends[to];
        if (e === null || e === undefined || !this.live(to) || this.link[ch].gen !== gen || this.blocked[from]![ch]) return;
        e.life.run(e.inc, () => {
          if (this.ends[to] !== e || this.link[ch].gen !== gen) return;
          this.delivered++;
          e.onMessage?.(ch, decodeFrame(frame.subarray(4)));
        });
      });
    }
    return true;
  }
}
