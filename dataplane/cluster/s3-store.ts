// The ObjectStore on a real S3 server, with @aws-sdk/client-s3. The semantics are object-store.ts's;
// this file only maps them onto S3 requests and S3's answers back onto them:
//   - putIfAbsent: PUT If-None-Match: *   412 → { ok: false, reason: 'exists' }
//   - putIfMatch:  PUT If-Match: <etag>   412, or 404 for a missing key → { ok: false, reason: 'precondition' }
//   - 409 ConditionalRequestConflict (AWS: a concurrent conditional write was in progress) says
//     nothing about whether ours landed: an ObjectStoreError('error'), like any other failure.
//   - 503 / 429 / SlowDown and the other throttling codes → ObjectStoreError('throttled');
//     our per-request deadline or the SDK's own timeouts → ObjectStoreError('timeout').
//   - other 5xx and transport failures → ObjectStoreError('error'). Ceph RGW 16 answers a racing
//     If-Match writer that passed its ETag check together with the winner and lost only at the
//     RADOS layer with 500 (ECANCELED, "UnknownError"): that write did not land, but nothing in
//     the answer tells it apart from other 500s, so it stays an unknown outcome here too.
// ETags are sent and returned without quotes: Ceph RGW 16 compares If-Match against the bare ETag
// and fails every quoted one. An ETag is the MD5 of the body on RGW (and on AWS for a single PUT),
// so a replacement with the same bytes keeps the ETag: callers put a counter in the body.
//
// The client is configured for conditional writes against any S3-compatible server:
//   - maxAttempts 1 by default. The SDK must not retry a conditional PUT by itself: if the first
//     attempt landed but its answer was lost, the retry would see 412 and we would report a lost
//     race that we actually won. The cluster re-reads and retries at its own level.
//   - requestChecksumCalculation / responseChecksumValidation 'WHEN_REQUIRED': since 2025 the SDK
//     would otherwise add CRC32 checksums, which older servers (Ceph 16, s3rver) mishandle.
//   - bodies are always Uint8Array in both directions, never streams.
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import {
  ObjectStoreError,
  type ETag,
  type ListedObject,
  type ObjectStore,
  type PutResult,
  type S3RequestKind,
  type S3RequestObserver,
  type S3RequestResult,
  type StoredObject,
} from './object-store.ts';

/** Longest one S3 request may take (connect, send, answer, body) before it fails with 'timeout'.
 * Well under the 2 s failover target, so a hung server costs a lease renewal at most one try. */
export const DEFAULT_S3_REQUEST_TIMEOUT_MS = 1000;
/** Attempts per request inside the SDK; 1 = no SDK retries (see the header). */
export const DEFAULT_S3_MAX_ATTEMPTS = 1;
/** Region when neither the options nor AWS_REGION name one (Ceph RGW accepts any). */
export const DEFAULT_S3_REGION = 'us-east-1';

export interface S3ObjectStoreOptions {
  bucket: string;
  /** Prepended to every key (e.g. 'clusters/prod/'); list() returns keys without it. */
  prefix?: string;
  /** e.g. 'http://127.0.0.1:7480'. Default: the SDK's (AWS_ENDPOINT_URL, else AWS). */
  endpoint?: string;
  /** Default: AWS_REGION, else DEFAULT_S3_REGION. */
  region?: string;
  /** Default: true when an endpoint is given (option or AWS_ENDPOINT_URL): path-style URLs. */
  forcePathStyle?: boolean;
  /** Per-request deadline; default DEFAULT_S3_REQUEST_TIMEOUT_MS. */
  requestTimeoutMs?: number;
  /** SDK attempts per request; default DEFAULT_S3_MAX_ATTEMPTS. Values above 1 make a lost
   * answer to a conditional PUT look like a lost race: keep 1 unless you know why. */
  maxAttempts?: number;
  /** ListObjectsV2 MaxKeys per page; default the server's (1000). */
  listPageSize?: number;
  /** Default: the SDK's credential chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, …). */
  credentials?: S3ClientConfig['credentials'];
  /** Called once per request with what it did and how long it took. */
  observe?: S3RequestObserver;
}

/** Throttling error codes of S3 and the SDK's retry classifier. */
const THROTTLING_CODES = new Set([
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'ThrottledException',
  'RequestThrottled',
  'RequestThrottledException',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'BandwidthLimitExceeded',
  'ProvisionedThroughputExceededException',
  'TransactionInProgressException',
  'EC2ThrottledException',
  'PriorRequestNotComplete',
]);
const TIMEOUT_CODES = new Set(['TimeoutError', 'RequestTimeout', 'RequestTimeoutException', 'ETIMEDOUT', 'ESOCKETTIMEDOUT']);

/** Strips the quotes (and a weak marker) S3 puts around ETags. */
export function unquoteETag(etag: string): ETag {
  return etag.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
}

type Outcome<T> = { result: S3RequestResult; value: T };

export class S3ObjectStore implements ObjectStore {
  readonly bucket: string;
  readonly prefix: string;
  readonly client: S3Client;
  readonly #timeoutMs: number;
  readonly #pageSize: number | undefined;
  readonly #observe: S3RequestObserver | undefined;

  constructor(options: S3ObjectStoreOptions) {
    this.bucket = options.bucket;
    this.prefix = options.prefix ?? '';
    this.#timeoutMs = options.requestTimeoutMs ?? DEFAULT_S3_REQUEST_TIMEOUT_MS;
    this.#pageSize = options.listPageSize;
    this.#observe = options.observe;
    const hasEndpoint = options.endpoint !== undefined || !!process.env.AWS_ENDPOINT_URL_S3 || !!process.env.AWS_ENDPOINT_URL;
    this.client = new S3Client({
      region: options.region ?? (process.env.AWS_REGION || DEFAULT_S3_REGION),
      ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
      ...(options.credentials !== undefined ? { credentials: options.credentials } : {}),
      forcePathStyle: options.forcePathStyle ?? hasEndpoint,
      maxAttempts: options.maxAttempts ?? DEFAULT_S3_MAX_ATTEMPTS,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  /** Closes the client's sockets. */
  destroy(): void {
    this.client.destroy();
  }

  async get(key: string): Promise<StoredObject | null> {
    return this.#request('get', key, async (abortSignal) => {
      try {
        const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }), { abortSignal });
        const body = res.Body ? await res.Body.transformToByteArray() : new Uint8Array();
        if (res.ETag === undefined) throw new ObjectStoreError(`S3 GET ${key}: the answer has no ETag`, 'error');
        return { result: 'ok', value: { body, etag: unquoteETag(res.ETag) } };
      } catch (e) {
        if (isNotFound(e)) return { result: 'not_found', value: null };
        throw e;
      }
    });
  }

  async putIfAbsent(key: string, body: Uint8Array): Promise<PutResult> {
    return this.#put('put_if_absent', key, body, { IfNoneMatch: '*' }, 'exists');
  }

  async putIfMatch(key: string, body: Uint8Array, etag: ETag): Promise<PutResult> {
    return this.#put('put_if_match', key, body, { IfMatch: unquoteETag(etag) }, 'precondition');
  }

  async list(prefix: string): Promise<ListedObject[]> {
    const out: ListedObject[] = [];
    let token: string | undefined;
    do {
      // One observation (and one deadline) per page.
      const page = await this.#request('list', prefix, async (abortSignal) => {
        const res = await this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.prefix + prefix,
            ...(token !== undefined ? { ContinuationToken: token } : {}),
            ...(this.#pageSize !== undefined ? { MaxKeys: this.#pageSize } : {}),
          }),
          { abortSignal },
        );
        return { result: 'ok', value: res };
      });
      for (const o of page.Contents ?? []) {
        if (o.Key === undefined || !o.Key.startsWith(this.prefix)) continue;
        out.push({ key: o.Key.slice(this.prefix.length), size: o.Size ?? 0 });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
      if (page.IsTruncated && token === undefined) {
        throw new ObjectStoreError(`S3 LIST ${prefix}: truncated page without a continuation token`, 'error');
      }
    } while (token !== undefined);
    return out;
  }

  async delete(key: string): Promise<void> {
    await this.#request('delete', key, async (abortSignal) => {
      try {
        await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.prefix + key }), { abortSignal });
        return { result: 'ok', value: undefined };
      } catch (e) {
        // S3 answers 204 for a missing key; some servers 404.
        if (isNotFound(e)) return { result: 'not_found', value: undefined };
        throw e;
      }
    });
  }

  async #put(
    kind: 'put_if_absent' | 'put_if_match',
    key: string,
    body: Uint8Array,
    condition: { IfNoneMatch: string } | { IfMatch: string },
    lost: 'exists' | 'precondition',
  ): Promise<PutResult> {
    return this.#request<PutResult>(kind, key, async (abortSignal) => {
      try {
        const res = await this.client.send(
          new PutObjectCommand({ Bucket: this.bucket, Key: this.prefix + key, Body: body, ContentLength: body.byteLength, ...condition }),
          { abortSignal },
        );
        if (res.ETag === undefined) throw new ObjectStoreError(`S3 PUT ${key}: the answer has no ETag`, 'error');
        return { result: 'ok', value: { ok: true, etag: unquoteETag(res.ETag) } };
      } catch (e) {
        const status = httpStatus(e);
        // 412: the condition failed. 404 on If-Match: no object to match (AWS; RGW answers 412).
        if (status === 412 || (kind === 'put_if_match' && isNotFound(e))) {
          return { result: 'precondition_failed', value: { ok: false, reason: lost } };
        }
        throw e;
      }
    });
  }

  /** Runs one SDK request under the per-request deadline, maps its failure to an ObjectStoreError
   * and reports it to the observer. */
  async #request<T>(kind: S3RequestKind, key: string, run: (signal: AbortSignal) => Promise<Outcome<T>>): Promise<T> {
    const started = performance.now();
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), this.#timeoutMs);
    let result: S3RequestResult = 'error';
    try {
      const outcome = await run(abort.signal);
      result = outcome.result;
      return outcome.value;
    } catch (e) {
      const err = this.#toError(kind, key, e, abort.signal.aborted);
      result = err.result;
      throw err;
    } finally {
      clearTimeout(timer);
      this.#observe?.(kind, result, performance.now() - started);
    }
  }

  #toError(kind: S3RequestKind, key: string, e: unknown, timedOut: boolean): ObjectStoreError {
    if (e instanceof ObjectStoreError) return e;
    const what = `S3 ${kind} ${this.bucket}/${this.prefix}${key}`;
    if (timedOut) return new ObjectStoreError(`${what}: no answer within ${this.#timeoutMs} ms`, 'timeout', { cause: e });
    const status = httpStatus(e);
    const code = errorCode(e);
    const detail = `${status !== undefined ? `HTTP ${status} ` : ''}${code ?? ''}${message(e) ? `: ${message(e)}` : ''}`.trim();
    if (status === 503 || status === 429 || (code !== undefined && THROTTLING_CODES.has(code))) {
      return new ObjectStoreError(`${what}: throttled (${detail})`, 'throttled', { cause: e });
    }
    if (status === 408 || (code !== undefined && TIMEOUT_CODES.has(code))) {
      return new ObjectStoreError(`${what}: timed out (${detail})`, 'timeout', { cause: e });
    }
    if (status === 409 && code === 'ConditionalRequestConflict') {
      return new ObjectStoreError(`${what}: conflicting conditional write in progress, outcome unknown (${detail})`, 'error', { cause: e });
    }
    return new ObjectStoreError(`${what}: ${detail || 'failed'}`, 'error', { cause: e });
  }
}

function httpStatus(e: unknown): number | undefined {
  if (e instanceof S3ServiceException) return e.$metadata.httpStatusCode;
  const meta = (e as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata;
  return meta?.httpStatusCode;
}

/** The S3 error code (NoSuchKey, PreconditionFailed, SlowDown, …) or a Node error code. */
function errorCode(e: unknown): string | undefined {
  if (e === null || typeof e !== 'object') return undefined;
  const x = e as { Code?: unknown; code?: unknown; name?: unknown };
  for (const c of [x.Code, x.code, x.name]) {
    if (typeof c === 'string' && c !== 'Error' && c !== 'S3ServiceException') return c;
  }
  return undefined;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

function isNotFound(e: unknown): boolean {
  const code = errorCode(e);
  return code === 'NoSuchKey' || code === 'NotFound' || (httpStatus(e) === 404 && code !== 'NoSuchBucket');
}
