// Evidence reports, Gate D and the evidence matrix: each honesty rule of
// docs/evidence.md has its own test, next to a positive control that shows
// the rules can be met.

#include "telemetry/evidence.hpp"
#include "tests/support/temp_dir.hpp"
#include "util/clock.hpp"
#include "util/errc.hpp"
#include "util/units.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <catch2/catch.hpp>

#include <fstream>

using namespace edgerelay;
using namespace edgerelay::telemetry;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

// 2024-05-01T00:00:00Z
const auto t0 = std::chrono::system_clock::time_point{std::chrono::seconds{1714521600}};

// A PASS that meets every rule for VALIDATED: wall clock, a real network, no limitation.
report good(const std::string& claim, util::manual_clock& c) {
  report r{claim, "scenario for " + claim, c};
  r.environment = {"0.1.0", "abc1234", "edge-01", "wall", "lan"};
  r.parameters["segments"] = 200;
  r.check("delivered", 200, 200, true);
  r.check_equal("loss", 0, 0);
  if (claim == "RL-SOAK-01") {
    soak_record s;
    s.rounds = 1440;
    s.clean_rounds = 1440;
    s.segments_sent = s.segments_delivered = 14400;
    s.clock = "wall";
    r.soak(s);
  }
  c.advance(10min);
  r.finish(c);
  return r;
}

std::vector<loaded_report> loaded(std::vector<report> rs) {
  std::vector<loaded_report> out;
  for (auto& r : rs)
    out.push_back({r.claim + ".json", std::move(r)});
  return out;
}

// One good report for every claim an edgerelay report can prove.
std::vector<report> full_campaign(util::manual_clock& c) {
  std::vector<report> rs;
  for (const auto& info : claim_catalogue())
    if (!info.third_party) rs.push_back(good(std::string(info.id), c));
  return rs;
}

evidence_matrix matrix_of(std::vector<report> rs) {
  auto m = build_matrix(loaded(std::move(rs)));
  REQUIRE(m.has_value());
  return *m;
}

const claim_row& row(const evidence_matrix& m, std::string_view id) {
  for (const auto& r : m.claims)
    if (r.claim.id == id) return r;
  FAIL("no row " << id);
  throw;
}

// Replaces the report for `claim` in a full campaign.
std::vector<report> campaign_with(util::manual_clock& c, const report& replacement) {
  auto rs = full_campaign(c);
  for (auto& r : rs)
    if (r.claim == replacement.claim) r = replacement;
  return rs;
}

std::string text_of(const report& r) { return boost::json::serialize(to_json(r)); }

// The report as JSON, edited by `edit`, then serialized.
template <class F>
std::string edited(const report& r, F edit) {
  boost::json::value v = to_json(r);
  edit(v.as_object());
  return boost::json::serialize(v);
}

std::string error_of(std::string_view text, const std::string& file = "DIR/RL-IMPW-01.json") {
  auto r = parse_report(text, file);
  REQUIRE_FALSE(r.has_value());
  return r.error().to_string();
}

bool has(const std::vector<std::string>& v, std::string_view needle) {
  for (const auto& s : v)
    if (s.find(needle) != std::string::npos) return true;
  return false;
}

} // namespace

TEST_CASE("a complete wall-clock campaign on a real network validates every self-provable claim", "[evidence]") {
  util::manual_clock c(t0);
  auto m = matrix_of(full_campaign(c));
  for (const auto& r : m.claims) {
    INFO(r.claim.id << " " << to_string(r.state));
    if (r.claim.third_party) {
      CHECK(r.state == claim_state::future_required);
      CHECK(r.advice == recommendation::future_required);
    } else {
      CHECK(r.state == claim_state::validated);
      CHECK(r.advice == recommendation::ok_design_partner);
      CHECK(r.limitations.empty());
      CHECK(r.evidence_file == std::string(r.claim.id) + ".json");
    }
  }
  CHECK(m.campaign.within);
  CHECK(m.campaign.reports == 13);
  CHECK(m.levels[0].ready);
  CHECK(m.levels[0].disclosures.empty());
  CHECK(m.levels[1].ready);
  // Public production needs third-party evidence no scenario can produce.
  CHECK_FALSE(m.levels[2].ready);
  REQUIRE(m.levels[2].blockers.size() == 1);
  CHECK_THAT(m.levels[2].blockers[0], Contains("XC-SCRT-01 is FUTURE_REQUIRED"));
}

TEST_CASE("a missing report is DEFER and blocks the levels that need the claim", "[evidence]") {
  util::manual_clock c(t0);
  auto rs = full_campaign(c);
  std::erase_if(rs, [](const report& r) { return r.claim == "RL-IMPW-01" || r.claim == "RL-MULT-01"; });
  auto m = matrix_of(rs);
  const auto& impw = row(m, "RL-IMPW-01");
  CHECK(impw.state == claim_state::defer);
  CHECK(impw.advice == recommendation::defer);
  CHECK(impw.evidence_file.empty());
  CHECK_FALSE(impw.status.has_value());
  CHECK(has(impw.limitations, "no report: RL-IMPW-01.json is missing"));
  CHECK(row(m, "RL-MULT-01").state == claim_state::defer);
  CHECK_FALSE(m.levels[0].ready);
  CHECK(has(m.levels[0].blockers, "RL-IMPW-01 is DEFER"));
  // RL-MULT-01 is first needed for GA, so it does not block design partners.
  CHECK_FALSE(has(m.levels[0].blockers, "RL-MULT-01"));
  CHECK(has(m.levels[1].blockers, "RL-MULT-01 is DEFER"));
}

TEST_CASE("an empty folder gives DEFER everywhere and no campaign", "[evidence]") {
  auto m = matrix_of({});
  for (const auto& r : m.claims)
    CHECK((r.state == claim_state::defer || r.state == claim_state::future_required));
  CHECK_FALSE(m.campaign.within);
  for (const auto& lv : m.levels)
    CHECK_FALSE(lv.ready);
  CHECK(has(m.levels[0].blockers, "no reports"));
}

TEST_CASE("a FAIL report is never VALIDATED: DEFER with each failed check written out", "[evidence]") {
  util::manual_clock c(t0);
  report r{"RL-DEAD-01", "dead-letter retry", c};
  r.environment = {"0.1.0", "abc", "h", "wall", "lan"};
  r.check_equal("retried segments delivered", 50, 49);
  r.check_equal("loss", 0, 0);
  r.finish(c);
  REQUIRE(r.status == report_status::fail);
  auto m = matrix_of(campaign_with(c, r));
  const auto& d = row(m, "RL-DEAD-01");
  CHECK(d.state == claim_state::defer);
  CHECK(d.advice == recommendation::defer);
  CHECK(d.status == report_status::fail);
  CHECK_THAT(d.advice_text, Contains("1 check(s) failed"));
  CHECK(has(d.limitations, "check \"retried segments delivered\" failed: expected 50, observed 49"));
  CHECK_FALSE(has(d.limitations, "\"loss\""));
  CHECK_FALSE(m.levels[0].ready);
}

TEST_CASE("a SKIP report is not validated and carries its skip reason in the limitations", "[evidence]") {
  util::manual_clock c(t0);
  report r{"XC-CERT-01", "cert rotation", c};
  r.environment = {"0.1.0", "abc", "h", "wall", "lan"};
  r.skip("the openssl tool is not installed");
  r.finish(c);
  REQUIRE(r.status == report_status::skip);
  auto m = matrix_of(campaign_with(c, r));
  const auto& x = row(m, "XC-CERT-01");
  CHECK(x.state == claim_state::defer);
  CHECK(x.status == report_status::skip);
  CHECK(has(x.limitations, "skipped: the openssl tool is not installed"));
  CHECK(has(m.levels[0].blockers, "XC-CERT-01 is DEFER: skipped: the openssl tool is not installed"));
}

TEST_CASE("a PASS measured on loopback only is BETA with that limitation written out", "[evidence]") {
  util::manual_clock c(t0);
  auto r = good("RL-IMPW-02", c);
  r.environment.network = "loopback";
  auto m = matrix_of(campaign_with(c, r));
  const auto& x = row(m, "RL-IMPW-02");
  CHECK(x.state == claim_state::beta);
  CHECK(x.advice == recommendation::beta_only);
  CHECK(x.limitations == std::vector<std::string>{"measured on loopback only"});
  // BETA is enough for design partners (with the disclosure), not for GA.
  CHECK(m.levels[0].ready);
  CHECK(has(m.levels[0].disclosures, "RL-IMPW-02 is BETA: measured on loopback only"));
  CHECK_FALSE(m.levels[1].ready);
  CHECK(has(m.levels[1].blockers, "RL-IMPW-02 is BETA: measured on loopback only"));
}

TEST_CASE("a PASS measured on a manual clock only is BETA with that limitation written out", "[evidence]") {
  util::manual_clock c(t0);
  report r{"RL-BAND-01", "daily quota reset", c}; // the clock's kind is stamped, not chosen
  r.environment.network = "lan";
  r.check_equal("quota reset at 00:00Z", true, true);
  c.advance(24h);
  r.finish(c);
  REQUIRE(r.environment.clock == "manual");
  REQUIRE(r.status == report_status::pass);
  auto m = matrix_of(campaign_with(c, r));
  const auto& x = row(m, "RL-BAND-01");
  CHECK(x.state == claim_state::beta);
  REQUIRE(x.limitations.size() == 1);
  CHECK_THAT(x.limitations[0], Contains("measured on a manual clock only"));
}

TEST_CASE("a PASS with a declared limitation is BETA with the limitation written out", "[evidence]") {
  util::manual_clock c(t0);
  auto r = good("RL-THRU-01", c);
  r.limitation("single host, no production hardware baseline");
  auto m = matrix_of(campaign_with(c, r));
  const auto& x = row(m, "RL-THRU-01");
  CHECK(x.state == claim_state::beta);
  CHECK(x.limitations == std::vector<std::string>{"single host, no production hardware baseline"});
}

TEST_CASE("nothing is VALIDATED by default: a report that states no environment counts as loopback", "[evidence]") {
  util::system_clock_source& wall = util::system_clock_source::instance();
  report r{"RL-QMGM-01", "queue drain", wall};
  r.check_equal("drained", 200, 200);
  r.finish(wall);
  REQUIRE(r.status == report_status::pass);
  CHECK(r.environment.clock == "wall");
  CHECK(r.environment.network == "loopback");
  auto m = matrix_of({r});
  CHECK(row(m, "RL-QMGM-01").state == claim_state::beta);
  for (const auto& x : m.claims)
    CHECK(x.state != claim_state::validated);
}

TEST_CASE("a soak short of Gate D is NOT_STARTED with the shortfall named", "[evidence]") {
  util::manual_clock c(t0);
  auto r = good("RL-SOAK-01", c);
  soak_record s = *soak_of(r);
  s.rounds = 1000;
  s.clean_rounds = 1000;
  r.soak(s);
  auto m = matrix_of(campaign_with(c, r));
  const auto& x = row(m, "RL-SOAK-01");
  CHECK(x.state == claim_state::not_started);
  CHECK(x.advice == recommendation::not_started);
  REQUIRE(x.gate_d.has_value());
  CHECK_FALSE(x.gate_d->overall);
  CHECK(has(x.limitations, "Gate D: rounds 1000 < 1440"));
  CHECK(m.levels[0].ready); // the soak is first needed for GA
  CHECK(has(m.levels[0].disclosures, "RL-SOAK-01 is NOT_STARTED"));
  CHECK(has(m.levels[1].blockers, "RL-SOAK-01 is NOT_STARTED: Gate D: rounds 1000 < 1440"));

  SECTION("a manual-clock soak of full length is still NOT_STARTED") {
    s.rounds = s.clean_rounds = 2000;
    s.clock = "manual";
    r.soak(s);
    r.environment.clock = "manual";
    auto m2 = matrix_of(campaign_with(c, r));
    const auto& y = row(m2, "RL-SOAK-01");
    CHECK(y.state == claim_state::not_started);
    CHECK(has(y.limitations, "a manual-clock soak can never satisfy Gate D"));
  }
}

TEST_CASE("gate_d checks each threshold at its boundary and never passes a manual clock", "[evidence]") {
  soak_record s;
  s.rounds = 1440;
  s.clean_rounds = 1440;
  s.clock = "wall";
  CHECK(gate_d(s) == gate_d_result{true, true, true, true, true});

  s.rounds = 1439;
  s.clean_rounds = 1439;
  CHECK_FALSE(gate_d(s).rounds_ok);
  CHECK_FALSE(gate_d(s).overall);

  s.rounds = 2000;
  s.clean_rounds = 1980; // exactly 0.990
  CHECK(gate_d(s).rate_ok);
  CHECK(gate_d(s).overall);
  s.clean_rounds = 1979; // 0.9895
  CHECK_FALSE(gate_d(s).rate_ok);
  CHECK_FALSE(gate_d(s).overall);

  s.clean_rounds = 2000;
  s.loss = 1;
  CHECK_FALSE(gate_d(s).loss_ok);
  CHECK_FALSE(gate_d(s).overall);
  s.loss = -1; // more accounted for than routed is as wrong as less
  CHECK_FALSE(gate_d(s).loss_ok);

  s.loss = 0;
  s.clock = "manual";
  auto g = gate_d(s);
  CHECK(g.rounds_ok);
  CHECK(g.rate_ok);
  CHECK(g.loss_ok);
  CHECK_FALSE(g.clock_ok);
  CHECK_FALSE(g.overall);

  soak_record none;
  none.clock = "wall";
  CHECK_FALSE(gate_d(none).rate_ok); // no rounds is no evidence
  CHECK(none.clean_delivery_rate() == 0.0);
}

TEST_CASE("the campaign window holds exactly 7 days, 7 days and 1 s is outside and not design-partner ready",
          "[evidence]") {
  util::manual_clock c(t0);
  auto rs = full_campaign(c);
  // The first report starts at t0; make the last one end exactly 7 days later.
  auto& last = rs.back();
  last.finished_at = t0 + 7 * 24h;
  last.started_at = last.finished_at - 10min;
  auto inside = matrix_of(rs);
  CHECK(inside.campaign.within);
  CHECK(inside.campaign.span == std::chrono::milliseconds(7 * 24h));
  CHECK(inside.levels[0].ready);
  CHECK(row(inside, std::string(last.claim)).state == claim_state::validated);

  last.finished_at += 1s;
  auto outside = matrix_of(rs);
  CHECK_FALSE(outside.campaign.within);
  CHECK_FALSE(outside.levels[0].ready);
  CHECK(has(outside.levels[0].blockers, "more than one 7-day campaign window"));
  for (const auto& x : outside.claims)
    if (!x.claim.third_party) {
      CHECK(x.state == claim_state::beta);
      CHECK(has(x.limitations, "outside the 7-day campaign window: the reports span 7d1s"));
    }
}

TEST_CASE("finish derives the status: a failed check or no check is FAIL, skip is SKIP", "[evidence]") {
  util::manual_clock c(t0);
  report none{"RL-IMPW-01", "t", c};
  none.finish(c);
  CHECK(none.status == report_status::fail);

  report failed{"RL-IMPW-01", "t", c};
  failed.check("a", 1, 1, true).check("b", 1, 2, false);
  failed.finish(c);
  CHECK(failed.status == report_status::fail);

  report passed{"RL-IMPW-01", "t", c};
  passed.check_equal("a", boost::json::array{1, 2}, boost::json::array{1, 2});
  c.advance(1500ms);
  passed.finish(c);
  CHECK(passed.status == report_status::pass);
  CHECK(passed.finished_at - passed.started_at == 1500ms);

  report skipped{"RL-IMPW-01", "t", c};
  skipped.check("a", 1, 2, false).skip("needs two hosts");
  skipped.finish(c);
  CHECK(skipped.status == report_status::skip);
  CHECK(skipped.skip_reason == "needs two hosts");
}

TEST_CASE("a report survives write and strict parse unchanged", "[evidence]") {
  test::temp_dir d("evidence");
  util::manual_clock c(t0 + 123ms);
  auto r = good("RL-SOAK-01", c);
  r.metrics["throughput"] = boost::json::object{{"segments_per_s", 1234.5}};
  r.parameters["tiers"] = boost::json::array{"T1", "T2"};
  r.limitation("loopback impairment proxy");
  r.check("nested", boost::json::object{{"a", nullptr}}, boost::json::object{{"a", nullptr}}, true);
  REQUIRE(write_report(r, d / "RL-SOAK-01.json").has_value());
  auto back = read_report(d / "RL-SOAK-01.json");
  REQUIRE(back.has_value());
  CHECK(*back == r);
  CHECK(util::format_utc(back->started_at) == "2024-05-01T00:00:00.123Z");
  auto soak = soak_of(*back);
  REQUIRE(soak.has_value());
  CHECK(soak->rounds == 1440);
  CHECK(gate_d(*soak).overall);

  SECTION("a skipped report too") {
    report s{"RL-CONN-01", "contested link", c};
    s.skip("no second host");
    s.finish(c);
    REQUIRE(write_report(s, d / "RL-CONN-01.json").has_value());
    auto b = read_report(d / "RL-CONN-01.json");
    REQUIRE(b.has_value());
    CHECK(*b == s);
  }
}

TEST_CASE("RFC 3339 times: UTC only, real dates only, fractions kept", "[evidence]") {
  CHECK(parse_rfc3339("2024-05-01T00:00:00Z") == t0);
  CHECK(parse_rfc3339("2024-05-01t00:00:00.5z") == t0 + 500ms);
  CHECK(parse_rfc3339("2024-05-01T00:00:00.000000001Z") == t0 + 1ns);
  CHECK(parse_rfc3339("2024-02-29T12:00:00Z").has_value());
  CHECK_FALSE(parse_rfc3339("2023-02-29T12:00:00Z").has_value());
  CHECK_FALSE(parse_rfc3339("2024-05-01T00:00:00+02:00").has_value());
  CHECK_FALSE(parse_rfc3339("2024-05-01T00:00:00").has_value());
  CHECK_FALSE(parse_rfc3339("2024-05-01T24:00:00Z").has_value());
  CHECK_FALSE(parse_rfc3339("2024-05-01T23:59:60Z").has_value());
  CHECK_FALSE(parse_rfc3339("2024-05-01T00:00:00.Z").has_value());
  CHECK_FALSE(parse_rfc3339("2024-05-01 00:00:00Z").has_value());
  CHECK(util::format_utc(t0 + 7 * 24h + 1s) == "2024-05-08T00:00:01.000Z");
}

TEST_CASE("a malformed report is an error naming the file and the field", "[evidence]") {
  util::manual_clock c(t0);
  const auto r = good("RL-IMPW-01", c);
  REQUIRE(parse_report(text_of(r), "DIR/RL-IMPW-01.json").has_value());

  SECTION("a check's pass that is not a boolean") {
    auto t = edited(r, [](auto& o) {
      auto& checks = o["checks"].as_array();
      checks.push_back(boost::json::object{{"name", "x"}, {"expected", 1}, {"observed", 1}, {"pass", "yes"}});
    });
    CHECK(error_of(t) == "DIR/RL-IMPW-01.json: checks[2].pass: expected a boolean, got a string");
  }
  SECTION("a missing required key") {
    CHECK(error_of(edited(r, [](auto& o) { o.erase("status"); })) == "DIR/RL-IMPW-01.json: status: missing");
    CHECK(error_of(edited(r, [](auto& o) { o["environment"].as_object().erase("network"); })) ==
          "DIR/RL-IMPW-01.json: environment.network: missing");
  }
  SECTION("an unknown key (a typo must not hide a limitation)") {
    auto t = edited(r, [](auto& o) { o["limitation"] = boost::json::array{"loopback"}; });
    CHECK(error_of(t) == "DIR/RL-IMPW-01.json: limitation: unknown key");
  }
  SECTION("a wrong schema, status, clock or timestamp") {
    CHECK_THAT(error_of(edited(r, [](auto& o) { o["schema"] = "edgerelay.evidence/v2"; })),
               Contains("DIR/RL-IMPW-01.json: schema: expected \"edgerelay.evidence/v1\""));
    CHECK_THAT(error_of(edited(r, [](auto& o) { o["status"] = "OK"; })),
               Contains("DIR/RL-IMPW-01.json: status: expected \"PASS\", \"FAIL\" or \"SKIP\", got \"OK\""));
    CHECK_THAT(error_of(edited(r, [](auto& o) { o["environment"].as_object()["clock"] = "ntp"; })),
               Contains("environment.clock: expected \"wall\" or \"manual\""));
    CHECK_THAT(error_of(edited(r, [](auto& o) { o["started_at"] = "yesterday"; })),
               Contains("DIR/RL-IMPW-01.json: started_at: \"yesterday\" is not an RFC 3339 UTC time"));
    CHECK_THAT(error_of(edited(r, [](auto& o) { o["finished_at"] = "2024-04-30T00:00:00Z"; })),
               Contains("finished_at: is earlier than started_at"));
    CHECK_THAT(error_of(edited(r,
                               [](auto& o) {
                                 o["limitations"] = boost::json::array{"ok", 3};
                               })),
               Contains("limitations[1]: expected a string, got an integer"));
  }
  SECTION("an unknown or third-party claim id") {
    CHECK_THAT(error_of(edited(r, [](auto& o) { o["claim"] = "RL-FOO-01"; })),
               Contains("DIR/RL-IMPW-01.json: claim: unknown claim id \"RL-FOO-01\""));
    CHECK_THAT(error_of(edited(r, [](auto& o) { o["claim"] = "XC-SCRT-01"; })),
               Contains("claim: XC-SCRT-01 is proven only by third-party evidence"));
  }
  SECTION("a report that contradicts itself") {
    CHECK(error_of(edited(r, [](auto& o) { o["checks"].as_array()[1].as_object()["pass"] = false; })) ==
          "DIR/RL-IMPW-01.json: checks[1].pass: false, but status is PASS");
    CHECK_THAT(error_of(edited(r, [](auto& o) { o["checks"] = boost::json::array{}; })),
               Contains("checks: empty, but a PASS must rest on at least one check"));
    CHECK_THAT(error_of(edited(r, [](auto& o) { o["status"] = "SKIP"; })),
               Contains("skip_reason: missing or empty, but status is SKIP"));
    CHECK_THAT(error_of(edited(r, [](auto& o) { o["skip_reason"] = "no hardware"; })),
               Contains("skip_reason: is set, but status is PASS"));
  }
  SECTION("invalid JSON gives the position") {
    CHECK_THAT(error_of("{\n  \"schema\": \"edgerelay.evidence/v1\",\n  \"claim\": }"),
               Contains("DIR/RL-IMPW-01.json: invalid JSON at line 3, column 12"));
    CHECK_THAT(error_of("[1, 2]"), Contains("DIR/RL-IMPW-01.json: expected an object, got an array"));
  }
}

TEST_CASE("a soak report whose record is missing or lies about itself is malformed", "[evidence]") {
  util::manual_clock c(t0);
  const auto r = good("RL-SOAK-01", c);
  const std::string f = "DIR/RL-SOAK-01.json";
  REQUIRE(parse_report(text_of(r), f).has_value());
  auto soak_edit = [&](auto edit) {
    return error_of(edited(r, [&](auto& o) { edit(o["metrics"].as_object()["soak"].as_object()); }), f);
  };
  CHECK(error_of(edited(r, [](auto& o) { o["metrics"].as_object().erase("soak"); }), f) ==
        f + ": metrics.soak: missing (RL-SOAK-01 carries its soak record there)");
  CHECK(soak_edit([](auto& s) { s["gate_d"].as_object()["overall"] = false; }) ==
        f + ": metrics.soak.gate_d.overall: says false but the record gives true");
  CHECK(soak_edit([](auto& s) { s["clean_delivery_rate"] = 0.5; }) ==
        f + ": metrics.soak.clean_delivery_rate: says 0.5 but clean_rounds / rounds is 1");
  CHECK(soak_edit([](auto& s) { s["rounds"] = -3; }) ==
        f + ": metrics.soak.rounds: expected a non-negative integer, got an integer");
  CHECK(soak_edit([](auto& s) { s["latency_ms"].as_object().erase("p99"); }) ==
        f + ": metrics.soak.latency_ms.p99: missing");
  CHECK_THAT(soak_edit([](auto& s) { s["clock"] = "manual"; }), Contains("metrics.soak.gate_d.clock_ok: says true"));
  // DESIGN §8's gate_d has no clock_ok: such a record is read with the
  // computed value, and its overall must still be the computed one.
  auto design_shape =
      edited(r, [](auto& o) { o["metrics"].as_object()["soak"].as_object()["gate_d"].as_object().erase("clock_ok"); });
  auto read_back = parse_report(design_shape, f);
  INFO((read_back ? std::string() : read_back.error().to_string()));
  REQUIRE(read_back.has_value());
  CHECK(soak_of(*read_back)->clock == "wall");
  CHECK(soak_edit([](auto& s) {
          s["clock"] = "manual";
          s["gate_d"].as_object().erase("clock_ok");
        }) == f + ": metrics.soak.gate_d.overall: says true but the record gives false");
  // A record claiming a wall clock inside a manual-clock run.
  CHECK_THAT(error_of(edited(r, [](auto& o) { o["environment"].as_object()["clock"] = "manual"; }), f),
             Contains("metrics.soak.clock: \"wall\", but environment.clock is \"manual\""));
}

TEST_CASE("read_reports reads every report in a folder and refuses a malformed one, never skipping it", "[evidence]") {
  test::temp_dir d("evidence");
  util::manual_clock c(t0);
  REQUIRE(write_report(good("RL-IMPW-01", c), d / "RL-IMPW-01.json").has_value());
  REQUIRE(write_report(good("RL-DEAD-01", c), d / "RL-DEAD-01.json").has_value());
  std::ofstream(d / "notes.txt") << "not a report";
  std::ofstream(d / std::string(matrix_json_name)) << "{\"schema\": \"edgerelay.matrix/v1\"}";
  auto rs = read_reports(d.path());
  REQUIRE(rs.has_value());
  REQUIRE(rs->size() == 2);
  CHECK((*rs)[0].file == "RL-DEAD-01.json");
  CHECK((*rs)[1].file == "RL-IMPW-01.json");

  SECTION("a report under another claim's name") {
    REQUIRE(write_report(good("RL-IMPW-02", c), d / "RL-IMPW-03.json").has_value());
    auto bad = read_reports(d.path());
    REQUIRE_FALSE(bad.has_value());
    CHECK_THAT(bad.error().to_string(),
               Contains("RL-IMPW-03.json: claim: \"RL-IMPW-02\" does not match the file name"));
  }
  SECTION("a broken file") {
    std::ofstream(d / "RL-THRU-01.json") << "{\"schema\": ";
    auto bad = read_reports(d.path());
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().code == errc::malformed);
    CHECK_THAT(bad.error().to_string(), Contains((d / "RL-THRU-01.json").string() + ": invalid JSON"));
  }
  SECTION("a folder that does not exist") {
    auto bad = read_reports(d / "nope");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().code == errc::not_found);
  }
}

TEST_CASE("build_matrix refuses two reports for one claim and checks in-memory reports like files", "[evidence]") {
  util::manual_clock c(t0);
  auto a = good("RL-IMPW-01", c);
  std::vector<loaded_report> two{{"a.json", a}, {"b.json", a}};
  auto m = build_matrix(two);
  REQUIRE_FALSE(m.has_value());
  CHECK(m.error().to_string() == "b.json: claim: a second report for RL-IMPW-01 (the first is a.json)");

  auto lying = a;
  lying.checks[0].pass = false; // status still PASS
  auto m2 = build_matrix({{"RL-IMPW-01.json", lying}});
  REQUIRE_FALSE(m2.has_value());
  CHECK_THAT(m2.error().to_string(), Contains("checks[0].pass: false, but status is PASS"));
}

TEST_CASE("the matrix writers give a readable table and the documented JSON, the same bytes each time", "[evidence]") {
  test::temp_dir d("evidence");
  util::manual_clock c(t0);
  auto rs = full_campaign(c);
  rs[1].environment.network = "loopback"; // RL-IMPW-02: BETA
  std::erase_if(rs, [](const report& r) { return r.claim == "RL-CONN-01"; });
  auto m = matrix_of(rs);
  REQUIRE(write_matrix(m, d / "out").has_value());

  std::ifstream md_in(d / "out" / std::string(matrix_md_name));
  std::string md((std::istreambuf_iterator<char>(md_in)), {});
  CHECK_THAT(md, Contains("| RL-IMPW-01 | "));
  CHECK_THAT(md, Contains(" | Design partner | BETA | BETA_ONLY | RL-IMPW-02.json (PASS) |"));
  CHECK_THAT(md, Contains(" | Public production | DEFER | DEFER | none |"));
  CHECK_THAT(md, Contains("- measured on loopback only"));
  CHECK_THAT(md, Contains("### Design partner: READY"));
  CHECK_THAT(md, Contains("### GA: NOT READY"));
  CHECK_THAT(md, Contains("- RL-CONN-01 is DEFER: no report: RL-CONN-01.json is missing"));

  std::ifstream js_in(d / "out" / std::string(matrix_json_name));
  std::string js((std::istreambuf_iterator<char>(js_in)), {});
  auto v = boost::json::parse(js).as_object();
  CHECK(v.at("schema") == "edgerelay.matrix/v1");
  CHECK(v.at("campaign").at("reports") == 12);
  CHECK(v.at("campaign").at("within_window") == true);
  CHECK(v.at("campaign").at("earliest_started_at") == "2024-05-01T00:00:00.000Z");
  CHECK(v.at("campaign").at("limit_s") == 604800);
  auto& claims = v.at("claims").as_array();
  REQUIRE(claims.size() == claim_catalogue().size());
  auto& impw2 = claims[1].as_object();
  CHECK(impw2.at("claim") == "RL-IMPW-02");
  CHECK(impw2.at("state") == "BETA");
  CHECK(impw2.at("recommendation") == "BETA_ONLY");
  CHECK(impw2.at("evidence_file") == "RL-IMPW-02.json");
  CHECK(impw2.at("status") == "PASS");
  CHECK(impw2.at("required_from") == "design_partner");
  CHECK(impw2.at("limitations") == boost::json::array{"measured on loopback only"});
  for (auto& x : claims)
    if (x.at("claim") == "RL-CONN-01") {
      CHECK(x.at("evidence_file").is_null());
      CHECK(x.at("status").is_null());
    } else if (x.at("claim") == "RL-SOAK-01") {
      CHECK(x.at("gate_d").at("overall") == true);
    }
  auto& ready = v.at("readiness").as_object();
  CHECK(ready.at("design_partner").at("ready") == true);
  CHECK(ready.at("design_partner").at("disclosures").as_array().size() == 2);
  CHECK(ready.at("ga").at("ready") == false);
  CHECK(ready.at("public_production").at("ready") == false);
  CHECK(ready.at("public_production").at("blockers").as_array().size() == 3);

  REQUIRE(write_matrix(matrix_of(rs), d / "again").has_value());
  std::ifstream again_in(d / "again" / std::string(matrix_json_name));
  std::string again((std::istreambuf_iterator<char>(again_in)), {});
  CHECK(again == js);
}
