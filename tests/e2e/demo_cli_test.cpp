// `edgerelay demo` as a user runs it: a dev PKI, an edge and a hub on
// loopback over mTLS, traffic, then the status and the evidence summary
// (DESIGN: `edgerelay demo [--dir DIR] [--duration D]`).

#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

#include <catch2/catch.hpp>

#include <regex>

using namespace edgerelay;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

// The number printed before `what` on the line that starts with `line_start`.
long long number_before(const std::string& out, const std::string& line_start, const std::string& what) {
  std::smatch m;
  if (!std::regex_search(out, m, std::regex(line_start + "[^\n]*?([0-9]+) " + what))) return -1;
  return std::stoll(m[1]);
}

} // namespace

TEST_CASE("edgerelay demo delivers every segment exactly once and prints the soak evidence, and --duration paces it",
          "[e2e][cli][demo]") {
  test::temp_dir d("demo-cli");

  auto r =
      test::run_edgerelay(d.path(), {"demo", "--segments", "300", "--no-progress", "--dir", (d / "a").string()}, 120s);
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Contains("300 segments") && Contains("300 distinct, 0 missing, 0 duplicated, 0 bad checksums") &&
                        Contains("result: every segment delivered exactly once, loss = 0"));
  // The edge's canary soak ran through the hub: at least one round closed,
  // and the hub's verifier saw every canary once and intact.
  CHECK_THAT(r.out, Contains("evidence (the canary soak"));
  CHECK(number_before(r.out, "    edge ", "rounds") >= 1);
  CHECK_THAT(r.out, Contains("loss 0, latency p50"));
  const auto received = number_before(r.out, "    hub   verifier received", "canaries");
  CHECK(received >= 10);
  CHECK_THAT(r.out, Contains(": 0 gaps, 0 duplicates, 0 corrupt"));

  // --duration: paced traffic for that long instead of a count. And a relative --dir (from the working
  // directory, which the child inherits): the configs written into it must not resolve it twice.
  const auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(d.path());
  auto t0 = std::chrono::steady_clock::now();
  r = test::run_edgerelay(d.path(), {"demo", "--duration", "3s", "--no-progress", "--dir", "b"}, 120s);
  std::filesystem::current_path(cwd);
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(std::chrono::steady_clock::now() - t0 >= 3s);
  const auto sent = number_before(r.out, "  ", "segments, ");
  CHECK(sent >= 300); // about 200 a second
  CHECK(sent <= 900);
  CHECK_THAT(r.out, Contains(" distinct, 0 missing, 0 duplicated, 0 bad checksums") &&
                        Contains("result: every segment delivered exactly once, loss = 0"));
  CHECK(number_before(r.out, "    edge ", "rounds") >= 1);

  // Usage errors: exit 2, saying what is wrong, before anything starts.
  for (const char* bad : {"0.5s", "2h", "3"}) {
    INFO(bad);
    r = test::run_edgerelay(d.path(), {"demo", "--duration", bad, "--dir", (d / "c").string()});
    CHECK(r.code == 2);
    CHECK_THAT(r.out, Contains("edgerelay demo: --duration \"" + std::string(bad) + "\""));
    CHECK_FALSE(std::filesystem::exists(d / "c"));
  }
  r = test::run_edgerelay(d.path(), {"demo", "--duration", "3s", "--segments", "10"});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("--segments excludes --duration"));
}
