#pragma once
// Names the calling thread, for `top -H`, `perf report --sort comm`, gdb and
// /proc/<pid>/task/*/comm. Linux keeps the first 15 bytes.

#include <pthread.h>

#include <string>

namespace edgerelay::util {

inline void name_this_thread(std::string name) {
  if (name.size() > 15) name.resize(15);
  ::pthread_setname_np(::pthread_self(), name.c_str());
}

} // namespace edgerelay::util
