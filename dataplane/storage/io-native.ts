// Loads the io_uring addon (dataplane/native, built by hack/build-native.sh) once per thread.
// Every worker_thread gets its own module instance and therefore its own ring.
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

/** What dataplane/native/src/celer_io.cc exports. */
export interface NativeIo {
  /** Creates this thread's ring (or adds a reference). Throws an Error with errno/code/syscall. */
  ringAcquire(sqEntries: number): void;
  /** Drops a reference; the ring is torn down once unreferenced and idle. */
  ringRelease(): void;
  /**
   * N writes linked (IOSQE_IO_LINK) to one fdatasync; resolves after the fdatasync completed. A failed
   * or short write cancels the rest, and the promise rejects with that write's errno Error.
   */
  writevFsync(fd: number, offsets: number[], bufs: Uint8Array[]): Promise<void>;
  /** Resolves with the bytes read (short only at end of file). */
  read(fd: number, buf: Uint8Array, offset: number): Promise<number>;
  /** posix_memalign(alignBytes) memory, zeroed, freed when the ArrayBuffer is collected. */
  allocAligned(size: number): ArrayBuffer;
  readonly alignBytes: number;
}

/** Where node-gyp puts the addon (see hack/build-native.sh). */
export const NATIVE_ADDON_PATH = fileURLToPath(new URL('../native/build/Release/celer_io.node', import.meta.url));

export type NativeLoad = { ok: true; native: NativeIo } | { ok: false; error: Error };

let loaded: NativeLoad | undefined;

/** Loads the addon, remembering the outcome (including failure) for this thread. */
export function loadNativeIo(): NativeLoad {
  if (loaded === undefined) {
    try {
      const native = createRequire(import.meta.url)(NATIVE_ADDON_PATH) as NativeIo;
      loaded = { ok: true, native };
    } catch (err) {
      loaded = { ok: false, error: err instanceof Error ? err : new Error(String(err)) };
    }
  }
  return loaded;
}
