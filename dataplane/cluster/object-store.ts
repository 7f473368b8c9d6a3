// The S3 seam of the cluster: the few object operations the lease, the fallback batches and
// catch-up need. The cluster logic (lease.ts, fallback.ts, node.ts) only sees this interface, so
// the same code runs against a real S3 server (s3-store.ts, @aws-sdk/client-s3) and against the
// simulator's in-memory store (sim/sim-s3.ts), which injects errors, slowness and outages.
//
// Semantics every implementation keeps (AWS S3's, as Ceph RGW gives them when the ETag is sent
// unquoted):
//   - putIfAbsent: PUT with If-None-Match: * — creates the object only if no object has the key.
//   - putIfMatch:  PUT with If-Match: <etag> — replaces the object only if its current ETag is
//                  exactly `etag`. A missing object is a lost race too (AWS answers 404, RGW 412).
//   - A lost race is an answer ({ ok: false }), never an exception. Exceptions are transport
//     failures, 5xx, throttling and timeouts: the outcome of a failed PUT is unknown (it may have
//     landed), and callers re-read before they conclude anything.

/** An ETag as the store compares it: without quotes. */
export type ETag = string;

export interface StoredObject {
  body: Uint8Array;
  etag: ETag;
}

export type PutResult = { ok: true; etag: ETag } | { ok: false; reason: 'exists' | 'precondition' };

export interface ListedObject {
  key: string;
  size: number;
}

export interface ObjectStore {
  /** The object, or null when there is none. */
  get(key: string): Promise<StoredObject | null>;
  /** Creates `key` only if it does not exist (If-None-Match: *). */
  putIfAbsent(key: string, body: Uint8Array): Promise<PutResult>;
  /** Replaces `key` only if its current ETag is `etag` (If-Match). */
  putIfMatch(key: string, body: Uint8Array, etag: ETag): Promise<PutResult>;
  /** Every key under `prefix`, in lexicographic order (all pages). */
  list(prefix: string): Promise<ListedObject[]>;
  /** Deletes `key`; deleting a missing key is not an error. */
  delete(key: string): Promise<void>;
}

/** What a request did, for celer_s3_requests_total{kind,result}. */
export type S3RequestKind = 'get' | 'put_if_absent' | 'put_if_match' | 'list' | 'delete';
export type S3RequestResult = 'ok' | 'not_found' | 'precondition_failed' | 'error' | 'throttled' | 'timeout';
export type S3RequestObserver = (kind: S3RequestKind, result: S3RequestResult, ms: number) => void;

/** Raised by a store for a failure whose outcome is unknown (transport, 5xx, throttling, timeout). */
export class ObjectStoreError extends Error {
  override name = 'ObjectStoreError';
  readonly result: Exclude<S3RequestResult, 'ok' | 'not_found' | 'precondition_failed'>;
  constructor(message: string, result: Exclude<S3RequestResult, 'ok' | 'not_found' | 'precondition_failed'>, options?: { cause?: unknown }) {
    super(message, options);
    this.result = result;
  }
}
