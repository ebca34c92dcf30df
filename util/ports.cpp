#include "util/ports.hpp"

#include <arpa/inet.h>
#include <cerrno>
#include <cstddef>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

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

// Reserves `port` for this process's lifetime among all processes that
// pick ports here: binds the abstract Unix socket "edgerelay-port-<port>"
// and keeps it open. False when another live process holds it. Where
// abstract sockets cannot be made at all, reserves nothing and says true.
bool reserve_machine_wide(std::uint16_t port, std::vector<int>& held) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return true;
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  const std::string name = "edgerelay-port-" + std::to_string(port);
  name.copy(a.sun_path + 1, sizeof a.sun_path - 2); // sun_path[0] == '\0': the abstract namespace
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), len) == 0) {
    held.push_back(fd);
    return true;
  }
  const bool taken = errno == EADDRINUSE;
  ::close(fd);
  return !taken;
}

} // namespace

std::uint16_t pick_local_port() {
  static std::mutex mu;
  static std::set<std::uint16_t> given;
  static std::vector<int> held; // the reservations, open until the process ends
  static std::mt19937 rng(std::random_device{}() ^ static_cast<unsigned>(::getpid()));
  std::lock_guard lk(mu);
  const unsigned first = 10000, end = ephemeral_low();
  if (end > first + 1000) {
    std::uniform_int_distribution<unsigned> pick(first, end - 1);
    for (int tries = 0; tries < 2000; ++tries) {
      auto p = static_cast<std::uint16_t>(pick(rng));
      if (given.count(p) || bind_loopback(p) != p || !reserve_machine_wide(p, held)) continue;
      given.insert(p);
      return p;
    }
  }
  std::uint16_t p = 0;
  for (int tries = 0; tries < 100 && p == 0; ++tries)
    if (p = bind_loopback(0); p != 0 && (given.count(p) || !reserve_machine_wide(p, held))) p = 0;
  if (p == 0) throw std::runtime_error("cannot bind a TCP port on 127.0.0.1");
  given.insert(p);
  return p;
}

} // namespace edgerelay::util
