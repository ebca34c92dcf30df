// `edgerelay evidence matrix`, run as a release gate would.

#include "telemetry/evidence.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "util/clock.hpp"

#include <boost/json/parse.hpp>
#include <catch2/catch.hpp>

#include <fstream>
#include <iterator>

using namespace edgerelay;
using test::slurp;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

test::command_result run(const test::temp_dir& d, std::vector<std::string> args, std::chrono::seconds limit = 30s) {
  return test::run_edgerelay(d.path(), std::move(args), limit);
}

} // namespace

TEST_CASE("evidence matrix writes matrix.md and relay-proof-report.json, and exits 2 naming a malformed report",
          "[evidence][cli]") {
  test::temp_dir d("evidence-cli");
  const auto in = d / "reports";
  std::filesystem::create_directories(in);
  util::manual_clock c(std::chrono::system_clock::time_point{std::chrono::seconds{1714521600}});
  for (const auto& info : telemetry::claim_catalogue()) {
    if (info.third_party || info.id == "RL-SOAK-01") continue;
    telemetry::report r{std::string(info.id), "scenario", c};
    r.environment = {"0.1.0", "abc", "edge-01", "wall", "lan"};
    r.check_equal("loss", 0, 0);
    c.advance(1min);
    r.finish(c);
    REQUIRE(telemetry::write_report(r, in / (r.claim + ".json")).has_value());
  }

  auto ok = run(d, {"evidence", "matrix", "--in", in.string()});
  CHECK(ok.code == 0);
  CHECK_THAT(ok.out, Contains("RL-IMPW-01  VALIDATED") && Contains("RL-SOAK-01  DEFER") &&
                         Contains("design_partner: ready") && Contains("ga: not ready"));
  REQUIRE(std::filesystem::exists(in / "matrix.md"));
  REQUIRE(std::filesystem::exists(in / "relay-proof-report.json"));
  CHECK_THAT(slurp(in / "matrix.md"), Contains("| RL-SOAK-01 | ") && Contains("### GA: NOT READY"));
  auto js = boost::json::parse(slurp(in / "relay-proof-report.json")).as_object();
  CHECK(js.at("readiness").at("design_partner").at("ready") == true);
  CHECK(js.at("campaign").at("reports") == 12);

  // Run again with the matrix in the folder: it is not taken for a report.
  auto other = run(d, {"evidence", "matrix", "--in", in.string(), "--out", (d / "gate").string()});
  CHECK(other.code == 0);
  CHECK(slurp(d / "gate" / "relay-proof-report.json") == slurp(in / "relay-proof-report.json"));

  std::ofstream(in / "RL-IMPW-03.json", std::ios::trunc)
      << R"({"schema": "edgerelay.evidence/v1", "claim": "RL-IMPW-03", "title": "latency", "status": "PASS",
             "started_at": "2024-05-01T00:00:00Z", "finished_at": "2024-05-01T00:01:00Z",
             "environment": {"version": "0.1.0", "commit": "abc", "host": "h", "clock": "wall", "network": "lan"},
             "checks": [{"name": "delivered", "expected": 1, "observed": 1, "pass": "true"}]})";
  auto bad = run(d, {"evidence", "matrix", "--in", in.string(), "--out", (d / "bad").string()});
  CHECK(bad.code == 2);
  CHECK_THAT(bad.out, Contains((in / "RL-IMPW-03.json").string() + ": checks[0].pass: expected a boolean"));
  CHECK_FALSE(std::filesystem::exists(d / "bad" / "relay-proof-report.json"));

  auto missing = run(d, {"evidence", "matrix", "--in", (d / "nope").string()});
  CHECK(missing.code == 2);
  CHECK_THAT(missing.out, Contains("no such folder"));
  auto usage = run(d, {"evidence", "matrix"});
  CHECK(usage.code == 2);
}
