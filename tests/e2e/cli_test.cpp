// The edgerelay command line, run as a user would.

#include "relay/spool.hpp"
#include "tests/support/ports.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "util/checksum.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <catch2/catch.hpp>

#include <fstream>

using namespace edgerelay;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

const std::string bin = std::string(EDGERELAY_BIN_DIR) + "/edgerelay";

test::command_result run(const test::temp_dir& d, std::vector<std::string> args, std::chrono::seconds limit = 30s) {
  return test::run_edgerelay(d.path(), std::move(args), limit);
}

using test::free_port;

} // namespace

TEST_CASE("check-config prints every problem as FILE: key: problem and exits 2", "[cli]") {
  test::temp_dir d("cli");
  std::ofstream(d / "bad.toml") << "[node]\nid = \"a:b\"\ndata_dir = \"/tmp/x\"\n[queue]\nmax_byte = \"1GiB\"\n"
                                   "max_retry = 0\n[ingest]\nlisten = \"127.0.0.1:9400\"\n[[peer]]\nname = \"p\"\n"
                                   "url = \"ftp://x\"\n";
  auto r = run(d, {"check-config", "--config", (d / "bad.toml").string()});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("bad.toml: queue.max_byte: unknown key") && Contains("max_bytes"));
  CHECK_THAT(r.out, Contains("bad.toml: node.id:"));
  CHECK_THAT(r.out, Contains("bad.toml: queue.max_retry:"));
  CHECK_THAT(r.out, Contains("bad.toml: peer[0].url:"));
  auto usage = run(d, {"check-config"});
  CHECK(usage.code == 2);
}

TEST_CASE("check-config --no-file-check checks a file written for another machine without its TLS files", "[cli]") {
  test::temp_dir d("cli");
  // The shipped example names /etc/edgerelay/pki/... files that exist only where it is deployed.
  const std::string example = std::string(EDGERELAY_SOURCE_DIR) + "/deploy/examples/edge.toml";
  auto r = run(d, {"check-config", "--config", example});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("file not found: /etc/edgerelay/pki/"));
  r = run(d, {"check-config", "--no-file-check", "--config", example});
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Contains(": ok (1 peer; certificate, key, CA and CRL files not checked)"));
  // Everything else is still checked.
  std::ofstream(d / "bad.toml") << "[node]\nid = \"a\"\ndata_dir = \"/tmp/x\"\n[listen]\naddress = \"0.0.0.0:9400\"\n"
                                   "cert = \"/nope/c.pem\"\nkey = \"/nope/k.pem\"\nca = \"/nope/ca.pem\"\n"
                                   "[[peer]]\nname = \"p\"\nurl = \"file:///tmp/sp\"\n[queue]\nmax_bytes = \"lots\"\n";
  r = run(d, {"check-config", "--no-file-check", "--config", (d / "bad.toml").string()});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("queue.max_bytes"));
  CHECK_THAT(r.out, !Contains("file not found"));
}

TEST_CASE("pki init writes a usable set and refuses to overwrite it", "[cli]") {
  test::temp_dir d("cli");
  auto r = run(d, {"pki", "init", "--dir", (d / "pki").string()});
  CHECK(r.code == 0);
  for (auto f : {"ca.pem", "server.pem", "server.key", "client.pem", "client.key", "crl.pem"})
    CHECK(std::filesystem::exists(d / "pki" / f));
  auto again = run(d, {"pki", "init", "--dir", (d / "pki").string()});
  CHECK(again.code == 1);
  CHECK_THAT(again.out, Contains("exists"));
}

TEST_CASE("spool cat prints each segment, as JSON with the payload in base64", "[cli]") {
  test::temp_dir d("cli");
  {
    auto w = relay::spool_writer::open(d / "spool");
    REQUIRE(w.has_value());
    REQUIRE(
        (*w)->append(std::vector<relay::spool_input>{{"e:1", "s1", 1700000000000, util::checksum("hello"), "hello"}})
            .has_value());
  }
  auto r = run(d, {"spool", "cat", (d / "spool").string(), "--json"});
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Contains(R"("id":"e:1")") && Contains(R"("payload_base64":"aGVsbG8=")") &&
                        Contains(R"("created_at":1700000000000)") && Contains(R"("stream":"s1")"));
  auto missing = run(d, {"spool", "cat", (d / "nope").string()});
  CHECK(missing.code == 1);
  // A directory without spool files (a node's data_dir, a typo) is not an
  // empty spool; a name that only looks like a spool file is not one.
  std::filesystem::create_directories(d / "not-a-spool");
  std::ofstream(d / "not-a-spool" / "data.mdb") << "x";
  std::ofstream(d / "spool" / "spool-zzzzzzzzzzzzzzzz.ers") << "x";
  auto empty = run(d, {"spool", "cat", (d / "not-a-spool").string()});
  CHECK(empty.code == 1);
  CHECK_THAT(empty.out, Contains("holds no spool files"));
  r = run(d, {"spool", "cat", (d / "spool").string()});
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Contains("e:1\ts1\t5 bytes"));
}

TEST_CASE("send, status and deadletter list/purge work against a running node", "[cli]") {
  test::temp_dir d("cli");
  REQUIRE(run(d, {"pki", "init", "--dir", (d / "pki").string()}).code == 0);
  auto ingest = std::to_string(free_port()), admin = std::to_string(free_port()), dead = std::to_string(free_port());
  std::ofstream(d / "edge.toml") << "[node]\nid = \"edge\"\ndata_dir = \"" << (d / "data").string()
                                 << "\"\n[queue]\nmax_retry = 1\n[ingest]\nlisten = \"127.0.0.1:" << ingest
                                 << "\"\n[admin]\nlisten = \"127.0.0.1:" << admin
                                 << "\"\n[[peer]]\nname = \"hub\"\nurl = \"wss://127.0.0.1:" << dead
                                 << "/v1/relay\"\nserver_name = \"localhost\"\ncert = \"pki/client.pem\"\nkey = "
                                    "\"pki/client.key\"\nca = \"pki/ca.pem\"\ndial_timeout = \"1s\"\n";
  test::process node({bin, "run", "--config", (d / "edge.toml").string()}, d / "node.log");
  const std::string admin_url = "http://127.0.0.1:" + admin;
  test::command_result st{1, ""};
  for (int i = 0; i < 100 && st.code != 0; ++i) {
    std::this_thread::sleep_for(100ms);
    st = run(d, {"status", "--admin", admin_url, "--json"});
  }
  REQUIRE(st.code == 0);
  auto sent = run(d, {"send", "--url", "http://127.0.0.1:" + ingest, "--stream", "metrics", "--count", "30", "--size",
                      "100B", "--batch", "7"});
  CHECK(sent.code == 0);
  CHECK_THAT(sent.out, Contains("sent 30 segments of 100 bytes"));
  // The hub never answers: with max_retry = 1 everything is dead-lettered.
  test::command_result list{1, ""};
  for (int i = 0; i < 100; ++i) {
    list = run(d, {"deadletter", "list", "--admin", admin_url, "--limit", "100"});
    if (list.out.find("edge:30") != std::string::npos) break;
    std::this_thread::sleep_for(100ms);
  }
  CHECK(list.code == 0);
  CHECK_THAT(list.out, Contains("\"reason\":\"max_retry\"") && Contains("edge:30"));
  auto none = run(d, {"deadletter", "purge", "--admin", admin_url});
  CHECK(none.code == 2);
  CHECK_THAT(none.out, Contains("exactly one of"));
  auto purge = run(d, {"deadletter", "purge", "--admin", admin_url, "--all"});
  CHECK(purge.code == 0);
  CHECK_THAT(purge.out, Contains("\"purged\":30"));
  st = run(d, {"status", "--admin", admin_url, "--json"});
  CHECK_THAT(st.out, Contains("\"purged\":30") && Contains("\"loss\":0"));
  CHECK(node.stop(SIGTERM) == 0);
}
