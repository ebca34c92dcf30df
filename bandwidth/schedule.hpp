#pragma once
// UTC wall-clock schedules of the bandwidth module: a time of day (when the
// daily quota refills) and send windows (when a peer may send at all), with
// their text forms and the arithmetic that places them on the system clock.
//
// Days are UTC days of exactly 86 400 s (system_clock has no leap seconds),
// so "13:30Z" is the same instant for every node whatever its time zone.
//
// Text forms (ASCII, no surrounding blanks):
//   time of day  "HH:MMZ"                 HH 00..23, MM 00..59, e.g. "00:00Z", "13:30Z"
//   send window  "HH:MM-HH:MMZ"           start inclusive, end exclusive, UTC;
//                                          end < start crosses midnight ("22:00-06:00Z");
//                                          "HH:MMZ-HH:MMZ" is accepted too;
//                                          start == end is refused (an empty window)
//
// Error messages quote the input (util::quote) and then say what is wrong:
//   "25:00-06:00Z": hour must be 0..23
//   send_windows[1]: "25:00-06:00Z": hour must be 0..23        (parse_send_windows)
//
// Everything here is pure, thread-safe and never throws (except .value() on
// a failed result, see util/units.hpp).

#include "util/units.hpp"

#include <chrono>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::bandwidth {

using sys_time = std::chrono::system_clock::time_point;

// A UTC time of day with minute resolution.
struct time_of_day {
  std::chrono::minutes since_midnight{0}; // 0 .. 1439
  std::string to_string() const;          // "13:30Z"
  friend auto operator<=>(const time_of_day&, const time_of_day&) = default;
};

// A daily UTC interval [start, end); end < start crosses midnight. start != end.
struct window {
  time_of_day start;
  time_of_day end;
  bool contains(sys_time t) const noexcept;
  std::string to_string() const; // "22:00-06:00Z"
  friend bool operator==(const window&, const window&) = default;
};

util::parsed<time_of_day> parse_time_of_day(std::string_view text);
util::parsed<window> parse_send_window(std::string_view text);
// Every element must parse (the first failure is reported, prefixed with
// "send_windows[i]: ", i 0-based). An empty list is refused: it would mean
// "never send"; an absent key means "send at any time".
util::parsed<std::vector<window>> parse_send_windows(std::span<const std::string> texts);

// The most recent instant at or before t whose UTC time of day is `at`.
sys_time last_occurrence(time_of_day at, sys_time t) noexcept;
// The first instant strictly after t whose UTC time of day is `at`.
sys_time next_occurrence(time_of_day at, sys_time t) noexcept;

// Whether t lies in at least one of the windows (false for an empty list).
bool in_any(std::span<const window> windows, sys_time t) noexcept;
// The first instant at or after t that lies in some window: t itself when t is
// inside one. nullopt for an empty list.
std::optional<sys_time> next_open(std::span<const window> windows, sys_time t) noexcept;
// For t inside some window: the first instant after t that lies in no window
// (windows that touch or overlap are one stretch). nullopt when t is in no
// window, or when the windows cover the whole day (sending never stops).
std::optional<sys_time> next_close(std::span<const window> windows, sys_time t) noexcept;

} // namespace edgerelay::bandwidth
