// The shard feed's live tail from memory: the records a shard placed most recently (leader and
// replica alike), in seq order, at most `bytesMax` (FEED_TAIL_SHARE of the shard's budget), the
// oldest dropped first. Subscriptions and watches at the tail read from here, never the disk; a
// reader behind it reads the log. Entries above the durable seq go when the log drops them
// (dropAbove), so a seq never names a record that was cut. Owned by one Shard, on its worker thread.
import type { RecordAt } from '../storage/segment-set.ts';

export class FeedTail {
  private entries: (RecordAt | undefined)[] = [];
  private head = 0;
  private bytes = 0;
  private readonly bytesMax: number;

  constructor(bytesMax: number) {
    this.bytesMax = bytesMax;
  }

  /** A record was placed (leader or replica): it becomes the newest entry. */
  placed(rec: RecordAt): void {
    this.entries.push(rec);
    this.bytes += rec.header.length;
    while (this.bytes > this.bytesMax && this.head < this.entries.length - 1) {
      this.bytes -= this.entries[this.head]!.header.length;
      this.entries[this.head++] = undefined;
    }
    if (this.head > 4096 && this.head * 2 > this.entries.length) {
      this.entries = this.entries.slice(this.head);
      this.head = 0;
    }
  }

  /** The log dropped what it held after `seq` (never durable, or truncated): so does the feed tail. */
  dropAbove(seq: number): void {
    while (this.entries.length > this.head) {
      const last = this.entries[this.entries.length - 1]!;
      if (last.header.firstSeq + last.header.batchCount - 1 <= seq) break;
      this.entries.pop();
      this.bytes -= last.header.length;
    }
  }

  /** Records from the one holding `from` up to `to` and about `maxBytes`, if the feed tail holds `from`; else null (read the log). */
  read(from: number, to: number, maxBytes: number): RecordAt[] | null {
    const t = this.entries;
    let lo = this.head;
    let hi = t.length - 1;
    if (lo > hi || from < t[lo]!.header.firstSeq) return null;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (t[mid]!.header.firstSeq <= from) lo = mid;
      else hi = mid - 1;
    }
    const first = t[lo]!.header;
    if (from > first.firstSeq + first.batchCount - 1) return null;
    const out: RecordAt[] = [];
    let bytes = 0;
    for (let i = lo; i < t.length; i++) {
      const r = t[i]!;
      if (r.header.firstSeq > to) break;
      out.push(r);
      bytes += r.header.length;
      if (bytes >= maxBytes) break;
    }
    return out;
  }
}
