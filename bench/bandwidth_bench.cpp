// The cost of asking edgerelay::bandwidth::limiter (bandwidth/limiter.hpp):
// one iteration is one check() of a 64 KiB batch followed by its consume(),
// the pair a forwarder makes per batch. The limiter is rate+quota(+windows)
// with budgets so large that every check is allowed, so the figure is the
// bookkeeping alone: two mutex acquisitions, two reads of each clock, the
// refill arithmetic and the window scan.
//
//   BM_check_consume_wall_clock       the production clock (system_clock_source)
//   BM_check_consume_manual_clock     util::manual_clock (two atomic loads per read)
//   BM_check_consume_windows          wall clock, two send windows covering the day
//   BM_check_consume_contended/threads:2   two threads on one limiter
//   BM_snapshot                       one snapshot() (the status page's cost)
//
// Runnable alone: <build dir>/bin/bandwidth_bench [--benchmark_filter=...].

#include "bandwidth/limiter.hpp"
#include "util/clock.hpp"

#include <benchmark/benchmark.h>

#include <cstdlib>
#include <memory>

using namespace edgerelay;

namespace {

constexpr std::uint64_t batch_bytes = 64 * 1024;

bandwidth::policy roomy_policy() {
  bandwidth::policy p;
  p.rate_bytes_per_s = 1ull << 50; // refills far faster than any benchmark consumes
  p.burst_bytes = 1ull << 50;
  p.daily_quota_bytes = 1ull << 62;
  return p;
}

std::unique_ptr<bandwidth::limiter> make(const bandwidth::policy& p, util::clock& clk) {
  auto r = bandwidth::limiter::create(p, clk);
  if (!r) std::abort();
  return std::move(*r);
}

void run(benchmark::State& state, bandwidth::limiter& lim) {
  std::uint64_t held = 0;
  for (auto _ : state) {
    auto d = lim.check(batch_bytes);
    benchmark::DoNotOptimize(d);
    if (d.allowed)
      lim.consume(batch_bytes);
    else
      ++held;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["held"] = static_cast<double>(held);
}

void BM_check_consume_wall_clock(benchmark::State& state) {
  auto lim = make(roomy_policy(), util::system_clock_source::instance());
  run(state, *lim);
}
BENCHMARK(BM_check_consume_wall_clock);

void BM_check_consume_manual_clock(benchmark::State& state) {
  util::manual_clock clk;
  auto lim = make(roomy_policy(), clk);
  run(state, *lim);
}
BENCHMARK(BM_check_consume_manual_clock);

void BM_check_consume_windows(benchmark::State& state) {
  auto p = roomy_policy();
  p.send_windows = {{{std::chrono::minutes{0}}, {std::chrono::minutes{12 * 60}}},
                    {{std::chrono::minutes{12 * 60}}, {std::chrono::minutes{0}}}};
  auto lim = make(p, util::system_clock_source::instance());
  run(state, *lim);
}
BENCHMARK(BM_check_consume_windows);

void BM_check_consume_contended(benchmark::State& state) {
  // One limiter for every thread of every run (a function-local static is
  // built once, before any thread uses it).
  static const auto shared = make(roomy_policy(), util::system_clock_source::instance());
  run(state, *shared);
}
BENCHMARK(BM_check_consume_contended)->Threads(2)->UseRealTime();

void BM_snapshot(benchmark::State& state) {
  auto lim = make(roomy_policy(), util::system_clock_source::instance());
  for (auto _ : state) {
    auto s = lim->snapshot();
    benchmark::DoNotOptimize(s);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_snapshot);

} // namespace

BENCHMARK_MAIN();
