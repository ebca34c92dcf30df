// Bad input on the command line gets a clear error and changes nothing:
// options that would be ignored or would widen an operation are refused,
// and no command replaces or deletes what it did not make.

#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

#include <catch2/catch.hpp>

#include <fstream>

using namespace edgerelay;
using test::slurp;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

TEST_CASE("demo and store-demo refuse a --dir they did not make and leave it untouched, and reuse their own",
          "[e2e][cli][demo]") {
  test::temp_dir d("cli-demo-dir");
  const auto mine = d / "mine";
  std::filesystem::create_directories(mine / "sub");
  std::ofstream(mine / "precious.txt") << "keep me";
  std::ofstream(mine / "sub" / "data") << "and me";
  for (const char* cmd : {"demo", "store-demo"}) {
    INFO(cmd);
    auto r = test::run_edgerelay(d.path(), {cmd, "--dir", mine.string()});
    CHECK(r.code == 2);
    CHECK_THAT(r.out, Contains("is not empty and was not made by this demo"));
    CHECK(slurp(mine / "precious.txt") == "keep me");
    CHECK(slurp(mine / "sub" / "data") == "and me");
  }
  const auto a_file = d / "file";
  std::ofstream(a_file) << "x";
  auto r = test::run_edgerelay(d.path(), {"demo", "--dir", a_file.string()});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("exists and is not a directory"));
  CHECK(slurp(a_file) == "x");

  // A new directory, then the same one again: the second run empties what
  // the first left (its marker says it made it).
  const auto ours = d / "ours";
  for (int run = 0; run < 2; ++run) {
    INFO("run " << run);
    r = test::run_edgerelay(d.path(), {"demo", "--segments", "50", "--no-progress", "--dir", ours.string()}, 120s);
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(std::filesystem::exists(ours / ".edgerelay-demo"));
    CHECK(std::filesystem::exists(ours / "hub" / "spool"));
    CHECK_THAT(slurp(ours / "edge.toml"), Contains("[[peer]]")); // the configs, to read or start by hand
  }
  // A demo directory from before the marker: only what a demo makes in it.
  const auto older = d / "older";
  std::filesystem::create_directories(older / "pki");
  std::filesystem::create_directories(older / "hub");
  r = test::run_edgerelay(d.path(), {"demo", "--segments", "20", "--no-progress", "--dir", older.string()}, 120s);
  INFO(r.out);
  CHECK(r.code == 0);
}

TEST_CASE("deadletter, send, support-bundle and evidence export refuse options that would widen, mislead or destroy",
          "[e2e][cli]") {
  test::temp_dir d("cli-input");
  const std::string nobody = "http://127.0.0.1:1"; // nothing listens: a refused command never gets this far
  auto run = [&](std::vector<std::string> args) { return test::run_edgerelay(d.path(), std::move(args)); };

  // An empty filter (an unset variable in a script) would select every peer.
  for (auto args : std::vector<std::vector<std::string>>{
           {"deadletter", "purge", "--admin", nobody, "--all", "--peer", ""},
           {"deadletter", "retry", "--admin", nobody, "--all", "--peer", ""},
           {"deadletter", "list", "--admin", nobody, "--peer", ""},
           {"deadletter", "list", "--admin", nobody, "--reason", ""},
           {"deadletter", "purge", "--admin", nobody, "--id", ""},
       }) {
    auto r = run(args);
    INFO(r.out);
    CHECK(r.code == 2);
    CHECK_THAT(r.out, Contains("must not be empty"));
  }

  // send: a file and generated segments at once, a size without a count,
  // TLS or compression options for a URL they do not apply to, a directory.
  const auto file = d / "payload.bin";
  std::ofstream(file) << "payload";
  const std::pair<std::vector<std::string>, std::string> sends[] = {
      {{"--file", file.string(), "--count", "1"}, "--file excludes --count"},
      {{"--size", "1KiB"}, "--size requires --count"},
      {{"--count", "1", "--ca", file.string()}, "--ca applies only to a wss:// URL"},
      {{"--count", "1", "--zstd"}, "--zstd applies only to a ws:// or wss:// URL"},
      {{"--count", "1", "--window", "4"}, "--window applies only to a ws:// or wss:// URL"},
      {{"--file", d.path().string()}, "is a directory, not a file"},
  };
  for (auto& [extra, why] : sends) {
    std::vector<std::string> args{"send", "--url", nobody, "--stream", "s"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = run(args);
    INFO(r.out);
    CHECK(r.code == 2);
    CHECK_THAT(r.out, Contains(why));
  }

  // support-bundle never replaces a file (here: a node's config).
  const auto config = d / "edgerelay.toml";
  std::ofstream(config) << "[node]\nid = \"n\"\n";
  auto r = run({"support-bundle", "--admin", nobody, "--no-journal", "--out", config.string()});
  INFO(r.out);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Contains("already exists (a file): the bundle never replaces anything"));
  CHECK(slurp(config) == "[node]\nid = \"n\"\n");
  // A log path that is a directory is reported in the bundle, not a crash.
  r = run({"support-bundle", "--admin", nobody, "--no-journal", "--log", d.path().string(), "--out",
           (d / "b.tar.gz").string()});
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Contains("it is a directory, not a file"));

  // evidence export: an empty --network would write a report the matrix refuses.
  r = run({"evidence", "export", "--admin", nobody, "--out", (d / "ev").string() + "/", "--network", ""});
  CHECK(r.code == 2);
  CHECK_THAT(r.out, Contains("--network: must not be empty"));
}
