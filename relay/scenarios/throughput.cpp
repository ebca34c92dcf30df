// RL-THRU-01: runs `edgerelay bench tiers` (the throughput-tier driver) as a
// child process and maps its JSON into checks. Without that subcommand in
// this binary the report is a SKIP saying so.

#include "relay/scenarios/scenarios.hpp"

#include <boost/json.hpp>

#include <fstream>
#include <sstream>

namespace edgerelay::relay::scenarios {

namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

// The child's output on one line, its lines joined with " / ".
std::string one_line(const std::string& s) {
  std::string out, line;
  std::istringstream in(s);
  while (std::getline(in, line))
    if (!line.empty()) out += (out.empty() ? "" : " / ") + line;
  return out.size() > 300 ? out.substr(0, 297) + "..." : out;
}

bool is_number(const json::object& o, const char* k) { return o.contains(k) && o.at(k).is_number(); }

} // namespace

void throughput_tiers(context& ctx, telemetry::report& r) {
  auto out = ctx.work / "tiers.json";
  std::vector<std::string> args = {ctx.exe, "bench", "tiers"};
  if (ctx.quick) args.push_back("--quick");
  args.insert(args.end(), {"--out", out.string()});
  std::string command = "edgerelay bench tiers" + std::string(ctx.quick ? " --quick" : "") + " --out FILE";
  r.parameters["command"] = command;
  child bench(args, ctx.work / "bench.log");
  const auto limit = ctx.quick ? std::chrono::minutes(3) : std::chrono::minutes(60);
  const int code = bench.wait(limit);
  const std::string log = bench.log_text();
  if (code == 2 && !std::filesystem::exists(out)) {
    r.skip("this edgerelay has no `bench tiers` subcommand: `" + command +
           "` is a usage error (exit 2: " + one_line(log) + ")");
    return;
  }
  r.check("bench tiers exited 0", 0, code, code == 0);
  if (code != 0) {
    r.metrics["bench_output_tail"] = log.size() > 2000 ? log.substr(log.size() - 2000) : log;
    return;
  }
  std::ifstream in(out);
  std::stringstream ss;
  ss << in.rdbuf();
  tier_checks(ss.str(), r, ctx.quick);
}

void tier_checks(std::string_view document, telemetry::report& r, bool quick) {
  boost::system::error_code ec;
  auto doc = json::parse(document, ec);
  const bool shaped =
      !ec && doc.is_object() && doc.as_object().contains("tiers") && doc.as_object().at("tiers").is_array();
  r.check("bench tiers wrote its JSON document", "an object with a tiers array",
          ec ? json::value(ec.message()) : json::value(shaped ? "ok" : "unexpected shape"), shaped);
  if (!shaped) return;
  auto& o = doc.as_object();
  if (auto* m = o.if_contains("machine")) r.parameters["machine"] = *m;
  if (auto* c = o.if_contains("commit")) r.parameters["commit"] = *c;
  auto& tiers = o.at("tiers").as_array();
  const std::size_t want = quick ? 1 : 5;
  r.check("tiers measured", json::object{{"at_least", want}}, tiers.size(), tiers.size() >= want);
  json::array names;
  for (auto& tv : tiers) {
    if (!tv.is_object()) {
      r.check("tier entry is an object", true, false, false);
      continue;
    }
    auto& t = tv.as_object();
    std::string name = t.contains("tier") && t.at("tier").is_string() ? std::string(t.at("tier").as_string()) : "?";
    names.push_back(json::value(name));
    const bool complete = is_number(t, "segments_per_s") && is_number(t, "mb_per_s") && is_number(t, "p99_ms");
    r.check(name + ": throughput and latency recorded", true, complete, complete);
    auto* loss = t.if_contains("loss");
    r.check(name + ": loss", 0, loss ? *loss : json::value(nullptr),
            loss && loss->is_number() && loss->to_number<double>() == 0);
    auto* dup = t.if_contains("duplicates");
    r.check(name + ": duplicates", 0, dup ? *dup : json::value(nullptr),
            dup && dup->is_number() && dup->to_number<double>() == 0);
    auto* mono = t.if_contains("monotonic_drain");
    r.check(name + ": queue drained monotonically after the load", true, mono ? *mono : json::value(nullptr),
            mono && mono->is_bool() && mono->as_bool());
  }
  if (!quick) {
    const bool all5 = names == json::array{"T1", "T2", "T3", "T4", "T5"};
    r.check("tiers T1-T5 measured", json::array{"T1", "T2", "T3", "T4", "T5"}, names, all5);
  }
  r.metrics["tiers"] = tiers;
  if (quick) r.limitation("bench tiers --quick: shortened tiers, not the full T1-T5 run");
  r.limitation("producer, relay and sink on one host over loopback");
}

} // namespace edgerelay::relay::scenarios
