// The exposition against the real Prometheus tools (Debian package
// `prometheus`, installed by deploy/install-deps.sh): promtool's parser and
// linter, and a Prometheus server that scrapes an endpoint over loopback.

#include "relay/http_client.hpp"
#include "telemetry/metrics.hpp"
#include "telemetry/standard_metrics.hpp"
#include "transport/http_server.hpp"

#include "../support/process.hpp"
#include "../support/temp_dir.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/json/parse.hpp>
#include <catch2/catch.hpp>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

using namespace edgerelay;
using namespace std::chrono_literals;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

// The program's full path from $PATH (posix_spawn does not search it).
std::optional<std::filesystem::path> find_program(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "/usr/bin:/bin");
  for (std::string d; std::getline(dirs, d, ':');) {
    auto p = std::filesystem::path(d.empty() ? "." : d) / name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return std::nullopt;
}

std::filesystem::path require_program(const std::string& name) {
  auto p = find_program(name);
  INFO(name << " is not installed: run deploy/install-deps.sh (Debian package prometheus)");
  REQUIRE(p.has_value());
  return *p;
}

// Every standard family with children whose label values are as awkward as
// label values get: quotes, backslashes, newlines, non-ASCII, invalid UTF-8.
void populate(telemetry::standard_metrics& m) {
  const std::string weird = "we\"ird\\peer\nwith newline";
  const std::string unicode = "str\xc3\xb6m-\xe6\xb5\x81-\xf0\x9f\x9a\x80";
  m.segments_accepted.labels({"alpha"}).inc(42);
  m.segments_accepted.labels({weird}).inc(7);
  m.segments_accepted.labels({unicode}).inc(1);
  m.segments_accepted.labels({"bad\xff utf8"}).inc(2);
  for (const auto& peer : {std::string("hub"), weird, unicode}) {
    m.segments_delivered.labels({peer}).inc(1000);
    m.segments_deadlettered.labels({peer, "max_retry"}).inc(3);
    m.segments_deadlettered.labels({peer, "rejected:checksum \"mismatch\""}).inc(1);
    m.segments_evicted.labels({peer}).inc(5);
    m.queue_segments.labels({peer}).set(17);
    m.queue_bytes.set_callback({peer}, [] { return 1.5e9; });
    m.delivery_attempts.labels({peer, "ok"}).inc(99);
    m.delivery_attempts.labels({peer, "timeout"}).inc(1);
    m.peer_connected.labels({peer}).set(1);
    auto& h = m.delivery_latency.labels({peer});
    for (double v : {0.0001, 0.003, 0.2, 1.5, 75.0})
      h.observe(v);
    m.bytes_sent.labels({peer}).inc(123456789);
    m.bandwidth_quota_remaining.labels({peer}).set(0);
  }
  m.segments_rejected.labels({"too_large"}).inc();
  m.segments_rejected.labels({"bad_stream"}).inc(2);
  m.deadletter_segments.labels().set(4);
  m.tls_handshake_failures.labels({"listen", "no_client_cert"}).inc();
  m.tls_handshake_failures.labels({"listen", "revoked\\crl"}).inc();
  m.tls_cert_expiry.labels({"listen"}).set(1893456000);
  m.tls_cert_expiry.labels({unicode}).set(1893456000.5);
  m.store_commit.labels().observe(0.0004);
  m.store_commit.labels().observe(std::chrono::microseconds(2500));
  m.canary_rounds.labels({"clean"}).inc(1440);
  m.canary_rounds.labels({"loss"}).inc(0);
}

// An io_context run by one thread for the test's lifetime.
struct io_thread {
  net::io_context io;
  net::executor_work_guard<net::io_context::executor_type> guard{io.get_executor()};
  std::thread t{[this] { io.run(); }};
  ~io_thread() {
    guard.reset();
    io.stop();
    t.join();
  }
};

// Serves GET /metrics from a registry, as the node's admin listener does.
struct metrics_handler : transport::http_handler {
  telemetry::registry& reg;
  std::atomic<int> scrapes{0};
  explicit metrics_handler(telemetry::registry& r) : reg(r) {}
  void on_request(transport::http_request&& req, const transport::connection_info&, transport::responder r) override {
    transport::http_response res{boost::beast::http::status::ok, req.version()};
    if (req.target() != "/metrics") {
      r.send_error(404, "not_found", "no such path");
      return;
    }
    ++scrapes;
    res.set(boost::beast::http::field::content_type, telemetry::registry::content_type);
    res.body() = reg.expose();
    res.prepare_payload();
    r.send(std::move(res));
  }
};

// A port that was free a moment ago (Prometheus cannot bind port 0 and report it).
unsigned short free_loopback_port() {
  net::io_context io;
  tcp::acceptor a(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  return a.local_endpoint().port();
}

} // namespace

TEST_CASE("promtool accepts the exposition of every standard family with awkward label values",
          "[telemetry][prometheus]") {
  auto promtool = require_program("promtool");
  telemetry::registry reg;
  telemetry::standard_metrics m(reg);
  populate(m);
  test::temp_dir dir("promtool");
  auto text = reg.expose();
  { std::ofstream(dir / "metrics.txt", std::ios::binary) << text; }
  test::process p(
      {"/bin/sh", "-c", "exec \"$0\" check metrics < \"$1\"", promtool.string(), (dir / "metrics.txt").string()},
      dir / "promtool.log");
  int rc = p.wait(60s);
  INFO("promtool said:\n" << p.log() << "\nfor:\n" << text);
  CHECK(rc == 0);
  CHECK(p.log().find("error") == std::string::npos);
}

TEST_CASE("promtool finds a malformed exposition (the check can fail)", "[telemetry][prometheus]") {
  auto promtool = require_program("promtool");
  test::temp_dir dir("promtool");
  {
    std::ofstream(dir / "metrics.txt", std::ios::binary)
        << "# TYPE edgerelay_x_total counter\nedgerelay_x_total{peer=\"unterminated} 1\n";
  }
  test::process p(
      {"/bin/sh", "-c", "exec \"$0\" check metrics < \"$1\"", promtool.string(), (dir / "metrics.txt").string()},
      dir / "promtool.log");
  CHECK(p.wait(60s) != 0);
}

TEST_CASE("a Prometheus server scrapes the registry and returns a counter through its query API",
          "[telemetry][prometheus]") {
  auto prometheus = require_program("prometheus");
  telemetry::registry reg;
  telemetry::standard_metrics m(reg);
  populate(m);
  const std::string weird = "we\"ird\\peer\nwith newline";

  metrics_handler handler(reg); // outlives the io thread, which may still run its sessions
  io_thread io;
  auto server = transport::http_server::create(io.io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0), handler,
                                               transport::http_limits{});
  REQUIRE(server.has_value());
  (*server)->start();
  auto target_port = (*server)->local_endpoint().port();

  test::temp_dir dir("prometheus");
  {
    std::ofstream cfg(dir / "prometheus.yml");
    cfg << "global:\n"
           "  scrape_interval: 1s\n"
           "  evaluation_interval: 1s\n"
           "scrape_configs:\n"
           "  - job_name: edgerelay\n"
           "    scrape_interval: 1s\n"
           "    static_configs:\n"
           "      - targets: ['127.0.0.1:"
        << target_port << "']\n";
  }
  auto api_port = free_loopback_port();
  test::process server_proc({prometheus.string(), "--config.file=" + (dir / "prometheus.yml").string(),
                             "--storage.tsdb.path=" + (dir / "data").string(),
                             "--web.listen-address=127.0.0.1:" + std::to_string(api_port)},
                            dir / "prometheus.log");
  REQUIRE(server_proc.running());

  const std::string query =
      "127.0.0.1:" + std::to_string(api_port) + "/api/v1/query?query=edgerelay_segments_accepted_total";
  std::optional<std::string> alpha, weird_value;
  std::string last_body;
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline && !(alpha && weird_value)) {
    if (!server_proc.running()) break;
    auto r = relay::http_call("GET", query, {}, 2s);
    if (r && r->status == 200) {
      last_body = r->body;
      auto v = boost::json::parse(r->body);
      for (auto& s : v.at("data").at("result").as_array()) {
        auto& metric = s.at("metric").as_object();
        auto value = std::string(s.at("value").as_array().at(1).as_string());
        if (metric.contains("stream") && metric.at("stream").as_string() == "alpha") alpha = value;
        if (metric.contains("stream") && metric.at("stream").as_string() == weird) weird_value = value;
      }
    }
    if (!(alpha && weird_value)) std::this_thread::sleep_for(200ms);
  }
  INFO("last query answer: " << last_body << "\nprometheus log:\n" << server_proc.log());
  CHECK(handler.scrapes.load() > 0);
  REQUIRE(alpha.has_value());
  CHECK(*alpha == "42");
  // The escaped label value came back byte for byte.
  REQUIRE(weird_value.has_value());
  CHECK(*weird_value == "7");

  int status = server_proc.stop(SIGTERM);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  (*server)->stop();
}
