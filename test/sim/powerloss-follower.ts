// The commit-step scenario's stand-in for a follower: FakeFollower, the CommitStep
// (dataplane/shard/shard.ts) a cluster's shard is opened with in the power-loss harness
// (powerloss.ts), committing each group after a seeded delay or now and then refusing it.
import type { CommitStep } from '../../dataplane/shard/shard.ts';
import type { SimClock } from './sim-clock.ts';

/** commit-step: the chance that the follower refuses one group commit (writes then stop with 2007). */
export const COMMIT_REFUSE_P = 0.03;
/** commit-step: a group's commit takes 0..COMMIT_TURNS_MAX driver turns (so several are in flight at once). */
export const COMMIT_TURNS_MAX = 24;

/**
 * The commit step of a cluster's shard (dataplane/shard/shard.ts CommitStep), standing in for a
 * follower: each commit(from, to) resolves after a seeded number of driver turns, so later groups
 * may be committed before earlier ones (the engine applies them in seq order), and is refused with
 * probability `refuseP`. It checks what the engine asks: ranges gapless and in seq order from
 * the seq after the shard's committed seq at open.
 */
export class FakeFollower implements CommitStep {
  calls = 0;
  inFlight = 0;
  maxInFlight = 0;
  /** The ranges it refused, e.g. "12..15". */
  readonly refused: string[] = [];
  private next = -1;
  private readonly clock: SimClock;
  private readonly rng: () => number;
  private readonly msPerTurn: number;
  private readonly refuseP: number;
  private readonly fail: (m: string) => void;

  constructor(clock: SimClock, rng: () => number, msPerTurn: number, refuseP: number, fail: (m: string) => void) {
    this.clock = clock;
    this.rng = rng;
    this.msPerTurn = msPerTurn;
    this.refuseP = refuseP;
    this.fail = fail;
  }

  /** The shard opened with this committed seq: the first range starts after it. */
  opened(committedSeq: number): void {
    this.next = committedSeq + 1;
  }

  commit(from: number, to: number): Promise<void> {
    this.calls++;
    if (this.next >= 0 && from !== this.next) this.fail(`the commit step was asked for seqs ${from}..${to}; the range after the last one starts at ${this.next}`);
    if (to < from) this.fail(`the commit step was asked for an empty range ${from}..${to}`);
    this.next = Math.max(this.next, to + 1);
    const turns = this.rng() < 0.25 ? 0 : 1 + Math.floor(this.rng() * COMMIT_TURNS_MAX);
    const refuse = this.rng() < this.refuseP;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    return new Promise<void>((done, failed) => {
      this.clock.after(turns * this.msPerTurn, () => {
        this.inFlight--;
        if (!refuse) return done();
        this.refused.push(`${from}..${to}`);
        failed(new Error(`the follower did not commit seqs ${from}..${to}`));
      });
    });
  }
}
