#pragma once
// Log formats for spdlog, the project's logger (docs/metrics.md, "Logs").
//
//   text  spdlog's default pattern, as the node has always logged:
//         [2026-11-23 08:56:55.123] [warning] peer hub: connection closed: eof
//   json  one JSON object per line, for log shippers:
//         {"ts":"2026-11-23T08:56:55.123Z","level":"warning","logger":"","thread":4711,
//          "msg":"peer hub: connection closed: eof"}
//         ts is RFC 3339 in UTC with milliseconds (util::format_utc); level is spdlog's level name
//         (trace, debug, info, warning, error, critical); logger is the
//         logger's name ("" for the default logger); thread is the OS thread
//         id. The message is escaped as JSON (quotes, backslashes, control
//         characters) and bytes that are not valid UTF-8 become U+FFFD, so
//         every line parses whatever the message holds.

#include <spdlog/common.h>
#include <spdlog/formatter.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace edgerelay::util {
class clock;
}

namespace edgerelay::telemetry {

enum class log_format { text, json };

// "text" or "json"; nullopt for anything else.
std::optional<log_format> parse_log_format(std::string_view name) noexcept;
const char* to_string(log_format f) noexcept;

// The json format as an spdlog formatter. Stateless apart from the clock:
// safe to clone into any number of sinks. With a clock, ts is taken from
// clock->system_now() when the line is formatted (tests pass a manual_clock);
// without one, ts is the time spdlog recorded for the message.
class json_log_formatter final : public spdlog::formatter {
public:
  explicit json_log_formatter(util::clock* clock = nullptr) : clock_(clock) {}
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;

private:
  util::clock* clock_;
};

// A formatter for f: spdlog's default pattern formatter for text, a
// json_log_formatter (with `clock`) for json.
std::unique_ptr<spdlog::formatter> make_log_formatter(log_format f, util::clock* clock = nullptr);

// Sets f on every sink of spdlog's default logger. Call once at start-up,
// before other threads log (spdlog's set_formatter is not atomic with respect
// to concurrent logging on the same sinks). The level is left as it is
// (spdlog::set_level).
void configure_default_logger(log_format f);

// Appends s as a JSON string literal, quotes included: `"`, `\` and control
// characters escaped (\n, \t, ... or \u00XX), invalid UTF-8 bytes replaced by
// U+FFFD.
void append_json_string(std::string& out, std::string_view s);

} // namespace edgerelay::telemetry
