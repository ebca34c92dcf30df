#include "bandwidth/schedule.hpp"

#include "util/text.hpp"

#include <algorithm>
#include <cstdint>

namespace edgerelay::bandwidth {

namespace {

using days = std::chrono::duration<std::int64_t, std::ratio<86400>>;
constexpr auto one_day = std::chrono::duration_cast<sys_time::duration>(days{1});

bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string two_digits(long v) { return {static_cast<char>('0' + v / 10), static_cast<char>('0' + v % 10)}; }

sys_time::duration offset_of(time_of_day t) { return std::chrono::duration_cast<sys_time::duration>(t.since_midnight); }

// Time since the UTC midnight at or before t.
sys_time::duration time_in_day(sys_time t) { return t - sys_time{std::chrono::floor<days>(t)}; }

// "HH:MM" at the front of s (consumed). On failure: the problem, or an empty
// string when s does not have the shape at all.
struct hh_mm {
  std::optional<time_of_day> value;
  std::string problem;
};
hh_mm take_hh_mm(std::string_view& s) {
  if (s.size() < 5 || !is_digit(s[0]) || !is_digit(s[1]) || s[2] != ':' || !is_digit(s[3]) || !is_digit(s[4]))
    return {};
  const int h = (s[0] - '0') * 10 + (s[1] - '0');
  const int m = (s[3] - '0') * 10 + (s[4] - '0');
  if (h > 23) return {std::nullopt, "hour must be 0..23"};
  if (m > 59) return {std::nullopt, "minute must be 0..59"};
  s.remove_prefix(5);
  return {time_of_day{std::chrono::minutes{h * 60 + m}}, {}};
}

util::parse_error fail(std::string_view text, const std::string& problem) {
  return {util::quote(text) + ": " + problem};
}

constexpr const char* tod_shape = "expected a UTC time of day \"HH:MMZ\" (HH 00..23, MM 00..59), e.g. \"00:00Z\"";
constexpr const char* window_shape =
    "expected a UTC send window \"HH:MM-HH:MMZ\" (start inclusive, end exclusive, may cross midnight), "
    "e.g. \"22:00-06:00Z\"";

} // namespace

std::string time_of_day::to_string() const {
  const auto m = since_midnight.count();
  return two_digits(m / 60) + ":" + two_digits(m % 60) + "Z";
}

std::string window::to_string() const {
  auto a = start.to_string();
  a.pop_back(); // the 'Z' is written once, at the end
  return a + "-" + end.to_string();
}

bool window::contains(sys_time t) const noexcept {
  const auto d = time_in_day(t);
  const auto s = offset_of(start), e = offset_of(end);
  if (s < e) return d >= s && d < e;
  return d >= s || d < e;
}

util::parsed<time_of_day> parse_time_of_day(std::string_view text) {
  std::string_view s = text;
  auto t = take_hh_mm(s);
  if (!t.value) return fail(text, t.problem.empty() ? tod_shape : t.problem);
  if (s.empty())
    return fail(text, "missing the \"Z\" at the end (times are UTC, e.g. \"" + t.value->to_string() + "\")");
  if (s != "Z") return fail(text, tod_shape);
  return *t.value;
}

util::parsed<window> parse_send_window(std::string_view text) {
  std::string_view s = text;
  auto a = take_hh_mm(s);
  if (!a.value) return fail(text, a.problem.empty() ? window_shape : a.problem);
  if (s.starts_with('Z')) s.remove_prefix(1);
  if (!s.starts_with('-')) return fail(text, window_shape);
  s.remove_prefix(1);
  auto b = take_hh_mm(s);
  if (!b.value) return fail(text, b.problem.empty() ? window_shape : b.problem);
  window w{*a.value, *b.value};
  if (s.empty())
    return fail(text, "missing the \"Z\" at the end (send windows are UTC, e.g. \"" + w.to_string() + "\")");
  if (s != "Z") return fail(text, window_shape);
  if (w.start == w.end) return fail(text, "start and end are the same time, so the window is empty");
  return w;
}

util::parsed<std::vector<window>> parse_send_windows(std::span<const std::string> texts) {
  if (texts.empty())
    return util::parse_error{"send_windows: is empty, so the peer could never send (leave the key out to send at "
                             "any time)"};
  std::vector<window> out;
  out.reserve(texts.size());
  for (std::size_t i = 0; i < texts.size(); ++i) {
    auto w = parse_send_window(texts[i]);
    if (!w) return util::parse_error{"send_windows[" + std::to_string(i) + "]: " + w.error().message};
    out.push_back(*w);
  }
  return out;
}

sys_time last_occurrence(time_of_day at, sys_time t) noexcept {
  const auto off = offset_of(at);
  return sys_time{std::chrono::floor<days>(t - off)} + off;
}

sys_time next_occurrence(time_of_day at, sys_time t) noexcept { return last_occurrence(at, t) + one_day; }

bool in_any(std::span<const window> windows, sys_time t) noexcept {
  return std::any_of(windows.begin(), windows.end(), [&](const window& w) { return w.contains(t); });
}

std::optional<sys_time> next_open(std::span<const window> windows, sys_time t) noexcept {
  if (windows.empty()) return std::nullopt;
  if (in_any(windows, t)) return t;
  std::optional<sys_time> best;
  for (const auto& w : windows) {
    const auto s = next_occurrence(w.start, t);
    if (!best || s < *best) best = s;
  }
  return best;
}

std::optional<sys_time> next_close(std::span<const window> windows, sys_time t) noexcept {
  if (!in_any(windows, t)) return std::nullopt;
  // Follow the stretch from window end to window end. Every step moves to a
  // later end boundary; a stretch that reaches a day is the whole day.
  sys_time end = t;
  for (;;) {
    std::optional<sys_time> furthest;
    for (const auto& w : windows)
      if (w.contains(end)) {
        const auto e = next_occurrence(w.end, end);
        if (!furthest || e > *furthest) furthest = e;
      }
    if (!furthest) return end;
    end = *furthest;
    if (end - t >= one_day) return std::nullopt;
  }
}

} // namespace edgerelay::bandwidth
