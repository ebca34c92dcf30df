// XC-CERT-01 at the node level: certificates, keys and CRLs replaced on disk
// while an edge streams to a hub over mTLS. Each rotation is detected from
// the file change (no reload call), new connections use the new material,
// live ones continue, nothing is lost or duplicated, no handshake fails; a
// CRL that revokes the edge closes its live session and refuses it from then
// on, with its data kept in its queue.
//
// Certificates come from edgerelay's own development PKI (transport/pki):
// pki_reissue() writes a new key and certificate, add_revoked() a new CRL.
// An impairment proxy between the nodes drops the connection after each
// rotation so that a new handshake has to use the new material.

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/impair.hpp"
#include "relay/node.hpp"
#include "relay/spool.hpp"
#include "tests/support/exposition.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/openssl_pki.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/toml.hpp"
#include "transport/pki.hpp"
#include "transport/tls.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <ctime>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <thread>

using namespace edgerelay;
using test::eventually;
using namespace std::chrono_literals;
namespace json = boost::json;

namespace {

using test::q;

std::uint16_t port_of(const std::string& address) {
  return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
}

// Lines of a node's audit log (data_dir/audit.log) that contain `needle`.
int audit_lines(const std::filesystem::path& file, const std::string& needle) {
  std::ifstream in(file);
  std::string line;
  int n = 0;
  while (std::getline(in, line))
    n += line.find(needle) != std::string::npos;
  return n;
}

// A counter's value; 0 while the node has not created the series yet.
double metric(const std::string& text, const std::string& series) {
  return test::series_value(text, series).value_or(0);
}
using test::family_sum;

struct rig {
  test::temp_dir dir{"cert-rotation"};
  transport::pki_paths pki;
  std::unique_ptr<relay::node> hub, edge;
  std::unique_ptr<relay::impair_proxy> proxy;
  std::string edge_ingest, edge_admin, hub_admin;

  std::atomic<bool> stop_producer{false};
  std::mutex mu;
  std::set<std::string> acked; // ids the edge answered 201 for
  std::thread producer;

  rig() {
    auto p = transport::pki_init(dir / "pki");
    REQUIRE(p.has_value());
    pki = *p;
    hub = test::start_node(relay::parse_config(
        "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "hub") + "\n[listen]\naddress = \"127.0.0.1:0\"\ncert = " +
            q(pki.server_cert) + "\nkey = " + q(pki.server_key) + "\nca = " + q(pki.ca_cert) + "\ncrl = " + q(pki.crl) +
            "\n[admin]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n"
            "[[peer]]\nname = \"spool\"\nurl = \"file://" +
            (dir / "spool").string() + "\"\n",
        "hub.toml", dir.path()));
    relay::impair_options po;
    po.upstream =
        boost::asio::ip::tcp::endpoint(boost::asio::ip::address_v4::loopback(), port_of(hub->address("listen")));
    auto px = relay::impair_proxy::create(po);
    REQUIRE(px.has_value());
    proxy = std::move(*px);
    edge = test::start_node(relay::parse_config(
        "[node]\nid = \"edge\"\ndata_dir = " + q(dir / "edge") +
            "\n[queue]\nmax_retry = 60000\nretry_backoff = {initial = \"20ms\", max = \"200ms\", multiplier = 2.0, "
            "jitter = 0.1}\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
            "[evidence]\ncanary_interval = \"0s\"\n"
            "[[peer]]\nname = \"hub\"\nurl = \"wss://" +
            proxy->address() + "/v1/relay\"\nserver_name = \"localhost\"\ncert = " + q(pki.client_cert) +
            "\nkey = " + q(pki.client_key) + "\nca = " + q(pki.ca_cert) + "\ncrl = " + q(pki.crl) +
            "\ndial_timeout = \"2s\"\nack_timeout = \"5s\"\n",
        "edge.toml", dir.path()));
    edge_ingest = "http://" + edge->address("ingest");
    edge_admin = "http://" + edge->address("admin");
    hub_admin = "http://" + hub->address("admin");
  }
  ~rig() {
    stop_sending();
    if (edge) edge->stop();
    if (hub) hub->stop();
  }

  // A steady stream of 512-byte segments, at most 60 s.
  void start_sending() {
    producer = std::thread([this] {
      auto until = std::chrono::steady_clock::now() + 60s;
      for (int i = 0; !stop_producer && std::chrono::steady_clock::now() < until; ++i) {
        std::string payload = "rotation-" + std::to_string(i);
        payload.resize(512, '.');
        auto r = relay::http_call("POST", edge_ingest + "/v1/streams/s/segments", payload, 5s);
        if (r && r->status == 201) {
          std::lock_guard lk(mu);
          acked.insert(std::string(json::parse(r->body).at("id").as_string()));
        }
        std::this_thread::sleep_for(2ms);
      }
    });
  }
  void stop_sending() {
    stop_producer = true;
    if (producer.joinable()) producer.join();
  }

  static json::object status(const std::string& admin) {
    auto r = relay::http_call("GET", admin + "/v1/status");
    REQUIRE(r.has_value());
    return json::parse(r->body).as_object();
  }
  static std::string metrics(const std::string& admin) {
    auto r = relay::http_call("GET", admin + "/metrics");
    REQUIRE(r.has_value());
    return "\n" + r->body;
  }
  static json::object tls_entry(const json::object& st, std::string_view name) {
    for (auto& t : st.at("tls").as_array())
      if (t.as_object().at("name").as_string() == name) return t.as_object();
    FAIL("no tls entry " << name << " in " << json::serialize(st));
    return {};
  }
  std::uint64_t edge_connections() {
    auto st = status(edge_admin);
    return st.at("peers").as_array().at(0).as_object().at("connections").to_number<std::uint64_t>();
  }
  std::string edge_state() {
    auto st = status(edge_admin);
    return std::string(st.at("peers").as_array().at(0).as_object().at("state").as_string());
  }
  // Drops the live connection and waits until the edge has a new one.
  void force_reconnect() {
    auto before = edge_connections();
    proxy->drop_all();
    REQUIRE(eventually([&] { return edge_connections() > before && edge_state() == "connected"; }, 15s));
  }
};

// A node's tls[] entry `name` in its status (through its admin API).
json::object tls_of(relay::node& n, std::string_view name) {
  return rig::tls_entry(rig::status("http://" + n.address("admin")), name);
}

} // namespace

TEST_CASE("certificates rotated 10 times on both sides while streaming: detected, used, nothing lost",
          "[e2e][tls][rotation]") {
  rig r;
  r.start_sending();
  REQUIRE(eventually([&] { return r.edge_state() == "connected"; }, 15s));
  std::vector<std::filesystem::path> old_certs;
  auto keep_copy = [&](const std::filesystem::path& cert, int i) {
    auto copy = r.dir / ("old-" + cert.filename().string() + "-" + std::to_string(i));
    std::filesystem::copy_file(cert, copy);
    old_certs.push_back(copy);
  };
  std::chrono::steady_clock::duration slowest{0};
  auto rotate = [&](transport::pki_leaf which, const std::string& admin, const std::string& name, int i) {
    keep_copy(which == transport::pki_leaf::server ? r.pki.server_cert : r.pki.client_cert, i);
    auto t0 = std::chrono::steady_clock::now();
    REQUIRE(transport::pki_reissue(r.dir / "pki", which).has_value());
    auto want = transport::read_cert_info(which == transport::pki_leaf::server ? r.pki.server_cert : r.pki.client_cert);
    REQUIRE(want.has_value());
    INFO(name << " rotation " << i);
    REQUIRE(eventually(
        [&] { return rig::tls_entry(rig::status(admin), name).at("serial").as_string() == want->serial; }, 10s));
    slowest = std::max(slowest, std::chrono::steady_clock::now() - t0);
    r.force_reconnect(); // a new handshake, with the new material
  };
  for (int i = 0; i < 10; ++i) {
    rotate(transport::pki_leaf::server, r.hub_admin, "listen", i);
    rotate(transport::pki_leaf::client, r.edge_admin, "peer:hub", i);
  }
  CHECK(std::chrono::duration_cast<std::chrono::milliseconds>(slowest).count() < 2000);
  CHECK(rig::tls_entry(rig::status(r.hub_admin), "listen").at("rotations").to_number<int>() == 10);
  CHECK(rig::tls_entry(rig::status(r.edge_admin), "peer:hub").at("rotations").to_number<int>() == 10);

  // Proof that the new material is what new connections use: revoke every
  // earlier certificate of both sides; the next handshake still succeeds.
  for (auto& c : old_certs)
    REQUIRE(transport::add_revoked(r.dir / "pki", c).has_value());
  REQUIRE(eventually([&] {
    return rig::tls_entry(rig::status(r.hub_admin), "listen").at("rotations").to_number<int>() == 11 &&
           rig::tls_entry(rig::status(r.edge_admin), "peer:hub").at("rotations").to_number<int>() == 11;
  }));
  r.force_reconnect();
  r.stop_sending();

  std::set<std::string> acked;
  {
    std::lock_guard lk(r.mu);
    acked = r.acked;
  }
  REQUIRE(acked.size() > 200);
  std::map<std::string, int> seen;
  REQUIRE(eventually(
      [&] {
        seen.clear();
        auto rd = relay::read_spool(r.dir / "spool", [&](const relay::spool_record& rec) {
          ++seen[rec.id];
          return true;
        });
        if (!rd) return false;
        for (auto& id : acked)
          if (!seen.count(id)) return false;
        return true;
      },
      30s));
  for (auto& [id, n] : seen) {
    INFO(id);
    CHECK(n == 1);
  }
  auto hm = rig::metrics(r.hub_admin), em = rig::metrics(r.edge_admin);
  INFO(hm << em);
  CHECK(family_sum(hm, "edgerelay_tls_handshake_failures_total") == 0);
  CHECK(family_sum(em, "edgerelay_tls_handshake_failures_total") == 0);
  CHECK(metric(hm, "edgerelay_tls_cert_rotations_total{name=\"listen\",result=\"applied\"}") == 11);
  CHECK(metric(em, "edgerelay_tls_cert_rotations_total{name=\"peer:hub\",result=\"applied\"}") == 11);
  CHECK(family_sum(hm, "edgerelay_tls_cert_rotations_total", "failed") == 0);
  CHECK(family_sum(em, "edgerelay_tls_cert_rotations_total", "failed") == 0);
  CHECK(rig::status(r.edge_admin).at("totals").at("loss").to_number<int>() == 0);
  // Each rotation is an audit event on its node.
  CHECK(audit_lines(r.dir / "hub" / "audit.log", "\"event\":\"cert_rotated\"") == 11);
  CHECK(audit_lines(r.dir / "edge" / "audit.log", "\"event\":\"cert_rotated\"") == 11);
  // The one CRL change (every earlier certificate revoked) is a crl_reloaded event with its entry count.
  CHECK(audit_lines(r.dir / "hub" / "audit.log", "\"event\":\"crl_reloaded\"") == 1);
  CHECK(audit_lines(r.dir / "hub" / "audit.log", "\"entries\":20") == 1);
}

TEST_CASE("a CRL that revokes the edge closes its live session and refuses it, its data stays queued",
          "[e2e][tls][rotation]") {
  rig r;
  REQUIRE(relay::http_call("POST", r.edge_ingest + "/v1/streams/s/segments", "before")->status == 201);
  REQUIRE(eventually([&] { return r.edge_state() == "connected"; }, 15s));
  REQUIRE(eventually([&] { return rig::status(r.edge_admin).at("totals").at("delivered").to_number<int>() == 1; }));
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(transport::add_revoked(r.dir / "pki", r.pki.client_cert).has_value());
  REQUIRE(eventually([&] {
    return metric(rig::metrics(r.hub_admin),
                  "edgerelay_tls_sessions_closed_total{listener=\"listen\",reason=\"revoked\"}") == 1;
  }));
  auto closed_after = std::chrono::steady_clock::now() - t0;
  CHECK(std::chrono::duration_cast<std::chrono::milliseconds>(closed_after).count() < 2000);
  // From now on every attempt is refused at the handshake.
  REQUIRE(eventually([&] {
    return metric(rig::metrics(r.hub_admin),
                  "edgerelay_tls_handshake_failures_total{listener=\"listen\",reason=\"revoked\"}") >= 1;
  }));
  CHECK(r.edge_state() != "connected");
  for (int i = 0; i < 20; ++i)
    REQUIRE(relay::http_call("POST", r.edge_ingest + "/v1/streams/s/segments", "after-" + std::to_string(i))->status ==
            201);
  std::this_thread::sleep_for(500ms);
  auto st = rig::status(r.edge_admin);
  INFO(json::serialize(st));
  CHECK(st.at("totals").at("queued").to_number<int>() == 20);
  CHECK(st.at("totals").at("delivered").to_number<int>() == 1);
  CHECK(st.at("totals").at("loss").to_number<int>() == 0);
  CHECK(rig::status(r.hub_admin).at("totals").at("accepted").to_number<int>() == 1);
}

TEST_CASE("a broken certificate file keeps the old material in use and is reported", "[e2e][tls][rotation]") {
  rig r;
  auto before = rig::tls_entry(rig::status(r.hub_admin), "listen");
  // A key that does not match the certificate: the CA's key.
  std::filesystem::copy_file(r.pki.ca_key, r.dir / "bad.key");
  std::filesystem::rename(r.dir / "bad.key", r.pki.server_key);
  REQUIRE(eventually(
      [&] { return rig::tls_entry(rig::status(r.hub_admin), "listen").at("failures").to_number<int>() == 1; }));
  auto after = rig::tls_entry(rig::status(r.hub_admin), "listen");
  CHECK(after.at("serial") == before.at("serial"));
  CHECK(after.at("rotations").to_number<int>() == 0);
  CHECK(std::string(after.at("last_error").as_string()).find("does not match") != std::string::npos);
  CHECK(metric(rig::metrics(r.hub_admin), "edgerelay_tls_cert_rotations_total{name=\"listen\",result=\"failed\"}") ==
        1);
  CHECK(audit_lines(r.dir / "hub" / "audit.log", "\"event\":\"cert_reload_failed\"") == 1);
  // Still serving with the old material.
  REQUIRE(relay::http_call("POST", r.edge_ingest + "/v1/streams/s/segments", "still")->status == 201);
  r.force_reconnect();
  REQUIRE(eventually([&] { return rig::status(r.edge_admin).at("totals").at("delivered").to_number<int>() == 1; }));
}

namespace {

// A server certificate and key from `pki`'s CA whose notBefore is `ahead` from now, written to
// DIR/<name>.pem and DIR/<name>.key (openssl ca: the only tool at hand that sets a start date).
std::pair<std::filesystem::path, std::filesystem::path> future_server_cert(const transport::pki_paths& pki,
                                                                           const std::filesystem::path& dir,
                                                                           const std::string& name,
                                                                           std::chrono::seconds ahead) {
  auto stamp = [](std::chrono::system_clock::time_point t) {
    std::time_t tt = std::chrono::system_clock::to_time_t(t);
    std::tm tm{};
    gmtime_r(&tt, &tm);
    char b[32];
    std::strftime(b, sizeof b, "%Y%m%d%H%M%SZ", &tm); // GeneralizedTime, which openssl ca takes too
    return std::string(b);
  };
  const auto now = std::chrono::system_clock::now();
  test::write_file(dir / "ca.cnf", "[ca]\ndefault_ca = c\n[c]\ndatabase = index.txt\nnew_certs_dir = .\nserial = "
                                   "serial\ndefault_md = sha256\npolicy = p\nunique_subject = no\n"
                                   "[p]\ncommonName = supplied\n");
  test::write_file(dir / "index.txt", "");
  if (!std::filesystem::exists(dir / "serial")) test::write_file(dir / "serial", "1000\n");
  test::run_openssl("req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout " + name + ".key -subj " +
                        "/CN=edgerelay-hub-" + name + " -out " + name + ".csr",
                    dir);
  test::run_openssl("ca -config ca.cnf -batch -notext -cert " + pki.ca_cert.string() + " -keyfile " +
                        pki.ca_key.string() + " -in " + name + ".csr -out " + name + ".pem -startdate " +
                        stamp(now + ahead) + " -enddate " + stamp(now + std::chrono::hours(24)),
                    dir);
  return {dir / (name + ".pem"), dir / (name + ".key")};
}

} // namespace

TEST_CASE("a certificate refused as not yet valid goes in force once it is: on a reload, and by itself",
          "[e2e][tls][rotation]") {
  test::temp_dir dir("cert-future");
  auto p = transport::pki_init(dir / "pki");
  REQUIRE(p.has_value());
  const auto file = dir / "hub.toml";
  // dedupe_window sets the maintenance cadence (a tenth of it, at least 1 s), which retries such files.
  auto cfg = [&](const std::string& queue) {
    return "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "hub") + "\n[queue]\n" + queue +
           "[listen]\naddress = \"127.0.0.1:0\"\ncert = " + q(p->server_cert) + "\nkey = " + q(p->server_key) +
           "\nca = " + q(p->ca_cert) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n" +
           "[[peer]]\nname = \"spool\"\nurl = \"file://" + (dir / "spool").string() + "\"\n";
  };
  auto listen_tls = [](relay::node& n) { return tls_of(n, "listen"); };
  auto install = [&](const std::string& name, std::chrono::seconds ahead) {
    auto [cert, key] = future_server_cert(*p, dir.path(), name, ahead);
    std::filesystem::rename(key, p->server_key);
    std::filesystem::rename(cert, p->server_cert);
  };
  auto refused_until_valid = [&](relay::node& n, const json::value& serial) {
    REQUIRE(eventually([&] { return listen_tls(n).at("failures").to_number<int>() >= 1; }));
    auto t = listen_tls(n);
    CHECK(t.at("serial") == serial); // the old one stays in force
    CHECK(std::string(t.at("last_error").as_string()).find("is not valid before") != std::string::npos);
  };

  {
    // The default cadence (a minute): nothing retries it within the test but a reload.
    test::write_file(file, cfg(""));
    auto n = test::start_node(relay::load_config(file));
    const auto serial0 = listen_tls(*n).at("serial");
    install("a", 3s);
    refused_until_valid(*n, serial0);
    std::this_thread::sleep_for(4s);
    CHECK(listen_tls(*n).at("serial") == serial0); // the files did not change: no watcher event
    auto rl = relay::http_call("POST", "http://" + n->address("admin") + "/v1/reload");
    REQUIRE(rl.has_value());
    INFO(rl->body);
    CHECK(rl->body.find("tls listen: changed") != std::string::npos);
    auto t = listen_tls(*n);
    CHECK(t.at("serial") != serial0);
    CHECK(t.at("last_error") == "");
    n->stop();
  }
  {
    test::write_file(file, cfg("dedupe_window = \"10s\"\n"));
    auto n = test::start_node(relay::load_config(file));
    const auto serial1 = listen_tls(*n).at("serial");
    install("b", 3s);
    refused_until_valid(*n, serial1);
    REQUIRE(eventually([&] { return listen_tls(*n).at("serial") != serial1; }, 15s));
    CHECK(listen_tls(*n).at("last_error") == "");
    CHECK(listen_tls(*n).at("rotations").to_number<int>() == 1);
    n->stop();
  }
}

TEST_CASE("a client revoked by a reloaded CRL is refused on its open HTTPS keep-alive connection to the ingest "
          "listener",
          "[e2e][tls][rotation]") {
  test::temp_dir dir("ingest-keepalive-revoked");
  auto p = transport::pki_init(dir / "pki");
  REQUIRE(p.has_value());
  auto n = test::start_node(relay::parse_config(
      "[node]\nid = \"n\"\ndata_dir = " + q(dir / "data") +
          "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[ingest.tls]\ncert = " + q(p->server_cert) +
          "\nkey = " + q(p->server_key) + "\nca = " + q(p->ca_cert) + "\ncrl = " + q(p->crl) +
          "\n[admin]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\n"
          "url = \"file://" +
          (dir / "spool").string() + "\"\n",
      "n.toml", dir.path()));
  namespace beast = boost::beast;
  namespace http = beast::http;
  namespace net = boost::asio;
  auto cctx = transport::make_client_context(p->client_files(), "localhost");
  REQUIRE(cctx.has_value());
  net::io_context io;
  beast::ssl_stream<beast::tcp_stream> s(io, **cctx);
  REQUIRE(transport::prepare_client_ssl(s.native_handle(), "localhost").has_value());
  beast::get_lowest_layer(s).expires_after(20s);
  beast::get_lowest_layer(s).connect({net::ip::make_address("127.0.0.1"), port_of(n->address("ingest"))});
  s.handshake(net::ssl::stream_base::client);
  auto post = [&](const std::string& body) {
    http::request<http::string_body> req{http::verb::post, "/v1/streams/s/segments", 11};
    req.set(http::field::host, "localhost");
    req.keep_alive(true);
    req.body() = body;
    req.prepare_payload();
    http::write(s, req);
    beast::flat_buffer buf;
    http::response<http::string_body> res;
    http::read(s, buf, res);
    return res;
  };
  CHECK(post("before").result_int() == 201);
  auto tls_rotations = [&] { return tls_of(*n, "ingest").at("rotations").to_number<int>(); };
  REQUIRE(transport::add_revoked(dir / "pki", p->client_cert).has_value());
  REQUIRE(eventually([&] { return tls_rotations() == 1; }));
  // The same connection: refused now, and closed.
  auto res = post("after");
  INFO(res.body());
  CHECK(res.result_int() == 403);
  CHECK(res.body().find("revoked") != std::string::npos);
  beast::flat_buffer buf;
  http::response<http::string_body> more;
  beast::error_code ec;
  http::read(s, buf, more, ec);
  CHECK(ec); // closed by the node
  // Only the first write was stored.
  auto st = relay::http_call("GET", "http://" + n->address("admin") + "/v1/status");
  REQUIRE(st.has_value());
  CHECK(json::parse(st->body).at("totals").at("accepted").to_number<int>() == 1);
  n->stop();
}

TEST_CASE("a reload that moves a listener to new TLS files that fail keeps the old ones, reports it, and applies the "
          "files once they are fixed",
          "[e2e][tls][rotation]") {
  test::temp_dir dir("tls-path-reload");
  auto p = transport::pki_init(dir / "pki");
  REQUIRE(p.has_value());
  // A second server certificate from the same CA, at other paths.
  std::filesystem::copy(dir / "pki", dir / "pki2");
  REQUIRE(transport::pki_reissue(dir / "pki2", transport::pki_leaf::server).has_value());
  const auto file = dir / "hub.toml";
  auto cfg = [&](const std::filesystem::path& pki) {
    return "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "hub") +
           "\n[listen]\naddress = \"127.0.0.1:0\"\ncert = " + q(pki / "server.pem") +
           "\nkey = " + q(pki / "server.key") + "\nca = " + q(p->ca_cert) +
           "\n[admin]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\n"
           "url = \"file://" +
           (dir / "spool").string() + "\"\n";
  };
  test::write_file(file, cfg(dir / "pki"));
  auto n = test::start_node(relay::load_config(file));
  auto listen_tls = [&] { return tls_of(*n, "listen"); };
  auto reload = [&] {
    auto r = relay::http_call("POST", "http://" + n->address("admin") + "/v1/reload");
    REQUIRE(r.has_value());
    return r->body;
  };
  const auto serial0 = listen_tls().at("serial");
  const auto good_key = test::slurp(dir / "pki2" / "server.key");
  test::write_file(dir / "pki2" / "server.key", test::slurp(p->ca_key)); // not the certificate's key
  test::write_file(file, cfg(dir / "pki2"));
  auto body = reload();
  INFO(body);
  CHECK(body.find("listen: private key") != std::string::npos);
  auto t = listen_tls();
  CHECK(t.at("serial") == serial0);
  CHECK(t.at("failures").to_number<int>() == 1);
  CHECK(std::string(t.at("last_error").as_string()).find("does not match") != std::string::npos);
  // The new files fixed: the next reload applies them (it used to answer "nothing changed").
  test::write_file(dir / "pki2" / "server.key", good_key);
  body = reload();
  INFO(body);
  CHECK(body.find("listen: TLS material and allow list") != std::string::npos);
  // Applied once: not a second time by the refresh of unchanged paths that
  // follows (it used to report "tls listen: changed certificate…" and audit
  // a second rotation).
  CHECK(body.find("tls listen: changed") == std::string::npos);
  t = listen_tls();
  CHECK(t.at("serial") != serial0);
  CHECK(t.at("last_error") == "");
  CHECK(t.at("rotations").to_number<int>() == 1);
  CHECK(t.at("failures").to_number<int>() == 1);
  const auto audit = dir / "hub" / "audit.log";
  CHECK(audit_lines(audit, "\"event\":\"cert_rotated\"") == 1);
  CHECK(audit_lines(audit, "\"event\":\"cert_reload_failed\"") == 1);
  CHECK(audit_lines(audit, (dir / "pki2" / "server.pem").string()) >= 1); // the refusal names the new files
  // A reload with nothing changed applies nothing.
  body = reload();
  CHECK(body.find("TLS material") == std::string::npos);
  CHECK(listen_tls().at("rotations").to_number<int>() == 1);
  n->stop();
}

TEST_CASE("a handshake the admin listener refuses is counted like the other listeners'", "[e2e][tls]") {
  test::temp_dir dir("admin-tls-refused");
  auto p = transport::pki_init(dir / "pki");
  REQUIRE(p.has_value());
  auto n = test::start_node(relay::parse_config(
      "[node]\nid = \"n\"\ndata_dir = " + q(dir / "data") +
          "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[admin.tls]\ncert = " +
          q(p->server_cert) + "\nkey = " + q(p->server_key) + "\nca = " + q(p->ca_cert) +
          "\n[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\nurl = \"file://" +
          (dir / "spool").string() + "\"\n",
      "n.toml", dir.path()));
  const auto port = port_of(n->address("admin"));
  // A client without a certificate: refused at the handshake.
  boost::asio::ssl::context anonymous(boost::asio::ssl::context::tls_client);
  anonymous.load_verify_file(p->ca_cert.string());
  anonymous.set_verify_mode(boost::asio::ssl::verify_peer);
  auto refused = relay::https_call(anonymous, "GET", "127.0.0.1", port, "/metrics", "localhost", "", "text/plain", 5s);
  CHECK_FALSE(refused.has_value());
  auto cctx = transport::make_client_context(p->client_files(), "localhost");
  REQUIRE(cctx.has_value());
  REQUIRE(eventually([&] {
    auto m = relay::https_call(**cctx, "GET", "127.0.0.1", port, "/metrics", "localhost", "", "text/plain", 5s);
    return m && m->status == 200 &&
           test::family_sum(m->body, "edgerelay_tls_handshake_failures_total", "listener=\"admin\"") == 1;
  }));
  n->stop();
}

TEST_CASE("a CRL taken out of the config by a reload takes its nextUpdate series with it", "[e2e][tls]") {
  test::temp_dir dir("crl-series");
  auto p = transport::pki_init(dir / "pki");
  REQUIRE(p.has_value());
  const auto file = dir / "hub.toml";
  auto cfg = [&](bool crl) {
    return "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "hub") +
           "\n[listen]\naddress = \"127.0.0.1:0\"\ncert = " + q(p->server_cert) + "\nkey = " + q(p->server_key) +
           "\nca = " + q(p->ca_cert) + (crl ? "\ncrl = " + q(p->crl) : std::string()) +
           "\n[admin]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\n"
           "url = \"file://" +
           (dir / "spool").string() + "\"\n";
  };
  test::write_file(file, cfg(true));
  auto n = test::start_node(relay::load_config(file));
  const std::string series = "edgerelay_tls_crl_next_update_timestamp_seconds{name=\"listen\"}";
  CHECK(test::series_value(rig::metrics("http://" + n->address("admin")).substr(1), series).has_value());
  test::write_file(file, cfg(false));
  auto rl = relay::http_call("POST", "http://" + n->address("admin") + "/v1/reload");
  REQUIRE(rl.has_value());
  INFO(rl->body);
  REQUIRE(rl->body.find("listen: TLS material and allow list") != std::string::npos);
  // Without a CRL in force there is nothing to run out: no series, so no alert.
  CHECK_FALSE(test::series_value(rig::metrics("http://" + n->address("admin")).substr(1), series).has_value());
  CHECK_FALSE(tls_of(*n, "listen").contains("crl_next_update"));
  CHECK(test::series_value(rig::metrics("http://" + n->address("admin")).substr(1),
                           "edgerelay_tls_cert_expiry_timestamp_seconds{name=\"listen\"}")
            .has_value());
  n->stop();
}

TEST_CASE("GET /readyz turns unready before the node's own certificate expires", "[e2e][tls]") {
  test::temp_dir dir("readyz-expiry");
  transport::pki_options o;
  o.validity_days = 2; // expires in ~2 days, inside a 3-day margin
  auto p = transport::pki_init(dir / "pki", o);
  REQUIRE(p.has_value());
  auto cfg = [&](const std::string& margin) {
    return "[node]\nid = \"r\"\ndata_dir = " + q(dir / "data") + "\nunready_before_cert_expiry = \"" + margin +
           "\"\n[listen]\naddress = \"127.0.0.1:0\"\ncert = " + q(p->server_cert) + "\nkey = " + q(p->server_key) +
           "\nca = " + q(p->ca_cert) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n" +
           "[[peer]]\nname = \"spool\"\nurl = \"file://" + (dir / "spool").string() + "\"\n";
  };
  {
    auto n = test::start_node(relay::parse_config(cfg("72h"), "n.toml", dir.path()));
    auto r = relay::http_call("GET", "http://" + n->address("admin") + "/readyz");
    REQUIRE(r.has_value());
    INFO(r->body);
    CHECK(r->status == 503);
    CHECK(r->body.find("tls listen: certificate") != std::string::npos);
    CHECK(r->body.find("expires at") != std::string::npos);
    n->stop();
  }
  {
    auto n = test::start_node(relay::parse_config(cfg("24h"), "n.toml", dir.path()));
    auto r = relay::http_call("GET", "http://" + n->address("admin") + "/readyz");
    REQUIRE(r.has_value());
    CHECK(r->status == 200);
    CHECK(r->body.find("\"ready\":true") != std::string::npos);
    n->stop();
  }
  {
    // The CRL's nextUpdate is in status and in a metric (an expired CRL refuses every chain it covers; the
    // alert warns ahead). Readiness does not use the margin for it: CRLs live a day or a few, and one inside
    // the margin is normal; only an expired one makes the node unready.
    transport::pki_options co;
    co.crl_validity_days = 2;
    auto c = transport::pki_init(dir / "pki-crl", co);
    REQUIRE(c.has_value());
    auto text = cfg("72h");
    for (auto [from, to] : {std::pair{p->server_cert, c->server_cert}, std::pair{p->server_key, c->server_key},
                            std::pair{p->ca_cert, c->ca_cert}}) {
      auto at = text.find(q(from));
      REQUIRE(at != std::string::npos);
      text.replace(at, q(from).size(), q(to));
    }
    text.replace(text.find("\n[admin]"), 0, "\ncrl = " + q(c->crl));
    auto n = test::start_node(relay::parse_config(text, "n.toml", dir.path()));
    auto r = relay::http_call("GET", "http://" + n->address("admin") + "/readyz");
    REQUIRE(r.has_value());
    INFO(r->body);
    CHECK(r->status == 200); // the CRL runs out in 2 days, inside the 72 h margin; the certificate has a year
    auto st = relay::http_call("GET", "http://" + n->address("admin") + "/v1/status");
    REQUIRE(st.has_value());
    const auto sj = json::parse(st->body);
    const auto next = sj.at("tls").as_array().at(0).as_object().at("crl_next_update").to_number<std::int64_t>();
    const auto now_s =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    CHECK(next > now_s + 86400);
    CHECK(next <= now_s + 2 * 86400 + 60);
    auto mt = relay::http_call("GET", "http://" + n->address("admin") + "/metrics");
    REQUIRE(mt.has_value());
    CHECK(test::series_value(mt->body, "edgerelay_tls_crl_next_update_timestamp_seconds{name=\"listen\"}") ==
          static_cast<double>(next));
    n->stop();
  }
  // The margin is live: a reload applies it both ways (it used to report "applied" and keep the old one).
  const auto file = dir / "n.toml";
  test::write_file(file, cfg("24h"));
  auto n = test::start_node(relay::load_config(file));
  auto ready = [&] {
    auto r = relay::http_call("GET", "http://" + n->address("admin") + "/readyz");
    REQUIRE(r.has_value());
    return r->status;
  };
  auto reload = [&](const std::string& margin) {
    test::write_file(file, cfg(margin));
    auto rl = relay::http_call("POST", "http://" + n->address("admin") + "/v1/reload");
    REQUIRE(rl.has_value());
    INFO(rl->body);
    CHECK(rl->body.find("node.unready_before_cert_expiry") != std::string::npos);
  };
  CHECK(ready() == 200);
  reload("72h");
  CHECK(ready() == 503);
  reload("24h");
  CHECK(ready() == 200);
  n->stop();
}
