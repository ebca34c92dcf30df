// `edgerelay run --log-format/--log-level`, run as a user would.

#include "tests/support/node_runner.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/toml.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <csignal>
#include <fstream>
#include <sstream>

using namespace edgerelay;
using test::eventually;
using test::slurp;
using test::write_file;
using namespace std::chrono_literals;
namespace json = boost::json;
using Catch::Matchers::Contains;

namespace {

using test::q;

} // namespace

TEST_CASE("run --log-format json writes one JSON object per line and --log-level filters them", "[cli][logging]") {
  test::temp_dir d{"logfmt"};
  auto file = d / "node.toml";
  auto body = [&](const char* sync) {
    return "[node]\nid = \"n\"\ndata_dir = " + q(d / "data") + "\nsync = \"" + sync +
           "\"\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
           "[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\nurl = \"file://" +
           (d / "spool").string() + "\"\n";
  };
  write_file(file, body("full"));
  const std::string bin = std::string(EDGERELAY_BIN_DIR) + "/edgerelay";

  SECTION("json at debug") {
    auto log = d / "json.log";
    test::process node({bin, "run", "--config", file.string(), "--log-format", "json", "--log-level", "debug"}, log);
    REQUIRE(eventually([&] { return slurp(log).find("node running") != std::string::npos; }));
    ::kill(node.pid(), SIGHUP); // nothing changed: an info line
    REQUIRE(eventually([&] { return slurp(log).find("reload: nothing changed") != std::string::npos; }));
    CHECK(node.stop(SIGTERM) == 0);
    std::istringstream in(slurp(log));
    int n = 0;
    bool saw_reload = false;
    for (std::string l; std::getline(in, l); ++n) {
      INFO(l);
      boost::system::error_code ec;
      auto v = json::parse(l, ec);
      REQUIRE_FALSE(ec);
      REQUIRE(v.is_object());
      CHECK(v.as_object().contains("ts"));
      if (v.at("msg").as_string() == "reload: nothing changed") {
        saw_reload = true;
        CHECK(v.at("level").as_string() == "info");
      }
    }
    CHECK(n >= 3); // running, reload, stopping
    CHECK(saw_reload);
  }
  SECTION("text at warn") {
    auto log = d / "text.log";
    test::process node({bin, "run", "--config", file.string(), "--log-level", "warn"}, log);
    REQUIRE(eventually([&] { return slurp(log).find("node running") != std::string::npos; }));
    ::kill(node.pid(), SIGHUP);
    write_file(file, body("none")); // restart-only change: a warning
    ::kill(node.pid(), SIGHUP);
    REQUIRE(eventually([&] { return slurp(log).find("node.sync changed in the file") != std::string::npos; }));
    CHECK(node.stop(SIGTERM) == 0);
    auto text = slurp(log);
    CHECK_THAT(text, Contains("[warning] reload: node.sync changed"));
    CHECK_THAT(text, !Contains("reload: nothing changed")); // info: filtered out
    CHECK_THAT(text, !Contains("{\"ts\""));
  }
  SECTION("bad values are usage errors naming the flag") {
    auto r = test::run_edgerelay(d.path(), {"run", "--config", file.string(), "--log-format", "xml"});
    CHECK(r.code == 2);
    CHECK_THAT(r.out, Contains("--log-format"));
    r = test::run_edgerelay(d.path(), {"run", "--config", file.string(), "--log-level", "loud"});
    CHECK(r.code == 2);
    CHECK_THAT(r.out, Contains("--log-level"));
  }
}

TEST_CASE("run exits 2, which systemd does not restart, when files the config names cannot work as they are", "[cli]") {
  test::temp_dir d("run-exit");
  REQUIRE(test::run_edgerelay(d.path(), {"pki", "init", "--dir", (d / "pki").string()}).code == 0);
  auto cfg = [&](const std::string& id, const std::string& key) {
    return "[node]\nid = \"" + id + "\"\ndata_dir = " + q(d / "data") +
           "\n[admin]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n[listen]\naddress = "
           "\"127.0.0.1:0\"\ncert = " +
           q(d / "pki" / "server.pem") + "\nkey = " + q(d / "pki" / key) + "\nca = " + q(d / "pki" / "ca.pem") +
           "\n[[peer]]\nname = \"s\"\nurl = \"file://" + (d / "spool").string() + "\"\n";
  };
  const auto file = d / "n.toml";
  write_file(file, cfg("a", "ca.key")); // a key that is not the certificate's: check-config cannot tell
  REQUIRE(test::run_edgerelay(d.path(), {"check-config", "--config", file.string()}).code == 0);
  auto r = test::run_edgerelay(d.path(), {"run", "--config", file.string()});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("does not match certificate"));
  write_file(file, cfg("b", "server.key")); // the data_dir that node "a" made
  r = test::run_edgerelay(d.path(), {"run", "--config", file.string()});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("belongs to node \"a\""));
}
