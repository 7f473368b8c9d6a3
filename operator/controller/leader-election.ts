// Leader election for the operator itself on a coordination.k8s.io/v1 Lease, so that two
// operator replicas never reconcile at once. Follows client-go's protocol:
//  - a candidate takes the lease when there is none, or when the record it sees has not
//    changed for a full lease duration measured on its own clock (never by comparing clocks);
//  - writes are optimistic on resourceVersion: a 409 means someone else won;
//  - the leader renews every retry period and gives up leadership when it has not renewed
//    for the renew deadline, before anyone else may take over;
//  - on shutdown the leader releases the lease so a successor need not wait out the TTL.

import type { Clock, Timer } from './clock.ts';

/** controller-runtime's defaults, also CloudNativePG's: lease 15 s, renew deadline 10 s, retry 2 s. */
export const LEASE_DURATION_MS = 15_000;
export const RENEW_DEADLINE_MS = 10_000;
export const RETRY_PERIOD_MS = 2_000;

export interface LeaseRecord {
  holder: string;
  leaseDurationSeconds: number;
  acquireTime: string;
  renewTime: string;
  transitions: number;
  /** Opaque; required for update. */
  resourceVersion?: string;
}

export interface LeaseApi {
  get(): Promise<LeaseRecord | null>;
  /** Resolves false when the Lease already exists (409). */
  create(record: LeaseRecord): Promise<boolean>;
  /** Resolves false on a resourceVersion conflict (409). */
  update(record: LeaseRecord): Promise<boolean>;
}

export interface LeaderElectionOptions {
  api: LeaseApi;
  identity: string;
  clock: Clock;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  onStartedLeading: () => void;
  onStoppedLeading: () => void;
  onError?: (err: unknown) => void;
}

export type ElectorState = 'candidate' | 'leader' | 'stopped';

export class LeaderElector {
  readonly #o: Required<Omit<LeaderElectionOptions, 'onError'>> & Pick<LeaderElectionOptions, 'onError'>;
  #state: ElectorState = 'candidate';
  #timer: Timer | null = null;
  #observed: { key: string; atMs: number } | null = null;
  #lastRenewMs = 0;
  #current: LeaseRecord | null = null;

  constructor(options: LeaderElectionOptions) {
    this.#o = {
      leaseDurationMs: LEASE_DURATION_MS, renewDeadlineMs: RENEW_DEADLINE_MS, retryPeriodMs: RETRY_PERIOD_MS, ...options,
    };
    if (!(this.#o.renewDeadlineMs < this.#o.leaseDurationMs)) throw new RangeError('renewDeadlineMs must be less than leaseDurationMs');
    if (!(this.#o.retryPeriodMs * 1.2 < this.#o.renewDeadlineMs)) throw new RangeError('retryPeriodMs × 1.2 must be less than renewDeadlineMs');
  }

  get state(): ElectorState {
    return this.#state;
  }

  start(): void {
    void this.#tick();
  }

  /** Stops campaigning; a leader releases the lease (TTL 1 s) so a successor starts at once. */
  async stop(): Promise<void> {
    const wasLeader = this.#state === 'leader';
    this.#state = 'stopped';
    this.#timer?.cancel();
    if (wasLeader && this.#current !== null) {
      const now = new Date(this.#o.clock.nowMs()).toISOString();
      try {
        await this.#o.api.update({ ...this.#current, holder: '', leaseDurationSeconds: 1, renewTime: now });
      } catch (err) {
        this.#o.onError?.(err);
      }
      this.#o.onStoppedLeading();
    }
  }

  #stopped(): boolean {
    return this.#state === 'stopped';
  }

  #schedule(): void {
    if (this.#state === 'stopped') return;
    this.#timer = this.#o.clock.after(this.#o.retryPeriodMs, () => void this.#tick());
  }

  async #tick(): Promise<void> {
    if (this.#state === 'stopped') return;
    let ok = false;
    try {
      ok = await this.#tryAcquireOrRenew();
    } catch (err) {
      this.#o.onError?.(err);
    }
    // stop() may have run while the API call was in flight.
    if (this.#stopped()) return;
    const now = this.#o.clock.nowMs();
    if (ok) {
      this.#lastRenewMs = now;
      if (this.#state === 'candidate') {
        this.#state = 'leader';
        this.#o.onStartedLeading();
      }
    } else if (this.#state === 'leader' && now - this.#lastRenewMs >= this.#o.renewDeadlineMs) {
      // Could not renew in time: stop acting before another replica may take over.
      this.#state = 'candidate';
      this.#o.onStoppedLeading();
    }
    this.#schedule();
  }

  async #tryAcquireOrRenew(): Promise<boolean> {
    const now = this.#o.clock.nowMs();
    const nowIso = new Date(now).toISOString();
    const existing = await this.#o.api.get();
    if (existing === null) {
      const record: LeaseRecord = {
        holder: this.#o.identity, leaseDurationSeconds: Math.ceil(this.#o.leaseDurationMs / 1000),
        acquireTime: nowIso, renewTime: nowIso, transitions: 0,
      };
      const created = await this.#o.api.create(record);
      if (created) this.#current = await this.#o.api.get();
      return created;
    }
    const key = `${existing.holder}|${existing.renewTime}|${existing.resourceVersion ?? ''}`;
    if (this.#observed === null || this.#observed.key !== key) this.#observed = { key, atMs: now };
    const heldByMe = existing.holder === this.#o.identity;
    const expired = existing.holder === '' || now - this.#observed.atMs >= existing.leaseDurationSeconds * 1000;
    if (!heldByMe && !expired) return false;
    const record: LeaseRecord = {
      ...existing,
      holder: this.#o.identity,
      leaseDurationSeconds: Math.ceil(this.#o.leaseDurationMs / 1000),
      renewTime: nowIso,
      acquireTime: heldByMe ? existing.acquireTime : nowIso,
      transitions: heldByMe ? existing.transitions : existing.transitions + 1,
    };
    const updated = await this.#o.api.update(record);
    if (updated) this.#current = await this.#o.api.get();
    return updated;
  }
}
