// Synchronous fallback: pwrite of each buffer, then fdatasync, on the calling thread. Used when the
// io_uring addon is missing or the kernel refuses io_uring, and when CELER_IO=sync asks for it.
// It blocks the event loop for the whole sync, which is why io_uring is preferred.
import { fdatasyncSync, readSync, writeSync } from 'node:fs';
import type { AlignedWrite, IoBackend } from './io.ts';

// A WebAssembly page is 64 KiB (fixed by the WebAssembly spec).
const WASM_PAGE_BYTES = 65536;

// The project's lib settings (es2023, no DOM) carry no WebAssembly types; this is the one
// constructor used here.
type WasmMemoryCtor = new (descriptor: { initial: number; maximum: number }) => { readonly buffer: ArrayBuffer };
const WasmMemory = (globalThis as unknown as { WebAssembly: { Memory: WasmMemoryCtor } }).WebAssembly.Memory;

/**
 * Page-aligned memory without the addon: V8 maps every WebAssembly.Memory from fresh pages, so its
 * buffer starts on an OS page boundary (4096 on x86-64 Linux). Costs at least one 64 KiB page per
 * allocation, which is fine for the long-lived buffers of a fallback path. openFileIo's probe
 * writes one of these with O_DIRECT, so a V8 that broke the assumption would be caught at startup.
 */
export function allocPageAligned(size: number): Uint8Array {
  const pages = Math.max(1, Math.ceil(size / WASM_PAGE_BYTES));
  const memory = new WasmMemory({ initial: pages, maximum: pages });
  return new Uint8Array(memory.buffer, 0, size);
}

function writeFully(fd: number, buf: Uint8Array, offset: number): void {
  let done = 0;
  // Regular files only write short when the disk fills; the next call then reports ENOSPC.
  while (done < buf.byteLength) {
    done += writeSync(fd, buf, done, buf.byteLength - done, offset + done);
  }
}

export function createSyncBackend(alloc: (size: number) => Uint8Array): IoBackend {
  return {
    kind: 'sync',
    allocAligned: alloc,
    async writevFsync(fd: number, writes: readonly AlignedWrite[]): Promise<void> {
      for (const w of writes) writeFully(fd, w.buf, w.offset);
      fdatasyncSync(fd);
    },
    async read(fd: number, buf: Uint8Array, offset: number): Promise<number> {
      return readSync(fd, buf, 0, buf.byteLength, offset);
    },
    retain(): void {},
    release(): void {},
  };
}
