#include "util/units.hpp"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace util = edgerelay::util;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;
using std::chrono::milliseconds;

namespace {

constexpr std::uint64_t max_u64 = std::numeric_limits<std::uint64_t>::max();
constexpr std::uint64_t KiB = 1024, MiB = KiB * 1024, GiB = MiB * 1024, TiB = GiB * 1024;

template <class T>
std::string error_of(const util::parsed<T>& r) {
  REQUIRE(r.has_error());
  return r.error().message;
}

std::uint64_t size_of(std::string_view text) {
  const auto r = util::parse_size(text);
  INFO(text << ": " << (r ? std::string("ok") : r.error().message));
  REQUIRE(r.has_value());
  return *r;
}

milliseconds duration_of(std::string_view text) {
  const auto r = util::parse_duration(text);
  INFO(text << ": " << (r ? std::string("ok") : r.error().message));
  REQUIRE(r.has_value());
  return *r;
}

std::uint64_t rate_of(std::string_view text) {
  const auto r = util::parse_rate(text);
  INFO(text << ": " << (r ? std::string("ok") : r.error().message));
  REQUIRE(r.has_value());
  return *r;
}

} // namespace

// ---------------------------------------------------------------- parse_size

TEST_CASE("parse_size reads a bare number or B as bytes") {
  CHECK(size_of("512") == 512);
  CHECK(size_of("0") == 0);
  CHECK(size_of("512B") == 512);
  CHECK(size_of("512 B") == 512);
  CHECK(size_of("007") == 7);
}

TEST_CASE("parse_size accepts binary and decimal units") {
  CHECK(size_of("64KB") == 64'000);
  CHECK(size_of("64kB") == 64'000);
  CHECK(size_of("3MB") == 3'000'000);
  CHECK(size_of("2GB") == 2'000'000'000);
  CHECK(size_of("1TB") == 1'000'000'000'000);
  CHECK(size_of("1KiB") == KiB);
  CHECK(size_of("4 MiB") == 4 * MiB);
  CHECK(size_of("10GiB") == 10 * GiB);
  CHECK(size_of("2TiB") == 2 * TiB);
}

TEST_CASE("parse_size ignores surrounding whitespace and allows whitespace before the unit") {
  CHECK(size_of("  10GiB\t\n") == 10 * GiB);
  CHECK(size_of("4\tMiB") == 4 * MiB);
  CHECK(size_of(" 4  MiB ") == 4 * MiB);
}

TEST_CASE("parse_size accepts a decimal that comes to whole bytes, exactly") {
  CHECK(size_of("1.5KiB") == 1536);
  CHECK(size_of("0.5KB") == 500);
  CHECK(size_of("1.25MB") == 1'250'000);
  CHECK(size_of("2.50GiB") == 2 * GiB + GiB / 2);
  CHECK(size_of("1.000B") == 1);
  // 2^-40 written out: exact arithmetic, no floating point rounding.
  CHECK(size_of("0.0000000000009094947017729282379150390625TiB") == 1);
}

TEST_CASE("parse_size refuses a fraction of a byte") {
  for (const char* text : {"0.3B", "0.3", "1.0001KiB", "0.0000000000009094947017729282379150390624TiB"}) {
    const auto msg = error_of(util::parse_size(text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(text) + "\" is not a size"));
    CHECK_THAT(msg, Contains("not a whole number of bytes"));
  }
}

TEST_CASE("parse_size accepts up to 2^64-1 bytes and says when a size overflows") {
  CHECK(size_of("18446744073709551615") == max_u64);
  CHECK(size_of("18446744073709551615B") == max_u64);
  CHECK(size_of("18446744073.709551615GB") == max_u64);
  CHECK(size_of("16777215TiB") == max_u64 - TiB + 1);
  for (const char* text : {"18446744073709551616", "18446744073.709551616GB", "16777216TiB", "99999999999999999999999",
                           "18446744073709551616.5"}) {
    const auto msg = error_of(util::parse_size(text));
    CHECK_THAT(msg, Contains("\"" + std::string(text) + "\" is not a size"));
    CHECK_THAT(msg, Contains("too large"));
    CHECK_THAT(msg, Contains("18446744073709551615 bytes"));
  }
}

TEST_CASE("parse_size names an unknown unit and lists the accepted ones") {
  CHECK(error_of(util::parse_size("10GiBx")) ==
        "\"10GiBx\" is not a size: unknown unit \"GiBx\" (use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)");
  const auto eib = error_of(util::parse_size("16EiB"));
  CHECK_THAT(eib, Contains("\"16EiB\" is not a size: unknown unit \"EiB\""));
  CHECK_THAT(error_of(util::parse_size("1PB")), Contains("unknown unit \"PB\""));
  CHECK_THAT(error_of(util::parse_size("10 GiB x")), Contains("unknown unit \"GiB x\""));
  CHECK_THAT(error_of(util::parse_size("1,000")), Contains("unknown unit \",000\""));
  CHECK_THAT(error_of(util::parse_size("0x10")), Contains("unknown unit \"x10\""));
}

TEST_CASE("parse_size units are case-sensitive and the error says so") {
  for (const char* text : {"10gib", "10GIB", "10kb", "10mb", "1b"}) {
    const auto msg = error_of(util::parse_size(text));
    CHECK_THAT(msg, Contains("\"" + std::string(text) + "\" is not a size: unknown unit"));
    CHECK_THAT(msg, Contains("units are case-sensitive"));
  }
  CHECK_THAT(error_of(util::parse_size("10xyz")), !Contains("case-sensitive"));
}

TEST_CASE("parse_size refuses empty input") {
  for (const char* text : {"", "   ", "\t\n"}) {
    const auto msg = error_of(util::parse_size(text));
    CHECK_THAT(msg, Contains("is not a size: it is empty"));
    CHECK_THAT(msg, Contains("\"10GiB\""));
  }
}

TEST_CASE("parse_size refuses what is not a plain non-negative decimal number") {
  struct row {
    const char* text;
    const char* reason;
  };
  const row rows[] = {
      {"-1KB", "negative numbers are not allowed"},
      {"-0.5", "negative numbers are not allowed"},
      {"+1KB", "without a \"+\" sign"},
      {"nan", "does not start with a number"},
      {"inf", "does not start with a number"},
      {"KB", "does not start with a number"},
      {"-", "does not start with a number"},
      {"1e3", "exponent forms like \"1e3\" are not accepted"},
      {"1E3KB", "exponent forms"},
      {"2.5e-1MB", "exponent forms"},
      {"1.", "decimal point needs digits on both sides"},
      {".5KB", "decimal point needs digits on both sides"},
      {"1.KB", "decimal point needs digits on both sides"},
      {"1.2.3", "at most one decimal point"},
  };
  for (const auto& r : rows) {
    const auto msg = error_of(util::parse_size(r.text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(r.text) + "\" is not a size: "));
    CHECK_THAT(msg, Contains(r.reason));
  }
}

TEST_CASE("error messages escape control characters and cut long input") {
  CHECK_THAT(error_of(util::parse_size("1\x01")), StartsWith("\"1\\x01\" is not a size"));
  CHECK_THAT(error_of(util::parse_size("1\"B")), StartsWith("\"1\\\"B\" is not a size"));
  const std::string long_text = "1" + std::string(200, 'x');
  const auto msg = error_of(util::parse_size(long_text));
  CHECK_THAT(msg, StartsWith("\"1" + std::string(63, 'x') + "\"... is not a size"));
  CHECK(msg.size() < 300);
}

TEST_CASE("value() on a failed parse throws std::invalid_argument with the message") {
  CHECK(util::parse_size("10GiB").value() == 10 * GiB);
  CHECK_THROWS_AS(static_cast<void>(util::parse_size("10GiBx").value()), std::invalid_argument);
  CHECK_THROWS_WITH(static_cast<void>(util::parse_duration("30").value()), Contains("\"30\" is not a duration"));
  CHECK_THROWS_WITH(static_cast<void>(util::parse_rate("2MB").value()), Contains("\"2MB\" is not a rate"));
}

// ------------------------------------------------------------ parse_duration

TEST_CASE("parse_duration accepts each unit") {
  CHECK(duration_of("250ms") == milliseconds(250));
  CHECK(duration_of("30s") == std::chrono::seconds(30));
  CHECK(duration_of("5m") == std::chrono::minutes(5));
  CHECK(duration_of("2h") == std::chrono::hours(2));
  CHECK(duration_of("7d") == std::chrono::hours(7 * 24));
  CHECK(duration_of("0s") == milliseconds(0));
  CHECK(duration_of("0ms") == milliseconds(0));
}

TEST_CASE("parse_duration adds groups written from the largest unit to the smallest") {
  CHECK(duration_of("1h30m") == std::chrono::minutes(90));
  CHECK(duration_of("1m30s") == std::chrono::seconds(90));
  CHECK(duration_of("1d2h3m4s5ms") == milliseconds(86'400'000 + 7'200'000 + 180'000 + 4'000 + 5));
  CHECK(duration_of("1h5s") == milliseconds(3'605'000));
  CHECK(duration_of("1m 30s") == std::chrono::seconds(90));
  CHECK(duration_of(" 1 h 30 m ") == std::chrono::minutes(90));
}

TEST_CASE("parse_duration accepts a decimal that comes to whole milliseconds") {
  CHECK(duration_of("1.5s") == milliseconds(1500));
  CHECK(duration_of("0.5h") == std::chrono::minutes(30));
  CHECK(duration_of("0.001s") == milliseconds(1));
  CHECK(duration_of("1.5m30s") == std::chrono::minutes(2));
  for (const char* text : {"1.0005s", "1.5ms", "0.0001s", "1h0.5ms"}) {
    const auto msg = error_of(util::parse_duration(text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(text) + "\" is not a duration"));
    CHECK_THAT(msg, Contains("is not a whole number of milliseconds"));
    CHECK_THAT(msg, Contains("milliseconds is the resolution"));
  }
}

TEST_CASE("parse_duration refuses a number without a unit") {
  CHECK(error_of(util::parse_duration("30")) ==
        "\"30\" is not a duration: the number \"30\" has no unit (add a unit: ms, s, m, h, d)");
  CHECK_THAT(error_of(util::parse_duration("1h30")), Contains("the number \"30\" has no unit"));
  CHECK_THAT(error_of(util::parse_duration("30 45s")), Contains("the number \"30\" has no unit"));
  CHECK_THAT(error_of(util::parse_duration("0")), Contains("add a unit: ms, s, m, h, d"));
}

TEST_CASE("parse_duration refuses units finer than a millisecond and says milliseconds is the resolution") {
  for (const char* text : {"500us", "10ns", "5\xC2\xB5s", "1s500us"}) {
    const auto msg = error_of(util::parse_duration(text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(text) + "\" is not a duration"));
    CHECK_THAT(msg, Contains("milliseconds is the resolution"));
  }
  CHECK_THAT(error_of(util::parse_duration("500us")), Contains("the unit \"us\" is too fine"));
}

TEST_CASE("parse_duration names an unknown unit") {
  CHECK(error_of(util::parse_duration("5x")) == "\"5x\" is not a duration: unknown unit \"x\" (use ms, s, m, h or d)");
  CHECK_THAT(error_of(util::parse_duration("5sec")), Contains("unknown unit \"sec\""));
  CHECK_THAT(error_of(util::parse_duration("1w")), Contains("unknown unit \"w\""));
  CHECK_THAT(error_of(util::parse_duration("30s,5ms")), Contains("unknown unit \"s,\""));
  const auto upper = error_of(util::parse_duration("5S"));
  CHECK_THAT(upper, Contains("unknown unit \"S\""));
  CHECK_THAT(upper, Contains("units are case-sensitive"));
}

TEST_CASE("parse_duration refuses groups that repeat a unit or grow") {
  const auto grows = error_of(util::parse_duration("30s5m"));
  CHECK_THAT(grows, StartsWith("\"30s5m\" is not a duration: \"5m\" comes after \"30s\""));
  CHECK_THAT(grows, Contains("from the largest unit to the smallest"));
  CHECK_THAT(error_of(util::parse_duration("1ms1s")), Contains("\"1s\" comes after \"1ms\""));
  CHECK_THAT(error_of(util::parse_duration("1h1d")), Contains("days are larger than hours"));
  const auto twice = error_of(util::parse_duration("1m1m"));
  CHECK_THAT(twice, StartsWith("\"1m1m\" is not a duration"));
  CHECK_THAT(twice, Contains("the unit \"m\" appears twice"));
  CHECK_THAT(error_of(util::parse_duration("1h30m1h")), Contains("\"1h\" comes after \"30m\""));
}

TEST_CASE("parse_duration accepts up to 2^63-1 ms and says when a duration overflows") {
  CHECK(duration_of("9223372036854775807ms") == milliseconds::max());
  CHECK(duration_of("106751991167d") == milliseconds(106751991167LL * 86'400'000));
  for (const char* text : {"9223372036854775808ms", "106751991168d", "106751991167d25h", "18446744073709551616ms",
                           "99999999999999999999d"}) {
    const auto msg = error_of(util::parse_duration(text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(text) + "\" is not a duration"));
    CHECK_THAT(msg, Contains("too large"));
  }
}

TEST_CASE("parse_duration refuses empty, negative, exponent and malformed input") {
  struct row {
    const char* text;
    const char* reason;
  };
  const row rows[] = {
      {"", "it is empty"},
      {"  ", "it is empty"},
      {"-5s", "negative numbers are not allowed"},
      {"1h -5m", "negative numbers are not allowed"},
      {"+5s", "without a \"+\" sign"},
      {"1e3ms", "exponent forms"},
      {"s", "does not start with a number"},
      {"nan", "does not start with a number"},
      {"1h x", "expected a number after \"1h\" but found \"x\""},
      {".5s", "decimal point needs digits on both sides"},
      {"1.s", "decimal point needs digits on both sides"},
  };
  for (const auto& r : rows) {
    const auto msg = error_of(util::parse_duration(r.text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(r.text) + "\" is not a duration: "));
    CHECK_THAT(msg, Contains(r.reason));
  }
}

// ---------------------------------------------------------------- parse_rate

TEST_CASE("parse_rate converts bit units to bytes per second") {
  CHECK(rate_of("10Mbit") == 1'250'000);
  CHECK(rate_of("10Mbit/s") == 1'250'000);
  CHECK(rate_of("10Mbps") == 1'250'000);
  CHECK(rate_of("8Mbit") == 1'000'000);
  CHECK(rate_of("1Gbit") == 125'000'000);
  CHECK(rate_of("1Gbps") == 125'000'000);
  CHECK(rate_of("100Kbit") == 12'500);
  CHECK(rate_of("100kbit/s") == 12'500);
  CHECK(rate_of("100kbps") == 12'500);
  CHECK(rate_of("800bit") == 100);
  CHECK(rate_of("800bit/s") == 100);
  CHECK(rate_of("800bps") == 100);
  CHECK(rate_of("2.5Mbit") == 312'500);
  CHECK(rate_of(" 10 Mbit ") == 1'250'000);
}

TEST_CASE("parse_rate accepts byte units followed by /s") {
  CHECK(rate_of("2MB/s") == 2'000'000);
  CHECK(rate_of("100B/s") == 100);
  CHECK(rate_of("64KB/s") == 64'000);
  CHECK(rate_of("64kB/s") == 64'000);
  CHECK(rate_of("1GB/s") == 1'000'000'000);
  CHECK(rate_of("1KiB/s") == KiB);
  CHECK(rate_of("1.5MiB/s") == MiB + MiB / 2);
  CHECK(rate_of("2 GiB/s") == 2 * GiB);
}

TEST_CASE("parse_rate rounds down to whole bytes per second") {
  CHECK(rate_of("12bit") == 1);
  CHECK(rate_of("15bit") == 1);
  CHECK(rate_of("1.001Kbit") == 125); // 1001 bits = 125.125 B/s
  CHECK(rate_of("1.5B/s") == 1);
  CHECK(rate_of("0.0015KB/s") == 1);
}

TEST_CASE("parse_rate refuses a rate that comes to 0 B/s") {
  for (const char* text : {"4bit", "7bps", "0Mbit", "0B/s", "0.5B/s", "0.001Kbit"}) {
    const auto msg = error_of(util::parse_rate(text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(text) + "\" is not a rate"));
    CHECK_THAT(msg, Contains("it comes to 0 B/s"));
  }
}

TEST_CASE("parse_rate refuses a byte unit without /s") {
  for (const char* text : {"2MB", "100B", "1KiB", "64 kB"}) {
    const auto msg = error_of(util::parse_rate(text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(text) + "\" is not a rate"));
    CHECK_THAT(msg, Contains("a rate needs /s, or a bit unit like Mbit"));
  }
  CHECK_THAT(error_of(util::parse_rate("2MB")), Contains("\"2MB/s\""));
}

TEST_CASE("parse_rate refuses a number without a unit") {
  const auto msg = error_of(util::parse_rate("100"));
  CHECK_THAT(msg, StartsWith("\"100\" is not a rate: it has no unit"));
  CHECK_THAT(msg, Contains("\"10Mbit\""));
  CHECK_THAT(msg, Contains("\"2MB/s\""));
}

TEST_CASE("parse_rate names an unknown unit and lists the accepted ones") {
  for (const char* text : {"10Mb", "2TB/s", "10Mbitps", "10Mbit/sec", "2MBps", "10 Mbit x"}) {
    const auto msg = error_of(util::parse_rate(text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(text) + "\" is not a rate: unknown unit"));
    CHECK_THAT(msg, Contains("Mbit"));
    CHECK_THAT(msg, Contains("MB/s"));
  }
  CHECK_THAT(error_of(util::parse_rate("10Mb")), Contains("unknown unit \"Mb\""));
  CHECK_THAT(error_of(util::parse_rate("10mbit")), Contains("units are case-sensitive"));
}

TEST_CASE("parse_rate accepts up to 2^64-1 B/s and says when a rate overflows") {
  CHECK(rate_of("18446744073709551615B/s") == max_u64);
  CHECK(rate_of("147573952589Gbit") == 147573952589ULL * 125'000'000);
  for (const char* text : {"18446744073709551616B/s", "147573952590Gbit", "17179869184GiB/s"}) {
    const auto msg = error_of(util::parse_rate(text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(text) + "\" is not a rate"));
    CHECK_THAT(msg, Contains("too large"));
  }
}

TEST_CASE("parse_rate refuses empty, negative, exponent and malformed input") {
  struct row {
    const char* text;
    const char* reason;
  };
  const row rows[] = {
      {"", "it is empty"},
      {"-1Mbit", "negative numbers are not allowed"},
      {"1e6bit", "exponent forms"},
      {"nan", "does not start with a number"},
      {"Mbit", "does not start with a number"},
      {"1.Mbit", "decimal point needs digits on both sides"},
  };
  for (const auto& r : rows) {
    const auto msg = error_of(util::parse_rate(r.text));
    CHECK_THAT(msg, StartsWith("\"" + std::string(r.text) + "\" is not a rate: "));
    CHECK_THAT(msg, Contains(r.reason));
  }
}

// ---------------------------------------------------------------- formatting

TEST_CASE("format_size picks the largest unit that shows the size exactly") {
  CHECK(util::format_size(0) == "0 B");
  CHECK(util::format_size(512) == "512 B");
  CHECK(util::format_size(1023) == "1023 B");
  CHECK(util::format_size(1024) == "1 KiB");
  CHECK(util::format_size(1536) == "1.5 KiB");
  CHECK(util::format_size(1000) == "1 KB");
  CHECK(util::format_size(1100) == "1.1 KB");
  CHECK(util::format_size(MiB + MiB / 2) == "1.5 MiB");
  CHECK(util::format_size(1'250'000) == "1.25 MB");
  CHECK(util::format_size(10 * GiB) == "10 GiB");
  CHECK(util::format_size(2 * TiB) == "2 TiB");
  CHECK(util::format_size(5'000 * TiB) == "5000 TiB");
  CHECK(util::format_size(1'234'567) == "1234567 B");
  CHECK(util::format_size(max_u64) == "18446744073709551615 B");
}

TEST_CASE("format_duration writes groups from days down to milliseconds") {
  CHECK(util::format_duration(milliseconds(0)) == "0s");
  CHECK(util::format_duration(milliseconds(250)) == "250ms");
  CHECK(util::format_duration(milliseconds(1500)) == "1s500ms");
  CHECK(util::format_duration(std::chrono::seconds(30)) == "30s");
  CHECK(util::format_duration(std::chrono::seconds(90)) == "1m30s");
  CHECK(util::format_duration(std::chrono::minutes(90)) == "1h30m");
  CHECK(util::format_duration(std::chrono::hours(7 * 24)) == "7d");
  CHECK(util::format_duration(std::chrono::hours(25) + milliseconds(1)) == "1d1h1ms");
  CHECK(util::format_duration(-std::chrono::seconds(90)) == "-1m30s");
  CHECK_THAT(util::format_duration(milliseconds::min()), StartsWith("-106751991167d"));
}

TEST_CASE("format_rate picks the largest byte unit that shows the rate exactly") {
  CHECK(util::format_rate(1'250'000) == "1.25 MB/s");
  CHECK(util::format_rate(2'000'000) == "2 MB/s");
  CHECK(util::format_rate(MiB) == "1 MiB/s");
  CHECK(util::format_rate(125) == "125 B/s");
  CHECK(util::format_rate(125'000'000) == "125 MB/s");
  CHECK(util::format_rate(3 * GiB) == "3 GiB/s");
  CHECK(util::format_rate(5 * TiB) == "5120 GiB/s");
}

namespace {

// Typical configuration values plus a spread of awkward ones.
std::vector<std::uint64_t> sample_values() {
  std::vector<std::uint64_t> v = {1,           7,          512,           999,     1000,      1024,
                                  1100,        1536,       4096,          64'000,  1'250'000, MiB + MiB / 4,
                                  10 * GiB,    GiB - 1,    1'000'000'000, 3 * TiB, TiB + 1,   max_u64,
                                  max_u64 - 1, max_u64 / 3};
  for (std::uint64_t i = 1; i < 4000; ++i)
    v.push_back(i * 37);
  for (std::uint64_t x = 1; x < max_u64 / 3; x *= 3)
    v.push_back(x);
  return v;
}

} // namespace

TEST_CASE("format_size output parses back to the same size") {
  for (const auto v : sample_values()) {
    INFO(v << " -> " << util::format_size(v));
    CHECK(size_of(util::format_size(v)) == v);
  }
}

TEST_CASE("format_rate output parses back to the same rate") {
  for (const auto v : sample_values()) {
    INFO(v << " -> " << util::format_rate(v));
    CHECK(rate_of(util::format_rate(v)) == v);
  }
}

TEST_CASE("format_duration output parses back to the same duration") {
  std::vector<milliseconds> ds = {milliseconds(0),
                                  milliseconds(1),
                                  milliseconds(250),
                                  std::chrono::seconds(30),
                                  std::chrono::seconds(90),
                                  std::chrono::minutes(90),
                                  std::chrono::hours(24 * 7),
                                  std::chrono::hours(25) + milliseconds(1),
                                  milliseconds::max()};
  for (std::int64_t i = 1; i < 4000; ++i)
    ds.emplace_back(i * i * 7919);
  for (const auto d : ds) {
    INFO(d.count() << " -> " << util::format_duration(d));
    CHECK(duration_of(util::format_duration(d)) == d);
  }
}
