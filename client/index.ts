// @celer/client: the TypeScript client of Celer. See README.md beside this file.
export { CelerClient, connect } from './client.ts';
export { DEFAULTS, type ClientOptions } from './options.ts';
export type { BreakerState, NodeStats } from './pool.ts';
export {
  EXACTLY_ONCE_DEFAULTS,
  appendExactlyOnce,
  backoffDelayMs,
  writeExactlyOnce,
  type AppendExactlyOnceOptions,
  type AppendExactlyOnceResult,
  type BackoffOptions,
  type ExactlyOnceOptions,
  type ExactlyOnceTarget,
  type WriteExactlyOnceResult,
} from './exactly-once.ts';
export * from './errors.ts';
export * from './types.ts';
export { KeyError, formatKey, normalizeKey, parseKey, toUuid, type NormalizedKey } from './key.ts';
export { Limits, WireError } from './wire.ts';
export {
  FEED_POLL_WAIT_MS_DEFAULT,
  SUBSCRIPTION_QUEUE_BATCHES_DEFAULT,
  SUBSCRIPTION_QUEUE_BATCHES_MAX,
  SUBSCRIPTION_QUEUE_BYTES_MAX,
  type FollowOptions,
  type ReadShardOptions,
  type ShardBatch,
  type ShardPage,
  type SubscribedBatch,
  type SubscribeKeyOptions,
  type SubscribeOrgFilter,
  type SubscribeOrgOptions,
  type SubscribeShardOptions,
  type WatchFilter,
  type WatchHeartbeat,
  type WatchNotification,
  type WatchOptions,
} from './feed.ts';
export {
  DecryptionError,
  EncryptingClient,
  InMemoryKeyProvider,
  KEY_BYTES,
  KeyUnavailableError,
  encrypting,
  type EncryptionOptions,
  type KeyProvider,
  type OpenedEvent,
} from './encryption.ts';
