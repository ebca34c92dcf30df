#include "relay/store_demo.hpp"

#include "queue/store.hpp"
#include "relay/demo.hpp"
#include "util/checksum.hpp"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace edgerelay::relay {
namespace {

using namespace std::chrono_literals;

// Draws a bar on a terminal, redrawing only when it grows; prints nothing when
// stderr is not a terminal.
void progress(const char* what, std::uint64_t done, std::uint64_t total, bool show) {
  static thread_local int last = -1;
  static thread_local const char* last_what = nullptr;
  if (!show || !::isatty(2)) return;
  int width = 40;
  int filled = total ? static_cast<int>(width * std::min(done, total) / total) : width;
  if (what == last_what && filled == last && done < total) return;
  last = filled;
  last_what = what;
  std::fprintf(stderr, "\r  %-28s [%s%s] %llu/%llu", what, std::string(static_cast<std::size_t>(filled), '#').c_str(),
               std::string(static_cast<std::size_t>(width - filled), '.').c_str(),
               static_cast<unsigned long long>(done), static_cast<unsigned long long>(total));
  if (done >= total) std::fprintf(stderr, "\n");
}

std::string payload_for(std::uint64_t n, std::size_t size) {
  std::string p(size, '\0');
  std::uint64_t x = n * 0x9E3779B97F4A7C15ull + 1;
  for (auto& c : p) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    c = static_cast<char>(x);
  }
  return p;
}

struct demo_failure {
  std::string what;
};

void must(bool ok, const std::string& what) {
  if (!ok) throw demo_failure{what};
}

// Reads and acknowledges everything ready for `peer`, checking each checksum.
std::uint64_t drain(queue::store& s, queue::peer_id peer, std::uint64_t expect, bool show, const char* label) {
  std::uint64_t n = 0;
  for (int idle = 0; idle < 200 && n < expect;) {
    auto b = s.read_batch(peer, 512, 4 << 20);
    must(bool(b), std::string("read_batch failed: ") + (b ? "" : b.error().message()));
    if (b->segments.empty()) {
      ++idle;
      std::this_thread::sleep_for(5ms);
      continue;
    }
    std::vector<std::uint64_t> keys;
    for (auto& seg : b->segments) {
      must(util::checksum(seg.payload) == seg.checksum, "checksum mismatch on " + std::string(seg.id));
      keys.push_back(seg.key);
    }
    must(!s.ack_wait(peer, keys), "ack failed");
    n += keys.size();
    progress(label, n, expect, show);
  }
  return n;
}

} // namespace

int run_store_demo(const store_demo_options& o) {
  namespace fs = std::filesystem;
  bool temp = !o.dir;
  std::error_code ec;
  auto workdir = open_demo_dir(o.dir, "store-demo", {"main", "small"});
  if (!workdir.error.empty()) {
    std::cerr << "edgerelay store-demo: " << workdir.error << "\n";
    return workdir.exit_code;
  }
  const fs::path dir = workdir.path;
  std::cout << "edgerelay store demo: a durable LMDB queue in " << dir.string() << " (sync = full)\n";
  int rc = 0;
  try {
    queue::store_options so;
    so.data_dir = dir / "main";
    so.node_id = "demo-edge";
    so.max_retry = 3;
    so.retry_backoff = {10ms, 40ms, 2.0, 0.1};
    so.max_bytes = 1ull << 30;
    auto opened = queue::store::open(so);
    must(bool(opened), opened ? "" : opened.error().message);
    auto& s = **opened;
    auto hub = s.add_peer("hub");
    auto archive = s.add_peer("archive");
    must(hub && archive, "add_peer failed");
    const queue::peer_id both[] = {*hub, *archive};

    // 1. Producers: every 4th segment also goes to the archive peer.
    std::atomic<std::uint64_t> sent{0}, to_archive{0};
    std::vector<std::thread> producers;
    const unsigned per = o.segments / o.producers;
    std::mt19937 size_rng(7);
    for (unsigned t = 0; t < o.producers; ++t) {
      producers.emplace_back([&, t] {
        std::mt19937 rng(t);
        std::uniform_int_distribution<int> shift(6, 16);
        for (unsigned i = 0; i < per; i += 16) {
          std::vector<std::string> payloads;
          std::vector<queue::segment_in> segs;
          unsigned n = std::min(16u, per - i);
          payloads.reserve(n);
          for (unsigned j = 0; j < n; ++j) {
            std::uint64_t id = t * 1000000ull + i + j;
            payloads.push_back(payload_for(id, std::size_t{1} << shift(rng)));
            bool arch = (id % 4) == 0;
            segs.push_back({"telemetry", payloads.back(), std::span<const queue::peer_id>(both, arch ? 2 : 1)});
            if (arch) ++to_archive;
          }
          auto r = s.enqueue_wait(std::move(segs));
          must(!r.ec, "enqueue failed: " + r.message);
          sent += n;
          if (t == 0) progress("producers -> queue", sent.load(), per * o.producers, o.progress);
        }
      });
    }
    for (auto& p : producers)
      p.join();
    progress("producers -> queue", sent.load(), sent.load(), o.progress);

    // 2. Deliver the hub's queue, verifying every checksum.
    std::uint64_t delivered = drain(s, *hub, sent.load(), o.progress, "hub: deliver + ack");
    must(delivered == sent.load(), "hub delivery incomplete");

    // 3. The archive is unreachable: every attempt fails until max_retry.
    std::uint64_t archive_expected = to_archive.load(), failed = 0;
    auto deadline = std::chrono::steady_clock::now() + 60s;
    while (s.stats().deadletter_segments < archive_expected && std::chrono::steady_clock::now() < deadline) {
      auto b = s.read_batch(*archive, 1024, 16 << 20);
      must(bool(b), "read_batch failed");
      if (b->segments.empty()) {
        std::this_thread::sleep_for(5ms);
        continue;
      }
      std::vector<std::uint64_t> keys;
      for (auto& seg : b->segments)
        keys.push_back(seg.key);
      must(!s.nack_wait(*archive, keys, "connect: connection refused (demo)"), "nack failed");
      failed += keys.size();
      progress("archive: failing attempts", s.stats().deadletter_segments, archive_expected, o.progress);
    }
    must(s.stats().deadletter_segments == archive_expected, "not every archive segment reached the dead-letter store");

    // 4. The archive comes back: retry the dead letters and deliver them.
    queue::deadletter_selector all;
    all.all = true;
    auto retried = s.deadletter_retry_wait(all);
    must(retried && *retried == archive_expected, "dead-letter retry moved " +
                                                      (retried ? std::to_string(*retried) : retried.error().message()) +
                                                      " of " + std::to_string(archive_expected));
    must(drain(s, *archive, archive_expected, o.progress, "archive: retry + deliver") == archive_expected,
         "archive delivery incomplete");

    // 5. A small store at capacity with overflow = evict_lru.
    queue::store_options small = so;
    small.data_dir = dir / "small";
    small.max_bytes = 1 << 20;
    small.overflow = queue::overflow_policy::evict_lru;
    auto sm = queue::store::open(small);
    must(bool(sm), sm ? "" : sm.error().message);
    auto spill = (*sm)->add_peer("spill");
    for (int i = 0; i < 64; ++i) {
      std::string p = payload_for(static_cast<std::uint64_t>(i), 32 << 10);
      const queue::peer_id one[] = {*spill};
      auto r = (*sm)->enqueue_wait({{"bulk", p, one}});
      must(!r.ec, "enqueue into the small store failed: " + r.message);
    }
    auto ev = (*sm)->evictions(0, 1000);
    must(bool(ev), "eviction journal unreadable");

    // 6. Reopen: the counters are durable.
    sm->reset();
    opened->reset();
    auto again = queue::store::open(so);
    must(bool(again), again ? "" : again.error().message);
    auto small_again = queue::store::open(small);
    must(bool(small_again), "reopen of the small store failed");

    std::printf("\n  %-8s %8s %9s %7s %10s %7s %6s %5s\n", "peer", "routed", "delivered", "queued", "deadletter",
                "evicted", "purged", "loss");
    bool clean = true;
    for (auto* st : {again->get(), small_again->get()}) {
      auto rep = st->verify_accounting();
      must(bool(rep), "verify_accounting failed");
      for (auto& p : rep->peers) {
        auto& c = p.counters;
        std::printf("  %-8s %8llu %9llu %7llu %10llu %7llu %6llu %5lld\n", p.peer.c_str(),
                    static_cast<unsigned long long>(c.routed), static_cast<unsigned long long>(c.delivered),
                    static_cast<unsigned long long>(c.queued), static_cast<unsigned long long>(c.deadletter),
                    static_cast<unsigned long long>(c.evicted), static_cast<unsigned long long>(c.purged),
                    static_cast<long long>(p.loss));
      }
      for (auto& prob : rep->problems)
        std::printf("  PROBLEM: %s\n", prob.c_str());
      clean = clean && rep->clean;
    }
    std::printf("\n  %llu segments accepted, %llu failed attempts, %llu dead-lettered and retried, %zu evictions "
                "journaled\n",
                static_cast<unsigned long long>(sent.load()), static_cast<unsigned long long>(failed),
                static_cast<unsigned long long>(archive_expected), ev->size());
    std::printf("  accounting after reopen: %s\n", clean ? "clean, loss = 0" : "NOT CLEAN");
    rc = clean ? 0 : 1;
  } catch (const demo_failure& f) {
    std::cerr << "store demo failed: " << f.what << "\n";
    rc = 1;
  }
  if (temp) fs::remove_all(dir, ec);
  return rc;
}

} // namespace edgerelay::relay
