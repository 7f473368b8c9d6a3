// Limits of the native protocol. The server enforces them; the client checks before sending.

/** Protocol limits. The server enforces them; the client checks before sending. */
export const Limits = {
  /** Largest frame body; checked against the length prefix before any allocation. 16 MiB, as Celeriant. */
  frameBytesMax: 16 * 1024 * 1024,
  /** Largest event payload (data + metadata). 1 MiB keeps one write well inside a segment. */
  eventBytesMax: 1024 * 1024,
  /** Events in one aggregate write. */
  eventsPerWriteMax: 10_000,
  /** Aggregates in one multi-aggregate write. */
  writesPerRequestMax: 1_000,
  /** Event type name, UTF-8 bytes (SPEC §1). */
  eventTypeBytesMax: 255,
  /** Event types in a read filter. */
  readTypesMax: 64,
  /** Default and largest read page. */
  readPageBytesDefault: 1024 * 1024,
  readPageBytesMax: 8 * 1024 * 1024,
  /** Longest a shard feed read may wait for new commits (long poll); the client polls again after it. */
  feedWaitMsMax: 10_000,
  /** One registered schema's text, UTF-8 bytes (SCHEMA_BYTES_MAX in dataplane/constants.ts). 64 KiB:
   * ten times a large hand-written event schema; the registry holds every schema in memory. */
  schemaBytesMax: 64 * 1024,
} as const;
