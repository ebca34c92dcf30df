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

// The directory a demo works in. With `wanted` (--dir): a new or empty
// directory, or one an earlier run of the same demo made (it holds the
// marker ".edgerelay-<demo>", or, from before markers, nothing but entries
// named in `own`), whose contents are then removed; any other is refused,
// untouched. Without: a new temporary directory (mkdtemp). `error` (with the
// exit code) says why there is none.
struct demo_dir {
  std::filesystem::path path;
  std::string error;
  int exit_code = 0;
};
demo_dir open_demo_dir(const std::optional<std::filesystem::path>& wanted, const std::string& demo,
                       std::initializer_list<std::string_view> own);

} // namespace edgerelay::relay
