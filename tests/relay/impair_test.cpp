// The TCP impairment proxy: every impairment observed through real loopback
// connections to an Asio echo / sink / stalled server.

#include "relay/impair.hpp"
#include "relay/impair_cli.hpp"
#include "util/checksum.hpp"
#include "util/clock.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>

#include <atomic>
#include <cerrno>
#include <memory>
#include <mutex>
#include <optional>
#include <poll.h>
#include <random>
#include <sys/socket.h>
#include <thread>
#include <vector>

using namespace edgerelay;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using steady = std::chrono::steady_clock;

namespace {

// A loopback server on port 0 with its own io thread. echo: writes back what
// it reads; sink: reads and counts; stall: accepts and never reads.
class test_server {
public:
  enum class mode { echo, sink, stall };

  explicit test_server(mode m) : mode_(m), acceptor_(io_, {net::ip::address_v4::loopback(), 0}) {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~test_server() {
    net::post(io_, [this] {
      boost::system::error_code ec;
      acceptor_.close(ec);
      for (auto& c : conns_)
        c->sock.close(ec);
    });
    work_.reset();
    io_.stop();
    thread_.join();
  }

  tcp::endpoint endpoint() const { return acceptor_.local_endpoint(); }
  std::uint64_t received() const { return received_; }
  std::size_t accepted() const { return accepted_; }
  // How each ended connection ended (eof, connection_reset, ...), in order.
  std::vector<boost::system::error_code> endings() const {
    std::lock_guard lock(mu_);
    return endings_;
  }

private:
  struct conn {
    explicit conn(tcp::socket s) : sock(std::move(s)), buf(64 * 1024) {}
    tcp::socket sock;
    std::vector<char> buf;
  };

  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
      if (ec) return;
      ++accepted_;
      auto c = std::make_shared<conn>(std::move(s));
      conns_.push_back(c);
      if (mode_ != mode::stall) read(c);
      accept();
    });
  }
  void read(const std::shared_ptr<conn>& c) {
    c->sock.async_read_some(net::buffer(c->buf), [this, c](boost::system::error_code ec, std::size_t n) {
      if (ec) {
        std::lock_guard lock(mu_);
        endings_.push_back(ec);
        return;
      }
      received_ += n;
      if (mode_ == mode::sink) return read(c);
      net::async_write(c->sock, net::buffer(c->buf.data(), n), [this, c](boost::system::error_code e, std::size_t) {
        if (!e) read(c);
      });
    });
  }

  mode mode_;
  net::io_context io_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_{io_.get_executor()};
  tcp::acceptor acceptor_;
  std::thread thread_;
  std::vector<std::shared_ptr<conn>> conns_;
  std::atomic<std::uint64_t> received_{0};
  std::atomic<std::size_t> accepted_{0};
  mutable std::mutex mu_;
  std::vector<boost::system::error_code> endings_;
};

// A blocking-free test client: every operation has a deadline.
class client {
public:
  explicit client(const tcp::endpoint& at) : sock_(io_) { sock_.connect(at, connect_error); }
  boost::system::error_code connect_error;

  struct outcome {
    std::string received;
    std::size_t sent = 0;
    boost::system::error_code ec; // eof, connection_reset, broken_pipe ... (empty when none)
    bool timed_out = false;
  };

  // Sends `out` while reading until `expect` bytes have arrived, an error or
  // end of stream, or the time limit.
  outcome exchange(std::string_view out, std::size_t expect, std::chrono::milliseconds limit) {
    outcome r;
    auto deadline = steady::now() + limit;
    std::vector<char> buf(64 * 1024);
    int fd = sock_.native_handle();
    while ((r.sent < out.size() || r.received.size() < expect) && !r.ec) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - steady::now()).count();
      if (left <= 0) {
        r.timed_out = true;
        break;
      }
      pollfd p{fd, 0, 0};
      if (r.sent < out.size()) p.events |= POLLOUT;
      if (r.received.size() < expect) p.events |= POLLIN;
      if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
      if ((p.revents & (POLLIN | POLLERR | POLLHUP)) && r.received.size() < expect) {
        auto n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT);
        if (n > 0)
          r.received.append(buf.data(), static_cast<std::size_t>(n));
        else if (n == 0)
          r.ec = net::error::eof;
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
          r.ec = {errno, boost::system::system_category()};
      }
      if (!r.ec && (p.revents & (POLLOUT | POLLERR | POLLHUP)) && r.sent < out.size()) {
        auto n = ::send(fd, out.data() + r.sent, std::min<std::size_t>(out.size() - r.sent, 256 * 1024),
                        MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0)
          r.sent += static_cast<std::size_t>(n);
        else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
          r.ec = {errno, boost::system::system_category()};
      }
    }
    return r;
  }

  // Round trip of one byte through an echo server; nullopt when it fails.
  std::optional<std::chrono::milliseconds> round_trip(std::chrono::milliseconds limit = 5s) {
    auto t0 = steady::now();
    auto r = exchange("x", 1, limit);
    if (r.received != "x") return std::nullopt;
    return std::chrono::duration_cast<std::chrono::milliseconds>(steady::now() - t0);
  }

private:
  net::io_context io_;
  tcp::socket sock_;
};

std::string random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s)
    c = static_cast<char>(rng());
  return s;
}

template <class F>
bool eventually(F f, std::chrono::milliseconds limit = 5s) {
  auto deadline = steady::now() + limit;
  while (!f()) {
    if (steady::now() > deadline) return false;
    std::this_thread::sleep_for(2ms);
  }
  return true;
}

std::unique_ptr<relay::impair_proxy> make_proxy(const test_server& upstream, relay::impairment i = {},
                                                std::uint64_t max_queue = 4ull << 20) {
  relay::impair_options o;
  o.upstream = upstream.endpoint();
  o.initial = i;
  o.max_queue_bytes = max_queue;
  o.seed = 42;
  auto p = relay::impair_proxy::create(o);
  REQUIRE(p.has_value());
  return std::move(*p);
}

bool is_reset(const boost::system::error_code& ec) {
  return ec == net::error::connection_reset || ec == net::error::broken_pipe;
}

} // namespace

TEST_CASE("the proxy forwards 8 MiB both ways unchanged", "[impair]") {
  test_server echo(test_server::mode::echo);
  auto proxy = make_proxy(echo);
  CHECK_THAT(proxy->address(), Contains("127.0.0.1:"));
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  auto data = random_bytes(8 << 20, 1);
  auto r = c.exchange(data, data.size(), 60s);
  REQUIRE(!r.timed_out);
  CHECK(!r.ec);
  CHECK(r.received.size() == data.size());
  CHECK(util::checksum(r.received) == util::checksum(data));
  // The proxy counts a write when its completion runs; the client can read
  // the last bytes before that (seen under ASan): wait for the count.
  CHECK(eventually([&] { return proxy->counters().bytes_to_client == data.size(); }));
  auto n = proxy->counters();
  CHECK(n.connections_accepted == 1);
  CHECK(n.bytes_to_upstream == data.size());
  CHECK(n.bytes_to_client == data.size());
  CHECK(n.resets == 0);
}

TEST_CASE("a delay of 100 ms adds 100 ms to each direction of a round trip", "[impair]") {
  test_server echo(test_server::mode::echo);
  auto proxy = make_proxy(echo, {.delay = 100ms});
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  for (int i = 0; i < 3; ++i) {
    auto rtt = c.round_trip();
    REQUIRE(rtt.has_value());
    CHECK(*rtt >= 200ms);
    CHECK(*rtt < 200ms + 400ms);
  }
}

TEST_CASE("delay and jitter keep every byte in order and do not throttle throughput", "[impair]") {
  test_server echo(test_server::mode::echo);
  auto proxy = make_proxy(echo, {.delay = 100ms, .jitter = 50ms});
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  auto data = random_bytes(8 << 20, 2);
  auto t0 = steady::now();
  auto r = c.exchange(data, data.size(), 60s);
  auto took = steady::now() - t0;
  REQUIRE(!r.timed_out);
  CHECK(util::checksum(r.received) == util::checksum(data));
  // A proxy that slept 100 ms per 64 KiB read would need > 12 s per direction.
  CHECK(took < 8s);
}

TEST_CASE("a rate of 1 MB/s takes about 2 s for 2 MB", "[impair]") {
  test_server sink(test_server::mode::sink);
  auto proxy = make_proxy(sink, {.rate_bytes_per_s = 1'000'000});
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  auto data = random_bytes(2'000'000, 3);
  auto t0 = steady::now();
  auto r = c.exchange(data, 0, 10s);
  REQUIRE(r.sent == data.size());
  REQUIRE(eventually([&] { return sink.received() == data.size(); }, 10s));
  auto took = std::chrono::duration<double>(steady::now() - t0).count();
  CHECK(took >= 1.6);
  CHECK(took <= 2.4);
}

TEST_CASE("reset_after 100 KiB forwards exactly 100 KiB and then resets both sides", "[impair]") {
  test_server sink(test_server::mode::sink);
  auto proxy = make_proxy(sink, {.reset_after_bytes = 100 * 1024});
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  auto data = random_bytes(4 << 20, 4);
  auto r = c.exchange(data, 1, 10s);
  CHECK(!r.timed_out);
  CHECK(is_reset(r.ec));
  CHECK(r.sent >= 100 * 1024);
  REQUIRE(eventually([&] { return !sink.endings().empty(); }));
  CHECK(sink.endings().front() == net::error::connection_reset);
  CHECK(sink.received() == 100 * 1024);
  auto n = proxy->counters();
  CHECK(n.bytes_to_upstream == 100 * 1024);
  CHECK(n.resets == 1);
  CHECK(eventually([&] { return proxy->counters().connections_active == 0; }));
}

TEST_CASE("reset_after counts both directions and resets mid-stream", "[impair]") {
  test_server echo(test_server::mode::echo);
  auto proxy = make_proxy(echo, {.reset_after_bytes = 1000});
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  auto r = c.exchange(std::string(400, 'a'), 400, 5s);
  REQUIRE(r.received.size() == 400); // 800 forwarded so far
  auto more = c.exchange(std::string(400, 'b'), 400, 5s);
  CHECK(is_reset(more.ec));
  CHECK(more.received.size() < 400);
  auto n = proxy->counters();
  CHECK(n.bytes_to_upstream + n.bytes_to_client == 1000);
  CHECK(n.resets == 1);
}

TEST_CASE("a blackhole drops data silently, keeps the connection open, and lifting it loses what was dropped",
          "[impair]") {
  test_server echo(test_server::mode::echo);
  auto proxy = make_proxy(echo);
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  REQUIRE(c.round_trip().has_value());
  proxy->set({.blackhole = true});
  auto sent = c.exchange(std::string(1000, 'z'), 0, 5s);
  REQUIRE(sent.sent == 1000);
  REQUIRE(eventually([&] { return proxy->counters().bytes_dropped == 1000; }));
  auto quiet = c.exchange({}, 1, 300ms);
  CHECK(quiet.timed_out);
  CHECK(quiet.received.empty());
  CHECK(!quiet.ec);
  CHECK(echo.received() == 1); // only the first round trip's byte
  CHECK(proxy->counters().connections_active == 1);

  proxy->set({});
  auto after = c.exchange("hello", 5, 5s);
  CHECK(after.received == "hello");
  CHECK(echo.received() == 1 + 5);
}

TEST_CASE("a blackhole set while data is delayed drops the queued data too", "[impair]") {
  test_server sink(test_server::mode::sink);
  auto proxy = make_proxy(sink, {.delay = 2000ms});
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  REQUIRE(c.exchange(std::string(5000, 'q'), 0, 5s).sent == 5000);
  REQUIRE(eventually([&] { return proxy->counters().queued_bytes == 5000; }));
  proxy->set({.delay = 2000ms, .blackhole = true});
  CHECK(proxy->counters().queued_bytes == 0);
  CHECK(proxy->counters().bytes_dropped == 5000);
  CHECK(sink.received() == 0);
}

TEST_CASE("refuse makes connects fail with connection refused and lifting it listens on the same address", "[impair]") {
  test_server echo(test_server::mode::echo);
  auto proxy = make_proxy(echo);
  auto at = proxy->local_endpoint();
  client live(at);
  REQUIRE(!live.connect_error);
  REQUIRE(live.round_trip().has_value());

  proxy->set({.refuse = true});
  client refused(at);
  CHECK(refused.connect_error == net::error::connection_refused);
  CHECK(live.round_trip().has_value()); // live connections are not affected

  proxy->set({});
  CHECK(proxy->local_endpoint() == at);
  client again(at);
  REQUIRE(!again.connect_error);
  CHECK(again.round_trip().has_value());
}

TEST_CASE("a proxy created refusing has an address but refuses connects", "[impair]") {
  test_server echo(test_server::mode::echo);
  auto proxy = make_proxy(echo, {.refuse = true});
  REQUIRE(proxy->local_endpoint().port() != 0);
  client refused(proxy->local_endpoint());
  CHECK(refused.connect_error == net::error::connection_refused);
  proxy->set({});
  client ok(proxy->local_endpoint());
  REQUIRE(!ok.connect_error);
  CHECK(ok.round_trip().has_value());
}

TEST_CASE("set() changes the delay of a live connection both ways", "[impair]") {
  test_server echo(test_server::mode::echo);
  auto proxy = make_proxy(echo);
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  auto fast = c.round_trip();
  REQUIRE(fast.has_value());
  CHECK(*fast < 150ms);
  proxy->set({.delay = 150ms});
  CHECK(proxy->current().delay == 150ms);
  auto slow = c.round_trip();
  REQUIRE(slow.has_value());
  CHECK(*slow >= 300ms);
  proxy->set({});
  auto fast_again = c.round_trip();
  REQUIRE(fast_again.has_value());
  CHECK(*fast_again < 150ms);
  CHECK(proxy->counters().connections_accepted == 1);
}

TEST_CASE("set() lowering reset_after below what a live connection forwarded resets it now", "[impair]") {
  test_server echo(test_server::mode::echo);
  auto proxy = make_proxy(echo);
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  REQUIRE(c.exchange(std::string(2000, 'r'), 2000, 5s).received.size() == 2000);
  proxy->set({.reset_after_bytes = 1000});
  auto r = c.exchange({}, 1, 5s);
  CHECK(is_reset(r.ec));
  CHECK(proxy->counters().resets == 1);
}

TEST_CASE("drop_all() resets every live connection and new ones still work", "[impair]") {
  test_server echo(test_server::mode::echo);
  auto proxy = make_proxy(echo);
  client a(proxy->local_endpoint()), b(proxy->local_endpoint());
  REQUIRE(!a.connect_error);
  REQUIRE(!b.connect_error);
  REQUIRE(a.round_trip().has_value());
  REQUIRE(b.round_trip().has_value());
  CHECK(proxy->drop_all() == 2);
  for (auto* c : {&a, &b}) {
    auto r = c->exchange({}, 1, 5s);
    CHECK(r.ec == net::error::connection_reset);
  }
  REQUIRE(eventually([&] { return echo.endings().size() == 2; }));
  for (auto& ec : echo.endings())
    CHECK(ec == net::error::connection_reset);
  auto n = proxy->counters();
  CHECK(n.resets == 2);
  CHECK(n.connections_active == 0);
  client fresh(proxy->local_endpoint());
  REQUIRE(!fresh.connect_error);
  CHECK(fresh.round_trip().has_value());
}

TEST_CASE("a full delay queue stops reading from the sender (bounded memory)", "[impair]") {
  test_server stalled(test_server::mode::stall);
  const std::uint64_t limit = 256 * 1024;
  auto proxy = make_proxy(stalled, {}, limit);
  client c(proxy->local_endpoint());
  REQUIRE(!c.connect_error);
  auto data = std::string(64 << 20, 'm');
  auto r = c.exchange(data, 0, 2s);
  CHECK(r.timed_out);
  CHECK(r.sent < data.size());
  REQUIRE(eventually([&] { return proxy->counters().queued_bytes == limit; }));
  auto more = c.exchange(std::string_view(data).substr(r.sent), 0, 300ms);
  CHECK(proxy->counters().queued_bytes == limit);
  CHECK(proxy->counters().bytes_to_upstream + limit <= r.sent + more.sent);
}

TEST_CASE("a client whose upstream refuses is reset", "[impair]") {
  tcp::endpoint dead;
  {
    test_server gone(test_server::mode::sink);
    dead = gone.endpoint();
  }
  relay::impair_options o;
  o.upstream = dead;
  auto proxy = relay::impair_proxy::create(o);
  REQUIRE(proxy.has_value());
  client c((*proxy)->local_endpoint());
  REQUIRE(!c.connect_error);
  auto r = c.exchange({}, 1, 5s);
  CHECK(is_reset(r.ec));
  CHECK(eventually([&] { return (*proxy)->counters().upstream_failures == 1; }));
}

TEST_CASE("create() refuses a non-loopback listen address, a missing upstream and a manual clock", "[impair]") {
  relay::impair_options o;
  o.upstream = {net::ip::address_v4::loopback(), 9};
  o.listen = {net::ip::address_v4::any(), 0};
  auto r = relay::impair_proxy::create(o);
  REQUIRE(!r.has_value());
  CHECK_THAT(r.error().message, Contains("not a loopback address"));
  o.listen = {net::ip::address_v4::loopback(), 0};
  o.upstream = {};
  CHECK(!relay::impair_proxy::create(o).has_value());
  o.upstream = {net::ip::address_v4::loopback(), 9};
  util::manual_clock manual;
  o.clock = &manual;
  auto m = relay::impair_proxy::create(o);
  REQUIRE(!m.has_value());
  CHECK_THAT(m.error().message, Contains("manual"));
}

TEST_CASE("impair flags parse into options and bad values name the flag", "[impair]") {
  relay::impair_cli_options f;
  f.listen = "127.0.0.1:0";
  f.upstream = "127.0.0.1:9443";
  f.delay = "200ms";
  f.jitter = "20ms";
  f.rate = "1Mbit";
  f.reset_after = "64KiB";
  f.blackhole = true;
  auto o = relay::impair_options_from_cli(f);
  REQUIRE(o.has_value());
  CHECK(o->initial.delay == 200ms);
  CHECK(o->initial.jitter == 20ms);
  CHECK(o->initial.rate_bytes_per_s == 125'000);
  CHECK(o->initial.reset_after_bytes == 65536);
  CHECK(o->initial.blackhole);
  CHECK(!o->initial.refuse);
  CHECK(o->upstream.port() == 9443);
  CHECK(relay::to_string(o->initial) == "delay 200ms, jitter 20ms, rate 125 KB/s, reset after 64 KiB, blackhole");

  auto bad = [&](auto edit, const char* expect) {
    auto g = f;
    edit(g);
    auto r = relay::impair_options_from_cli(g);
    REQUIRE(!r.has_value());
    CHECK_THAT(r.error().message, Contains(expect));
  };
  bad([](auto& g) { g.delay = "2x"; }, "--delay: \"2x\"");
  bad([](auto& g) { g.jitter = "-1s"; }, "--jitter: ");
  bad([](auto& g) { g.rate = "2MB"; }, "--rate: \"2MB\"");
  bad([](auto& g) { g.reset_after = "0"; }, "--reset-after: \"0\": must be at least 1 byte");
  bad([](auto& g) { g.listen = "0.0.0.0:1"; }, "--listen: \"0.0.0.0:1\" is not a loopback address");
  bad([](auto& g) { g.upstream = "nowhere"; }, "--upstream: ");
  bad([](auto& g) { g.upstream = "127.0.0.1:0"; }, "--upstream: ");
}
