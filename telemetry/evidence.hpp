#pragma once
// edgerelay::telemetry evidence — the report a validation scenario writes for
// one claim (DESIGN §8, docs/evidence.md), its strict parser, the soak record
// and Gate D, the claim catalogue, and the evidence matrix that aggregates a
// folder of reports into per-claim states and readiness levels.
//
// Honest by construction: nothing is VALIDATED by default. A claim is
// VALIDATED only by a PASS report measured on the wall clock, on a network
// other than loopback, with no declared limitation, inside one 7-day campaign
// window (and, for RL-SOAK-01, with Gate D met). Every other outcome is named
// in the claim's limitations. A report that cannot be read exactly as the
// schema says is an error naming the file and the field, never skipped.
//
// Every type here is a plain value; every function is thread-safe (no shared
// state) and does not throw, except .value() on a failed evidence_result
// (see throw_exception_from_error below).

#include "util/clock.hpp"

#include <boost/assert/source_location.hpp>
#include <boost/json/array.hpp>
#include <boost/json/object.hpp>
#include <boost/json/value.hpp>
#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::telemetry {

// ---------------------------------------------------------------- errors

// One problem with an evidence file (or the folder holding them).
struct evidence_error {
  // errc::malformed for a report that breaks the schema, errc::not_found for a
  // missing input folder, a std::errc (generic category) for an I/O failure.
  boost::system::error_code code;
  std::string file;    // the path as read, e.g. "DIR/RL-IMPW-01.json"
  std::string field;   // "checks[2].pass", "metrics.soak.rounds"; empty when about the whole file
  std::string problem; // one sentence, no trailing period
  // "FILE: field: problem", or "FILE: problem" when field is empty.
  std::string to_string() const;
};

// Found by ADL from evidence_result<T>::value(): throws std::invalid_argument
// whose what() is e.to_string().
[[noreturn]] void throw_exception_from_error(const evidence_error& e, const boost::source_location& loc);

template <class T>
using evidence_result = boost::system::result<T, evidence_error>;

// ---------------------------------------------------------------- time

// Reports write times with util::format_utc ("2024-05-01T12:00:00.000Z").
// parse_rfc3339 accepts "YYYY-MM-DDTHH:MM:SS[.fraction]Z" (fraction of 1..9 digits, 'T'/'Z'
// in either case). Offsets other than Z, leap seconds and impossible dates are
// refused (nullopt).
std::optional<std::chrono::system_clock::time_point> parse_rfc3339(std::string_view text);

// ---------------------------------------------------------------- the report

inline constexpr std::string_view report_schema = "edgerelay.evidence/v1";

enum class report_status { pass, fail, skip };
const char* to_string(report_status s) noexcept; // "PASS", "FAIL", "SKIP"

// Where a report was measured. clock is "wall" or "manual" (util::clock::kind());
// network is "loopback" or a free word naming a real network ("lan", "wan", ...).
// The defaults are the least flattering: a report that says nothing about its
// network counts as measured on loopback.
struct environment_info {
  std::string version;
  std::string commit;
  std::string host;
  std::string clock = "manual";
  std::string network = "loopback";
  friend bool operator==(const environment_info&, const environment_info&) = default;
};

// One expectation checked by a scenario. expected/observed are any JSON.
struct check_result {
  std::string name;
  boost::json::value expected;
  boost::json::value observed;
  bool pass = false;
  friend bool operator==(const check_result&, const check_result&) = default;
};

struct soak_record;

// The JSON document one scenario writes for one claim: DIR/<claim>.json.
//
// Building one:
//
//   report r{"RL-IMPW-01", "upstream outage dead-letters after max_retry", clock};
//   r.environment.network = "lan";          // default "loopback"
//   r.parameters["max_retry"] = 3;
//   r.check("dead-lettered", 200, dead, dead == 200);
//   r.check_equal("loss", 0, loss);         // pass = (expected == observed)
//   r.limitation("single host");
//   r.finish(clock);                        // status and finished_at
//   write_report(r, dir / "RL-IMPW-01.json");
//
// The constructor stamps started_at and environment.clock from the clock, so a
// manual-clock run cannot pass for a wall-clock one. finish() derives the
// status: SKIP when skip() was called, else FAIL when any check failed or no
// check was made at all (a PASS must have proven something), else PASS.
struct report {
  std::string claim;
  std::string title;
  report_status status = report_status::fail;
  std::chrono::system_clock::time_point started_at{};
  std::chrono::system_clock::time_point finished_at{};
  environment_info environment;
  boost::json::object parameters;
  std::vector<check_result> checks;
  boost::json::object metrics; // RL-SOAK-01 carries its soak record in metrics.soak (see soak_record)
  std::vector<std::string> limitations;
  std::string skip_reason; // non-empty exactly when status is SKIP

  report() = default;
  report(std::string claim_id, std::string title_text, util::clock& c);

  report& check(std::string name, boost::json::value expected, boost::json::value observed, bool pass);
  report& check_equal(std::string name, boost::json::value expected, boost::json::value observed);
  report& limitation(std::string text);
  // Marks the run as skipped (the scenario could not run here); finish() then gives SKIP.
  report& skip(std::string reason);
  // Stores the soak record (with its computed rate and Gate D) in metrics.soak.
  report& soak(const soak_record& s);
  // Stamps finished_at and derives status (see above).
  void finish(util::clock& c);

  friend bool operator==(const report&, const report&) = default;
};

// The report as JSON (every key written, skip_reason "" unless skipped).
boost::json::object to_json(const report& r);
// Writes to_json(r) to `file` (through a temporary file and a rename).
evidence_result<void> write_report(const report& r, const std::filesystem::path& file);

// The strict parser. `file` names the source in errors. Refused, each with the
// field it concerns: invalid JSON, a missing required key, an unknown key (a
// typo must not hide a limitation), a wrong type, a schema other than
// report_schema, an unknown claim id, a claim only third-party evidence can
// prove, a bad timestamp or finished_at before started_at, a clock other than
// wall/manual, an empty network, a PASS with no check or with a failed check,
// a SKIP without skip_reason or a skip_reason without SKIP, and for
// RL-SOAK-01 (unless skipped) a missing or inconsistent metrics.soak.
// Required keys: schema, claim, title, status, started_at, finished_at,
// environment{version, commit, host, clock, network}, checks. Optional:
// parameters, metrics, limitations, skip_reason.
evidence_result<report> parse_report(std::string_view json_text, const std::string& file);
// Reads and parses one file; also requires the file to be named <claim>.json.
evidence_result<report> read_report(const std::filesystem::path& file);

// ---------------------------------------------------------------- soak and Gate D

inline constexpr std::uint64_t gate_d_min_rounds = 1440;
inline constexpr double gate_d_min_clean_delivery_rate = 0.990;

struct latency_percentiles {
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, max_ms = 0;
  friend bool operator==(const latency_percentiles&, const latency_percentiles&) = default;
};

// The canary soak's record (DESIGN §8). In a report it is metrics.soak:
//   {"rounds", "clean_rounds", "clean_delivery_rate", "segments_sent",
//    "segments_delivered", "loss", "duplicates",
//    "latency_ms": {"p50", "p90", "p99", "max"}, "max_queue_depth",
//    "rss_start_bytes", "rss_max_bytes", "restarts", "clock",
//    "gate_d": {"rounds_ok", "rate_ok", "loss_ok", "clock_ok", "overall"}}
// clean_delivery_rate and gate_d are derived, never taken on trust: the
// parser refuses a file whose stored values differ from the computed ones.
struct soak_record {
  std::uint64_t rounds = 0;
  std::uint64_t clean_rounds = 0; // rounds in which every canary arrived once, intact, in time
  std::uint64_t segments_sent = 0;
  std::uint64_t segments_delivered = 0;
  std::int64_t loss = 0; // the accounting identity's left side minus its right side
  std::uint64_t duplicates = 0;
  latency_percentiles latency;
  std::uint64_t max_queue_depth = 0;
  std::uint64_t rss_start_bytes = 0;
  std::uint64_t rss_max_bytes = 0;
  std::uint64_t restarts = 0;
  std::string clock = "manual"; // "wall" | "manual"

  // clean_rounds / rounds; 0 when rounds is 0.
  double clean_delivery_rate() const noexcept;
  friend bool operator==(const soak_record&, const soak_record&) = default;
};

struct gate_d_result {
  bool rounds_ok = false; // rounds >= gate_d_min_rounds
  bool rate_ok = false;   // clean_delivery_rate >= gate_d_min_clean_delivery_rate
  bool loss_ok = false;   // loss == 0
  bool clock_ok = false;  // clock == "wall": a manual-clock soak never satisfies Gate D
  bool overall = false;   // all four
  friend bool operator==(const gate_d_result&, const gate_d_result&) = default;
};

gate_d_result gate_d(const soak_record& s) noexcept;
boost::json::object to_json(const soak_record& s);
// Parses `v` (the value at `field`, e.g. "metrics.soak") strictly, as above.
evidence_result<soak_record> parse_soak(const boost::json::value& v, const std::string& file, const std::string& field);
// The soak record of an RL-SOAK-01 report (nullopt when metrics.soak is absent or malformed).
std::optional<soak_record> soak_of(const report& r);

// ---------------------------------------------------------------- the claim catalogue

// Readiness levels, each including the ones before it.
enum class readiness_level { design_partner, ga, public_production };
const char* to_string(readiness_level l) noexcept; // "design_partner", "ga", "public_production"

struct claim_info {
  std::string_view id;
  std::string_view title;
  readiness_level required_from; // the first level that needs this claim (docs/evidence.md says why)
  bool third_party = false;      // proven only by external evidence: always FUTURE_REQUIRED here
};

// Every claim of DESIGN §8's table, plus XC-SCRT-01 (external security audit),
// in matrix order.
std::span<const claim_info> claim_catalogue() noexcept;
const claim_info* find_claim(std::string_view id) noexcept;

// ---------------------------------------------------------------- the matrix

enum class claim_state { validated, beta, not_started, defer, future_required };
enum class recommendation { ok_design_partner, beta_only, not_started, defer, future_required };
const char* to_string(claim_state s) noexcept;    // "VALIDATED", "BETA", "NOT_STARTED", "DEFER", "FUTURE_REQUIRED"
const char* to_string(recommendation r) noexcept; // "OK_DESIGN_PARTNER", "BETA_ONLY", "NOT_STARTED", "DEFER", ...

inline constexpr std::chrono::seconds campaign_window_limit{7 * 24 * 3600};
inline constexpr std::string_view matrix_schema = "edgerelay.matrix/v1";
inline constexpr std::string_view matrix_json_name = "relay-proof-report.json";
inline constexpr std::string_view matrix_md_name = "matrix.md";

// A parsed report and the name of its file inside the input folder.
struct loaded_report {
  std::string file; // "RL-IMPW-01.json"
  report value;
};

struct claim_row {
  claim_info claim;
  claim_state state = claim_state::defer;
  recommendation advice = recommendation::defer;
  std::string advice_text;              // what the recommendation means for this claim, one sentence
  std::string evidence_file;            // empty when there is no report
  std::optional<report_status> status;  // the report's status, when there is one
  std::vector<std::string> limitations; // everything that keeps the claim from VALIDATED, written out
  std::optional<gate_d_result> gate_d;  // RL-SOAK-01 with a soak record only
};

// earliest started_at .. latest finished_at over every report, SKIP and FAIL included.
struct campaign_window {
  std::size_t reports = 0;
  std::optional<std::chrono::system_clock::time_point> earliest;
  std::optional<std::chrono::system_clock::time_point> latest;
  std::chrono::milliseconds span{0};
  bool within = false; // reports > 0 and span <= campaign_window_limit
};

struct readiness {
  readiness_level level = readiness_level::design_partner;
  bool ready = false;
  std::vector<std::string> blockers;    // one line per reason, empty exactly when ready
  std::vector<std::string> disclosures; // design_partner only: what must be disclosed in writing
};

struct evidence_matrix {
  std::vector<claim_row> claims; // catalogue order
  campaign_window campaign;
  std::array<readiness, 3> levels; // design_partner, ga, public_production
};

// Reads every regular *.json file in `dir` (sorted by name) except the
// matrix's own relay-proof-report.json. Any malformed file is an error; so is
// a folder that does not exist.
evidence_result<std::vector<loaded_report>> read_reports(const std::filesystem::path& dir);

// Applies the state rules of docs/evidence.md. Two reports for one claim, or a
// report for an unknown claim, is an error naming the second file.
evidence_result<evidence_matrix> build_matrix(const std::vector<loaded_report>& reports);

// The readable and the machine form. Both depend only on the matrix (no
// timestamps of their own), so the same reports give the same bytes.
std::string to_markdown(const evidence_matrix& m);
boost::json::object to_json(const evidence_matrix& m);
// Writes matrix.md and relay-proof-report.json into `dir` (created when
// missing), each through a temporary file and a rename.
evidence_result<void> write_matrix(const evidence_matrix& m, const std::filesystem::path& dir);

} // namespace edgerelay::telemetry
