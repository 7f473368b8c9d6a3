// `celer verify --data-dir DIR`: walks every shard's segments offline and checks EVERYTHING
// startup does not: every record's CRC32C, the gapless seqs and the BLAKE3 chain in every segment
// (sealed ones included), every sealed segment against the footer that vouches for it, and its
// sidecar against the footer's checksum. Names the first bad record. Reads with plain buffered
// I/O through the storage seam's read calls (no O_DIRECT needed, works on a copy anywhere); the
// power-loss tests run the same checks on the simulated disk (verifyShard).
import { open, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SEGMENT_HEADER_BYTES } from '../constants.ts';
import { equalBytes, hex, initHashing, ZERO_HASH } from '../storage/checksum.ts';
import { errorCode, type Disk } from '../storage/disk.ts';
import { META_FILE, META_FORMAT, type DataMeta } from '../storage/meta.ts';
import { scanSegment, type ByteSource } from '../storage/scan.ts';
import { sidecarPath } from '../storage/segment-index.ts';
import { decodeSegmentFooter, decodeSegmentHeader, parseSegmentFileName, ROUTING_CODES, SEGMENT_FOOTER_BYTES, segmentPath } from '../storage/segment.ts';
import { crc32c } from '../storage/checksum.ts';
import { shardDir } from '../shard/worker.ts';

/** The read calls verify needs (a Disk has them). */
export type VerifyFs = Pick<Disk, 'list' | 'readRange' | 'readFile'>;

export interface ShardReport {
  shard: number;
  segments: number;
  records: number;
  lastSeq: number;
  tip: string;
  tornTail: string | null;
  problem: string | null;
}

export interface VerifyReport {
  ok: boolean;
  shards: ShardReport[];
}

/** Buffered reads of real files. */
export const nodeFs: VerifyFs = {
  async list(dir) {
    try {
      return await readdir(dir);
    } catch (e) {
      if (errorCode(e) === 'ENOENT') return [];
      throw e;
    }
  },
  async readRange(path, offset, length) {
    const fh = await open(path, 'r');
    try {
      const buf = new Uint8Array(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      return buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  },
  async readFile(path) {
    try {
      return new Uint8Array(await readFile(path));
    } catch (e) {
      if (errorCode(e) === 'ENOENT') return null;
      throw e;
    }
  },
};

/** Verifies one shard's directory; `numShards`/`routing` are what the data directory says. */
export async function verifyShard(fs: VerifyFs, dir: string, shard: number, numShards: number, routing: number): Promise<ShardReport> {
  const entry: ShardReport = { shard, segments: 0, records: 0, lastSeq: 0, tip: hex(ZERO_HASH), tornTail: null, problem: null };
  const indexes = (await fs.list(dir)).map(parseSegmentFileName).filter((n): n is number => n !== null).sort((a, b) => a - b);
  let seq = 1;
  let tip: Uint8Array = ZERO_HASH;
  for (let i = 0; i < indexes.length && entry.problem === null; i++) {
    const index = indexes[i]!;
    const path = segmentPath(dir, index);
    const src: ByteSource = { read: (offset, length) => fs.readRange(path, offset, length) };
    if (i > 0 && index !== indexes[i - 1]! + 1) {
      entry.problem = `${path}: follows segment ${indexes[i - 1]}; a segment file is missing`;
      break;
    }
    const parsed = decodeSegmentHeader(await src.read(0, SEGMENT_HEADER_BYTES));
    if (!parsed.ok) {
      entry.problem = `${path}: segment header: ${parsed.why}${parsed.zero ? ' (a segment file always has a header: it was wiped or damaged)' : ''}`;
      break;
    }
    const h = parsed.header;
    if (h.shard !== shard || h.numShards !== numShards || h.routing !== routing || h.index !== index) {
      entry.problem = `${path}: header says shard ${h.shard} of ${h.numShards}, segment ${h.index}; ${META_FILE} says shard ${shard} of ${numShards}`;
      break;
    }
    if (i === 0) {
      seq = h.firstSeq;
      tip = h.prevHash;
    } else if (h.firstSeq !== seq || !equalBytes(h.prevHash, tip)) {
      entry.problem = `${path}: starts at seq ${h.firstSeq} linking to ${hex(h.prevHash).slice(0, 16)}…, but the previous segment ends before seq ${seq} with hash ${hex(tip).slice(0, 16)}…`;
      break;
    }
    const last = i === indexes.length - 1;
    const fp = decodeSegmentFooter(await src.read(h.sizeBytes - SEGMENT_FOOTER_BYTES, SEGMENT_FOOTER_BYTES));
    if (!fp.ok && !fp.zero) {
      entry.problem = `${path}: footer: ${fp.why}`;
      break;
    }
    if (!fp.ok && !last && h.truncatedAt === 0) {
      entry.problem = `${path}: is followed by another segment but was never sealed (no footer)`;
      break;
    }
    const footer = fp.ok && h.truncatedAt === 0 ? fp.footer : null;
    const res = await scanSegment(src, h, { seq, prevHash: tip }, () => {}, footer?.recordsEnd ?? null);
    entry.segments++;
    entry.records += res.records;
    seq = res.nextSeq;
    tip = res.tipHash;
    if (res.corrupt) {
      entry.problem = `${path} offset ${res.stop?.offset ?? res.end} (first bad record, after seq ${seq - 1}): ${res.stop?.why ?? 'durable records are missing'}`;
    } else if (footer !== null) {
      if (res.stop) entry.problem = `${path} offset ${res.stop.offset}: ${res.stop.why} (inside a sealed segment)`;
      else if (res.end !== footer.recordsEnd || res.nextSeq - 1 !== footer.lastSeq || !equalBytes(res.tipHash, footer.lastHash) || res.records !== footer.records) {
        entry.problem = `${path}: its records (end ${res.end}, last seq ${res.nextSeq - 1}, ${res.records} records) differ from what its footer vouches for (end ${footer.recordsEnd}, last seq ${footer.lastSeq}, ${footer.records} records)`;
      } else {
        const summary = await fs.readRange(sidecarPath(path), 0, footer.summaryBytes).catch(() => null);
        if (summary === null || summary.length !== footer.summaryBytes) entry.tornTail = `${sidecarPath(path)} is missing (derived; rebuilt at the next start)`;
        else if (crc32c(summary.subarray(4)) !== footer.summaryCrc) entry.tornTail = `${sidecarPath(path)} does not match its segment's footer (derived; rebuilt at the next start)`;
      }
    } else if (res.stop) {
      entry.tornTail = `${path} offset ${res.stop.offset}: ${res.stop.why} (unacknowledged tail; discarded at the next start)`;
    }
    if (h.truncatedAt > 0 && entry.problem === null) entry.tornTail = `${path}: a truncation after seq ${seq - 1} was interrupted (finished at the next start)`;
    if (h.truncatedAt > 0) break;
  }
  entry.lastSeq = seq - 1;
  entry.tip = hex(tip);
  return entry;
}

export async function verifyDataDir(dataDir: string, progress: (msg: string) => void, fs: VerifyFs = nodeFs): Promise<VerifyReport> {
  await initHashing();
  const metaPath = join(dataDir, META_FILE);
  const metaBytes = await fs.readFile(metaPath);
  if (metaBytes === null) throw new Error(`${dataDir} is not a Celer data directory (no ${META_FILE})`);
  const meta = JSON.parse(new TextDecoder().decode(metaBytes)) as DataMeta;
  if (meta.format !== META_FORMAT) throw new Error(`${dataDir} holds storage format ${meta.format}; this celer verify reads format ${META_FORMAT}`);
  const report: VerifyReport = { ok: true, shards: [] };
  for (let shard = 0; shard < meta.numShards; shard++) {
    const entry = await verifyShard(fs, shardDir(dataDir, shard), shard, meta.numShards, ROUTING_CODES[meta.routing]);
    report.shards.push(entry);
    if (entry.problem !== null) report.ok = false;
    progress(
      `shard ${shard}: ${entry.problem ? 'BAD' : 'ok'}  ${entry.segments} segments, ${entry.records} records, last seq ${entry.lastSeq}, chain tip ${entry.tip.slice(0, 16)}…` +
        (entry.problem ? `\n  first bad record: ${entry.problem}` : '') +
        (entry.tornTail ? `\n  note: ${entry.tornTail}` : ''),
    );
  }
  return report;
}
