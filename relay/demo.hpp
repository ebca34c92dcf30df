#pragma once
// `edgerelay demo`: a development PKI, a hub node writing to a file spool and
// an edge node forwarding to it over the relay protocol (WebSocket, mutual
// TLS), both on loopback; a mixed workload sent to the edge's ingest API;
// then every segment is checked at the hub's spool (exactly once, checksum
// right), and the status of both nodes and the evidence of the run (the
// edge's canary soak through the hub, and what the hub's verifier counted)
// are printed.

#include <chrono>
#include <filesystem>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

namespace edgerelay::relay {

struct demo_options {
  std::optional<std::filesystem::path> dir; // default: a temporary directory, removed afterwards
  unsigned segments = 3000;
  // Instead of `segments`: paced traffic (about 200 segments/s) for this long.
  std::optional<std::chrono::milliseconds> duration;
  std::chrono::seconds timeout{120};
  bool progress = true;
};

int run_demo(const demo_options& o); // 0: every segment delivered exactly once, loss 0; 2: --dir refused

// Makes `dir` ready for a demo that owns it: a new or empty directory, or one
// an earlier run of the same demo made (it holds `marker`, or, from before
// markers, nothing but entries named in `own`), whose contents are then
// removed. Any other directory is refused, untouched: the message says why.
// Leaves `marker` in it.
std::optional<std::string> claim_demo_dir(const std::filesystem::path& dir, const std::string& marker,
                                          std::initializer_list<std::string_view> own);

} // namespace edgerelay::relay
