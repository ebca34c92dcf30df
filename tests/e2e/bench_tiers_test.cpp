// `edgerelay bench tiers`, run as the RL-THRU-01 scenario runs it: real edge
// and hub processes on loopback, the JSON it writes read back.

#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <fstream>
#include <iterator>

using namespace edgerelay;
using test::slurp;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

TEST_CASE("bench tiers --quick delivers every segment of T1 and T3 exactly once and writes the JSON report",
          "[e2e][bench]") {
  test::temp_dir d("bench-tiers");
  auto out = d / "tiers.json";
  auto r = test::run_edgerelay(d.path(),
                               {"bench", "tiers", "--quick", "--tiers", "T1,T3", "--out", out.string(), "--dir",
                                (d / "work").string(), "--keep", "--full-seconds", "1.5", "--half-seconds", "1.5",
                                "--queue", "4MiB"},
                               150s);
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Contains("T1 full load:") && Contains("T3 half load:"));
  REQUIRE(std::filesystem::exists(out));
  auto doc = boost::json::parse(slurp(out)).as_object();
  CHECK(!doc.at("machine").as_string().empty());
  CHECK(!doc.at("commit").as_string().empty());
  CHECK(doc.at("queue_max_bytes").to_number<std::int64_t>() == 4 << 20);
  CHECK_THAT(r.out, Contains("queues 4 MiB, overflow = block"));
  auto& tiers = doc.at("tiers").as_array();
  REQUIRE(tiers.size() == 2);
  const char* names[] = {"T1", "T3"};
  const std::int64_t sizes[] = {64, 16384};
  for (std::size_t i = 0; i < 2; ++i) {
    auto& t = tiers[i].as_object();
    INFO(boost::json::serialize(t));
    CHECK(t.at("tier").as_string() == names[i]);
    CHECK(t.at("segment_bytes").to_number<std::int64_t>() == sizes[i]);
    for (const char* k : {"segments_per_s", "mb_per_s", "p50_ms", "p99_ms", "p99_ms_at_half_load", "cpu_s_per_gb"})
      CHECK(t.at(k).to_number<double>() > 0);
    CHECK(t.at("p50_ms").to_number<double>() <= t.at("p99_ms").to_number<double>());
    // The half-load phase (2 s with --quick) window by window.
    auto& w = t.at("half_load_windows").as_object();
    CHECK(w.at("window_ms").to_number<std::int64_t>() == 100);
    CHECK(w.at("count").to_number<std::int64_t>() >= 15);
    CHECK(w.at("over_10ms").to_number<std::int64_t>() <= w.at("count").to_number<std::int64_t>());
    CHECK(w.at("p99_ms_median").to_number<double>() > 0);
    CHECK(w.at("p99_ms_median").to_number<double>() <= t.at("max_ms_at_half_load").to_number<double>());
    // Each window's p99 in send order: as many non-null as `count`, as many
    // above 10 ms as `over_10ms`, none above the phase's max.
    std::int64_t filled = 0, over = 0;
    for (auto& p : w.at("p99_ms").as_array()) {
      if (p.is_null()) continue;
      ++filled;
      over += p.to_number<double>() > 10.0;
      CHECK(p.to_number<double>() <= t.at("max_ms_at_half_load").to_number<double>());
    }
    CHECK(filled == w.at("count").to_number<std::int64_t>());
    CHECK(over == w.at("over_10ms").to_number<std::int64_t>());
    CHECK(t.at("rss_max_bytes").at("edge").to_number<std::int64_t>() > 1 << 20);
    CHECK(t.at("rss_max_bytes").at("hub").to_number<std::int64_t>() > 1 << 20);
    CHECK(t.at("segments_delivered").to_number<std::int64_t>() > 0);
    CHECK(t.at("loss").to_number<std::int64_t>() == 0);
    CHECK(t.at("duplicates").to_number<std::int64_t>() == 0);
    CHECK(t.at("checksum_errors").to_number<std::int64_t>() == 0);
    CHECK(t.at("monotonic_drain").as_bool());
    // The queues were bounded: the edge's never held more than 4 MiB of
    // payload (a segment's stored record is larger than its payload).
    CHECK(t.at("max_queue_segments").to_number<std::int64_t>() * sizes[i] <= 4 << 20);
    // Both nodes were stopped with SIGTERM, not left running or killed.
    for (const char* node : {"edge", "hub"})
      CHECK_THAT(slurp(d / "work" / names[i] / (std::string(node) + ".log")), Contains("stopping on signal 15"));
  }
}

TEST_CASE("bench tiers refuses an unknown tier with exit 2 and names it", "[e2e][bench]") {
  test::temp_dir d("bench-tiers");
  auto r = test::run_edgerelay(d.path(), {"bench", "tiers", "--tiers", "T1,T9", "--dir", (d / "work").string()}, 30s);
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("unknown tier \"T9\""));
}

TEST_CASE("bench tiers refuses a bad --queue with exit 2 and says why", "[e2e][bench]") {
  test::temp_dir d("bench-tiers");
  auto r = test::run_edgerelay(d.path(), {"bench", "tiers", "--queue", "12 bananas"}, 30s);
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("--queue \"12 bananas\""));
  r = test::run_edgerelay(d.path(), {"bench", "tiers", "--queue", "64KiB"}, 30s);
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("must be at least 1MiB"));
}
