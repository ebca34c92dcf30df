// `edgerelay support-bundle` run as a user would, against a running node.

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "telemetry/audit.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/openssl_pki.hpp"
#include "tests/support/ports.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <csignal>
#include <fstream>
#include <map>
#include <sstream>

using namespace edgerelay;
using test::eventually;
using test::slurp;
using test::write_file;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
namespace json = boost::json;
using Catch::Matchers::Contains;

namespace {

const test::openssl_pki& pki() { return test::openssl_pki::shared(); }

std::string q(const fs::path& p) { return "\"" + p.string() + "\""; }

// Every regular file under dir, by path relative to it.
std::map<std::string, std::string> files_under(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) out[fs::relative(e.path(), dir).string()] = slurp(e.path());
  return out;
}

fs::path extract(const test::temp_dir& d, const fs::path& tgz, const std::string& into) {
  auto dest = d / into;
  fs::create_directories(dest);
  test::process tar({"/usr/bin/tar", "-xzf", tgz.string(), "-C", dest.string()}, d / (into + ".tar.log"));
  REQUIRE(tar.wait(60s) == 0);
  auto top = fs::directory_iterator(dest)->path();
  return top;
}

// A line from the middle of a PEM file: base64 that appears only if the key leaked.
std::string middle_line(const fs::path& pem) {
  std::istringstream in(slurp(pem));
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);)
    if (!l.empty() && l[0] != '-') lines.push_back(l);
  REQUIRE(!lines.empty());
  return lines[lines.size() / 2];
}

using test::free_port;

} // namespace

TEST_CASE("support-bundle collects status, metrics, audit, evidence and versions and never a key or a password",
          "[cli][support]") {
  test::temp_dir d{"bundle"};
  // A running hub whose relay listener uses a real private key (by path).
  const std::string node_toml = "[node]\nid = \"hub-7\"\ndata_dir = " + q(d / "data") +
                                "\n[listen]\naddress = \"127.0.0.1:0\"\ncert = " + q(pki().server.cert) +
                                "\nkey = " + q(pki().server.key) + "\nca = " + q(pki().root_ca) +
                                "\n[admin]\nlisten = \"127.0.0.1:" + std::to_string(free_port()) +
                                "\"\n[evidence]\ncanary_interval = \"0s\"\n"
                                "[[peer]]\nname = \"spool\"\nurl = \"file://" +
                                (d / "spool").string() + "\"\n";
  write_file(d / "hub.toml", node_toml);
  auto hub = test::start_node(relay::load_config(d / "hub.toml"));
  const auto hub_admin = "http://" + hub->address("admin");
  fs::create_directories(d / "data" / "evidence");
  write_file(d / "data" / "evidence" / "RL-QMGM-01.json", R"({"schema":"edgerelay.evidence/v1","claim":"RL-QMGM-01"})");

  const std::string password = "pw-Zq81-never-in-a-bundle";
  const std::string token = "tok-4f1c-never-in-a-bundle";
  const auto key_text = slurp(pki().server.key);
  REQUIRE_THAT(key_text, Contains("PRIVATE KEY"));
  const auto key_line = middle_line(pki().server.key);
  // The same config plus an inline password, a token and the key itself
  // pasted inline (a mistake an operator might make). Not a valid node config
  // any more (unknown keys), which support-bundle must cope with.
  write_file(d / "support.toml", node_toml + "\n[site]\nadmin_password = \"" + password + "\"\napi_token = \"" + token +
                                     "\"\nkey_pem = \"\"\"\n" + key_text + "\"\"\"\n");

  auto out = d / "bundle.tar.gz";
  auto r = test::run_edgerelay(d.path(), {"support-bundle", "--config", (d / "support.toml").string(), "--admin",
                                          hub_admin, "--log", (d / "support.toml").string(), "--out", out.string()});
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Contains("wrote " + out.string()));
  REQUIRE(fs::exists(out));
  auto top = extract(d, out, "x1");
  auto files = files_under(top);
  std::string names;
  for (auto& [n, c] : files)
    names += n + "\n";
  INFO(names);

  // Neither the key material nor the password nor the token anywhere, in any file.
  for (auto& [name, content] : files) {
    INFO(name);
    CHECK_THAT(content, !Contains(password));
    CHECK_THAT(content, !Contains(token));
    CHECK_THAT(content, !Contains(key_line));
    CHECK_THAT(content, !Contains("PRIVATE KEY"));
  }
  // The key's path is kept.
  REQUIRE(files.count("config/support.toml") == 1);
  CHECK_THAT(files["config/support.toml"], Contains(pki().server.key.string()));
  CHECK_THAT(files["config/support.toml"], Contains("# redacted: site.admin_password"));
  CHECK_THAT(files["config/check.txt"], Contains("site: unknown key"));

  // What the running node and its files gave.
  REQUIRE(files.count("status.json") == 1);
  CHECK(json::parse(files["status.json"]).at("node").at("id").as_string() == "hub-7");
  CHECK_THAT(files["metrics.txt"], Contains("edgerelay_"));
  CHECK_THAT(files["versions.txt"], Contains("openssl OpenSSL 3"));
  CHECK_THAT(files["versions.txt"], Contains("lmdb LMDB"));
  CHECK_THAT(files["versions.txt"], Contains("libssl.so.3"));
  CHECK_THAT(files["versions.txt"], Contains("zstd "));
  CHECK_THAT(files["MANIFEST.txt"], Contains("collected  status.json"));
  // The config does not load (unknown keys), so the audit log and evidence
  // are not found through it, and the MANIFEST says so.
  CHECK_THAT(files["MANIFEST.txt"], Contains("config/support.toml"));
  CHECK(files.count("logs/support.toml") == 1); // --log: the tail of the file, scrubbed too

  // With the node's own config: the audit log and the evidence reports too.
  auto out2 = d / "bundle2.tar.gz";
  r = test::run_edgerelay(d.path(), {"support-bundle", "--config", (d / "hub.toml").string(), "--out", out2.string()});
  INFO(r.out);
  REQUIRE(r.code == 0);
  auto files2 = files_under(extract(d, out2, "x2"));
  REQUIRE(files2.count("audit/audit.log") == 1);
  CHECK_THAT(files2["audit/audit.log"], Contains("\"event\":\"node_start\""));
  CHECK(files2.count("evidence/RL-QMGM-01.json") == 1);
  CHECK(files2.count("status.json") == 1); // the admin address came from the config
  for (auto& [name, content] : files2) {
    INFO(name);
    CHECK_THAT(content, !Contains(key_line));
  }
  CHECK_THAT(files2["config/hub.toml"], Contains(pki().server.key.string()));
  hub->stop();

  // The node is gone: the bundle is still written, and says what is missing and why.
  auto out3 = d / "bundle3.tar.gz";
  r = test::run_edgerelay(d.path(), {"support-bundle", "--config", (d / "hub.toml").string(), "--out", out3.string(),
                                     "--admin", hub_admin});
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Contains("missing status.json: admin API http://"));
  auto files3 = files_under(extract(d, out3, "x3"));
  CHECK_THAT(files3["MANIFEST.txt"], Contains("MISSING    status.json  admin API"));
  CHECK(files3.count("status.json") == 0);
  CHECK(files3.count("audit/audit.log") == 1);
}

TEST_CASE("support-bundle needs --out and reports an unwritable destination", "[cli][support]") {
  test::temp_dir d{"bundle-bad"};
  auto r = test::run_edgerelay(d.path(), {"support-bundle"});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("--out"));
  r = test::run_edgerelay(d.path(), {"support-bundle", "--no-journal", "--admin", "http://127.0.0.1:1", "--out",
                                     (d / "no" / "such" / "dir" / "b.tar.gz").string()});
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("no/such/dir"));

  // An invalid config: its admin address is unknown, so no guess (the
  // default address may be another node's) is queried.
  const auto bad = d / "bad.toml";
  std::ofstream(bad) << "[node]\nid = \"n\"\ndata_dir = \"/tmp\"\ntypo = 1\n";
  r = test::run_edgerelay(
      d.path(), {"support-bundle", "--no-journal", "--config", bad.string(), "--out", (d / "b.tar.gz").string()});
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK_THAT(r.out,
             Contains("the config does not load (config/check.txt says why), so this node's admin address is unknown"));
  CHECK_THAT(r.out, !Contains("127.0.0.1:9310"));
}
