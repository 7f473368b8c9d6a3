// The data directory's identity file (celer.json): the shard count and routing rule chosen when
// the data was first created (SPEC §2), fixed for the life of the data. A node started with other
// values refuses, because every aggregate would route to a different shard than its history.
// (The lock that keeps two processes off one directory is storage/lock.ts.)
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import type { Routing } from './segment.ts';

export const META_FILE = 'celer.json';
/** Format of the data directory: 2 = record and segment format 2 (storage/record.ts, segment.ts). */
export const META_FORMAT = 2;
/** Largest shard count: one worker per core; beyond a few hundred shards per node nothing is gained. */
export const SHARDS_MAX = 1024;

export interface DataMeta {
  format: number;
  /** Size of segments when the data was created; each segment's own size is in its header. */
  segmentBytes?: number;
  numShards: number;
  routing: Routing;
  nodeId: string;
  createdAt: string;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** A node id (UUID text) as the 16 bytes records carry. */
export function nodeIdBytes(id: string): Uint8Array {
  const hexs = id.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hexs)) throw new ConfigError(`node id ${id} is not a UUID`);
  return Uint8Array.from(Buffer.from(hexs, 'hex'));
}

export function isRouting(s: string): s is Routing {
  return s === 'org' || s === 'type' || s === 'id';
}

/**
 * Reads the identity of `dir`, or creates it from the requested values (defaults applied).
 * `requested` fields are undefined when the user did not pass the flag.
 */
export function openDataMeta(dir: string, requested: { numShards?: number | undefined; routing?: Routing | undefined }, defaults: { numShards: number; routing: Routing }): DataMeta {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, META_FILE);
  if (existsSync(path)) {
    let meta: DataMeta;
    try {
      meta = JSON.parse(readFileSync(path, 'utf8')) as DataMeta;
    } catch (e) {
      throw new ConfigError(`${path} is not valid JSON (${(e as Error).message}); it records the shard count and routing rule of this data and must not be edited`);
    }
    if (meta.format !== META_FORMAT) {
      throw new ConfigError(
        meta.format < META_FORMAT
          ? `refusing to start: ${dir} holds data in storage format ${meta.format}, written by an older Celer; this version reads storage format ${META_FORMAT} only (records hashed by content, sealed-segment footers). ` +
              'Start the Celer version that wrote it, or move the directory aside and start on an empty one.'
          : `refusing to start: ${dir} holds data in storage format ${meta.format}, newer than this Celer (format ${META_FORMAT}); upgrade Celer`,
      );
    }
    const diffs: string[] = [];
    if (requested.numShards !== undefined && requested.numShards !== meta.numShards) diffs.push(`--shards ${requested.numShards} (the data has ${meta.numShards})`);
    if (requested.routing !== undefined && requested.routing !== meta.routing) diffs.push(`--routing ${requested.routing} (the data has ${meta.routing})`);
    if (diffs.length > 0) {
      throw new ConfigError(
        `refusing to start: ${dir} was created with --shards ${meta.numShards} --routing ${meta.routing}, but this node was started with ${diffs.join(' and ')}. ` +
          `The shard count and routing rule are fixed when the data is first created, because every aggregate's history lives on the shard its key routed to. ` +
          `Start with --shards ${meta.numShards} --routing ${meta.routing} (or leave both out), or use a new data directory.`,
      );
    }
    return meta;
  }
  const numShards = requested.numShards ?? defaults.numShards;
  if (!Number.isInteger(numShards) || numShards < 1 || numShards > SHARDS_MAX) throw new ConfigError(`--shards must be an integer 1..${SHARDS_MAX}; got ${numShards}`);
  const meta: DataMeta = { format: META_FORMAT, numShards, routing: requested.routing ?? defaults.routing, nodeId: randomUUID(), createdAt: new Date().toISOString() };
  writeMetaFile(dir, meta);
  return meta;
}

/** Replaces `dir`/celer.json durably: a tmp file, fsync, rename, directory fsync (a crash leaves the old or the new file). */
export function writeMetaFile(dir: string, meta: object): void {
  const path = join(dir, META_FILE);
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, JSON.stringify(meta, null, 2) + '\n');
  const fd = openSync(tmp, 'r');
  fsyncSync(fd);
  closeSync(fd);
  renameSync(tmp, path);
  const dfd = openSync(dir, 'r');
  fsyncSync(dfd);
  closeSync(dfd);
}
