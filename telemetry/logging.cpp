#include "telemetry/logging.hpp"

#include "telemetry/detail/utf8.hpp"
#include "util/clock.hpp"
#include "util/units.hpp"

#include <spdlog/pattern_formatter.h>
#include <spdlog/spdlog.h>

#include <charconv>

namespace edgerelay::telemetry {

namespace {

template <class Buf>
void append(Buf& out, std::string_view s) {
  out.append(s.data(), s.data() + s.size());
}

template <class Buf>
void append_uint(Buf& out, std::uint64_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

template <class Buf>
void append_json(Buf& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out.push_back('"');
  detail::for_each_utf8_piece(s, [&](std::string_view piece, bool valid) {
    if (!valid) {
      append(out, detail::replacement_character);
      return;
    }
    std::size_t run = 0; // start of the bytes not yet written
    for (std::size_t i = 0; i < piece.size(); ++i) {
      auto c = static_cast<unsigned char>(piece[i]);
      if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) continue;
      append(out, piece.substr(run, i - run));
      run = i + 1;
      switch (c) {
      case '"': append(out, "\\\""); break;
      case '\\': append(out, "\\\\"); break;
      case '\n': append(out, "\\n"); break;
      case '\r': append(out, "\\r"); break;
      case '\t': append(out, "\\t"); break;
      case '\b': append(out, "\\b"); break;
      case '\f': append(out, "\\f"); break;
      default: {
        char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 0xf]};
        append(out, std::string_view(u, 6));
      }
      }
    }
    append(out, piece.substr(run));
  });
  out.push_back('"');
}

} // namespace

std::optional<log_format> parse_log_format(std::string_view name) noexcept {
  if (name == "text") return log_format::text;
  if (name == "json") return log_format::json;
  return std::nullopt;
}

const char* to_string(log_format f) noexcept { return f == log_format::json ? "json" : "text"; }

void json_log_formatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  append(dest, "{\"ts\":\"");
  append(dest, util::format_utc(clock_ ? clock_->system_now() : msg.time));
  append(dest, "\",\"level\":");
  auto level = spdlog::level::to_string_view(msg.level);
  append_json(dest, std::string_view(level.data(), level.size()));
  append(dest, ",\"logger\":");
  append_json(dest, std::string_view(msg.logger_name.data(), msg.logger_name.size()));
  append(dest, ",\"thread\":");
  append_uint(dest, msg.thread_id);
  append(dest, ",\"msg\":");
  append_json(dest, std::string_view(msg.payload.data(), msg.payload.size()));
  append(dest, "}\n");
}

std::unique_ptr<spdlog::formatter> json_log_formatter::clone() const {
  return std::make_unique<json_log_formatter>(clock_);
}

std::unique_ptr<spdlog::formatter> make_log_formatter(log_format f, util::clock* clock) {
  if (f == log_format::json) return std::make_unique<json_log_formatter>(clock);
  return std::make_unique<spdlog::pattern_formatter>();
}

void configure_default_logger(log_format f) { spdlog::default_logger()->set_formatter(make_log_formatter(f)); }

void append_json_string(std::string& out, std::string_view s) { append_json(out, s); }

} // namespace edgerelay::telemetry
