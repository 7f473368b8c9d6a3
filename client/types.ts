// Public data types of the Celer client (SPEC §1, §3, §4).
import type { AggregateKey, KeyPart } from './key.ts';

export type { AggregateKey, KeyPart };

/** Optimistic-concurrency guard of one aggregate write (SPEC §3). */
export type ExpectedVersion = 'any' | 'no_stream' | 'stream_exists' | bigint | number;

export interface SchemaVersion {
  major: number;
  minor: number;
}

/** An event to append. `iv` present means the payload was encrypted by the client (AES-GCM). */
export interface EventInput {
  type: string;
  data: Uint8Array;
  metadata?: Uint8Array;
  schemaVersion?: SchemaVersion;
  iv?: Uint8Array;
}

/** An event read back: as written, plus its 1-based version inside its aggregate. */
export interface RecordedEvent {
  version: bigint;
  type: string;
  data: Uint8Array;
  metadata?: Uint8Array;
  schemaVersion?: SchemaVersion;
  iv?: Uint8Array;
}

/** A commit position: gapless, strictly increasing per shard. */
export interface Position {
  shard: number;
  seq: bigint;
}

/** The events of one write to one aggregate, as read back. */
export interface Batch {
  fromVersion: bigint;
  toVersion: bigint;
  position: Position;
  clientId: bigint;
  serverTimestampMs: number;
  events: RecordedEvent[];
}

export interface AppendOptions {
  expectedVersion?: ExpectedVersion;
  clientId?: KeyPart;
  /** Exactly-once sequence of this writer on this aggregate; absent or 0 = no deduplication. */
  clientSeq?: bigint | number;
}

export interface AppendResult {
  fromVersion: bigint;
  toVersion: bigint;
  position: Position;
}

export interface AggregateWrite {
  key: AggregateKey;
  events: EventInput[];
  expectedVersion?: ExpectedVersion;
  clientSeq?: bigint | number;
}

export interface WriteInput {
  clientId?: KeyPart;
  writes: AggregateWrite[];
}

export interface WriteResult {
  /** One entry per input write, in order. Batches of one write have consecutive positions. */
  results: AppendResult[];
}

export interface ReadOptions {
  /** First version (inclusive, 1-based; default 1). */
  from?: bigint | number;
  /** Last version (inclusive; default: the end). */
  to?: bigint | number;
  /** Only events of these types (batches with none of them are left out). */
  eventTypes?: string[];
  /** Page size bound in bytes (server caps it). */
  maxBytes?: number;
}

export interface ReadPage {
  batches: Batch[];
  /** Set when the page was truncated: pass it as `from` to continue. */
  nextVersion?: bigint;
}

export interface DeleteOptions {
  /** Delete only at this version (2003 otherwise); default any. */
  expectedVersion?: bigint | number | 'any';
  /** Let a later write recreate the aggregate (its versions go on after the tombstone); default false: deleted for good. */
  allowRecreate?: boolean;
  /** The writer's clientId, recorded on the tombstone; default the connection's. */
  clientId?: KeyPart;
}

/** The answer to delete and trimStart. */
export interface DeleteResult {
  /** Where the tombstone (or the trim) lies; when nothing changed, the aggregate's newest batch. */
  position: Position;
  /** The aggregate's version (unchanged: deletes and trims take no version). */
  version: bigint;
  /** The first readable version now (after a delete: version + 1). */
  minVersion: bigint;
  /** True when it was already so (deleted before, or trimmed at or above keepFromVersion): nothing was written. */
  unchanged: boolean;
}

export interface AggregateDetails {
  version: bigint;
  /** Lowest readable version (1 unless trimmed). */
  minVersion: bigint;
  lastPosition: Position;
  lastClientId: bigint;
  lastServerTimestampMs: number;
  deleted: boolean;
}

/** Formats of registered schemas (SPEC §5). */
export type SchemaFormat = 'json' | 'avro' | 'protobuf';

/**
 * A schema to register for the events of type `eventType` in aggregates of `{ org, type }`.
 * `schema` is the text: a JSON Schema, an Avro schema (JSON), or a .proto file whose message named
 * after `eventType` (or its only message) describes the event. For `json` an object is accepted
 * too and registered as `JSON.stringify(schema)`.
 */
export interface SchemaInput {
  org: KeyPart;
  type: KeyPart;
  eventType: string;
  version: SchemaVersion;
  format: SchemaFormat;
  schema: string | object;
}

export interface RegisterSchemaResult {
  /** false: this exact schema was registered already (registering is idempotent). */
  registered: boolean;
}

/** A registered schema, as listed. */
export interface RegisteredSchema {
  org: bigint;
  type: bigint;
  eventType: string;
  version: SchemaVersion;
  format: SchemaFormat;
  schema: string;
}

export interface ListSchemasFilter {
  org: KeyPart;
  /** Only this aggregate type's schemas. */
  type?: KeyPart;
}
