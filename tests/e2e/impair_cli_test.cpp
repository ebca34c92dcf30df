// `edgerelay impair` run as a user would: a child process in front of an echo server.

// process.hpp uses std::exchange without including <utility>.
#include <utility>

#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>

#include <cerrno>
#include <memory>
#include <optional>
#include <poll.h>
#include <regex>
#include <sys/socket.h>
#include <thread>

using namespace edgerelay;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;
namespace net = boost::asio;
using tcp = net::ip::tcp;

namespace {

const std::string bin = std::string(EDGERELAY_BIN_DIR) + "/edgerelay";

// Echoes every connection on a loopback port from its own thread.
class echo_server {
public:
  echo_server() : acceptor_(io_, {net::ip::address_v4::loopback(), 0}) {
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~echo_server() {
    net::post(io_, [this] {
      boost::system::error_code ec;
      acceptor_.close(ec);
    });
    work_.reset();
    io_.stop();
    thread_.join();
  }
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }

private:
  struct conn {
    explicit conn(tcp::socket s) : sock(std::move(s)) {}
    tcp::socket sock;
    char buf[4096];
  };
  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
      if (ec) return;
      echo(std::make_shared<conn>(std::move(s)));
      accept();
    });
  }
  void echo(std::shared_ptr<conn> c) {
    c->sock.async_read_some(net::buffer(c->buf), [this, c](boost::system::error_code ec, std::size_t n) {
      if (ec) return;
      net::async_write(c->sock, net::buffer(c->buf, n), [this, c](boost::system::error_code e, std::size_t) {
        if (!e) echo(c);
      });
    });
  }
  net::io_context io_;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work_{io_.get_executor()};
  tcp::acceptor acceptor_;
  std::thread thread_;
};

// The port the child says it listens on, once it has said it (within the limit).
std::optional<std::uint16_t> announced_port(const test::process& p, std::chrono::milliseconds limit) {
  static const std::regex re("listening on 127\\.0\\.0\\.1:([0-9]+)");
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    std::smatch m;
    auto log = p.log();
    if (std::regex_search(log, m, re)) return static_cast<std::uint16_t>(std::stoi(m[1].str()));
    std::this_thread::sleep_for(20ms);
  }
  return std::nullopt;
}

// Reads until `want` bytes arrived, the stream ends, or the time limit.
std::string read_for(tcp::socket& s, std::size_t want, std::chrono::milliseconds limit) {
  std::string got;
  char buf[4096];
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (got.size() < want) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{s.native_handle(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    auto n = ::recv(s.native_handle(), buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) break;
    if (n > 0) got.append(buf, static_cast<std::size_t>(n));
  }
  return got;
}

int run(const test::temp_dir& d, std::vector<std::string> args, std::string& out) {
  args.insert(args.begin(), bin);
  static int n = 0;
  test::process p(args, d / ("impair-" + std::to_string(++n) + ".log"));
  int code = p.wait(30s);
  out = p.log();
  return code;
}

} // namespace

TEST_CASE("edgerelay impair forwards connections with the delay it was given and prints counters on SIGTERM",
          "[impair][cli]") {
  test::temp_dir d("impair");
  echo_server echo;
  test::process proxy({bin, "impair", "--listen", "127.0.0.1:0", "--upstream",
                       "127.0.0.1:" + std::to_string(echo.port()), "--delay", "100ms"},
                      d / "proxy.log");
  auto port = announced_port(proxy, 20s);
  REQUIRE(port.has_value());
  CHECK_THAT(proxy.log(), Contains("delay 100ms"));
  {
    net::io_context io;
    tcp::socket s(io);
    boost::system::error_code ec;
    s.connect({net::ip::address_v4::loopback(), *port}, ec);
    REQUIRE(!ec);
    auto t0 = std::chrono::steady_clock::now();
    net::write(s, net::buffer(std::string("hello")), ec);
    REQUIRE(!ec);
    auto back = read_for(s, 5, 10s);
    auto took = std::chrono::steady_clock::now() - t0;
    CHECK(back == "hello");
    CHECK(took >= 200ms);
  }
  // The proxy counts a chunk when its write completes, which can be after the
  // client has already read it (seen under ASan): give that handler a moment
  // before the counters are printed.
  std::this_thread::sleep_for(300ms);
  int status = proxy.stop(SIGTERM);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_THAT(proxy.log(),
             Contains("connections 1") && Contains("bytes to upstream 5") && Contains("bytes to client 5"));
}

TEST_CASE("edgerelay impair rejects bad flag values with exit 2 and a message naming the flag", "[impair][cli]") {
  test::temp_dir d("impair");
  std::string out;
  CHECK(run(d, {"impair", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--delay", "2x"}, out) == 2);
  CHECK_THAT(out, Contains("edgerelay impair: --delay: \"2x\" is not a duration"));
  CHECK(run(d, {"impair", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9", "--rate", "fast"}, out) == 2);
  CHECK_THAT(out, Contains("--rate: \"fast\""));
  CHECK(run(d, {"impair", "--listen", "10.0.0.1:0", "--upstream", "127.0.0.1:9"}, out) == 2);
  CHECK_THAT(out, Contains("--listen: \"10.0.0.1:0\" is not a loopback address"));
  CHECK(run(d, {"impair", "--listen", "127.0.0.1:0"}, out) == 2);
  CHECK_THAT(out, Contains("--upstream"));
}
