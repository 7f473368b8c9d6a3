// Reconcile runs every few seconds during a rollout and would repeat the same Event ("waiting
// for FollowerCaughtUp") each time. This filter lets an identical event through once per window.
// The controller applies it to every pass's events before the executor records them; an event's
// identity is its cluster, type and `key` (reconcile sets one for gate waits, whose messages quote
// the moving lag), else its reason and message.

/** Ten minutes: a stall is re-announced often enough to notice, rarely enough not to flood. */
export const EVENT_REPEAT_MS = 600_000;
/** Bound on remembered events, so a long-lived operator does not grow without limit. */
export const EVENT_MEMORY_MAX = 4_096;

export class EventDedup {
  #seen = new Map<string, number>();

  /** True when an event with this identity has not been let through in the last window. */
  admit(key: string, nowMs: number): boolean {
    const last = this.#seen.get(key);
    if (last !== undefined && nowMs - last < EVENT_REPEAT_MS) return false;
    this.#seen.delete(key);
    this.#seen.set(key, nowMs);
    if (this.#seen.size > EVENT_MEMORY_MAX) {
      const oldest = this.#seen.keys().next().value;
      if (oldest !== undefined) this.#seen.delete(oldest);
    }
    return true;
  }
}

/** The identity of a cluster's event for EventDedup. */
export function eventKey(clusterUid: string, event: { type: string; reason: string; message: string; key?: string }): string {
  return `${clusterUid}/${event.type}/${event.key ?? `${event.reason}/${event.message}`}`;
}
