// The evidence scenarios' process harness (relay/scenarios/harness.hpp):
// restarting a node on its pinned relay port.

#include "relay/scenarios/harness.hpp"
#include "tests/support/temp_dir.hpp"
#include "util/clock.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <catch2/catch.hpp>

#include <chrono>
#include <csignal>
#include <fstream>
#include <thread>

using namespace edgerelay;
using test::slurp;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;
namespace sc = edgerelay::relay::scenarios;

TEST_CASE("restart_node starts a node again when its pinned port is held for a moment, and fails at once otherwise",
          "[evidence][harness]") {
  test::temp_dir dir("harness");
  util::system_clock_source clk;
  sc::context ctx;
  ctx.work = dir.path();
  ctx.exe = std::string(EDGERELAY_BIN_DIR) + "/edgerelay";
  ctx.clock = &clk;
  auto pki = transport::pki_init(dir / "pki");
  REQUIRE(pki.has_value());
  ctx.pki = *pki;

  const auto pinned = sc::pinned_address();
  // Below the kernel's ephemeral range: no connect() or bind(0) is given it.
  std::ifstream range("/proc/sys/net/ipv4/ip_local_port_range");
  unsigned ephemeral_low = 0;
  REQUIRE(range >> ephemeral_low);
  if (ephemeral_low > 11000) CHECK(sc::port_of(pinned) < ephemeral_low); // else no room below: the kernel's pick
  auto hub = sc::start_node(ctx, "hub", sc::hub_toml(ctx, "hub", dir / "spool", "", pinned));
  const auto listen = hub.listen;
  CHECK(listen == pinned);
  hub.proc.stop(SIGKILL);

  // Another program's socket on the port (as a connection's local port would be) for 700 ms.
  boost::asio::io_context io;
  boost::asio::ip::tcp::socket holder(io);
  holder.open(boost::asio::ip::tcp::v4());
  holder.bind({boost::asio::ip::make_address("127.0.0.1"), sc::port_of(listen)});
  std::thread release([&] {
    std::this_thread::sleep_for(700ms);
    holder.close();
  });
  auto t0 = std::chrono::steady_clock::now();
  auto again = sc::restart_node(ctx, "hub", hub.config);
  release.join();
  CHECK(again.listen == listen);
  CHECK(std::chrono::steady_clock::now() - t0 >= 700ms);
  // The first tries ended on the held port, each in its own log.
  bool saw_in_use = false;
  for (auto& e : std::filesystem::directory_iterator(dir.path()))
    if (e.is_regular_file() && e.path().filename().string().rfind("hub-", 0) == 0 && e.path().extension() == ".log" &&
        slurp(e.path()).find("Address already in use") != std::string::npos)
      saw_in_use = true;
  CHECK(saw_in_use);
  again.proc.stop(SIGTERM);

  // Any other reason not to start is not retried.
  auto bad = dir / "bad.toml";
  std::ofstream(bad) << "[node]\nid = \"x\"\n";
  t0 = std::chrono::steady_clock::now();
  try {
    sc::restart_node(ctx, "bad", bad);
    FAIL("restart_node should have thrown");
  } catch (const sc::scenario_error& e) {
    CHECK_THAT(e.what(), Contains("node bad did not start"));
  }
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
}
