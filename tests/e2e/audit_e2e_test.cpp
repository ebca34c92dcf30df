// The audit log of a running node: each node-driven event type (start, stop,
// config reloads with their diff, a refused reload, dead-letter retry and
// purge with who and how many, TLS and allow-list denials with identity and
// reason) as the node writes it to node.audit_log.

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "telemetry/audit.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/openssl_pki.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/toml.hpp"
#include "transport/tls.hpp"
#include "transport/ws_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <fstream>
#include <future>
#include <map>
#include <thread>

using namespace edgerelay;
using test::eventually;
using test::write_file;
using namespace std::chrono_literals;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
namespace json = boost::json;
using Catch::Matchers::Contains;

namespace {

const test::openssl_pki& pki() { return test::openssl_pki::shared(); }

using test::q;

std::vector<json::object> audit_events(const std::filesystem::path& p) {
  auto t = telemetry::read_audit_tail(p, 100000);
  INFO((t ? std::string() : t.error().message));
  REQUIRE(t.has_value());
  CHECK(t->skipped == 0);
  return t->events;
}

std::vector<json::object> of_type(const std::vector<json::object>& ev, std::string_view type) {
  std::vector<json::object> out;
  for (auto& e : ev)
    if (e.at("event").as_string() == type) out.push_back(e);
  return out;
}

std::string s(const json::value& v) { return std::string(v.as_string()); }

std::uint64_t num(const json::value& v) { return v.to_number<std::uint64_t>(); }

json::array strings(std::initializer_list<const char*> v) {
  json::array a;
  for (auto* x : v)
    a.emplace_back(x);
  return a;
}

std::uint16_t port_of(const std::string& address) {
  return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
}

} // namespace

TEST_CASE("the audit log records start, reload diffs, a refused reload, dead-letter retry and purge, and stop",
          "[e2e][audit]") {
  test::temp_dir dir{"audit-node"};
  const auto file = dir / "edge.toml";
  const auto audit = dir / "logs" / "audit.jsonl";
  // An edge whose only peer is a closed port: segments dead-letter after one attempt.
  auto body = [&](const std::string& node_extra, const std::string& queue) {
    return "[node]\nid = \"edge-a\"\ndata_dir = " + q(dir / "data") + "\naudit_log = \"logs/audit.jsonl\"\n" +
           node_extra + "[queue]\n" + queue +
           "retry_backoff = {initial = \"10ms\", max = \"20ms\", multiplier = 2.0, jitter = 0.0}\n"
           "[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
           "[evidence]\ncanary_interval = \"0s\"\n"
           "[[peer]]\nname = \"hub\"\nurl = \"wss://127.0.0.1:1\"\nserver_name = \"localhost\"\ncert = " +
           q(pki().client.cert) + "\nkey = " + q(pki().client.key) + "\nca = " + q(pki().root_ca) + "\n";
  };
  write_file(file, body("", "max_retry = 1\n"));
  auto n = test::start_node(relay::load_config(file));
  const auto admin_at = n->address("admin"), ingest_at = n->address("ingest");
  const auto admin = "http://" + admin_at;
  const auto ingest = "http://" + ingest_at;

  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    auto r = relay::http_call("POST", ingest + "/v1/streams/s/segments", "payload " + std::to_string(i));
    REQUIRE(r.has_value());
    REQUIRE(r->status == 201);
    ids.push_back(s(json::parse(r->body).at("id")));
  }
  REQUIRE(eventually([&] { return num(n->status().at("deadletter").at("segments")) == 3; }, 20s));

  auto purge = relay::http_call("POST", admin + "/v1/deadletter/purge", R"({"ids": [")" + ids[0] + R"("]})");
  REQUIRE(purge.has_value());
  CHECK(purge->status == 200);
  auto retry = relay::http_call("POST", admin + "/v1/deadletter/retry", R"({"all": true, "peer": "hub"})");
  REQUIRE(retry.has_value());
  CHECK(retry->status == 200);
  auto bad = relay::http_call("POST", admin + "/v1/deadletter/purge", R"({})");
  REQUIRE(bad.has_value());
  CHECK(bad->status == 400);

  // A live change, a restart-only change, then a file with an error.
  write_file(file, body("sync = \"none\"\n", "max_retry = 5\n"));
  auto rl = relay::http_call("POST", admin + "/v1/reload");
  REQUIRE(rl.has_value());
  CHECK(rl->status == 200);
  write_file(file, body("", "max_retry = \"many\"\n"));
  rl = relay::http_call("POST", admin + "/v1/reload");
  REQUIRE(rl.has_value());
  CHECK(rl->status == 400);

  n->stop();
  auto ev = audit_events(audit);
  for (auto& e : ev) {
    CHECK(s(e.at("node")) == "edge-a");
    CHECK(s(e.at("time")).size() == 24); // 2026-11-23T15:40:01.123Z
  }
  REQUIRE(ev.size() >= 2);
  CHECK(s(ev.front().at("event")) == "node_start");
  CHECK(s(ev.front().at("listeners").at("admin")) == admin_at);
  CHECK(s(ev.front().at("listeners").at("ingest")) == ingest_at);
  CHECK(s(ev.back().at("event")) == "node_stop");

  auto purges = of_type(ev, "deadletter_purge");
  REQUIRE(purges.size() == 2);
  CHECK(s(purges[0].at("client")) == "127.0.0.1");
  CHECK(s(purges[0].at("identity")).empty()); // plain-HTTP admin: no certificate
  CHECK(purges[0].at("filter").at("ids").as_array() == json::array{json::value(ids[0])});
  CHECK(num(purges[0].at("count")) == 1);
  CHECK_THAT(s(purges[1].at("error")), Contains("invalid")); // the refused selector is audited too
  CHECK_FALSE(purges[1].contains("count"));

  auto retries = of_type(ev, "deadletter_retry");
  REQUIRE(retries.size() == 1);
  CHECK(retries[0].at("filter").at("all").as_bool());
  CHECK(s(retries[0].at("filter").at("peer")) == "hub");
  CHECK(num(retries[0].at("count")) == 2);

  auto reloads = of_type(ev, "config_reload");
  REQUIRE(reloads.size() == 1);
  CHECK(s(reloads[0].at("source")) == file.string());
  CHECK(reloads[0].at("applied").as_array() == strings({"queue.max_retry, queue.retry_backoff"}));
  CHECK(reloads[0].at("restart_required").as_array() == strings({"node.sync"}));
  CHECK(reloads[0].at("failed").as_array().empty());

  auto rejected = of_type(ev, "config_reload_rejected");
  REQUIRE(rejected.size() == 1);
  REQUIRE(rejected[0].at("errors").as_array().size() == 1);
  CHECK_THAT(s(rejected[0].at("errors").as_array()[0]), Contains("queue.max_retry"));

  // A second start appends to the same file.
  n.reset();
  write_file(file, body("", "max_retry = 5\n"));
  auto again = test::start_node(relay::load_config(file));
  again->stop();
  auto ev2 = audit_events(audit);
  CHECK(ev2.size() == ev.size() + 2);
  CHECK(of_type(ev2, "node_start").size() == 2);
}

TEST_CASE("the audit log records TLS and allow-list denials with listener, remote, identity and reason",
          "[e2e][audit][security]") {
  test::temp_dir dir{"audit-tls"};
  auto hub = test::start_node(relay::parse_config(
      "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "data") +
          "\n[listen]\naddress = \"127.0.0.1:0\"\ncert = " + q(pki().server.cert) + "\nkey = " + q(pki().server.key) +
          "\nca = " + q(pki().root_ca) + "\ncrl = " + q(pki().root_crl) +
          "\nallow = [\"URI:spiffe://edgerelay/edge/*\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
          "[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\nurl = \"file://" +
          (dir / "spool").string() + "\"\n",
      "hub.toml", dir.path()));
  net::io_context io;
  auto guard = net::make_work_guard(io);
  std::thread io_thread([&] { io.run(); });
  auto dial = [&](std::shared_ptr<ssl::context> ctx) {
    std::promise<transport::dial_result> p;
    transport::ws_dial(io, {"127.0.0.1", port_of(hub->address("listen")), "/v1/relay", "localhost"}, std::move(ctx), {},
                       5s, [&](transport::dial_result r) { p.set_value(std::move(r)); });
    auto r = p.get_future().get();
    if (r) (*r)->close("test done");
  };
  auto ctx = [](const test::openssl_pki::cert_key& id) {
    auto c = transport::make_client_context({id.cert, id.key, pki().root_ca, {}, {}}, "localhost");
    REQUIRE(c.has_value());
    return *c;
  };
  dial(ctx(pki().client_other_ca));
  dial(ctx(pki().client_outsider));
  const auto audit = dir / "data" / "audit.log"; // the default: <data_dir>/audit.log
  auto denials = [&] { return of_type(audit_events(audit), "auth_denied"); };
  REQUIRE(eventually([&] { return denials().size() == 2; }));
  hub->stop();
  guard.reset();
  io_thread.join();

  auto d = denials();
  REQUIRE(d.size() == 2);
  std::map<std::string, json::object> by_reason;
  for (auto& e : d)
    by_reason[s(e.at("reason"))] = e;
  REQUIRE(by_reason.count("unknown_ca") == 1);
  REQUIRE(by_reason.count("not_allowed") == 1);
  auto& chain = by_reason["unknown_ca"];
  CHECK(s(chain.at("listener")) == "listen");
  CHECK(s(chain.at("remote")) == "127.0.0.1");
  CHECK(s(chain.at("identity")).empty()); // an unverified chain names nobody
  CHECK_FALSE(s(chain.at("detail")).empty());
  auto& allow = by_reason["not_allowed"];
  CHECK(s(allow.at("listener")) == "listen");
  CHECK(s(allow.at("remote")) == "127.0.0.1");
  CHECK(s(allow.at("identity")) == "URI:spiffe://elsewhere/edge/x");
  CHECK_THAT(s(allow.at("detail")), Contains("matches none of [URI:spiffe://edgerelay/edge/*]"));
}

TEST_CASE("a flood of refused connections fills at most (keep + 1) audit files of audit_log_max_bytes, and a reload "
          "changes the bound live",
          "[e2e][audit][security]") {
  test::temp_dir dir{"audit-flood"};
  const auto file = dir / "hub.toml";
  auto body = [&](const std::string& rotation) {
    return "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "data") + "\n" + rotation +
           "[listen]\naddress = \"127.0.0.1:0\"\ncert = " + q(pki().server.cert) + "\nkey = " + q(pki().server.key) +
           "\nca = " + q(pki().root_ca) +
           "\nallow = [\"URI:spiffe://edgerelay/edge/*\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
           "[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\nurl = \"file://" +
           (dir / "spool").string() + "\"\n";
  };
  write_file(file, body("audit_log_max_bytes = \"4KiB\"\naudit_log_keep = 2\n"));
  auto hub = test::start_node(relay::load_config(file));
  const auto audit = dir / "data" / "audit.log";
  const auto port = port_of(hub->address("listen"));
  // Plain text to the TLS listener: each connection is refused at the handshake and audited.
  auto knock = [&](int times) {
    net::io_context io;
    for (int i = 0; i < times; ++i) {
      net::ip::tcp::socket sock(io);
      boost::system::error_code ec;
      sock.connect({net::ip::make_address("127.0.0.1"), port}, ec);
      REQUIRE_FALSE(ec);
      net::write(sock, net::buffer(std::string("GET / HTTP/1.1\r\nHost: x\r\n\r\n")), ec);
      char b[256];
      while (!ec)
        sock.read_some(net::buffer(b), ec); // until the hub closes it
    }
  };
  auto denials_in = [&](const std::filesystem::path& f) {
    std::size_t n = 0;
    std::ifstream in(f);
    for (std::string l; std::getline(in, l);) {
      auto v = json::parse(l); // every line of every file parses
      n += v.as_object().at("event").as_string() == "auth_denied" ? 1 : 0;
    }
    return n;
  };
  auto kept_denials = [&] {
    return denials_in(audit) + denials_in(telemetry::audit_log::rotated(audit, 1)) +
           denials_in(telemetry::audit_log::rotated(audit, 2));
  };
  knock(60);
  REQUIRE(eventually([&] { return std::filesystem::exists(telemetry::audit_log::rotated(audit, 2)); }));
  CHECK_FALSE(std::filesystem::exists(telemetry::audit_log::rotated(audit, 3)));
  for (auto& f : {audit, telemetry::audit_log::rotated(audit, 1), telemetry::audit_log::rotated(audit, 2)})
    CHECK(std::filesystem::file_size(f) <= 4096);
  const auto kept = kept_denials();
  CHECK(kept > 10);
  CHECK(kept < 60); // the oldest went with the file past keep

  // Live: no bound any more. The rotated files stay as they are and the current one grows.
  write_file(file, body("audit_log_max_bytes = \"0\"\naudit_log_keep = 2\n"));
  auto rl = relay::http_call("POST", "http://" + hub->address("admin") + "/v1/reload");
  REQUIRE(rl.has_value());
  CHECK(rl->status == 200);
  INFO(rl->body);
  CHECK_THAT(rl->body, Contains("node.audit_log_max_bytes, node.audit_log_keep"));
  const auto before = std::filesystem::file_size(telemetry::audit_log::rotated(audit, 1));
  const auto current = denials_in(audit);
  knock(30);
  REQUIRE(eventually([&] { return denials_in(audit) == current + 30; }));
  CHECK(std::filesystem::file_size(audit) > 4096);
  CHECK(std::filesystem::file_size(telemetry::audit_log::rotated(audit, 1)) == before);

  // And back: the config in force holds what the last reload applied, so a return to the first
  // values is a change too (it used to be compared with the values of the start and skipped).
  write_file(file, body("audit_log_max_bytes = \"4KiB\"\naudit_log_keep = 2\n"));
  rl = relay::http_call("POST", "http://" + hub->address("admin") + "/v1/reload");
  REQUIRE(rl.has_value());
  INFO(rl->body);
  CHECK_THAT(rl->body, Contains("node.audit_log_max_bytes, node.audit_log_keep"));
  knock(1);
  REQUIRE(eventually([&] { return std::filesystem::file_size(audit) <= 4096; })); // rotated again
  hub->stop();
}
