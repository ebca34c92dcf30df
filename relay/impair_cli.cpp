#include "relay/impair_cli.hpp"

#include "transport/http_server.hpp"
#include "util/units.hpp"

#include <csignal>
#include <iostream>
#include <pthread.h>

namespace edgerelay::relay {

boost::system::result<impair_options, error> impair_options_from_cli(const impair_cli_options& o) {
  auto bad = [](const std::string& flag, const std::string& why) {
    return error{make_error_code(errc::invalid_argument), flag + ": " + why};
  };
  impair_options opt;
  if (o.listen.empty()) return bad("--listen", "required (e.g. 127.0.0.1:9500, or port 0 for any free port)");
  auto listen = transport::parse_endpoint(o.listen);
  if (!listen) return bad("--listen", listen.error().message);
  if (!listen->address().is_loopback())
    return bad("--listen", "\"" + o.listen + "\" is not a loopback address (use 127.0.0.1, [::1] or localhost)");
  opt.listen = *listen;
  if (o.upstream.empty()) return bad("--upstream", "required (e.g. 127.0.0.1:9443)");
  auto upstream = transport::parse_endpoint(o.upstream);
  if (!upstream) return bad("--upstream", upstream.error().message);
  if (upstream->port() == 0 || upstream->address().is_unspecified())
    return bad("--upstream", "\"" + o.upstream + "\" needs a host address and a port other than 0");
  opt.upstream = *upstream;
  if (!o.delay.empty()) {
    auto d = util::parse_duration(o.delay);
    if (!d) return bad("--delay", d.error().message);
    opt.initial.delay = *d;
  }
  if (!o.jitter.empty()) {
    auto d = util::parse_duration(o.jitter);
    if (!d) return bad("--jitter", d.error().message);
    opt.initial.jitter = *d;
  }
  if (!o.rate.empty()) {
    auto r = util::parse_rate(o.rate);
    if (!r) return bad("--rate", r.error().message);
    opt.initial.rate_bytes_per_s = *r;
  }
  if (!o.reset_after.empty()) {
    auto n = util::parse_size(o.reset_after);
    if (!n) return bad("--reset-after", n.error().message);
    if (*n == 0) return bad("--reset-after", "\"" + o.reset_after + "\": must be at least 1 byte");
    opt.initial.reset_after_bytes = *n;
  }
  if (!o.max_queue.empty()) {
    auto n = util::parse_size(o.max_queue);
    if (!n) return bad("--max-queue", n.error().message);
    if (*n == 0) return bad("--max-queue", "\"" + o.max_queue + "\": must be at least 1 byte");
    opt.max_queue_bytes = *n;
  }
  opt.initial.blackhole = o.blackhole;
  opt.initial.refuse = o.refuse;
  return opt;
}

int cmd_impair(const impair_cli_options& o) {
  auto opt = impair_options_from_cli(o);
  if (!opt) {
    std::cerr << "edgerelay impair: " << opt.error().message << "\n";
    return 2;
  }
  // Block the signals before the proxy's thread starts so that only sigwait sees them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  auto upstream = o.upstream;
  auto proxy = impair_proxy::create(std::move(*opt));
  if (!proxy) {
    std::cerr << "edgerelay " << proxy.error().message << "\n";
    return 1;
  }
  std::cout << "edgerelay impair: listening on " << (*proxy)->address() << ", forwarding to " << upstream << " ("
            << to_string((*proxy)->current()) << ")" << std::endl;
  int sig = 0;
  sigwait(&set, &sig);
  auto c = (*proxy)->counters();
  proxy->reset();
  std::cout << "edgerelay impair: stopped on signal " << sig << ": connections " << c.connections_accepted
            << " (rejected " << c.connections_rejected << ", upstream failures " << c.upstream_failures
            << "), bytes to upstream " << c.bytes_to_upstream << ", bytes to client " << c.bytes_to_client
            << ", bytes dropped " << c.bytes_dropped << ", resets " << c.resets << std::endl;
  return 0;
}

} // namespace edgerelay::relay
