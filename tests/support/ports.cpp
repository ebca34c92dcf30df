#include "tests/support/ports.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <unistd.h>

namespace edgerelay::test {

namespace {

// The first port of the kernel's ephemeral range (32768 when unreadable).
unsigned ephemeral_low() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  unsigned lo = 0, hi = 0;
  return in >> lo >> hi && lo > 0 ? lo : 32768;
}

bool can_bind(boost::asio::io_context& io, std::uint16_t port) {
  boost::asio::ip::tcp::acceptor a(io);
  boost::system::error_code ec;
  a.open(boost::asio::ip::tcp::v4(), ec);
  if (!ec) a.bind({boost::asio::ip::make_address("127.0.0.1"), port}, ec);
  return !ec;
}

} // namespace

std::uint16_t free_port() {
  static std::mutex mu;
  static std::set<std::uint16_t> given;
  static std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(::getpid()));
  std::lock_guard lk(mu);
  boost::asio::io_context io;
  const unsigned first = 10000, end = ephemeral_low();
  if (end > first + 1000) {
    std::uniform_int_distribution<unsigned> pick(first, end - 1);
    for (int tries = 0; tries < 2000; ++tries) {
      auto p = static_cast<std::uint16_t>(pick(rng));
      if (given.count(p) || !can_bind(io, p)) continue;
      given.insert(p);
      return p;
    }
  }
  // No room below the ephemeral range: the kernel's choice, as before.
  boost::asio::ip::tcp::acceptor a(io, {boost::asio::ip::make_address("127.0.0.1"), 0});
  auto p = a.local_endpoint().port();
  given.insert(p);
  return p;
}

} // namespace edgerelay::test
