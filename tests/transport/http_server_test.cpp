#include "transport/http_server.hpp"
#include "transport/ws_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/parse.hpp>
#include <catch2/catch.hpp>

#include <future>
#include <thread>

using namespace edgerelay;
using namespace std::chrono_literals;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using Catch::Matchers::Contains;

namespace {

// An io_context run by one thread for the test's lifetime.
struct io_thread {
  net::io_context io;
  net::executor_work_guard<net::io_context::executor_type> guard{io.get_executor()};
  std::thread t{[this] { io.run(); }};
  ~io_thread() {
    guard.reset();
    io.stop();
    t.join();
  }
};

struct echo_handler : transport::http_handler {
  std::atomic<int> requests{0};
  std::vector<std::string> refused;
  std::mutex mu;
  std::promise<std::shared_ptr<transport::ws_channel>> ws;
  void on_request(transport::http_request&& req, const transport::connection_info&, transport::responder r) override {
    ++requests;
    if (req.target() == "/later") {
      // Answered from another thread, as the store's writer does.
      std::thread([r = std::move(r)]() mutable { r.send_json(201, R"({"id":"x"})"); }).detach();
      return;
    }
    if (req.target() == "/drop") return; // the responder answers 500 when dropped
    r.send_json(200, "{\"len\":" + std::to_string(req.body().size()) + "}");
  }
  bool accept_websocket(const transport::http_request& req, const transport::connection_info&) override {
    return req.target() == "/v1/relay";
  }
  void on_websocket(std::shared_ptr<transport::ws_channel> ch, const transport::connection_info&) override {
    ch->start({[ch](std::string&& m) { ch->send("echo:" + m); }, {}});
    ws.set_value(ch);
  }
  void on_refused(const transport::connection_info&, std::string_view reason, std::string_view) override {
    std::lock_guard lk(mu);
    refused.emplace_back(reason);
  }
};

// Sends raw bytes and reads until the server closes or `timeout` passes.
std::string raw_exchange(const tcp::endpoint& ep, const std::string& bytes, std::chrono::milliseconds timeout = 3s) {
  net::io_context io;
  tcp::socket s(io);
  s.connect(ep);
  net::write(s, net::buffer(bytes));
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  s.non_blocking(true);
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    boost::system::error_code ec;
    auto n = s.read_some(net::buffer(buf), ec);
    if (ec == net::error::would_block) {
      std::this_thread::sleep_for(5ms);
      continue;
    }
    if (ec) break;
    out.append(buf, n);
  }
  return out;
}

std::string body_of(const std::string& resp) {
  auto p = resp.find("\r\n\r\n");
  return p == std::string::npos ? std::string() : resp.substr(p + 4);
}

struct server_fixture {
  io_thread iot;
  echo_handler h;
  std::shared_ptr<transport::http_server> srv;
  explicit server_fixture(transport::http_limits lim = {}) {
    auto r = transport::http_server::create(iot.io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0), h, lim);
    REQUIRE(r.has_value());
    srv = *r;
    srv->start();
  }
  ~server_fixture() { srv->stop(); }
  tcp::endpoint ep() const { return srv->local_endpoint(); }
};

} // namespace

TEST_CASE("http server answers requests, also from another thread, with keep-alive", "[http]") {
  server_fixture f;
  auto out = raw_exchange(f.ep(), "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
                                  "GET /later HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  CHECK_THAT(out, Contains("HTTP/1.1 200") && Contains("{\"len\":5}"));
  CHECK_THAT(out, Contains("HTTP/1.1 201") && Contains("{\"id\":\"x\"}"));
  CHECK(f.h.requests == 2);
}

TEST_CASE("a dropped responder answers 500 in the project's error shape", "[http]") {
  server_fixture f;
  auto out = raw_exchange(f.ep(), "GET /drop HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  CHECK_THAT(out, Contains("HTTP/1.1 500"));
  auto j = boost::json::parse(body_of(out));
  CHECK(j.at("error").as_string() == "internal");
}

TEST_CASE("http server limits body and header size with precise errors", "[http]") {
  transport::http_limits lim;
  lim.body_bytes = 100;
  lim.header_bytes = 512;
  server_fixture f(lim);
  auto big =
      raw_exchange(f.ep(), "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + std::string(1000, 'b'));
  CHECK_THAT(big, Contains("HTTP/1.1 413") && Contains("too_large") && Contains("100 bytes"));
  auto hdr = raw_exchange(f.ep(), "GET /x HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(2000, 'h') + "\r\n\r\n");
  CHECK_THAT(hdr, Contains("HTTP/1.1 431") && Contains("header_too_large"));
  auto junk = raw_exchange(f.ep(), "\x16\x03\x01garbage that is not http\r\n\r\n");
  CHECK_THAT(junk, Contains("HTTP/1.1 400") && Contains("bad_request"));
  // The server keeps serving others.
  auto ok = raw_exchange(f.ep(), "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
  CHECK_THAT(ok, Contains("HTTP/1.1 200"));
}

TEST_CASE("a client that stalls mid-request is cut off by the idle timeout", "[http]") {
  transport::http_limits lim;
  lim.idle_timeout = 300ms;
  server_fixture f(lim);
  auto t0 = std::chrono::steady_clock::now();
  auto out = raw_exchange(f.ep(), "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\n\r\nonly part", 5s);
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(out.empty());
  CHECK(took < 3s);
  CHECK_THAT(raw_exchange(f.ep(), "GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), Contains("200"));
}

TEST_CASE("connections beyond the limit are refused and reported", "[http]") {
  transport::http_limits lim;
  lim.max_connections = 1;
  server_fixture f(lim);
  net::io_context io;
  tcp::socket held(io);
  held.connect(f.ep());
  auto deadline = std::chrono::steady_clock::now() + 2s;
  while (f.srv->connections() < 1 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(5ms);
  auto out = raw_exchange(f.ep(), "GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 1s);
  CHECK(out.empty());
  std::lock_guard lk(f.h.mu);
  REQUIRE_FALSE(f.h.refused.empty());
  CHECK(f.h.refused[0] == "too_many_connections");
}

TEST_CASE("websocket upgrade hands a channel to the handler and messages flow both ways", "[http]") {
  server_fixture f;
  io_thread client;
  std::promise<transport::dial_result> dialed;
  transport::ws_target t{"127.0.0.1", f.ep().port()};
  transport::ws_dial(client.io, t, nullptr, {}, 2s, [&](transport::dial_result r) { dialed.set_value(std::move(r)); });
  auto r = dialed.get_future().get();
  REQUIRE(r.has_value());
  auto ch = *r;
  std::promise<std::string> got;
  std::promise<std::string> closed;
  ch->start({[&](std::string&& m) { got.set_value(m); },
             [&](const boost::system::error_code&, const std::string& why) { closed.set_value(why); }});
  REQUIRE(ch->send(std::string("\x01\x02hello", 7)));
  auto fut = got.get_future();
  REQUIRE(fut.wait_for(3s) == std::future_status::ready);
  CHECK(fut.get() == std::string("echo:\x01\x02hello", 12));
  CHECK(ch->bytes_sent() >= 7);
  ch->close("done");
  auto cf = closed.get_future();
  REQUIRE(cf.wait_for(3s) == std::future_status::ready);
}

TEST_CASE("a websocket upgrade to an unknown path gets 404 and a dial error", "[http]") {
  server_fixture f;
  io_thread client;
  std::promise<transport::dial_result> dialed;
  transport::ws_target t{"127.0.0.1", f.ep().port(), "/nope"};
  transport::ws_dial(client.io, t, nullptr, {}, 2s, [&](transport::dial_result r) { dialed.set_value(std::move(r)); });
  auto r = dialed.get_future().get();
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().reason == "websocket");
}

TEST_CASE("dialing a closed port fails with connect, a black hole with timeout", "[http]") {
  io_thread client;
  net::io_context io;
  tcp::acceptor a(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  auto port = a.local_endpoint().port();
  a.close();
  std::promise<transport::dial_result> dialed;
  transport::ws_dial(client.io, {"127.0.0.1", port}, nullptr, {}, 2s,
                     [&](transport::dial_result r) { dialed.set_value(std::move(r)); });
  auto r = dialed.get_future().get();
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().reason == "connect");
  // A listener that never accepts: the TCP connect succeeds (backlog) but the
  // WebSocket handshake never completes, so the dial deadline ends it.
  tcp::acceptor silent(io, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0));
  std::promise<transport::dial_result> d2;
  auto t0 = std::chrono::steady_clock::now();
  transport::ws_dial(client.io, {"127.0.0.1", silent.local_endpoint().port()}, nullptr, {}, 300ms,
                     [&](transport::dial_result r2) { d2.set_value(std::move(r2)); });
  auto r2 = d2.get_future().get();
  REQUIRE_FALSE(r2.has_value());
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
}

TEST_CASE("parse_endpoint reads host:port and names what is wrong", "[http]") {
  CHECK(transport::parse_endpoint("127.0.0.1:9310")->port() == 9310);
  CHECK(transport::parse_endpoint("localhost:1")->address().to_string() == "127.0.0.1");
  CHECK(transport::parse_endpoint("[::1]:80")->address().is_v6());
  CHECK_THAT(transport::parse_endpoint("127.0.0.1").error().message, Contains("no port"));
  CHECK_THAT(transport::parse_endpoint("127.0.0.1:99999").error().message, Contains("0..65535"));
  CHECK_THAT(transport::parse_endpoint("example.com:80").error().message, Contains("not an IP address"));
}
