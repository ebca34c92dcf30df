#pragma once
// The canary soak (DESIGN §1 canary, §7 status `soak`, §8 soak report and
// Gate D; docs/soak.md). Pure logic: the node schedules rounds, enqueues the
// payloads this file makes, and reports back what happened to them.
//
//   canary payload   make_canary_payload / parse_canary_payload: a versioned,
//                    self-checking byte layout (docs/soak.md, "Payload").
//   soak_tracker     the sending side: rounds, delivery, loss, latency,
//                    resource observations, the soak record and Gate D, and a
//                    versioned blob the node keeps in LMDB across restarts.
//   canary_verifier  the receiving side (a terminal node): corruption, gaps
//                    and duplicates per origin and lane.
//
// Time: every instant comes from the util::clock given at creation; steady
// time for round deadlines and latency, system time for sent_at and the
// record's timestamps.

#include "telemetry/evidence.hpp"
#include "util/clock.hpp"
#include "util/errc.hpp"

#include <boost/assert/source_location.hpp>
#include <boost/json/object.hpp>
#include <boost/system/result.hpp>

#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::relay {

// ---------------------------------------------------------------- payload

// Everything a canary payload says about itself (docs/soak.md, "Payload").
struct canary_info {
  std::string origin;          // node id of the sender, 1..255 bytes
  std::string peer;            // the sender's peer the canary was sent to, 1..255 bytes
  std::uint64_t epoch = 0;     // the soak's started_at (Unix ms): a fresh soak is a new epoch
  std::uint64_t seq = 0;       // per origin, 1, 2, ...: never repeats within an epoch, also across restarts
  std::uint64_t lane_seq = 0;  // per (origin, peer), 1, 2, ...: what a receiver checks for gaps
  std::uint64_t round = 0;     // the round the canary belongs to, 1, 2, ...
  std::uint32_t index = 0;     // 0 .. canary_segments-1 within its round and peer
  std::int64_t sent_at_ms = 0; // system clock, Unix ms, when the round was begun
  std::uint32_t size = 0;      // the payload's total length in bytes
  friend bool operator==(const canary_info&, const canary_info&) = default;
};

inline constexpr std::size_t canary_fixed_header_bytes = 56; // before origin and peer
inline constexpr std::size_t canary_checksum_bytes = 8;

// The smallest payload for these names: header, names and header checksum.
std::size_t canary_min_size(std::string_view origin, std::string_view peer) noexcept;

// Builds the payload for `info`. Its length is max(info.size, canary_min_size)
// (the size field written is that length); padding is deterministic in seq.
// Precondition: origin and peer are 1..255 bytes (asserted).
std::string make_canary_payload(const canary_info& info);

// Strict: nullopt for anything but a payload make_canary_payload could have
// written (length, magic, version, name lengths, size field, header checksum,
// every padding byte). Never reads out of bounds, never throws.
std::optional<canary_info> parse_canary_payload(std::string_view payload) noexcept;

// ---------------------------------------------------------------- latency

// Bounded-memory latency histogram over microseconds: exact below 32 us, then
// 32 linear sub-buckets per power of two (a bucket is at most 1/32 of its
// value wide), so a percentile is within ~3.2% above the true value. Fixed
// size (1,920 counters); not thread-safe (the tracker's mutex guards it).
class latency_histogram {
public:
  static constexpr unsigned sub_bits = 5;
  static constexpr std::size_t sub_count = std::size_t{1} << sub_bits;
  static constexpr std::size_t bucket_count = sub_count + (64 - sub_bits) * sub_count;

  void record(std::uint64_t us) noexcept;
  std::uint64_t count() const noexcept { return count_; }
  std::uint64_t max_us() const noexcept { return max_; }
  // Nearest rank: the smallest recorded bucket holding at least ceil(q * count)
  // values, reported as that bucket's highest value (clamped to max); 0 when empty.
  std::uint64_t percentile_us(double q) const noexcept;

  static std::size_t bucket_of(std::uint64_t us) noexcept;
  static std::uint64_t bucket_high(std::size_t bucket) noexcept;

  // Non-empty buckets, for persistence.
  std::vector<std::pair<std::uint32_t, std::uint64_t>> nonzero() const;
  // Refuses an out-of-range bucket index.
  bool restore(const std::vector<std::pair<std::uint32_t, std::uint64_t>>& buckets, std::uint64_t max_us);

private:
  std::array<std::uint64_t, bucket_count> buckets_{};
  std::uint64_t count_ = 0;
  std::uint64_t max_ = 0;
};

// ---------------------------------------------------------------- sender side

struct soak_options {
  std::string node_id;                        // the origin written into every canary, 1..255 bytes
  std::chrono::milliseconds interval{60'000}; // [evidence] canary_interval: a round's length and deadline; > 0
  std::uint32_t segments = 10;                // [evidence] canary_segments per peer per round; >= 1
  std::uint64_t size = 1024;                  // [evidence] canary_size; raised to canary_min_size when smaller
  std::size_t window = 16'384;                // canaries remembered individually (duplicates, late fates); >= 1
};

// A canary to enqueue on stream "_canary" for one peer.
struct outgoing_canary {
  std::string peer;
  std::string payload;
  canary_info info;
};

// What one canary report did to the soak.
enum class canary_event {
  delivered,      // first acknowledgement, within its round's deadline
  delivered_late, // first acknowledgement, after its round's deadline (or of a canary the window forgot)
  recovered,      // acknowledged after it had been reported lost (a dead-letter retried): leaves `loss`
  duplicate,      // this canary's fate was already known (second ack, second failure, failure after ack)
  lost,           // first report that it was dead-lettered or evicted: counted in `loss`
  foreign,        // another origin's canary, or a peer other than the one it was sent to: ignored
  unknown,        // a sequence this soak never issued (or a different epoch): ignored
  malformed,      // the payload does not parse: ignored
};
const char* to_string(canary_event e) noexcept;

// How a round ended, for the log and canary_rounds_total{result}.
struct round_outcome {
  std::uint64_t round = 0;
  bool clean = false;
  // "clean", or the first unclean cause in this order: "interrupted",
  // "failed" (dead-lettered or evicted), "duplicate", "late".
  std::string result;
  std::string reason; // one sentence for the log; "" when clean
};

// Every counter, for the node's metrics and status.
struct soak_counters {
  std::uint64_t rounds = 0, clean_rounds = 0;
  std::uint64_t unclean_interrupted = 0, unclean_failed = 0, unclean_duplicate = 0, unclean_late = 0;
  std::uint64_t segments_sent = 0, segments_delivered = 0, delivered_late = 0;
  std::uint64_t duplicates = 0;
  std::uint64_t loss = 0;   // canaries whose last known fate is dead-lettered/evicted
  std::uint64_t failed = 0; // failure reports counted (recovered ones included)
  std::uint64_t recovered = 0;
  std::uint64_t ignored = 0; // foreign + unknown + malformed reports
  std::uint64_t max_queue_depth = 0, rss_start_bytes = 0, rss_max_bytes = 0;
  std::uint64_t restarts = 0;
  std::uint64_t next_seq = 1;                  // the seq the next canary gets
  double clean_delivery_rate() const noexcept; // clean_rounds / rounds, 0 when no rounds
};

// The soak's sending side.
//
// Owns: the round in flight, a window of the last `window` canaries issued
// (seq -> round, peer, sent time, fate), the counters, the latency histogram
// and the per-origin / per-lane sequences. Every public member is thread-safe
// (one mutex, held only for in-memory work; current_rss_bytes() is the only
// I/O and takes no lock).
//
// Round: begin_round() opens round r with `segments` canaries per peer and a
// deadline of begin + interval (steady clock). A round is clean when every
// canary in it was acknowledged by its deadline, once, and none was
// dead-lettered or evicted. end_round_if_due() closes the round at its
// deadline; begin_round() first closes any round still open (a round begun
// early is judged as it stands). Acknowledgements after the round closed still
// count as deliveries (delivered_late), failures still count as loss.
//
// Persistence contract: the node persists serialize() after begin_round() and
// before it enqueues that round's payloads (so no seq is ever handed out twice,
// even across kill -9), and whenever else it likes (each round end is a good
// point). restore() closes a round that was open in the blob as unclean,
// "interrupted", and increments restarts.
class soak_tracker {
public:
  static constexpr std::uint16_t format_version = 1;

  // Fresh soak: started_at = epoch = now. Fails (invalid_argument) on an empty
  // or >255-byte node id, interval <= 0, segments == 0 or window == 0.
  static boost::system::result<std::unique_ptr<soak_tracker>, error> create(soak_options options, util::clock& clock);

  // Continues the soak in `blob` with the current options (interval, segments
  // and size may have changed with the config; the node id may not). Errors:
  // malformed (not a soak blob, truncated, checksum), store_foreign (written by
  // a newer format version, or for another node id), invalid_argument (bad
  // options). The node logs the message and starts a fresh soak with create().
  static boost::system::result<std::unique_ptr<soak_tracker>, error> restore(std::string_view blob,
                                                                             soak_options options, util::clock& clock);

  soak_tracker(const soak_tracker&) = delete;
  soak_tracker& operator=(const soak_tracker&) = delete;
  ~soak_tracker();

  // Opens the next round: `segments` canaries for each distinct peer name
  // (names outside 1..255 bytes are skipped). No peers: no round, empty result.
  std::vector<outgoing_canary> begin_round(std::span<const std::string> peers);

  // Closes the open round when its deadline has passed; nullopt otherwise.
  std::optional<round_outcome> end_round_if_due();
  // The open round's deadline (steady clock), for the node's timer.
  std::optional<std::chrono::steady_clock::time_point> round_deadline() const;

  // The peer acknowledged the canary (relay ACK ok/duplicate, sink commit).
  canary_event on_delivered(std::string_view peer, std::string_view payload);
  canary_event on_delivered(std::string_view peer, const canary_info& info);
  // The canary was dead-lettered or evicted; reason as the store gives it.
  canary_event on_failed(std::string_view peer, std::string_view payload, std::string_view reason);
  canary_event on_failed(std::string_view peer, const canary_info& info, std::string_view reason);

  void observe_queue_depth(std::uint64_t segments);
  // The first observation of a soak is its rss_start_bytes (kept across restarts).
  void observe_rss(std::uint64_t bytes);

  soak_counters counters() const;
  // The last closed round (including the one restore() closed).
  std::optional<round_outcome> last_round() const;
  // Percentiles in ms (double; resolution 1 us, see latency_histogram).
  telemetry::latency_percentiles latency() const;

  // The evidence model's record (telemetry::soak_record): report::soak() takes it.
  telemetry::soak_record evidence_record() const;
  // GET /v1/evidence/soak: telemetry::to_json(evidence_record()) (the DESIGN §8
  // fields, latency in "latency_ms", gate_d from telemetry::gate_d) plus
  // started_at, updated_at (RFC 3339 UTC) and interval_s.
  boost::json::object soak_record() const;
  // GET /v1/status `soak`: rounds, clean_rounds, clean_delivery_rate, loss.
  boost::json::object status_json() const;

  std::string serialize() const;

  // "wall" or "manual": "manual" as soon as any part of the soak ran on a manual clock.
  std::string clock_kind() const;

private:
  struct impl;
  soak_tracker(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

// Resident set size of this process from /proc/self/statm; 0 when unreadable.
std::uint64_t current_rss_bytes() noexcept;

// ---------------------------------------------------------------- receiver side

struct verifier_options {
  std::size_t window = 1024;    // recent lane sequences remembered per lane (duplicate / reorder detection)
  std::size_t max_lanes = 1024; // (origin, peer) pairs tracked; canaries of further lanes count as untracked
};

enum class verify_event {
  in_order,  // the next lane_seq (or the first canary seen on the lane)
  gap,       // lane_seq jumped: the skipped ones count as missing
  reordered, // a lane_seq counted missing arrived after all: missing - 1
  duplicate, // a lane_seq already seen
  stale,     // older than the window or than the lane's epoch: cannot be judged
  corrupt,   // does not parse (wrong length, checksum, padding) or names another origin
  untracked, // a lane beyond max_lanes
};
const char* to_string(verify_event e) noexcept;

// The soak's receiving side, on a terminal node: checks each canary that
// arrives from other nodes. Owns per-lane state (lane = origin + the origin's
// peer name: each lane has its own gap-free lane_seq). In memory only: after
// a restart the first canary of each lane sets its baseline again. A newer
// epoch on a lane (the origin started a fresh soak) resets that lane.
// Thread-safe (one mutex).
class canary_verifier {
public:
  explicit canary_verifier(util::clock& clock, verifier_options options = {});
  ~canary_verifier();
  canary_verifier(const canary_verifier&) = delete;
  canary_verifier& operator=(const canary_verifier&) = delete;

  // `origin` is the node id of the segment's id (may be empty: then unchecked).
  verify_event on_received(std::string_view origin, std::string_view payload);

  struct totals {
    std::uint64_t received = 0, corrupt = 0, gaps = 0, missing = 0, reordered = 0, duplicates = 0, stale = 0,
                  untracked = 0, epochs = 0;
  };
  totals counts() const;
  // {"received", "corrupt", "gaps", "missing", "reordered", "duplicates",
  //  "stale", "untracked", "lanes": [{"origin", "peer", "epoch", "received",
  //  "last_lane_seq", "gaps", "missing", "reordered", "duplicates", "stale",
  //  "last_received_at"}]}
  boost::json::object summary_json() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

} // namespace edgerelay::relay

// Lets boost::system::result<T, edgerelay::error>::value() throw (defined in queue/store.cpp).
namespace edgerelay {
[[noreturn]] void throw_exception_from_error(const error& e, const boost::source_location& loc);
}
