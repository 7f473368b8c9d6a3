// Exponential backoff with full jitter, for reconnecting watches and retrying API calls.

export interface BackoffPolicy {
  initialMs: number;
  maxMs: number;
  factor: number;
}

/**
 * Watch reconnects: 1 s, doubling to 30 s, the bounds client-node 2.x uses for watch timeouts;
 * long enough not to hammer an apiserver that is restarting, short enough to notice it is back.
 */
export const WATCH_BACKOFF: BackoffPolicy = { initialMs: 1_000, maxMs: 30_000, factor: 2 };

/** The delay before retry number `attempt` (0-based), jittered to [delay/2, delay]. */
export function backoffDelayMs(policy: BackoffPolicy, attempt: number, random: () => number = Math.random): number {
  const raw = Math.min(policy.maxMs, policy.initialMs * policy.factor ** Math.min(attempt, 60));
  return Math.round(raw / 2 + (raw / 2) * random());
}
