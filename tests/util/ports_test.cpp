// util::pick_local_port across processes: a port one live process picked is
// never picked by another (ctest -j runs several e2e tests at once, each
// giving picked ports to the nodes it starts).

#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "util/ports.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

using namespace edgerelay;
using namespace std::chrono_literals;

namespace {
constexpr int picks = 400; // about 7 shared ports expected between two processes without the reservation
}

// Run by the test below in a second process: picks ports and writes them,
// one per line, to $EDGERELAY_PORTS_OUT.
TEST_CASE("ports child: pick and list", "[.ports_child]") {
  const char* out = std::getenv("EDGERELAY_PORTS_OUT");
  REQUIRE(out != nullptr);
  std::ofstream f(out);
  for (int i = 0; i < picks; ++i)
    f << util::pick_local_port() << "\n";
  f.close();
  REQUIRE(f.good());
}

TEST_CASE("a port picked by one live process is not picked by another") {
  std::set<std::uint16_t> mine;
  for (int i = 0; i < picks; ++i)
    CHECK(mine.insert(util::pick_local_port()).second); // never the same twice in one process
  REQUIRE(mine.size() == picks);

  test::temp_dir dir("ports");
  const auto out = dir / "child-ports";
  ::setenv("EDGERELAY_PORTS_OUT", out.c_str(), 1);
  const auto self = std::filesystem::read_symlink("/proc/self/exe").string();
  test::process child({self, "ports child: pick and list"}, dir / "child.log");
  const int code = child.wait(60s);
  ::unsetenv("EDGERELAY_PORTS_OUT");
  INFO("child's output:\n" << test::slurp(dir / "child.log"));
  REQUIRE(code == 0);

  std::ifstream in(out);
  std::set<std::uint16_t> theirs, shared;
  for (unsigned p = 0; in >> p;) {
    theirs.insert(static_cast<std::uint16_t>(p));
    if (mine.count(static_cast<std::uint16_t>(p))) shared.insert(static_cast<std::uint16_t>(p));
  }
  CHECK(theirs.size() == picks);
  INFO(shared.size() << " ports picked by both, the first " << (shared.empty() ? 0 : *shared.begin()));
  CHECK(shared.empty());
}
