// Writes that land once however often they are retried (SPEC §3, exactly-once).
//
// The server keeps, per (aggregate, clientId), the highest clientSeq that landed. So a retry
// must resend the same clientId and clientSeq, and the answers mean:
//   success         the write landed now;
//   2002            an earlier attempt already landed (and is committed): done;
//   2013            an earlier attempt is still in flight: wait, then ask again;
//   2003            the guard failed: someone else wrote; the caller must re-read and re-decide
//                   (and take a new clientSeq);
//   timeout / lost  unknown: ask again;
//   2007            not acknowledged (replication failed, or the leader was fenced mid-write):
//                   unknown: ask again (after a failover the new leader answers 2002 if it landed).
// Each attempt goes through the pool, which itself rides out a failover (failoverTimeoutMs:
// refused connects, 2011, 2012) for requests that certainly did not land; what it throws after
// a write was sent (timeout, lost connection, 2007) comes back here and is asked again with the
// same clientSeq.
// The subtlety: guards are checked before idempotency. If an attempt of a conditional write
// (exact version or 'no_stream') landed but its answer was lost, the retry fails the guard (the
// version moved, by our own write) and gets 2003, not 2002. Taking that 2003 at face value and
// re-deciding would apply the intent twice. So after an unknown outcome, a 2003 is checked: the
// batch right after the guard's version is read; if it carries our clientId it is our write
// (2002 in effect), if another writer's it is a real conflict, and if there is none yet (our
// attempt not committed) we wait and ask again.
import {
  AlreadyAppliedError,
  AggregateNotFoundError,
  ConnectFailedError,
  ConnectionError,
  DuplicateInFlightError,
  NotAcknowledgedError,
  NotLeaderError,
  RequestQueueFullError,
  ServerBusyError,
  ShardUnavailableError,
  TimeoutError,
  WrongExpectedVersionError,
} from './errors.ts';
import { badRequest, checkedKey, toClientId, toGuard, toU64 } from './encode.ts';
import type { AggregateKey, KeyPart } from './key.ts';
import type { AppendResult, EventInput, ExpectedVersion, ReadOptions, ReadPage, WriteInput, WriteResult } from './types.ts';
import { Expect } from './wire.ts';

export interface BackoffOptions {
  /** First delay. */
  initialMs?: number;
  /** Ceiling of any one delay. */
  maxMs?: number;
  /** Growth per attempt. */
  multiplier?: number;
}

export interface ExactlyOnceOptions {
  /** Attempts in all, the first included; the last error is thrown when they are spent. */
  maxAttempts?: number;
  backoff?: BackoffOptions;
  /** Waits between attempts (default: a timer). Tests pass one that records the delays. */
  sleep?: (ms: number) => Promise<void>;
  /** Jitter source in [0, 1) (default Math.random). */
  random?: () => number;
}

export interface AppendExactlyOnceOptions extends ExactlyOnceOptions {
  /** Stable per logical writer; defaults to the client's clientId. Required one way or the other. */
  clientId?: KeyPart;
  /** This write's sequence number (≥ 1), the same on every attempt. */
  clientSeq: bigint | number;
  expectedVersion?: ExpectedVersion;
}

export type AppendExactlyOnceResult = (AppendResult & { alreadyApplied: false; attempts: number }) | { alreadyApplied: true; attempts: number };
export type WriteExactlyOnceResult = (WriteResult & { alreadyApplied: false; attempts: number }) | { alreadyApplied: true; attempts: number };

export const EXACTLY_ONCE_DEFAULTS = {
  /** 10 attempts reach the delay ceiling and then ride out about 4 s more at it: a failover (SPEC §7: under 2 s) with room to spare. */
  maxAttempts: 10,
  /** 25 ms: about a group-commit round with replication, so an in-flight duplicate (2013) has usually resolved. */
  initialMs: 25,
  /** 2 s: the failover target; waiting longer than that between tries only adds latency. */
  maxMs: 2_000,
  multiplier: 2,
} as const;

/** Upper bound on maxAttempts: retrying forever hides an outage from the caller. */
const MAX_ATTEMPTS_MAX = 1_000;

/** What a client must offer the helper (CelerClient does; tests pass a fake). */
export interface ExactlyOnceTarget {
  readonly defaultClientId: bigint | undefined;
  write(input: WriteInput): Promise<WriteResult>;
  read(key: AggregateKey, opts?: ReadOptions): Promise<ReadPage>;
}

/** Errors after which asking again is safe, because the same clientSeq is sent. */
function isRetryable(err: unknown): boolean {
  return (
    err instanceof TimeoutError ||
    err instanceof ConnectionError ||
    err instanceof DuplicateInFlightError ||
    err instanceof NotAcknowledgedError ||
    err instanceof ServerBusyError ||
    err instanceof NotLeaderError ||
    err instanceof ShardUnavailableError ||
    err instanceof RequestQueueFullError
  );
}

/** Errors after which an earlier attempt may have landed (or is known to be in flight). */
function leavesOutcomeOpen(err: unknown): boolean {
  return (
    err instanceof TimeoutError ||
    (err instanceof ConnectionError && !(err instanceof ConnectFailedError)) ||
    err instanceof DuplicateInFlightError ||
    err instanceof NotAcknowledgedError
  );
}

/** The delay before attempt `attempt + 1`: exponential, capped, jittered into its upper half. */
export function backoffDelayMs(attempt: number, b: Required<BackoffOptions>, random: () => number): number {
  const d = Math.min(b.maxMs, b.initialMs * b.multiplier ** (attempt - 1));
  return d / 2 + (d / 2) * random();
}

function positiveInt(v: number | undefined, def: number, max: number, what: string): number {
  if (v === undefined) return def;
  if (!Number.isInteger(v) || v < 1 || v > max) throw badRequest(`${what} must be an integer 1..${max}; got ${String(v)}`);
  return v;
}

function nonNegative(v: number | undefined, def: number, what: string): number {
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw badRequest(`${what} must be a finite number >= 0; got ${String(v)}`);
  return v;
}

const timerSleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

type Verdict = 'ours' | 'theirs' | 'none';

/**
 * After a 2003 that may be our own earlier landing: for each conditional write, is the batch
 * right after its guard version ours, another writer's, or not there (yet)?
 */
async function whoLandedAfterGuard(target: ExactlyOnceTarget, clientId: bigint, input: WriteInput): Promise<Verdict | 'unknown'> {
  let verdict: Verdict = 'none';
  for (const w of input.writes) {
    const guard = toGuard(w.expectedVersion, 'expectedVersion');
    if (guard.mode !== Expect.Exact && guard.mode !== Expect.NoStream) continue;
    const next = guard.version + 1n;
    let page: ReadPage;
    try {
      page = await target.read(w.key, { from: next, to: next });
    } catch (err) {
      if (err instanceof AggregateNotFoundError) continue;
      if (isRetryable(err)) return 'unknown';
      throw err;
    }
    const first = page.batches[0];
    if (first === undefined || first.fromVersion !== next) continue;
    // A multi-aggregate write lands all or nothing: one of ours proves the whole write landed.
    if (first.clientId === clientId) return 'ours';
    verdict = 'theirs';
  }
  return verdict;
}

/**
 * Sends a write until it has a definite outcome, keeping every clientSeq across attempts.
 * Resolves with the result, or `{ alreadyApplied: true }` when an earlier attempt (or an earlier
 * run of this writer) landed it. Throws WrongExpectedVersionError on a real conflict, any
 * non-retryable error at once, and the last error once maxAttempts are spent.
 */
export async function writeExactlyOnce(target: ExactlyOnceTarget, input: WriteInput, opts: ExactlyOnceOptions = {}): Promise<WriteExactlyOnceResult> {
  if (input === null || typeof input !== 'object' || !Array.isArray(input.writes)) throw badRequest('write input must be { clientId, writes: [...] }');
  const clientId = toClientId(input.clientId, target.defaultClientId);
  if (clientId === 0n) {
    throw badRequest('exactly-once writes need a clientId: a stable id per logical writer (the same across restarts), given per write or in connect options');
  }
  input.writes.forEach((w, i) => {
    checkedKey(w.key, `writes[${i}].key`);
    if (w.clientSeq === undefined || toU64(w.clientSeq, `writes[${i}].clientSeq`) === 0n) {
      throw badRequest(`writes[${i}].clientSeq must be >= 1 for an exactly-once write (0 or absent disables deduplication)`);
    }
  });
  const maxAttempts = positiveInt(opts.maxAttempts, EXACTLY_ONCE_DEFAULTS.maxAttempts, MAX_ATTEMPTS_MAX, 'maxAttempts');
  const backoff: Required<BackoffOptions> = {
    initialMs: nonNegative(opts.backoff?.initialMs, EXACTLY_ONCE_DEFAULTS.initialMs, 'backoff.initialMs'),
    maxMs: nonNegative(opts.backoff?.maxMs, EXACTLY_ONCE_DEFAULTS.maxMs, 'backoff.maxMs'),
    multiplier: nonNegative(opts.backoff?.multiplier, EXACTLY_ONCE_DEFAULTS.multiplier, 'backoff.multiplier'),
  };
  const sleep = opts.sleep ?? timerSleep;
  const random = opts.random ?? Math.random;
  const request: WriteInput = { clientId, writes: input.writes };

  let outcomeOpen = false;
  for (let attempt = 1; ; attempt++) {
    let err: unknown;
    try {
      const result = await target.write(request);
      return { ...result, alreadyApplied: false, attempts: attempt };
    } catch (e) {
      err = e;
    }
    if (err instanceof AlreadyAppliedError) return { alreadyApplied: true, attempts: attempt };
    if (err instanceof WrongExpectedVersionError) {
      if (!outcomeOpen) throw err;
      const verdict = await whoLandedAfterGuard(target, clientId, request);
      if (verdict === 'ours') return { alreadyApplied: true, attempts: attempt };
      if (verdict === 'theirs') throw err;
      // 'none' or 'unknown': our earlier attempt may not be committed yet; ask again.
    } else if (!isRetryable(err)) {
      throw err;
    }
    if (leavesOutcomeOpen(err)) outcomeOpen = true;
    if (attempt >= maxAttempts) throw err;
    await sleep(backoffDelayMs(attempt, backoff, random));
  }
}

/** appendExactlyOnce for one aggregate; see writeExactlyOnce. */
export async function appendExactlyOnce(
  target: ExactlyOnceTarget,
  key: AggregateKey,
  events: EventInput[],
  opts: AppendExactlyOnceOptions,
): Promise<AppendExactlyOnceResult> {
  if (opts === null || typeof opts !== 'object') throw badRequest('appendExactlyOnce needs options { clientId, clientSeq }');
  const input: WriteInput = { writes: [{ key, events, expectedVersion: opts.expectedVersion, clientSeq: opts.clientSeq }] };
  if (opts.clientId !== undefined) input.clientId = opts.clientId;
  const r = await writeExactlyOnce(target, input, opts);
  if (r.alreadyApplied) return r;
  return { ...r.results[0]!, alreadyApplied: false, attempts: r.attempts };
}
