#pragma once
// `edgerelay store-demo`: exercises the durable queue end to end on this
// machine (producers, delivery with checksums, failed deliveries into the
// dead-letter store and back, LRU eviction, reopen) and prints the accounting.

#include <filesystem>
#include <optional>

namespace edgerelay::relay {

struct store_demo_options {
  std::optional<std::filesystem::path> dir; // default: a new temporary directory, removed afterwards
  unsigned segments = 20000;
  unsigned producers = 8;
  bool progress = true;
};

// Returns the process exit code: 0 when nothing was lost, 1 otherwise.
int run_store_demo(const store_demo_options& o);

} // namespace edgerelay::relay
