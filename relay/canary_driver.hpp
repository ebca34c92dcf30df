#pragma once
// relay::canary_driver — the canary soak inside a node (docs/soak.md, DESIGN
// §1 canary, §7 status `soak` and canary_rounds_total, §8 soak report).
//
// Owns the sending side (a soak_tracker, when [evidence] canary_interval > 0)
// and the receiving side (a canary_verifier, always: any node may receive
// canaries over its relay listener). The node owns one driver and calls it
// from a few hook points:
//
//   create()      after the store is open: restores the persisted soak
//                 (restarts + 1, an open round closed as `interrupted`) or
//                 starts a fresh one.
//   start(io)     before the forwarders start: watches the fates of `_canary`
//                 segments in the store and runs the round timer on `io`.
//   stop()        after the io threads are joined: cancels the timer and
//                 persists the soak (blocking).
//   on_canary_received()  the relay receiver, for each `_canary` record.
//   soak_report(), status_json(), round_counts()  the admin API.
//
// Rounds: every canary_interval (steady time of the node's clock; the first
// round one interval after start) the driver closes a round that is due,
// opens the next with canary_segments canaries of canary_size for each peer
// the node has, persists the tracker (record "soak" in the store) and only
// after that commit enqueues the canaries on stream `_canary`, each to exactly
// its peer's queue. Fates reported by the store go to the tracker: acked →
// delivered; dead-lettered → failed with the reason class; evicted → failed
// "evicted". A round's canaries the store refused (queue full, store error) or
// that were never enqueued because the record could not be persisted are
// reported failed with that reason.
//
// Threads: create/start/stop from the node's controlling thread; the timer
// runs on one io thread at a time; fates arrive on the store's writer thread;
// the receiving and reporting members may be called from any thread.

#include "queue/store.hpp"
#include "relay/config.hpp"
#include "relay/soak.hpp"
#include "util/clock.hpp"
#include "util/errc.hpp"

#include <boost/json/object.hpp>
#include <boost/system/result.hpp>

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace boost::asio {
class io_context;
}

namespace edgerelay::relay {

// A peer the node sends to now (not removed by a reload).
struct canary_peer {
  std::string name;
  queue::peer_id id = 0;
};

class canary_driver : public std::enable_shared_from_this<canary_driver> {
public:
  // What the driver needs of its node. Both are called from an io thread or
  // the store's writer thread; they must be thread-safe and short.
  struct node_hooks {
    std::function<std::vector<canary_peer>()> peers; // the peers that take traffic now
    std::function<void()> notify;                    // segments were queued
  };

  // The store record that holds soak_tracker::serialize().
  static constexpr std::string_view record_key = "soak";

  // Fails only when the persisted record cannot be read (a store error) or the
  // options are invalid (a node id over 255 bytes). A record that does not
  // restore (damaged, a newer format, another node id) is logged and a fresh
  // soak (a new epoch) begins.
  static boost::system::result<std::shared_ptr<canary_driver>, error>
  create(queue::store& store, util::clock& clock, std::string node_id, const evidence_section& ev, node_hooks hooks);
  ~canary_driver();
  canary_driver(const canary_driver&) = delete;
  canary_driver& operator=(const canary_driver&) = delete;

  // True when this node sends canaries (canary_interval > 0).
  bool enabled() const noexcept;

  void start(boost::asio::io_context& io);
  void stop();

  // The receiving side: verifies one `_canary` record that arrived over the
  // relay listener. `segment_id` is the record's id ("<origin>:<seq>").
  verify_event on_canary_received(std::string_view segment_id, std::string_view payload);

  // GET /v1/evidence/soak (docs/soak.md, "The node").
  boost::json::object soak_report() const;
  // GET /v1/status `soak`.
  boost::json::object status_json() const;
  // canary_rounds_total{result}: every result label with its persisted count.
  std::vector<std::pair<const char*, std::uint64_t>> round_counts() const;

  // The store's fate observer (public for tests; the driver registers it in start()).
  void on_fates(std::vector<queue::fate_event>&& events);
  // One timer step: closes a due round, opens the next when its time came.
  // start() runs it on the io_context; public for tests.
  void tick();

  struct impl;

private:
  explicit canary_driver(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace edgerelay::relay
