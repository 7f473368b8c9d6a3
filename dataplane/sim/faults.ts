// What a seed does to the cluster: its scenario (weights in SCENARIOS) and the faults it injects
// at random moments of the fault phase — power loss of a node (now, or at its next disk step or
// fsync) and its restart on the crashed image later, long pauses (longer than the lease TTL),
// partitions (one way or both, per channel), link flaps, message loss, delay spikes and
// duplication, S3 errors, throttling, slowness, timeouts and outages, clock drift (within the
// limit, or beyond it). When the phase ends every fault stops: the network and S3 calm down,
// clocks come back within bounds, paused nodes resume, dead nodes restart.
import type { SimBucket } from './sim-s3.ts';
import { NO_S3_FAULTS } from './sim-s3.ts';
import { CALM_NET, CHANNELS, type SimNet } from './sim-net.ts';
import type { Scheduler } from './scheduler.ts';
import type { SimNode } from './sim-node.ts';
import type { Channel } from '../cluster/ports.ts';

export const SCENARIOS = {
  mixed: 8,
  'leader-crash': 3,
  'follower-crash': 2,
  bridge: 2,
  's3-chaos': 2,
  pause: 2,
  drift: 1,
  'both-restart': 1,
  calm: 1,
  /** Follower loses power at its next fsync, the leader a moment later (teeth of ackBeforeFsync). */
  'ack-then-lose': 2,
} as const;

export type Scenario = keyof typeof SCENARIOS;

export function isScenario(s: string): s is Scenario {
  return Object.hasOwn(SCENARIOS, s);
}

export function chooseScenario(rng: () => number, forced?: Scenario): Scenario {
  if (forced !== undefined) return forced;
  const entries = Object.entries(SCENARIOS) as [Scenario, number][];
  const total = entries.reduce((n, [, w]) => n + w, 0);
  let r = rng() * total;
  for (const [s, w] of entries) {
    r -= w;
    if (r < 0) return s;
  }
  return 'mixed';
}

export interface FaultEnv {
  sched: Scheduler;
  rng: () => number;
  nodes: SimNode[];
  net: SimNet;
  bucket: SimBucket;
  trace: (e: string) => void;
  maxClockDriftMs: number;
  /** Global time the faults stop. */
  endMs: number;
}

export interface FaultLog {
  counts: Record<string, number>;
}

/** The node that is leader now (role and authority), or -1. */
export function leaderIndex(nodes: SimNode[]): number {
  for (let i = 0; i < nodes.length; i++) if (nodes[i]!.cluster?.hasAuthority() === true) return i;
  return -1;
}

/** Runs the fault phase of `scenario`; resolves when it ended (with every fault lifted). */
export async function injectFaults(env: FaultEnv, scenario: Scenario, log: FaultLog): Promise<void> {
  const { sched, rng, nodes, net, bucket } = env;
  const int = (n: number): number => Math.floor(rng() * n);
  const count = (k: string): void => {
    log.counts[k] = (log.counts[k] ?? 0) + 1;
    env.trace(`fault ${k}`);
  };
  const restartAt = new Map<number, number>();
  const crash = (i: number, downMs: number, how: 'now' | 'step' | 'fsync'): void => {
    const n = nodes[i]!;
    if (!n.life.alive) return;
    count(`crash-${how}`);
    restartAt.set(i, sched.now + downMs);
    if (how === 'now') n.crash('(injected)');
    else if (how === 'step') n.crashAtStep = n.disk.steps + 1 + int(60);
    else n.crashOnFsync = true;
  };
  const pause = (i: number, ms: number): void => {
    const n = nodes[i]!;
    if (!n.life.alive || n.life.paused) return;
    count('pause');
    n.pause();
    sched.after(ms, () => n.resume());
  };
  const partition = (from: number[], chs: readonly Channel[], ms: number): void => {
    count(`partition-${from.length === 2 ? 'both' : 'one-way'}`);
    for (const f of from) for (const ch of chs) net.blocked[f]![ch] = true;
    sched.after(ms, () => {
      for (const f of from) for (const ch of chs) net.blocked[f]![ch] = false;
    });
  };
  const outage = (ms: number): void => {
    count('s3-outage');
    bucket.faults.outages.push({ from: sched.now, to: sched.now + ms });
  };
  // Supervisor: restarts crashed nodes when their downtime is over.
  let phaseOver = false;
  const supervise = async (): Promise<void> => {
    while (!phaseOver) {
      for (let i = 0; i < nodes.length; i++) {
        const n = nodes[i]!;
        if (n.life.alive) continue;
        if (!restartAt.has(i)) restartAt.set(i, sched.now + 200 + int(2000));
        if (sched.now >= restartAt.get(i)!) {
          restartAt.delete(i);
          n.restarts++;
          void n.start();
        }
      }
      await sched.sleep(20);
    }
  };
  void supervise();

  const how3 = (): 'now' | 'step' | 'fsync' => (['now', 'step', 'fsync'] as const)[int(3)] ?? 'now';
  const other = (i: number): number => (i < 0 ? int(2) : 1 - i);
  const target = (): number => {
    const l = leaderIndex(nodes);
    return l < 0 ? int(2) : l;
  };

  // Background conditions of the phase.
  if (scenario === 'mixed' || scenario === 's3-chaos') {
    const k = scenario === 's3-chaos' ? 1 : 0.3;
    bucket.faults = { errorAfterP: 0.05 * k * rng(), errorBeforeP: 0.1 * k * rng(), throttleP: 0.05 * k * rng(), slowP: 0.1 * k * rng(), timeoutP: 0.05 * k * rng(), outages: [] };
  }
  if (scenario === 'mixed' || rng() < 0.3) {
    net.faults = { lossP: 0.05 * rng(), dupP: 0.05 * rng(), spikeP: 0.03 * rng(), latencyMs: [0.05, 0.2 + rng() * 2] };
  }
  if (scenario === 'drift') {
    const i = int(2);
    nodes[i]!.drift.offsetMs = (rng() < 0.5 ? -1 : 1) * (env.maxClockDriftMs + 50 + int(400));
    count('drift-beyond');
  }

  await sched.sleep(400 + int(600));
  while (sched.now < env.endMs) {
    const l = target();
    switch (scenario) {
      case 'calm':
        break;
      case 'leader-crash':
        crash(l, 100 + int(3000), how3());
        break;
      case 'follower-crash':
        crash(other(leaderIndex(nodes)), 100 + int(3000), how3());
        break;
      case 'bridge':
        partition([0, 1], CHANNELS, 500 + int(3500));
        break;
      case 's3-chaos':
        if (rng() < 0.5) outage(200 + int(3000));
        if (rng() < 0.3) crash(int(2), 500 + int(2000), 'now');
        break;
      case 'pause':
        pause(int(2), 1600 + int(2500));
        break;
      case 'drift':
        if (rng() < 0.3) crash(int(2), 200 + int(1000), 'now');
        break;
      case 'both-restart':
        crash(0, 100 + int(1500), 'now');
        crash(1, 100 + int(1500), 'now');
        break;
      case 'ack-then-lose': {
        const li = leaderIndex(nodes);
        if (li >= 0) {
          crash(1 - li, 20 + int(100), 'fsync');
          await sched.sleep(int(25));
          crash(li, 2500 + int(2000), 'now');
        }
        break;
      }
      case 'mixed': {
        const r = rng();
        if (r < 0.2) crash(int(2), 100 + int(3000), how3());
        else if (r < 0.3) pause(int(2), 200 + int(3500));
        else if (r < 0.45) partition(rng() < 0.5 ? [int(2)] : [0, 1], rng() < 0.6 ? CHANNELS : [CHANNELS[int(2)]!], 100 + int(3000));
        else if (r < 0.55) {
          count('flap');
          net.flap(CHANNELS[int(2)]!, 10 + int(1500));
        } else if (r < 0.65) outage(100 + int(3000));
        else if (r < 0.7) {
          const i = int(2);
          nodes[i]!.drift.offsetMs = (rng() - 0.5) * 2 * (rng() < 0.2 ? env.maxClockDriftMs * 2 : env.maxClockDriftMs / 3);
          count('drift-step');
        }
        break;
      }
    }
    await sched.sleep(scenario === 'ack-then-lose' || scenario === 'both-restart' ? 3000 + int(3000) : 200 + int(1500));
  }

  // Quiet: every fault stops.
  env.trace('faults stop');
  phaseOver = true;
  net.faults = { ...CALM_NET };
  for (const b of net.blocked) b.control = b.data = false;
  bucket.faults = { ...NO_S3_FAULTS, outages: [] };
  for (const n of nodes) {
    n.drift.offsetMs = Math.max(-env.maxClockDriftMs / 4, Math.min(env.maxClockDriftMs / 4, n.drift.offsetMs));
    n.crashAtStep = null;
    n.crashOnFsync = false;
    n.resume();
  }
  for (const n of nodes) if (!n.life.alive) {
    n.restarts++;
    void n.start();
  }
}
