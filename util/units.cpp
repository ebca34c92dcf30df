#include "util/units.hpp"

#include "util/text.hpp"
#include <cstdio>
#include <ctime>

#include <boost/throw_exception.hpp>
#include <limits>
#include <stdexcept>

namespace edgerelay::util {
namespace {

constexpr std::uint64_t max_ms = static_cast<std::uint64_t>(std::numeric_limits<std::chrono::milliseconds::rep>::max());

bool is_space(char c) noexcept { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }
bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
char ascii_lower(char c) noexcept { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

bool equal_ignoring_case(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  return true;
}

std::string_view trim_left(std::string_view s) noexcept {
  while (!s.empty() && is_space(s.front()))
    s.remove_prefix(1);
  return s;
}
std::string_view trim(std::string_view s) noexcept {
  s = trim_left(s);
  while (!s.empty() && is_space(s.back()))
    s.remove_suffix(1);
  return s;
}

parse_error fail(std::string_view noun, std::string_view text, std::string_view reason) {
  std::string m = quote(text);
  m += " is not a ";
  m += noun;
  m += ": ";
  m += reason;
  return {std::move(m)};
}

// A number as written: the integer part's value and the fraction's digits.
struct number {
  std::string_view text;
  std::uint64_t whole = 0;
  bool whole_overflow = false;
  std::string_view fraction;
};

enum class number_problem { none, not_a_number, negative, sign, bad_point, second_point, exponent };

// Reads `number = digit+ [ "." digit+ ]` from the front of s and advances s
// past it. Refuses an exponent right after the number so that "1e3" is not
// taken for the number 1 with the unit "e3".
number_problem read_number(std::string_view& s, number& out) noexcept {
  if (s.empty()) return number_problem::not_a_number;
  const bool digit_next = s.size() > 1 && (is_digit(s[1]) || s[1] == '.');
  if (s[0] == '-') return digit_next ? number_problem::negative : number_problem::not_a_number;
  if (s[0] == '+') return digit_next ? number_problem::sign : number_problem::not_a_number;
  if (s[0] == '.') return digit_next ? number_problem::bad_point : number_problem::not_a_number;
  if (!is_digit(s[0])) return number_problem::not_a_number;

  std::size_t i = 0;
  for (; i < s.size() && is_digit(s[i]); ++i) {
    const auto d = static_cast<std::uint64_t>(s[i] - '0');
    if (__builtin_mul_overflow(out.whole, std::uint64_t{10}, &out.whole) ||
        __builtin_add_overflow(out.whole, d, &out.whole))
      out.whole_overflow = true;
  }
  if (i < s.size() && s[i] == '.') {
    const std::size_t start = ++i;
    while (i < s.size() && is_digit(s[i]))
      ++i;
    if (i == start) return number_problem::bad_point;
    out.fraction = s.substr(start, i - start);
    if (i < s.size() && s[i] == '.') return number_problem::second_point;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    std::size_t j = i + 1;
    if (j < s.size() && (s[j] == '+' || s[j] == '-')) ++j;
    if (j < s.size() && is_digit(s[j])) return number_problem::exponent;
  }
  out.text = s.substr(0, i);
  s.remove_prefix(i);
  return number_problem::none;
}

std::string describe(number_problem p, std::string_view example) {
  switch (p) {
  case number_problem::none: break;
  case number_problem::not_a_number: return "it does not start with a number (write e.g. " + std::string(example) + ")";
  case number_problem::negative: return "negative numbers are not allowed (write e.g. " + std::string(example) + ")";
  case number_problem::sign: return "write the number without a \"+\" sign";
  case number_problem::bad_point: return "a decimal point needs digits on both sides (e.g. \"1.5\")";
  case number_problem::second_point: return "a number has at most one decimal point (e.g. \"1.5\")";
  case number_problem::exponent:
    return "exponent forms like \"1e3\" are not accepted (write the digits out, e.g. \"1000\")";
  }
  return "it is not a number";
}

// number * mult, exactly: `value` is the result rounded down, `exact` says
// whether nothing was rounded away.
struct scaled {
  std::uint64_t value = 0;
  bool exact = true;
  bool overflow = false;
};

// The fraction's contribution floor(0.d1d2...dk * mult) is computed from the
// last digit up, g = (d * mult + g) / 10, which never exceeds mult; a non-zero
// remainder at any step means a fractional part that no later step removes.
// mult must be at most 2^64 / 10.
scaled scale(const number& n, std::uint64_t mult) noexcept {
  scaled r;
  std::uint64_t base = 0;
  if (n.whole_overflow || __builtin_mul_overflow(n.whole, mult, &base)) {
    r.overflow = true;
    return r;
  }
  std::uint64_t part = 0;
  for (auto it = n.fraction.rbegin(); it != n.fraction.rend(); ++it) {
    const std::uint64_t t = static_cast<std::uint64_t>(*it - '0') * mult + part;
    if (t % 10 != 0) r.exact = false;
    part = t / 10;
  }
  if (__builtin_add_overflow(base, part, &r.value)) r.overflow = true;
  return r;
}

struct unit_def {
  std::string_view name;
  std::uint64_t mult;
  std::uint64_t divisor = 1; // value = floor(number * mult / divisor)
};

template <std::size_t N>
const unit_def* find_unit(const unit_def (&table)[N], std::string_view name) noexcept {
  for (const auto& u : table)
    if (u.name == name) return &u;
  return nullptr;
}

template <std::size_t N>
bool known_ignoring_case(const unit_def (&table)[N], std::string_view name) noexcept {
  for (const auto& u : table)
    if (equal_ignoring_case(u.name, name)) return true;
  return false;
}

template <std::size_t N>
std::string unknown_unit(const unit_def (&table)[N], std::string_view unit, std::string_view accepted) {
  std::string m = "unknown unit " + quote(unit) + " (use " + std::string(accepted);
  if (known_ignoring_case(table, unit)) m += "; units are case-sensitive";
  m += ")";
  return m;
}

constexpr std::uint64_t kilo = 1000, mega = kilo * 1000, giga = mega * 1000, tera = giga * 1000;
constexpr std::uint64_t kibi = 1024, mebi = kibi * 1024, gibi = mebi * 1024, tebi = gibi * 1024;

constexpr unit_def size_units[] = {
    {"B", 1},     {"KB", kilo},  {"kB", kilo},  {"MB", mega},  {"GB", giga},
    {"TB", tera}, {"KiB", kibi}, {"MiB", mebi}, {"GiB", gibi}, {"TiB", tebi},
};
constexpr std::string_view size_units_text = "B, KB, MB, GB, TB, KiB, MiB, GiB or TiB";

// Ranked from the smallest: groups of a duration must have falling ranks.
constexpr unit_def duration_units[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}, {"d", 86'400'000},
};
constexpr std::string_view duration_unit_names[] = {"milliseconds", "seconds", "minutes", "hours", "days"};
constexpr std::string_view duration_units_text = "ms, s, m, h or d";

// In bytes per second: Kbit and up are whole numbers of bytes; "bit" is
// counted in bits and divided by 8.
constexpr unit_def rate_units[] = {
    {"bit", 1, 8},       {"bit/s", 1, 8},   {"bps", 1, 8},         {"Kbit", 125},           {"Kbit/s", 125},
    {"Kbps", 125},       {"kbit", 125},     {"kbit/s", 125},       {"kbps", 125},           {"Mbit", 125'000},
    {"Mbit/s", 125'000}, {"Mbps", 125'000}, {"Gbit", 125'000'000}, {"Gbit/s", 125'000'000}, {"Gbps", 125'000'000},
    {"B/s", 1},          {"KB/s", kilo},    {"kB/s", kilo},        {"MB/s", mega},          {"GB/s", giga},
    {"KiB/s", kibi},     {"MiB/s", mebi},   {"GiB/s", gibi},
};
// Byte units that are rates once "/s" is added.
constexpr std::string_view rate_byte_units[] = {"B", "KB", "kB", "MB", "GB", "KiB", "MiB", "GiB"};
constexpr std::string_view rate_units_text = "bit, Kbit, Mbit or Gbit, optionally followed by /s, or bps, Kbps, Mbps, "
                                             "Gbps; or B/s, KB/s, MB/s, GB/s, KiB/s, MiB/s or GiB/s";

bool is_sub_millisecond(std::string_view unit) noexcept {
  return unit == "us" || unit == "ns" || unit == "\xC2\xB5s" /* U+00B5 */ || unit == "\xCE\xBCs" /* U+03BC */;
}

struct format_unit {
  std::string_view name;
  std::uint64_t size;
};

// Largest unit (units are listed largest first) in which v is at least 1 and
// exact with at most two decimals; otherwise v in the base unit.
template <std::size_t N>
std::string format_exact(std::uint64_t v, const format_unit (&units)[N], std::string_view base) {
  for (const auto& u : units) {
    if (v < u.size) continue;
    const std::uint64_t rem = v % u.size;
    if (rem * 100 % u.size != 0) continue;
    const std::uint64_t hundredths = rem * 100 / u.size;
    std::string out = std::to_string(v / u.size);
    if (hundredths != 0) {
      out += '.';
      out += static_cast<char>('0' + hundredths / 10);
      if (hundredths % 10 != 0) out += static_cast<char>('0' + hundredths % 10);
    }
    out += ' ';
    out += u.name;
    return out;
  }
  std::string out = std::to_string(v);
  out += ' ';
  out += base;
  return out;
}

} // namespace

void throw_exception_from_error(const parse_error& e, const boost::source_location& loc) {
  boost::throw_with_location(std::invalid_argument(e.message), loc);
}

parsed<std::uint64_t> parse_size(std::string_view text) {
  constexpr std::string_view noun = "size";
  std::string_view s = trim(text);
  if (s.empty())
    return fail(noun, text,
                "it is empty (write a number of bytes with an optional unit, e.g. \"512\", \"64KB\" or \"10GiB\")");
  number n;
  if (const auto p = read_number(s, n); p != number_problem::none) return fail(noun, text, describe(p, "\"10GiB\""));

  const std::string_view unit = trim_left(s);
  std::uint64_t mult = 1;
  if (!unit.empty()) {
    const unit_def* u = find_unit(size_units, unit);
    if (u == nullptr) return fail(noun, text, unknown_unit(size_units, unit, size_units_text));
    mult = u->mult;
  }
  const scaled r = scale(n, mult);
  if (r.overflow)
    return fail(noun, text, "it is too large (a size must fit in 64 bits: at most 18446744073709551615 bytes)");
  if (!r.exact)
    return fail(noun, text,
                "it is not a whole number of bytes (sizes are counted in whole bytes, e.g. \"1.5KiB\" = 1536 bytes)");
  return r.value;
}

parsed<std::chrono::milliseconds> parse_duration(std::string_view text) {
  constexpr std::string_view noun = "duration";
  constexpr std::string_view example = "\"30s\", \"250ms\" or \"1h30m\"";
  std::string_view s = trim(text);
  if (s.empty()) return fail(noun, text, "it is empty (write a number with a unit, e.g. " + std::string(example) + ")");

  std::uint64_t total = 0;
  std::size_t prev_rank = std::size(duration_units);
  std::string_view prev_group;
  while (!s.empty()) {
    const char* const group_begin = s.data();
    number n;
    if (const auto p = read_number(s, n); p != number_problem::none) {
      if (p == number_problem::not_a_number && !prev_group.empty())
        return fail(noun, text, "expected a number after " + quote(prev_group) + " but found " + quote(s));
      return fail(noun, text, describe(p, example));
    }
    s = trim_left(s);
    std::size_t len = 0;
    while (len < s.size() && !is_digit(s[len]) && !is_space(s[len]) && s[len] != '.')
      ++len;
    const std::string_view unit = s.substr(0, len);
    s.remove_prefix(len);
    const std::string_view group(group_begin, static_cast<std::size_t>(s.data() - group_begin));

    if (unit.empty())
      return fail(noun, text, "the number " + quote(n.text) + " has no unit (add a unit: ms, s, m, h, d)");
    if (is_sub_millisecond(unit))
      return fail(noun, text,
                  "the unit " + quote(unit) + " is too fine (milliseconds is the resolution; use " +
                      std::string(duration_units_text) + ")");
    const unit_def* u = find_unit(duration_units, unit);
    if (u == nullptr) return fail(noun, text, unknown_unit(duration_units, unit, duration_units_text));
    const auto rank = static_cast<std::size_t>(u - duration_units);
    if (rank == prev_rank)
      return fail(noun, text,
                  "the unit " + quote(unit) +
                      " appears twice (write each unit once, from the largest to the smallest, "
                      "e.g. \"1h30m\")");
    if (rank > prev_rank)
      return fail(noun, text,
                  quote(group) + " comes after " + quote(prev_group) + " but " +
                      std::string(duration_unit_names[rank]) + " are larger than " +
                      std::string(duration_unit_names[prev_rank]) +
                      " (write the groups from the largest unit to the smallest, e.g. \"1h30m\" or \"1m30s\")");

    const scaled r = scale(n, u->mult);
    if (r.overflow || r.value > max_ms || __builtin_add_overflow(total, r.value, &total) || total > max_ms)
      return fail(noun, text,
                  "it is too large (a duration must fit in 64 bits: at most 9223372036854775807ms, about 292 million "
                  "years)");
    if (!r.exact)
      return fail(noun, text,
                  quote(group) + " is not a whole number of milliseconds (milliseconds is the resolution, e.g. " +
                      "\"1.5s\" = 1500ms)");
    prev_rank = rank;
    prev_group = group;
    s = trim_left(s);
  }
  return std::chrono::milliseconds(static_cast<std::chrono::milliseconds::rep>(total));
}

parsed<std::uint64_t> parse_rate(std::string_view text) {
  constexpr std::string_view noun = "rate";
  std::string_view s = trim(text);
  if (s.empty())
    return fail(noun, text,
                "it is empty (write a number with a unit, e.g. a bit rate \"10Mbit\" or a byte rate \"2MB/s\")");
  number n;
  if (const auto p = read_number(s, n); p != number_problem::none) return fail(noun, text, describe(p, "\"10Mbit\""));

  const std::string_view unit = trim_left(s);
  if (unit.empty())
    return fail(noun, text, "it has no unit (use a bit rate like \"10Mbit\" or a byte rate like \"2MB/s\")");
  const unit_def* u = find_unit(rate_units, unit);
  if (u == nullptr) {
    for (const auto b : rate_byte_units)
      if (unit == b)
        return fail(noun, text,
                    "a rate needs /s, or a bit unit like Mbit (e.g. " +
                        quote(std::string(n.text) + std::string(b) + "/s") + ")");
    return fail(noun, text, unknown_unit(rate_units, unit, rate_units_text));
  }

  const scaled r = scale(n, u->mult);
  if (r.overflow)
    return fail(noun, text, "it is too large (a rate must fit in 64 bits: at most 18446744073709551615 B/s)");
  const std::uint64_t value = r.value / u->divisor;
  if (value == 0)
    return fail(noun, text,
                "it comes to 0 B/s (rates are rounded down to whole bytes per second; the smallest is 1 B/s = 8bit)");
  return value;
}

std::string format_size(std::uint64_t bytes) {
  static constexpr format_unit units[] = {
      {"TiB", tebi}, {"TB", tera}, {"GiB", gibi}, {"GB", giga},
      {"MiB", mebi}, {"MB", mega}, {"KiB", kibi}, {"KB", kilo},
  };
  return format_exact(bytes, units, "B");
}

std::string format_duration(std::chrono::milliseconds d) {
  const auto count = d.count();
  std::string out;
  // Through unsigned arithmetic so that the most negative count has a magnitude.
  std::uint64_t v = static_cast<std::uint64_t>(count);
  if (count < 0) {
    out = "-";
    v = std::uint64_t{0} - v;
  }
  if (v == 0) return "0s";
  for (std::size_t i = std::size(duration_units); i-- > 0;) {
    const unit_def& u = duration_units[i];
    if (v < u.mult) continue;
    out += std::to_string(v / u.mult);
    out += u.name;
    v %= u.mult;
  }
  return out;
}

std::string format_rate(std::uint64_t bytes_per_s) {
  static constexpr format_unit units[] = {
      {"GiB/s", gibi}, {"GB/s", giga}, {"MiB/s", mebi}, {"MB/s", mega}, {"KiB/s", kibi}, {"KB/s", kilo},
  };
  return format_exact(bytes_per_s, units, "B/s");
}

std::string format_utc(std::chrono::system_clock::time_point t) {
  auto ms = std::chrono::floor<std::chrono::milliseconds>(t).time_since_epoch().count();
  std::time_t secs = static_cast<std::time_t>(ms >= 0 ? ms / 1000 : (ms - 999) / 1000);
  int frac = static_cast<int>(ms - static_cast<std::int64_t>(secs) * 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
  return buf;
}

} // namespace edgerelay::util
