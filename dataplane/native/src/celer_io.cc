// io_uring disk I/O for Celer's storage engine (dataplane/storage/io.ts is the only caller).
//
// One Ring per JS thread (per Node environment): the main thread and every worker_thread that
// opens a FileIo gets its own io_uring, whose completions are delivered on that thread's libuv
// loop through an eventfd watched by a uv_poll_t. The poll is active only while operations are in
// the kernel, so an idle ring never keeps a process or worker alive.
//
// Exports (all called from the owning thread only):
//   ringAcquire(sqEntries)            -> undefined; creates this thread's ring or adds a reference.
//                                       Throws an Error with errno/code/syscall when the kernel
//                                       refuses io_uring (EPERM/ENOSYS under seccomp, ...).
//   ringRelease()                     -> undefined; drops a reference; the ring is torn down once
//                                       unreferenced and idle.
//   writevFsync(fd, offsets, bufs)    -> Promise<void>; N IORING_OP_WRITE then one
//                                       IORING_OP_FSYNC(DATASYNC) flagged IOSQE_IO_DRAIN.
//   read(fd, buf, offset)             -> Promise<number> (bytes read; short only at end of file).
//   allocAligned(size)                -> ArrayBuffer, 4096-aligned, zeroed, freed by its finalizer.

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

namespace {

// Alignment of buffers handed out by allocAligned; equals IO_ALIGN_BYTES in
// dataplane/storage/io.ts (the largest logical block size O_DIRECT is expected to need).
constexpr size_t kAlignBytes = 4096;

// Fallback submission-queue size when JS passes none; io.ts passes its own named constant.
constexpr unsigned kDefaultSqEntries = 256;

// Retry delay after io_uring_enter reported EAGAIN/EBUSY with nothing in flight to wake us: the
// kernel is short of memory, so back off briefly rather than spin (1 ms = one loop timer tick).
constexpr uint64_t kSubmitRetryMs = 1;

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
};

// An Error shaped like Node's fs errors (negative errno, symbolic code, syscall name). Raw
// Node-API with every status checked, because it also runs from libuv callbacks while a worker is
// terminating, where calls can fail; returns nullptr then.
napi_value ErrnoErrorValue(napi_env env, int err, const char* syscall, const char* detail) {
  std::string msg = std::string(uv_err_name(-err)) + ": " + uv_strerror(-err) + ", " + syscall;
  if (detail != nullptr) msg += std::string(" (") + detail + ")";
  napi_value text, error, errnoValue, code, syscallValue;
  if (napi_create_string_utf8(env, msg.c_str(), msg.size(), &text) != napi_ok ||
      napi_create_error(env, nullptr, text, &error) != napi_ok ||
      napi_create_int32(env, -err, &errnoValue) != napi_ok ||
      napi_create_string_utf8(env, uv_err_name(-err), NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscallValue) != napi_ok ||
      napi_set_named_property(env, error, "errno", errnoValue) != napi_ok ||
      napi_set_named_property(env, error, "code", code) != napi_ok ||
      napi_set_named_property(env, error, "syscall", syscallValue) != napi_ok) {
    return nullptr;
  }
  return error;
}

void ThrowErrno(napi_env env, int err, const char* syscall) {
  napi_value error = ErrnoErrorValue(env, err, syscall, nullptr);
  if (error != nullptr) napi_throw(env, error);
}

// Memory handed out by allocAligned, keyed by its address. A strong JS reference is not enough to
// keep such memory alive under in-flight I/O: when an environment shuts down, Node frees external
// ArrayBuffers in its cleanup hooks, newest first, so a buffer allocated after the ring was created
// would be freed before the ring's own hook has waited for the kernel to finish writing into it.
// Instead each in-flight op pins the allocation, and the ArrayBuffer's finalizer frees it only when
// no pin is left (otherwise the last unpin does). Global with a mutex, because a finalizer is not
// guaranteed to run on the allocating thread.
struct Allocation {
  unsigned pins = 0;
  bool jsAlive = true;
};
// Never destroyed: a worker's finalizers may still run while the process's static destructors do.
std::mutex& gAllocMutex = *new std::mutex();
std::unordered_map<void*, Allocation>& gAllocs = *new std::unordered_map<void*, Allocation>();

bool PinAllocation(void* base) {
  std::lock_guard<std::mutex> lock(gAllocMutex);
  auto it = gAllocs.find(base);
  if (it == gAllocs.end()) return false;
  it->second.pins++;
  return true;
}

void UnpinAllocation(void* base) {
  std::lock_guard<std::mutex> lock(gAllocMutex);
  auto it = gAllocs.find(base);
  if (it == gAllocs.end()) return;
  if (--it->second.pins == 0 && !it->second.jsAlive) {
    gAllocs.erase(it);
    free(base);
  }
}

void OnAllocationFinalized(napi_env /*env*/, void* base, void* /*hint*/) {
  std::lock_guard<std::mutex> lock(gAllocMutex);
  auto it = gAllocs.find(base);
  if (it == gAllocs.end()) return;
  if (it->second.pins == 0) {
    gAllocs.erase(it);
    free(base);
  } else {
    it->second.jsAlive = false;
  }
}

void ReleaseBuffers(napi_env env, Request* req) {
  for (void* base : req->pins) UnpinAllocation(base);
  for (napi_ref ref : req->refs) napi_delete_reference(env, ref);
  req->pins.clear();
  req->refs.clear();
}

class Ring;
thread_local Ring* tlsRing = nullptr;

class Ring {
 public:
  // Returns nullptr and sets *err (positive errno) and *syscall on failure.
  static Ring* Create(napi_env env, unsigned entries, int* err, const char** syscall) {
    std::unique_ptr<Ring> r(new Ring());
    r->env_ = env;
    if (napi_get_uv_event_loop(env, &r->loop_) != napi_ok || r->loop_ == nullptr) {
      *err = EINVAL;
      *syscall = "napi_get_uv_event_loop";
      return nullptr;
    }
    int rc = io_uring_queue_init(entries, &r->ring_, 0);
    if (rc < 0) {
      *err = -rc;
      *syscall = "io_uring_queue_init";
      return nullptr;
    }
    r->ringOpen_ = true;
    r->capacity_ = r->ring_.sq.ring_entries;
    r->efd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->efd_ < 0) {
      *err = errno;
      *syscall = "eventfd";
      return nullptr;
    }
    rc = io_uring_register_eventfd(&r->ring_, r->efd_);
    if (rc < 0) {
      *err = -rc;
      *syscall = "io_uring_register_eventfd";
      return nullptr;
    }
    napi_value resource, resourceName;
    if (napi_create_object(env, &resource) != napi_ok ||
        napi_create_string_utf8(env, "CelerIoUring", NAPI_AUTO_LENGTH, &resourceName) != napi_ok ||
        napi_async_init(env, resource, resourceName, &r->asyncCtx_) != napi_ok) {
      *err = EINVAL;
      *syscall = "napi_async_init";
      return nullptr;
    }
    if (napi_add_async_cleanup_hook(env, OnEnvCleanup, r.get(), &r->cleanupHandle_) != napi_ok) {
      *err = EINVAL;
      *syscall = "napi_add_async_cleanup_hook";
      return nullptr;
    }
    // libuv handles last: nothing after them can fail, so a failed Create never leaves a handle
    // registered with the loop.
    r->poll_ = new uv_poll_t();
    rc = uv_poll_init(r->loop_, r->poll_, r->efd_);
    if (rc < 0) {
      delete r->poll_;
      r->poll_ = nullptr;
      napi_remove_async_cleanup_hook(r->cleanupHandle_);
      *err = -rc;
      *syscall = "uv_poll_init";
      return nullptr;
    }
    r->poll_->data = r.get();
    r->timer_ = new uv_timer_t();
    uv_timer_init(r->loop_, r->timer_);
    r->timer_->data = r.get();
    return r.release();
  }

  ~Ring() {
    DestroyAsyncContext();
    if (ringOpen_) io_uring_queue_exit(&ring_);
    // Handles are freed in their close callbacks; only a never-initialised poll lands here.
    if (poll_ == nullptr && efd_ >= 0) close(efd_);
  }

  napi_env env() const { return env_; }

  void DestroyAsyncContext() {
    if (asyncCtx_ != nullptr) napi_async_destroy(env_, asyncCtx_);
    asyncCtx_ = nullptr;
  }
  void AddRef() { refs_++; }

  void Release() {
    if (refs_ > 0) refs_--;
    MaybeTeardown();
  }

  // Queues every op of req and submits as many as fit in one io_uring_enter.
  void Enqueue(Request* req) {
    for (size_t i = 0; i < req->opCount; i++) backlog_.push_back(&req->ops[i]);
    Pump();
  }

 private:
  Ring() = default;

  // Moves backlog ops into free SQ slots (never more than capacity_ in the kernel at once, so the
  // completion queue, twice the SQ size, cannot overflow) and submits them.
  void Pump() {
    unsigned added = 0;
    while (!backlog_.empty() && inKernel_ + added < capacity_) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) break;
      Op* op = backlog_.front();
      backlog_.pop_front();
      switch (op->kind) {
        case OpKind::kWrite:
          io_uring_prep_write(sqe, op->fd, op->data, op->len, op->offset);
          break;
        case OpKind::kRead:
          io_uring_prep_read(sqe, op->fd, op->data, op->len, op->offset);
          break;
        case OpKind::kFsync:
          io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
          // DRAIN: starts only after every earlier SQE (this request's writes, and any earlier
          // request's) has completed, so the fdatasync covers them.
          sqe->flags |= IOSQE_IO_DRAIN;
          break;
      }
      io_uring_sqe_set_data(sqe, op);
      added++;
    }
    inKernel_ += added;
    if (inKernel_ > 0) StartPoll();
    Submit();
  }

  void Submit() {
    if (io_uring_sq_ready(&ring_) == 0) return;
    int rc;
    do {
      rc = io_uring_submit(&ring_);
    } while (rc == -EINTR);
    if (rc >= 0) return;
    if (rc == -EAGAIN || rc == -EBUSY) {
      // SQEs stay in the ring and go with the next submit: after the next completion, or after a
      // short timer when nothing is in flight to produce one.
      if (!uv_is_active(reinterpret_cast<uv_handle_t*>(timer_))) {
        uv_timer_start(timer_, OnRetryTimer, kSubmitRetryMs, 0);
      }
      return;
    }
    // EBADF/EFAULT/EINVAL/ENXIO mean the ring itself is broken; queued SQEs can no longer be
    // withdrawn, so continuing would leave promises pending forever.
    std::string msg = std::string("celer io_uring: io_uring_enter failed: ") + strerror(-rc);
    napi_fatal_error("celer_io", NAPI_AUTO_LENGTH, msg.c_str(), NAPI_AUTO_LENGTH);
  }

  void StartPoll() {
    if (polling_) return;
    polling_ = true;
    uv_poll_start(poll_, UV_READABLE, OnPoll);
  }

  void StopPoll() {
    if (!polling_) return;
    polling_ = false;
    uv_poll_stop(poll_);
  }

  static void OnRetryTimer(uv_timer_t* t) {
    Ring* r = static_cast<Ring*>(t->data);
    r->Submit();
  }

  static void OnPoll(uv_poll_t* h, int /*status*/, int /*events*/) {
    Ring* r = static_cast<Ring*>(h->data);
    uint64_t counter;
    // Reset the eventfd before reaping: a CQE posted after this read signals it again.
    while (read(r->efd_, &counter, sizeof counter) < 0 && errno == EINTR) {
    }
    // Raw Node-API with checked statuses: while a worker is being terminated these calls fail,
    // and node-addon-api's CallbackScope would then close a scope it never opened. In that case
    // completions are still reaped (buffers released), only the promises stay unsettled.
    napi_env env = r->env_;
    napi_handle_scope handleScope;
    if (napi_open_handle_scope(env, &handleScope) != napi_ok) {
      r->ReapAndPump(false);
      return;
    }
    napi_value resource;
    napi_callback_scope callbackScope;
    bool canRunJs = napi_create_object(env, &resource) == napi_ok &&
                    napi_open_callback_scope(env, resource, r->asyncCtx_, &callbackScope) == napi_ok;
    r->ReapAndPump(canRunJs);
    // Promise reactions run as microtasks when the callback scope closes, as for any libuv
    // callback; they may call back into the ring.
    if (canRunJs) napi_close_callback_scope(env, callbackScope);
    napi_close_handle_scope(env, handleScope);
    // Microtasks may have released the last reference; tearing down is safe here because the
    // handles are only closed, and freed in their close callbacks.
    if (tlsRing == r) r->MaybeTeardown();
  }

  void ReapAndPump(bool settle) {
    Reap(settle);
    Pump();
    if (inKernel_ == 0 && backlog_.empty()) StopPoll();
  }

  void Reap(bool settle) {
    io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      Op* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      int res = cqe->res;
      seen++;
      Complete(op, res, settle);
    }
    io_uring_cq_advance(&ring_, seen);
    inKernel_ -= seen;
  }

  // settle=false during environment teardown: JS can no longer run, buffers are just released.
  void Complete(Op* op, int res, bool settle) {
    Request* req = op->req;
    if (res < 0) {
      if (req->err == 0) {
        req->err = -res;
        req->errSyscall = op->kind == OpKind::kWrite   ? "io_uring write"
                          : op->kind == OpKind::kFsync ? "io_uring fsync"
                                                       : "io_uring read";
      }
    } else if (op->kind == OpKind::kWrite && static_cast<unsigned>(res) != op->len) {
      // Regular files only write short on a full disk or an I/O error; report it as EIO rather
      // than resubmitting the tail.
      if (req->err == 0) {
        req->err = EIO;
        req->errSyscall = "io_uring write";
        req->shortWrite = true;
      }
    } else if (op->kind == OpKind::kRead) {
      req->bytesRead = res;
    }
    if (--req->remaining > 0) return;
    if (settle) {
      // A failed value creation means the environment is going away: leave the promise pending.
      napi_value value = nullptr;
      if (req->err != 0) {
        value = ErrnoErrorValue(env_, req->err, req->errSyscall, req->shortWrite ? "short write" : nullptr);
        if (value != nullptr) napi_reject_deferred(env_, req->deferred, value);
      } else {
        napi_status st = req->isRead ? napi_create_double(env_, static_cast<double>(req->bytesRead), &value)
                                     : napi_get_undefined(env_, &value);
        if (st == napi_ok) napi_resolve_deferred(env_, req->deferred, value);
      }
    }
    ReleaseBuffers(env_, req);
    delete req;
  }

  void MaybeTeardown() {
    if (refs_ > 0 || inKernel_ > 0 || !backlog_.empty() || closing_) return;
    BeginClose(false);
  }

  // Closes the handles; the Ring is deleted once both close callbacks ran.
  void BeginClose(bool envCleanup) {
    closing_ = true;
    if (tlsRing == this) tlsRing = nullptr;
    StopPoll();
    if (!envCleanup) {
      napi_remove_async_cleanup_hook(cleanupHandle_);
      cleanupHandle_ = nullptr;
    }
    pendingCloses_ = 2;
    uv_close(reinterpret_cast<uv_handle_t*>(poll_), OnHandleClosed);
    uv_close(reinterpret_cast<uv_handle_t*>(timer_), OnHandleClosed);
  }

  static void OnHandleClosed(uv_handle_t* h) {
    Ring* r = static_cast<Ring*>(h->data);
    if (--r->pendingCloses_ > 0) return;
    delete r->poll_;
    r->poll_ = nullptr;
    delete r->timer_;
    r->timer_ = nullptr;
    close(r->efd_);
    r->efd_ = -1;
    napi_async_cleanup_hook_handle hook = r->cleanupHandle_;
    delete r;
    if (hook != nullptr) napi_remove_async_cleanup_hook(hook);
  }

  // The thread's environment is going away (worker exit or process exit): wait for the kernel to
  // finish with every buffer before V8 frees them, drop queued ops, then close.
  static void OnEnvCleanup(napi_async_cleanup_hook_handle handle, void* arg) {
    Ring* r = static_cast<Ring*>(arg);
    r->cleanupHandle_ = handle;
    io_uring_submit(&r->ring_);
    while (r->inKernel_ > 0) {
      io_uring_cqe* cqe;
      int rc = io_uring_wait_cqe(&r->ring_, &cqe);
      if (rc == -EINTR) continue;
      if (rc < 0) break;
      Op* op = static_cast<Op*>(io_uring_cqe_get_data(cqe));
      int res = cqe->res;
      io_uring_cqe_seen(&r->ring_, cqe);
      r->inKernel_--;
      r->Complete(op, res, false);
    }
    while (!r->backlog_.empty()) {
      Op* op = r->backlog_.front();
      r->backlog_.pop_front();
      r->Complete(op, -ECANCELED, false);
    }
    r->DestroyAsyncContext();
    r->BeginClose(true);
  }

  napi_env env_ = nullptr;
  uv_loop_t* loop_ = nullptr;
  io_uring ring_{};
  bool ringOpen_ = false;
  int efd_ = -1;
  uv_poll_t* poll_ = nullptr;
  uv_timer_t* timer_ = nullptr;
  napi_async_context asyncCtx_ = nullptr;
  napi_async_cleanup_hook_handle cleanupHandle_ = nullptr;
  std::deque<Op*> backlog_;
  unsigned inKernel_ = 0;
  unsigned capacity_ = 0;
  unsigned refs_ = 0;
  int pendingCloses_ = 0;
  bool polling_ = false;
  bool closing_ = false;
};

Ring* CurrentRing(Napi::Env env) {
  Ring* r = tlsRing;
  if (r == nullptr || r->env() != static_cast<napi_env>(env)) {
    Napi::Error::New(env, "celer_io: ringAcquire() was not called on this thread").ThrowAsJavaScriptException();
    return nullptr;
  }
  return r;
}

Napi::Value RingAcquire(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (tlsRing != nullptr) {
    tlsRing->AddRef();
    return env.Undefined();
  }
  unsigned entries = kDefaultSqEntries;
  if (info.Length() > 0 && info[0].IsNumber()) entries = info[0].As<Napi::Number>().Uint32Value();
  int err = 0;
  const char* syscall = "";
  Ring* r = Ring::Create(env, entries, &err, &syscall);
  if (r == nullptr) {
    ThrowErrno(env, err, syscall);
    return env.Undefined();
  }
  tlsRing = r;
  r->AddRef();
  return env.Undefined();
}

Napi::Value RingRelease(const Napi::CallbackInfo& info) {
  if (tlsRing != nullptr && tlsRing->env() == static_cast<napi_env>(info.Env())) tlsRing->Release();
  return info.Env().Undefined();
}

// Reads a Uint8Array's address and length, and makes `req` keep its memory alive.
bool HoldBytes(napi_env env, napi_value v, Request* req, void** data, size_t* len) {
  bool isTyped = false;
  napi_typedarray_type type;
  napi_value arrayBuffer;
  size_t byteOffset;
  if (napi_is_typedarray(env, v, &isTyped) != napi_ok || !isTyped ||
      napi_get_typedarray_info(env, v, &type, len, data, &arrayBuffer, &byteOffset) != napi_ok ||
      type != napi_uint8_array) {
    napi_throw_type_error(env, nullptr, "celer_io: expected a Uint8Array");
    return false;
  }
  if (*len > kMaxIoBytes) {
    napi_throw_range_error(env, nullptr, "celer_io: buffer larger than one read/write may transfer");
    return false;
  }
  // napi_get_typedarray_info's data already includes the view's byte offset.
  void* base = static_cast<char*>(*data) - byteOffset;
  if (PinAllocation(base)) {
    req->pins.push_back(base);
    return true;
  }
  // Not from allocAligned (V8-owned memory, freed only after every cleanup hook): a strong
  // reference suffices.
  napi_ref ref;
  if (napi_create_reference(env, v, 1, &ref) != napi_ok) return false;
  req->refs.push_back(ref);
  return true;
}

bool GetOffset(Napi::Env env, Napi::Value v, uint64_t* out) {
  if (!v.IsNumber()) {
    Napi::TypeError::New(env, "celer_io: expected a numeric offset").ThrowAsJavaScriptException();
    return false;
  }
  int64_t o = v.As<Napi::Number>().Int64Value();
  if (o < 0) {
    Napi::RangeError::New(env, "celer_io: negative offset").ThrowAsJavaScriptException();
    return false;
  }
  *out = static_cast<uint64_t>(o);
  return true;
}

// Request construction shared by writevFsync and read.
Request* NewRequest(size_t opCount) {
  Request* req = new Request();
  req->ops = std::make_unique<Op[]>(opCount);
  req->opCount = opCount;
  req->remaining = opCount;
  return req;
}

Napi::Value WritevFsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Ring* ring = CurrentRing(env);
  if (ring == nullptr) return env.Undefined();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsArray() || !info[2].IsArray()) {
    Napi::TypeError::New(env, "celer_io: writevFsync(fd, offsets[], bufs[])").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  Napi::Array offsets = info[1].As<Napi::Array>();
  Napi::Array bufs = info[2].As<Napi::Array>();
  uint32_t n = bufs.Length();
  if (offsets.Length() != n) {
    Napi::RangeError::New(env, "celer_io: offsets and bufs differ in length").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::unique_ptr<Request> req(NewRequest(n + 1));
  for (uint32_t i = 0; i < n; i++) {
    void* data;
    size_t len;
    uint64_t off;
    if (!HoldBytes(env, bufs.Get(i), req.get(), &data, &len) || !GetOffset(env, offsets.Get(i), &off)) {
      ReleaseBuffers(env, req.get());
      return env.Undefined();
    }
    req->ops[i] = Op{req.get(), OpKind::kWrite, fd, data, static_cast<unsigned>(len), off};
  }
  req->ops[n] = Op{req.get(), OpKind::kFsync, fd, nullptr, 0, 0};
  napi_value promise;
  napi_create_promise(env, &req->deferred, &promise);
  ring->Enqueue(req.release());
  return Napi::Value(env, promise);
}

Napi::Value Read(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Ring* ring = CurrentRing(env);
  if (ring == nullptr) return env.Undefined();
  if (info.Length() < 3 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "celer_io: read(fd, buf, offset)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  std::unique_ptr<Request> req(NewRequest(1));
  req->isRead = true;
  void* data;
  size_t len;
  uint64_t off;
  if (!HoldBytes(env, info[1], req.get(), &data, &len) || !GetOffset(env, info[2], &off)) {
    ReleaseBuffers(env, req.get());
    return env.Undefined();
  }
  req->ops[0] = Op{req.get(), OpKind::kRead, fd, data, static_cast<unsigned>(len), off};
  napi_value promise;
  napi_create_promise(env, &req->deferred, &promise);
  ring->Enqueue(req.release());
  return Napi::Value(env, promise);
}

Napi::Value AllocAligned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) {
    Napi::TypeError::New(env, "celer_io: allocAligned(size)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int64_t want = info[0].As<Napi::Number>().Int64Value();
  if (want < 0) {
    Napi::RangeError::New(env, "celer_io: negative size").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  size_t size = (static_cast<size_t>(want) + kAlignBytes - 1) / kAlignBytes * kAlignBytes;
  if (size == 0) size = kAlignBytes;
  void* p = nullptr;
  int rc = posix_memalign(&p, kAlignBytes, size);
  if (rc != 0) {
    ThrowErrno(env, rc, "posix_memalign");
    return env.Undefined();
  }
  memset(p, 0, size);
  {
    std::lock_guard<std::mutex> lock(gAllocMutex);
    gAllocs.emplace(p, Allocation{});
  }
  napi_value ab;
  if (napi_create_external_arraybuffer(env, p, size, OnAllocationFinalized, nullptr, &ab) != napi_ok) {
    OnAllocationFinalized(env, p, nullptr);
    return env.Undefined();
  }
  return Napi::Value(env, ab);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("ringAcquire", Napi::Function::New(env, RingAcquire, "ringAcquire"));
  exports.Set("ringRelease", Napi::Function::New(env, RingRelease, "ringRelease"));
  exports.Set("writevFsync", Napi::Function::New(env, WritevFsync, "writevFsync"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("allocAligned", Napi::Function::New(env, AllocAligned, "allocAligned"));
  exports.Set("alignBytes", Napi::Number::New(env, kAlignBytes));
  return exports;
}

}  // namespace

NODE_API_MODULE(celer_io, Init)
