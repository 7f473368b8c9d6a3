// The storage engine's typed errors (thrown by ShardLog, handled by the shard).

/** Durable data failed its checks: the shard must not be served. */
export class CorruptionError extends Error {
  override name = 'CorruptionError';
}

/** The data is in a format this version does not read (not damage: say what to do). */
export class FormatError extends Error {
  override name = 'FormatError';
}

/** A write could not get disk space (a new segment could not be made). Nothing was placed. */
export class DiskFullError extends Error {
  override name = 'DiskFullError';
  /** False when the next segment could not be made for another reason than space (say, EIO). */
  readonly diskFull: boolean;
  constructor(message: string, opts: { diskFull?: boolean } = {}) {
    super(message);
    this.diskFull = opts.diskFull ?? true;
  }
}

/**
 * The write + fdatasync of a group failed: some of its bytes may be in the file. `eraseUndurable`
 * must succeed before the group can be reported as not stored.
 */
export class GroupWriteError extends Error {
  override name = 'GroupWriteError';
  override readonly cause: unknown;
  constructor(message: string, cause: unknown) {
    super(message);
    this.cause = cause;
  }
}

/** Sealing the active segment or activating the next one failed half way: the log needs a restart to continue. */
export class RotationFailedError extends Error {
  override name = 'RotationFailedError';
  override readonly cause: unknown;
  constructor(message: string, cause: unknown) {
    super(message);
    this.cause = cause;
  }
}

/** truncateAfter was asked to cut acknowledged records. */
export class TruncateRefusedError extends Error {
  override name = 'TruncateRefusedError';
}
