// Client-side encryption (SPEC §1 `iv`, §5): `encrypting(client, keys)` wraps a client so that
// every event's `data` is sealed with AES-256-GCM under a per-subject key before it leaves the
// process, and opened again on every read, subscription and feed page. The server stores and
// replicates ciphertext and never sees a key; schema validation skips encrypted events.
//
// Crypto-shredding: `keys.forget(subject)` destroys the subject's key; its events stay in the log
// (positions, versions and the hash chain are untouched) but can never be opened again.
//
// What is sealed: `data` only. The event type, `metadata`, the aggregate key and positions stay in
// plaintext (the server routes, filters and validates on them) — keep personal data out of them.
// The additional authenticated data binds each ciphertext to its aggregate key and event type, so
// a ciphertext copied to another aggregate or relabelled fails to open.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import type { CelerClient } from './client.ts';
import type { ShardBatch, SubscribedBatch, SubscribeKeyOptions, SubscribeOrgFilter, SubscribeOrgOptions, ReadShardOptions, ShardPage, SubscribeShardOptions } from './feed.ts';
import { endable, type Ending } from './follower.ts';
import { formatKey, normalizeKey, type AggregateKey, type NormalizedKey } from './key.ts';
import type { AppendOptions, AppendResult, Batch, EventInput, ReadOptions, ReadPage, RecordedEvent, WriteInput, WriteResult } from './types.ts';
import { IV_BYTES } from './wire.ts';

export const KEY_BYTES = 32;
const TAG_BYTES = 16;
const AAD_PREFIX = 'celer-aes-gcm-v1|';

/** Where subject keys live (a KMS, a vault, a table). Keys are 32 random bytes. */
export interface KeyProvider {
  /** The subject's key; when it has none, a new one if `create`, else null (never made, or forgotten). */
  getKey(subject: string, create: boolean): Promise<Uint8Array | null>;
  /** Destroys the subject's key for good (crypto-shredding). */
  forget(subject: string): Promise<void>;
}

/** Keys in process memory: for tests and examples (a restart forgets every subject). */
export class InMemoryKeyProvider implements KeyProvider {
  private readonly keys = new Map<string, Uint8Array>();
  private readonly forgotten = new Set<string>();

  async getKey(subject: string, create: boolean): Promise<Uint8Array | null> {
    const k = this.keys.get(subject);
    if (k !== undefined) return k;
    // A forgotten subject never gets a key again: new events would be readable while old ones are not.
    if (!create || this.forgotten.has(subject)) return null;
    const fresh = new Uint8Array(randomBytes(KEY_BYTES));
    this.keys.set(subject, fresh);
    return fresh;
  }

  async forget(subject: string): Promise<void> {
    this.keys.get(subject)?.fill(0);
    this.keys.delete(subject);
    this.forgotten.add(subject);
  }
}

/** An encrypted event whose subject has no key (forgotten, or held by another key provider). */
export class KeyUnavailableError extends Error {
  override name = 'KeyUnavailableError';
  readonly code = 'KEY_UNAVAILABLE';
  readonly subject: string;
  constructor(subject: string, what: string) {
    super(`${what}: no key for subject "${subject}" (forgotten, or not in this key provider); its events stay in the log but cannot be opened`);
    this.subject = subject;
  }
}

/** An encrypted event that fails to open under its subject's key: tampered with, moved, or sealed under another key. */
export class DecryptionError extends Error {
  override name = 'DecryptionError';
  readonly code = 'DECRYPTION_FAILED';
}

export interface EncryptionOptions {
  /** The subject whose key seals an aggregate's events; default its key text `org/type/id`. */
  subjectOf?: (key: NormalizedKey) => string;
  /** On an event whose key is gone: throw KeyUnavailableError (default) or return it redacted (`data` empty, `redacted: true`). */
  onMissingKey?: 'throw' | 'redact';
}

export type OpenedEvent = RecordedEvent & { redacted?: true };

function aad(key: NormalizedKey, type: string): Buffer {
  return Buffer.from(`${AAD_PREFIX}${formatKey(key)}|${type}`, 'utf8');
}

/** AES-256-GCM of `data` under `subjectKey`: ciphertext followed by the 16-byte tag, and the fresh iv. */
export function seal(subjectKey: Uint8Array, key: NormalizedKey, type: string, data: Uint8Array): { data: Uint8Array; iv: Uint8Array } {
  const iv = randomBytes(IV_BYTES);
  const c = createCipheriv('aes-256-gcm', subjectKey, iv, { authTagLength: TAG_BYTES });
  c.setAAD(aad(key, type));
  const body = Buffer.concat([c.update(data), c.final(), c.getAuthTag()]);
  return { data: new Uint8Array(body.buffer, body.byteOffset, body.length), iv: new Uint8Array(iv) };
}

export function open(subjectKey: Uint8Array, key: NormalizedKey, type: string, data: Uint8Array, iv: Uint8Array): Uint8Array {
  if (data.length < TAG_BYTES) throw new DecryptionError(`event ${type} of ${formatKey(key)}: ${data.length} bytes is too short for AES-GCM (tag ${TAG_BYTES})`);
  try {
    const d = createDecipheriv('aes-256-gcm', subjectKey, iv, { authTagLength: TAG_BYTES });
    d.setAAD(aad(key, type));
    d.setAuthTag(data.subarray(data.length - TAG_BYTES));
    const plain = Buffer.concat([d.update(data.subarray(0, data.length - TAG_BYTES)), d.final()]);
    return new Uint8Array(plain.buffer, plain.byteOffset, plain.length);
  } catch (e) {
    throw new DecryptionError(`event ${type} of ${formatKey(key)} does not open under its subject's key (tampered with, moved to another aggregate, or sealed under another key)`, { cause: e });
  }
}

/** The wrapper `encrypting` returns: the client's operations, with payloads sealed and opened. */
export class EncryptingClient {
  readonly inner: CelerClient;
  private readonly keys: KeyProvider;
  private readonly subjectOf: (key: NormalizedKey) => string;
  private readonly onMissingKey: 'throw' | 'redact';

  constructor(inner: CelerClient, keys: KeyProvider, opts: EncryptionOptions = {}) {
    this.inner = inner;
    this.keys = keys;
    this.subjectOf = opts.subjectOf ?? formatKey;
    this.onMissingKey = opts.onMissingKey ?? 'throw';
  }

  private async sealAll(key: AggregateKey, events: EventInput[]): Promise<EventInput[]> {
    const k = normalizeKey(key);
    const subject = this.subjectOf(k);
    const sk = await this.keys.getKey(subject, true);
    if (sk === null) throw new KeyUnavailableError(subject, `cannot encrypt for ${formatKey(k)}`);
    return events.map((e) => {
      if (e.iv !== undefined) throw new TypeError(`event ${e.type} already carries an iv: encrypting() seals plaintext events only`);
      return { ...e, ...seal(sk, k, e.type, e.data) };
    });
  }

  /** Opens the encrypted events of one batch of `key` (events without an iv pass unchanged). */
  async openBatch<B extends Batch>(key: NormalizedKey, b: B): Promise<B & { events: OpenedEvent[] }> {
    if (!b.events.some((e) => e.iv !== undefined)) return b;
    const subject = this.subjectOf(key);
    const sk = await this.keys.getKey(subject, false);
    const events: OpenedEvent[] = b.events.map((e) => {
      if (e.iv === undefined) return e;
      if (sk === null) {
        if (this.onMissingKey === 'redact') {
          const { iv: _iv, ...rest } = e;
          return { ...rest, data: new Uint8Array(0), redacted: true };
        }
        throw new KeyUnavailableError(subject, `event ${e.version} of ${formatKey(key)}`);
      }
      const { iv, ...rest } = e;
      return { ...rest, data: open(sk, key, e.type, e.data, iv) };
    });
    return { ...b, events };
  }

  async append(key: AggregateKey, events: EventInput[], opts?: AppendOptions): Promise<AppendResult> {
    return this.inner.append(key, await this.sealAll(key, events), opts);
  }

  async write(input: WriteInput): Promise<WriteResult> {
    const writes = await Promise.all(input.writes.map(async (w) => ({ ...w, events: await this.sealAll(w.key, w.events) })));
    return this.inner.write({ ...input, writes });
  }

  async read(key: AggregateKey, opts?: ReadOptions): Promise<ReadPage> {
    const page = await this.inner.read(key, opts);
    const k = normalizeKey(key);
    return { ...page, batches: await Promise.all(page.batches.map((b) => this.openBatch(k, b))) };
  }

  async *readAll(key: AggregateKey, opts?: ReadOptions): AsyncGenerator<Batch, void, undefined> {
    const k = normalizeKey(key);
    for await (const b of this.inner.readAll(key, opts)) yield await this.openBatch(k, b);
  }

  async readShard(shard: number, opts?: ReadShardOptions): Promise<ShardPage> {
    const page = await this.inner.readShard(shard, opts);
    return { ...page, batches: await Promise.all(page.batches.map((b) => this.openBatch(b.key, b))) };
  }

  // The subscriptions are endable: return() ends the inner one first, so it also ends a next() waiting at a quiet tail.
  subscribeShard(shard: number, opts?: SubscribeShardOptions): AsyncGenerator<ShardBatch, void, undefined> {
    const opened = async function* (this: EncryptingClient, ending: Ending): AsyncGenerator<ShardBatch, void, undefined> {
      for await (const b of ending.follow(this.inner.subscribeShard(shard, opts))) yield await this.openBatch(b.key, b);
    };
    return endable((ending) => opened.call(this, ending));
  }

  subscribe(key: AggregateKey, opts?: SubscribeKeyOptions): AsyncGenerator<Batch, void, undefined>;
  subscribe(filter: SubscribeOrgFilter, opts?: SubscribeOrgOptions): AsyncGenerator<SubscribedBatch, void, undefined>;
  subscribe(target: AggregateKey | SubscribeOrgFilter, opts: SubscribeKeyOptions | SubscribeOrgOptions = {}): AsyncGenerator<Batch | SubscribedBatch, void, undefined> {
    const opened = async function* (this: EncryptingClient, ending: Ending): AsyncGenerator<Batch | SubscribedBatch, void, undefined> {
      if ('id' in target && target.id !== undefined) {
        const k = normalizeKey(target as AggregateKey);
        for await (const b of ending.follow(this.inner.subscribe(target as AggregateKey, opts as SubscribeKeyOptions))) yield await this.openBatch(k, b);
        return;
      }
      for await (const b of ending.follow(this.inner.subscribe(target as SubscribeOrgFilter, opts as SubscribeOrgOptions))) yield await this.openBatch(b.key, b);
    };
    return endable((ending) => opened.call(this, ending));
  }

  /** Destroys the subject's key (crypto-shredding): its events become unreadable, everywhere. */
  forget(subject: string): Promise<void> {
    return this.keys.forget(subject);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Wraps `client` so event payloads are sealed with per-subject keys from `keys` (see the top of this file). */
export function encrypting(client: CelerClient, keys: KeyProvider, opts: EncryptionOptions = {}): EncryptingClient {
  return new EncryptingClient(client, keys, opts);
}
