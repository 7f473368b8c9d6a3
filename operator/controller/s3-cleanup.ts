// Deleting a cluster's S3 lease objects and fallback batches when it is deleted with
// deletionPolicy Delete, so a new cluster at the same bucket and prefix does not inherit an old
// epoch. Named keys (S3_LEASE_OBJECT_KEYS) are deleted one by one; sub-prefixes
// (S3_CLEANUP_PREFIXES) are listed (ListObjectsV2, at most S3_CLEANUP_MAX_LIST_PAGES pages) and
// each listed key deleted. Nothing outside `<prefix><key>` / `<prefix><sub-prefix>` is touched.
// A small AWS Signature Version 4 signer keeps the operator free of the AWS SDK.

import { createHash, createHmac } from 'node:crypto';
import type { S3Spec } from '../api/types.ts';

/** 10 s per request: S3 DELETEs take tens of ms; this only bounds a hung connection. */
export const S3_REQUEST_TIMEOUT_MS = 10_000;
/** ListObjectsV2 pages (≤ 1 000 keys each) per sub-prefix: 1 000 000 fallback objects, far above what an outage leaves. */
export const S3_CLEANUP_MAX_LIST_PAGES = 1_000;
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

/** Deletes each key; a key already gone counts as deleted. Throws on the first other failure. */
export async function deleteS3Objects(s3: S3Spec, keys: readonly string[], credentials: S3Credentials, nowMs: () => number = Date.now): Promise<void> {
  for (const key of keys) {
    const url = objectUrl(s3, key);
    const headers: Record<string, string> = { 'x-amz-content-sha256': EMPTY_SHA256, 'x-amz-date': amzDate(nowMs()) };
    if (credentials.sessionToken !== undefined) headers['x-amz-security-token'] = credentials.sessionToken;
    const authorization = signV4({
      method: 'DELETE', url, headers, payloadSha256: EMPTY_SHA256, region: s3.region ?? 'us-east-1', service: 's3', credentials,
      amzDate: headers['x-amz-date']!,
    });
    const res = await fetch(url, { method: 'DELETE', headers: { ...headers, authorization }, signal: AbortSignal.timeout(S3_REQUEST_TIMEOUT_MS) });
    await res.arrayBuffer();
    if (res.status !== 204 && res.status !== 200 && res.status !== 404) {
      throw new Error(`DELETE ${url.pathname} answered ${res.status}`);
    }
  }
}

function signedHeaders(s3: S3Spec, method: string, url: URL, credentials: S3Credentials, nowMs: () => number): Record<string, string> {
  const headers: Record<string, string> = { 'x-amz-content-sha256': EMPTY_SHA256, 'x-amz-date': amzDate(nowMs()) };
  if (credentials.sessionToken !== undefined) headers['x-amz-security-token'] = credentials.sessionToken;
  const authorization = signV4({
    method, url, headers, payloadSha256: EMPTY_SHA256, region: s3.region ?? 'us-east-1', service: 's3', credentials, amzDate: headers['x-amz-date']!,
  });
  return { ...headers, authorization };
}

const XML_ENTITIES: Record<string, string> = { '&amp;': '&', '&lt;': '<', '&gt;': '>', '&quot;': '"', '&apos;': "'" };

/** One ListObjectsV2 page of keys (full keys, bucket-relative) under `<prefix><sub>`. */
export async function listS3Page(s3: S3Spec, sub: string, credentials: S3Credentials, nowMs: () => number = Date.now): Promise<{ keys: string[]; truncated: boolean }> {
  const region = s3.region ?? 'us-east-1';
  const endpoint = (s3.endpoint ?? `https://s3.${region}.amazonaws.com`).replace(/\/+$/, '');
  const url = new URL(`${endpoint}/${s3.bucket}`);
  url.searchParams.set('list-type', '2');
  url.searchParams.set('prefix', `${s3.prefix ?? ''}${sub}`);
  const res = await fetch(url, { headers: signedHeaders(s3, 'GET', url, credentials, nowMs), signal: AbortSignal.timeout(S3_REQUEST_TIMEOUT_MS) });
  const body = await res.text();
  if (res.status !== 200) throw new Error(`LIST ${url.pathname}?prefix=${s3.prefix ?? ''}${sub} answered ${res.status} (code S3CleanupFailed): check the credentials allow s3:ListBucket`);
  const keys = [...body.matchAll(/<Key>([^<]*)<\/Key>/g)].map((m) => m[1]!.replace(/&(amp|lt|gt|quot|apos);/g, (e) => XML_ENTITIES[e]!));
  return { keys, truncated: /<IsTruncated>true<\/IsTruncated>/.test(body) };
}

/**
 * Deletes `keys`, then every object under each of `prefixes` (all relative to s3.prefix). Each
 * round lists the first page and deletes it, so deleting never disturbs a continuation token;
 * more than S3_CLEANUP_MAX_LIST_PAGES rounds for one sub-prefix is an error (the finalizer stays
 * and the next pass continues where this one stopped).
 */
export async function deleteS3ClusterObjects(
  s3: S3Spec, keys: readonly string[], prefixes: readonly string[], credentials: S3Credentials, nowMs: () => number = Date.now,
): Promise<{ deleted: number }> {
  await deleteS3Objects(s3, keys, credentials, nowMs);
  let deleted = keys.length;
  const base = s3.prefix ?? '';
  for (const sub of prefixes) {
    for (let page = 0; ; page++) {
      if (page >= S3_CLEANUP_MAX_LIST_PAGES) {
        throw new Error(`more than ${S3_CLEANUP_MAX_LIST_PAGES} pages of objects under ${base}${sub} (code S3CleanupUnbounded); the next pass continues`);
      }
      const { keys: listed } = await listS3Page(s3, sub, credentials, nowMs);
      // Only keys under the listed prefix: a misbehaving server cannot make us delete anything else.
      const ours = listed.filter((k) => k.startsWith(`${base}${sub}`)).map((k) => k.slice(base.length));
      if (ours.length === 0) break;
      await deleteS3Objects(s3, ours, credentials, nowMs);
      deleted += ours.length;
    }
  }
  return { deleted };
}
