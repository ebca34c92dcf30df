#include "util/ports.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>

namespace edgerelay::util {

namespace {

// The first port of the kernel's ephemeral range (32768 when unreadable).
unsigned ephemeral_low() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  unsigned lo = 0, hi = 0;
  return in >> lo >> hi && lo > 0 ? lo : 32768;
}

// Binds 127.0.0.1:port (0: the kernel picks) and returns the bound port, or 0.
std::uint16_t bind_loopback(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(port);
  socklen_t len = sizeof a;
  std::uint16_t bound = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    bound = ntohs(a.sin_port);
  ::close(fd);
  return bound;
}

} // namespace

std::uint16_t pick_local_port() {
  static std::mutex mu;
  static std::set<std::uint16_t> given;
  static std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(::getpid()));
  std::lock_guard lk(mu);
  const unsigned first = 10000, end = ephemeral_low();
  if (end > first + 1000) {
    std::uniform_int_distribution<unsigned> pick(first, end - 1);
    for (int tries = 0; tries < 2000; ++tries) {
      auto p = static_cast<std::uint16_t>(pick(rng));
      if (given.count(p) || bind_loopback(p) != p) continue;
      given.insert(p);
      return p;
    }
  }
  auto p = bind_loopback(0);
  if (p == 0) throw std::runtime_error("cannot bind a TCP port on 127.0.0.1");
  given.insert(p);
  return p;
}

} // namespace edgerelay::util
