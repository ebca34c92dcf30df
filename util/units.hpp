#pragma once
// Parsers and formatters for the quantities written in configuration files and
// on the command line: sizes (bytes), durations (milliseconds) and rates
// (bytes per second). All functions are pure, thread-safe, locale-independent
// and never throw (only .value() on a failed result throws, see below).
//
// Grammar common to all three (ASCII only; "ws" is space, \t, \n, \v, \f, \r):
//
//   input   = ws* body ws*                 leading/trailing ws is ignored
//   number  = digit+ [ "." digit+ ]        e.g. "10", "1.5", "0.25"
//
//   Not a number: an empty or all-ws input, a sign ("-1", "+1"), "nan", "inf",
//   a point without digits on both sides ("1.", ".5"), a second point
//   ("1.2.3"), an exponent ("1e3", "2E-1"), digit separators ("1,000", "1_000").
//   A decimal number is computed exactly (integer arithmetic, no rounding).
//
// size (parse_size, result in bytes):
//
//   body    = number ws* [ unit ]
//   unit    = "B"                          1 (same as no unit)
//           | "KB" | "kB" | "MB" | "GB" | "TB"      1000^1 .. 1000^4
//           | "KiB" | "MiB" | "GiB" | "TiB"         1024^1 .. 1024^4
//
//   Units are case-sensitive ("kB" is the only alternative spelling). The
//   result must be a whole number of bytes ("1.5KiB" = 1536, "0.3B" is an
//   error) and at most 2^64-1. Examples: "512", "64KB", "4 MiB", "10GiB".
//
// duration (parse_duration, result in milliseconds):
//
//   body    = group ( ws* group )*
//   group   = number ws* unit
//   unit    = "ms" | "s" | "m" | "h" | "d"           (d = 24h)
//
//   Every group needs a unit, including the last ("1h30" is an error). Groups
//   go from larger to smaller units and each unit appears at most once
//   ("1h30m", "1m30s"; "30s5m" and "1m1m" are errors). Milliseconds is the
//   resolution: "us", "µs" and "ns" are refused, and each group must be a
//   whole number of milliseconds ("1.5s" = 1500ms, "1.0005s" is an error).
//   The total is at most 2^63-1 ms (the range of std::chrono::milliseconds).
//   Examples: "250ms", "30s", "7d", "1h30m", "1m 30s".
//
// rate (parse_rate, result in bytes per second):
//
//   body    = number ws* unit
//   unit    = bit_unit [ "/s" ]  | bit_ps  | byte_unit "/s"
//   bit_unit  = "bit" | "Kbit" | "kbit" | "Mbit" | "Gbit"    1000^0 .. 1000^3 bits
//   bit_ps    = "bps" | "Kbps" | "kbps" | "Mbps" | "Gbps"    same, per second
//   byte_unit = "B" | "KB" | "kB" | "MB" | "GB" | "KiB" | "MiB" | "GiB"
//
//   A bare number has no unit and is an error, as is a byte unit without "/s"
//   ("2MB": a rate needs /s, or a bit unit like Mbit). The value is converted
//   to bytes per second and rounded down to a whole number ("1Kbit" = 125,
//   "1.5B/s" = 1, "12bit" = 1); a rate that comes to 0 B/s is an error, as is
//   one above 2^64-1 B/s. Examples: "10Mbit" = "10Mbit/s" = "10Mbps" =
//   1'250'000, "2MB/s" = 2'000'000, "8Mbit" = 1'000'000.
//
// Every error message is one sentence that quotes the input as given (control
// characters escaped, long inputs cut after 64 bytes), says why it was refused
// and what is accepted, e.g.
//   "10GiBx" is not a size: unknown unit "GiBx" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)

#include <boost/assert/source_location.hpp>
#include <boost/system/result.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace edgerelay::util {

// Why a text could not be parsed: a complete human sentence.
struct parse_error {
  std::string message;
};

// Found by ADL from parsed<T>::value(): throws std::invalid_argument carrying
// the message (through boost::throw_with_location, which records the caller).
[[noreturn]] void throw_exception_from_error(const parse_error& e, const boost::source_location& loc);

template <class T>
using parsed = boost::system::result<T, parse_error>;

parsed<std::uint64_t> parse_size(std::string_view text);
parsed<std::chrono::milliseconds> parse_duration(std::string_view text);
parsed<std::uint64_t> parse_rate(std::string_view text);

// The formatters are exact: parse_*(format_*(x)) == x for every x the parser
// can produce, so their output is safe to write back into a configuration.
//
// format_size uses the largest unit among TiB, TB, GiB, GB, MiB, MB, KiB, KB
// in which the value is at least 1 and exact with at most two decimals, else
// bytes: 512 -> "512 B", 1536 -> "1.5 KiB", 1'250'000 -> "1.25 MB",
// 1100 -> "1.1 KB", 1234567 -> "1234567 B".
std::string format_size(std::uint64_t bytes);

// Groups from days down to milliseconds, zero groups left out: "7d", "1h30m",
// "1m30s", "250ms", "1s500ms"; zero is "0s"; a negative duration gets a
// leading "-" (which parse_duration does not accept).
std::string format_duration(std::chrono::milliseconds d);

// Like format_size over GiB/s, GB/s, MiB/s, MB/s, KiB/s, KB/s, else B/s:
// 1'250'000 -> "1.25 MB/s", 1048576 -> "1 MiB/s", 125 -> "125 B/s".
std::string format_rate(std::uint64_t bytes_per_s);

// RFC 3339 in UTC with milliseconds: "2026-11-23T09:05:00.123Z".
std::string format_utc(std::chrono::system_clock::time_point t);

} // namespace edgerelay::util
