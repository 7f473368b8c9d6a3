// An S3 bucket in memory with exactly the conditional semantics of dataplane/cluster/object-store.ts
// (putIfAbsent = If-None-Match: *, putIfMatch = If-Match with unquoted ETags, a missing object
// is a lost race, list sorted by key, delete of a missing key is fine), and seeded faults:
//   - errors whose outcome is unknown: the request applied (or not) and the answer is an
//     ObjectStoreError anyway;
//   - throttling (ObjectStoreError 'throttled', nothing applied);
//   - slow answers (a long virtual delay), and timeouts: the caller gets 'timeout' at its
//     deadline while the request may still land later;
//   - outages: every request in the window fails with 'error' and applies nothing.
// Every answer arrives through the virtual clock, never synchronously, and only to a live
// incarnation of the node that asked (NodeLife), after its pause.
import { ObjectStoreError, type ETag, type ListedObject, type ObjectStore, type PutResult, type StoredObject } from '../cluster/object-store.ts';
import type { NodeLife, Scheduler } from './scheduler.ts';

export interface S3Faults {
  /** Probability that a request fails with an error after it applied (puts and deletes: the outcome is unknown). */
  errorAfterP: number;
  /** Probability that a request fails before it applies. */
  errorBeforeP: number;
  throttleP: number;
  /** Probability of a slow answer (100..1500 ms extra). */
  slowP: number;
  /** Probability of a timeout: the caller hears 'timeout' after `timeoutMs`, the request lands (or not) later. */
  timeoutP: number;
  /** Outage windows in global virtual ms: every request fails. */
  outages: { from: number; to: number }[];
}

export const NO_S3_FAULTS: S3Faults = { errorAfterP: 0, errorBeforeP: 0, throttleP: 0, slowP: 0, timeoutP: 0, outages: [] };

/** The S3 request deadline the simulated client keeps (s3-store.ts has one too). */
export const SIM_S3_TIMEOUT_MS = 1000;

export class SimBucket {
  readonly objects = new Map<string, StoredObject>();
  private etagN = 0;
  requests = 0;
  faults: S3Faults = { ...NO_S3_FAULTS, outages: [] };
  private readonly sched: Scheduler;
  private readonly rng: () => number;
  private readonly trace: (e: string) => void;

  constructor(sched: Scheduler, rng: () => number, trace: (e: string) => void) {
    this.sched = sched;
    this.rng = rng;
    this.trace = trace;
  }

  inOutage(): boolean {
    const t = this.sched.now;
    return this.faults.outages.some((o) => t >= o.from && t < o.to);
  }

  private nextEtag(): ETag {
    return `etag-${++this.etagN}`;
  }

  /** A store as one node incarnation sees it. */
  client(who: string, life: NodeLife, inc: number): ObjectStore {
    const req = <T>(kind: string, key: string, apply: () => T): Promise<T> =>
      new Promise<T>((resolve, reject) => {
        this.requests++;
        const f = this.faults;
        const r = this.rng();
        const answer = (fn: () => void, delay: number): void => {
          this.sched.after(delay, () => life.run(inc, fn));
        };
        const fail = (result: 'error' | 'throttled' | 'timeout', why: string, delay: number): void => {
          this.trace(`s3 ${who} ${kind} ${key} -> ${result} (${why})`);
          answer(() => reject(new ObjectStoreError(`simulated S3: ${kind} ${key}: ${why}`, result)), delay);
        };
        const lat = (): number => 1 + this.rng() * 8;
        if (this.inOutage()) return fail('error', 'outage', lat());
        if (r < f.throttleP) return fail('throttled', 'SlowDown', lat());
        if (r < f.throttleP + f.errorBeforeP) return fail('error', '503 before applying', lat());
        const timedOut = this.rng() < f.timeoutP;
        const slow = this.rng() < f.slowP ? 100 + this.rng() * 1400 : 0;
        const errAfter = this.rng() < f.errorAfterP;
        const applyAt = lat() + slow + (timedOut ? this.rng() * 2 * SIM_S3_TIMEOUT_MS : 0);
        if (timedOut) fail('timeout', 'no answer before the deadline', SIM_S3_TIMEOUT_MS);
        this.sched.after(applyAt, () => {
          if (this.inOutage()) {
            if (!timedOut) fail('error', 'outage', lat());
            return;
          }
          const out = apply();
          this.trace(`s3 ${who} ${kind} ${key} applied${timedOut ? ' (after the caller timed out)' : ''}${errAfter ? ' (answer lost)' : ''}: ${JSON.stringify(out, (_k, v: unknown) => (v instanceof Uint8Array ? v.length : v))}`);
          if (timedOut) return;
          if (errAfter) return fail('error', '500 after applying', lat());
          answer(() => resolve(out), lat());
        });
      });

    const store: ObjectStore = {
      get: (key) =>
        req('get', key, () => {
          const o = this.objects.get(key);
          return o === undefined ? null : { body: o.body.slice(), etag: o.etag };
        }),
      putIfAbsent: (key, body) => {
        const copy = body.slice();
        return req('putIfAbsent', key, (): PutResult => {
          if (this.objects.has(key)) return { ok: false, reason: 'exists' };
          const etag = this.nextEtag();
          this.objects.set(key, { body: copy, etag });
          return { ok: true, etag };
        });
      },
      putIfMatch: (key, body, etag) => {
        const copy = body.slice();
        return req('putIfMatch', key, (): PutResult => {
          const cur = this.objects.get(key);
          if (cur === undefined || cur.etag !== etag) return { ok: false, reason: 'precondition' };
          const next = this.nextEtag();
          this.objects.set(key, { body: copy, etag: next });
          return { ok: true, etag: next };
        });
      },
      list: (prefix) =>
        req('list', prefix, (): ListedObject[] =>
          [...this.objects.entries()]
            .filter(([k]) => k.startsWith(prefix))
            .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
            .map(([key, o]) => ({ key, size: o.body.length })),
        ),
      delete: (key) =>
        req('delete', key, () => {
          this.objects.delete(key);
        }),
    };
    return store;
  }
}
