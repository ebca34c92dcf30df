#include "relay/evidence_run.hpp"

#include "relay/http_client.hpp"
#include "relay/scenarios/scenarios.hpp"
#include "util/errc.hpp"

#include <boost/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <unistd.h>

namespace edgerelay::relay {

namespace json = boost::json;
namespace fs = std::filesystem;

namespace scenarios {

std::span<const scenario_info> scenario_list() noexcept {
  static const scenario_info list[] = {
      {"RL-IMPW-01", "upstream outage: every segment dead-lettered after max_retry attempts, nothing lost",
       &upstream_outage},
      {"RL-IMPW-02", "bandwidth impairment 1 and 10 Mbit/s: delivery complete, throughput recorded",
       &bandwidth_impairment},
      {"RL-IMPW-03", "latency impairment 200 and 500 ms: delivery within dial and ack timeouts", &latency_impairment},
      {"RL-THRU-01", "throughput tiers T1-T5: zero loss, queue drains monotonically after the load", &throughput_tiers},
      {"RL-QMGM-01", "queue drain (200 x 64 B), LRU eviction accounting, status accuracy", &queue_management},
      {"RL-DEAD-01", "dead-letter: retry to delivery, retention, purge", &dead_letter},
      {"RL-BAND-01", "bandwidth modes unlimited, rate, quota, hot reload; daily quota reset", &bandwidth_modes},
      {"RL-MULT-01", "two peers: a dead peer neither delays nor loses the other's deliveries", &multi_peer},
      {"RL-CONN-01", "contested link: flapping, resets mid-batch, blackhole, high latency, no loss", &contested_link},
      {"RL-CRAS-01", "crash consistency: repeated kill -9 of the edge, then of the hub, under load", &crash_kill9},
      {"XC-CERT-01", "certificate rotation without downtime: detection within 2 s, continuity, revocation, audit",
       &cert_rotation},
      {"XC-CERT-02", "trust-chain rejection: missing, invalid chain, expired, revoked, wrong server name",
       &trust_chain},
  };
  return list;
}

} // namespace scenarios

namespace {

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return {};
  return buf;
}

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.string();
}

// Where the report was measured; the commit comes from EDGERELAY_COMMIT when
// the caller knows it (CI sets it from git).
void stamp(telemetry::report& r, const std::string& network) {
  r.environment.version = EDGERELAY_VERSION;
  if (const char* c = std::getenv("EDGERELAY_COMMIT")) r.environment.commit = c;
  r.environment.host = host_name();
  r.environment.network = network;
}

std::string valid_ids() {
  std::string s;
  for (auto& sc : scenarios::scenario_list())
    s += (s.empty() ? "" : ", ") + std::string(sc.claim);
  return s;
}

std::string brief(const json::value& v) {
  auto s = json::serialize(v);
  return s.size() > 120 ? s.substr(0, 117) + "..." : s;
}

} // namespace

int cmd_evidence_run(const evidence_run_options& o) {
  std::vector<const scenarios::scenario_info*> chosen;
  for (auto& id : o.claims) {
    const scenarios::scenario_info* found = nullptr;
    for (auto& sc : scenarios::scenario_list())
      if (sc.claim == id) found = &sc;
    if (!found) {
      if (id == "RL-SOAK-01")
        std::cerr << "edgerelay evidence run: RL-SOAK-01 is not a scenario: it comes from a node's canary soak "
                     "(edgerelay evidence export --admin URL --out DIR)\n";
      else if (telemetry::find_claim(id))
        std::cerr << "edgerelay evidence run: " << id << " has no built-in scenario\n";
      else
        std::cerr << "edgerelay evidence run: unknown claim id \"" << id << "\"\n";
      std::cerr << "valid claim ids: " << valid_ids() << "\n";
      return 2;
    }
    bool dup = false;
    for (auto* c : chosen)
      dup = dup || c == found;
    if (!dup) chosen.push_back(found);
  }
  if (o.claims.empty())
    for (auto& sc : scenarios::scenario_list())
      chosen.push_back(&sc);
  // Run in catalogue order whatever the order on the command line.
  std::stable_sort(chosen.begin(), chosen.end(), [](auto* a, auto* b) { return a < b; });

  // Absolute: the generated configs name their data, spool and PKI paths,
  // and a node resolves relative ones against its config file's folder.
  std::error_code ec;
  const fs::path out = fs::absolute(o.out, ec).lexically_normal();
  fs::create_directories(out, ec);
  if (ec) {
    std::cerr << "edgerelay evidence run: cannot create " << out.string() << ": " << ec.message() << "\n";
    return 1;
  }
  const fs::path work = out / ".work";
  fs::remove_all(work, ec);
  fs::create_directories(work, ec);
  auto& clock = util::system_clock_source::instance();
  scenarios::context base;
  base.exe = self_exe();
  base.quick = o.quick;
  base.clock = &clock;
  if (base.exe.empty()) {
    std::cerr << "edgerelay evidence run: cannot find the running binary (/proc/self/exe)\n";
    return 1;
  }
  transport::pki_options po;
  po.overwrite = true;
  auto pki = transport::pki_init(work / "pki", po);
  if (!pki) {
    std::cerr << "edgerelay evidence run: dev PKI: " << pki.error().message << "\n";
    return 1;
  }
  base.pki = *pki;

  std::cout << "edgerelay evidence run: " << chosen.size() << " scenario" << (chosen.size() == 1 ? "" : "s") << ", "
            << (o.quick ? "quick" : "full") << " sizes, real processes on loopback, reports in " << out.string()
            << std::endl;
  const auto t_all = std::chrono::steady_clock::now();
  int passed = 0, failed = 0, skipped = 0;
  bool write_failed = false;
  for (std::size_t i = 0; i < chosen.size(); ++i) {
    auto& sc = *chosen[i];
    const std::string claim(sc.claim);
    std::cout << "[" << (i + 1) << "/" << chosen.size() << "] " << claim << " " << sc.title << " ..." << std::flush;
    scenarios::context ctx = base;
    ctx.work = work / claim;
    fs::create_directories(ctx.work, ec);
    telemetry::report r{claim, std::string(sc.title), clock};
    stamp(r, "loopback");
    r.parameters["size"] = o.quick ? "quick" : "full";
    const auto t0 = std::chrono::steady_clock::now();
    try {
      sc.run(ctx, r);
    } catch (const std::exception& e) {
      r.check("scenario ran to completion", true, e.what(), false);
    }
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    r.metrics["scenario_seconds"] = took;
    r.finish(clock);
    const auto file = out / (claim + ".json");
    if (auto w = telemetry::write_report(r, file); !w) {
      std::cout << " cannot write the report: " << w.error().to_string() << std::endl;
      write_failed = true;
      continue;
    }
    std::ostringstream line;
    line << " " << telemetry::to_string(r.status) << " in " << std::fixed << std::setprecision(1) << took << " s";
    if (r.status == telemetry::report_status::skip) {
      ++skipped;
      line << " (" << r.skip_reason << ")";
    } else {
      std::size_t bad = 0;
      const telemetry::check_result* first = nullptr;
      for (auto& c : r.checks)
        if (!c.pass && ++bad == 1) first = &c;
      line << ", " << r.checks.size() - bad << "/" << r.checks.size() << " checks";
      if (first)
        line << "; first failed: \"" << first->name << "\" expected " << brief(first->expected) << ", observed "
             << brief(first->observed);
      if (r.status == telemetry::report_status::pass)
        ++passed;
      else
        ++failed;
    }
    if (r.status == telemetry::report_status::fail)
      line << "; logs kept in " << ctx.work.string();
    else
      fs::remove_all(ctx.work, ec);
    std::cout << line.str() << std::endl;
  }
  const double all_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_all).count();
  if (failed == 0 && !write_failed) fs::remove_all(work, ec);
  std::cout << "edgerelay evidence run: " << passed << " PASS, " << failed << " FAIL, " << skipped << " SKIP in "
            << std::fixed << std::setprecision(1) << all_s << " s" << std::endl;
  return failed > 0 || write_failed ? 1 : 0;
}

// ------------------------------------------------------------ export

telemetry::evidence_result<telemetry::report> soak_report(std::string_view body, const std::string& source,
                                                          const std::string& network, util::clock& clock) {
  auto bad = [&](std::string field, std::string problem) {
    return telemetry::evidence_error{make_error_code(errc::malformed), source, std::move(field), std::move(problem)};
  };
  boost::system::error_code ec;
  auto v = json::parse(body, ec);
  if (ec) return bad("", "not JSON: " + ec.message());
  if (!v.is_object()) return bad("", "expected a JSON object");
  auto doc = v.as_object();
  // The node's answer carries five keys beyond the evidence model's soak
  // record (docs/soak.md, "GET /v1/evidence/soak"); everything else must be
  // exactly the model. "enabled" false means there is no record at all.
  if (auto* e = doc.if_contains("enabled")) {
    if (!e->is_bool()) return bad("enabled", "expected true or false");
    if (!e->as_bool())
      return bad("enabled", "false: this node runs no canary soak ([evidence] canary_interval = \"0s\"), so there is "
                            "no soak record to export; export from a node that sends canaries");
  }
  json::value verifier;
  if (auto* w = doc.if_contains("verifier")) {
    if (!w->is_object()) return bad("verifier", "expected an object");
    verifier = *w;
  }
  doc.erase("enabled");
  doc.erase("verifier");
  std::optional<std::chrono::system_clock::time_point> started, updated;
  json::value interval;
  for (const char* k : {"started_at", "updated_at"})
    if (auto* t = doc.if_contains(k)) {
      if (!t->is_string()) return bad(k, "expected an RFC 3339 string");
      auto tp = telemetry::parse_rfc3339(t->as_string());
      if (!tp) return bad(k, "not an RFC 3339 UTC time");
      (std::string_view(k) == "started_at" ? started : updated) = tp;
    }
  if (auto* i = doc.if_contains("interval_s")) interval = *i;
  doc.erase("started_at");
  doc.erase("updated_at");
  doc.erase("interval_s");
  auto rec = telemetry::parse_soak(doc, source, "");
  if (!rec) return rec.error();

  telemetry::report r{"RL-SOAK-01", "canary soak (Gate D): rounds >= 1440, clean_delivery_rate >= 0.990, loss = 0",
                      clock};
  stamp(r, network);
  r.environment.clock = rec->clock;
  if (started) r.started_at = *started;
  r.parameters["source"] = source;
  if (!interval.is_null()) r.parameters["canary_interval_s"] = interval;
  r.soak(*rec);
  // What this node's verifier counted of the canaries it received from other
  // nodes: context, not part of Gate D.
  if (!verifier.is_null()) r.metrics["verifier"] = verifier;
  const auto g = telemetry::gate_d(*rec);
  r.check("rounds", json::object{{"at_least", telemetry::gate_d_min_rounds}}, rec->rounds, g.rounds_ok);
  r.check("clean_delivery_rate", json::object{{"at_least", telemetry::gate_d_min_clean_delivery_rate}},
          rec->clean_delivery_rate(), g.rate_ok);
  r.check("loss", 0, rec->loss, g.loss_ok);
  r.check("clock", "wall", json::string_view(rec->clock), g.clock_ok);
  if (!g.overall && rec->clock != "wall")
    r.limitation("the soak ran (at least partly) on a manual clock: it can never satisfy Gate D");
  r.finish(clock);
  if (updated && *updated >= r.started_at) r.finished_at = *updated;
  if (r.finished_at < r.started_at) r.finished_at = r.started_at;
  return r;
}

int cmd_evidence_export(const std::string& admin, const std::string& out, const std::string& network) {
  fs::path file = out;
  std::error_code ec;
  if (fs::is_directory(file, ec) || (!out.empty() && out.back() == '/')) file /= "RL-SOAK-01.json";
  if (file.filename() != "RL-SOAK-01.json") {
    std::cerr << "edgerelay evidence export: --out must be a folder or a file named RL-SOAK-01.json (the matrix "
                 "reads a claim's report only under that name), got "
              << out << "\n";
    return 2;
  }
  std::string base = admin;
  while (!base.empty() && base.back() == '/')
    base.pop_back();
  const std::string url = base + "/v1/evidence/soak";
  auto reply = http_call("GET", url, {}, std::chrono::seconds(30));
  if (!reply) {
    const auto& why = reply.error().message; // most failures already name the request
    std::cerr << "edgerelay evidence export: " << (why.starts_with("GET ") ? std::string() : "GET " + url + ": ") << why
              << "\n";
    return 1;
  }
  if (reply->status != 200) {
    std::cerr << "edgerelay evidence export: GET " << url << ": HTTP " << reply->status << ": " << reply->body << "\n";
    return 1;
  }
  auto r = soak_report(reply->body, url, network, util::system_clock_source::instance());
  if (!r) {
    std::cerr << "edgerelay evidence export: " << r.error().to_string() << "\n";
    return 1;
  }
  if (file.has_parent_path()) fs::create_directories(file.parent_path(), ec);
  if (auto w = telemetry::write_report(*r, file); !w) {
    std::cerr << "edgerelay evidence export: " << w.error().to_string() << "\n";
    return 1;
  }
  const auto rec = telemetry::soak_of(*r);
  std::cout << "wrote " << file.string() << ": RL-SOAK-01 " << telemetry::to_string(r->status);
  if (rec)
    std::cout << " (rounds " << rec->rounds << ", clean_delivery_rate " << rec->clean_delivery_rate() << ", loss "
              << rec->loss << ", clock " << rec->clock << ")";
  std::cout << "\n";
  return 0;
}

} // namespace edgerelay::relay
