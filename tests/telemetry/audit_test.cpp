#include "telemetry/audit.hpp"
#include "tests/support/temp_dir.hpp"
#include "util/clock.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <algorithm>

#include <fstream>
#include <sstream>
#include <sys/stat.h>
#include <thread>

using namespace edgerelay;
using test::slurp;
using namespace edgerelay::telemetry;
using namespace std::chrono;
using Catch::Matchers::Contains;
namespace json = boost::json;

namespace {

const auto t0 = sys_days{year{2026} / 11 / 23} + hours{15} + minutes{40} + seconds{1} + milliseconds{250};

std::vector<json::object> events_in(const std::filesystem::path& p) {
  std::vector<json::object> out;
  std::istringstream in(slurp(p));
  for (std::string l; std::getline(in, l);) {
    INFO(l);
    auto v = json::parse(l);
    REQUIRE(v.is_object());
    out.push_back(v.as_object());
  }
  return out;
}

std::string str(const json::object& o, const char* k) {
  auto* v = o.if_contains(k);
  return v && v->is_string() ? std::string(v->as_string()) : std::string("<missing " + std::string(k) + ">");
}

std::unique_ptr<audit_log> open_log(const std::filesystem::path& p, util::clock& clk) {
  auto a = audit_log::open(p, "edge-1", clk);
  INFO((a ? std::string() : a.error().message));
  REQUIRE(a.has_value());
  return std::move(*a);
}

} // namespace

TEST_CASE("each audit event is one JSON line with time, event, node and its fields", "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  auto a = open_log(dir / "audit.log", clk);
  a->node_started("0.1.0", json::object{{"admin", "127.0.0.1:9310"}});
  a->config_reloaded("/etc/edgerelay/edge.toml", {"queue.max_retry, queue.retry_backoff"}, {"node.sync"},
                     {"listen: cannot read key"});
  a->config_reload_rejected("/etc/edgerelay/edge.toml", {"edge.toml: queue.max_bytes: \"x\" is not a size"});
  a->deadletter_op("retry", {"127.0.0.1", "URI:spiffe://ops/alice"}, json::object{{"all", true}}, 42);
  a->deadletter_op_failed("purge", {"127.0.0.1", ""}, json::object{{"ids", json::array{"a:1"}}}, "store closed");
  a->auth_denied("listen", "127.0.0.9", "URI:spiffe://fleet/outsider", "not_allowed", "identity [...] matches none");
  a->node_stopped();

  auto ev = events_in(dir / "audit.log");
  REQUIRE(ev.size() == 7);
  for (auto& e : ev) {
    CHECK(str(e, "time") == "2026-11-23T15:40:01.250Z");
    CHECK(str(e, "node") == "edge-1");
    // time, event and node come first in every line
    auto it = e.begin();
    CHECK(it->key() == "time");
    CHECK((++it)->key() == "event");
    CHECK((++it)->key() == "node");
  }
  CHECK(str(ev[0], "event") == "node_start");
  CHECK(str(ev[0], "version") == "0.1.0");
  CHECK(ev[0].at("pid").as_int64() == static_cast<std::int64_t>(::getpid()));
  CHECK(str(ev[0].at("listeners").as_object(), "admin") == "127.0.0.1:9310");

  CHECK(str(ev[1], "event") == "config_reload");
  CHECK(ev[1].at("applied").as_array() == json::array{"queue.max_retry, queue.retry_backoff"});
  CHECK(ev[1].at("restart_required").as_array() == json::array{"node.sync"});
  CHECK(ev[1].at("failed").as_array() == json::array{"listen: cannot read key"});
  CHECK(str(ev[1], "source") == "/etc/edgerelay/edge.toml");

  CHECK(str(ev[2], "event") == "config_reload_rejected");
  CHECK(ev[2].at("errors").as_array().size() == 1);

  CHECK(str(ev[3], "event") == "deadletter_retry");
  CHECK(str(ev[3], "client") == "127.0.0.1");
  CHECK(str(ev[3], "identity") == "URI:spiffe://ops/alice");
  CHECK(ev[3].at("filter").as_object().at("all").as_bool());
  CHECK(ev[3].at("count").to_number<std::uint64_t>() == 42);

  CHECK(str(ev[4], "event") == "deadletter_purge");
  CHECK(str(ev[4], "error") == "store closed");
  CHECK_FALSE(ev[4].contains("count"));

  CHECK(str(ev[5], "event") == "auth_denied");
  CHECK(str(ev[5], "listener") == "listen");
  CHECK(str(ev[5], "remote") == "127.0.0.9");
  CHECK(str(ev[5], "identity") == "URI:spiffe://fleet/outsider");
  CHECK(str(ev[5], "reason") == "not_allowed");

  CHECK(str(ev[6], "event") == "node_stop");
}

TEST_CASE("certificate rotation, reload failure and CRL reload events carry their fields", "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  auto a = open_log(dir / "audit.log", clk);
  auto old_na = sys_days{year{2026} / 12 / 1} + hours{0};
  auto new_na = sys_days{year{2027} / 3 / 1} + hours{12};
  a->cert_rotated("listen", old_na, new_na, "AB:CD:EF");
  clk.advance(seconds(2));
  a->cert_reload_failed("peer:hub", "/etc/edgerelay/pki/edge.key", "key does not match certificate");
  a->crl_reloaded("listen", 3);

  auto ev = events_in(dir / "audit.log");
  REQUIRE(ev.size() == 3);
  CHECK(str(ev[0], "event") == "cert_rotated");
  CHECK(str(ev[0], "name") == "listen");
  CHECK(str(ev[0], "old_not_after") == "2026-12-01T00:00:00.000Z");
  CHECK(str(ev[0], "new_not_after") == "2027-03-01T12:00:00.000Z");
  CHECK(str(ev[0], "fingerprint") == "AB:CD:EF");
  CHECK(str(ev[1], "event") == "cert_reload_failed");
  CHECK(str(ev[1], "time") == "2026-11-23T15:40:03.250Z");
  CHECK(str(ev[1], "name") == "peer:hub");
  CHECK(str(ev[1], "path") == "/etc/edgerelay/pki/edge.key");
  CHECK(str(ev[1], "reason") == "key does not match certificate");
  CHECK(str(ev[2], "event") == "crl_reloaded");
  CHECK(ev[2].at("entries").to_number<std::uint64_t>() == 3);
}

TEST_CASE("audit fields with quotes, newlines and invalid UTF-8 still make one parseable line", "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  auto a = open_log(dir / "audit.log", clk);
  a->auth_denied("listen", "::1", "", "unknown_ca", std::string("subject \"CN=x\"\nnext line \xff\xfe end"));
  auto text = slurp(dir / "audit.log");
  CHECK(std::count(text.begin(), text.end(), '\n') == 1);
  auto ev = events_in(dir / "audit.log");
  REQUIRE(ev.size() == 1);
  CHECK_THAT(str(ev[0], "detail"), Contains("subject \"CN=x\"\nnext line "));
  CHECK_THAT(str(ev[0], "detail"), Contains("\xEF\xBF\xBD")); // U+FFFD
}

TEST_CASE("the audit log appends across reopenings and a torn last line is skipped, never merged",
          "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  const auto path = dir / "audit.log";
  open_log(path, clk)->node_started("1", {});
  // A power cut in the middle of the second event: half a line, no newline.
  {
    std::ofstream out(path, std::ios::app | std::ios::binary);
    out << R"({"time":"2026-11-23T15:40:01.250Z","event":"node_st)";
  }
  open_log(path, clk)->node_stopped();

  auto text = slurp(path);
  CHECK(std::count(text.begin(), text.end(), '\n') == 3); // the torn line was ended, not continued
  auto tail = read_audit_tail(path, 100);
  REQUIRE(tail.has_value());
  CHECK(tail->skipped == 1);
  REQUIRE(tail->events.size() == 2);
  CHECK(str(tail->events[0], "event") == "node_start");
  CHECK(str(tail->events[1], "event") == "node_stop");
  CHECK(tail->lines.size() == 2);

  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0640);
}

TEST_CASE("read_audit_tail keeps the newest events and drops a partial first line when reading from mid-file",
          "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  const auto path = dir / "audit.log";
  auto a = open_log(path, clk);
  for (int i = 0; i < 50; ++i)
    a->crl_reloaded("listen", static_cast<std::uint64_t>(i));
  auto tail = read_audit_tail(path, 5);
  REQUIRE(tail.has_value());
  REQUIRE(tail->events.size() == 5);
  CHECK(tail->events.front().at("entries").to_number<int>() == 45);
  CHECK(tail->events.back().at("entries").to_number<int>() == 49);
  CHECK(tail->skipped == 0);

  auto line_len = tail->lines.back().size() + 1;
  auto small = read_audit_tail(path, 100, line_len * 3 + 7); // starts 7 bytes into a line
  REQUIRE(small.has_value());
  CHECK(small->events.size() == 3);
  CHECK(small->skipped == 0);
  CHECK(small->events.back().at("entries").to_number<int>() == 49);

  auto missing = read_audit_tail(dir / "nope.log", 5);
  REQUIRE(missing.has_error());
  CHECK_THAT(missing.error().message, Contains("nope.log") && Contains("No such file"));
}

TEST_CASE("concurrent writers never interleave audit lines", "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  auto a = open_log(dir / "audit.log", clk);
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i)
        a->auth_denied("listen", "127.0.0." + std::to_string(t), "", "unknown_ca", std::string(300, 'x'));
    });
  for (auto& t : ts)
    t.join();
  auto ev = events_in(dir / "audit.log");
  CHECK(ev.size() == 800);
  CHECK(a->write_failures() == 0);
}

TEST_CASE("opening an audit log in a missing directory names the path and the reason", "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  auto a = audit_log::open(dir / "no" / "such" / "audit.log", "n", clk);
  REQUIRE(a.has_error());
  CHECK_THAT(a.error().message, Contains("no/such/audit.log") && Contains("No such file or directory"));
}

namespace {

std::unique_ptr<audit_log> open_rotating(const std::filesystem::path& p, util::clock& clk, audit_rotation r) {
  auto a = audit_log::open(p, "edge-1", clk, r);
  INFO((a ? std::string() : a.error().message));
  REQUIRE(a.has_value());
  return std::move(*a);
}

// The `entries` field of each crl_reloaded event in the file, in order.
std::vector<int> entries_in(const std::filesystem::path& p) {
  std::vector<int> out;
  for (auto& e : events_in(p))
    out.push_back(e.at("entries").to_number<int>());
  return out;
}

} // namespace

TEST_CASE("a size-bounded audit log rotates to PATH.1 .. PATH.keep and loses or splits no event",
          "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  const auto path = dir / "audit.log";
  auto a = open_rotating(path, clk, {4096, 2});
  for (int i = 0; i < 120; ++i)
    a->crl_reloaded("listen " + std::string(40, 'n'), static_cast<std::uint64_t>(i));
  CHECK(a->rotations() >= 3);
  CHECK(a->rotation_failures() == 0);
  CHECK(a->write_failures() == 0);
  REQUIRE(std::filesystem::exists(audit_log::rotated(path, 1)));
  REQUIRE(std::filesystem::exists(audit_log::rotated(path, 2)));
  CHECK_FALSE(std::filesystem::exists(audit_log::rotated(path, 3)));
  // Oldest to newest: PATH.2, PATH.1, PATH hold the newest events without a gap.
  std::vector<int> all;
  for (auto& f : {audit_log::rotated(path, 2), audit_log::rotated(path, 1), path}) {
    CHECK(std::filesystem::file_size(f) <= 4096);
    auto e = entries_in(f);
    CHECK_FALSE(e.empty());
    all.insert(all.end(), e.begin(), e.end());
  }
  REQUIRE_FALSE(all.empty());
  CHECK(all.back() == 119);
  for (std::size_t i = 1; i < all.size(); ++i)
    CHECK(all[i] == all[i - 1] + 1);
  // The dropped events are the oldest: the kept ones hold 3 files' worth.
  CHECK(all.size() > 60);

  // read_audit_tail reaches into PATH.1 for what the new file does not hold yet.
  auto cur = entries_in(path), prev = entries_in(audit_log::rotated(path, 1));
  auto tail = read_audit_tail(path, cur.size() + 5);
  REQUIRE(tail.has_value());
  REQUIRE(tail->events.size() == cur.size() + 5);
  CHECK(tail->events.front().at("entries").to_number<int>() == prev[prev.size() - 5]);
  CHECK(tail->events.back().at("entries").to_number<int>() == 119);
  CHECK(tail->lines.size() == tail->events.size());
  auto only_new = read_audit_tail(path, cur.size());
  REQUIRE(only_new.has_value());
  CHECK(only_new->events.front().at("entries").to_number<int>() == cur.front());

  // Read between a rotation's rename and its new file: PATH.1 answers.
  a.reset();
  std::filesystem::remove(path);
  auto between = read_audit_tail(path, 3);
  REQUIRE(between.has_value());
  REQUIRE(between->events.size() == 3);
  CHECK(between->events.back().at("entries").to_number<int>() == prev.back());
  std::filesystem::remove(audit_log::rotated(path, 1));
  auto none = read_audit_tail(path, 3);
  REQUIRE(none.has_error());
  CHECK_THAT(none.error().message, Contains("audit.log") && Contains("No such file"));
}

TEST_CASE("concurrent writers across audit log rotations: every event in exactly one file, none torn",
          "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  const auto path = dir / "audit.log";
  auto a = open_rotating(path, clk, {16 << 10, 100});
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i)
        a->auth_denied("listen", "127.0.0." + std::to_string(t), "", "unknown_ca",
                       std::to_string(i) + std::string(300, 'x'));
    });
  for (auto& t : ts)
    t.join();
  std::size_t total = 0;
  unsigned files = 0;
  for (unsigned i = 0; i <= 100; ++i) {
    auto f = i == 0 ? path : audit_log::rotated(path, i);
    if (!std::filesystem::exists(f)) continue;
    ++files;
    CHECK(std::filesystem::file_size(f) <= 16 << 10);
    total += events_in(f).size();
  }
  CHECK(total == 800);
  CHECK(files == a->rotations() + 1);
  CHECK(files > 10);
  CHECK(a->write_failures() == 0);
}

TEST_CASE("audit_log_keep = 0 starts the file over, and without max_bytes the file only grows", "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  auto a = open_rotating(dir / "over.log", clk, {4096, 0});
  for (int i = 0; i < 100; ++i)
    a->crl_reloaded("n", static_cast<std::uint64_t>(i));
  CHECK(std::filesystem::file_size(dir / "over.log") <= 4096);
  CHECK_FALSE(std::filesystem::exists(dir / "over.log.1"));
  auto e = entries_in(dir / "over.log");
  REQUIRE_FALSE(e.empty());
  CHECK(e.back() == 99);
  CHECK(a->rotations() >= 1);

  auto b = open_rotating(dir / "grow.log", clk, {});
  for (int i = 0; i < 100; ++i)
    b->crl_reloaded("n", static_cast<std::uint64_t>(i));
  CHECK(entries_in(dir / "grow.log").size() == 100);
  CHECK(b->rotations() == 0);
  // A bound set later (a reload) applies from the next event.
  b->set_rotation({4096, 1});
  b->crl_reloaded("n", 100);
  CHECK(b->rotations() == 1);
  CHECK(entries_in(dir / "grow.log") == std::vector<int>{100});
  CHECK(entries_in(dir / "grow.log.1").size() == 100);
}

TEST_CASE("an audit log emptied by an external copytruncate is not rotated early", "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  const auto path = dir / "audit.log";
  auto a = open_rotating(path, clk, {4096, 2});
  for (int i = 0; i < 20; ++i)
    a->crl_reloaded("n", static_cast<std::uint64_t>(i));
  std::filesystem::resize_file(path, 0); // what logrotate's copytruncate does
  for (int i = 20; i < 40; ++i)
    a->crl_reloaded("n", static_cast<std::uint64_t>(i));
  CHECK(a->rotations() == 0);
  CHECK(entries_in(path).size() == 20);
}

TEST_CASE("a failed audit log rotation keeps every event in the open file and is tried again a minute later",
          "[telemetry][audit]") {
  test::temp_dir dir("audit");
  util::manual_clock clk(t0);
  const auto path = dir / "audit.log";
  // PATH.1 is a directory with something in it: renaming the file onto it fails.
  std::filesystem::create_directories(audit_log::rotated(path, 1) / "x");
  auto a = open_rotating(path, clk, {4096, 1});
  for (int i = 0; i < 80; ++i)
    a->crl_reloaded("n", static_cast<std::uint64_t>(i));
  CHECK(a->rotation_failures() == 1); // once, not once per event
  CHECK(a->rotations() == 0);
  CHECK(entries_in(path).size() == 80);
  CHECK(a->write_failures() == 0);

  std::filesystem::remove_all(audit_log::rotated(path, 1));
  a->crl_reloaded("n", 80);
  CHECK(a->rotations() == 0); // not before the minute is up
  clk.advance(61s);
  a->crl_reloaded("n", 81);
  CHECK(a->rotations() == 1);
  CHECK(entries_in(path) == std::vector<int>{81});
  CHECK(entries_in(audit_log::rotated(path, 1)).size() == 81);
}
