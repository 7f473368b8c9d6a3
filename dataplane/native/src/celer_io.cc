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
//   writevFsync(fd, offsets, bufs)    -> Promise<void>; N IORING_OP_WRITE linked (IOSQE_IO_LINK)
//                                       to one IORING_OP_FSYNC(DATASYNC): the fsync runs only
//                                       after this call's writes all succeeded, and nothing else
//                                       on the ring waits for it.
//   read(fd, buf, offset)             -> Promise<number> (bytes read; short only at end of file).
//   allocAligned(size)                -> ArrayBuffer, 4096-aligned, zeroed, freed by its finalizer.
//
// Files: celer_io.cc (the JS bindings), ring.h (the ring), memory.cc (allocations, errors),
// common.h (shared records and limits).
#include "ring.h"

namespace celer {

thread_local Ring* tlsRing = nullptr;

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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("ringAcquire", Napi::Function::New(env, RingAcquire, "ringAcquire"));
  exports.Set("ringRelease", Napi::Function::New(env, RingRelease, "ringRelease"));
  exports.Set("writevFsync", Napi::Function::New(env, WritevFsync, "writevFsync"));
  exports.Set("read", Napi::Function::New(env, Read, "read"));
  exports.Set("allocAligned", Napi::Function::New(env, AllocAligned, "allocAligned"));
  exports.Set("alignBytes", Napi::Number::New(env, kAlignBytes));
  return exports;
}

}  // namespace celer

// NODE_API_MODULE pastes the function's name into an identifier, so it needs an unqualified one.
static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return celer::Init(env, exports); }

NODE_API_MODULE(celer_io, InitModule)
