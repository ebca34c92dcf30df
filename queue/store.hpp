#pragma once
// edgerelay::queue::store — the node's durable state in one LMDB environment:
// per-peer FIFO queues, leases for in-flight deliveries, attempts and backoff,
// the dead-letter store, LRU eviction with its journal, persistent per-peer
// counters, the received-id (dedupe) table, each peer's bandwidth quota
// state and small named records (e.g. the canary soak's state).
//
// Threads. Every write (enqueue, ack, nack, reject, dead-letter operations,
// evictions, maintenance, quota saves) is a request handed to the store's
// single writer thread, which puts every request that arrived while the
// previous commit was in flight into one transaction (group commit) and
// completes the callers only after that transaction committed (and, with
// sync = full, was fsynced).
// Completion callbacks run on the writer thread: they must be short and must
// not call the store's *_wait functions. Reads (read_batch, list functions,
// stats) may be called from any thread; they use read-only transactions.
//
// Accounting. For every peer, in every committed state:
//   routed = delivered + queued + deadletter + evicted + purged
// Counters live in LMDB and change in the same transaction as the state they
// count; verify_accounting() recounts the state and reports any difference.
//
// Ordering. A peer's queue is keyed by a node-wide sequence that is assigned
// at enqueue and re-assigned when a delivery attempt fails (nack), so key
// order is "least recently used first": FIFO for fresh segments, and a failed
// segment goes behind everything queued before its failed attempt.

#include "queue/segment_view.hpp"
#include "util/clock.hpp"
#include "util/errc.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::queue {

enum class sync_mode {
  full, // every commit is fsynced before anyone is told: survives power loss
  none  // commits reach the OS but are not fsynced: survives a process crash only
};
enum class overflow_policy {
  evict_lru, // evict least recently used unleased segments until the new ones fit; journaled
  reject,    // fail the enqueue with errc::queue_full
  block      // wait up to block_timeout for room, then fail with errc::timeout
};

struct backoff_policy {
  std::chrono::milliseconds initial{1000};
  std::chrono::milliseconds max{std::chrono::minutes{5}};
  double multiplier = 2.0;
  double jitter = 0.2; // +/- this fraction, uniformly
  friend bool operator==(const backoff_policy&, const backoff_policy&) = default;
};

struct store_options {
  std::filesystem::path data_dir;
  std::string node_id;                                              // origin of the ids this node assigns
  sync_mode sync = sync_mode::full;                                 // default: durable against power loss
  std::uint64_t max_bytes = 10ull << 30;                            // capacity of all queues together
  std::uint64_t max_segment_bytes = 4ull << 20;                     // largest payload accepted
  overflow_policy overflow = overflow_policy::reject;               // what happens at capacity
  std::chrono::milliseconds block_timeout{std::chrono::seconds{5}}; // overflow = block
  std::uint32_t max_retry = 10;                                     // failed attempts before dead-letter
  backoff_policy retry_backoff;                                     // schedule of the next attempt after a failure
  std::chrono::milliseconds deadletter_retention{std::chrono::hours{24 * 7}};
  std::uint64_t deadletter_max_bytes = 1ull << 30; // oldest purged first beyond this
  std::chrono::milliseconds dedupe_window{std::chrono::hours{1}};
  std::size_t eviction_journal_max = 10000; // newest entries kept
  std::uint64_t max_map_bytes = 0;          // 0: derived from the capacities
  util::clock* clock = nullptr;             // nullptr: the system clock
};

using peer_id = std::uint32_t;

// One segment handed to enqueue(). The views must stay valid until the
// completion callback has run.
struct segment_in {
  std::string_view stream;
  std::string_view payload;
  std::span<const peer_id> peers;        // the peers it is routed to (at least one)
  std::string_view id;                   // empty: the store assigns "<node id>:<seq>"
  std::int64_t created_ms = 0;           // 0: now
  std::optional<std::uint64_t> checksum; // verified against the payload when given
  bool checksum_verified = false;        // the caller has just verified checksum against payload; not done again
};

enum class item_status : std::uint8_t { stored, duplicate };

struct enqueue_result {
  boost::system::error_code ec; // the whole request failed; nothing of it was stored
  std::string message;          // human explanation when ec is set
  // Per segment, in request order (empty when ec is set).
  std::vector<item_status> status;
  // Origin sequence numbers assigned to the segments that had no id, in order:
  // the i-th such segment got id "<node id>:<first_seq + i>".
  std::uint64_t first_seq = 0;
};

using enqueue_callback = std::function<void(enqueue_result&&)>;
using done_callback = std::function<void(boost::system::error_code)>;

// A segment read for delivery. Views point into the owning batch's buffer.
struct segment_out {
  std::uint64_t key = 0; // what ack/nack/reject/release take
  std::string_view id;
  std::string_view stream;
  std::int64_t created_ms = 0;
  std::uint64_t checksum = 0;
  std::uint16_t attempts = 0; // failed attempts so far
  std::string_view payload;
};

struct batch {
  peer_id peer = 0;
  std::vector<segment_out> segments;
  std::uint64_t payload_bytes = 0;
  // Set when nothing was ready but something is waiting for its backoff.
  std::optional<std::chrono::system_clock::time_point> next_ready;
  std::string buffer; // owns what segments[] view; always heap-allocated, so moving a batch keeps the views valid
  batch() = default;
  batch(batch&&) noexcept = default;
  batch& operator=(batch&&) noexcept = default;
};

struct rejected_item {
  std::uint64_t key;
  std::string reason; // a reason class, e.g. "rejected:checksum", "http_400"
  std::string error;  // the detail, shown to operators
};

struct peer_counters {
  std::uint64_t routed = 0, delivered = 0, queued = 0, queued_bytes = 0, deadletter = 0, deadletter_bytes = 0,
                evicted = 0, purged = 0, attempts = 0;
};

struct peer_stats {
  peer_id id = 0;
  std::string name;
  peer_counters counters;
  std::uint64_t inflight = 0;         // leased now
  std::uint64_t direct_delivered = 0; // delivered through the peer's direct sink since open (in counters.delivered too)
};

// A peer's terminal destination that the store's writer delivers to itself,
// inside the transaction that accepts the segments, instead of queueing them
// (set_direct_sink; docs/store.md, "Direct delivery"). Both functions run on
// the writer thread: they must not call into the store.
class direct_sink {
public:
  virtual ~direct_sink() = default;
  // Asked once per transaction: may this one deliver here?
  virtual bool ready() = 0;
  // Makes `segs` durable, in order, before returning success. On failure
  // none of them may remain where a reader would find them. The views are
  // valid during the call only.
  virtual boost::system::result<void, error> deliver(std::span<const segment_view> segs) = 0;
};

struct store_stats {
  std::vector<peer_stats> peers;
  std::uint64_t accepted = 0;   // segments newly stored by enqueue
  std::uint64_t duplicates = 0; // segments dropped as already seen
  std::uint64_t rejected = 0;   // segments refused (capacity, size, timeout)
  std::uint64_t queued_bytes = 0, capacity_bytes = 0, deadletter_segments = 0, deadletter_bytes = 0;
  std::uint64_t commits = 0; // transactions committed since open
  // Of those, committed without the metadata flush: they only delivered
  // directly (docs/store.md, "Direct delivery").
  std::uint64_t commits_direct_only = 0;
  std::uint64_t map_bytes = 0; // current LMDB map size
};

struct deadletter_entry {
  std::uint64_t key = 0;
  std::string id, peer, stream, reason, last_error;
  std::int64_t created_ms = 0, deadlettered_ms = 0;
  std::uint16_t attempts = 0;
  std::uint64_t bytes = 0; // payload bytes
  std::uint64_t checksum = 0;
};

struct deadletter_filter {
  std::optional<std::string> peer, stream, reason;
  std::uint64_t after_key = 0; // paging: start after this key
  std::size_t limit = 100;
};

struct deadletter_page {
  std::vector<deadletter_entry> entries;
  std::optional<std::uint64_t> next_after; // pass as after_key for the next page
};

// Which dead-letter entries a retry or purge applies to. Exactly one of:
// ids (segment ids), older_than (dead-lettered before now - older_than), all.
// An optional peer narrows any of them.
struct deadletter_selector {
  std::vector<std::string> ids;
  std::optional<std::chrono::milliseconds> older_than;
  bool all = false;
  std::optional<std::string> peer;
};

struct eviction_record {
  std::uint64_t seq = 0;
  std::string id, peer, stream;
  std::uint64_t bytes = 0;
  std::int64_t at_ms = 0;
};

struct accounting_report {
  struct peer_diff {
    std::string peer;
    peer_counters counters; // as stored
    std::uint64_t counted_queued = 0, counted_queued_bytes = 0, counted_deadletter = 0, counted_deadletter_bytes = 0;
    std::int64_t loss = 0; // routed - (delivered + queued + deadletter + evicted + purged)
  };
  bool clean = true;
  std::vector<peer_diff> peers;
  std::vector<std::string> problems; // each a sentence naming the peer and the mismatch
};

// A peer's bandwidth quota state as persisted (bandwidth::quota_state in the
// store's terms): the start of the current quota period and the bytes sent in it.
struct quota_record {
  std::int64_t period_start_unix_ms = 0;
  std::uint64_t used_bytes = 0;
  friend bool operator==(const quota_record&, const quota_record&) = default;
};

// What became of a segment of the watched stream (store::set_fate_observer).
enum class segment_fate {
  delivered,    // acked
  deadlettered, // rejected, or nacked past max_retry
  evicted       // removed by overflow = evict_lru
};
struct fate_event {
  peer_id peer = 0;
  std::string peer_name;
  segment_fate fate = segment_fate::delivered;
  std::string id;
  std::string payload;
  std::string
      reason; // deadlettered: the reason class ("max_retry", "rejected:<why>", "http_<status>"); evicted: "evicted"
};
// Called on the writer thread after the commit that decided the fates, with
// the events of that commit in the order they happened. Must be short and must
// not call the store's *_wait functions.
using fate_observer = std::function<void(std::vector<fate_event>&&)>;

struct maintenance_result {
  std::uint64_t deadletter_purged = 0;
  std::uint64_t dedupe_expired = 0;
};

class store {
public:
  // Opens (or creates) the environment in options.data_dir. Refuses, with a
  // message saying what to do: a directory that is not empty but holds no
  // edgerelay store, a corrupt or foreign LMDB environment, one made by
  // another node id, and one already open in another process.
  static boost::system::result<std::unique_ptr<store>, error> open(store_options options);
  ~store(); // stops the writer after completing every request already handed to it

  store(const store&) = delete;
  store& operator=(const store&) = delete;

  // Registers a peer name (idempotent) and returns its id. Durable.
  result<peer_id> add_peer(std::string_view name);
  std::optional<peer_id> find_peer(std::string_view name) const;
  std::vector<std::pair<peer_id, std::string>> peers() const;

  // What an ack whose commit fails does to its keys' leases. `end` (the
  // default): they become readable again, for a caller whose peer drops a
  // resent segment as a duplicate. `keep`: they stay leased, neither read
  // again nor evicted, for a caller whose endpoint already has them and
  // cannot drop a resend; it acks them again until that commits, or
  // release()s them.
  enum class failed_ack_leases { end, keep };

  // Write requests. Callbacks run on the writer thread after the commit.
  void enqueue(std::vector<segment_in> segments, enqueue_callback done);
  void ack(peer_id peer, std::vector<std::uint64_t> keys, done_callback done,
           failed_ack_leases on_failure = failed_ack_leases::end);
  void nack(peer_id peer, std::vector<std::uint64_t> keys, std::string error, done_callback done);
  void reject(peer_id peer, std::vector<rejected_item> items, done_callback done);
  void deadletter_retry(deadletter_selector sel, std::function<void(result<std::uint64_t>)> done);
  void deadletter_purge(deadletter_selector sel, std::function<void(result<std::uint64_t>)> done);
  void maintenance(std::function<void(result<maintenance_result>)> done);
  // Replaces the peer's quota record (one per peer, last write wins; saves
  // handed in while a commit is in flight share the next transaction). Fails
  // with errc::unknown_peer for an id add_peer() did not return.
  void save_quota_state(peer_id peer, std::int64_t period_start_unix_ms, std::uint64_t used_bytes, done_callback done);

  // Replaces the named record `key` (1..255 bytes; errc::invalid_argument
  // otherwise) with `value`, durably: the callback runs after the commit, which
  // with sync = full was fsynced. Records share the writer's transactions and
  // its order: a put handed in before an enqueue commits in an earlier
  // transaction or in the same one (and fails with it).
  void put_record(std::string key, std::string value, done_callback done);

  // Blocking forms of the above, for tools and tests (never from the writer's callbacks).
  enqueue_result enqueue_wait(std::vector<segment_in> segments);
  boost::system::error_code ack_wait(peer_id peer, std::vector<std::uint64_t> keys,
                                     failed_ack_leases on_failure = failed_ack_leases::end);
  boost::system::error_code nack_wait(peer_id peer, std::vector<std::uint64_t> keys, std::string error);
  boost::system::error_code reject_wait(peer_id peer, std::vector<rejected_item> items);
  result<std::uint64_t> deadletter_retry_wait(deadletter_selector sel);
  result<std::uint64_t> deadletter_purge_wait(deadletter_selector sel);
  result<maintenance_result> maintenance_wait();
  boost::system::error_code save_quota_state_wait(peer_id peer, std::int64_t period_start_unix_ms,
                                                  std::uint64_t used_bytes);
  boost::system::error_code put_record_wait(std::string key, std::string value);
  // Ends every enqueue that waits for room (overflow = block) now, as its
  // deadline would (errc::timeout), and returns once their callbacks have
  // run: for an owner that is shutting down, before what those callbacks
  // use goes away. From then on an enqueue that finds no room ends at once
  // the same way instead of waiting (a request that arrives later).
  void expire_waiting();
  // The next `n` write transactions (`with_ack`: the next `n` that hold an
  // ack) fail at their commit with `err` (an errno, as a full disk or a
  // failing device gives), as if the kernel had refused the write: nothing
  // they applied is kept. A seam for tests.
  enum class commit_fault { any, with_ack };
  void fail_next_commits_for_test(unsigned n, int err, commit_fault which = commit_fault::any);
  // How many of those are still to come.
  unsigned commit_faults_pending_for_test() const;

  // Reads up to max_segments / max_bytes (at least one segment if any is
  // ready, even when it alone exceeds max_bytes) of the peer's ready
  // segments and leases them: no other read returns them until they are
  // acked, nacked, rejected or released.
  result<batch> read_batch(peer_id peer, std::size_t max_segments, std::uint64_t max_bytes);
  // read_batch() without the copy: leases the same segments and hands them
  // to `visit` (only when there is at least one) while they still view into
  // the map, inside the read transaction. The views are valid only during
  // the call; `visit` runs on the calling thread, must be short and must not
  // call into the store (acks, releases and rejects come after it returns).
  struct visit_result {
    std::size_t segments = 0;
    std::uint64_t payload_bytes = 0;
    std::optional<std::chrono::system_clock::time_point> next_ready; // as batch::next_ready
  };
  result<visit_result> read_batch_visit(peer_id peer, std::size_t max_segments, std::uint64_t max_bytes,
                                        const std::function<void(std::span<const segment_out>)>& visit);
  // Direct delivery (docs/store.md). From the next transaction on, while
  // `sink->ready()`, a segment that carries an id, is routed to `peer` alone
  // and finds the peer's queue empty is handed to `sink->deliver()` before
  // the commit instead of being queued: routed and delivered count it in the
  // same transaction, its id enters the dedupe table as usual, and the
  // enqueue completes only after both the sink and the commit made it
  // durable. At most direct_max_segments per transaction; the rest, and
  // everything once the queue holds something, is queued as before, so the
  // peer's order is kept. When deliver() fails the group is applied again
  // with every segment queued. A null sink turns it off. Any thread.
  static constexpr std::size_t direct_max_segments = 65536;
  void set_direct_sink(peer_id peer, std::shared_ptr<direct_sink> sink);
  // After a crash: of `ids` (the last records the peer's sink holds), counts
  // as routed and delivered, and records as received, those that are neither
  // received (the dedupe table) nor in the peer's queue nor assigned by this
  // node — a direct delivery whose transaction never committed. Completes
  // with how many it counted. A record the queue delivered more than
  // dedupe_window after it arrived is counted again (docs/store.md).
  void recover_direct(peer_id peer, std::vector<std::string> ids, std::function<void(result<std::uint64_t>)> done);
  result<std::uint64_t> recover_direct_wait(peer_id peer, std::vector<std::string> ids);

  // Drops the lease without counting an attempt (connection lost before any answer).
  void release(peer_id peer, std::span<const std::uint64_t> keys);

  result<deadletter_page> deadletter_list(const deadletter_filter& f) const;
  result<std::vector<eviction_record>> evictions(std::uint64_t after_seq, std::size_t limit) const;
  store_stats stats() const;
  // The peer's last committed quota record; nullopt when none was ever saved.
  // errc::unknown_peer for an unregistered id, errc::store_corrupt for a
  // damaged record. Any thread (read-only transaction).
  result<std::optional<quota_record>> load_quota_state(peer_id peer) const;
  result<accounting_report> verify_accounting() const;
  // The oldest created time (unix ms) among the peer's queued segments
  // (leased ones included); nullopt when the queue is empty. A retried
  // segment goes back to the tail, so the oldest can be anywhere: this scans
  // the queue, reading at most `max_scan` records from the head; `complete`
  // says whether it saw them all (if not, the result is the oldest of those
  // it read: a lower bound on the age). errc::unknown_peer for an
  // unregistered id. Any thread (read-only transaction).
  struct oldest_result {
    std::optional<std::int64_t> created_ms;
    bool complete = true;
  };
  result<oldest_result> oldest_created_ms(peer_id peer, std::size_t max_scan = 100000) const;
  // The last committed value of the named record; nullopt when it was never
  // put. Any thread (read-only transaction).
  result<std::optional<std::string>> get_record(std::string_view key) const;

  // Reports what becomes of the segments of `stream` from the next commit on:
  // acked (delivered), dead-lettered (with the reason class) and evicted. One
  // stream and one observer (a later call replaces both; an empty stream or a
  // null observer turns it off). While on, every ack, nack and eviction reads
  // the header of the segment it touches. Any thread.
  void set_fate_observer(std::string stream, fate_observer obs);

  const store_options& options() const noexcept;
  // Replaces max_retry and retry_backoff (config reload). Applies to the next
  // failed attempt; segments already past the new max_retry go to the
  // dead-letter store at their next failure. Any thread. options() keeps
  // returning the values the store was opened with.
  void set_retry_policy(std::uint32_t max_retry, backoff_policy backoff);
  // Seconds the most recent commits took (with fsync), for the commit histogram.
  using commit_observer = std::function<void(double seconds, std::size_t requests)>;
  void set_commit_observer(commit_observer obs);
  // Called on the writer thread after each commit that moved segments to the
  // dead-letter store: once per (peer, reason) with how many ("max_retry",
  // or the reason a reject() gave). Set it before the first write.
  using deadletter_observer = std::function<void(peer_id peer, std::string_view reason, std::uint64_t count)>;
  void set_deadletter_observer(deadletter_observer obs);

  struct impl;

private:
  explicit store(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

// [a-z0-9._-]{1,64}, or the reserved "_canary".
bool valid_stream_name(std::string_view s) noexcept;
const char* to_string(overflow_policy p) noexcept;
const char* to_string(sync_mode s) noexcept;

} // namespace edgerelay::queue

// Lets boost::system::result<T, edgerelay::error>::value() throw.
namespace edgerelay {
[[noreturn]] void throw_exception_from_error(const error& e, const boost::source_location& loc);
}
