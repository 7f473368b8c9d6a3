// celer_fs: flock(2), the one file-system call Celer needs that Node does not have. It backs the
// data-directory lock (dataplane/storage/lock.ts). A separate addon from celer_io so that it needs
// nothing but libc: it builds and loads where liburing is missing, and a node that falls back to
// synchronous I/O still gets a real lock.
//
// Exports:
//   flock(fd, exclusive, nonblocking) -> 0. LOCK_EX or LOCK_SH, with LOCK_NB when nonblocking.
//       Throws an Error shaped like Node's fs errors (negative errno, code, syscall 'flock');
//       code 'EAGAIN' (EWOULDBLOCK is the same number on Linux) when another open file
//       description holds a conflicting lock and nonblocking is set.
//
// The fd is opened and closed in JS; closing it (or the process dying) releases the lock.
#include <napi.h>
#include <uv.h>
#include <sys/file.h>

#include <cerrno>
#include <string>

namespace {

void ThrowErrno(Napi::Env env, int err, const char* syscall) {
  std::string msg = std::string(uv_err_name(-err)) + ": " + uv_strerror(-err) + ", " + syscall;
  Napi::Error error = Napi::Error::New(env, msg);
  error.Set("errno", Napi::Number::New(env, -err));
  error.Set("code", Napi::String::New(env, uv_err_name(-err)));
  error.Set("syscall", Napi::String::New(env, syscall));
  error.ThrowAsJavaScriptException();
}

Napi::Value Flock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsBoolean() || !info[2].IsBoolean()) {
    Napi::TypeError::New(env, "celer_fs: flock(fd, exclusive, nonblocking)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  int fd = info[0].As<Napi::Number>().Int32Value();
  int op = info[1].As<Napi::Boolean>().Value() ? LOCK_EX : LOCK_SH;
  if (info[2].As<Napi::Boolean>().Value()) op |= LOCK_NB;
  int rc;
  // A blocking flock is interrupted by signals; the caller asked to wait, so wait again.
  do {
    rc = flock(fd, op);
  } while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    ThrowErrno(env, errno, "flock");
    return env.Undefined();
  }
  return Napi::Number::New(env, 0);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("flock", Napi::Function::New(env, Flock, "flock"));
  return exports;
}

}  // namespace

NODE_API_MODULE(celer_fs, Init)
