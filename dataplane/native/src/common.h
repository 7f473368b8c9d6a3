// Shared by the addon's translation units: limits, the request/op records, error and
// memory-pinning helpers. See celer_io.cc for what the addon exports and why.
#pragma once

#include <napi.h>
#include <uv.h>
#include <liburing.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace celer {


// Alignment of buffers handed out by allocAligned; equals IO_ALIGN_BYTES in
// dataplane/storage/io.ts (the largest logical block size O_DIRECT is expected to need).
constexpr size_t kAlignBytes = 4096;

// Fallback submission-queue size when JS passes none; io.ts passes its own named constant.
constexpr unsigned kDefaultSqEntries = 256;

// Retry delay after io_uring_enter reported EAGAIN/EBUSY with nothing in flight to wake us: the
// kernel is short of memory, so back off briefly rather than spin (1 ms = one loop timer tick).
constexpr uint64_t kSubmitRetryMs = 1;

// Most writes one writevFsync links into a chain with its fsync. Linked writes run one after
// another, each waiting for the one before; beyond this many, the writes go unlinked (in
// parallel) and the fsync is submitted once they all succeeded, at the cost of one trip through
// the thread's event loop. The engine sends one or two writes per group commit. Measured in
// dataplane/native/README.md ("Linked or staged").
#ifndef CELER_CHAIN_WRITES_MAX
#define CELER_CHAIN_WRITES_MAX 4
#endif
constexpr size_t kChainWritesMax = CELER_CHAIN_WRITES_MAX;

// Largest transfer of one read/write: Linux's MAX_RW_COUNT (INT_MAX rounded down to a page);
// anything longer would be cut short by the kernel, and a CQE result is an int anyway.
constexpr size_t kMaxIoBytes = 0x7ffff000;

enum class OpKind { kWrite, kFsync, kRead };

struct Request;

// One SQE's worth of work. Its address is the SQE's user_data.
struct Op {
  Request* req;
  OpKind kind;
  int fd;
  void* data;
  unsigned len;
  uint64_t offset;
  // Set when submitted as a non-first member of a chain (linked to the SQE before it).
  bool linkedToPrev = false;
};

// Consecutive ops of one request that enter the submission queue together: all of them or none.
// With count > 1 each but the last carries IOSQE_IO_LINK, so the kernel starts op i+1 only after
// op i succeeded, and cancels the rest (-ECANCELED) once one fails or writes short.
struct Unit {
  Op* first;
  unsigned count;
};

// One JS call (one promise). Freed when its last op completes.
struct Request {
  napi_deferred deferred = nullptr;
  std::unique_ptr<Op[]> ops;
  size_t opCount = 0;
  size_t remaining = 0;
  // What keeps every buffer alive until the kernel is done with it: a pin for memory from
  // allocAligned, a strong reference for any other buffer.
  std::vector<void*> pins;
  std::vector<napi_ref> refs;
  int err = 0;  // first failure, positive errno
  const char* errSyscall = nullptr;
  bool shortWrite = false;
  bool isRead = false;
  int64_t bytesRead = 0;
  // The fsync (the request's last op) does not ride in one chain with the writes, so it is
  // submitted alone once every write has completed successfully: for requests longer than the
  // ring, and for a chain the kernel split (see Ring::NoteSplitChain).
  bool fsyncAfterWrites = false;
  bool fsyncQueued = false;
};

// Errors shaped like Node's fs errors (memory.cc).
napi_value ErrnoErrorValue(napi_env env, int err, const char* syscall, const char* detail);
void ThrowErrno(napi_env env, int err, const char* syscall);

// allocAligned memory and the pins that keep it alive under in-flight I/O (memory.cc).
bool PinAllocation(void* base);
void UnpinAllocation(void* base);
void ReleaseBuffers(napi_env env, Request* req);
Napi::Value AllocAligned(const Napi::CallbackInfo& info);

}  // namespace celer
