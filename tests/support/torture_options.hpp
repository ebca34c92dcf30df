#pragma once
// The store options of the crash-torture test, shared by the child that
// loads the store (tests/helpers/store_torture_child.cpp) and the parent that
// reopens and checks it (tests/queue/crash_torture_test.cpp): both sides must
// open the environment the same way.

#include "queue/store.hpp"

#include <chrono>
#include <filesystem>

namespace edgerelay::test {

inline queue::store_options torture_options(const std::filesystem::path& dir) {
  using namespace std::chrono_literals;
  queue::store_options o;
  o.data_dir = dir;
  o.node_id = "torture";
  o.sync = queue::sync_mode::full;
  o.max_bytes = 8ull << 20;
  o.max_segment_bytes = 64u << 10;
  o.overflow = queue::overflow_policy::evict_lru;
  o.max_retry = 3;
  o.retry_backoff.initial = 1ms;
  o.retry_backoff.max = 10ms;
  o.retry_backoff.multiplier = 2.0;
  o.retry_backoff.jitter = 0.2;
  o.deadletter_max_bytes = 1ull << 30; // the test purges the dead-letter store itself, never the store
  o.eviction_journal_max = 1'000'000;  // far more than one cycle evicts: the test reads every entry
  return o;
}

} // namespace edgerelay::test
