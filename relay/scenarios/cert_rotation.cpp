// XC-CERT-01: certificate rotation without downtime. An edge process streams
// to a hub process over mTLS (through an impairment proxy that drops the
// connection after each rotation, so every rotation is followed by a new
// handshake) while the hub's server certificate and the edge's client
// certificate are replaced on disk with new keys, alternately. Checked:
// each rotation is in force within 2 s without a reload or restart, no
// handshake fails, every earlier certificate can then be revoked and the
// next handshake still succeeds (so the new material is what is used),
// nothing is lost or duplicated, every rotation is in the audit log; and a
// CRL that revokes the edge closes its live session within 2 s, refuses it
// from then on and leaves its data queued.
//
// The certificates are made by edgerelay's development PKI (transport/pki)
// in this scenario's own folder, not the run's shared one.

#include "relay/http_client.hpp"
#include "relay/impair.hpp"
#include "relay/scenarios/scenarios.hpp"
#include "transport/tls.hpp"

#include <boost/json.hpp>

#include <atomic>
#include <fstream>
#include <mutex>
#include <thread>

namespace edgerelay::relay::scenarios {

namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

// Sum of every series of a metric family whose label text contains `needle`.
double family_sum(const node_proc& n, const std::string& family, const std::string& needle = "") {
  auto r = http_call("GET", n.admin_url() + "/metrics", {}, 10s);
  if (!r || r->status != 200) throw scenario_error("GET /metrics of " + n.name + " failed");
  double sum = 0;
  std::size_t at = 0;
  const std::string text = "\n" + r->body;
  while ((at = text.find("\n" + family + "{", at)) != std::string::npos) {
    auto eol = text.find('\n', at + 1);
    auto line = text.substr(at + 1, eol - at - 1);
    if (line.find(needle) != std::string::npos) sum += std::stod(line.substr(line.rfind(' ') + 1));
    at = eol;
  }
  return sum;
}

json::object tls_entry(const node_proc& n, std::string_view name) {
  auto st = status(n);
  for (auto& t : st.at("tls").as_array())
    if (t.as_object().at("name").as_string() == name) return t.as_object();
  throw scenario_error(n.name + ": no tls entry " + std::string(name) + " in /v1/status");
}

std::int64_t connections(const node_proc& edge) { return num(peer(status(edge), "hub"), "connections"); }
std::string peer_state(const node_proc& edge) { return std::string(peer(status(edge), "hub").at("state").as_string()); }

std::size_t count_in_file(const std::filesystem::path& p, const std::string& needle) {
  std::ifstream in(p);
  std::string line;
  std::size_t n = 0;
  while (std::getline(in, line))
    if (line.find(needle) != std::string::npos) ++n;
  return n;
}

} // namespace

void cert_rotation(context& ctx, telemetry::report& r) {
  const int rounds = ctx.quick ? 3 : 10;
  context c = ctx;
  auto pki = transport::pki_init(ctx.work / "pki");
  if (!pki) throw scenario_error("pki init: " + pki.error().message);
  c.pki = *pki;
  r.parameters["rotations_per_side"] = rounds;
  r.parameters["segment_bytes"] = 512;
  r.parameters["detection_limit_s"] = 2;
  r.limitations.push_back("loopback only; certificates from edgerelay's development PKI");

  const auto spool = ctx.work / "spool";
  auto hub = start_node(c, "hub", hub_toml(c, "hub", spool));
  impair_options po;
  po.upstream = boost::asio::ip::tcp::endpoint(boost::asio::ip::address_v4::loopback(), port_of(hub.listen));
  auto px = impair_proxy::create(po);
  if (!px) throw scenario_error("impairment proxy: " + px.error().message);
  auto& proxy = **px;
  auto edge =
      start_node(c, "edge",
                 edge_toml(c, "edge",
                           "max_retry = 60000\nretry_backoff = {initial = \"20ms\", max = \"200ms\", multiplier = 2.0, "
                           "jitter = 0.1}",
                           {relay_peer(c, "hub", proxy.address(),
                                       "crl = " + q(c.pki.crl) + "\ndial_timeout = \"2s\"\nack_timeout = \"5s\"")}));
  if (!wait_until([&] { return peer_state(edge) == "connected"; }, 20s))
    throw scenario_error("the edge did not connect to the hub");

  // A steady producer on a helper thread (HTTP only).
  std::atomic<bool> stop{false};
  std::mutex mu;
  sent_map sent;
  std::string producer_error;
  std::thread producer([&] {
    std::mt19937_64 rng{42};
    auto until = std::chrono::steady_clock::now() + 10min;
    try {
      while (!stop && std::chrono::steady_clock::now() < until) {
        sent_map part;
        send_segments(
            edge.ingest_url(), "rot", 20, [](std::mt19937_64&) { return std::size_t{512}; }, rng, part, 20);
        std::lock_guard lk(mu);
        sent.insert(part.begin(), part.end());
        std::this_thread::sleep_for(10ms);
      }
    } catch (const std::exception& e) {
      std::lock_guard lk(mu);
      producer_error = e.what();
    }
  });
  struct stop_producer {
    std::atomic<bool>& s;
    std::thread& t;
    ~stop_producer() {
      s = true;
      if (t.joinable()) t.join();
    }
  } guard{stop, producer};

  auto reconnect = [&] {
    auto before = connections(edge);
    proxy.drop_all();
    return wait_until([&] { return connections(edge) > before && peer_state(edge) == "connected"; }, 20s);
  };
  double slowest = 0;
  int detected = 0, reconnected = 0;
  std::vector<std::filesystem::path> old;
  for (int i = 0; i < rounds; ++i)
    for (auto which : {transport::pki_leaf::server, transport::pki_leaf::client}) {
      const bool server = which == transport::pki_leaf::server;
      const auto& cert = server ? c.pki.server_cert : c.pki.client_cert;
      auto keep = ctx.work / ("old-" + std::to_string(old.size()) + ".pem");
      std::filesystem::copy_file(cert, keep);
      old.push_back(keep);
      auto t0 = std::chrono::steady_clock::now();
      if (auto ok = transport::pki_reissue(ctx.work / "pki", which); !ok)
        throw scenario_error("pki reissue: " + ok.error().message);
      auto want = transport::read_cert_info(cert);
      if (!want) throw scenario_error("cannot read the new certificate: " + want.error().message);
      auto& n = server ? hub : edge;
      const char* name = server ? "listen" : "peer:hub";
      if (wait_until([&] { return tls_entry(n, name).at("serial").as_string() == want->serial; }, 10s)) {
        ++detected;
        slowest = std::max(slowest, seconds_since(t0));
      }
      if (reconnect()) ++reconnected;
    }
  r.check_equal("rotations detected from the files (no reload, no restart)", 2 * rounds, detected);
  r.check("slowest detection (s)", json::object{{"at_most", 2.0}}, slowest, detected == 2 * rounds && slowest < 2.0);
  r.check_equal("a new handshake succeeded after each rotation", 2 * rounds, reconnected);
  r.check_equal("hub tls listen rotations in status", rounds, num(tls_entry(hub, "listen"), "rotations"));
  r.check_equal("edge tls peer:hub rotations in status", rounds, num(tls_entry(edge, "peer:hub"), "rotations"));

  // Every earlier certificate revoked: the next handshake must still work.
  for (auto& o : old)
    if (auto ok = transport::add_revoked(ctx.work / "pki", o); !ok)
      throw scenario_error("add_revoked: " + ok.error().message);
  bool crl_seen = wait_until(
      [&] {
        return num(tls_entry(hub, "listen"), "rotations") == rounds + 1 &&
               num(tls_entry(edge, "peer:hub"), "rotations") == rounds + 1;
      },
      10s);
  r.check("the CRL revoking all earlier certificates is in force on both nodes", true, crl_seen, crl_seen);
  bool after_revoke = reconnect();
  r.check("handshake with only the newest certificates valid", true, after_revoke, after_revoke);

  stop = true;
  producer.join();
  {
    std::lock_guard lk(mu);
    if (!producer_error.empty()) throw scenario_error("producer: " + producer_error);
  }
  auto sc = wait_spool(spool, sent, 60s);
  r.check_equal("segments acknowledged to the producer and missing at the hub", 0,
                static_cast<std::int64_t>(sc.missing));
  r.check_equal("segments duplicated at the hub", 0, static_cast<std::int64_t>(sc.duplicated));
  r.check_equal("checksum errors", 0, static_cast<std::int64_t>(sc.bad_checksum));
  r.metrics["segments_acknowledged"] = static_cast<std::int64_t>(sc.expected);
  r.metrics["slowest_detection_s"] = slowest;
  double hub_fail = family_sum(hub, "edgerelay_tls_handshake_failures_total");
  double edge_fail = family_sum(edge, "edgerelay_tls_handshake_failures_total");
  r.check_equal("handshake failures at the hub", 0, static_cast<std::int64_t>(hub_fail));
  r.check_equal("handshake failures at the edge", 0, static_cast<std::int64_t>(edge_fail));
  r.check_equal("refused reloads (rotation failures), both nodes", 0,
                static_cast<std::int64_t>(family_sum(hub, "edgerelay_tls_cert_rotations_total", "failed") +
                                          family_sum(edge, "edgerelay_tls_cert_rotations_total", "failed")));
  r.check_equal("edge loss", 0, total(status(edge), "loss"));
  r.check_equal("hub audit log: cert_rotated events", rounds + 1,
                static_cast<std::int64_t>(count_in_file(ctx.work / "hub-data" / "audit.log", "\"cert_rotated\"")));
  r.check_equal("edge audit log: cert_rotated events", rounds + 1,
                static_cast<std::int64_t>(count_in_file(ctx.work / "edge-data" / "audit.log", "\"cert_rotated\"")));

  // Revocation of the edge itself: its live session is closed, it is refused.
  // The hub's spool being complete does not mean the edge has every ACK yet:
  // the baseline is taken once the edge's queue is empty, so that ACKs still
  // in flight are not counted as deliveries after the revocation.
  bool edge_drained = wait_until([&] { return total(status(edge), "queued") == 0; }, 30s);
  r.check("edge queue empty before the revocation", true, edge_drained, edge_drained);
  auto delivered_before = total(status(edge), "delivered");
  auto t0 = std::chrono::steady_clock::now();
  if (auto ok = transport::add_revoked(ctx.work / "pki", c.pki.client_cert); !ok)
    throw scenario_error("add_revoked: " + ok.error().message);
  bool closed = wait_until(
      [&] { return family_sum(hub, "edgerelay_tls_sessions_closed_total", "reason=\"revoked\"") >= 1; }, 10s);
  double close_s = seconds_since(t0);
  r.check("revoked edge's live session closed (s)", json::object{{"at_most", 2.0}}, close_s, closed && close_s < 2.0);
  bool refused = wait_until(
      [&] { return family_sum(hub, "edgerelay_tls_handshake_failures_total", "reason=\"revoked\"") >= 1; }, 15s);
  r.check("revoked edge refused at its next handshake", true, refused, refused);
  std::mt19937_64 rng{7};
  sent_map later;
  send_segments(
      edge.ingest_url(), "rot", 10, [](std::mt19937_64&) { return std::size_t{64}; }, rng, later, 10);
  sleep_for(1s);
  auto es = status(edge);
  r.check_equal("segments sent after the revocation stay queued at the edge", 10, total(es, "queued"));
  r.check_equal("nothing delivered after the revocation", delivered_before, total(es, "delivered"));
  r.check_equal("edge loss after the revocation", 0, total(es, "loss"));
  r.metrics["revoked_session_closed_s"] = close_s;
}

} // namespace edgerelay::relay::scenarios
