#include "telemetry/logging.hpp"
#include "util/clock.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <catch2/catch.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <sstream>
#include <string>
#include <vector>

using namespace edgerelay;
using namespace edgerelay::telemetry;
using namespace std::chrono;
using Catch::Matchers::Contains;

namespace {

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);)
    out.push_back(l);
  return out;
}

// A logger writing into a string, with the given formatter.
struct captured_logger {
  std::ostringstream out;
  std::shared_ptr<spdlog::logger> log;
  explicit captured_logger(const std::string& name, std::unique_ptr<spdlog::formatter> f) {
    log = std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::ostream_sink_st>(out));
    log->set_formatter(std::move(f));
    log->set_level(spdlog::level::trace);
  }
};

} // namespace

TEST_CASE("a json log line is one parseable object with ts, level, logger, thread and msg", "[telemetry]") {
  auto t =
      sys_days{year{2026} / 11 / 23} + hours{8} + minutes{56} + seconds{55} + milliseconds{123} + microseconds{999};
  util::manual_clock clk(time_point_cast<system_clock::duration>(t));
  captured_logger c("node", make_log_formatter(log_format::json, &clk));
  c.log->warn("peer {}: connection closed: {}", "hub", "eof");
  auto lines = lines_of(c.out.str());
  REQUIRE(lines.size() == 1);
  auto v = boost::json::parse(lines[0]);
  auto& o = v.as_object();
  CHECK(o.at("ts").as_string() == "2026-11-23T08:56:55.123Z");
  CHECK(o.at("level").as_string() == "warning");
  CHECK(o.at("logger").as_string() == "node");
  CHECK(o.at("msg").as_string() == "peer hub: connection closed: eof");
  CHECK(o.at("thread").is_number());
  CHECK(o.size() == 5);
}

TEST_CASE("a json log line escapes quotes, backslashes, newlines and control characters", "[telemetry]") {
  util::manual_clock clk;
  captured_logger c("", make_log_formatter(log_format::json, &clk));
  const std::string nasty = std::string("say \"hi\"\\ C:\\path\nsecond line\r\ttab\b\f bell\a nul") +
                            std::string(1, '\0') + " del\x7f unicode \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
  c.log->error("{}", nasty);
  c.log->info("bad utf-8: \xff\xc3( and a lone continuation \x80 end");
  auto lines = lines_of(c.out.str());
  REQUIRE(lines.size() == 2); // the newline inside the message did not split the line
  auto first = boost::json::parse(lines[0]);
  CHECK(first.as_object().at("msg").as_string() == nasty);
  CHECK(first.as_object().at("level").as_string() == "error");
  CHECK(first.as_object().at("logger").as_string() == "");
  auto second = boost::json::parse(lines[1]); // throws if the line is not valid UTF-8 JSON
  CHECK(second.as_object().at("msg").as_string() ==
        "bad utf-8: \xef\xbf\xbd\xef\xbf\xbd( and a lone continuation \xef\xbf\xbd end");
}

TEST_CASE("json string escaping writes control bytes as unicode escapes (u00XX)", "[telemetry]") {
  std::string out;
  append_json_string(out, std::string("a\x01z\x1f", 4));
  CHECK(out == R"("a\u0001z\u001f")");
  out.clear();
  append_json_string(out, "");
  CHECK(out == R"("")");
}

TEST_CASE("log format names parse and print", "[telemetry]") {
  CHECK(parse_log_format("text") == log_format::text);
  CHECK(parse_log_format("json") == log_format::json);
  CHECK_FALSE(parse_log_format("JSON").has_value());
  CHECK_FALSE(parse_log_format("").has_value());
  CHECK(std::string(to_string(log_format::json)) == "json");
  CHECK(std::string(to_string(log_format::text)) == "text");
}

TEST_CASE("the text format keeps spdlog's default pattern", "[telemetry]") {
  captured_logger c("", make_log_formatter(log_format::text));
  c.log->info("hello {}", 1);
  auto lines = lines_of(c.out.str());
  REQUIRE(lines.size() == 1);
  CHECK_THAT(lines[0], Contains("[info] hello 1"));
  CHECK(lines[0].front() == '[');
}

TEST_CASE("configure_default_logger switches the default logger between json and text", "[telemetry]") {
  auto previous = spdlog::default_logger();
  std::ostringstream out;
  auto mine = std::make_shared<spdlog::logger>("", std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  spdlog::set_default_logger(mine);
  configure_default_logger(log_format::json);
  spdlog::info("as json: {}", "\"quoted\"");
  configure_default_logger(log_format::text);
  spdlog::info("as text");
  spdlog::set_default_logger(previous);
  auto lines = lines_of(out.str());
  REQUIRE(lines.size() == 2);
  CHECK(boost::json::parse(lines[0]).as_object().at("msg").as_string() == "as json: \"quoted\"");
  CHECK_THAT(lines[1], Contains("[info] as text"));
}
