#pragma once
// `edgerelay bench tiers`: the end-to-end throughput tiers of RL-THRU-01.
//
// For each tier (T1 64 B … T5 1 MiB segments) it starts two real nodes from
// this very binary (/proc/self/exe `run --config`): an edge with a plain
// WebSocket ingest listener and a hub whose relay listener is mTLS (a dev
// PKI made for the run), both `sync = "full"`, the hub delivering into a
// file:// spool. Producer threads in this process (relay::ws_producer) send
// to the edge; a tailer thread in this process reads the hub's spool as it
// grows and times every segment's arrival. Every process it starts is
// stopped before it returns, on every path (RAII).
//
// What is measured, and how, is documented in bench/README.md ("Throughput
// tiers"); the JSON written by --out is read by the RL-THRU-01 evidence
// scenario, so its field names are part of the contract.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace edgerelay::relay {

struct bench_tiers_options {
  std::vector<std::string> tiers;           // "T1".."T5"; empty: all five
  std::optional<std::filesystem::path> out; // the JSON report
  bool quick = false;                       // a few seconds per tier (CI)
  // Full-load and half-load phase lengths; 0: 2 s each with quick, else 15 s and 10 s.
  double full_seconds = 0, half_seconds = 0;
  unsigned producers = 2; // producer connections (threads) per phase
  // Each node's queue capacity ([queue] max_bytes) with overflow = "block":
  // a full hub queue holds the edge back and a full edge queue the
  // producers, so the full-load phase measures the rate the whole path
  // sustains with bounded queues. 0: the nodes' defaults (10 GiB, overflow =
  // "reject"): the producers outrun the path, a backlog of gigabytes builds
  // and then drains.
  std::uint64_t queue_max_bytes = 256ull << 20;
  std::optional<std::filesystem::path> dir; // work directory (default: a fresh one under the temp dir, removed after)
  bool keep = false;                        // keep the work directory (logs, spools)
};

// Runs the tiers, prints a progress line per phase (stderr) and the table
// (stdout), writes the JSON. Returns the process exit code: 0 when every
// tier's checks hold, 1 when one does not or a run failed, 2 for bad options.
int run_bench_tiers(const bench_tiers_options& options);

} // namespace edgerelay::relay
