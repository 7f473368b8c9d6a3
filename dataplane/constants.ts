// Every limit and timing of the data plane, in one place. Units last in names.
// Each value says where it comes from.
import { Limits } from '../client/limits.ts';

/** Segment file size. 64 MiB: big enough that rotation is rare (a W1 run of 30k writes/s of
 * ~150 B records fills one in ~15 s), small enough that zero-filling a new one (needed for fast
 * O_DIRECT appends, feasibility §3) takes tens of milliseconds. */
export const SEGMENT_BYTES_DEFAULT = 64 * 1024 * 1024;
/** Smallest segment accepted (tests use small segments to exercise rotation). */
export const SEGMENT_BYTES_MIN = 64 * 1024;
/** Largest segment accepted: 1 GiB (Celeriant's default). Offsets inside a segment are stored as
 * u32 in the sidecar index, so a segment must stay below 4 GiB; 1 GiB also bounds the zero-fill of
 * a new segment to about a second. */
export const SEGMENT_BYTES_MAX = 1024 * 1024 * 1024;
/** Segment header block: one 4 KiB O_DIRECT sector. */
export const SEGMENT_HEADER_BYTES = 4096;

/** A shard keeps its next segment made ahead of need (zero-filled, under a temporary name). When
 * that fails (a full disk), it retries with a backoff from MIN doubling to MAX: half a second
 * makes writes resume promptly once space is freed, 10 s keeps a full disk from being hammered. */
export const SPARE_RETRY_MS_MIN = 500;
export const SPARE_RETRY_MS_MAX = 10_000;

/** Writes waiting for the next group commit, per shard; beyond it writes get 2012 (busy). */
export const SHARD_QUEUE_WRITES_MAX = 20_000;
/** Bytes of records in one group commit (one write + fdatasync). 8 MiB: large groups gain nothing
 * once the fsync cost is amortised over a few hundred writes, and the buffer is allocated per group. */
export const GROUP_COMMIT_BYTES_MAX = 8 * 1024 * 1024;
/** Under load the segment header's committed offset is rewritten with a group commit at most this
 * often (a second write per fdatasync costs ~40% of single-writer throughput on our disks). Acked
 * records newer than the header are protected by CRC, seq and chain checks only. */
export const HEADER_REFRESH_MS = 20;
/** After this long without writes, the segment header's committed offset is brought up to date,
 * so a later bit flip in the last group is reported as corruption rather than taken for a torn tail. */
export const HEADER_CATCH_UP_IDLE_MS = 50;
/**
 * A cluster leader's shard, after a group's fdatasync, waits up to the duration of that flush
 * (never more than this) for the group's commit step before it writes the next group: the next
 * write then carries the ack barrier that releases the group's acknowledgements, instead of a
 * third write one flush later (shard.ts commitLoop).
 */
export const BARRIER_RIDE_WAIT_MAX_MS = 10;

/** Read window of the recovery/verify forward scan and of the cold reverse scan. */
export const SCAN_CHUNK_BYTES = 1024 * 1024;
/** Cold reverse scans in flight per shard; more wait. Caps disk pressure from a burst of cold keys. */
export const COLD_LOADS_MAX = 64;
/** Retries of "load the states a write needs" when the cache evicts them meanwhile (tiny caches). */
export const STATE_LOAD_ATTEMPTS_MAX = 8;

/** Memory budget default when --memory-budget-mb is absent: a quarter of RAM, at most 4 GiB. */
export const MEMORY_BUDGET_FRACTION = 0.25;
export const MEMORY_BUDGET_BYTES_CAP = 4 * 1024 * 1024 * 1024;
/** Share of each shard's budget for the recent-record cache; the rest holds aggregate states.
 * Celeriant gives ~3/4 to recent writes; reads of hot aggregates dominate event-sourcing loads. */
export const RECENT_CACHE_SHARE = 0.6;
/** Share for read-ahead lists (the rest of a paged read's batch locations, so readAll of a long
 * aggregate costs one chain walk rather than one per page). */
export const READ_AHEAD_SHARE = 0.1;
/** Share for the feed tail: the records placed most recently, by seq, so subscriptions and watches
 * at the live tail are served from memory (the bytes are mostly the recent cache's own). 0.1 of a
 * 64 MiB shard budget holds ~25 000 W1 records, seconds of writes at full speed; a subscriber
 * further behind reads the log in FEED_READ_CHUNK_BYTES chunks. */
export const FEED_TAIL_SHARE = 0.1;
/** Bytes per log read of a subscriber behind the feed tail (one read for many small records). */
export const FEED_READ_CHUNK_BYTES = 256 * 1024;
/** Estimated bytes per remembered batch location (object + 4 numbers). */
export const WALK_ENTRY_BYTES_ESTIMATE = 96;
/** Estimated bytes per cached aggregate state (key string, numbers, map): sizes the state LRU. */
export const STATE_ENTRY_BYTES_ESTIMATE = 320;
/** Bloom filter bits per segment and hash count: 2 Mbit (256 KiB) with 7 hashes keeps false
 * positives under 1% for ~200k distinct keys per segment (Celeriant's active-segment bloom). */
export const SEGMENT_BLOOM_BITS = 2 * 1024 * 1024;
export const SEGMENT_BLOOM_HASHES = 7;

/** Main thread → worker: requests are sent in one message per tick, at most this many. */
export const DISPATCH_BATCH_MAX = 4096;
/** Requests a front end may have waiting on workers; beyond it new requests get 2012. */
export const DISPATCH_IN_FLIGHT_MAX = 100_000;
/** Worker → main thread stats interval. */
export const STATS_INTERVAL_MS = 1000;

/** Native protocol: bytes a connection may have queued for sending before it is paused. */
export const CONNECTION_WRITE_BUFFER_BYTES_MAX = 64 * 1024 * 1024;

/** Requests one client connection may have in flight (dispatched, not yet answered), on the native
 * protocol and on gRPC. 4096: the TypeScript client's own default (client/options.ts
 * maxInFlightPerConnection), so it never meets this bound; enough for one connection to fill
 * several group commits of a few hundred writes each; and 1/24 of DISPATCH_IN_FLIGHT_MAX, so one
 * client that pipelines without limit holds at most 4% of the node's request slots.
 * Beyond it the server stops reading that connection until a request is answered (backpressure,
 * as Kafka mutes a channel and Cassandra stops reading a connection over its in-flight limit);
 * gRPC advertises it as HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS, and clients queue further calls.
 * Not 2012: refusing request N while accepting N+1 would let a pipelining client's writes land
 * out of the order it sent them, and TCP flow control slows the sender without any retries. */
export const CONNECTION_REQUESTS_IN_FLIGHT_MAX = 4096;
/** Request body bytes the node has accepted and not yet answered, over every connection and front
 * end; beyond it new requests get 2012. 256 MiB: 16 requests of the largest frame (16 MiB) at
 * once, so any one request fits when the node is idle (asserted in router.ts); 32 group commits
 * (GROUP_COMMIT_BYTES_MAX) queued, about 0.25 s of sequential writing on i4i-class NVMe
 * (~1 GB/s), so a longer queue adds latency and memory but no throughput. At ~200 B per request
 * it allows ~1.3 million requests, so DISPATCH_IN_FLIGHT_MAX binds first for small requests; this
 * bound is for large ones, where 100 000 requests of 16 MiB would otherwise be 1.6 TiB. */
export const DISPATCH_BYTES_IN_FLIGHT_MAX = 256 * 1024 * 1024;

/** Shard feed readers (readShard / subscribeShard / subscribe / watch long polls) that may wait at
 * the tail of one shard at once; beyond it a long poll gets 2012. Each waiter costs a closure and
 * a timer, and every commit walks the list, so the bound keeps a commit's extra work to a few
 * microseconds; 1024 covers 100 subscribers per org over every shard of a 2-core node with room. */
export const FEED_WAITERS_PER_SHARD_MAX = 1024;
/** After a feed long poll is woken by a commit, it answers this much later, so the commits right
 * behind come in the same page: a subscriber at the tail costs a round trip per FEED_LINGER_MS,
 * not one per group commit (a fan-out of 100 subscribers otherwise asks tens of thousands of times
 * a second). Adds that much to delivery latency at the tail. */
export const FEED_LINGER_MS = 5;
/** Feed long polls (subscriptions, watches) in flight on one native connection; beyond it 2012. A
 * long poll holds one of the connection's CONNECTION_REQUESTS_IN_FLIGHT_MAX slots for up to
 * Limits.feedWaitMsMax, so without this bound enough subscribers on one connection would stop
 * the connection reading — and the writes behind them on it — for that long. 256 leaves 15/16 of
 * the slots to writes and reads; 100 org subscriptions over 2 shards need 200. */
export const FEED_WAITS_PER_CONNECTION_MAX = 256;
/** Feed long polls in flight on a node, over every connection and gRPC stream; beyond it 2012.
 * FEED_WAITERS_PER_SHARD_MAX times a 16-shard node: past it, subscribers should share a feed. */
export const FEED_WAITS_PER_NODE_MAX = 16_384;
/** Live gRPC streams (SubscribeShard, Subscribe, Watch) on one gRPC connection; beyond it the call
 * fails with 2012 at once. Each holds a long poll per shard it reads (and Subscribe/Watch a queue
 * in the node), so this is the gRPC side of FEED_WAITS_PER_CONNECTION_MAX, per stream. */
export const GRPC_LIVE_STREAMS_PER_CONNECTION_MAX = 256;
/** Long-poll wait of each shard feed read behind a gRPC SubscribeShard stream: a cancelled stream
 * holds its feed waiter at most this long. 5 s, the client library's own poll interval. */
export const GRPC_FEED_WAIT_MS = 5_000;

/** Schemas the registry holds, over every org (SPEC §5); a registration beyond it gets 9100. The
 * registry is a cache of the system aggregate held whole on the main thread, with compiled
 * validators, so it is bounded by count and by bytes. 1000 covers a few hundred event types
 * with a few versions each. */
export const SCHEMAS_MAX = 1000;
/** One schema's text, UTF-8 bytes (Limits.schemaBytesMax, checked by the wire decoder). */
export const SCHEMA_BYTES_MAX = Limits.schemaBytesMax;
/** Bytes of schema text in the registry, over every org: 8 MiB, so that a `listSchemas` answer of
 * the whole registry (text plus about 60 bytes per entry) stays far inside one 16 MiB frame. */
export const SCHEMA_REGISTRY_BYTES_MAX = 8 * 1024 * 1024;
/** Tries of one registration whose append to the system aggregate lost an expected-version race
 * (another registration landed first, e.g. on the other node just before a failover). */
export const SCHEMA_REGISTER_ATTEMPTS_MAX = 4;
/** How long a read of the schema registry waits for its shard to commit what is durable on it (a
 * new leader's adopted tail commits after its write gate opens: to the old leader, or to S3 after
 * the replication timeout, 500 ms at the default timings). Writes wait behind that read, so it is
 * bounded: beyond it the read gets 2012 (retry) and the cache stays incomplete. */
export const SCHEMA_REGISTRY_COMMIT_WAIT_MS = 2_000;
