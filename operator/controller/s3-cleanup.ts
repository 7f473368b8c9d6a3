// Deleting a cluster's S3 lease objects when it is deleted with deletionPolicy Delete, so a new
// cluster at the same bucket and prefix does not inherit an old epoch or old fallback batches.
// A small AWS Signature Version 4 signer keeps the operator free of the AWS SDK for a LIST and
// a few DELETE requests.

import { createHash, createHmac } from 'node:crypto';
import type { S3Spec } from '../api/types.ts';

/** 10 s per request: S3 DELETEs take tens of ms; this only bounds a hung connection. */
export const S3_REQUEST_TIMEOUT_MS = 10_000;
const EMPTY_SHA256 = createHash('sha256').update('').digest('hex');

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

export interface SignInput {
  method: string;
  url: URL;
  /** Lower-case header names; host is added from the URL. */
  headers: Record<string, string>;
  payloadSha256: string;
  region: string;
  service: string;
  credentials: S3Credentials;
  /** yyyyMMddTHHmmssZ */
  amzDate: string;
}

const hmac = (key: Buffer | string, data: string): Buffer => createHmac('sha256', key).update(data).digest();
const sha256 = (data: string): string => createHash('sha256').update(data).digest('hex');

function encodePath(path: string): string {
  return path.split('/').map((seg) => encodeURIComponent(decodeURIComponent(seg)).replace(/[!'()*]/g, (ch) => `%${ch.charCodeAt(0).toString(16).toUpperCase()}`)).join('/');
}

/** The Authorization header value for a request (AWS Signature Version 4). */
export function signV4(input: SignInput): string {
  const headers: Record<string, string> = { ...input.headers, host: input.url.host };
  const names = Object.keys(headers).map((h) => h.toLowerCase()).sort();
  const canonicalHeaders = names.map((n) => `${n}:${String(headers[n]).trim().replace(/\s+/g, ' ')}\n`).join('');
  const signedHeaders = names.join(';');
  const query = [...input.url.searchParams].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
  const canonicalRequest = [input.method, encodePath(input.url.pathname || '/'), query, canonicalHeaders, signedHeaders, input.payloadSha256].join('\n');
  const day = input.amzDate.slice(0, 8);
  const scope = `${day}/${input.region}/${input.service}/aws4_request`;
  const stringToSign = ['AWS4-HMAC-SHA256', input.amzDate, scope, sha256(canonicalRequest)].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${input.credentials.secretAccessKey}`, day), input.region), input.service), 'aws4_request');
  const signature = createHmac('sha256', key).update(stringToSign).digest('hex');
  return `AWS4-HMAC-SHA256 Credential=${input.credentials.accessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`;
}

export function amzDate(ms: number): string {
  return new Date(ms).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
}

/** Path-style URL of an object: works with AWS and with S3-compatible servers alike. */
export function objectUrl(s3: S3Spec, key: string): URL {
  const region = s3.region ?? 'us-east-1';
  const endpoint = (s3.endpoint ?? `https://s3.${region}.amazonaws.com`).replace(/\/+$/, '');
  return new URL(`${endpoint}/${s3.bucket}/${s3.prefix ?? ''}${key}`);
}

/** Keys per ListObjectsV2 page (S3's own maximum). */
export const S3_LIST_PAGE_KEYS = 1000;
/** At most this many objects under one listed sub-prefix are deleted by one cleanup (then it fails, to be retried). */
export const S3_CLEANUP_MAX_KEYS = 100_000;

function signedHeaders(method: string, url: URL, s3: S3Spec, credentials: S3Credentials, nowMs: () => number): Record<string, string> {
  const headers: Record<string, string> = { 'x-amz-content-sha256': EMPTY_SHA256, 'x-amz-date': amzDate(nowMs()) };
  if (credentials.sessionToken !== undefined) headers['x-amz-security-token'] = credentials.sessionToken;
  const authorization = signV4({
    method, url, headers, payloadSha256: EMPTY_SHA256, region: s3.region ?? 'us-east-1', service: 's3', credentials, amzDate: headers['x-amz-date']!,
  });
  return { ...headers, authorization };
}

const xmlText = (s: string): string => s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&apos;/g, "'").replace(/&amp;/g, '&');

/**
 * The keys (relative to the cluster prefix) of every object under `<prefix><sub>` — ListObjectsV2,
 * page by page. Only names that begin with the whole sub-prefix match, so `cluster/fallback/`
 * never lists `cluster/fallbackX` or another cluster's prefix.
 */
export async function listS3Keys(s3: S3Spec, sub: string, credentials: S3Credentials, nowMs: () => number = Date.now): Promise<string[]> {
  const region = s3.region ?? 'us-east-1';
  const endpoint = (s3.endpoint ?? `https://s3.${region}.amazonaws.com`).replace(/\/+$/, '');
  const full = `${s3.prefix ?? ''}${sub}`;
  const keys: string[] = [];
  let token: string | undefined;
  for (;;) {
    const url = new URL(`${endpoint}/${s3.bucket}`);
    url.searchParams.set('list-type', '2');
    url.searchParams.set('prefix', full);
    url.searchParams.set('max-keys', String(S3_LIST_PAGE_KEYS));
    if (token !== undefined) url.searchParams.set('continuation-token', token);
    const res = await fetch(url, { headers: signedHeaders('GET', url, s3, credentials, nowMs), signal: AbortSignal.timeout(S3_REQUEST_TIMEOUT_MS) });
    const body = await res.text();
    if (res.status !== 200) throw new Error(`LIST s3://${s3.bucket}/${full} answered ${res.status}: ${body.slice(0, 200)}`);
    for (const m of body.matchAll(/<Key>([^<]*)<\/Key>/g)) {
      const key = xmlText(m[1]!);
      if (key.startsWith(full)) keys.push(key.slice((s3.prefix ?? '').length));
    }
    if (keys.length > S3_CLEANUP_MAX_KEYS) throw new Error(`more than ${S3_CLEANUP_MAX_KEYS} objects under s3://${s3.bucket}/${full}; delete them by hand (aws s3 rm --recursive) and the finalizer completes`);
    const next = /<NextContinuationToken>([^<]*)<\/NextContinuationToken>/.exec(body)?.[1];
    if (!/<IsTruncated>true<\/IsTruncated>/.test(body) || next === undefined) return keys;
    token = xmlText(next);
  }
}

/**
 * Deletes each key; a key ending in '/' stands for every object under it (listed first). A key
 * already gone counts as deleted. Throws on the first other failure.
 */
export async function deleteS3Objects(s3: S3Spec, keys: readonly string[], credentials: S3Credentials, nowMs: () => number = Date.now): Promise<void> {
  const expanded: string[] = [];
  for (const key of keys) {
    if (key.endsWith('/')) expanded.push(...await listS3Keys(s3, key, credentials, nowMs));
    else expanded.push(key);
  }
  for (const key of expanded) {
    const url = objectUrl(s3, key);
    const res = await fetch(url, { method: 'DELETE', headers: signedHeaders('DELETE', url, s3, credentials, nowMs), signal: AbortSignal.timeout(S3_REQUEST_TIMEOUT_MS) });
    await res.arrayBuffer();
    if (res.status !== 204 && res.status !== 200 && res.status !== 404) {
      throw new Error(`DELETE ${url.pathname} answered ${res.status}`);
    }
  }
}
