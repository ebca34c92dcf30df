// The relay codec (transport/relay_codec.hpp): BATCH encode and decode, and
// the receiver's per-segment checksum verification, in payload bytes per
// second. One batch is what a relay sends per message: 1 MiB of payload in
// segments of the tier's size (a single segment for 1 MiB), ids like a
// relay's ("edge:<seq>"), stream "bench", random payloads (so zstd, where
// measured, has nothing to gain and shows its cost only).
//
//   build/bin/codec_bench
//   build/bin/codec_bench --benchmark_filter=BM_decode/64

#include "transport/relay_codec.hpp"
#include "util/checksum.hpp"

#include <benchmark/benchmark.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace edgerelay;

struct batch_fixture {
  std::vector<std::string> ids, payloads;
  std::vector<transport::segment_record> records;
  std::size_t payload_bytes = 0;

  explicit batch_fixture(std::size_t segment_bytes) {
    std::size_t n = std::max<std::size_t>(1, (1u << 20) / segment_bytes);
    std::mt19937_64 rng(42);
    ids.reserve(n);
    payloads.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      ids.push_back("edge:" + std::to_string(1000000 + i));
      std::string p(segment_bytes, '\0');
      for (std::size_t b = 0; b + 8 <= p.size(); b += 8) {
        auto v = rng();
        std::memcpy(p.data() + b, &v, 8);
      }
      payloads.push_back(std::move(p));
    }
    for (std::size_t i = 0; i < n; ++i) {
      records.push_back(
          {ids[i], "bench", 1700000000000 + static_cast<std::int64_t>(i), util::checksum(payloads[i]), payloads[i]});
      payload_bytes += payloads[i].size();
    }
  }
};

void BM_encode(benchmark::State& state) {
  batch_fixture f(static_cast<std::size_t>(state.range(0)));
  std::string out;
  std::uint64_t number = 0;
  for (auto _ : state) {
    auto r = transport::encode_batch(++number, f.records, out);
    if (!r) state.SkipWithError(r.error().message.c_str());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * f.payload_bytes));
  state.counters["segments_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * f.records.size()), benchmark::Counter::kIsRate);
}

void BM_decode(benchmark::State& state) {
  batch_fixture f(static_cast<std::size_t>(state.range(0)));
  std::string msg;
  if (!transport::encode_batch(1, f.records, msg)) {
    state.SkipWithError("encode failed");
    return;
  }
  for (auto _ : state) {
    auto d = transport::decode(msg);
    if (!d) state.SkipWithError(d.error().message.c_str());
    benchmark::DoNotOptimize(d);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * f.payload_bytes));
  state.counters["segments_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * f.records.size()), benchmark::Counter::kIsRate);
}

// What a receiver does with each BATCH: decode, then verify every checksum.
void BM_decode_verify(benchmark::State& state) {
  batch_fixture f(static_cast<std::size_t>(state.range(0)));
  std::string msg;
  if (!transport::encode_batch(1, f.records, msg)) {
    state.SkipWithError("encode failed");
    return;
  }
  for (auto _ : state) {
    auto d = transport::decode(msg);
    if (!d) {
      state.SkipWithError(d.error().message.c_str());
      break;
    }
    for (auto& r : std::get<transport::batch>(*d).records)
      if (!transport::verify(r)) state.SkipWithError("checksum");
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * f.payload_bytes));
  state.counters["segments_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * f.records.size()), benchmark::Counter::kIsRate);
}

// The cost of offering zstd on incompressible data (the encoder tries, then
// sends the batch uncompressed because it would not be smaller).
void BM_encode_zstd_random(benchmark::State& state) {
  batch_fixture f(static_cast<std::size_t>(state.range(0)));
  std::string out;
  transport::batch_encoding enc;
  enc.algorithm = transport::compression::zstd;
  std::uint64_t number = 0;
  for (auto _ : state) {
    auto r = transport::encode_batch(++number, f.records, out, enc);
    if (!r) state.SkipWithError(r.error().message.c_str());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * f.payload_bytes));
}

BENCHMARK(BM_encode)->Arg(64)->Arg(1024)->Arg(16 << 10)->Arg(256 << 10)->Arg(1 << 20);
BENCHMARK(BM_decode)->Arg(64)->Arg(1024)->Arg(16 << 10)->Arg(256 << 10)->Arg(1 << 20);
BENCHMARK(BM_decode_verify)->Arg(64)->Arg(1024)->Arg(16 << 10)->Arg(256 << 10)->Arg(1 << 20);
BENCHMARK(BM_encode_zstd_random)->Arg(64)->Arg(1 << 20);

} // namespace

BENCHMARK_MAIN();
