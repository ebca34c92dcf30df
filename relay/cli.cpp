#include "relay/cli.hpp"

#include "relay/store_demo.hpp"

#include <CLI/CLI.hpp>
#include <iostream>

namespace edgerelay::relay {

int run_cli(int argc, char** argv) {
  CLI::App app{"edgerelay: a store-and-forward relay node for edge hardware"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("edgerelay ") + EDGERELAY_VERSION);

  store_demo_options demo;
  std::string demo_dir;
  auto* sd = app.add_subcommand("store-demo", "Exercise the durable queue on this machine and print its accounting");
  sd->add_option("--dir", demo_dir, "Keep the store in this directory (default: a temporary one, removed after)");
  sd->add_option("--segments", demo.segments, "How many segments the producers send")
      ->check(CLI::Range(16u, 10000000u));
  sd->add_option("--producers", demo.producers, "Concurrent producer threads")->check(CLI::Range(1u, 256u));
  sd->add_flag("!--no-progress", demo.progress, "Do not draw progress bars");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  if (*sd) {
    if (!demo_dir.empty()) demo.dir = demo_dir;
    return run_store_demo(demo);
  }
  return 2;
}

} // namespace edgerelay::relay
