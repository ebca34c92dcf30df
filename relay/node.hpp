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

namespace edgerelay::relay {

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

  // The status document of GET /v1/status.
  boost::json::object status() const;
  // Bound addresses (useful with port 0): "ingest", "listen", "admin".
  std::string address(std::string_view listener) const;

  struct impl;

private:
  explicit node(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace edgerelay::relay
