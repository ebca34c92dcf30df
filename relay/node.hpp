#pragma once
// relay::node — one `edgerelay run`: the store, the listeners (ingest HTTP,
// relay WebSocket over mTLS, admin API) and one forwarder per peer.
//
// Threads: an io_context run by `threads` threads serves every listener and
// the relay forwarders (one strand each); file:// sinks run on a thread of
// their own because they fsync; the store has its writer thread. start()
// and stop() are called from one controlling thread.

#include "relay/config.hpp"
#include "util/clock.hpp"
#include "util/errc.hpp"

#include <boost/json/value.hpp>

#include <memory>
#include <string>
#include <vector>

namespace edgerelay::queue {
class store;
}

namespace edgerelay::relay {

// What a reload (POST /v1/reload, SIGHUP) did. Each entry is a sentence
// naming the setting.
struct reload_report {
  std::vector<std::string> applied;          // in force now
  std::vector<std::string> restart_required; // changed in the file, left as it was until a restart
  std::vector<std::string> failed; // valid config but could not be applied (e.g. unreadable new cert): old kept
};

class node {
public:
  static boost::system::result<std::unique_ptr<node>, error> create(node_config cfg, util::clock* clock = nullptr,
                                                                    unsigned threads = 0);
  ~node();
  node(const node&) = delete;
  node& operator=(const node&) = delete;

  // Binds the listeners and starts the forwarders. Errors name the listener.
  boost::system::result<void, error> start();
  // Stops accepting, closes connections, stops forwarders (unacknowledged
  // deliveries are retried after the next start), and closes the store.
  void stop();

  // Re-reads the config file the node was created from and applies what can
  // change live: bandwidth, retry, window and timeouts, routes, peers added
  // or removed, TLS material and allow lists (new connections use them; live
  // ones that are unaffected continue). An invalid file changes nothing and
  // returns the errors check-config would print. Any thread.
  boost::system::result<reload_report, config_errors> reload();

  // The status document of GET /v1/status.
  boost::json::object status() const;
  // The soak report of GET /v1/evidence/soak (docs/soak.md).
  boost::json::object soak_report() const;
  // Bound addresses (useful with port 0): "ingest", "listen", "admin".
  std::string address(std::string_view listener) const;
  // The node's store, for tests that inject its faults
  // (store::fail_next_commits_for_test). Valid from create() to destruction.
  queue::store& store_for_test();

  struct impl;

private:
  explicit node(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace edgerelay::relay
