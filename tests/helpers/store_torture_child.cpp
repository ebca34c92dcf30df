// store_torture_child — the load half of the queue store's crash-torture test
// (tests/queue/crash_torture_test.cpp). It opens the store in DIR and loads it
// until it is killed (the test sends SIGKILL at a random moment):
//
//   8 producer threads   async store::enqueue of 1..32 segments per request,
//                        payloads 1 B .. 64 KiB (log-uniform), routed to a, b or both,
//                        each with its checksum (the store verifies it)
//   2 consumers per peer read_batch, then per segment ack ~70 %, nack ~20 %,
//                        reject ~5 %, release ~5 %
//   1 dead-letter thread every ~20 ms retries a few dead-lettered ids
//
// Usage: store_torture_child DIR SEED
//
// It reports on stdout, one event per line. Each report is one write(2) of
// whole lines made under a mutex, so a kill can only cut the last line short
// (the reader ignores a final line without '\n'):
//
//   S                                   the store opened and the peers exist
//   E <id> <a|b|ab> <checksum> <bytes>  an enqueue committed this segment (written
//                                       in the completion callback, after the commit)
//   A <peer> <id>                       an ack for this segment is about to be submitted
//   D <peer> <id>                       that ack's completion reported success
//   X <text>                            the child saw something impossible (bad checksum, ...)
//   F <text>                            the child could not start (store did not open, ...)
//
// Exit: it never ends on its own while healthy; it exits 3 when it cannot
// start, and 4 after a safety limit of 60 s so an orphan cannot run forever.

#include "queue/store.hpp"
#include "tests/support/torture_options.hpp"
#include "util/checksum.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <string_view>
#include <sys/prctl.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

namespace q = edgerelay::queue;
using namespace std::chrono_literals;

using edgerelay::test::torture_options;

constexpr std::string_view stream = "torture";
constexpr int producers = 8;
constexpr int consumers_per_peer = 2;
constexpr std::size_t max_segments_per_request = 32;
constexpr std::size_t max_payload = 64u << 10;

// Serialises whole-line reports onto fd 1.
class reporter {
public:
  void emit(std::string_view lines) {
    if (lines.empty()) return;
    std::lock_guard lk(mu_);
    while (!lines.empty()) {
      ssize_t n = ::write(STDOUT_FILENO, lines.data(), lines.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        std::_Exit(5); // the test went away
      }
      lines.remove_prefix(static_cast<std::size_t>(n));
    }
  }

private:
  std::mutex mu_;
};

struct routes {
  std::array<q::peer_id, 1> a{}, b{};
  std::array<q::peer_id, 2> ab{};
};

// Payload bytes from a cheap generator; they only need to differ.
void fill(std::string& s, std::mt19937_64& rng) {
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {
    std::uint64_t v = rng();
    std::memcpy(s.data() + i, &v, 8);
  }
  std::uint64_t v = rng();
  std::memcpy(s.data() + i, &v, s.size() - i);
}

// 1 .. max_payload, log-uniform: small and large payloads are both common.
std::size_t payload_size(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> bits(0.0, std::log2(static_cast<double>(max_payload)));
  auto n = static_cast<std::size_t>(std::exp2(bits(rng)));
  return std::clamp<std::size_t>(n, 1, max_payload);
}

struct request_data {
  std::vector<std::string> payloads;
  std::vector<std::uint8_t> route; // 1: a, 2: b, 3: both
  std::vector<std::uint64_t> checksums;
};

// Waits for a number of completion callbacks.
class countdown {
public:
  explicit countdown(int n) : left_(n) {}
  void done() {
    std::lock_guard lk(mu_);
    if (--left_ == 0) cv_.notify_all();
  }
  void wait() {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return left_ <= 0; });
  }

private:
  std::mutex mu_;
  std::condition_variable cv_;
  int left_;
};

void produce(q::store& st, reporter& rep, const routes& rt, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  static constexpr const char* route_name[] = {"", "a", "b", "ab"};
  for (;;) {
    auto req = std::make_shared<request_data>();
    const std::size_t n = 1 + rng() % max_segments_per_request;
    std::vector<q::segment_in> segs;
    segs.reserve(n);
    req->payloads.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
      auto& p = req->payloads[i];
      p.resize(payload_size(rng));
      fill(p, rng);
      auto r = static_cast<std::uint8_t>(1 + rng() % 3);
      req->route.push_back(r);
      req->checksums.push_back(edgerelay::util::checksum(p));
      q::segment_in s;
      s.stream = stream;
      s.payload = p;
      s.peers = r == 1   ? std::span<const q::peer_id>(rt.a)
                : r == 2 ? std::span<const q::peer_id>(rt.b)
                         : std::span<const q::peer_id>(rt.ab);
      s.checksum = req->checksums.back();
      segs.push_back(s);
    }
    countdown wait(1);
    st.enqueue(std::move(segs), [req, &rep, &wait](q::enqueue_result&& r) {
      if (!r.ec) {
        std::string lines;
        for (std::size_t i = 0; i < req->payloads.size(); ++i) {
          if (i >= r.status.size() || r.status[i] != q::item_status::stored) {
            lines += "X segment " + std::to_string(i) + " of a request without ids was not stored\n";
            continue;
          }
          lines += "E torture:" + std::to_string(r.first_seq + i) + ' ' + route_name[req->route[i]] + ' ' +
                   edgerelay::util::checksum_hex(req->checksums[i]) + ' ' + std::to_string(req->payloads[i].size()) +
                   '\n';
        }
        rep.emit(lines);
      }
      wait.done();
    });
    wait.wait();
  }
}

void consume(q::store& st, reporter& rep, q::peer_id pid, std::string_view pname, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (;;) {
    auto b = st.read_batch(pid, 1 + rng() % 16, 256u << 10);
    if (!b || b->segments.empty()) {
      std::this_thread::sleep_for(1ms);
      continue;
    }
    std::vector<std::uint64_t> ack_keys, nack_keys, release_keys;
    std::vector<q::rejected_item> rejects;
    std::string a_lines, d_lines, x_lines;
    for (auto& s : b->segments) {
      if (edgerelay::util::checksum(s.payload) != s.checksum)
        x_lines += "X read " + std::string(pname) + ' ' + std::string(s.id) +
                   " with a payload that does not match its checksum\n";
      auto roll = rng() % 100;
      if (roll < 70) {
        ack_keys.push_back(s.key);
        a_lines += "A " + std::string(pname) + ' ' + std::string(s.id) + '\n';
        d_lines += "D " + std::string(pname) + ' ' + std::string(s.id) + '\n';
      } else if (roll < 90) {
        nack_keys.push_back(s.key);
      } else if (roll < 95) {
        rejects.push_back({s.key, "rejected:torture", "the torture test rejected it"});
      } else {
        release_keys.push_back(s.key);
      }
    }
    rep.emit(x_lines);
    if (!release_keys.empty()) st.release(pid, release_keys);
    countdown wait(static_cast<int>(!ack_keys.empty()) + static_cast<int>(!nack_keys.empty()) +
                   static_cast<int>(!rejects.empty()));
    if (!ack_keys.empty()) {
      rep.emit(a_lines); // before the ack exists: the test may then find the segment delivered
      st.ack(pid, std::move(ack_keys), [&rep, &wait, d = std::move(d_lines)](boost::system::error_code ec) {
        if (!ec) rep.emit(d);
        wait.done();
      });
    }
    if (!nack_keys.empty())
      st.nack(pid, std::move(nack_keys), "torture: simulated upstream failure",
              [&wait](boost::system::error_code) { wait.done(); });
    if (!rejects.empty()) st.reject(pid, std::move(rejects), [&wait](boost::system::error_code) { wait.done(); });
    wait.wait();
  }
}

// Moves a few dead-lettered segments back into their queues now and then.
void retry_deadletters(q::store& st, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (;;) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10 + rng() % 20));
    q::deadletter_filter f;
    f.limit = 64;
    auto page = st.deadletter_list(f);
    if (!page || page->entries.empty()) continue;
    q::deadletter_selector sel;
    for (int i = 0; i < 4; ++i)
      sel.ids.push_back(page->entries[rng() % page->entries.size()].id);
    (void)st.deadletter_retry_wait(std::move(sel));
  }
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s DIR SEED\n", argv[0]);
    return 2;
  }
  ::prctl(PR_SET_PDEATHSIG, SIGKILL); // never outlive the test
  reporter rep;
  const std::uint64_t seed = std::strtoull(argv[2], nullptr, 10);

  auto opened = q::store::open(torture_options(argv[1]));
  if (!opened) {
    rep.emit("F open: " + opened.error().message + '\n');
    return 3;
  }
  auto& st = **opened;
  routes rt;
  auto a = st.add_peer("a");
  auto b = st.add_peer("b");
  if (!a || !b) {
    rep.emit("F add_peer failed\n");
    return 3;
  }
  rt.a = {*a};
  rt.b = {*b};
  rt.ab = {*a, *b};
  rep.emit("S\n");

  std::vector<std::thread> threads;
  for (int i = 0; i < producers; ++i)
    threads.emplace_back(produce, std::ref(st), std::ref(rep), std::cref(rt), seed * 1000 + i);
  for (int i = 0; i < consumers_per_peer; ++i) {
    threads.emplace_back(consume, std::ref(st), std::ref(rep), *a, "a", seed * 1000 + 100 + i);
    threads.emplace_back(consume, std::ref(st), std::ref(rep), *b, "b", seed * 1000 + 200 + i);
  }
  threads.emplace_back(retry_deadletters, std::ref(st), seed * 1000 + 300);

  std::this_thread::sleep_for(60s);
  std::_Exit(4);
}
