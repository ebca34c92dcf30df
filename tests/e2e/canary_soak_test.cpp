// The canary soak in running nodes (docs/soak.md, "The node"): an edge on a
// manual clock sends rounds to a hub over mTLS; the hub verifies and
// acknowledges the canaries without storing them; a dead or silent hub makes
// rounds unclean; the soak record survives a restart of the edge.

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "relay/spool.hpp"
#include "telemetry/evidence.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/toml.hpp"
#include "transport/pki.hpp"
#include "util/clock.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <filesystem>
#include <thread>

using namespace edgerelay;
using test::eventually;
using namespace std::chrono_literals;
namespace json = boost::json;
using Catch::Matchers::Contains;

namespace {

using test::q;
std::int64_t num(const json::value& v) { return v.to_number<std::int64_t>(); }

struct soak_fixture {
  test::temp_dir dir{"soak-e2e"};
  transport::pki_paths pki;
  util::manual_clock clk;
  std::unique_ptr<relay::node> hub, edge;

  soak_fixture() {
    auto p = transport::pki_init(dir / "pki");
    REQUIRE(p.has_value());
    pki = *p;
  }

  // The hub runs no soak of its own; its spool gets what producers send.
  void start_hub() {
    std::string toml = "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "hub") +
                       "\n[listen]\naddress = \"127.0.0.1:0\"\ncert = " + q(pki.server_cert) +
                       "\nkey = " + q(pki.server_key) + "\nca = " + q(pki.ca_cert) +
                       "\n[admin]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n"
                       "[[peer]]\nname = \"spool\"\nurl = \"file://" +
                       (dir / "spool").string() + "\"\n";
    hub = test::start_node(relay::parse_config(toml, "hub.toml", dir.path()));
  }

  std::string edge_toml(const std::string& hub_addr, const std::string& interval, const std::string& extra_queue,
                        const std::string& extra_peer) {
    return "[node]\nid = \"edge\"\ndata_dir = " + q(dir / "edge") + "\n[queue]\n" + extra_queue +
           "[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
           "[evidence]\ncanary_interval = \"" +
           interval + "\"\ncanary_segments = 3\ncanary_size = \"300B\"\n[[peer]]\nname = \"hub\"\nurl = \"wss://" +
           hub_addr + "/v1/relay\"\nserver_name = \"localhost\"\ncert = " + q(pki.client_cert) +
           "\nkey = " + q(pki.client_key) + "\nca = " + q(pki.ca_cert) + "\n" + extra_peer;
  }
  void start_edge_on_wall_clock(const std::string& toml) {
    edge = test::start_node(relay::parse_config(toml, "edge.toml", dir.path()));
  }
  void start_edge(const std::string& toml) {
    edge = test::start_node(relay::parse_config(toml, "edge.toml", dir.path()), &clk);
  }

  static json::object soak_status(relay::node& n) { return n.status().at("soak").as_object(); }
  static json::object report(relay::node& n) {
    auto r = relay::http_call("GET", "http://" + n.address("admin") + "/v1/evidence/soak");
    REQUIRE(r.has_value());
    REQUIRE(r->status == 200);
    return json::parse(r->body).as_object();
  }
  static std::string metrics(relay::node& n) {
    auto r = relay::http_call("GET", "http://" + n.address("admin") + "/metrics");
    REQUIRE(r.has_value());
    REQUIRE(r->status == 200);
    return r->body;
  }
  static std::int64_t rep(relay::node& n, const char* key) { return num(n.soak_report().at(key)); }
  static std::int64_t verifier(relay::node& n, const char* key) { return num(n.soak_report().at("verifier").at(key)); }

  // Advances the edge's clock by one interval and waits until the round it
  // opens was delivered (`total` canaries delivered so far).
  void round(std::chrono::milliseconds interval, std::int64_t total) {
    clk.advance(interval);
    INFO("waiting for " << total << " canaries delivered; report " << json::serialize(edge->soak_report()));
    REQUIRE(eventually([&] { return rep(*edge, "segments_delivered") == total; }));
  }
};

} // namespace

TEST_CASE("an edge's canary rounds over a live hub are clean, verified at the hub and kept out of its spool",
          "[e2e][soak]") {
  soak_fixture f;
  f.start_hub();
  f.start_edge(f.edge_toml(f.hub->address("listen"), "1s", "", ""));
  // No round before the first interval passed.
  std::this_thread::sleep_for(300ms);
  CHECK(f.rep(*f.edge, "segments_sent") == 0);
  CHECK(f.soak_status(*f.edge).at("enabled") == true);

  for (int r = 1; r <= 4; ++r)
    f.round(1s, 3 * r);
  // Round 4 is open; rounds 1-3 closed clean.
  REQUIRE(eventually([&] { return f.rep(*f.edge, "rounds") == 3; }));
  auto st = f.soak_status(*f.edge);
  CHECK(num(st.at("rounds")) == 3);
  CHECK(num(st.at("clean_rounds")) == 3);
  CHECK(st.at("clean_delivery_rate").to_number<double>() == 1.0);
  CHECK(num(st.at("loss")) == 0);

  auto rp = f.report(*f.edge);
  CHECK(rp.at("enabled") == true);
  CHECK(num(rp.at("segments_sent")) == 12);
  CHECK(num(rp.at("segments_delivered")) == 12);
  CHECK(num(rp.at("duplicates")) == 0);
  CHECK(num(rp.at("restarts")) == 0);
  CHECK(rp.at("clock") == "manual");
  CHECK(num(rp.at("rss_start_bytes")) > 0);
  CHECK(num(rp.at("rss_max_bytes")) >= num(rp.at("rss_start_bytes")));
  CHECK(rp.at("latency_ms").as_object().contains("p99"));
  auto gate = rp.at("gate_d").as_object();
  CHECK(gate.at("rate_ok") == true);
  CHECK(gate.at("loss_ok") == true);
  CHECK(gate.at("rounds_ok") == false); // 3 of 1,440
  CHECK(gate.at("clock_ok") == false);  // a manual clock never passes Gate D
  CHECK(gate.at("overall") == false);
  CHECK(num(rp.at("verifier").at("received")) == 0); // the edge receives no canaries
  auto m = f.metrics(*f.edge);
  CHECK_THAT(m, Contains("edgerelay_canary_rounds_total{result=\"clean\"} 3\n"));
  CHECK_THAT(m, Contains("edgerelay_canary_rounds_total{result=\"late\"} 0\n"));

  // The hub verified every canary: one lane (edge -> its peer "hub"), no gap,
  // no duplicate, and it stored none of them.
  auto hr = f.report(*f.hub);
  CHECK(hr.at("enabled") == false);
  auto v = hr.at("verifier").as_object();
  CHECK(num(v.at("received")) == 12);
  CHECK(num(v.at("gaps")) == 0);
  CHECK(num(v.at("missing")) == 0);
  CHECK(num(v.at("duplicates")) == 0);
  CHECK(num(v.at("corrupt")) == 0);
  REQUIRE(v.at("lanes").as_array().size() == 1);
  CHECK(v.at("lanes").as_array()[0].at("origin") == "edge");
  CHECK(v.at("lanes").as_array()[0].at("peer") == "hub");
  CHECK(num(f.soak_status(*f.hub).at("canaries_received")) == 12);
  CHECK(num(f.hub->status().at("totals").at("accepted")) == 0);

  // `evidence export` takes a live node's answer as it is: the edge's record
  // becomes RL-SOAK-01 (FAIL: 3 rounds on a manual clock) with its verifier
  // in metrics.verifier; the hub runs no soak and has nothing to export.
  auto ex = test::run_edgerelay(f.dir.path(), {"evidence", "export", "--admin", "http://" + f.edge->address("admin"),
                                               "--out", (f.dir / "ev").string() + "/"});
  INFO(ex.out);
  CHECK(ex.code == 0);
  CHECK_THAT(ex.out, Contains("RL-SOAK-01 FAIL"));
  auto er = telemetry::read_report(f.dir / "ev" / "RL-SOAK-01.json");
  INFO((er ? std::string() : er.error().to_string()));
  REQUIRE(er.has_value());
  CHECK(er->status == telemetry::report_status::fail);
  auto es = telemetry::soak_of(*er);
  REQUIRE(es.has_value());
  CHECK(es->rounds == 3);
  CHECK(es->segments_delivered == 12);
  CHECK(es->clock == "manual");
  CHECK(num(er->metrics.at("verifier").at("received")) == 0);
  ex = test::run_edgerelay(f.dir.path(), {"evidence", "export", "--admin", "http://" + f.hub->address("admin"), "--out",
                                          (f.dir / "ev-hub").string() + "/"});
  INFO(ex.out);
  CHECK(ex.code == 1);
  CHECK_THAT(ex.out, Contains("enabled: false: this node runs no canary soak"));
  CHECK_FALSE(std::filesystem::exists(f.dir / "ev-hub" / "RL-SOAK-01.json"));

  // Producer data still reaches the spool, and only it.
  auto post = relay::http_call("POST", "http://" + f.edge->address("ingest") + "/v1/streams/data/segments", "hello");
  REQUIRE(post.has_value());
  REQUIRE(post->status == 201);
  std::vector<std::string> streams;
  REQUIRE(eventually([&] {
    streams.clear();
    (void)relay::read_spool(f.dir / "spool", [&](const relay::spool_record& r) {
      streams.push_back(r.stream);
      return true;
    });
    return !streams.empty();
  }));
  CHECK(streams == std::vector<std::string>{"data"});
  auto et = f.edge->status().at("totals").as_object();
  CHECK(num(et.at("loss")) == 0);
  REQUIRE(eventually([&] { return num(f.edge->status().at("totals").at("delivered")) == 13; }));
  f.edge->stop();
  f.hub->stop();
}

TEST_CASE("a silent hub makes a round late, when the canaries are dead-lettered the open round fails with loss",
          "[e2e][soak]") {
  soak_fixture f;
  // Accepts TCP connections and never answers: the edge's TLS handshake hangs.
  boost::asio::io_context io;
  boost::asio::ip::tcp::acceptor silent(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  std::vector<boost::asio::ip::tcp::socket> held;
  std::atomic<bool> stop_accepting{false};
  silent.non_blocking(true);
  std::thread acceptor([&] {
    while (!stop_accepting) {
      boost::system::error_code ec;
      boost::asio::ip::tcp::socket s(io);
      silent.accept(s, ec);
      if (!ec)
        held.push_back(std::move(s));
      else
        std::this_thread::sleep_for(5ms);
    }
  });
  auto addr = "127.0.0.1:" + std::to_string(silent.local_endpoint().port());
  f.start_edge(f.edge_toml(addr, "10s", "max_retry = 1\n", "dial_timeout = \"60s\"\n"));

  f.clk.advance(10s); // round 1
  REQUIRE(eventually([&] { return f.rep(*f.edge, "segments_sent") == 3; }));
  f.clk.advance(10s); // round 1 closes with nothing acknowledged; round 2 opens
  REQUIRE(eventually([&] { return f.rep(*f.edge, "rounds") == 1 && f.rep(*f.edge, "segments_sent") == 6; }));
  CHECK(f.rep(*f.edge, "clean_rounds") == 0);
  CHECK(f.rep(*f.edge, "loss") == 0);
  CHECK_THAT(f.metrics(*f.edge), Contains("edgerelay_canary_rounds_total{result=\"late\"} 1\n"));

  // The hub goes away: the dial fails, and with max_retry = 1 every queued
  // canary is dead-lettered while round 2 is still open.
  stop_accepting = true;
  acceptor.join();
  held.clear();
  silent.close();
  INFO("report " << json::serialize(f.edge->soak_report()));
  REQUIRE(eventually([&] { return f.rep(*f.edge, "loss") == 6; }));
  f.clk.advance(10s); // round 2 closes
  REQUIRE(eventually([&] { return f.rep(*f.edge, "rounds") == 2; }));
  auto m = f.metrics(*f.edge);
  CHECK_THAT(m, Contains("edgerelay_canary_rounds_total{result=\"late\"} 1\n"));
  CHECK_THAT(m, Contains("edgerelay_canary_rounds_total{result=\"failed\"} 1\n"));
  CHECK_THAT(m, Contains("edgerelay_canary_rounds_total{result=\"clean\"} 0\n"));
  auto st = f.soak_status(*f.edge);
  CHECK(num(st.at("clean_rounds")) == 0);
  CHECK(st.at("clean_delivery_rate").to_number<double>() == 0.0);
  CHECK(num(st.at("loss")) >= 6);
  auto gate = f.report(*f.edge).at("gate_d").as_object();
  CHECK(gate.at("loss_ok") == false);
  CHECK(gate.at("rate_ok") == false);
  // The canaries are in the dead-letter store like any segment, and the
  // node's own accounting identity holds.
  auto dl = relay::http_call("GET", "http://" + f.edge->address("admin") + "/v1/deadletter?limit=100");
  REQUIRE(dl.has_value());
  auto entries = json::parse(dl->body).at("entries").as_array();
  REQUIRE(entries.size() >= 6);
  CHECK(entries[0].at("stream") == "_canary");
  CHECK(entries[0].at("reason") == "max_retry");
  CHECK(num(f.edge->status().at("totals").at("loss")) == 0);
  f.edge->stop();
}

TEST_CASE("the soak record survives a restart of the edge: rounds continue, the open round is interrupted",
          "[e2e][soak]") {
  soak_fixture f;
  f.start_hub();
  const auto toml = f.edge_toml(f.hub->address("listen"), "1s", "", "");
  f.start_edge(toml);
  f.round(1s, 3);
  f.round(1s, 6); // round 1 closed clean, round 2 open and delivered
  REQUIRE(eventually([&] { return f.rep(*f.edge, "rounds") == 1; }));
  auto started_at = f.edge->soak_report().at("started_at");
  f.edge->stop();
  f.edge.reset();

  f.start_edge(toml);
  auto rp = f.report(*f.edge);
  CHECK(num(rp.at("restarts")) == 1);
  CHECK(num(rp.at("rounds")) == 2); // round 2 was open at the stop
  CHECK(num(rp.at("clean_rounds")) == 1);
  CHECK(num(rp.at("segments_sent")) == 6);
  CHECK(num(rp.at("segments_delivered")) == 6);
  CHECK(rp.at("started_at") == started_at);
  CHECK_THAT(f.metrics(*f.edge), Contains("edgerelay_canary_rounds_total{result=\"interrupted\"} 1\n"));

  f.round(1s, 9);
  f.clk.advance(1s); // round 3 closes
  REQUIRE(eventually([&] { return f.rep(*f.edge, "rounds") == 3; }));
  CHECK(f.rep(*f.edge, "clean_rounds") == 2);
  CHECK(f.rep(*f.edge, "loss") == 0);
  // The hub saw one gap-free lane across the edge's restart.
  auto v = f.hub->soak_report().at("verifier").as_object();
  CHECK(num(v.at("received")) >= 9);
  CHECK(num(v.at("gaps")) == 0);
  CHECK(num(v.at("duplicates")) == 0);
  f.edge->stop();
  f.hub->stop();
}

TEST_CASE("on the wall clock a 300 ms canary interval runs rounds by itself and the record says wall", "[e2e][soak]") {
  soak_fixture f;
  f.start_hub();
  f.start_edge_on_wall_clock(f.edge_toml(f.hub->address("listen"), "300ms", "", ""));
  REQUIRE(eventually([&] { return f.rep(*f.edge, "rounds") >= 4; }, 10s));
  auto rp = f.edge->soak_report();
  INFO(json::serialize(rp));
  CHECK(rp.at("clock") == "wall");
  CHECK(num(rp.at("loss")) == 0);
  CHECK(num(rp.at("segments_sent")) >= 12);
  CHECK(num(rp.at("segments_delivered")) >= 12);
  // Loopback delivery takes milliseconds: the first round may be late while
  // the edge is still connecting, the later ones are clean.
  CHECK(num(rp.at("clean_rounds")) >= num(rp.at("rounds")) - 1);
  CHECK(rp.at("latency_ms").at("max").to_number<double>() > 0.0);
  CHECK(f.verifier(*f.hub, "received") >= 12);
  CHECK(f.verifier(*f.hub, "gaps") == 0);
  f.edge->stop();
  f.hub->stop();
}
