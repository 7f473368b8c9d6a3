// Errors the server returns, one class per stable numeric code (SPEC §6).
// Every class extends CelerError, so `err instanceof CelerError && err.code === 2003` and
// `err instanceof WrongExpectedVersionError` both work.

export const ErrorCode = {
  ReadBelowTrimmed: 1000,
  AggregateNotFound: 1001,
  AlreadyApplied: 2002,
  WrongExpectedVersion: 2003,
  NotAcknowledged: 2007,
  StorageFailed: 2008,
  NotLeader: 2011,
  ServerBusy: 2012,
  DuplicateInFlight: 2013,
  SchemaValidation: 2022,
  CrossShardWrite: 9001,
  BadRequest: 9100,
  ShardUnavailable: 9200,
} as const;
export type ErrorCodeValue = (typeof ErrorCode)[keyof typeof ErrorCode];

/** Structured detail some errors carry (wire: JSON). */
export interface ErrorDetail {
  currentVersion?: string;
  leader?: string;
  lastClientSeq?: string;
  minVersion?: string;
  numShards?: number;
  shards?: number[];
  /** 2022: the validator's message (a write), or why a registration was refused. */
  validator?: string;
  /** 2022 on a registration: 'immutable' (the version holds another text) or 'incompatible' (see `against`). */
  reason?: string;
  /** 2022 'incompatible': the registered version the new one was checked against ("1.0"). */
  against?: string;
  /** 2022 on a write: which aggregate write and event failed, its event type, schema version ("1.0") and format. */
  write?: number;
  event?: number;
  eventType?: string;
  schemaVersion?: string;
  format?: string;
  /** 2008: true when the disk is full (writes resume once space is freed), false after a failed fsync. */
  diskFull?: boolean;
  shard?: number;
  /** 2012 from a dropped subscription (SubscriberTooSlowError): batches queued, and the limit they reached. */
  queuedBatches?: number;
  queuedBytes?: number;
  queueLimit?: string;
}

export class CelerError extends Error {
  override name = 'CelerError';
  readonly code: number;
  readonly detail: ErrorDetail;
  constructor(code: number, message: string, detail: ErrorDetail = {}) {
    super(message);
    this.code = code;
    this.detail = detail;
  }
}

export class ReadBelowTrimmedError extends CelerError {
  override name = 'ReadBelowTrimmedError';
}
export class AggregateNotFoundError extends CelerError {
  override name = 'AggregateNotFoundError';
}
export class AlreadyAppliedError extends CelerError {
  override name = 'AlreadyAppliedError';
}
export class WrongExpectedVersionError extends CelerError {
  override name = 'WrongExpectedVersionError';
  /** The aggregate's version when the guard failed (0 = it does not exist). */
  get currentVersion(): bigint {
    return BigInt(this.detail.currentVersion ?? '0');
  }
}
/** 2007: the write was not acknowledged (replication failed, or the leader was fenced): outcome unknown; retry with the same clientSeq. */
export class NotAcknowledgedError extends CelerError {
  override name = 'NotAcknowledgedError';
}
/**
 * 2008: with `diskFull` the write was not stored (the disk is full; writes resume when space is
 * freed, reads go on). Without it a write or fsync failed: that shard takes no more writes and the
 * outcome is unknown (the data may have reached the disk, or in a cluster the follower): retry
 * with the same clientSeq.
 */
export class StorageWriteError extends CelerError {
  override name = 'StorageWriteError';
  get diskFull(): boolean {
    return this.detail.diskFull === true;
  }
}
export class NotLeaderError extends CelerError {
  override name = 'NotLeaderError';
  get leader(): string | undefined {
    return this.detail.leader;
  }
}
export class ServerBusyError extends CelerError {
  override name = 'ServerBusyError';
}
/**
 * 2012, client-side: a subscription at the live tail held its queue's limit of batches (or bytes)
 * that its consumer had not taken, so it was dropped rather than buffer more. Nothing was skipped:
 * subscribe again from `resumeFrom` (the checkpoint, seq or version right after the last batch the
 * consumer received); the catch-up that follows goes at the consumer's pace.
 */
export class SubscriberTooSlowError extends ServerBusyError {
  override name = 'SubscriberTooSlowError';
  /** Where to resume: a checkpoint (org subscription), the next seq (shard) or version (aggregate); undefined for watch. */
  readonly resumeFrom: string | bigint | undefined;
  constructor(message: string, resumeFrom: string | bigint | undefined, detail: ErrorDetail) {
    super(ErrorCode.ServerBusy, message, detail);
    this.resumeFrom = resumeFrom;
  }
}
export class DuplicateInFlightError extends CelerError {
  override name = 'DuplicateInFlightError';
}
/**
 * 2022: an event does not match its registered schema (the write was refused whole: nothing of it
 * landed), or a registration was refused against what is registered (`reason` 'immutable' or
 * 'incompatible'). `validator` is the validator's (or the compatibility check's) message.
 */
export class SchemaValidationError extends CelerError {
  override name = 'SchemaValidationError';
  get validator(): string | undefined {
    return this.detail.validator;
  }
}
export class CrossShardWriteError extends CelerError {
  override name = 'CrossShardWriteError';
}
export class BadRequestError extends CelerError {
  override name = 'BadRequestError';
}
export class ShardUnavailableError extends CelerError {
  override name = 'ShardUnavailableError';
}

/** Client-side: the connection failed or closed before an answer came (outcome unknown for writes). */
export class ConnectionError extends Error {
  override name = 'ConnectionError';
  readonly code = 'ECONNECTION';
}
/** Client-side: no answer within the request timeout (outcome unknown for writes). */
export class TimeoutError extends Error {
  override name = 'TimeoutError';
  readonly code = 'ETIMEDOUT';
}
/** Client-side: no connection could be opened (or the node's circuit breaker is open); the request was never sent. */
export class ConnectFailedError extends ConnectionError {
  override name = 'ConnectFailedError';
}
/** Client-side: a connection's wait queue is full (too many requests outstanding); the request was never sent. */
export class RequestQueueFullError extends Error {
  override name = 'RequestQueueFullError';
  readonly code = 'EQUEUEFULL';
}

const classes: Record<number, new (code: number, message: string, detail?: ErrorDetail) => CelerError> = {
  1000: ReadBelowTrimmedError,
  1001: AggregateNotFoundError,
  2002: AlreadyAppliedError,
  2003: WrongExpectedVersionError,
  2007: NotAcknowledgedError,
  2008: StorageWriteError,
  2011: NotLeaderError,
  2012: ServerBusyError,
  2013: DuplicateInFlightError,
  2022: SchemaValidationError,
  9001: CrossShardWriteError,
  9100: BadRequestError,
  9200: ShardUnavailableError,
};

/** Builds the typed error for a code the server returned. */
export function errorFromCode(code: number, message: string, detail: ErrorDetail = {}): CelerError {
  const Cls = classes[code] ?? CelerError;
  return new Cls(code, message, detail);
}
