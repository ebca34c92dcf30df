// Bad input at a running node: garbage on the relay (mTLS) and ingest ports,
// malformed relay protocol messages from an authenticated peer, bad ingest
// requests. Each is refused or cut off, the node keeps serving others, and
// nothing stored changes.

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "tests/support/temp_dir.hpp"
#include "transport/pki.hpp"
#include "transport/relay_codec.hpp"
#include "transport/tls.hpp"
#include "transport/ws_client.hpp"
#include "util/bytes.hpp"
#include "util/checksum.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <future>
#include <thread>

using namespace edgerelay;
using namespace std::chrono_literals;
namespace net = boost::asio;
namespace json = boost::json;
using Catch::Matchers::Contains;

namespace {

struct hub_fixture {
  test::temp_dir dir{"malformed"};
  transport::pki_paths pki;
  std::unique_ptr<relay::node> hub;
  net::io_context io;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> guard{io.get_executor()};
  std::thread io_thread{[this] { io.run(); }};

  hub_fixture() {
    auto p = transport::pki_init(dir / "pki");
    REQUIRE(p.has_value());
    pki = *p;
    auto q = [](const std::filesystem::path& x) { return "\"" + x.string() + "\""; };
    std::string toml =
        "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "data") +
        "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[listen]\naddress = \"127.0.0.1:0\"\ncert = " + q(pki.server_cert) +
        "\nkey = " + q(pki.server_key) + "\nca = " + q(pki.ca_cert) +
        "\n[admin]\nlisten = \"127.0.0.1:0\"\n[[peer]]\nname = \"spool\"\nurl = \"file://" + (dir / "spool").string() +
        "\"\nstreams = [\"keep\"]\n";
    auto cfg = relay::parse_config(toml, "hub.toml", dir.path());
    INFO((cfg ? std::string() : relay::to_string(cfg.error())));
    REQUIRE(cfg.has_value());
    // The sink is stopped by routing only "keep": segments stay queued, so the
    // counters show exactly what was stored.
    auto n = relay::node::create(std::move(*cfg), nullptr, 2);
    REQUIRE(n.has_value());
    hub = std::move(*n);
    REQUIRE(hub->start().has_value());
  }
  ~hub_fixture() {
    hub->stop();
    guard.reset();
    io.stop();
    io_thread.join();
  }
  std::uint16_t port(const char* l) {
    auto a = hub->address(l);
    return static_cast<std::uint16_t>(std::stoi(a.substr(a.rfind(':') + 1)));
  }
  std::int64_t total(const char* k) { return hub->status().at("totals").at(k).to_number<std::int64_t>(); }

  std::shared_ptr<transport::ws_channel> dial() {
    auto ctx = transport::make_client_context(pki.client_files(), "localhost");
    REQUIRE(ctx.has_value());
    std::promise<transport::dial_result> p;
    transport::ws_dial(io, {"127.0.0.1", port("listen"), "/v1/relay", "localhost"}, *ctx, {}, 5s,
                       [&](transport::dial_result r) { p.set_value(std::move(r)); });
    auto r = p.get_future().get();
    INFO((r ? std::string() : r.error().message));
    REQUIRE(r.has_value());
    return *r;
  }

  // Sends messages on a fresh authenticated connection; returns what came back until close (or 3 s).
  std::vector<std::string> exchange(const std::vector<std::string>& msgs) {
    auto ch = dial();
    auto got = std::make_shared<std::vector<std::string>>();
    auto mu = std::make_shared<std::mutex>();
    auto closed = std::make_shared<std::promise<void>>();
    ch->start({[got, mu](std::string&& m) {
                 std::lock_guard lk(*mu);
                 got->push_back(std::move(m));
               },
               [closed](const boost::system::error_code&, const std::string&) { closed->set_value(); }});
    for (auto& m : msgs)
      ch->send(m);
    closed->get_future().wait_for(3s);
    ch->close("test done");
    std::lock_guard lk(*mu);
    return *got;
  }

  static std::string hello() {
    transport::hello h;
    h.versions = {transport::relay_protocol_version};
    h.node_id = "edge";
    h.max_window = 4;
    h.max_batch_bytes = 1 << 20;
    std::string out;
    REQUIRE(transport::encode_hello(h, out).has_value());
    return out;
  }
};

std::string batch_of(std::uint64_t n, std::vector<transport::segment_record> recs) {
  std::string out;
  REQUIRE(transport::encode_batch(n, recs, out).has_value());
  return out;
}

} // namespace

TEST_CASE("relay messages that are truncated, garbage or out of order get an ERROR and a closed connection",
          "[e2e][malformed]") {
  hub_fixture f;
  std::string good = batch_of(1, {{"edge:1", "keep", 1, util::checksum("x"), "x"}});
  for (auto& bad : {std::string("\x03\x01garbage", 9), good.substr(0, good.size() - 3), std::string(1, '\xff')}) {
    auto got = f.exchange({hub_fixture::hello(), bad});
    REQUIRE(got.size() == 2); // HELLO_ACK, then ERROR
    auto d = transport::decode(got[1]);
    REQUIRE(d.has_value());
    CHECK(std::holds_alternative<transport::error_message>(*d));
  }
  // A BATCH before HELLO.
  auto got = f.exchange({good});
  REQUIRE(got.size() == 1);
  auto d = transport::decode(got[0]);
  REQUIRE(d.has_value());
  auto* e = std::get_if<transport::error_message>(&*d);
  REQUIRE(e != nullptr);
  CHECK_THAT(std::string(e->message), Contains("HELLO must come first"));
  CHECK(f.total("accepted") == 0);
}

TEST_CASE("a batch with a bad checksum, a bad stream and no route rejects only those segments", "[e2e][malformed]") {
  hub_fixture f;
  std::vector<transport::segment_record> recs = {
      {"edge:1", "keep", 1, util::checksum("good"), "good"},
      {"edge:2", "keep", 1, util::checksum("good"), "tampered"},
      {"edge:3", "Bad Stream", 1, util::checksum("y"), "y"},
      {"edge:4", "elsewhere", 1, util::checksum("z"), "z"},
  };
  auto ch = f.dial();
  std::promise<std::string> ackp;
  std::atomic<int> n{0};
  ch->start({[&](std::string&& m) {
               if (++n == 2) ackp.set_value(std::move(m));
             },
             {}});
  ch->send(hub_fixture::hello());
  ch->send(batch_of(7, recs));
  auto fut = ackp.get_future();
  REQUIRE(fut.wait_for(5s) == std::future_status::ready);
  const std::string ack_msg = fut.get(); // decoded views point into it
  auto d = transport::decode(ack_msg);
  REQUIRE(d.has_value());
  auto* a = std::get_if<transport::ack>(&*d);
  REQUIRE(a != nullptr);
  CHECK(a->batch_number == 7);
  REQUIRE(a->results.size() == 4);
  CHECK(a->results[0].status == transport::ack_status::ok);
  CHECK(a->results[1].status == transport::ack_status::rejected);
  CHECK(a->results[1].reason == "checksum");
  CHECK(a->results[2].reason == "bad_stream");
  CHECK(a->results[3].reason == "no_route");
  ch->close("done");
  CHECK(f.total("accepted") == 1);
  // The same id again is a duplicate, not a second copy.
  auto ch2 = f.dial();
  std::promise<std::string> ack2;
  std::atomic<int> n2{0};
  ch2->start({[&](std::string&& m) {
                if (++n2 == 2) ack2.set_value(std::move(m));
              },
              {}});
  ch2->send(hub_fixture::hello());
  ch2->send(batch_of(1, {recs[0]}));
  auto f2 = ack2.get_future();
  REQUIRE(f2.wait_for(5s) == std::future_status::ready);
  const std::string ack2_msg = f2.get();
  auto d2 = transport::decode(ack2_msg);
  REQUIRE(d2.has_value());
  CHECK(std::get<transport::ack>(*d2).results[0].status == transport::ack_status::duplicate);
  ch2->close("done");
  CHECK(f.total("accepted") == 1);
  CHECK(f.total("duplicates") == 1);
}

TEST_CASE("garbage on the mTLS relay port and on the ingest port is refused while others are served",
          "[e2e][malformed]") {
  hub_fixture f;
  {
    net::io_context io;
    net::ip::tcp::socket s(io);
    s.connect({net::ip::make_address("127.0.0.1"), f.port("listen")});
    net::write(s, net::buffer(std::string("GET /v1/relay HTTP/1.1\r\nHost: x\r\n\r\n")));
    char buf[256];
    boost::system::error_code ec;
    s.read_some(net::buffer(buf), ec); // the TLS server answers plain text with an alert or closes
  }
  const std::string ingest = "http://127.0.0.1:" + std::to_string(f.port("ingest"));
  auto bad_stream = relay::http_call("POST", ingest + "/v1/streams/Not%20Valid/segments", "x");
  REQUIRE(bad_stream.has_value());
  CHECK(bad_stream->status == 400);
  auto no_route = relay::http_call("POST", ingest + "/v1/streams/other/segments", "x");
  CHECK(no_route->status == 404);
  CHECK_THAT(no_route->body, Contains("no_route"));
  auto cut = relay::http_call("POST", ingest + "/v1/streams/keep/batch", std::string("\x00\x00\x00\x10short", 9));
  CHECK(cut->status == 400);
  CHECK_THAT(cut->body, Contains("cut short"));
  auto empty = relay::http_call("POST", ingest + "/v1/streams/keep/segments", "");
  CHECK(empty->status == 400);
  CHECK(f.total("accepted") == 0);
  // Still serving: a good segment and a good relay session work.
  auto ok = relay::http_call("POST", ingest + "/v1/streams/keep/segments", "fine");
  REQUIRE(ok.has_value());
  CHECK(ok->status == 201);
  CHECK_THAT(ok->body, Contains("\"id\":\"hub:1\""));
  auto got = f.exchange({hub_fixture::hello()});
  CHECK(got.size() == 1);
  CHECK(f.total("accepted") == 1);
  auto metrics = relay::http_call("GET", "http://" + f.hub->address("admin") + "/metrics");
  CHECK_THAT(metrics->body, Contains("edgerelay_tls_handshake_failures_total{listener=\"listen\""));
}
