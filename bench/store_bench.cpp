// Throughput and memory benchmarks of edgerelay::queue::store, with a raw
// LMDB loop as the baseline. Every store here runs with sync = full, on a
// real disk: the data directory is $EDGERELAY_BENCH_DIR or, by default,
// <build dir>/bench-data (next to bin/); tmpfs and ramfs are refused because
// an fsync there costs nothing and the figures would mean nothing.
//
// Each benchmark opens its own fresh store (or LMDB environment) in its own
// subdirectory and removes it afterwards, so any one of them can run alone
// with --benchmark_filter. Throughput benchmarks count a segment only once
// its commit has completed (its callback ran): a round of work is timed from
// the first submit to the last completion. See bench/README.md.

#include "bench/bench_dir.hpp"
#include "queue/store.hpp"
#include "util/units.hpp"

#include <benchmark/benchmark.h>
#include <lmdb.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <semaphore>
#include <span>
#include <string>
#include <string_view>
#include <sys/vfs.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace q = edgerelay::queue;
using edgerelay::bench::bench_base_dir;
using edgerelay::bench::check_base_dir;
using edgerelay::bench::scratch_dir;
using clock_type = std::chrono::steady_clock;

// ------------------------------------------------------------------ setup

constexpr std::uint64_t max_bytes = 16ull << 30; // capacity never interferes
constexpr std::string_view stream_name = "bench";

// Payload bytes that do not compress or checksum trivially.
const std::string& payload_of(std::size_t n) {
  static std::mutex mu;
  static std::map<std::size_t, std::unique_ptr<std::string>> cache;
  std::lock_guard lk(mu);
  auto& p = cache[n];
  if (!p) {
    p = std::make_unique<std::string>(n, '\0');
    std::mt19937_64 rng(n);
    for (auto& c : *p)
      c = static_cast<char>(rng());
  }
  return *p;
}

// An open store with one peer, in its own scratch directory.
struct store_fixture {
  scratch_dir dir;
  std::unique_ptr<q::store> st;
  q::peer_id peer = 0;
  std::string error;
  // From the store's commit observer: the writer's time per transaction,
  // from the start of applying its group to the end of the commit (fsync included).
  std::atomic<std::uint64_t> commit_ns{0}, commit_count{0};

  explicit store_fixture(std::string_view name) : dir(name) {
    if (auto bad = check_base_dir(bench_base_dir())) {
      error = *bad;
      return;
    }
    q::store_options o;
    o.data_dir = dir.path();
    o.node_id = "bench";
    o.sync = q::sync_mode::full;
    o.max_bytes = max_bytes;
    auto r = q::store::open(std::move(o));
    if (!r) {
      error = "store::open: " + r.error().message;
      return;
    }
    st = std::move(*r);
    st->set_commit_observer([this](double seconds, std::size_t) {
      commit_ns += static_cast<std::uint64_t>(seconds * 1e9);
      ++commit_count;
    });
    auto p = st->add_peer("peer-1");
    if (!p) {
      error = "add_peer: " + p.error().message();
      return;
    }
    peer = *p;
  }
  ~store_fixture() { st.reset(); } // closes the environment before the directory goes
};

// Where the time of the timed phases went: commits, their mean duration and
// the share of the wall time the writer spent committing. begin()/end()
// bracket each timed phase; report() sets the counters.
class commit_window {
public:
  explicit commit_window(store_fixture& f) : f_(f) {}
  void begin() {
    t0_ = clock_type::now();
    ns0_ = f_.commit_ns.load();
    n0_ = f_.commit_count.load();
  }
  void end() {
    secs_ += std::chrono::duration<double>(clock_type::now() - t0_).count();
    ns_ += f_.commit_ns.load() - ns0_;
    n_ += f_.commit_count.load() - n0_;
  }
  double seconds() const { return secs_; }
  std::uint64_t commits() const { return n_; }
  void report(benchmark::State& state) const {
    state.counters["commit_us"] = n_ ? static_cast<double>(ns_) / 1e3 / static_cast<double>(n_) : 0.0;
    state.counters["writer_busy"] = secs_ > 0 ? static_cast<double>(ns_) / 1e9 / secs_ : 0.0;
    state.counters["commits_per_s"] = secs_ > 0 ? static_cast<double>(n_) / secs_ : 0.0;
  }

private:
  store_fixture& f_;
  clock_type::time_point t0_;
  std::uint64_t ns0_ = 0, n0_ = 0, ns_ = 0, n_ = 0;
  double secs_ = 0;
};

// ------------------------------------------------------------------ helpers

// Runs body(i) on n persistent threads, one round at a time: run_round()
// starts every thread and returns when all of them finished the round.
class round_runner {
public:
  round_runner(int n, std::function<void(int)> body) : n_(n), body_(std::move(body)) {
    threads_.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i)
      threads_.emplace_back([this, i] { loop(i); });
  }
  ~round_runner() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    start_cv_.notify_all();
    for (auto& t : threads_)
      t.join();
  }
  round_runner(const round_runner&) = delete;
  round_runner& operator=(const round_runner&) = delete;

  void run_round() {
    std::unique_lock lk(mu_);
    ++generation_;
    busy_ = n_;
    start_cv_.notify_all();
    done_cv_.wait(lk, [&] { return busy_ == 0; });
  }

private:
  void loop(int i) {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock lk(mu_);
        start_cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      body_(i);
      std::lock_guard lk(mu_);
      if (--busy_ == 0) done_cv_.notify_one();
    }
  }

  int n_;
  std::function<void(int)> body_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  std::uint64_t generation_ = 0;
  int busy_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

using window = std::counting_semaphore<1024>;

// Outcome of asynchronous requests, updated from the store's writer thread.
struct tally {
  std::atomic<std::uint64_t> stored{0};
  std::atomic<std::uint64_t> failed{0};
  std::mutex mu;
  std::string first_error;

  void fail(std::uint64_t n, const std::string& why) {
    failed += n;
    std::lock_guard lk(mu);
    if (first_error.empty()) first_error = why;
  }
};

// Submits `requests` enqueue requests of `per_request` segments with at most
// `depth` of them outstanding, and returns once all of them completed.
void produce(q::store& st, q::peer_id peer, std::string_view payload, std::size_t requests, std::size_t per_request,
             std::ptrdiff_t depth, window& w, tally& t) {
  const q::peer_id peers[1] = {peer};
  q::segment_in proto;
  proto.stream = stream_name;
  proto.payload = payload;
  proto.peers = std::span<const q::peer_id>(peers, 1);
  for (std::size_t r = 0; r < requests; ++r) {
    w.acquire();
    std::vector<q::segment_in> segs(per_request, proto);
    st.enqueue(std::move(segs), [&w, &t, per_request](q::enqueue_result&& res) {
      if (res.ec) {
        t.fail(per_request, res.message.empty() ? res.ec.message() : res.message);
      } else {
        std::uint64_t n = 0;
        for (auto s : res.status)
          n += s == q::item_status::stored;
        t.stored += n;
        if (n != per_request) t.fail(per_request - n, "segments reported as duplicates");
      }
      w.release();
    });
  }
  for (std::ptrdiff_t i = 0; i < depth; ++i)
    w.acquire();
  w.release(depth);
}

std::string tally_error(tally& t) {
  std::lock_guard lk(t.mu);
  return std::to_string(t.failed.load()) + " segments failed, first: " + t.first_error;
}

// Reads batches of the peer's queue and acks each asynchronously, with at
// most `depth` batches leased and unacknowledged at once, until `total`
// segments are acked.
struct drain_result {
  std::uint64_t segments = 0, bytes = 0, batches = 0;
  std::string error;
};
drain_result drain(q::store& st, q::peer_id peer, std::uint64_t total, std::size_t max_segments,
                   std::uint64_t max_batch_bytes, std::ptrdiff_t depth) {
  drain_result out;
  window w(depth);
  std::atomic<std::uint64_t> acked{0}, ack_failed{0};
  auto wait_all = [&] {
    for (std::ptrdiff_t i = 0; i < depth; ++i)
      w.acquire();
    w.release(depth);
  };
  int empty_reads = 0;
  while (out.segments < total) {
    w.acquire();
    auto b = st.read_batch(peer, max_segments, max_batch_bytes);
    if (!b || b->segments.empty()) {
      w.release();
      if (!b) {
        out.error = "read_batch: " + b.error().message();
        break;
      }
      // Only this loop leases, and the backlog was committed before it
      // started, so nothing unread should be invisible. Let the acks in
      // flight complete and look once more before calling it a loss.
      wait_all();
      if (++empty_reads > 1) {
        out.error = "read_batch found nothing with " + std::to_string(total - out.segments) + " segments unread";
        break;
      }
      continue;
    }
    empty_reads = 0;
    std::vector<std::uint64_t> keys;
    keys.reserve(b->segments.size());
    for (auto& s : b->segments)
      keys.push_back(s.key);
    out.segments += keys.size();
    out.bytes += b->payload_bytes;
    ++out.batches;
    const std::uint64_t n = keys.size();
    st.ack(peer, std::move(keys), [&w, &acked, &ack_failed, n](boost::system::error_code ec) {
      if (ec)
        ack_failed += n;
      else
        acked += n;
      w.release();
    });
  }
  wait_all();
  if (out.error.empty() && ack_failed.load())
    out.error = std::to_string(ack_failed.load()) + " acknowledgements failed";
  if (out.error.empty() && acked.load() != total)
    out.error = "acked " + std::to_string(acked.load()) + " of " + std::to_string(total) + " segments";
  return out;
}

// Fills the peer's queue with n segments from this thread (not timed by callers).
std::optional<std::string> fill(q::store& st, q::peer_id peer, std::string_view payload, std::uint64_t n,
                                std::size_t per_request, std::ptrdiff_t depth) {
  window w(depth);
  tally t;
  const std::size_t full = n / per_request;
  produce(st, peer, payload, full, per_request, depth, w, t);
  if (n % per_request) produce(st, peer, payload, 1, n % per_request, depth, w, t);
  if (t.failed.load() || t.stored.load() != n) return "fill: " + tally_error(t);
  return std::nullopt;
}

// ------------------------------------------------------------------ raw LMDB

// The rate measured by the latest run of BM_raw_lmdb_put_64B in this process,
// or by a one-off calibration when that benchmark was filtered out.
std::atomic<double> raw_64b_rate{0.0};

struct raw_env {
  scratch_dir dir;
  MDB_env* env = nullptr;
  MDB_dbi dbi = 0;
  std::string error;
  explicit raw_env(std::string_view name) : dir(name) {
    if (auto bad = check_base_dir(bench_base_dir())) {
      error = *bad;
      return;
    }
    int rc = mdb_env_create(&env);
    if (rc == MDB_SUCCESS) rc = mdb_env_set_mapsize(env, 64ull << 30);
    if (rc == MDB_SUCCESS) rc = mdb_env_open(env, dir.path().c_str(), 0, 0640); // default: fsync on commit
    MDB_txn* t = nullptr;
    if (rc == MDB_SUCCESS) rc = mdb_txn_begin(env, nullptr, 0, &t);
    if (rc == MDB_SUCCESS) rc = mdb_dbi_open(t, nullptr, 0, &dbi);
    if (rc == MDB_SUCCESS)
      rc = mdb_txn_commit(t);
    else if (t)
      mdb_txn_abort(t);
    if (rc != MDB_SUCCESS) error = std::string("lmdb: ") + mdb_strerror(rc);
  }
  ~raw_env() {
    if (env) mdb_env_close(env);
  }
  raw_env(const raw_env&) = delete;
  raw_env& operator=(const raw_env&) = delete;

  // One transaction of `count` appends of `value`, keys continuing from seq.
  int put_batch(std::uint64_t& seq, std::size_t count, std::string_view value) {
    MDB_txn* t = nullptr;
    int rc = mdb_txn_begin(env, nullptr, 0, &t);
    if (rc) return rc;
    for (std::size_t i = 0; i < count; ++i) {
      unsigned char kb[8];
      std::uint64_t k = seq++;
      for (int b = 7; b >= 0; --b, k >>= 8)
        kb[b] = static_cast<unsigned char>(k);
      MDB_val key{8, kb}, val{value.size(), const_cast<char*>(value.data())};
      rc = mdb_put(t, dbi, &key, &val, MDB_APPEND);
      if (rc) {
        mdb_txn_abort(t);
        return rc;
      }
    }
    return mdb_txn_commit(t);
  }
};

void raw_put_bench(benchmark::State& state, std::string_view name, std::size_t value_size, std::size_t per_txn,
                   std::atomic<double>* record) {
  raw_env e(name);
  if (!e.error.empty()) {
    state.SkipWithError(e.error.c_str());
    return;
  }
  const std::string& value = payload_of(value_size);
  std::uint64_t seq = 1;
  auto t0 = clock_type::now();
  for (auto _ : state) {
    if (int rc = e.put_batch(seq, per_txn, value)) {
      state.SkipWithError((std::string("lmdb: ") + mdb_strerror(rc)).c_str());
      break;
    }
  }
  const double secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  const auto items = static_cast<std::int64_t>(state.iterations() * per_txn);
  state.SetItemsProcessed(items);
  state.SetBytesProcessed(items * static_cast<std::int64_t>(value_size));
  if (record && secs > 0) *record = static_cast<double>(items) / secs;
}

void BM_raw_lmdb_put_64B(benchmark::State& state) { raw_put_bench(state, "raw64", 64, 1000, &raw_64b_rate); }
BENCHMARK(BM_raw_lmdb_put_64B)->UseRealTime()->Unit(benchmark::kMillisecond);

// Not one of the store's targets: 64 KiB values through LMDB from one thread,
// 128 per transaction (8 MiB, all that the producers of BM_store_enqueue_64KiB
// can have in flight), for reference. It is not the disk's ceiling: the loop
// is serial, so the disk idles while it copies the next batch.
void BM_raw_lmdb_put_64KiB(benchmark::State& state) { raw_put_bench(state, "raw64k", 64 << 10, 128, nullptr); }
BENCHMARK(BM_raw_lmdb_put_64KiB)->UseRealTime()->Unit(benchmark::kMillisecond);

// Mean duration of `n` raw LMDB transactions of one 64 B put each (fsync on commit).
double raw_single_commit_us(int n) {
  raw_env e("raw1");
  if (!e.error.empty()) return 0;
  const std::string& value = payload_of(64);
  std::uint64_t seq = 1;
  auto t0 = clock_type::now();
  for (int i = 0; i < n; ++i)
    if (e.put_batch(seq, 1, value)) return 0;
  return std::chrono::duration<double, std::micro>(clock_type::now() - t0).count() / n;
}

double raw_reference_rate() {
  if (double r = raw_64b_rate.load(); r > 0) return r;
  raw_env e("raw64-calibration");
  if (!e.error.empty()) return 0;
  const std::string& value = payload_of(64);
  std::uint64_t seq = 1, items = 0;
  auto t0 = clock_type::now();
  while (clock_type::now() - t0 < std::chrono::seconds(1)) {
    if (e.put_batch(seq, 1000, value)) return 0;
    items += 1000;
  }
  double r = static_cast<double>(items) / std::chrono::duration<double>(clock_type::now() - t0).count();
  raw_64b_rate = r;
  return r;
}

// ------------------------------------------------------------------ enqueue

// Many producers, each keeping `depth` requests of `per_request` segments in
// flight; one iteration is a round of `requests` requests per producer, timed
// from the first submit to the last completion.
// Returns the rate (segments per second of real time) of the timed rounds.
double enqueue_bench(benchmark::State& state, std::string_view name, int producers, std::size_t payload_size,
                     std::size_t per_request, std::size_t requests, std::ptrdiff_t depth) {
  store_fixture f(name);
  if (!f.error.empty()) {
    state.SkipWithError(f.error.c_str());
    return 0;
  }
  const std::string& payload = payload_of(payload_size);
  std::vector<std::unique_ptr<window>> windows;
  for (int i = 0; i < producers; ++i)
    windows.push_back(std::make_unique<window>(depth));
  tally t;
  round_runner runner(producers, [&](int i) {
    produce(*f.st, f.peer, payload, requests, per_request, depth, *windows[static_cast<std::size_t>(i)], t);
  });
  runner.run_round(); // warm-up, not timed: threads running, the store's first pages allocated
  const std::uint64_t stored0 = t.stored.load();
  commit_window cw(f);
  cw.begin();
  for (auto _ : state) {
    runner.run_round();
    if (t.failed.load()) {
      state.SkipWithError(tally_error(t).c_str());
      break;
    }
  }
  cw.end();
  const std::uint64_t per_round = static_cast<std::uint64_t>(producers) * requests * per_request;
  const std::uint64_t segs = per_round * static_cast<std::uint64_t>(state.iterations());
  if (!state.error_occurred() && t.stored.load() - stored0 != segs) {
    state.SkipWithError("the store reported fewer stored segments than were submitted");
    return 0;
  }
  const auto stats = f.st->stats();
  if (!state.error_occurred() && (stats.peers.empty() || stats.peers[0].counters.queued != t.stored.load())) {
    state.SkipWithError("the peer's queued counter differs from the segments the store reported stored");
    return 0;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(segs));
  state.SetBytesProcessed(static_cast<std::int64_t>(segs * payload_size));
  cw.report(state);
  state.counters["segs_per_commit"] =
      cw.commits() ? static_cast<double>(segs) / static_cast<double>(cw.commits()) : 0.0;
  return cw.seconds() > 0 ? static_cast<double>(segs) / cw.seconds() : 0.0;
}

// 64 producer threads, each with 4 requests of 64 segments of 64 B in flight;
// a round is 32 requests per producer (131,072 segments). Ids are assigned
// by the store (segments carry none), so the dedupe table is not exercised.
void BM_store_enqueue_64B_64producers(benchmark::State& state) {
  const double raw = raw_reference_rate(); // before the store's run: never measured concurrently
  const double rate = enqueue_bench(state, "enq64", 64, 64, 64, 32, 4);
  if (state.error_occurred() || raw <= 0) return;
  state.counters["raw_per_s"] = raw;
  state.counters["vs_raw"] = rate / raw;
}
BENCHMARK(BM_store_enqueue_64B_64producers)->UseRealTime()->Unit(benchmark::kMillisecond);

// 8 producer threads, each with 2 requests of 8 segments of 64 KiB in flight;
// a round is 32 requests per producer (128 MiB).
void BM_store_enqueue_64KiB(benchmark::State& state) { enqueue_bench(state, "enq64k", 8, 64 << 10, 8, 32, 2); }
BENCHMARK(BM_store_enqueue_64KiB)->UseRealTime()->Unit(benchmark::kMillisecond);

// One producer; each iteration is one enqueue_wait of one 64 B segment, so
// one commit (and its fsyncs) per segment.
void BM_store_enqueue_wait_single(benchmark::State& state) {
  store_fixture f("wait1");
  if (!f.error.empty()) {
    state.SkipWithError(f.error.c_str());
    return;
  }
  const std::string& payload = payload_of(64);
  const q::peer_id peers[1] = {f.peer};
  commit_window cw(f);
  cw.begin();
  for (auto _ : state) {
    std::vector<q::segment_in> segs(1);
    segs[0].stream = stream_name;
    segs[0].payload = payload;
    segs[0].peers = std::span<const q::peer_id>(peers, 1);
    auto r = f.st->enqueue_wait(std::move(segs));
    if (r.ec) {
      state.SkipWithError(("enqueue_wait: " + r.message).c_str());
      break;
    }
  }
  cw.end();
  state.SetItemsProcessed(state.iterations());
  state.SetBytesProcessed(state.iterations() * 64);
  cw.report(state);
  // The disk's floor right after the run (not timed): one raw LMDB commit of one put.
  if (!state.error_occurred()) state.counters["raw_commit_us"] = raw_single_commit_us(200);
}
BENCHMARK(BM_store_enqueue_wait_single)->UseRealTime()->Unit(benchmark::kMicrosecond);

// ------------------------------------------------------------------ read + ack

// One iteration: fill (not timed) then drain `backlog` segments of 64 B with
// read_batch of 1024 and asynchronous acks, four batches leased at once.
void BM_store_read_ack_64B(benchmark::State& state) {
  constexpr std::uint64_t backlog = 256 << 10;
  store_fixture f("readack64");
  if (!f.error.empty()) {
    state.SkipWithError(f.error.c_str());
    return;
  }
  const std::string& payload = payload_of(64);
  std::uint64_t segs = 0, batches = 0;
  commit_window cw(f);
  for (auto _ : state) {
    state.PauseTiming();
    auto bad = fill(*f.st, f.peer, payload, backlog, 4096, 8);
    state.ResumeTiming();
    if (bad) {
      state.SkipWithError(bad->c_str());
      break;
    }
    cw.begin();
    auto d = drain(*f.st, f.peer, backlog, 1024, 1ull << 30, 4);
    cw.end();
    if (!d.error.empty()) {
      state.SkipWithError(d.error.c_str());
      break;
    }
    segs += d.segments;
    batches += d.batches;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(segs));
  state.SetBytesProcessed(static_cast<std::int64_t>(segs * 64));
  state.counters["segs_per_batch"] = batches ? static_cast<double>(segs) / static_cast<double>(batches) : 0.0;
  cw.report(state);
}
BENCHMARK(BM_store_read_ack_64B)->UseRealTime()->Unit(benchmark::kMillisecond);

// ------------------------------------------------------------------ drain RSS

struct rss_kib {
  std::uint64_t vm = 0, anon = 0, file = 0;
};

rss_kib read_rss() {
  rss_kib r;
  std::ifstream in("/proc/self/status");
  std::string line;
  auto field = [&](std::string_view name, std::uint64_t& out) {
    if (line.compare(0, name.size(), name) == 0) out = std::strtoull(line.c_str() + name.size(), nullptr, 10);
  };
  while (std::getline(in, line)) {
    field("VmRSS:", r.vm);
    field("RssAnon:", r.anon);
    field("RssFile:", r.file);
  }
  return r;
}

// Samples RSS every few milliseconds until stopped, keeping the maxima.
class rss_sampler {
public:
  rss_sampler() : thread_([this] { run(); }) {}
  ~rss_sampler() { stop(); }
  rss_sampler(const rss_sampler&) = delete;
  rss_sampler& operator=(const rss_sampler&) = delete;
  void stop() {
    {
      std::lock_guard lk(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    if (thread_.joinable()) thread_.join();
    take();
  }
  rss_kib max() const { return max_; }
  std::uint64_t samples() const { return samples_; }

private:
  void take() {
    auto r = read_rss();
    max_.vm = std::max(max_.vm, r.vm);
    max_.anon = std::max(max_.anon, r.anon);
    max_.file = std::max(max_.file, r.file);
    ++samples_;
  }
  void run() {
    std::unique_lock lk(mu_);
    while (!stop_) {
      take();
      cv_.wait_for(lk, std::chrono::milliseconds(5), [&] { return stop_; });
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  rss_kib max_;
  std::uint64_t samples_ = 0;
  std::thread thread_;
};

std::uint64_t env_size(const char* name, std::uint64_t fallback, std::string& error) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  auto r = edgerelay::util::parse_size(v);
  if (!r) {
    error = std::string(name) + ": " + r.error().message;
    return 0;
  }
  return *r;
}

// Fills a backlog (EDGERELAY_BENCH_BACKLOG payload bytes, default 256 MiB, in
// segments of EDGERELAY_BENCH_DRAIN_SEGMENT bytes, default 64 KiB), then
// drains it with read_batch (up to 1 MiB per batch, four leased at once) and
// asynchronous acks while sampling VmRSS, RssAnon and RssFile. One iteration.
void BM_store_drain_rss(benchmark::State& state) {
  std::string error;
  const std::uint64_t backlog = env_size("EDGERELAY_BENCH_BACKLOG", 256ull << 20, error);
  const std::uint64_t seg_size = env_size("EDGERELAY_BENCH_DRAIN_SEGMENT", 64ull << 10, error);
  if (error.empty() && (seg_size == 0 || seg_size > (4ull << 20))) error = "segment size must be 1 B to 4 MiB";
  if (!error.empty()) {
    state.SkipWithError(error.c_str());
    return;
  }
  const std::uint64_t segments = std::max<std::uint64_t>(1, backlog / seg_size);
  const rss_kib before_fill = read_rss();
  store_fixture f("drain");
  if (!f.error.empty()) {
    state.SkipWithError(f.error.c_str());
    return;
  }
  const std::string& payload = payload_of(seg_size);
  const std::size_t per_request = static_cast<std::size_t>(std::clamp<std::uint64_t>((1ull << 20) / seg_size, 1, 4096));
  rss_kib before_drain, max_rss;
  std::uint64_t drained = 0, drained_bytes = 0, samples = 0;
  commit_window cw(f);
  for (auto _ : state) {
    state.PauseTiming();
    if (auto bad = fill(*f.st, f.peer, payload, segments, per_request, 8)) {
      state.SkipWithError(bad->c_str());
      break;
    }
    before_drain = read_rss();
    const std::uint64_t map_before = f.st->stats().map_bytes;
    state.ResumeTiming();
    rss_sampler sampler;
    cw.begin();
    auto d = drain(*f.st, f.peer, segments, 4096, 1ull << 20, 4);
    cw.end();
    sampler.stop();
    if (!d.error.empty()) {
      state.SkipWithError(d.error.c_str());
      break;
    }
    if (f.st->stats().map_bytes != map_before) {
      state.SkipWithError("the map was resized while draining; the figures are not comparable");
      break;
    }
    drained += d.segments;
    drained_bytes += d.bytes;
    max_rss = sampler.max();
    samples += sampler.samples();
  }
  if (state.error_occurred()) return;
  constexpr double mib = 1024.0;
  state.SetItemsProcessed(static_cast<std::int64_t>(drained));
  state.SetBytesProcessed(static_cast<std::int64_t>(drained_bytes));
  state.counters["backlog_MiB"] = static_cast<double>(segments * seg_size) / (1 << 20);
  state.counters["rss_max_MiB"] = static_cast<double>(max_rss.vm) / mib;
  state.counters["rss_anon_max_MiB"] = static_cast<double>(max_rss.anon) / mib;
  state.counters["rss_file_max_MiB"] = static_cast<double>(max_rss.file) / mib;
  state.counters["rss_pre_drain_MiB"] = static_cast<double>(before_drain.vm) / mib;
  state.counters["rss_pre_fill_MiB"] = static_cast<double>(before_fill.vm) / mib;
  state.counters["rss_samples"] = static_cast<double>(samples);
  cw.report(state);
}
BENCHMARK(BM_store_drain_rss)->UseRealTime()->Iterations(1)->Unit(benchmark::kMillisecond);

// ------------------------------------------------------------------ summary

// The console reporter, also keeping each benchmark's median counters for the
// summary printed after the run.
class summary_reporter : public benchmark::ConsoleReporter {
public:
  explicit summary_reporter(OutputOptions o) : ConsoleReporter(o) {}
  void ReportRuns(const std::vector<Run>& reports) override {
    for (const auto& r : reports) {
      if (r.error_occurred) continue;
      const std::string name = r.run_name.function_name;
      if (r.run_type == Run::RT_Aggregate && r.aggregate_name == "median") {
        auto& m = medians_[name];
        for (auto& [k, c] : r.counters)
          m[k] = c.value;
      } else if (r.run_type == Run::RT_Iteration) {
        auto& runs = runs_[name];
        runs.emplace_back();
        for (auto& [k, c] : r.counters)
          runs.back()[k] = c.value;
      }
    }
    ConsoleReporter::ReportRuns(reports);
  }

  // The median of a counter: the library's median aggregate when repetitions
  // were asked for, else the median of the individual runs.
  std::optional<double> median(const std::string& bench, const std::string& counter) const {
    if (auto it = medians_.find(bench); it != medians_.end())
      if (auto c = it->second.find(counter); c != it->second.end()) return c->second;
    auto it = runs_.find(bench);
    if (it == runs_.end()) return std::nullopt;
    std::vector<double> v;
    for (auto& run : it->second)
      if (auto c = run.find(counter); c != run.end()) v.push_back(c->second);
    if (v.empty()) return std::nullopt;
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  }

private:
  std::map<std::string, std::map<std::string, double>> medians_;
  std::map<std::string, std::vector<std::map<std::string, double>>> runs_;
};

void print_summary(const summary_reporter& rep) {
  std::printf("\nSummary (medians; targets from the store's acceptance criteria)\n");
  auto line = [](const char* what, std::optional<double> v, const char* unit, double scale, const char* target,
                 std::optional<bool> met) {
    if (!v) return;
    std::printf("  %-44s %12.1f %-10s %-22s %s\n", what, *v / scale, unit, target,
                met ? (*met ? "MET" : "MISSED") : "");
  };
  auto raw = rep.median("BM_raw_lmdb_put_64B", "items_per_second");
  auto raw64k = rep.median("BM_raw_lmdb_put_64KiB", "bytes_per_second");
  auto enq = rep.median("BM_store_enqueue_64B_64producers", "items_per_second");
  auto enq_raw = rep.median("BM_store_enqueue_64B_64producers", "raw_per_s");
  auto big = rep.median("BM_store_enqueue_64KiB", "bytes_per_second");
  auto ra = rep.median("BM_store_read_ack_64B", "items_per_second");
  auto w1 = rep.median("BM_store_enqueue_wait_single", "items_per_second");
  auto rss = rep.median("BM_store_drain_rss", "rss_max_MiB");
  auto backlog = rep.median("BM_store_drain_rss", "backlog_MiB");
  line("BM_raw_lmdb_put_64B", raw, "k puts/s", 1e3, "(baseline)", std::nullopt);
  line("BM_raw_lmdb_put_64KiB", raw64k, "MB/s", 1e6, "(reference)", std::nullopt);
  if (enq) line("BM_store_enqueue_64B_64producers", enq, "k segs/s", 1e3, ">= 600 k/s", *enq >= 600e3);
  auto base = raw ? raw : enq_raw;
  if (enq && base)
    line(raw ? "  ratio to BM_raw_lmdb_put_64B" : "  ratio to raw calibration", *enq / *base, "x", 1, ">= 0.5 x",
         *enq / *base >= 0.5);
  if (big) line("BM_store_enqueue_64KiB", big, "MB/s", 1e6, ">= 400 MB/s", *big >= 400e6);
  if (ra) line("BM_store_read_ack_64B", ra, "k segs/s", 1e3, ">= 1000 k/s", *ra >= 1e6);
  if (w1) line("BM_store_enqueue_wait_single", w1, "enq/s", 1, ">= 2500/s", *w1 >= 2500);
  if (rss) {
    std::printf("  BM_store_drain_rss backlog %.0f MiB (acceptance figure: 4096 MiB)\n", backlog ? *backlog : 0.0);
    line("  max VmRSS while draining", rss, "MiB", 1, "< 64 MiB", *rss < 64);
    line("  max RssAnon while draining", rep.median("BM_store_drain_rss", "rss_anon_max_MiB"), "MiB", 1, "",
         std::nullopt);
    line("  max RssFile while draining", rep.median("BM_store_drain_rss", "rss_file_max_MiB"), "MiB", 1, "",
         std::nullopt);
  }
}

} // namespace

int main(int argc, char** argv) {
  // The summary needs the console reporter; mirror the library's choice of
  // its options (colour when stdout is a terminal, tabular counters on request).
  bool console = true, color = ::isatty(STDOUT_FILENO) != 0, tabular = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto is_false = [](std::string_view v) { return v == "false" || v == "no" || v == "0" || v == "off"; };
    if (a.starts_with("--benchmark_format=") && a != "--benchmark_format=console") console = false;
    if (a.starts_with("--benchmark_color=")) {
      auto v = a.substr(std::strlen("--benchmark_color="));
      color = v == "auto" ? color : !is_false(v);
    }
    if (a == "--benchmark_counters_tabular" || (a.starts_with("--benchmark_counters_tabular=") &&
                                                !is_false(a.substr(std::strlen("--benchmark_counters_tabular=")))))
      tabular = true;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  const fs::path base = bench_base_dir();
  std::string fs_type = "?";
  auto bad = check_base_dir(base, &fs_type);
  benchmark::AddCustomContext("bench_dir", base.string());
  benchmark::AddCustomContext("bench_dir_fs", fs_type);
  benchmark::AddCustomContext("sync", "full");
  if (bad) std::fprintf(stderr, "store_bench: %s\n", bad->c_str());
  if (console) {
    int opts = benchmark::ConsoleReporter::OO_None;
    if (color) opts |= benchmark::ConsoleReporter::OO_Color;
    if (tabular) opts |= benchmark::ConsoleReporter::OO_Tabular;
    summary_reporter rep(static_cast<benchmark::ConsoleReporter::OutputOptions>(opts));
    benchmark::RunSpecifiedBenchmarks(&rep);
    print_summary(rep);
  } else {
    benchmark::RunSpecifiedBenchmarks();
  }
  benchmark::Shutdown();
  return 0;
}
