// RL-THRU-01's reading of `edgerelay bench tiers` output (the bench driver
// lives on another branch; this pins the fields the scenario relies on).

#include "relay/scenarios/scenarios.hpp"
#include "util/clock.hpp"

#include <catch2/catch.hpp>

using namespace edgerelay;

namespace {

std::string tier(const char* name, int loss, int duplicates, bool monotonic) {
  return std::string(R"({"tier":")") + name +
         R"(","segment_bytes":64,"segments_per_s":90000,"mb_per_s":5.7,"p50_ms":1.2,"p99_ms":4.0,)"
         R"("p99_ms_at_half_load":2.0,"cpu_s_per_gb":3.1,"rss_max_bytes":{"edge":1000,"hub":2000},"loss":)" +
         std::to_string(loss) + R"(,"duplicates":)" + std::to_string(duplicates) + R"(,"monotonic_drain":)" +
         (monotonic ? "true" : "false") + "}";
}

std::string document(const std::vector<std::string>& tiers) {
  std::string t;
  for (auto& x : tiers)
    t += (t.empty() ? "" : ",") + x;
  return R"({"machine":"2 cores","commit":"abc123","tiers":[)" + t + "]}";
}

telemetry::report finished(const std::string& doc, bool quick) {
  util::manual_clock c;
  telemetry::report r{"RL-THRU-01", "tiers", c};
  relay::scenarios::tier_checks(doc, r, quick);
  r.finish(c);
  return r;
}

} // namespace

TEST_CASE("bench tiers output with every tier clean gives a PASS with the tiers in the metrics", "[evidence]") {
  auto r = finished(document({tier("T1", 0, 0, true), tier("T2", 0, 0, true), tier("T3", 0, 0, true),
                              tier("T4", 0, 0, true), tier("T5", 0, 0, true)}),
                    false);
  CHECK(r.status == telemetry::report_status::pass);
  CHECK(r.parameters.at("commit") == "abc123");
  CHECK(r.metrics.at("tiers").as_array().size() == 5);
  CHECK(r.checks.size() == 1 + 5 * 4 + 2);
}

TEST_CASE("a tier with loss, duplicates or a non-monotonic drain, or missing tiers, fails RL-THRU-01", "[evidence]") {
  CHECK(finished(document({tier("T1", 1, 0, true)}), true).status == telemetry::report_status::fail);
  CHECK(finished(document({tier("T1", 0, 2, true)}), true).status == telemetry::report_status::fail);
  CHECK(finished(document({tier("T1", 0, 0, false)}), true).status == telemetry::report_status::fail);
  CHECK(finished(document({tier("T1", 0, 0, true)}), true).status == telemetry::report_status::pass);
  // The full run must have measured T1-T5.
  CHECK(finished(document({tier("T1", 0, 0, true)}), false).status == telemetry::report_status::fail);
  CHECK(finished(document({}), true).status == telemetry::report_status::fail);
  CHECK(finished("not json", true).status == telemetry::report_status::fail);
  CHECK(finished(R"({"tiers":[{"tier":"T1"}]})", true).status == telemetry::report_status::fail);
}
