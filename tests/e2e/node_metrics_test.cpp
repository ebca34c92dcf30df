// What a running node exports at GET /metrics: every family of DESIGN §7
// with the values of what it actually did (accepted by stream, rejected by
// reason, delivered, dead-lettered by reason, attempts by result, latency and
// commit histograms, connected, loss, age of the queue's head), in a text
// that promtool accepts.

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "tests/support/exposition.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/toml.hpp"
#include "transport/pki.hpp"
#include "util/clock.hpp"

#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <filesystem>
#include <fstream>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

using namespace edgerelay;
using test::eventually;
using namespace std::chrono_literals;

namespace {

using test::q;

std::string get(const std::string& url) {
  auto r = relay::http_call("GET", url);
  REQUIRE(r.has_value());
  REQUIRE(r->status == 200);
  return r->body;
}

// The value of one series (exact name and label text), or -1 when absent.
double sample(const std::string& text, const std::string& series) {
  return test::series_value(text, series).value_or(-1);
}

std::uint16_t closed_port();

// A relay peer whose address nothing listens on.
std::string dead_peer(const std::filesystem::path& dir, const std::string& extra) {
  auto pki = transport::pki_init(dir / "pki");
  REQUIRE(pki.has_value());
  return "[[peer]]\nname = \"gone\"\nurl = \"wss://127.0.0.1:" + std::to_string(closed_port()) +
         "/v1/relay\"\nserver_name = \"localhost\"\ncert = " + q(pki->client_cert) + "\nkey = " + q(pki->client_key) +
         "\nca = " + q(pki->ca_cert) + "\ndial_timeout = \"200ms\"\n" + extra;
}

// A port nothing listens on: bound, then closed.
std::uint16_t closed_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

} // namespace

TEST_CASE("GET /metrics exports what the node did, family by family", "[e2e][metrics]") {
  test::temp_dir dir("node-metrics");
  auto cfg =
      relay::parse_config("[node]\nid = \"m1\"\ndata_dir = " + q(dir / "data") +
                              "\n[queue]\nmax_segment_bytes = \"1KiB\"\nmax_retry = 2\n"
                              "retry_backoff = {initial = \"10ms\", max = \"20ms\", multiplier = 2.0, jitter = 0.0}\n"
                              "[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                              "[evidence]\ncanary_interval = \"0s\"\n"
                              "[[peer]]\nname = \"spool\"\nurl = \"file://" +
                              (dir / "spool").string() + "\"\n" + dead_peer(dir.path(), "streams = [\"b\"]\n"),
                          "node.toml", dir.path());
  auto n = test::start_node(std::move(cfg));
  const std::string ingest = "http://" + n->address("ingest"), admin = "http://" + n->address("admin");
  for (int i = 0; i < 3; ++i)
    REQUIRE(relay::http_call("POST", ingest + "/v1/streams/a/segments", "payload-a")->status == 201);
  for (int i = 0; i < 2; ++i)
    REQUIRE(relay::http_call("POST", ingest + "/v1/streams/b/segments", "payload-b")->status == 201);
  CHECK(relay::http_call("POST", ingest + "/v1/streams/a/segments", std::string(2000, 'x'))->status == 413);
  CHECK(relay::http_call("POST", ingest + "/v1/streams/Bad!/segments", "x")->status == 400);

  std::string m;
  REQUIRE(eventually(
      [&] {
        m = get(admin + "/metrics");
        // The delivered counter moves with the ack's commit; the latency
        // histogram in the ack's callback just after it: wait for both.
        return sample(m, "edgerelay_segments_delivered_total{peer=\"spool\"}") == 5 &&
               sample(m, "edgerelay_delivery_latency_seconds_count{peer=\"spool\"}") == 5 &&
               sample(m, "edgerelay_segments_deadlettered_total{peer=\"gone\",reason=\"max_retry\"}") == 2;
      },
      20s));
  INFO(m);
  CHECK(sample(m, "edgerelay_segments_accepted_total{stream=\"a\"}") == 3);
  CHECK(sample(m, "edgerelay_segments_accepted_total{stream=\"b\"}") == 2);
  CHECK(sample(m, "edgerelay_segments_rejected_total{reason=\"too_large\"}") == 1);
  CHECK(sample(m, "edgerelay_segments_rejected_total{reason=\"bad_stream\"}") == 1);
  CHECK(sample(m, "edgerelay_deadletter_segments") == 2);
  CHECK(sample(m, "edgerelay_delivery_latency_seconds_count{peer=\"spool\"}") == 5);
  CHECK(sample(m, "edgerelay_delivery_latency_seconds_sum{peer=\"spool\"}") >= 0);
  CHECK(sample(m, "edgerelay_delivery_attempts_total{peer=\"spool\",result=\"ok\"}") >= 1);
  CHECK(sample(m, "edgerelay_delivery_attempts_total{peer=\"gone\",result=\"unreachable\"}") >= 2);
  CHECK(sample(m, "edgerelay_delivery_attempts_total{peer=\"gone\",result=\"ok\"}") == 0);
  CHECK(sample(m, "edgerelay_store_commit_seconds_count") > 0);
  CHECK(sample(m, "edgerelay_peer_connected{peer=\"spool\"}") == 1);
  CHECK(sample(m, "edgerelay_peer_connected{peer=\"gone\"}") == 0);
  CHECK(sample(m, "edgerelay_loss_segments{peer=\"spool\"}") == 0);
  CHECK(sample(m, "edgerelay_loss_segments{peer=\"gone\"}") == 0);
  CHECK(sample(m, "edgerelay_queue_segments{peer=\"spool\"}") == 0);
  CHECK(sample(m, "edgerelay_queue_oldest_age_seconds{peer=\"spool\"}") == 0);
  CHECK(sample(m, "edgerelay_bytes_sent_total{peer=\"spool\"}") > 0);

  // promtool's parser and linter accept the node's own exposition.
  auto promtool = std::filesystem::path("/usr/bin/promtool");
  if (std::filesystem::exists(promtool)) {
    { std::ofstream(dir / "metrics.txt", std::ios::binary) << m; }
    test::process p(
        {"/bin/sh", "-c", "exec \"$0\" check metrics < \"$1\"", promtool.string(), (dir / "metrics.txt").string()},
        dir / "promtool.log");
    INFO("promtool said:\n" << p.log());
    CHECK(p.wait(60s) == 0);
  } else {
    WARN("promtool not installed (deploy/install-deps.sh installs it): exposition not linted");
  }
  n->stop();
}

TEST_CASE("edgerelay_queue_oldest_age_seconds is the age of the head of the peer's queue", "[e2e][metrics]") {
  test::temp_dir dir("node-metrics-age");
  util::manual_clock clk;
  auto n = test::start_node(relay::parse_config("[node]\nid = \"m2\"\ndata_dir = " + q(dir / "data") +
                                                    "\n[queue]\nmax_retry = 1000\n"
                                                    "[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = "
                                                    "\"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n" +
                                                    dead_peer(dir.path(), ""),
                                                "node.toml", dir.path()),
                            &clk);
  const std::string ingest = "http://" + n->address("ingest"), admin = "http://" + n->address("admin");
  auto m = get(admin + "/metrics");
  CHECK(sample(m, "edgerelay_queue_oldest_age_seconds{peer=\"gone\"}") == 0);
  REQUIRE(relay::http_call("POST", ingest + "/v1/streams/s/segments", "first")->status == 201);
  clk.advance(90s);
  REQUIRE(relay::http_call("POST", ingest + "/v1/streams/s/segments", "second")->status == 201);
  clk.advance(500ms);
  m = get(admin + "/metrics");
  INFO(m);
  CHECK(sample(m, "edgerelay_queue_oldest_age_seconds{peer=\"gone\"}") == Approx(90.5));
  CHECK(sample(m, "edgerelay_queue_segments{peer=\"gone\"}") == 2);
  n->stop();
}
