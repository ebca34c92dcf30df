#pragma once
// edgerelay::bandwidth::limiter — the per-peer send budget: a token bucket
// (rate, burst), a daily quota that refills at a UTC time of day, and optional
// UTC send windows. A forwarder asks check(n) before it writes a batch of n
// bytes and reports the bytes it actually put on the wire with consume(n).
// The full semantics, with examples, are in docs/bandwidth.md.
//
// Time. Every instant comes from the util::clock given at creation:
// steady_now() for the bucket, system_now() for quota resets and windows.
// Nothing here reads a real clock, so a util::manual_clock drives all of it.
//
// Threads. All members may be called from any thread; one mutex guards the
// state (a limiter is consulted once per batch, not per segment), and the
// clock is read under it, so concurrent calls see time in call order.
// quota_version() is a lock-free read.
//
// Guarantees, for a caller that reports each allowed batch with consume()
// before its next check():
//  - rate: over any interval the bytes allowed are at most burst + rate × the
//    interval's length + one batch. A batch larger than burst goes out when
//    the bucket is full; the bucket then goes negative (a debt) and the next
//    batch waits until the debt is repaid. Refill is exact integer arithmetic
//    (bytes × 1e9 per nanosecond with a carried remainder): no drift.
//  - quota: a batch is allowed while used < quota, so the bytes counted in a
//    period exceed the quota by less than the last batch. The quota refills
//    exactly at the reset instant (at reset - 1 ns it still holds).
//  - windows: nothing is allowed outside every window; inside one, any batch
//    is allowed (a batch that starts before a window's end may finish after it).

#include "bandwidth/schedule.hpp"
#include "util/clock.hpp"
#include "util/units.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace edgerelay::bandwidth {

using steady_time = std::chrono::steady_clock::time_point;

// The burst used when policy::burst_bytes is 0: one second of rate, at least 64 KiB.
constexpr std::uint64_t min_default_burst = 64 * 1024;

enum class mode { unlimited, rate, quota, rate_quota };

// What a peer may send. A plain value: copy it, compare it, hand it to set_policy().
struct policy {
  std::optional<std::uint64_t> rate_bytes_per_s;  // token bucket refill; nullopt: no rate limit. Must be > 0
  std::uint64_t burst_bytes = 0;                  // bucket size; 0: max(rate × 1 s, 64 KiB)
  std::optional<std::uint64_t> daily_quota_bytes; // bytes per period, counted on the wire; nullopt: none
  time_of_day quota_reset{};                      // start of each period, UTC; default 00:00Z
  std::vector<window> send_windows;               // empty: sending allowed at any time

  mode get_mode() const noexcept;
  // "unlimited", "rate", "quota" or "rate+quota", with "+windows" appended when
  // send_windows is not empty ("rate+windows", "unlimited+windows").
  std::string mode_string() const;
  // The bucket size in force: burst_bytes, or the default above; 0 without a rate.
  std::uint64_t effective_burst() const noexcept;
  friend bool operator==(const policy&, const policy&) = default;
};

// Refuses a rate of 0, a time of day outside 00:00..23:59 and an empty window
// (start == end), each with a sentence naming the field.
util::parsed<void> validate(const policy& p);

// The quota's persistent part: the start of the current period (a reset
// instant, Unix ms) and the bytes counted in it. The owner stores it (see
// queue::store::save_quota_state) and hands it back to create() after a restart.
struct quota_state {
  std::int64_t period_start_unix_ms = 0;
  std::uint64_t used_bytes = 0;
  friend bool operator==(const quota_state&, const quota_state&) = default;
};

// A quota_state together with the quota_version() it belongs to.
struct quota_export {
  quota_state state;
  std::uint64_t version = 0;
};

enum class hold_reason { none, rate, quota, outside_window };
const char* to_string(hold_reason r) noexcept; // "none", "rate", "quota", "outside_window"
const char* to_string(mode m) noexcept;        // "unlimited", "rate", "quota", "rate+quota"

// The answer to "may I send n bytes now?".
struct decision {
  bool allowed = true;
  hold_reason reason = hold_reason::none;
  // When to ask again (set when !allowed). For a rate hold this is the exact
  // instant the bucket holds enough tokens. For a quota or window hold it is
  // resume_wall converted to steady time at the moment of the check: if the
  // wall clock is stepped meanwhile it is early or late, so a waiting caller
  // should re-check when it wakes (check() is the authority) and may cap its
  // wait to notice clock steps.
  steady_time retry_at{};
  // Quota and window holds: the wall instant sending may resume (the quota
  // reset, or the next window start, whichever comes later when both hold).
  std::optional<sys_time> resume_wall;
};

// For status pages and metrics.
struct status {
  std::string mode;                                   // policy::mode_string()
  std::optional<std::uint64_t> rate_bytes_per_s;      // nullopt: no rate limit
  std::uint64_t burst_bytes = 0;                      // effective burst; 0 without a rate
  std::int64_t tokens = 0;                            // bucket level now; negative: a debt from a batch > burst
  std::optional<std::uint64_t> quota_bytes;           // nullopt: no quota
  std::uint64_t quota_used_bytes = 0;                 // counted in the current period (also without a quota)
  std::optional<std::uint64_t> quota_remaining_bytes; // quota - used, at least 0; nullopt without a quota
  sys_time quota_period_start{};                      // the current period is [start, resets_at)
  sys_time quota_resets_at{};                         // next reset instant
  // The hold the last checked batch size would get now (1 byte before any check).
  hold_reason hold = hold_reason::none;
  std::optional<sys_time> hold_until;       // quota and window holds: decision::resume_wall
  bool in_window = true;                    // true without windows
  std::optional<sys_time> window_opens_at;  // outside every window: the next window start
  std::optional<sys_time> window_closes_at; // end of the current (inside) or next (outside) stretch;
                                            // nullopt without windows or when they cover the day
  std::uint64_t bytes_total = 0;            // every byte consume()d since creation
};

class limiter {
public:
  // `persisted`: the quota state saved before a restart. Its used bytes carry
  // over when now is still inside the period it describes (period start +
  // 24 h); when a reset passed meanwhile the quota starts fresh. Either way
  // the period becomes the one of the current quota_reset that contains now
  // (so a quota_reset changed while stopped behaves as a reload, below).
  // `clk` must outlive the limiter.
  static util::parsed<std::unique_ptr<limiter>> create(policy p, util::clock& clk,
                                                       std::optional<quota_state> persisted = std::nullopt);

  limiter(const limiter&) = delete;
  limiter& operator=(const limiter&) = delete;

  // May `bytes` go out now? Does not reserve anything: report what was
  // written with consume() before the next check().
  decision check(std::uint64_t bytes);
  // Counts bytes written on the wire: takes them from the bucket (which may go
  // negative) and adds them to the quota's used bytes (in every mode).
  void consume(std::uint64_t wire_bytes);

  // Replaces the policy (hot reload). The bucket keeps its tokens (capped at
  // the new burst; a bucket that had no rate before starts full) and its
  // fractional carry; the quota keeps its used bytes whatever the new size.
  // A changed quota_reset moves the period to the one of the new reset time
  // that contains now, used bytes kept: the next refill is the next
  // occurrence of the new reset time (changing it never refills by itself).
  // An invalid policy is refused and the old one stays.
  util::parsed<void> set_policy(policy p);
  policy current_policy() const;

  status snapshot() const;

  // The quota state to persist, and a counter that changes whenever it does
  // (consume, a period rollover, a reload that moves the period). The owner
  // polls quota_version() and saves export_quota().state when it differs from
  // the version last saved. The version is 0 after create() only when
  // `persisted` was given and is exactly the current state; otherwise it
  // starts at 1, so an owner that starts from 0 saves once.
  quota_export export_quota() const;
  std::uint64_t quota_version() const noexcept { return version_.load(std::memory_order_acquire); }

private:
  limiter(policy p, util::clock& clk, std::optional<quota_state> persisted);

  // All below: caller holds mu_.
  void refill(steady_time now) const;
  void roll_period(sys_time now) const;
  decision decide(std::uint64_t bytes, steady_time steady, sys_time wall) const;
  void bump() const { version_.fetch_add(1, std::memory_order_acq_rel); }

  util::clock& clk_;
  mutable std::mutex mu_;
  policy policy_;
  std::uint64_t burst_ = 0; // effective burst
  // Bucket. carry_ is the part of a byte earned but not yet credited, in
  // units of 1e-9 byte (always < 1e9).
  mutable std::int64_t tokens_ = 0;
  mutable std::uint64_t carry_ = 0;
  mutable steady_time last_refill_{};
  // Quota.
  mutable sys_time period_start_{};
  mutable std::uint64_t used_ = 0;
  mutable std::atomic<std::uint64_t> version_{0};
  std::uint64_t bytes_total_ = 0;
  mutable std::uint64_t last_check_bytes_ = 1;
};

} // namespace edgerelay::bandwidth
