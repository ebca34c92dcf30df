#include "telemetry/metrics.hpp"
#include "telemetry/standard_metrics.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace edgerelay;
using namespace edgerelay::telemetry;
using Catch::Matchers::Contains;

namespace {

bool has_line(const std::string& text, const std::string& line) {
  return ("\n" + text).find("\n" + line + "\n") != std::string::npos;
}

} // namespace

TEST_CASE("a counter child counts increments from many threads exactly", "[telemetry]") {
  registry r;
  auto& f = r.add_counter("edgerelay_test_total", "Test.", {"peer"});
  auto& c = f.labels({"peer-a"});
  CHECK(&c == &f.labels({"peer-a"}));
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 100000; ++i)
        c.inc();
    });
  for (auto& t : threads)
    t.join();
  CHECK(c.value() == 400000);
  auto text = r.expose();
  CHECK(has_line(text, "# HELP edgerelay_test_total Test."));
  CHECK(has_line(text, "# TYPE edgerelay_test_total counter"));
  CHECK(has_line(text, "edgerelay_test_total{peer=\"peer-a\"} 400000"));
}

TEST_CASE("an unlabelled family exports its single child from registration on", "[telemetry]") {
  registry r;
  auto& g = r.add_gauge("edgerelay_things", "Things.");
  CHECK(has_line(r.expose(), "edgerelay_things 0"));
  g.labels().set(3);
  g.labels().dec();
  g.labels().inc(0.5);
  CHECK(has_line(r.expose(), "edgerelay_things 2.5"));
}

TEST_CASE("label values are escaped and invalid UTF-8 is replaced", "[telemetry]") {
  registry r;
  auto& f = r.add_counter("edgerelay_x_total", "Help with \\ backslash\nand newline.", {"a", "b"});
  f.labels({"q\"uote", "back\\slash\nnew"}).inc(2);
  f.labels({"str\xc3\xb6m \xe6\xb5\x81", "bad\xff"}).inc(1);
  auto text = r.expose();
  CHECK(has_line(text, "# HELP edgerelay_x_total Help with \\\\ backslash\\nand newline."));
  CHECK(has_line(text, R"(edgerelay_x_total{a="q\"uote",b="back\\slash\nnew"} 2)"));
  CHECK(has_line(text, "edgerelay_x_total{a=\"str\xc3\xb6m \xe6\xb5\x81\",b=\"bad\xef\xbf\xbd\"} 1"));
}

TEST_CASE("sample values are formatted as Prometheus reads them", "[telemetry]") {
  CHECK(format_value(0) == "0");
  CHECK(format_value(42) == "42");
  CHECK(format_value(-3) == "-3");
  CHECK(format_value(1e6) == "1000000");
  CHECK(format_value(1.7e9) == "1700000000");
  CHECK(format_value(0.25) == "0.25");
  CHECK(format_value(0.0005) == "0.0005");
  CHECK(std::stod(format_value(1e-7)) == 1e-7);
  CHECK(std::stod(format_value(1e300)) == 1e300);
  CHECK(format_value(std::numeric_limits<double>::infinity()) == "+Inf");
  CHECK(format_value(-std::numeric_limits<double>::infinity()) == "-Inf");
  CHECK(format_value(std::nan("")) == "NaN");
}

TEST_CASE("a histogram exports cumulative buckets, +Inf, sum and count", "[telemetry]") {
  registry r;
  const double bounds[] = {0.1, 1, 10};
  auto& f = r.add_histogram("edgerelay_lat_seconds", "Latency.", {"peer"}, bounds);
  auto& h = f.labels({"p"});
  h.observe(0.05);
  h.observe(0.1); // a bound is inclusive
  h.observe(0.5);
  h.observe(std::chrono::milliseconds(2500));
  h.observe(100.0);
  h.observe(std::nan("")); // ignored
  CHECK(h.count() == 5);
  auto text = r.expose();
  CHECK(has_line(text, "# TYPE edgerelay_lat_seconds histogram"));
  CHECK(has_line(text, R"(edgerelay_lat_seconds_bucket{peer="p",le="0.1"} 2)"));
  CHECK(has_line(text, R"(edgerelay_lat_seconds_bucket{peer="p",le="1"} 3)"));
  CHECK(has_line(text, R"(edgerelay_lat_seconds_bucket{peer="p",le="10"} 4)"));
  CHECK(has_line(text, R"(edgerelay_lat_seconds_bucket{peer="p",le="+Inf"} 5)"));
  CHECK(h.sum() == Approx(103.15));
  CHECK_THAT(text, Contains("\nedgerelay_lat_seconds_sum{peer=\"p\"} 103.15"));
  CHECK(has_line(text, R"(edgerelay_lat_seconds_count{peer="p"} 5)"));
}

TEST_CASE("an unlabelled histogram puts le alone in its bucket labels", "[telemetry]") {
  registry r;
  auto& f = r.add_histogram("edgerelay_commit_seconds", "Commit.", {}, default_commit_buckets());
  f.labels().observe(0.0003);
  auto text = r.expose();
  CHECK(has_line(text, R"(edgerelay_commit_seconds_bucket{le="0.0001"} 0)"));
  CHECK(has_line(text, R"(edgerelay_commit_seconds_bucket{le="0.0005"} 1)"));
  CHECK(has_line(text, R"(edgerelay_commit_seconds_bucket{le="+Inf"} 1)"));
  CHECK(has_line(text, R"(edgerelay_commit_seconds_count 1)"));
}

TEST_CASE("the default latency buckets run from half a millisecond to a minute", "[telemetry]") {
  auto b = default_latency_buckets();
  REQUIRE(b.size() > 5);
  CHECK(b.front() == 0.0005);
  CHECK(b.back() == 60);
  for (std::size_t i = 1; i < b.size(); ++i)
    CHECK(b[i - 1] < b[i]);
}

TEST_CASE("a callback gauge is evaluated at every scrape", "[telemetry]") {
  registry r;
  auto& f = r.add_gauge("edgerelay_depth", "Depth.", {"peer"});
  std::atomic<int> depth{5};
  f.set_callback({"a"}, [&] { return static_cast<double>(depth.load()); });
  CHECK(has_line(r.expose(), R"(edgerelay_depth{peer="a"} 5)"));
  depth = 9;
  CHECK(has_line(r.expose(), R"(edgerelay_depth{peer="a"} 9)"));
  f.set_callback({"b"}, []() -> double { throw std::runtime_error("store closed"); });
  auto text = r.expose();
  CHECK(has_line(text, R"(edgerelay_depth{peer="a"} 9)"));
  CHECK_THAT(text, !Contains("peer=\"b\""));
}

TEST_CASE("a collect hook sets counters from one snapshot before the families are read", "[telemetry]") {
  registry r;
  auto& delivered = r.add_counter("edgerelay_delivered_total", "Delivered.", {"peer"});
  int snapshots = 0;
  r.add_collect_hook([&] {
    ++snapshots;
    delivered.labels({"a"}).set(100 * static_cast<std::uint64_t>(snapshots));
    delivered.labels({"b"}).set(7);
  });
  r.expose();
  auto text = r.expose();
  CHECK(snapshots == 2);
  CHECK(has_line(text, R"(edgerelay_delivered_total{peer="a"} 200)"));
  CHECK(has_line(text, R"(edgerelay_delivered_total{peer="b"} 7)"));
}

TEST_CASE("a removed child is no longer exported and its old reference stays usable", "[telemetry]") {
  registry r;
  standard_metrics m(r);
  auto& a = m.segments_delivered.labels({"a"});
  auto& b = m.segments_delivered.labels({"b"});
  m.segments_deadlettered.labels({"a", "max_retry"}).inc();
  m.queue_segments.set_callback({"a"}, [] { return 1.0; });
  a.inc(3);
  b.inc(4);
  CHECK(m.remove_peer("a") == 3);
  a.inc(); // the forwarder of the removed peer may still be finishing
  auto text = r.expose();
  CHECK_THAT(text, !Contains("peer=\"a\""));
  CHECK(has_line(text, R"(edgerelay_segments_delivered_total{peer="b"} 4)"));
  CHECK(m.segments_delivered.remove({"b"}));
  CHECK_FALSE(m.segments_delivered.remove({"b"}));
  // The peer comes back with a fresh series.
  CHECK(m.segments_delivered.labels({"a"}).value() == 0);
}

TEST_CASE("registration refuses invalid and duplicate names", "[telemetry]") {
  registry r;
  CHECK_THROWS_AS(r.add_counter("9starts_with_digit_total", "x"), std::invalid_argument);
  CHECK_THROWS_AS(r.add_counter("has-dash_total", "x"), std::invalid_argument);
  CHECK_THROWS_AS(r.add_counter("", "x"), std::invalid_argument);
  CHECK_THROWS_AS(r.add_counter("ok_total", "x", {"bad-label"}), std::invalid_argument);
  CHECK_THROWS_AS(r.add_counter("ok_total", "x", {"__reserved"}), std::invalid_argument);
  CHECK_THROWS_AS(r.add_counter("ok_total", "x", {"peer", "peer"}), std::invalid_argument);
  CHECK_THROWS_AS(r.add_histogram("h_seconds", "x", {"le"}), std::invalid_argument);
  const double unsorted[] = {1, 0.5};
  CHECK_THROWS_AS(r.add_histogram("h_seconds", "x", {}, unsorted), std::invalid_argument);
  const double with_inf[] = {1, std::numeric_limits<double>::infinity()};
  CHECK_THROWS_AS(r.add_histogram("h_seconds", "x", {}, with_inf), std::invalid_argument);
  r.add_counter("dup_total", "x");
  CHECK_THROWS_AS(r.add_gauge("dup_total", "x"), std::invalid_argument);
  r.add_histogram("lat_seconds", "x");
  CHECK_THROWS_AS(r.add_gauge("lat_seconds_count", "x"), std::invalid_argument);
  CHECK(r.expose().find("9starts") == std::string::npos);
}

TEST_CASE("a wrong number of label values is refused", "[telemetry]") {
  registry r;
  auto& f = r.add_counter("edgerelay_two_total", "x", {"peer", "result"});
  CHECK_THROWS_AS(f.labels({"only-one"}), std::invalid_argument);
  CHECK_THROWS_AS(f.labels({"a", "b", "c"}), std::invalid_argument);
  std::vector<std::string> v{"a", "ok"};
  f.labels_of(v).inc();
  CHECK(f.labels({"a", "ok"}).value() == 1);
}

TEST_CASE("every standard family of the design is registered with its labels", "[telemetry]") {
  registry r;
  standard_metrics m(r);
  auto text = r.expose();
  for (const char* t :
       {"edgerelay_segments_accepted_total counter", "edgerelay_segments_delivered_total counter",
        "edgerelay_segments_deadlettered_total counter", "edgerelay_segments_evicted_total counter",
        "edgerelay_segments_rejected_total counter", "edgerelay_queue_segments gauge", "edgerelay_queue_bytes gauge",
        "edgerelay_deadletter_segments gauge", "edgerelay_delivery_attempts_total counter",
        "edgerelay_peer_connected gauge", "edgerelay_delivery_latency_seconds histogram",
        "edgerelay_bytes_sent_total counter", "edgerelay_bandwidth_quota_remaining_bytes gauge",
        "edgerelay_tls_handshake_failures_total counter", "edgerelay_tls_cert_expiry_timestamp_seconds gauge",
        "edgerelay_store_commit_seconds histogram", "edgerelay_canary_rounds_total counter"})
    CHECK(has_line(text, std::string("# TYPE ") + t));
  CHECK(m.segments_deadlettered.label_names() == std::vector<std::string>{"peer", "reason"});
  CHECK(m.tls_handshake_failures.label_names() == std::vector<std::string>{"listener", "reason"});
  CHECK(m.delivery_attempts.label_names() == std::vector<std::string>{"peer", "result"});
  CHECK(m.deadletter_segments.label_names().empty());
  CHECK(m.store_commit.label_names().empty());
  // A second set in the same registry is a programming error.
  CHECK_THROWS_AS(standard_metrics(r), std::invalid_argument);
}

TEST_CASE("scrapes run concurrently with updates, new children and removals", "[telemetry]") {
  registry r;
  standard_metrics m(r);
  std::atomic<bool> stop{false};
  auto& hot = m.bytes_sent.labels({"hot"});
  std::thread writer([&] {
    std::uint64_t i = 0;
    while (!stop.load()) {
      hot.inc(10);
      m.delivery_latency.labels({"hot"}).observe(0.001 * static_cast<double>(i % 100));
      auto name = "p" + std::to_string(i % 50);
      m.queue_bytes.labels({name}).set(static_cast<double>(i));
      if (i % 7 == 0) m.queue_bytes.remove({name});
      ++i;
    }
  });
  std::uint64_t last = 0;
  for (int s = 0; s < 200; ++s) {
    auto text = r.expose();
    auto key = std::string("edgerelay_bytes_sent_total{peer=\"hot\"} ");
    auto pos = text.find(key);
    REQUIRE(pos != std::string::npos);
    auto v = std::stoull(text.substr(pos + key.size()));
    CHECK(v >= last);
    CHECK(v % 10 == 0);
    last = v;
  }
  stop = true;
  writer.join();
  CHECK(hot.value() >= last);
}
