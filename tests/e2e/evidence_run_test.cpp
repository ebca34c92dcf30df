// `edgerelay evidence run` and `edgerelay evidence export`, run as CI and a
// release gate would: real processes, reports read back with the strict parser.

#include "telemetry/evidence.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "transport/http_server.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <fstream>
#include <thread>

using namespace edgerelay;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;
namespace json = boost::json;

TEST_CASE("evidence run --quick runs two scenarios with real processes and writes reports the strict parser accepts",
          "[e2e][evidence]") {
  test::temp_dir d("evidence-run");
  const auto out = d / "reports";
  auto r = test::run_edgerelay(
      d.path(), {"evidence", "run", "--quick", "--out", out.string(), "--claim", "XC-CERT-02", "--claim", "RL-QMGM-01"},
      300s);
  INFO(r.out);
  CHECK(r.code == 0);
  // One progress line per scenario, in catalogue order, and a summary.
  CHECK_THAT(r.out, Contains("[1/2] RL-QMGM-01") && Contains("[2/2] XC-CERT-02") && Contains("2 PASS, 0 FAIL, 0 SKIP"));
  for (const char* claim : {"RL-QMGM-01", "XC-CERT-02"}) {
    INFO(claim);
    auto rep = telemetry::read_report(out / (std::string(claim) + ".json"));
    INFO((rep ? std::string() : rep.error().to_string()));
    REQUIRE(rep.has_value());
    CHECK(rep->status == telemetry::report_status::pass);
    CHECK(rep->environment.clock == "wall");
    CHECK(rep->environment.network == "loopback");
    CHECK(rep->environment.version == EDGERELAY_VERSION);
    CHECK(rep->checks.size() >= 10);
    CHECK(rep->parameters.at("size") == "quick");
    CHECK(rep->metrics.at("scenario_seconds").as_double() > 0);
  }
  auto qm = telemetry::read_report(out / "RL-QMGM-01.json");
  REQUIRE(qm.has_value());
  bool saw_drain = false;
  for (auto& c : qm->checks)
    if (c.name == "held: status totals.queued") saw_drain = c.observed == json::value(200);
  CHECK(saw_drain);
  // Nothing is left behind after a run without failures.
  CHECK_FALSE(std::filesystem::exists(out / ".work"));
  auto m = test::run_edgerelay(d.path(), {"evidence", "matrix", "--in", out.string()});
  INFO(m.out);
  CHECK(m.code == 0);
  CHECK_THAT(m.out, Contains("RL-QMGM-01  BETA") && Contains("RL-IMPW-01  DEFER"));
}

TEST_CASE("evidence run refuses unknown claim ids and non-scenario claims with exit 2 and the valid ids",
          "[e2e][evidence][cli]") {
  test::temp_dir d("evidence-run-usage");
  auto r = test::run_edgerelay(d.path(), {"evidence", "run", "--out", (d / "o").string(), "--claim", "RL-FOO-01"});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("unknown claim id \"RL-FOO-01\"") && Contains("valid claim ids: RL-IMPW-01") &&
                        Contains("XC-CERT-02"));
  CHECK_FALSE(std::filesystem::exists(d / "o"));
  r = test::run_edgerelay(d.path(), {"evidence", "run", "--out", (d / "o").string(), "--claim", "RL-SOAK-01"});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("evidence export"));
  r = test::run_edgerelay(d.path(), {"evidence", "run", "--quick"});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("--out"));
  r = test::run_edgerelay(d.path(),
                          {"evidence", "export", "--admin", "http://127.0.0.1:1", "--out", (d / "soak.json").string()});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("RL-SOAK-01.json"));
}

namespace {

// Serves one canned body at GET /v1/evidence/soak, 404 elsewhere.
struct canned_admin : transport::http_handler {
  std::string body;
  unsigned status = 200;
  boost::asio::io_context io;
  std::shared_ptr<transport::http_server> server;
  std::thread thread;

  canned_admin() {
    auto s = transport::http_server::create(io, {boost::asio::ip::make_address("127.0.0.1"), 0}, *this, {});
    REQUIRE(s.has_value());
    server = *s;
    server->start();
    thread = std::thread([this] {
      auto guard = boost::asio::make_work_guard(io);
      io.run();
    });
  }
  ~canned_admin() {
    boost::asio::post(io, [this] { server->stop(); });
    io.stop();
    thread.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server->local_endpoint().port()); }
  void on_request(transport::http_request&& req, const transport::connection_info&, transport::responder r) override {
    if (req.target() == "/v1/evidence/soak")
      r.send_json(status, body);
    else
      r.send_error(404, "not_found", "no such endpoint");
  }
};

telemetry::soak_record record(std::uint64_t rounds, std::uint64_t clean, const std::string& clock) {
  telemetry::soak_record s;
  s.rounds = rounds;
  s.clean_rounds = clean;
  s.segments_sent = rounds * 10;
  s.segments_delivered = rounds * 10;
  s.latency = {4.5, 9.0, 20.0, 31.0};
  s.max_queue_depth = 12;
  s.rss_start_bytes = 20 << 20;
  s.rss_max_bytes = 24 << 20;
  s.restarts = 1;
  s.clock = clock;
  return s;
}

// What a node with the soak on answers (docs/soak.md): the record and five more keys.
std::string node_document(const telemetry::soak_record& s) {
  auto o = telemetry::to_json(s);
  o["started_at"] = "2026-11-20T00:00:00.000Z";
  o["updated_at"] = "2026-11-21T01:00:00.000Z";
  o["interval_s"] = 60;
  o["enabled"] = true;
  o["verifier"] = json::object{{"received", 7}, {"gaps", 0}, {"lanes", json::array{}}};
  return json::serialize(o);
}

} // namespace

TEST_CASE("evidence export writes a node's soak record as RL-SOAK-01.json, PASS exactly when Gate D holds",
          "[e2e][evidence][cli]") {
  test::temp_dir d("evidence-export");
  canned_admin admin;

  admin.body = node_document(record(1500, 1495, "wall"));
  auto r = test::run_edgerelay(d.path(), {"evidence", "export", "--admin", admin.url(), "--out", d.path().string()});
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Contains("RL-SOAK-01 PASS"));
  auto rep = telemetry::read_report(d / "RL-SOAK-01.json");
  INFO((rep ? std::string() : rep.error().to_string()));
  REQUIRE(rep.has_value());
  CHECK(rep->status == telemetry::report_status::pass);
  CHECK(rep->environment.clock == "wall");
  auto soak = telemetry::soak_of(*rep);
  REQUIRE(soak.has_value());
  CHECK(*soak == record(1500, 1495, "wall"));
  CHECK(rep->started_at == *telemetry::parse_rfc3339("2026-11-20T00:00:00Z"));
  CHECK(rep->finished_at == *telemetry::parse_rfc3339("2026-11-21T01:00:00Z"));
  CHECK(rep->parameters.at("canary_interval_s") == 60);
  CHECK(rep->metrics.at("verifier").at("received") == 7);

  // Short of Gate D (too few rounds, and a manual clock): written, but FAIL,
  // with the record's clock in the environment.
  admin.body = node_document(record(100, 100, "manual"));
  const auto file = d / "second" / "RL-SOAK-01.json";
  r = test::run_edgerelay(d.path(), {"evidence", "export", "--admin", admin.url(), "--out", file.string()});
  INFO(r.out);
  REQUIRE(r.code == 0);
  rep = telemetry::read_report(file);
  REQUIRE(rep.has_value());
  CHECK(rep->status == telemetry::report_status::fail);
  CHECK(rep->environment.clock == "manual");
  std::size_t failed = 0;
  for (auto& c : rep->checks)
    if (!c.pass) ++failed;
  CHECK(failed == 2); // rounds and clock

  // A record that is not the soak record, and a node without the endpoint.
  auto bad = telemetry::to_json(record(1500, 1495, "wall"));
  bad.erase("rounds");
  admin.body = json::serialize(bad);
  r = test::run_edgerelay(d.path(), {"evidence", "export", "--admin", admin.url(), "--out", (d / "x").string() + "/"});
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("/v1/evidence/soak: rounds"));
  // A node that runs no soak: no record, so nothing is written.
  admin.body = R"({"enabled":false,"message":"this node sends no canaries","verifier":{"received":0}})";
  r = test::run_edgerelay(d.path(), {"evidence", "export", "--admin", admin.url(), "--out", (d / "z").string() + "/"});
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("/v1/evidence/soak: enabled: false: this node runs no canary soak"));
  CHECK_FALSE(std::filesystem::exists(d / "z" / "RL-SOAK-01.json"));
  admin.status = 404;
  admin.body = R"({"error":"not_found","message":"no such endpoint"})";
  r = test::run_edgerelay(d.path(), {"evidence", "export", "--admin", admin.url(), "--out", (d / "y").string() + "/"});
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("HTTP 404"));
}
