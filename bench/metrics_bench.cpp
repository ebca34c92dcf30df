// Micro-benchmarks of edgerelay::telemetry (telemetry/metrics.hpp): the hot
// path (an update on a child obtained once), the labels() lookup that the hot
// path is meant to avoid, and a scrape of a registry of the size a node with
// a hundred peers exposes.

#include "telemetry/metrics.hpp"
#include "telemetry/standard_metrics.hpp"

#include <benchmark/benchmark.h>

#include <string>

using namespace edgerelay::telemetry;

namespace {

// One counter child taken once, incremented by 1..N threads (relaxed fetch_add
// on a shared cache line: the contended figure is the worst case).
void BM_counter_inc_hot_child(benchmark::State& state) {
  static registry r;
  static counter& c = r.add_counter("edgerelay_bench_total", "Bench.", {"peer"}).labels({"hub"});
  for (auto _ : state)
    c.inc();
  state.SetItemsProcessed(state.iterations());
  benchmark::DoNotOptimize(c.value());
}
BENCHMARK(BM_counter_inc_hot_child)->Threads(1)->Threads(2);

void BM_gauge_set(benchmark::State& state) {
  registry r;
  auto& g = r.add_gauge("edgerelay_bench", "Bench.", {"peer"}).labels({"hub"});
  double v = 0;
  for (auto _ : state)
    g.set(v += 1);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_gauge_set);

// observe() into the default latency buckets (16 bounds), values spread over them.
void BM_histogram_observe(benchmark::State& state) {
  registry r;
  auto& h = r.add_histogram("edgerelay_bench_seconds", "Bench.", {"peer"}).labels({"hub"});
  const double values[] = {0.0002, 0.003, 0.04, 0.2, 0.7, 3, 20, 90};
  std::size_t i = 0;
  for (auto _ : state)
    h.observe(values[i++ & 7]);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_histogram_observe);

// labels() on an existing child: a shared lock and a map lookup. What each
// update would cost if the caller did not keep the reference.
void BM_labels_lookup_existing(benchmark::State& state) {
  registry r;
  auto& f = r.add_counter("edgerelay_bench_total", "Bench.", {"peer", "result"});
  for (int p = 0; p < 100; ++p)
    f.labels({"peer-" + std::to_string(p), "ok"});
  const std::string peer = "peer-42";
  for (auto _ : state)
    f.labels({peer, "ok"}).inc();
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_labels_lookup_existing);

// One full scrape of the standard families with `peers` peers, each with its
// counters, gauges and a latency histogram (the histogram dominates: 19 lines
// per peer).
void BM_scrape_standard(benchmark::State& state) {
  registry r;
  standard_metrics m(r);
  const auto peers = static_cast<int>(state.range(0));
  for (int p = 0; p < peers; ++p) {
    auto name = "peer-" + std::to_string(p);
    m.segments_delivered.labels({name}).inc(static_cast<std::uint64_t>(p) * 1000);
    m.segments_deadlettered.labels({name, "max_retry"}).inc();
    m.segments_evicted.labels({name}).inc();
    m.queue_segments.labels({name}).set(p);
    m.queue_bytes.labels({name}).set(p * 1e6);
    m.delivery_attempts.labels({name, "ok"}).inc();
    m.peer_connected.labels({name}).set(1);
    m.delivery_latency.labels({name}).observe(0.01 * p);
    m.bytes_sent.labels({name}).inc(123456789);
    m.bandwidth_quota_remaining.labels({name}).set(1e9);
  }
  std::size_t bytes = 0;
  for (auto _ : state) {
    auto text = r.expose();
    bytes = text.size();
    benchmark::DoNotOptimize(text.data());
  }
  state.counters["text_bytes"] = static_cast<double>(bytes);
  state.SetBytesProcessed(static_cast<std::int64_t>(bytes) * state.iterations());
}
BENCHMARK(BM_scrape_standard)->Arg(1)->Arg(100);

// One scrape of a single counter family with 100 children: the exposition
// cost per series without the histogram.
void BM_scrape_100_counter_children(benchmark::State& state) {
  registry r;
  auto& f = r.add_counter("edgerelay_bench_total", "Bench.", {"peer"});
  for (int p = 0; p < 100; ++p)
    f.labels({"peer-" + std::to_string(p)}).inc(static_cast<std::uint64_t>(p));
  for (auto _ : state) {
    auto text = r.expose();
    benchmark::DoNotOptimize(text.data());
  }
  state.SetItemsProcessed(state.iterations() * 100);
}
BENCHMARK(BM_scrape_100_counter_children);

} // namespace

BENCHMARK_MAIN();
