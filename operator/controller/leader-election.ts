// Leader election for the operator itself on a coordination.k8s.io/v1 Lease, so that two
// operator replicas never reconcile at once. Follows client-go's protocol:
//  - a candidate takes the lease when there is none, or when the record it sees has not
//    changed for a full lease duration measured on its own clock (never by comparing clocks);
//  - writes are optimistic on resourceVersion: a 409 means someone else won;
//  - the leader renews every retry period and gives up leadership when it has not renewed
//    for the renew deadline, before anyone else may take over;
//  - on shutdown the leader releases the lease so a successor need not wait out the TTL;
//  - no API call may hang an attempt: each Lease call is abandoned after the request timeout,
//    and a leader's attempt after what is left of its renew deadline, so a hung apiserver
//    connection cannot keep a deposed replica believing it leads.

import type { Clock, Timer } from './clock.ts';

/** controller-runtime's defaults, also CloudNativePG's: lease 15 s, renew deadline 10 s, retry 2 s. */
export const LEASE_DURATION_MS = 15_000;
export const RENEW_DEADLINE_MS = 10_000;
export const RETRY_PERIOD_MS = 2_000;
/**
 * Each Lease call (get, create, update) is abandoned after 2 s, the retry period: one attempt's
 * three calls fit in the renew deadline, and renew deadline + one call (12 s) stays under the
 * lease duration (15 s), so even a call that was in flight when the leader gave up is over
 * before another replica may take over. main.ts also aborts the HTTP request itself at this bound
 * (api-deadline.ts).
 */
export const LEASE_REQUEST_TIMEOUT_MS = 2_000;

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
  requestTimeoutMs?: number;
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
  /** Numbers attempts; an abandoned attempt whose call answers late changes nothing. */
  #attempt = 0;

  constructor(options: LeaderElectionOptions) {
    this.#o = {
      leaseDurationMs: LEASE_DURATION_MS, renewDeadlineMs: RENEW_DEADLINE_MS, retryPeriodMs: RETRY_PERIOD_MS,
      requestTimeoutMs: LEASE_REQUEST_TIMEOUT_MS, ...options,
    };
    if (!(this.#o.renewDeadlineMs + this.#o.requestTimeoutMs <= this.#o.leaseDurationMs)) {
      throw new RangeError('renewDeadlineMs + requestTimeoutMs must not exceed leaseDurationMs');
    }
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
        const release = { ...this.#current, holder: '', leaseDurationSeconds: 1, renewTime: now };
        await this.#bounded(this.#o.api.update(release), this.#o.requestTimeoutMs, 'Lease update (release)');
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
    const attempt = ++this.#attempt;
    // A leader must know by its renew deadline whether it still leads: cut the attempt there.
    const budget = this.#state === 'leader' ? Math.max(0, this.#lastRenewMs + this.#o.renewDeadlineMs - this.#o.clock.nowMs()) : null;
    try {
      const run = this.#tryAcquireOrRenew(attempt);
      ok = budget === null ? await run : await this.#bounded(run, budget, 'Lease renewal');
    } catch (err) {
      this.#o.onError?.(err);
    }
    // stop() may have run while the API call was in flight.
    if (this.#stopped()) return;
    this.#attempt += 1;
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

  /** Rejects when `p` has not settled within `ms` on the elector's clock. */
  #bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = this.#o.clock.after(ms, () => reject(new Error(`${what} did not answer within ${ms} ms; giving up on this attempt (is the apiserver reachable?)`)));
      p.then((v) => { timer.cancel(); resolve(v); }, (err: unknown) => { timer.cancel(); reject(err); });
    });
  }

  /** One Lease call, bounded by the request timeout; throws if its attempt was abandoned meanwhile. */
  async #call<T>(attempt: number, what: string, fn: () => Promise<T>): Promise<T> {
    // After stop() no attempt may go on: it could take back the lease the release just gave up.
    if (this.#stopped()) throw new Error(`Lease ${what} not sent: the elector stopped`);
    const v = await this.#bounded(fn(), this.#o.requestTimeoutMs, `Lease ${what}`);
    if (attempt !== this.#attempt || this.#stopped()) throw new Error(`Lease ${what} answered after its attempt was abandoned`);
    return v;
  }

  async #tryAcquireOrRenew(attempt: number): Promise<boolean> {
    const api = this.#o.api;
    const now = this.#o.clock.nowMs();
    const nowIso = new Date(now).toISOString();
    const existing = await this.#call(attempt, 'get', () => api.get());
    if (existing === null) {
      const record: LeaseRecord = {
        holder: this.#o.identity, leaseDurationSeconds: Math.ceil(this.#o.leaseDurationMs / 1000),
        acquireTime: nowIso, renewTime: nowIso, transitions: 0,
      };
      const created = await this.#call(attempt, 'create', () => api.create(record));
      if (created) this.#current = await this.#call(attempt, 'get', () => api.get());
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
    const updated = await this.#call(attempt, 'update', () => api.update(record));
    if (updated) this.#current = await this.#call(attempt, 'get', () => api.get());
    return updated;
  }
}
