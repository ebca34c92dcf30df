#include "telemetry/evidence.hpp"

#include "util/errc.hpp"
#include "util/text.hpp"
#include "util/units.hpp"

#include <boost/json/serialize.hpp>
#include <boost/json/stream_parser.hpp>
#include <boost/throw_exception.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <stdexcept>
#include <system_error>

namespace edgerelay::telemetry {

namespace json = boost::json;
using sys_time = std::chrono::system_clock::time_point;

// ---------------------------------------------------------------- errors

std::string evidence_error::to_string() const {
  return field.empty() ? file + ": " + problem : file + ": " + field + ": " + problem;
}

void throw_exception_from_error(const evidence_error& e, const boost::source_location& loc) {
  boost::throw_with_location(std::invalid_argument(e.to_string()), loc);
}

namespace {

evidence_error malformed(std::string file, std::string field, std::string problem) {
  return {make_error_code(errc::malformed), std::move(file), std::move(field), std::move(problem)};
}

evidence_error io_error(std::string file, const std::error_code& ec, const std::string& what) {
  return {boost::system::error_code(ec.value(), boost::system::generic_category()), std::move(file), "",
          what + ": " + ec.message()};
}

std::string text_of(const json::value& v) { return json::serialize(v); }

std::string number_text(double d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.10g", d);
  return buf;
}

std::string kind_of(const json::value& v) {
  switch (v.kind()) {
  case json::kind::null: return "null";
  case json::kind::bool_: return "a boolean";
  case json::kind::int64:
  case json::kind::uint64: return "an integer";
  case json::kind::double_: return "a number";
  case json::kind::string: return "a string";
  case json::kind::array: return "an array";
  case json::kind::object: return "an object";
  }
  return "a value";
}

} // namespace

// ---------------------------------------------------------------- time

std::optional<sys_time> parse_rfc3339(std::string_view s) {
  using namespace std::chrono;
  auto digits = [&](std::size_t pos, std::size_t n) -> std::optional<int> {
    if (pos + n > s.size()) return std::nullopt;
    int v = 0;
    for (std::size_t i = pos; i < pos + n; ++i) {
      if (s[i] < '0' || s[i] > '9') return std::nullopt;
      v = v * 10 + (s[i] - '0');
    }
    return v;
  };
  // YYYY-MM-DDTHH:MM:SS = 19 characters
  if (s.size() < 20 || s[4] != '-' || s[7] != '-' || (s[10] != 'T' && s[10] != 't') || s[13] != ':' || s[16] != ':')
    return std::nullopt;
  auto y = digits(0, 4), mo = digits(5, 2), d = digits(8, 2), h = digits(11, 2), mi = digits(14, 2),
       sec = digits(17, 2);
  if (!y || !mo || !d || !h || !mi || !sec) return std::nullopt;
  if (*h > 23 || *mi > 59 || *sec > 59) return std::nullopt;
  const year_month_day ymd{year{*y}, month{static_cast<unsigned>(*mo)}, day{static_cast<unsigned>(*d)}};
  if (!ymd.ok()) return std::nullopt;
  std::size_t pos = 19;
  nanoseconds frac{0};
  if (s[pos] == '.') {
    ++pos;
    std::size_t start = pos;
    std::int64_t ns = 0;
    while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9' && pos - start < 9)
      ns = ns * 10 + (s[pos++] - '0');
    const std::size_t n = pos - start;
    if (n == 0) return std::nullopt;
    for (std::size_t i = n; i < 9; ++i)
      ns *= 10;
    frac = nanoseconds{ns};
  }
  if (pos + 1 != s.size() || (s[pos] != 'Z' && s[pos] != 'z')) return std::nullopt;
  const auto t = sys_days{ymd} + hours{*h} + minutes{*mi} + seconds{*sec} + frac;
  return time_point_cast<system_clock::duration>(t);
}

// ---------------------------------------------------------------- enums

const char* to_string(report_status s) noexcept {
  switch (s) {
  case report_status::pass: return "PASS";
  case report_status::fail: return "FAIL";
  case report_status::skip: return "SKIP";
  }
  return "?";
}

const char* to_string(readiness_level l) noexcept {
  switch (l) {
  case readiness_level::design_partner: return "design_partner";
  case readiness_level::ga: return "ga";
  case readiness_level::public_production: return "public_production";
  }
  return "?";
}

const char* to_string(claim_state s) noexcept {
  switch (s) {
  case claim_state::validated: return "VALIDATED";
  case claim_state::beta: return "BETA";
  case claim_state::not_started: return "NOT_STARTED";
  case claim_state::defer: return "DEFER";
  case claim_state::future_required: return "FUTURE_REQUIRED";
  }
  return "?";
}

const char* to_string(recommendation r) noexcept {
  switch (r) {
  case recommendation::ok_design_partner: return "OK_DESIGN_PARTNER";
  case recommendation::beta_only: return "BETA_ONLY";
  case recommendation::not_started: return "NOT_STARTED";
  case recommendation::defer: return "DEFER";
  case recommendation::future_required: return "FUTURE_REQUIRED";
  }
  return "?";
}

namespace {
const char* level_title(readiness_level l) {
  switch (l) {
  case readiness_level::design_partner: return "Design partner";
  case readiness_level::ga: return "GA";
  case readiness_level::public_production: return "Public production";
  }
  return "?";
}
} // namespace

// ---------------------------------------------------------------- catalogue

namespace {
using rl = readiness_level;
constexpr claim_info catalogue[] = {
    {"RL-IMPW-01",
     "Upstream outage: every segment reaches the dead-letter store after max_retry attempts, nothing lost",
     rl::design_partner},
    {"RL-IMPW-02", "Bandwidth impairment (1 and 10 Mbit/s): delivery complete, throughput recorded",
     rl::design_partner},
    {"RL-IMPW-03", "Latency impairment (200 and 500 ms): delivery within dial and ack timeouts", rl::design_partner},
    {"RL-THRU-01", "Throughput tiers T1-T5 (64 B to 1 MiB): zero loss, queue drains monotonically after the load",
     rl::design_partner},
    {"RL-QMGM-01", "Queue drain (200 x 64 B), LRU eviction accounting, status accuracy", rl::design_partner},
    {"RL-DEAD-01", "Dead-letter: retry to delivery, retention, purge", rl::design_partner},
    {"RL-BAND-01", "Bandwidth modes unlimited, rate, quota, hot reload; daily quota reset", rl::design_partner},
    {"RL-MULT-01", "Two or more peers: a dead peer does not delay or lose the other's deliveries", rl::ga},
    {"RL-CONN-01", "Contested link: flapping connection, resets mid-batch, blackholes, high latency, no loss",
     rl::public_production},
    {"RL-CRAS-01", "Crash consistency: repeated kill -9 under load, then power-loss crash states",
     rl::public_production},
    {"RL-SOAK-01", "Canary soak (Gate D): rounds >= 1440, clean_delivery_rate >= 0.990, loss = 0, wall clock", rl::ga},
    {"XC-CERT-01", "Certificate rotation without downtime: detection, continuity, audit", rl::design_partner},
    {"XC-CERT-02", "Trust-chain rejection: missing, invalid chain, expired, revoked, wrong server", rl::design_partner},
    {"XC-SCRT-01", "External security audit and penetration test of the mTLS trust-chain boundaries",
     rl::public_production, true},
};
constexpr std::string_view soak_claim = "RL-SOAK-01";
} // namespace

std::span<const claim_info> claim_catalogue() noexcept { return catalogue; }

const claim_info* find_claim(std::string_view id) noexcept {
  for (const auto& c : catalogue)
    if (c.id == id) return &c;
  return nullptr;
}

// ---------------------------------------------------------------- soak

double soak_record::clean_delivery_rate() const noexcept {
  return rounds == 0 ? 0.0 : static_cast<double>(clean_rounds) / static_cast<double>(rounds);
}

gate_d_result gate_d(const soak_record& s) noexcept {
  gate_d_result g;
  g.rounds_ok = s.rounds >= gate_d_min_rounds;
  // clean/rounds >= 0.990 in integers (exact at the boundary) while they cannot overflow.
  if (s.rounds == 0)
    g.rate_ok = false;
  else if (s.rounds < (std::uint64_t{1} << 50))
    g.rate_ok = s.clean_rounds * 1000 >= s.rounds * 990;
  else
    g.rate_ok = s.clean_delivery_rate() >= gate_d_min_clean_delivery_rate;
  g.loss_ok = s.loss == 0;
  g.clock_ok = s.clock == "wall";
  g.overall = g.rounds_ok && g.rate_ok && g.loss_ok && g.clock_ok;
  return g;
}

json::object to_json(const soak_record& s) {
  const auto g = gate_d(s);
  return json::object{
      {"rounds", s.rounds},
      {"clean_rounds", s.clean_rounds},
      {"clean_delivery_rate", s.clean_delivery_rate()},
      {"segments_sent", s.segments_sent},
      {"segments_delivered", s.segments_delivered},
      {"loss", s.loss},
      {"duplicates", s.duplicates},
      {"latency_ms",
       json::object{
           {"p50", s.latency.p50_ms}, {"p90", s.latency.p90_ms}, {"p99", s.latency.p99_ms}, {"max", s.latency.max_ms}}},
      {"max_queue_depth", s.max_queue_depth},
      {"rss_start_bytes", s.rss_start_bytes},
      {"rss_max_bytes", s.rss_max_bytes},
      {"restarts", s.restarts},
      {"clock", s.clock},
      {"gate_d", json::object{{"rounds_ok", g.rounds_ok},
                              {"rate_ok", g.rate_ok},
                              {"loss_ok", g.loss_ok},
                              {"clock_ok", g.clock_ok},
                              {"overall", g.overall}}},
  };
}

// ---------------------------------------------------------------- strict reading

namespace {

// The first problem found while reading one file.
struct read_state {
  const std::string& file;
  std::optional<evidence_error> err;
  void fail(std::string field, std::string problem) {
    if (!err) err = malformed(file, std::move(field), std::move(problem));
  }
};

// One JSON object being read: every key read is remembered so that done()
// can refuse the rest.
class object_reader {
public:
  object_reader(read_state& st, const json::value* v, std::string path) : st_(st), path_(std::move(path)) {
    if (!v) return; // the parent already reported the missing key
    if (v->is_object())
      o_ = &v->as_object();
    else
      st_.fail(path_, "expected an object, got " + kind_of(*v));
  }

  bool valid() const { return o_ != nullptr; }
  std::string field(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }

  const json::value* get(std::string_view key, bool required) {
    known_.push_back(key);
    if (!o_) return nullptr;
    const auto* v = o_->if_contains(key);
    if (!v && required) st_.fail(field(key), "missing");
    return v;
  }

  std::optional<std::string> string(std::string_view key, bool required = true) {
    const auto* v = get(key, required);
    if (!v) return std::nullopt;
    if (!v->is_string()) return wrong(key, "a string", *v);
    return std::string(v->as_string());
  }
  std::optional<bool> boolean(std::string_view key, bool required = true) {
    const auto* v = get(key, required);
    if (!v) return std::nullopt;
    if (!v->is_bool()) return wrong(key, "a boolean", *v);
    return v->as_bool();
  }
  std::optional<std::uint64_t> count(std::string_view key) {
    const auto* v = get(key, true);
    if (!v) return std::nullopt;
    if (v->is_uint64()) return v->as_uint64();
    if (v->is_int64() && v->as_int64() >= 0) return static_cast<std::uint64_t>(v->as_int64());
    return wrong(key, "a non-negative integer", *v);
  }
  std::optional<std::int64_t> integer(std::string_view key) {
    const auto* v = get(key, true);
    if (!v) return std::nullopt;
    if (v->is_int64()) return v->as_int64();
    if (v->is_uint64() && v->as_uint64() <= static_cast<std::uint64_t>(INT64_MAX))
      return static_cast<std::int64_t>(v->as_uint64());
    return wrong(key, "an integer", *v);
  }
  std::optional<double> number(std::string_view key) {
    const auto* v = get(key, true);
    if (!v) return std::nullopt;
    if (!v->is_number()) return wrong(key, "a number", *v);
    return v->to_number<double>();
  }
  std::optional<sys_time> time(std::string_view key) {
    auto s = string(key);
    if (!s) return std::nullopt;
    auto t = parse_rfc3339(*s);
    if (!t) st_.fail(field(key), util::quote(*s) + " is not an RFC 3339 UTC time (like 2024-05-01T12:00:00Z)");
    return t;
  }

  void done() {
    if (!o_) return;
    for (const auto& kv : *o_)
      if (std::find(known_.begin(), known_.end(), kv.key()) == known_.end()) st_.fail(field(kv.key()), "unknown key");
  }

private:
  std::nullopt_t wrong(std::string_view key, const char* want, const json::value& got) {
    st_.fail(field(key), std::string("expected ") + want + ", got " + kind_of(got));
    return std::nullopt;
  }

  read_state& st_;
  std::string path_;
  const json::object* o_ = nullptr;
  std::vector<std::string_view> known_;
};

std::optional<soak_record> read_soak(read_state& st, const json::value& v, const std::string& path) {
  object_reader o(st, &v, path);
  soak_record s;
  auto rounds = o.count("rounds");
  auto clean = o.count("clean_rounds");
  auto rate = o.number("clean_delivery_rate");
  auto sent = o.count("segments_sent");
  auto delivered = o.count("segments_delivered");
  auto loss = o.integer("loss");
  auto dups = o.count("duplicates");
  object_reader lat(st, o.get("latency_ms", true), o.field("latency_ms"));
  auto p50 = lat.number("p50"), p90 = lat.number("p90"), p99 = lat.number("p99"), pmax = lat.number("max");
  lat.done();
  auto depth = o.count("max_queue_depth");
  auto rss0 = o.count("rss_start_bytes");
  auto rss1 = o.count("rss_max_bytes");
  auto restarts = o.count("restarts");
  auto clock = o.string("clock");
  object_reader g(st, o.get("gate_d", true), o.field("gate_d"));
  auto rounds_ok = g.boolean("rounds_ok"), rate_ok = g.boolean("rate_ok"), loss_ok = g.boolean("loss_ok"),
       overall = g.boolean("overall");
  // clock_ok is this project's addition to DESIGN §8's three flags: a record
  // written without it (DESIGN's shape) is read with the computed value.
  auto clock_ok = g.boolean("clock_ok", false);
  g.done();
  o.done();
  if (st.err) return std::nullopt;
  s.rounds = *rounds;
  s.clean_rounds = *clean;
  s.segments_sent = *sent;
  s.segments_delivered = *delivered;
  s.loss = *loss;
  s.duplicates = *dups;
  s.latency = {*p50, *p90, *p99, *pmax};
  s.max_queue_depth = *depth;
  s.rss_start_bytes = *rss0;
  s.rss_max_bytes = *rss1;
  s.restarts = *restarts;
  s.clock = *clock;
  if (s.clock != "wall" && s.clock != "manual")
    st.fail(o.field("clock"), "expected \"wall\" or \"manual\", got " + util::quote(s.clock));
  if (s.clean_rounds > s.rounds)
    st.fail(o.field("clean_rounds"),
            std::to_string(s.clean_rounds) + " is more than rounds (" + std::to_string(s.rounds) + ")");
  if (std::abs(*rate - s.clean_delivery_rate()) > 1e-9)
    st.fail(o.field("clean_delivery_rate"),
            "says " + number_text(*rate) + " but clean_rounds / rounds is " + number_text(s.clean_delivery_rate()));
  const auto want = gate_d(s);
  const std::pair<const char*, std::pair<bool, bool>> flags[] = {
      {"rounds_ok", {*rounds_ok, want.rounds_ok}}, {"rate_ok", {*rate_ok, want.rate_ok}},
      {"loss_ok", {*loss_ok, want.loss_ok}},       {"clock_ok", {clock_ok.value_or(want.clock_ok), want.clock_ok}},
      {"overall", {*overall, want.overall}},
  };
  for (const auto& [name, said_want] : flags)
    if (said_want.first != said_want.second)
      st.fail(g.field(name), std::string("says ") + (said_want.first ? "true" : "false") + " but the record gives " +
                                 (said_want.second ? "true" : "false"));
  if (st.err) return std::nullopt;
  return s;
}

} // namespace

evidence_result<soak_record> parse_soak(const json::value& v, const std::string& file, const std::string& field) {
  read_state st{file, std::nullopt};
  auto s = read_soak(st, v, field);
  if (st.err) return *st.err;
  return *s;
}

std::optional<soak_record> soak_of(const report& r) {
  const auto* v = r.metrics.if_contains("soak");
  if (!v) return std::nullopt;
  auto s = parse_soak(*v, r.claim, "metrics.soak");
  if (!s) return std::nullopt;
  return *s;
}

// ---------------------------------------------------------------- the report

report::report(std::string claim_id, std::string title_text, util::clock& c)
    : claim(std::move(claim_id)), title(std::move(title_text)),
      started_at(std::chrono::floor<std::chrono::milliseconds>(c.system_now())) {
  environment.clock = c.kind();
}

report& report::check(std::string name, json::value expected, json::value observed, bool pass) {
  checks.push_back({std::move(name), std::move(expected), std::move(observed), pass});
  return *this;
}

report& report::check_equal(std::string name, json::value expected, json::value observed) {
  const bool same = expected == observed;
  return check(std::move(name), std::move(expected), std::move(observed), same);
}

report& report::limitation(std::string text) {
  limitations.push_back(std::move(text));
  return *this;
}

report& report::skip(std::string reason) {
  skip_reason = reason.empty() ? std::string("no reason given") : std::move(reason);
  return *this;
}

report& report::soak(const soak_record& s) {
  metrics["soak"] = to_json(s);
  return *this;
}

void report::finish(util::clock& c) {
  const sys_time now = std::chrono::floor<std::chrono::milliseconds>(c.system_now());
  finished_at = std::max(started_at, now);
  if (!skip_reason.empty())
    status = report_status::skip;
  else if (checks.empty() || std::any_of(checks.begin(), checks.end(), [](const auto& k) { return !k.pass; }))
    status = report_status::fail;
  else
    status = report_status::pass;
}

json::object to_json(const report& r) {
  json::array checks;
  for (const auto& c : r.checks)
    checks.push_back(
        json::object{{"name", c.name}, {"expected", c.expected}, {"observed", c.observed}, {"pass", c.pass}});
  json::array limitations;
  for (const auto& l : r.limitations)
    limitations.push_back(json::value(l));
  return json::object{
      {"schema", report_schema},
      {"claim", r.claim},
      {"title", r.title},
      {"status", to_string(r.status)},
      {"started_at", util::format_utc(r.started_at)},
      {"finished_at", util::format_utc(r.finished_at)},
      {"environment", json::object{{"version", r.environment.version},
                                   {"commit", r.environment.commit},
                                   {"host", r.environment.host},
                                   {"clock", r.environment.clock},
                                   {"network", r.environment.network}}},
      {"parameters", r.parameters},
      {"checks", std::move(checks)},
      {"metrics", r.metrics},
      {"limitations", std::move(limitations)},
      {"skip_reason", r.skip_reason},
  };
}

namespace {

// Writes `text` to `file` through `file.tmp` and a rename, so a reader never sees half a file.
evidence_result<void> write_file(const std::filesystem::path& file, const std::string& text) {
  auto tmp = file;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return io_error(file.string(), std::make_error_code(std::errc::io_error), "cannot write " + tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, file, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return io_error(file.string(), ec, "cannot rename " + tmp.string());
  }
  return {};
}

std::string pretty(const json::value& v, int indent = 0) {
  // Two-space indented JSON, one key per line: reports and matrices are read by people too.
  const std::string pad(static_cast<std::size_t>(indent), ' ');
  const std::string inner(static_cast<std::size_t>(indent + 2), ' ');
  if (v.is_object() && !v.as_object().empty()) {
    std::string s = "{\n";
    bool first = true;
    for (const auto& kv : v.as_object()) {
      if (!first) s += ",\n";
      first = false;
      s += inner + json::serialize(json::value(kv.key())) + ": " + pretty(kv.value(), indent + 2);
    }
    return s + "\n" + pad + "}";
  }
  if (v.is_array() && !v.as_array().empty()) {
    std::string s = "[\n";
    bool first = true;
    for (const auto& e : v.as_array()) {
      if (!first) s += ",\n";
      first = false;
      s += inner + pretty(e, indent + 2);
    }
    return s + "\n" + pad + "]";
  }
  return json::serialize(v);
}

} // namespace

evidence_result<void> write_report(const report& r, const std::filesystem::path& file) {
  return write_file(file, pretty(to_json(r)) + "\n");
}

evidence_result<report> parse_report(std::string_view text, const std::string& file) {
  json::stream_parser p;
  boost::system::error_code ec;
  const std::size_t used = p.write(text.data(), text.size(), ec);
  if (!ec) p.finish(ec);
  if (ec) {
    const std::size_t at = std::min(used, text.size());
    const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(at), '\n');
    const auto nl = text.rfind('\n', at == 0 ? 0 : at - 1);
    const auto col = nl == std::string_view::npos || at == 0 ? at + 1 : at - nl;
    return malformed(file, "",
                     "invalid JSON at line " + std::to_string(line) + ", column " + std::to_string(col) + ": " +
                         ec.message());
  }
  const json::value root = p.release();
  read_state st{file, std::nullopt};
  object_reader o(st, &root, "");
  if (!o.valid()) return *st.err;

  report r;
  if (auto s = o.string("schema"); s && *s != report_schema)
    st.fail("schema", "expected " + util::quote(report_schema) + ", got " + util::quote(*s));
  const claim_info* info = nullptr;
  if (auto c = o.string("claim")) {
    r.claim = *c;
    info = find_claim(*c);
    if (!info)
      st.fail("claim", "unknown claim id " + util::quote(*c) + " (docs/evidence.md lists the catalogue)");
    else if (info->third_party)
      st.fail("claim", r.claim + " is proven only by third-party evidence, not by an edgerelay report");
  }
  if (auto t = o.string("title")) {
    r.title = *t;
    if (t->empty()) st.fail("title", "must not be empty");
  }
  if (auto s = o.string("status")) {
    if (*s == "PASS")
      r.status = report_status::pass;
    else if (*s == "FAIL")
      r.status = report_status::fail;
    else if (*s == "SKIP")
      r.status = report_status::skip;
    else
      st.fail("status", "expected \"PASS\", \"FAIL\" or \"SKIP\", got " + util::quote(*s));
  }
  auto started = o.time("started_at");
  auto finished = o.time("finished_at");
  if (started) r.started_at = *started;
  if (finished) r.finished_at = *finished;
  if (started && finished && *finished < *started)
    st.fail("finished_at", "is earlier than started_at (" + util::format_utc(*started) + ")");

  {
    object_reader env(st, o.get("environment", true), "environment");
    if (auto v = env.string("version")) r.environment.version = *v;
    if (auto v = env.string("commit")) r.environment.commit = *v;
    if (auto v = env.string("host")) r.environment.host = *v;
    if (auto v = env.string("clock")) {
      r.environment.clock = *v;
      if (*v != "wall" && *v != "manual")
        st.fail("environment.clock", "expected \"wall\" or \"manual\", got " + util::quote(*v));
    }
    if (auto v = env.string("network")) {
      r.environment.network = *v;
      if (v->empty()) st.fail("environment.network", "must not be empty (\"loopback\", \"lan\", ...)");
    }
    env.done();
  }

  if (const auto* v = o.get("parameters", false)) {
    if (v->is_object())
      r.parameters = v->as_object();
    else
      st.fail("parameters", "expected an object, got " + kind_of(*v));
  }

  if (const auto* v = o.get("checks", true)) {
    if (!v->is_array())
      st.fail("checks", "expected an array, got " + kind_of(*v));
    else {
      std::size_t i = 0;
      for (const auto& e : v->as_array()) {
        const std::string path = "checks[" + std::to_string(i++) + "]";
        object_reader c(st, &e, path);
        check_result k;
        if (auto n = c.string("name")) {
          k.name = *n;
          if (n->empty()) st.fail(path + ".name", "must not be empty");
        }
        if (const auto* x = c.get("expected", true)) k.expected = *x;
        if (const auto* x = c.get("observed", true)) k.observed = *x;
        if (auto b = c.boolean("pass")) k.pass = *b;
        c.done();
        r.checks.push_back(std::move(k));
      }
    }
  }

  if (const auto* v = o.get("metrics", false)) {
    if (v->is_object())
      r.metrics = v->as_object();
    else
      st.fail("metrics", "expected an object, got " + kind_of(*v));
  }

  if (const auto* v = o.get("limitations", false)) {
    if (!v->is_array())
      st.fail("limitations", "expected an array, got " + kind_of(*v));
    else {
      std::size_t i = 0;
      for (const auto& e : v->as_array()) {
        const std::string path = "limitations[" + std::to_string(i++) + "]";
        if (!e.is_string())
          st.fail(path, "expected a string, got " + kind_of(e));
        else if (e.as_string().empty())
          st.fail(path, "must not be empty");
        else
          r.limitations.emplace_back(e.as_string());
      }
    }
  }

  if (auto s = o.string("skip_reason", false)) r.skip_reason = *s;
  o.done();
  if (st.err) return *st.err;

  // The report must agree with itself.
  if (r.status == report_status::skip && r.skip_reason.empty())
    st.fail("skip_reason", "missing or empty, but status is SKIP");
  if (r.status != report_status::skip && !r.skip_reason.empty())
    st.fail("skip_reason", std::string("is set, but status is ") + to_string(r.status));
  if (r.status == report_status::pass) {
    if (r.checks.empty()) st.fail("checks", "empty, but a PASS must rest on at least one check");
    for (std::size_t i = 0; i < r.checks.size(); ++i)
      if (!r.checks[i].pass) st.fail("checks[" + std::to_string(i) + "].pass", "false, but status is PASS");
  }
  if (r.claim == soak_claim && r.status != report_status::skip) {
    if (const auto* s = r.metrics.if_contains("soak")) {
      auto rec = read_soak(st, *s, "metrics.soak");
      if (rec && rec->clock != r.environment.clock)
        st.fail("metrics.soak.clock",
                util::quote(rec->clock) + ", but environment.clock is " + util::quote(r.environment.clock));
    } else {
      st.fail("metrics.soak", "missing (RL-SOAK-01 carries its soak record there)");
    }
  }
  if (st.err) return *st.err;
  return r;
}

evidence_result<report> read_report(const std::filesystem::path& file) {
  constexpr std::uintmax_t max_bytes = 16u << 20;
  std::error_code ec;
  const auto size = std::filesystem::file_size(file, ec);
  if (ec) return io_error(file.string(), ec, "cannot read");
  if (size > max_bytes)
    return malformed(file.string(), "",
                     "is " + util::format_size(size) + ", more than a report may be (" + util::format_size(max_bytes) +
                         ")");
  std::ifstream in(file, std::ios::binary);
  std::string text(static_cast<std::size_t>(size), '\0');
  if (!in || !in.read(text.data(), static_cast<std::streamsize>(text.size())))
    return io_error(file.string(), std::make_error_code(std::errc::io_error), "cannot read");
  auto r = parse_report(text, file.string());
  if (!r) return r;
  if (file.filename().string() != r->claim + ".json")
    return malformed(file.string(), "claim",
                     util::quote(r->claim) + " does not match the file name (a report for it is " + r->claim +
                         ".json)");
  return r;
}

// ---------------------------------------------------------------- the matrix

evidence_result<std::vector<loaded_report>> read_reports(const std::filesystem::path& dir) {
  std::error_code ec;
  const auto st = std::filesystem::status(dir, ec);
  if (!std::filesystem::exists(st))
    return evidence_error{make_error_code(errc::not_found), dir.string(), "", "no such folder"};
  if (!std::filesystem::is_directory(st))
    return evidence_error{make_error_code(errc::invalid_argument), dir.string(), "", "not a folder"};
  std::vector<std::filesystem::path> files;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto& p = it->path();
    std::error_code fe;
    if (p.extension() == ".json" && p.filename() != matrix_json_name && it->is_regular_file(fe)) files.push_back(p);
  }
  if (ec) return io_error(dir.string(), ec, "cannot list");
  std::sort(files.begin(), files.end());
  std::vector<loaded_report> out;
  for (const auto& f : files) {
    auto r = read_report(f);
    if (!r) return r.error();
    out.push_back({f.filename().string(), std::move(*r)});
  }
  return out;
}

namespace {

std::string join(const std::vector<std::string>& v, std::string_view sep) {
  std::string s;
  for (const auto& x : v) {
    if (!s.empty()) s += sep;
    s += x;
  }
  return s;
}

std::string span_text(std::chrono::milliseconds d) { return util::format_duration(d); }

claim_row row_for(const claim_info& info, const loaded_report* lr, const campaign_window& cw) {
  claim_row row;
  row.claim = info;
  if (info.third_party) {
    row.state = claim_state::future_required;
    row.advice = recommendation::future_required;
    row.advice_text = "must not be claimed until third-party evidence (an external audit) is obtained";
    row.limitations.push_back("needs third-party evidence; no edgerelay scenario can produce it");
    return row;
  }
  if (!lr) {
    row.state = claim_state::defer;
    row.advice = recommendation::defer;
    row.advice_text = "must not be claimed: there is no evidence yet; run its scenario";
    row.limitations.push_back("no report: " + std::string(info.id) + ".json is missing");
    return row;
  }
  const report& r = lr->value;
  row.evidence_file = lr->file;
  row.status = r.status;
  std::optional<soak_record> soak;
  if (info.id == soak_claim) {
    soak = soak_of(r);
    if (soak) row.gate_d = gate_d(*soak);
  }

  if (r.status == report_status::skip) {
    row.state = claim_state::defer;
    row.advice = recommendation::defer;
    row.advice_text = "must not be claimed: the scenario was skipped; run it where it can run";
    row.limitations.push_back("skipped: " + r.skip_reason);
    row.limitations.insert(row.limitations.end(), r.limitations.begin(), r.limitations.end());
    return row;
  }
  if (r.status == report_status::fail) {
    std::size_t failed = 0;
    for (const auto& c : r.checks)
      if (!c.pass) {
        ++failed;
        row.limitations.push_back("check " + util::quote(c.name) + " failed: expected " + text_of(c.expected) +
                                  ", observed " + text_of(c.observed));
      }
    if (failed == 0) row.limitations.push_back("the report's status is FAIL");
    row.limitations.insert(row.limitations.end(), r.limitations.begin(), r.limitations.end());
    row.state = claim_state::defer;
    row.advice = recommendation::defer;
    row.advice_text = "must not be claimed until fixed: " +
                      (failed ? std::to_string(failed) + " check(s) failed" : std::string("the run failed")) +
                      "; fix the cause and re-run the scenario";
    return row;
  }

  // PASS: everything that keeps it from VALIDATED, written out.
  std::vector<std::string> limits;
  if (r.environment.network == "loopback") limits.push_back("measured on loopback only");
  if (r.environment.clock != "wall")
    limits.push_back("measured on a manual clock only (time was stepped by the test, not observed)");
  limits.insert(limits.end(), r.limitations.begin(), r.limitations.end());
  if (!cw.within) limits.push_back("outside the 7-day campaign window: the reports span " + span_text(cw.span));

  if (info.id == soak_claim && !soak) {
    row.limitations.push_back("no soak record in metrics.soak: Gate D cannot be judged");
    row.limitations.insert(row.limitations.end(), limits.begin(), limits.end());
    row.state = claim_state::not_started;
    row.advice = recommendation::not_started;
    row.advice_text = "cannot ship until Gate D passes";
    return row;
  }
  if (soak && !row.gate_d->overall) {
    const auto& g = *row.gate_d;
    if (!g.rounds_ok)
      row.limitations.push_back("Gate D: rounds " + std::to_string(soak->rounds) + " < " +
                                std::to_string(gate_d_min_rounds));
    if (!g.rate_ok)
      row.limitations.push_back("Gate D: clean_delivery_rate " + number_text(soak->clean_delivery_rate()) + " < 0.990");
    if (!g.loss_ok) row.limitations.push_back("Gate D: loss " + std::to_string(soak->loss) + " != 0");
    if (!g.clock_ok) row.limitations.push_back("Gate D: a manual-clock soak can never satisfy Gate D");
    row.limitations.insert(row.limitations.end(), limits.begin(), limits.end());
    row.state = claim_state::not_started;
    row.advice = recommendation::not_started;
    row.advice_text = "cannot ship until Gate D passes (rounds >= 1440, clean_delivery_rate >= 0.990, loss = 0, "
                      "on the wall clock)";
    return row;
  }
  row.limitations = std::move(limits);
  if (row.limitations.empty()) {
    row.state = claim_state::validated;
    row.advice = recommendation::ok_design_partner;
    row.advice_text = "safe to include in a design-partner release as-is";
  } else {
    row.state = claim_state::beta;
    row.advice = recommendation::beta_only;
    row.advice_text = "may ship to design partners only with the limitations disclosed in writing";
  }
  return row;
}

std::string blocker_line(const claim_row& row) {
  return std::string(row.claim.id) + " is " + to_string(row.state) + ": " + join(row.limitations, "; ");
}

} // namespace

evidence_result<evidence_matrix> build_matrix(const std::vector<loaded_report>& reports) {
  evidence_matrix m;
  std::map<std::string_view, const loaded_report*> by_claim;
  for (const auto& lr : reports) {
    // A report built in memory passes the same strict checks as one read from a file.
    if (auto checked = parse_report(json::serialize(to_json(lr.value)), lr.file); !checked) return checked.error();
    const auto* info = find_claim(lr.value.claim);
    auto [it, fresh] = by_claim.emplace(info->id, &lr);
    if (!fresh)
      return malformed(lr.file, "claim",
                       "a second report for " + lr.value.claim + " (the first is " + it->second->file + ")");
    auto& cw = m.campaign;
    ++cw.reports;
    if (!cw.earliest || lr.value.started_at < *cw.earliest) cw.earliest = lr.value.started_at;
    if (!cw.latest || lr.value.finished_at > *cw.latest) cw.latest = lr.value.finished_at;
  }
  auto& cw = m.campaign;
  if (cw.reports > 0) {
    cw.span = std::chrono::floor<std::chrono::milliseconds>(*cw.latest - *cw.earliest);
    cw.within = *cw.latest - *cw.earliest <= campaign_window_limit;
  }
  for (const auto& info : catalogue) {
    auto it = by_claim.find(info.id);
    m.claims.push_back(row_for(info, it == by_claim.end() ? nullptr : it->second, cw));
  }

  std::vector<std::string> window_blockers;
  if (cw.reports == 0)
    window_blockers.push_back("no reports: there is no evidence campaign");
  else if (!cw.within)
    window_blockers.push_back("the reports span " + span_text(cw.span) + " (" + util::format_utc(*cw.earliest) +
                              " to " + util::format_utc(*cw.latest) + "), more than one 7-day campaign window");
  for (std::size_t i = 0; i < 3; ++i) {
    auto& lv = m.levels[i];
    lv.level = static_cast<readiness_level>(i);
    lv.blockers = window_blockers;
    for (const auto& row : m.claims) {
      if (row.claim.required_from > lv.level) continue;
      const bool enough = row.state == claim_state::validated ||
                          (lv.level == readiness_level::design_partner && row.state == claim_state::beta);
      if (!enough) lv.blockers.push_back(blocker_line(row));
    }
    if (lv.level == readiness_level::design_partner)
      for (const auto& row : m.claims)
        if (row.state != claim_state::validated && !row.claim.third_party) lv.disclosures.push_back(blocker_line(row));
    lv.ready = lv.blockers.empty();
  }
  return m;
}

json::object to_json(const evidence_matrix& m) {
  json::array claims;
  for (const auto& row : m.claims) {
    json::array limits;
    for (const auto& l : row.limitations)
      limits.push_back(json::value(l));
    json::object o{
        {"claim", row.claim.id},
        {"title", row.claim.title},
        {"required_from", to_string(row.claim.required_from)},
        {"state", to_string(row.state)},
        {"recommendation", to_string(row.advice)},
        {"recommendation_text", row.advice_text},
        {"evidence_file", row.evidence_file.empty() ? json::value(nullptr) : json::value(row.evidence_file)},
        {"status", row.status ? json::value(to_string(*row.status)) : json::value(nullptr)},
        {"limitations", std::move(limits)},
    };
    if (row.gate_d)
      o["gate_d"] = json::object{{"rounds_ok", row.gate_d->rounds_ok},
                                 {"rate_ok", row.gate_d->rate_ok},
                                 {"loss_ok", row.gate_d->loss_ok},
                                 {"clock_ok", row.gate_d->clock_ok},
                                 {"overall", row.gate_d->overall}};
    claims.push_back(std::move(o));
  }
  const auto& cw = m.campaign;
  json::object levels;
  for (const auto& lv : m.levels) {
    json::array blockers, disclosures;
    for (const auto& b : lv.blockers)
      blockers.push_back(json::value(b));
    json::object o{{"ready", lv.ready}, {"blockers", std::move(blockers)}};
    if (lv.level == readiness_level::design_partner) {
      for (const auto& d : lv.disclosures)
        disclosures.push_back(json::value(d));
      o["disclosures"] = std::move(disclosures);
    }
    levels[to_string(lv.level)] = std::move(o);
  }
  return json::object{
      {"schema", matrix_schema},
      {"campaign",
       json::object{
           {"reports", cw.reports},
           {"earliest_started_at", cw.earliest ? json::value(util::format_utc(*cw.earliest)) : json::value(nullptr)},
           {"latest_finished_at", cw.latest ? json::value(util::format_utc(*cw.latest)) : json::value(nullptr)},
           {"span_s", static_cast<double>(cw.span.count()) / 1000.0},
           {"limit_s", campaign_window_limit.count()},
           {"within_window", cw.within},
       }},
      {"claims", std::move(claims)},
      {"readiness", std::move(levels)},
  };
}

namespace {
// A Markdown table cell: no pipes, no line breaks.
std::string cell(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '|')
      out += "\\|";
    else if (c == '\n' || c == '\r')
      out += ' ';
    else
      out += c;
  }
  return out;
}
} // namespace

std::string to_markdown(const evidence_matrix& m) {
  std::string s = "# edgerelay evidence matrix\n\n";
  const auto& cw = m.campaign;
  if (cw.reports == 0)
    s += "No reports were found: every claim is DEFER.\n\n";
  else
    s += std::to_string(cw.reports) + " reports, " + util::format_utc(*cw.earliest) + " to " +
         util::format_utc(*cw.latest) + " (" + span_text(cw.span) +
         "): " + (cw.within ? "inside one 7-day campaign window" : "**outside** one 7-day campaign window") + ".\n\n";
  s += "| claim | title | required for | state | recommendation | evidence |\n";
  s += "|---|---|---|---|---|---|\n";
  for (const auto& row : m.claims)
    s += "| " + std::string(row.claim.id) + " | " + cell(row.claim.title) + " | " +
         level_title(row.claim.required_from) + " | " + to_string(row.state) + " | " + to_string(row.advice) + " | " +
         (row.evidence_file.empty() ? std::string("none")
                                    : cell(row.evidence_file) + " (" + to_string(*row.status) + ")") +
         " |\n";
  s += "\n## Claims\n";
  for (const auto& row : m.claims) {
    s += "\n### " + std::string(row.claim.id) + ": " + to_string(row.state) + "\n\n";
    s += std::string(row.claim.title) + ".\n\n";
    s += "Recommendation " + std::string(to_string(row.advice)) + ": " + row.advice_text + ".\n";
    if (row.gate_d)
      s += std::string("\nGate D: rounds ") + (row.gate_d->rounds_ok ? "ok" : "short") + ", rate " +
           (row.gate_d->rate_ok ? "ok" : "short") + ", loss " + (row.gate_d->loss_ok ? "ok" : "not zero") + ", clock " +
           (row.gate_d->clock_ok ? "wall" : "manual") + ": " + (row.gate_d->overall ? "passed" : "not passed") + ".\n";
    if (!row.limitations.empty()) {
      s += "\nLimitations:\n\n";
      for (const auto& l : row.limitations)
        s += "- " + l + "\n";
    }
  }
  s += "\n## Readiness\n";
  for (const auto& lv : m.levels) {
    s += "\n### " + std::string(level_title(lv.level)) + ": " + (lv.ready ? "READY" : "NOT READY") + "\n";
    if (!lv.blockers.empty()) {
      s += "\nBlocked by:\n\n";
      for (const auto& b : lv.blockers)
        s += "- " + b + "\n";
    }
    if (!lv.disclosures.empty()) {
      s += "\nTo disclose in writing to design partners:\n\n";
      for (const auto& d : lv.disclosures)
        s += "- " + d + "\n";
    }
  }
  return s;
}

evidence_result<void> write_matrix(const evidence_matrix& m, const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return io_error(dir.string(), ec, "cannot create the folder");
  if (auto r = write_file(dir / matrix_md_name, to_markdown(m)); !r) return r;
  return write_file(dir / matrix_json_name, pretty(to_json(m)) + "\n");
}

} // namespace edgerelay::telemetry
