// Waiting on a condition instead of sleeping: a test that sleeps a fixed time passes when the
// machine happens to be fast enough and fails (or, worse, passes without checking anything) when
// it is not. These poll the condition itself and fail with a message once the deadline passes.

/** How often a condition is re-checked. Short enough to add little to a test's run time. */
const POLL_INTERVAL_MS = 10;

/**
 * Resolves with the first truthy value of `probe` (sync or async), re-checked every 10 ms;
 * rejects naming `what` and the last value seen once `timeoutMs` has passed. A probe that throws
 * counts as "not yet" (a server still starting), and its last error is in the message.
 */
export async function waitUntil<T>(what: string, probe: () => T | Promise<T>, timeoutMs = 10_000): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await probe();
      if (v) return v as NonNullable<T>;
      last = v;
    } catch (e) {
      last = e;
    }
    if (performance.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last seen: ${last instanceof Error ? last.message : String(last)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_INTERVAL_MS));
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
export const now = (): number => performance.now();
