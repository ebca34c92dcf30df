// The per-group durable write of a queue, two ways, on the same disk:
//
//   BM_log_append/<bytes>      one segment_log append of a <bytes> body and its
//                              fdatasync (queue/detail/segment_log.hpp), in
//                              recycled 64 MiB files: the proposed edge queue's
//                              cost per group (docs/proposals/edge-queue-log.md).
//   BM_lmdb_fifo_commit/<bytes> one LMDB write transaction (default sync: data
//                              flush, then metadata flush) that appends
//                              <bytes> / 160 records of 160 B under sequential
//                              keys and deletes as many of the oldest, on a
//                              table that holds 65,536 of them: what the store
//                              commits per group today (an enqueue group and
//                              the acks of earlier ones), freelist churned.
//
// 40 KiB is a T1 group at half load (about 300 segments of ~130 B). Each
// iteration's time is taken by hand; p50_us and p99_us are the percentiles
// over the run's iterations. Run with --benchmark_repetitions and read the
// medians: the disk is shared. Data: $EDGERELAY_BENCH_DIR or <build>/bench-data
// (tmpfs refused).

#include "bench/bench_dir.hpp"
#include "queue/detail/segment_log.hpp"
#include "util/bytes.hpp"

#include <benchmark/benchmark.h>
#include <lmdb.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace {

using edgerelay::bench::bench_base_dir;
using edgerelay::bench::check_base_dir;
using edgerelay::bench::scratch_dir;
using edgerelay::queue::detail::log_pos;
using edgerelay::queue::detail::segment_log;
using edgerelay::queue::detail::segment_log_options;
using clock_type = std::chrono::steady_clock;

constexpr std::uint64_t log_file_bytes = 64ull << 20;
constexpr std::size_t record_bytes = 160;
constexpr std::size_t table_records = 65536;

std::string random_bytes(std::size_t n) {
  std::mt19937_64 g(n);
  std::string s(n, '\0');
  for (auto& c : s)
    c = static_cast<char>(g());
  return s;
}

void report(benchmark::State& state, std::vector<double>& us, std::uint64_t bytes_per_iter) {
  if (us.empty()) return;
  std::sort(us.begin(), us.end());
  auto pct = [&](double p) { return us[std::min(us.size() - 1, static_cast<std::size_t>(p * us.size()))]; };
  state.counters["p50_us"] = pct(0.50);
  state.counters["p99_us"] = pct(0.99);
  state.counters["max_us"] = us.back();
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes_per_iter));
}

bool usable_dir(benchmark::State& state) {
  if (auto bad = check_base_dir(bench_base_dir())) {
    state.SkipWithError(bad->c_str());
    return false;
  }
  return true;
}

void BM_log_append(benchmark::State& state) {
  if (!usable_dir(state)) return;
  const auto bytes = static_cast<std::size_t>(state.range(0));
  scratch_dir dir("log_append");
  segment_log_options o;
  o.dir = dir.path();
  o.file_bytes = log_file_bytes;
  o.spare_files = 3;
  auto opened = segment_log::open(o);
  if (!opened) {
    state.SkipWithError(opened.error().message.c_str());
    return;
  }
  auto& log = **opened;
  const std::string body = random_bytes(bytes);
  std::string_view pieces[] = {body};
  std::uint64_t key = 0;
  // Release all but the newest file as the files fill (a queue whose peer
  // keeps up), so that appends go into recycled files, as they would.
  auto append = [&]() -> bool {
    ++key;
    auto r = log.append(key, key, 1, pieces);
    if (!r) {
      state.SkipWithError(r.error().message.c_str());
      return false;
    }
    if (r->offset == segment_log::header_bytes) {
      if (auto rel = log.release_before(*r); !rel) {
        state.SkipWithError(rel.error().message.c_str());
        return false;
      }
      if (auto sp = log.prepare_spare(); !sp) {
        state.SkipWithError(sp.error().message.c_str());
        return false;
      }
    }
    return true;
  };
  // Warm-up, not timed: write two files' worth, so that the spares exist.
  for (std::uint64_t w = 0; w < 2 * log_file_bytes / (bytes + 64) + 1; ++w)
    if (!append()) return;
  std::vector<double> us;
  for (auto _ : state) {
    auto t0 = clock_type::now();
    if (!append()) return;
    double s = std::chrono::duration<double>(clock_type::now() - t0).count();
    state.SetIterationTime(s);
    us.push_back(s * 1e6);
  }
  report(state, us, bytes);
  state.counters["files_written"] = static_cast<double>(log.stats().files_written);
}

// An LMDB environment holding one FIFO table of 160 B records under
// sequential keys: keys [tail, head) are in it.
struct lmdb_fifo {
  MDB_env* env = nullptr;
  MDB_dbi dbi = 0;
  std::uint64_t head = 0, tail = 0;
  std::string value = random_bytes(record_bytes);
  ~lmdb_fifo() {
    if (env) mdb_env_close(env);
  }
  int open(const std::filesystem::path& dir, std::uint64_t map_bytes) {
    int rc = mdb_env_create(&env);
    if (!rc) rc = mdb_env_set_mapsize(env, map_bytes);
    if (!rc) rc = mdb_env_open(env, dir.c_str(), MDB_NOTLS, 0640);
    return rc;
  }
  // Appends `add` records and deletes the `del` oldest, in `t`.
  int apply(MDB_txn* t, std::size_t add, std::size_t del) {
    if (!dbi)
      if (int r = mdb_dbi_open(t, nullptr, 0, &dbi)) return r;
    unsigned char kb[8];
    for (std::size_t i = 0; i < add; ++i) {
      edgerelay::util::put_be64(kb, head++);
      MDB_val k{8, kb}, v{value.size(), value.data()};
      if (int r = mdb_put(t, dbi, &k, &v, MDB_APPEND)) return r;
    }
    for (std::size_t i = 0; i < del; ++i) {
      edgerelay::util::put_be64(kb, tail++);
      MDB_val k{8, kb};
      if (int r = mdb_del(t, dbi, &k, nullptr)) return r;
    }
    return 0;
  }
  // One write transaction of `groups` × apply(add, del); the commit's
  // seconds in *commit_s.
  int transaction(std::size_t groups, std::size_t add, std::size_t del, double* commit_s = nullptr) {
    MDB_txn* t = nullptr;
    if (int r = mdb_txn_begin(env, nullptr, 0, &t)) return r;
    for (std::size_t g = 0; g < groups; ++g)
      if (int r = apply(t, add, del)) return mdb_txn_abort(t), r;
    auto t0 = clock_type::now();
    int r = mdb_txn_commit(t);
    if (commit_s) *commit_s = std::chrono::duration<double>(clock_type::now() - t0).count();
    return r;
  }
};

void skip_lmdb(benchmark::State& state, const char* what, int rc) {
  std::string m = std::string(what) + ": " + mdb_strerror(rc);
  state.SkipWithError(m.c_str());
}

void BM_lmdb_fifo_commit(benchmark::State& state) {
  if (!usable_dir(state)) return;
  const auto bytes = static_cast<std::size_t>(state.range(0));
  const std::size_t per_txn = std::max<std::size_t>(1, bytes / record_bytes);
  scratch_dir dir("lmdb_fifo");
  lmdb_fifo f;
  if (int rc = f.open(dir.path(), 1ull << 30)) return skip_lmdb(state, "mdb_env_open", rc);
  // Fill the table, then churn it once over (not timed): the freelist is
  // then what a queue in use has.
  for (std::size_t filled = 0; filled < table_records; filled += 4096)
    if (int rc = f.transaction(1, 4096, 0)) return skip_lmdb(state, "fill", rc);
  for (std::size_t churned = 0; churned < table_records; churned += per_txn)
    if (int rc = f.transaction(1, per_txn, per_txn)) return skip_lmdb(state, "churn", rc);
  std::vector<double> us;
  for (auto _ : state) {
    auto t0 = clock_type::now();
    if (int rc = f.transaction(1, per_txn, per_txn)) return skip_lmdb(state, "commit", rc);
    double s = std::chrono::duration<double>(clock_type::now() - t0).count();
    state.SetIterationTime(s);
    us.push_back(s * 1e6);
  }
  report(state, us, per_txn * record_bytes);
}

// The checkpoint of the interval design (docs/proposals/edge-queue-log.md):
// one LMDB write transaction that applies <groups> groups of 256 appends and
// 256 deletes of 160 B records (a FIFO of <depth> records), then commits.
// Timed: the commit alone (what a checkpoint would stall the writer for).
void BM_lmdb_interval_commit(benchmark::State& state) {
  if (!usable_dir(state)) return;
  const auto groups = static_cast<std::size_t>(state.range(0));
  const auto depth = static_cast<std::size_t>(state.range(1));
  constexpr std::size_t per_group = 256;
  scratch_dir dir("lmdb_interval");
  lmdb_fifo f;
  if (int rc = f.open(dir.path(), 4ull << 30)) return skip_lmdb(state, "mdb_env_open", rc);
  if (int rc = f.transaction(1, depth, 0)) return skip_lmdb(state, "fill", rc);
  for (int w = 0; w < 3; ++w)
    if (int rc = f.transaction(groups, per_group, per_group)) return skip_lmdb(state, "churn", rc);
  std::vector<double> us;
  for (auto _ : state) {
    double s = 0;
    if (int rc = f.transaction(groups, per_group, per_group, &s)) return skip_lmdb(state, "interval", rc);
    state.SetIterationTime(s);
    us.push_back(s * 1e6);
  }
  report(state, us, 0);
  MDB_envinfo info{};
  mdb_env_info(f.env, &info);
  state.counters["file_pages"] = static_cast<double>(info.me_last_pgno + 1);
}

BENCHMARK(BM_log_append)->Arg(4096)->Arg(40960)->Arg(1 << 20)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_lmdb_fifo_commit)->Arg(4096)->Arg(40960)->Arg(1 << 20)->UseManualTime()->Unit(benchmark::kMicrosecond);
// 100 ms and 1 s of T1 half load (about 850,000 segments/s, groups of 256),
// with a queue 8,192 and 65,536 deep.
// Each iteration applies the whole interval untimed, so their number is fixed.
BENCHMARK(BM_lmdb_interval_commit)
    ->Args({330, 8192})
    ->Args({3300, 8192})
    ->Args({3300, 65536})
    ->Iterations(30)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

} // namespace

BENCHMARK_MAIN();
