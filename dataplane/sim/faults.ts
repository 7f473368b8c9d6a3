// What a seed does to the cluster: its scenario (weights in SCENARIOS) and the faults it injects
// at random moments of the fault phase — power loss of a node (now, or at its next disk step or
// fsync) and its restart on the crashed image later, long pauses (longer than the lease TTL),
// partitions (one way or both, per channel), link flaps, message loss, delay spikes and
// duplication, S3 errors, throttling, slowness, timeouts and outages, clock drift (within the
// limit, or beyond it), step-downs of the leader (ClusterNode.stepDown, an upgrade's handover)
// with faults around the handover. When the phase ends every fault stops: the network and S3
// calm down, clocks come back within bounds, paused nodes resume, dead nodes restart.
import type { SimBucket } from './sim-s3.ts';
import { NO_S3_FAULTS } from './sim-s3.ts';
import { CALM_NET, CHANNELS, type SimNet } from './sim-net.ts';
import type { Scheduler } from './scheduler.ts';
import type { SimNode } from './sim-node.ts';
import type { StepDownWatch } from './checks.ts';
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
  /**
   * The leader is asked to step down (seeded handoverTtlMs), around it a late or lost handover
   * (pauses, control-channel loss, long delay spikes, partitions), S3 slowness and unknown
   * outcomes on the lease writes, crashes right after the call. Drawn from its own stream
   * (chooseScenario), so adding it left every other seed's scenario as it was.
   */
  'step-down': 2,
} as const;

export type Scenario = keyof typeof SCENARIOS;

export function isScenario(s: string): s is Scenario {
  return Object.hasOwn(SCENARIOS, s);
}

/**
 * The seed's scenario: `forced`, or by weight. 'step-down' (added later) comes from `own`, a
 * stream of its own, with probability weight/total; the others from `rng` as before it existed
 * (each then has probability weight/total too), so every other seed kept its scenario (and, but
 * for a `mixed` seed that now steps down, its trace): the regression seeds of known-bugs.ts still
 * replay what they found.
 */
export function chooseScenario(rng: () => number, forced?: Scenario, own?: () => number): Scenario {
  if (forced !== undefined) return forced;
  const entries = (Object.entries(SCENARIOS) as [Scenario, number][]).filter(([s]) => s !== 'step-down');
  const total = entries.reduce((n, [, w]) => n + w, 0);
  const r0 = rng();
  if (own !== undefined && own() < SCENARIOS['step-down'] / (total + SCENARIOS['step-down'])) return 'step-down';
  let r = r0 * total;
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
  /** A stream of its own for the step-downs of `mixed` (the other faults' draws stay as they were). */
  stepRng: () => number;
  /** Where a step-down that answered steppedDown true goes (checks.ts, invariant 7). */
  stepDowns: StepDownWatch;
  /** Reports a failure of the seed. */
  fail: (m: string) => void;
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

  // Step-down of the leader (at most one in flight per incarnation). The answer goes into the
  // trace; steppedDown true must leave this node without the leader role, and (StepDownWatch) some
  // node must lead at the handed-over epoch or later — at exactly that epoch, only the peer.
  const stepping = new Set<object>();
  const stepDown = (draw: () => number, onHandedOver?: () => void): boolean => {
    const li = leaderIndex(nodes);
    if (li < 0) return false;
    const n = nodes[li]!;
    const c = n.cluster!;
    if (n.life.paused || stepping.has(c)) return false;
    const ttl = 50 + Math.floor(draw() * 1951);
    const epoch = c.epoch;
    const peer = nodes[1 - li]!.name;
    count('step-down');
    env.trace(`${n.name} is asked to step down (epoch ${epoch}, handoverTtlMs ${ttl})`);
    stepping.add(c);
    void c.stepDown(ttl).then(
      (r) => {
        stepping.delete(c);
        env.trace(`${n.name} step-down answer (asked at epoch ${epoch}): steppedDown ${r.steppedDown}: ${r.reason}`);
        if (!r.steppedDown) return;
        // The epoch the lease was written over with (the node may know a newer one by now).
        const handed = Number(/\(epoch (\d+)\)$/.exec(r.reason)?.[1] ?? NaN);
        if (c.role === 'leader' || c.hasAuthority()) env.fail(`(7) ${n.name} answered steppedDown true but is still ${c.role} (epoch ${c.epoch})`);
        if (!(handed > epoch)) env.fail(`(7) ${n.name} answered steppedDown true handing epoch ${handed}, not above the ${epoch} it led at: ${r.reason}`);
        env.stepDowns.expect(n.name, peer, Number.isNaN(handed) ? epoch + 1 : handed);
        onHandedOver?.();
      },
      (e: Error) => env.fail(`(7) stepDown of ${n.name} threw: ${e.message}`),
    );
    return true;
  };

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
  if (scenario === 'step-down') {
    // The handover and the heartbeats around it lost, late (spikes up to 1.5 s) or doubled: on the
    // control channel only, or on both; the lease writes slow, lost after applying, timed out.
    if (rng() < 0.7) {
      net.faults = { lossP: 0.15 * rng(), dupP: 0.1 * rng(), spikeP: 0.15 * rng(), spikeMs: [20, 200 + rng() * 1300], latencyMs: [0.05, 0.2 + rng() * 2], ...(rng() < 0.6 ? { channels: ['control'] as const } : {}) };
    }
    if (rng() < 0.6) {
      const k = rng();
      bucket.faults = { errorAfterP: 0.15 * k * rng(), errorBeforeP: 0.05 * k * rng(), throttleP: 0.03 * k * rng(), slowP: 0.3 * k * rng(), timeoutP: 0.08 * k * rng(), outages: [] };
    }
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
      case 'step-down': {
        const li = leaderIndex(nodes);
        const peer = 1 - li;
        // A late handover: the moment the old leader has answered (the handover message is on
        // its way), the peer stalls for a while and, from then on, its control messages (the new
        // leader's heartbeats) are lost for a while longer — and, once the handover is in, the
        // old leader's too (or from the start: the handover is lost); both still reach S3
        // (review 3 A3).
        const late = rng() < 0.4;
        const stallMs = 300 + int(1500);
        const cutMs = stallMs + 300 + int(2700);
        const mode = (['lost', 'one-way', 'one-way', 'both-after', 'both-after'] as const)[int(5)]!;
        const handedOver = (): void => {
          count(`late-handover-${mode}`);
          if (mode === 'lost') partition([0, 1], ['control'], cutMs);
          else {
            partition([peer], ['control'], cutMs);
            if (mode === 'both-after') sched.after(stallMs + 1, () => partition([li], ['control'], cutMs - stallMs));
          }
          pause(peer, stallMs);
        };
        if (!stepDown(rng, late ? handedOver : undefined)) break;
        if (late) break;
        // Else, around it, one or two of: a pause of the peer (the handover waits for it) or of
        // the old leader, the control channel cut (the new leader's heartbeats lost) a moment
        // later, a crash of either right after the call, an S3 outage, a flap.
        for (let k = rng() < 0.4 ? 2 : 1; k > 0; k--) {
          const r = rng();
          const soon = int(3) === 0 ? 0 : int(80);
          if (r < 0.25) {
            const ms = 100 + int(1900);
            sched.after(soon, () => pause(peer, ms));
          } else if (r < 0.35) {
            const ms = 100 + int(2500);
            sched.after(soon, () => pause(li, ms));
          } else if (r < 0.6) {
            const from = rng() < 0.5 ? [peer] : [0, 1];
            const chs = rng() < 0.7 ? (['control'] as const) : CHANNELS;
            const ms = 300 + int(2700);
            sched.after(int(600), () => partition(from, chs, ms));
          } else if (r < 0.7) crash(li, 100 + int(2000), how3());
          else if (r < 0.78) {
            const ms = 100 + int(2000);
            const how = how3();
            sched.after(soon, () => crash(peer, ms, how));
          } else if (r < 0.88) outage(100 + int(1500));
          else {
            count('flap');
            net.flap('control', 10 + int(1000));
          }
        }
        break;
      }
      case 'mixed': {
        // Now and then a step-down, from a stream of its own (a seed without one runs as before).
        if (env.stepRng() < 0.06) stepDown(env.stepRng);
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
    await sched.sleep(scenario === 'ack-then-lose' || scenario === 'both-restart' ? 3000 + int(3000) : scenario === 'step-down' ? 600 + int(2400) : 200 + int(1500));
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
