#pragma once
// `edgerelay impair`: the TCP impairment proxy (relay/impair.hpp) run in the
// foreground from the command line. See docs/impair.md.

#include "relay/impair.hpp"
#include "util/errc.hpp"

#include <string>

namespace edgerelay::relay {

// The flags as written on the command line; empty strings are "not given".
struct impair_cli_options {
  std::string listen;      // --listen HOST:PORT, a loopback address (port 0 picks one)
  std::string upstream;    // --upstream HOST:PORT
  std::string delay;       // --delay 200ms
  std::string jitter;      // --jitter 20ms
  std::string rate;        // --rate 1Mbit (or 125KB/s ...)
  std::string reset_after; // --reset-after 64KiB
  std::string max_queue;   // --max-queue 4MiB (per connection and direction)
  bool blackhole = false;  // --blackhole
  bool refuse = false;     // --refuse
};

// Turns the flags into proxy options. A bad value is an errc::invalid_argument
// whose message names the flag first, e.g.
//   --delay: "2x" is not a duration: ...
boost::system::result<impair_options, error> impair_options_from_cli(const impair_cli_options& o);

// Runs the proxy until SIGINT or SIGTERM. Prints the bound address on start
// (stdout) and the counters on exit. Returns 0 after a signal, 1 when the
// proxy cannot start (e.g. the port is taken), 2 for a bad flag value.
int cmd_impair(const impair_cli_options& o);

} // namespace edgerelay::relay
