// How every extern "C" function of the trainer's C++ bridge (bridge.cpp, dist.cpp) reports a C++
// exception: as a malloc'd message returned to Rust (NULL on success), freed by
// imgtrain_bridge_free_error. Header-only, so each file keeps its own copy of these few lines.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>

namespace imgtrain {

// Returned when the message itself cannot be allocated; never freed.
inline char kOutOfMemory[] = "out of memory while reporting a C++ exception";

inline char* copy_message(const char* what) noexcept {
  if (what == nullptr) {
    what = "unknown C++ exception";
  }
  const size_t len = std::strlen(what);
  char* out = static_cast<char*>(std::malloc(len + 1));
  if (out == nullptr) {
    return kOutOfMemory;
  }
  std::memcpy(out, what, len + 1);
  return out;
}

inline void free_message(char* message) noexcept {
  if (message != kOutOfMemory) {
    std::free(message);
  }
}

// Runs `f`, turning any exception into a message. c10::Error carries a C++ backtrace in what(); the
// message without it is what a user can act on.
template <typename F>
char* guarded(F&& f) noexcept {
  try {
    f();
    return nullptr;
  } catch (const c10::Error& e) {
    return copy_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    return copy_message(e.what());
  } catch (...) {
    return copy_message("unknown C++ exception");
  }
}

} // namespace imgtrain
