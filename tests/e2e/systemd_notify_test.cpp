// `edgerelay run` under systemd (deploy/systemd/edgerelay.service is
// Type=notify with WatchdogSec=): READY=1 once the listeners are bound,
// WATCHDOG=1 from the event loop at half the watchdog interval, STOPPING=1
// on SIGTERM. The test plays systemd: a datagram socket in NOTIFY_SOCKET.

#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

using namespace edgerelay;
using namespace std::chrono_literals;

namespace {

// The receiving end of sd_notify(): one datagram per notification.
class notify_socket {
public:
  explicit notify_socket(const std::filesystem::path& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    REQUIRE(path.string().size() < sizeof a.sun_path);
    std::strcpy(a.sun_path, path.c_str());
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~notify_socket() { ::close(fd_); }
  // The next notification, or "" when none came within `limit`.
  std::string next(std::chrono::milliseconds limit) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) return {};
    char buf[4096];
    auto n = ::recv(fd_, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }

private:
  std::filesystem::path path_;
  int fd_ = -1;
};

// Sets environment variables for the children started while it lives.
struct scoped_env {
  std::vector<std::string> names;
  scoped_env(std::initializer_list<std::pair<const char*, std::string>> vars) {
    for (auto& [k, v] : vars) {
      ::setenv(k, v.c_str(), 1);
      names.emplace_back(k);
    }
  }
  ~scoped_env() {
    for (auto& k : names)
      ::unsetenv(k.c_str());
  }
};

} // namespace

TEST_CASE("edgerelay run tells systemd it is ready, pings the watchdog and says when it stops", "[e2e][systemd]") {
  test::temp_dir dir("sd-notify");
  notify_socket sock(dir / "notify.sock");
  auto cfg = dir / "node.toml";
  std::ofstream(cfg) << "[node]\nid = \"sd\"\ndata_dir = \"" << (dir / "data").string()
                     << "\"\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = "
                        "\"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n"
                        "[[peer]]\nname = \"spool\"\nurl = \"file://"
                     << (dir / "spool").string() << "\"\n";
  test::process node;
  {
    // 400 ms watchdog: pings expected every 200 ms.
    scoped_env env{{"NOTIFY_SOCKET", (dir / "notify.sock").string()}, {"WATCHDOG_USEC", "400000"}};
    node = test::process({std::string(EDGERELAY_BIN_DIR) + "/edgerelay", "run", "--config", cfg.string()},
                         dir / "node.log");
  }
  auto first = sock.next(20s);
  INFO(node.log());
  CHECK(first.find("READY=1") != std::string::npos);
  int pings = 0;
  auto t0 = std::chrono::steady_clock::now();
  while (pings < 5 && std::chrono::steady_clock::now() - t0 < 5s)
    if (sock.next(1s) == "WATCHDOG=1") ++pings;
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(pings == 5);
  // Five pings at ~200 ms intervals: well under the 400 ms deadline each.
  CHECK(took < 2s);
  ::kill(node.pid(), SIGTERM);
  bool stopping = false;
  for (int i = 0; i < 20 && !stopping; ++i) {
    auto m = sock.next(1s);
    if (m.empty()) break;
    stopping = m.find("STOPPING=1") != std::string::npos;
  }
  CHECK(stopping);
  CHECK(node.wait(10s) == 0);
}

TEST_CASE("edgerelay run without NOTIFY_SOCKET runs as before and pings nobody", "[e2e][systemd]") {
  test::temp_dir dir("sd-none");
  ::unsetenv("NOTIFY_SOCKET");
  auto cfg = dir / "node.toml";
  std::ofstream(cfg) << "[node]\nid = \"sd\"\ndata_dir = \"" << (dir / "data").string()
                     << "\"\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = "
                        "\"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n"
                        "[[peer]]\nname = \"spool\"\nurl = \"file://"
                     << (dir / "spool").string() << "\"\n";
  test::process node({std::string(EDGERELAY_BIN_DIR) + "/edgerelay", "run", "--config", cfg.string()},
                     dir / "node.log");
  bool up = false;
  for (int i = 0; i < 200 && !up; ++i) {
    up = node.log().find("node running") != std::string::npos;
    std::this_thread::sleep_for(50ms);
  }
  CHECK(up);
  ::kill(node.pid(), SIGTERM);
  CHECK(node.wait(10s) == 0);
  CHECK(node.log().find("watchdog") == std::string::npos);
}
