// Errors and memory for the io_uring addon: Node-style errno errors, and the aligned
// allocations handed to JS (allocAligned) with the pins that keep them alive while the kernel
// still reads or writes them.
#include "common.h"

namespace celer {

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

static void OnAllocationFinalized(napi_env /*env*/, void* base, void* /*hint*/) {
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

}  // namespace celer
