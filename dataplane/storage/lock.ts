// The data-directory lock: an exclusive flock(2) on <dir>/celer.lock, held on an open fd for the
// life of the process, so that two processes never open one data directory.
//
// Why flock and not a pid file: a pid file has to decide whether its pid is stale, and in
// containers that question has no answer. Every container's main process is PID 1, so a second
// node sharing the volume finds "its own" pid in the file (or a pid that is alive in its own
// namespace but names another process) and takes over. The kernel's lock needs no such guess: it
// belongs to the open file description, dies with the process (kill -9 and OOM kills included),
// and is seen by every process on the host whatever its PID namespace.
//
// Node has no flock, so it comes from the celer_fs addon (dataplane/native, built by
// hack/build-native.sh; it needs only libc). Without it this refuses to start: a lock that can
// be broken wrongly is worse than none, because it looks like protection. CELER_UNSAFE_NO_LOCK=1
// starts without a lock anyway, with a warning, for operators who guarantee a single process some
// other way.
import { closeSync, constants as fsConstants, ftruncateSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { DataDirLockedError } from './disk.ts';

export { DataDirLockedError };

export const LOCK_FILE = 'celer.lock';
/** Set to 1 to start without the data-directory lock when it cannot be taken (not when it is held). */
export const UNSAFE_NO_LOCK_ENV = 'CELER_UNSAFE_NO_LOCK';

/** Where node-gyp puts the flock addon (see hack/build-native.sh). */
export const NATIVE_FS_ADDON_PATH = fileURLToPath(new URL('../native/build/Release/celer_fs.node', import.meta.url));

/** What dataplane/native/src/celer_fs.cc exports. */
interface NativeFs {
  /** 0, or throws an errno Error (code EAGAIN/EWOULDBLOCK when held and nonblocking). */
  flock(fd: number, exclusive: boolean, nonblocking: boolean): number;
}

/** The data-directory lock cannot be taken at all (no addon, or the filesystem has no flock). */
export class DataDirLockUnavailableError extends Error {
  override name = 'DataDirLockUnavailableError';
}

export interface DataDirLock {
  /** Closes the lock's fd, which releases the lock. Idempotent. */
  release(): Promise<void>;
}

let native: { ok: true; fs: NativeFs } | { ok: false; error: Error } | undefined;

function loadNativeFs(): { ok: true; fs: NativeFs } | { ok: false; error: Error } {
  if (native === undefined) {
    try {
      native = { ok: true, fs: createRequire(import.meta.url)(NATIVE_FS_ADDON_PATH) as NativeFs };
    } catch (err) {
      native = { ok: false, error: err instanceof Error ? err : new Error(String(err)) };
    }
  }
  return native;
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function firstLine(s: string): string {
  return s.split('\n', 1)[0] ?? s;
}

/** What the holder wrote into the lock file, for the error message only: never trusted. */
function holderNote(path: string): string {
  try {
    const text = readFileSync(path, 'utf8').trim();
    return text === '' ? '' : ` (${LOCK_FILE} says: ${firstLine(text).slice(0, 200)}; that pid is in the holder's PID namespace, which may be another container's)`;
  } catch {
    return '';
  }
}

function unlocked(log: (msg: string) => void, why: string): DataDirLock {
  log(`WARNING: ${why}; ${UNSAFE_NO_LOCK_ENV}=1 is set, so starting WITHOUT a data-directory lock: nothing stops a second process from opening this directory and corrupting it.`);
  return { release: async () => {} };
}

/**
 * Takes the exclusive lock of data directory `dir` (creating `dir` and its lock file if missing),
 * held until `release()` or the end of the process. Throws DataDirLockedError when another
 * process, or another lockDataDir in this one, holds it; DataDirLockUnavailableError when no lock
 * can be taken (the celer_fs addon is not built, or the filesystem refuses flock), unless
 * CELER_UNSAFE_NO_LOCK=1 is set.
 *
 * The lock file is never removed: removing it while another process has it open would let that
 * process and a third one lock two different files of the same name.
 */
export async function lockDataDir(dir: string, opts: { log?: (msg: string) => void } = {}): Promise<DataDirLock> {
  const log = opts.log ?? ((msg: string) => console.warn(msg));
  const unsafe = process.env[UNSAFE_NO_LOCK_ENV] === '1';
  const path = join(dir, LOCK_FILE);
  const loaded = loadNativeFs();
  if (!loaded.ok) {
    const why = `cannot lock data directory ${dir}: the flock addon ${NATIVE_FS_ADDON_PATH} does not load (${firstLine(loaded.error.message)})`;
    if (unsafe) return unlocked(log, why);
    throw new DataDirLockUnavailableError(
      `${why}. Celer will not open a data directory it cannot lock, because two processes writing one directory corrupt it. ` +
        `Build the addon with 'bash hack/build-native.sh' (needs g++, make and python3, not liburing), ` +
        `or set ${UNSAFE_NO_LOCK_ENV}=1 if you guarantee a single process some other way.`,
    );
  }
  mkdirSync(dir, { recursive: true });
  // O_CLOEXEC comes with every open in Node (libuv), so child processes never inherit the lock.
  const fd = openSync(path, fsConstants.O_RDWR | fsConstants.O_CREAT, 0o644);
  try {
    loaded.fs.flock(fd, true, true);
  } catch (err) {
    closeSync(fd);
    const code = errnoCode(err);
    if (code === 'EAGAIN' || code === 'EWOULDBLOCK') {
      throw new DataDirLockedError(
        `data directory ${dir} is in use: another Celer process holds its lock ${path}${holderNote(path)}. ` +
          `Stop that process first, or start this one with another --data-dir. The lock is released when its holder exits, however it exits.`,
      );
    }
    const why = `cannot lock data directory ${dir}: flock(${path}) failed: ${err instanceof Error ? err.message : String(err)}`;
    if (unsafe) return unlocked(log, why);
    throw new DataDirLockUnavailableError(
      `${why}. The filesystem may not support flock (some network and FUSE filesystems do not); use a local filesystem, ` +
        `or set ${UNSAFE_NO_LOCK_ENV}=1 if you guarantee a single process some other way.`,
    );
  }
  // For people reading the file, and for the message a second process prints; never consulted.
  try {
    ftruncateSync(fd, 0);
    writeSync(fd, `pid ${process.pid} on host ${hostname()} since ${new Date().toISOString()}\n`, 0);
  } catch {
    // The lock is what matters; a read-only or full disk fails soon enough elsewhere.
  }
  let released = false;
  return {
    release: async () => {
      if (released) return;
      released = true;
      closeSync(fd);
    },
  };
}
