// What a running node does at its boundaries: every trust-chain refusal on
// the relay listener (its log line, its metric label, and that no data was
// accepted), a server refused by an edge for its name, oversized frames and
// segments, and producers on the ingest listener's WebSocket endpoint.
// Certificates come from the openssl command-line tool (tests/support).

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "relay/producer.hpp"
#include "relay/spool.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/openssl_pki.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/toml.hpp"
#include "transport/relay_codec.hpp"
#include "transport/tls.hpp"
#include "transport/ws_client.hpp"
#include "util/checksum.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/json.hpp>
#include <catch2/catch.hpp>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <future>
#include <set>
#include <thread>

using namespace edgerelay;
using test::eventually;
using namespace std::chrono_literals;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using Catch::Matchers::Contains;

namespace {

const test::openssl_pki& pki() { return test::openssl_pki::shared(); }

using test::q;

// Every line the default logger writes while it exists.
class log_capture {
public:
  log_capture() { spdlog::default_logger()->sinks().push_back(sink_); }
  ~log_capture() {
    auto& v = spdlog::default_logger()->sinks();
    v.erase(std::remove(v.begin(), v.end(), sink_), v.end());
  }
  bool has(const std::string& needle) const {
    for (auto& l : sink_->last_formatted())
      if (l.find(needle) != std::string::npos) return true;
    return false;
  }

private:
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_ = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(4096);
};

std::unique_ptr<relay::node> start_node(const std::string& toml, const std::filesystem::path& dir) {
  return test::start_node(relay::parse_config(toml, "node.toml", dir));
}

std::uint16_t port_of(const std::string& address) {
  return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
}

// A hub: relay listener with CA, CRL and an allow list; plain ingest; a file
// sink for every stream. max_segment_bytes is small so "too large" is cheap.
struct hub_fixture {
  test::temp_dir dir{"boundaries"};
  log_capture logs;
  std::unique_ptr<relay::node> hub;
  net::io_context io;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> guard{io.get_executor()};
  std::thread io_thread{[this] { io.run(); }};

  hub_fixture() {
    hub = start_node("[node]\nid = \"hub\"\ndata_dir = " + q(dir / "data") +
                         "\n[queue]\nmax_segment_bytes = \"64KiB\"\n"
                         "[ingest]\nlisten = \"127.0.0.1:0\"\n"
                         "[listen]\naddress = \"127.0.0.1:0\"\ncert = " +
                         q(pki().server.cert) + "\nkey = " + q(pki().server.key) + "\nca = " + q(pki().root_ca) +
                         "\ncrl = " + q(pki().root_crl) +
                         "\nallow = [\"URI:spiffe://edgerelay/edge/*\"]\n"
                         "[admin]\nlisten = \"127.0.0.1:0\"\n"
                         "[evidence]\ncanary_interval = \"0s\"\n"
                         "[[peer]]\nname = \"spool\"\nurl = \"file://" +
                         (dir / "spool").string() + "\"\nstreams = [\"*\"]\n",
                     dir.path());
  }
  ~hub_fixture() {
    hub->stop();
    guard.reset();
    io.stop();
    io_thread.join();
  }
  std::int64_t total(const char* k) const { return hub->status().at("totals").at(k).to_number<std::int64_t>(); }
  std::string metrics() const {
    auto r = relay::http_call("GET", "http://" + hub->address("admin") + "/metrics");
    REQUIRE(r.has_value());
    return r->body;
  }
  transport::dial_result dial(std::shared_ptr<ssl::context> ctx, std::string_view listener = "listen") {
    std::promise<transport::dial_result> p;
    transport::ws_dial(io, {"127.0.0.1", port_of(hub->address(listener)), "/v1/relay", "localhost"}, std::move(ctx), {},
                       5s, [&](transport::dial_result r) { p.set_value(std::move(r)); });
    return p.get_future().get();
  }
};

std::shared_ptr<ssl::context> client_ctx(const std::filesystem::path& cert, const std::filesystem::path& key) {
  auto c = transport::make_client_context({cert, key, pki().root_ca, {}, {}}, "localhost");
  INFO((c ? std::string() : c.error().message));
  REQUIRE(c.has_value());
  return *c;
}

// For certificates our own loader refuses to present (expired, not yet valid).
std::shared_ptr<ssl::context> raw_client_ctx(const test::openssl_pki::cert_key& id) {
  return test::raw_client_context(id, pki().root_ca);
}

std::string metric_line(const std::string& listener, const std::string& reason) {
  return "edgerelay_tls_handshake_failures_total{listener=\"" + listener + "\",reason=\"" + reason + "\"} 1";
}

std::string encode(const transport::hello& h) {
  std::string out;
  REQUIRE(transport::encode_hello(h, out).has_value());
  return out;
}

transport::hello producer_hello() {
  transport::hello h;
  h.versions = {transport::relay_protocol_version};
  h.node_id = "producer";
  h.max_window = 4;
  h.max_batch_bytes = 1 << 20;
  return h;
}

// Sends messages on a channel; returns what came back until it closed (or 5 s).
std::vector<std::string> exchange(std::shared_ptr<transport::ws_channel> ch, const std::vector<std::string>& msgs,
                                  std::size_t until = 100) {
  struct state {
    std::mutex mu;
    std::vector<std::string> got;
    bool closed = false;
    std::condition_variable cv;
  };
  auto st = std::make_shared<state>();
  ch->start({[st](std::string&& m) {
               std::lock_guard lk(st->mu);
               st->got.push_back(std::move(m));
               st->cv.notify_all();
             },
             [st](const boost::system::error_code&, const std::string&) {
               std::lock_guard lk(st->mu);
               st->closed = true;
               st->cv.notify_all();
             }});
  for (auto& m : msgs)
    ch->send(m);
  std::unique_lock lk(st->mu);
  st->cv.wait_for(lk, 5s, [&] { return st->closed || st->got.size() >= until; });
  auto got = st->got;
  lk.unlock();
  ch->close("test done");
  return got;
}

} // namespace

TEST_CASE("the relay listener refuses each bad client certificate with a log line, a metric label and no data",
          "[e2e][security]") {
  hub_fixture f;
  struct refusal {
    const char* what;
    std::shared_ptr<ssl::context> ctx;
    const char* reason;
  };
  std::vector<refusal> cases = {
      {"no client certificate", client_ctx({}, {}), "no_client_cert"},
      {"a certificate from another CA", client_ctx(pki().client_other_ca.cert, pki().client_other_ca.key),
       "unknown_ca"},
      {"an expired certificate", raw_client_ctx(pki().client_expired), "expired"},
      {"a not-yet-valid certificate", raw_client_ctx(pki().client_not_yet_valid), "not_yet_valid"},
      {"a revoked certificate", client_ctx(pki().client_revoked.cert, pki().client_revoked.key), "revoked"},
      {"an identity outside the allow list", client_ctx(pki().client_outsider.cert, pki().client_outsider.key),
       "not_allowed"},
  };
  for (auto& c : cases) {
    INFO(c.what);
    auto r = f.dial(c.ctx);
    bool refused = !r.has_value();
    if (r) {
      // With TLS 1.3 a client learns of its refusal only when it next reads:
      // the relay protocol handshake must not complete.
      auto got = exchange(*r, {encode(producer_hello())}, 1);
      refused = got.empty();
    }
    CHECK(refused);
    CHECK(eventually([&] { return f.metrics().find(metric_line("listen", c.reason)) != std::string::npos; }));
    CHECK(eventually([&] { return f.logs.has(std::string("relay listener refused 127.0.0.1: ") + c.reason); }));
  }
  // A chain missing its intermediate is "unknown_ca" too: the counter says 2.
  auto r = f.dial(client_ctx(pki().client_from_intermediate.cert, pki().client_from_intermediate.key));
  if (r) CHECK(exchange(*r, {encode(producer_hello())}, 1).empty());
  CHECK(eventually([&] {
    return f.metrics().find("edgerelay_tls_handshake_failures_total{listener=\"listen\",reason=\"unknown_ca\"} 2") !=
           std::string::npos;
  }));
  CHECK(f.total("accepted") == 0);

  // The good client still gets through and completes the protocol handshake.
  auto good = f.dial(client_ctx(pki().client.cert, pki().client.key));
  INFO((good ? std::string() : good.error().message));
  REQUIRE(good.has_value());
  auto got = exchange(*good, {encode(producer_hello())}, 1);
  REQUIRE(got.size() == 1);
  auto d = transport::decode(got[0]);
  REQUIRE(d.has_value());
  CHECK(std::holds_alternative<transport::hello_ack>(*d));
}

TEST_CASE("an edge refuses a hub whose certificate does not carry the peer's server_name and keeps the data queued",
          "[e2e][security]") {
  hub_fixture f;
  test::temp_dir edir{"boundaries-edge"};
  auto edge = start_node("[node]\nid = \"edge\"\ndata_dir = " + q(edir / "data") +
                             "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                             "[evidence]\ncanary_interval = \"0s\"\n"
                             "[[peer]]\nname = \"hub\"\nurl = \"wss://127.0.0.1:" +
                             std::to_string(port_of(f.hub->address("listen"))) +
                             "/v1/relay\"\nserver_name = \"hub.wrong.example\"\ncert = " + q(pki().client.cert) +
                             "\nkey = " + q(pki().client.key) + "\nca = " + q(pki().root_ca) + "\n",
                         edir.path());
  auto r = relay::http_call("POST", "http://" + edge->address("ingest") + "/v1/streams/s/segments", "payload");
  REQUIRE(r.has_value());
  REQUIRE(r->status == 201);
  CHECK(eventually([&] {
    auto m = relay::http_call("GET", "http://" + edge->address("admin") + "/metrics");
    return m &&
           m->body.find("edgerelay_tls_handshake_failures_total{listener=\"peer:hub\",reason=\"name_mismatch\"}") !=
               std::string::npos;
  }));
  CHECK(f.logs.has("peer hub: "));
  auto peer = edge->status().at("peers").as_array().at(0).as_object();
  CHECK_THAT(std::string(peer.at("last_error").as_string()), Contains("name_mismatch"));
  CHECK(peer.at("queued").to_number<std::int64_t>() == 1);
  CHECK(f.total("accepted") == 0);
  edge->stop();
}

TEST_CASE("an oversized relay message closes only its connection, an oversized segment is rejected alone",
          "[e2e][security]") {
  hub_fixture f;
  auto ctx = client_ctx(pki().client.cert, pki().client.key);
  {
    auto ch = f.dial(ctx);
    REQUIRE(ch.has_value());
    // One WebSocket message over the 64 MiB limit: the hub closes (1009).
    std::string huge(transport::codec_limits{}.max_message_bytes + 1, 'x');
    auto got = exchange(*ch, {encode(producer_hello()), huge}, 100);
    CHECK(got.size() <= 1); // at most the HELLO_ACK
  }
  CHECK(f.total("accepted") == 0);

  // A segment over the hub's max_segment_bytes (64 KiB) travels in a batch with
  // a good one: only it is rejected, "too_large".
  auto ch = f.dial(ctx);
  REQUIRE(ch.has_value());
  std::string big(100 * 1024, 'b'), small = "fits";
  std::vector<transport::segment_record> recs = {
      {"edge:1", "s", 1700000000000, util::checksum(big), big},
      {"edge:2", "s", 1700000000000, util::checksum(small), small},
  };
  std::string batch;
  REQUIRE(transport::encode_batch(1, recs, batch).has_value());
  auto got = exchange(*ch, {encode(producer_hello()), batch}, 2);
  REQUIRE(got.size() == 2);
  auto d = transport::decode(got[1]);
  REQUIRE(d.has_value());
  auto& a = std::get<transport::ack>(*d);
  REQUIRE(a.results.size() == 2);
  CHECK(a.results[0].status == transport::ack_status::rejected);
  CHECK(a.results[0].reason == "too_large");
  CHECK(a.results[1].status == transport::ack_status::ok);
  CHECK(f.total("accepted") == 1);

  // The same limit on HTTP ingest is a 413 with the sizes in the message.
  auto r = relay::http_call("POST", "http://" + f.hub->address("ingest") + "/v1/streams/s/segments", big);
  REQUIRE(r.has_value());
  CHECK(r->status == 413);
  CHECK_THAT(r->body, Contains("max_segment_bytes") && Contains("102400"));
  CHECK(f.total("accepted") == 1);
}

TEST_CASE("a producer on the ingest WebSocket gets every segment stored once, with ids assigned by the node",
          "[e2e][ingest]") {
  hub_fixture f;
  relay::producer_options po;
  po.url = "ws://" + f.hub->address("ingest");
  po.window = 8;
  po.batch_max_segments = 500;
  auto p = relay::ws_producer::connect(po);
  INFO((p ? std::string() : p.error().message));
  REQUIRE(p.has_value());
  constexpr int n = 20000;
  std::set<std::uint64_t> sent_checksums;
  std::string payload;
  for (int i = 0; i < n; ++i) {
    payload = "segment-" + std::to_string(i) + std::string(static_cast<std::size_t>(i % 200), 'p');
    sent_checksums.insert(util::checksum(payload));
    auto r = (*p)->send(i % 2 ? "odd" : "even", payload);
    REQUIRE(r.has_value());
  }
  REQUIRE((*p)->flush().has_value());
  auto st = (*p)->stats();
  CHECK(st.segments_sent == n);
  CHECK(st.segments_ok == n);
  CHECK(st.segments_rejected == 0);
  CHECK(f.total("accepted") == n);
  REQUIRE(eventually([&] { return f.total("delivered") == n; }, 30s));
  CHECK(f.total("loss") == 0);

  std::set<std::string> ids;
  std::set<std::uint64_t> got_checksums;
  auto read = relay::read_spool(f.dir / "spool", [&](const relay::spool_record& r) {
    CHECK(util::checksum(r.payload) == r.checksum);
    CHECK(r.id.rfind("hub:", 0) == 0);
    ids.insert(std::string(r.id));
    got_checksums.insert(r.checksum);
    return true;
  });
  REQUIRE(read.has_value());
  CHECK(*read == n);
  CHECK(ids.size() == n);
  CHECK(got_checksums == sent_checksums);
}

TEST_CASE("the ingest WebSocket rejects producer records with an id, on _canary or with a bad checksum, alone",
          "[e2e][ingest]") {
  hub_fixture f;
  auto ch = f.dial(nullptr, "ingest");
  INFO((ch ? std::string() : ch.error().message));
  REQUIRE(ch.has_value());
  std::string good = "good", other = "other";
  std::vector<transport::segment_record> recs = {
      {"someone:7", "s", 0, util::checksum(other), other},
      {"", "_canary", 0, util::checksum(other), other},
      {"", "s", 0, util::checksum(other) ^ 1, other},
      {"", "s", 0, util::checksum(good), good},
  };
  std::string batch;
  REQUIRE(transport::encode_batch(1, recs, batch).has_value());
  auto got = exchange(*ch, {encode(producer_hello()), batch}, 2);
  REQUIRE(got.size() == 2);
  auto d = transport::decode(got[1]);
  REQUIRE(d.has_value());
  auto& a = std::get<transport::ack>(*d);
  REQUIRE(a.results.size() == 4);
  CHECK(a.results[0].reason == "id_not_allowed");
  CHECK(a.results[1].reason == "reserved_stream");
  CHECK(a.results[2].reason == "checksum");
  CHECK(a.results[3].status == transport::ack_status::ok);
  CHECK(f.total("accepted") == 1);
}

TEST_CASE("edgerelay send --url ws:// stores every generated segment", "[e2e][ingest][cli]") {
  hub_fixture f;
  auto log = f.dir / "send.log";
  test::process send({std::string(EDGERELAY_BIN_DIR) + "/edgerelay", "send", "--url",
                      "ws://" + f.hub->address("ingest"), "--stream", "load", "--count", "5000", "--size", "64",
                      "--batch", "250"},
                     log);
  int rc = send.wait(60s);
  std::ifstream in(log);
  std::string out((std::istreambuf_iterator<char>(in)), {});
  INFO(out);
  CHECK(rc == 0);
  CHECK_THAT(out, Contains("5000 stored, 0 rejected"));
  CHECK(f.total("accepted") == 5000);
}
