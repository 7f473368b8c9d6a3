// Cluster identity (`celer serve --cluster-id ID`): a recreated cluster that reuses an old data
// directory (a PVC left behind) or an old S3 prefix must not silently join the old data. The id
// is recorded in two places and compared on every start, before the node takes part in elections:
//
//   - the data directory's celer.json (`clusterId`), adopted on the first start with an id and
//     written durably (tmp file, fsync, rename, directory fsync), like the file itself;
//   - `<prefix>cluster/identity.json` in S3, created only if absent (If-None-Match: *), so two
//     clusters racing for one prefix get one winner.
//
// A mismatch refuses to start with error 9300 and says how to resolve it. celer.json also
// records the bucket and prefix whose identity object was verified, so later starts need no S3
// request (a node restarted while S3 is unreachable still starts); a changed bucket or prefix is
// checked again.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, META_FILE, writeMetaFile } from '../storage/meta.ts';
import type { ObjectStore } from './object-store.ts';

export const IDENTITY_KEY = 'cluster/identity.json';
/** The startup refusal of a data directory or S3 prefix that belongs to another cluster. */
export const IDENTITY_MISMATCH_CODE = 9300;
const CLUSTER_ID_RE = /^[A-Za-z0-9._-]{1,128}$/;

export class IdentityMismatchError extends ConfigError {
  readonly code = IDENTITY_MISMATCH_CODE;
  constructor(message: string) {
    super(`error ${IDENTITY_MISMATCH_CODE}: ${message}`);
  }
}

export function validateClusterId(id: string): void {
  if (!CLUSTER_ID_RE.test(id)) throw new ConfigError(`--cluster-id must be 1 to 128 letters, digits, '.', '_' or '-' (got "${id}")`);
}

interface MetaWithIdentity {
  clusterId?: string;
  /** The S3 location whose identity object matched clusterId. */
  identityVerifiedAt?: { bucket: string; prefix: string };
  [k: string]: unknown;
}

const writeMeta = (dir: string, meta: MetaWithIdentity): void => writeMetaFile(dir, meta);

function readMeta(dir: string): MetaWithIdentity {
  return JSON.parse(readFileSync(join(dir, META_FILE), 'utf8')) as MetaWithIdentity;
}

/**
 * Compares the data directory's cluster id with `clusterId`. Returns whether the identity object
 * at `s3` was already verified for this id (then the S3 check can be skipped). A directory without
 * an id is not claimed here: markS3Verified records the id once S3 agrees, so a start that S3
 * refuses leaves the directory as it was (and the way out the refusal names still works).
 */
export function checkDiskIdentity(dir: string, clusterId: string, s3: { bucket: string; prefix: string }): { verifiedInS3: boolean } {
  const meta = readMeta(dir);
  if (meta.clusterId === undefined) return { verifiedInS3: false };
  if (meta.clusterId !== clusterId) {
    throw new IdentityMismatchError(
      `refusing to start: the data directory ${dir} belongs to cluster ${meta.clusterId}, but this node was started with --cluster-id ${clusterId}. ` +
        `It holds another cluster's data (a volume left from a deleted cluster?). Delete the volume (PVC) to start empty, ` +
        `or start with --cluster-id ${meta.clusterId} to run the old cluster again.`,
    );
  }
  const v = meta.identityVerifiedAt;
  return { verifiedInS3: v !== undefined && v.bucket === s3.bucket && v.prefix === s3.prefix };
}

/** Records that `s3`'s identity object names `clusterId`, and adopts it as this directory's id if it has none. */
export function markS3Verified(dir: string, s3: { bucket: string; prefix: string }, clusterId: string): void {
  const meta = readMeta(dir);
  if (meta.clusterId !== undefined && meta.clusterId !== clusterId) {
    throw new IdentityMismatchError(`refusing to start: the data directory ${dir} belongs to cluster ${meta.clusterId}, not ${clusterId} (it changed while this node started)`);
  }
  writeMeta(dir, { ...meta, clusterId, identityVerifiedAt: { bucket: s3.bucket, prefix: s3.prefix } });
}

/** Creates the S3 identity object if absent; refuses when it names another cluster. */
export async function checkS3Identity(store: ObjectStore, clusterId: string, where: string): Promise<void> {
  const body = new TextEncoder().encode(JSON.stringify({ clusterId, createdAt: new Date().toISOString() }) + '\n');
  let existing = await store.get(IDENTITY_KEY);
  if (existing === null) {
    const put = await store.putIfAbsent(IDENTITY_KEY, body);
    if (put.ok) return;
    existing = await store.get(IDENTITY_KEY);
    if (existing === null) throw new ConfigError(`${where}${IDENTITY_KEY} was created and removed while this node started; start again`);
  }
  let other: string | undefined;
  try {
    other = (JSON.parse(new TextDecoder().decode(existing.body)) as { clusterId?: string }).clusterId;
  } catch {
    other = undefined;
  }
  if (other !== clusterId) {
    throw new IdentityMismatchError(
      `refusing to start: ${where} belongs to cluster ${other ?? '(unreadable identity object)'}, but this node was started with --cluster-id ${clusterId}. ` +
        `Another cluster's lease and data live there (an S3 prefix reused by a recreated cluster?). Use a new S3 prefix, ` +
        `delete the old cluster's objects under it (${IDENTITY_KEY}, cluster/lease.json, cluster/fallback/) if that cluster is gone for good, ` +
        `or start with --cluster-id ${other ?? '<the old id>'} to run the old cluster again.`,
    );
  }
}
