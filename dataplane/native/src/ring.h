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

}  // namespace celer
