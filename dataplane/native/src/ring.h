// The per-thread io_uring: submission (with a bounded backlog), completion on the owning thread's
// libuv loop through an eventfd, and teardown when the environment exits. Header-only, included
// by celer_io.cc alone.
#pragma once

#include "common.h"

namespace celer {

class Ring;
// This thread's ring (defined in celer_io.cc).
extern thread_local Ring* tlsRing;


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

  // Queues req and submits what fits. A read, or a writevFsync of up to kChainWritesMax writes,
  // is one unit (the writes linked to the fsync). A longer writevFsync is staged: its writes go as
  // separate units, in parallel, and the fsync, its last op, once they all succeeded. A chain
  // longer than the ring could not be one unit at all, because it must enter the kernel in one
  // io_uring_enter.
  void Enqueue(Request* req) {
    unsigned count = static_cast<unsigned>(req->opCount);
    if (req->isRead || (count - 1 <= kChainWritesMax && count <= capacity_)) {
      backlog_.push_back(Unit{&req->ops[0], count});
    } else {
      for (unsigned i = 0; i + 1 < count; i++) backlog_.push_back(Unit{&req->ops[i], 1});
      req->fsyncAfterWrites = true;
      req->remaining = count - 1;
    }
    Pump();
  }

 private:
  Ring() = default;

  // Moves backlog units into free SQ slots (never more than capacity_ in the kernel at once, so
  // the completion queue, twice the SQ size, cannot overflow) and submits them. Units go in FIFO
  // order, each whole: a chain cut at the end of the SQ would be submitted as two chains, and the
  // fsync ending the second would no longer wait for the writes of the first.
  void Pump() {
    unsigned added = 0;
    while (!backlog_.empty()) {
      Unit u = backlog_.front();
      if (inKernel_ + added + u.count > capacity_ || io_uring_sq_space_left(&ring_) < u.count) break;
      backlog_.pop_front();
      for (unsigned i = 0; i < u.count; i++) {
        Op* op = u.first + i;
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);  // not null: the space was checked above
        switch (op->kind) {
          case OpKind::kWrite:
            io_uring_prep_write(sqe, op->fd, op->data, op->len, op->offset);
            break;
          case OpKind::kRead:
            io_uring_prep_read(sqe, op->fd, op->data, op->len, op->offset);
            break;
          case OpKind::kFsync:
            // No IOSQE_IO_DRAIN: ordered only after its own writes (the link), so reads and other
            // files' writes on this ring never wait for this flush.
            io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
            break;
        }
        if (i + 1 < u.count) sqe->flags |= IOSQE_IO_LINK;
        op->linkedToPrev = i > 0;
        io_uring_sqe_set_data(sqe, op);
      }
      added += u.count;
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
    if (rc >= 0) {
      if (io_uring_sq_ready(&ring_) == 0) return;
      // The kernel took only part of the SQ (it stops early when it cannot allocate a request).
      NoteSplitChain();
    }
    if (rc >= 0 || rc == -EAGAIN || rc == -EBUSY) {
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

  // After a partial submit: if the first SQE left in the ring is in the middle of a chain, the
  // kernel has already started the chain's first part on its own, and the fsync at the end of the
  // rest will not wait for it. That request then gets one more fsync, submitted alone once all it
  // submitted has completed (Complete), so it still resolves only after its writes were synced.
  void NoteSplitChain() {
    unsigned head = io_uring_smp_load_acquire(ring_.sq.khead);
    const io_uring_sqe* sqe = &ring_.sq.sqes[ring_.sq.array[head & ring_.sq.ring_mask]];
    Op* op = reinterpret_cast<Op*>(static_cast<uintptr_t>(sqe->user_data));
    if (op != nullptr && op->linkedToPrev) op->req->fsyncAfterWrites = true;
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

  static void RecordResult(Request* req, const Op* op, int res) {
    int err = 0;
    bool shortWrite = false;
    if (res < 0) {
      err = -res;
    } else if (op->kind == OpKind::kWrite && static_cast<unsigned>(res) != op->len) {
      // Regular files only write short on a full disk or an I/O error; report it as EIO rather
      // than resubmitting the tail. The kernel treats it as a failure and cancels the chain.
      err = EIO;
      shortWrite = true;
    } else if (op->kind == OpKind::kRead) {
      req->bytesRead = res;
    }
    if (err == 0) return;
    // ECANCELED is the kernel cancelling the rest of a chain after one op failed; the failure
    // itself is what the caller must see, whichever of the CQEs is reaped first.
    if (req->err != 0 && !(req->err == ECANCELED && err != ECANCELED)) return;
    req->err = err;
    req->shortWrite = shortWrite;
    req->errSyscall = op->kind == OpKind::kWrite   ? "io_uring write"
                      : op->kind == OpKind::kFsync ? "io_uring fsync"
                                                   : "io_uring read";
  }

  // settle=false during environment teardown: JS can no longer run, buffers are just released.
  void Complete(Op* op, int res, bool settle) {
    Request* req = op->req;
    RecordResult(req, op, res);
    if (--req->remaining > 0) return;
    if (settle && req->err == 0 && req->fsyncAfterWrites && !req->fsyncQueued) {
      // Every write succeeded: now the fsync (the request's last op), ahead of newer work. The
      // caller (Reap) pumps the backlog afterwards.
      req->fsyncQueued = true;
      req->remaining = 1;
      backlog_.push_front(Unit{&req->ops[req->opCount - 1], 1});
      return;
    }
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
      Unit u = r->backlog_.front();
      r->backlog_.pop_front();
      for (unsigned i = 0; i < u.count; i++) r->Complete(u.first + i, -ECANCELED, false);
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
  std::deque<Unit> backlog_;
  unsigned inKernel_ = 0;
  unsigned capacity_ = 0;
  unsigned refs_ = 0;
  int pendingCloses_ = 0;
  bool polling_ = false;
  bool closing_ = false;
};

}  // namespace celer
