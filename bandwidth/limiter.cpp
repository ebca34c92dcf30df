#include "bandwidth/limiter.hpp"

#include <algorithm>
#include <limits>

namespace edgerelay::bandwidth {

namespace {

__extension__ using u128 = unsigned __int128;

constexpr std::uint64_t nano = 1'000'000'000;
constexpr auto one_day = std::chrono::duration_cast<sys_time::duration>(std::chrono::hours{24});
// Token counts stay far from the int64 limits whatever the caller reports.
constexpr std::int64_t max_tokens = std::numeric_limits<std::int64_t>::max() / 4;
constexpr std::int64_t min_tokens = -max_tokens;

bool valid_time(time_of_day t) { return t.since_midnight.count() >= 0 && t.since_midnight.count() < 24 * 60; }

steady_time steady_for(sys_time wall, sys_time wall_now, steady_time steady_now) {
  return steady_now + std::chrono::duration_cast<steady_time::duration>(wall - wall_now);
}

} // namespace

const char* to_string(hold_reason r) noexcept {
  switch (r) {
  case hold_reason::none: return "none";
  case hold_reason::rate: return "rate";
  case hold_reason::quota: return "quota";
  case hold_reason::outside_window: return "outside_window";
  }
  return "?";
}

const char* to_string(mode m) noexcept {
  switch (m) {
  case mode::unlimited: return "unlimited";
  case mode::rate: return "rate";
  case mode::quota: return "quota";
  case mode::rate_quota: return "rate+quota";
  }
  return "?";
}

mode policy::get_mode() const noexcept {
  if (rate_bytes_per_s && daily_quota_bytes) return mode::rate_quota;
  if (rate_bytes_per_s) return mode::rate;
  if (daily_quota_bytes) return mode::quota;
  return mode::unlimited;
}

std::string policy::mode_string() const {
  std::string s = to_string(get_mode());
  if (!send_windows.empty()) s += "+windows";
  return s;
}

std::uint64_t policy::effective_burst() const noexcept {
  if (!rate_bytes_per_s) return 0;
  const std::uint64_t b = burst_bytes ? burst_bytes : std::max(*rate_bytes_per_s, min_default_burst);
  return std::min<std::uint64_t>(b, static_cast<std::uint64_t>(max_tokens));
}

util::parsed<void> validate(const policy& p) {
  if (p.rate_bytes_per_s && *p.rate_bytes_per_s == 0)
    return util::parse_error{"rate: must be more than 0 bytes per second (leave it out for no rate limit)"};
  if (!valid_time(p.quota_reset))
    return util::parse_error{"quota_reset: " + std::to_string(p.quota_reset.since_midnight.count()) +
                             " minutes after midnight is not a time of day (use 0..1439)"};
  for (std::size_t i = 0; i < p.send_windows.size(); ++i) {
    const auto& w = p.send_windows[i];
    const std::string where = "send_windows[" + std::to_string(i) + "]: ";
    if (!valid_time(w.start) || !valid_time(w.end))
      return util::parse_error{where + "start and end must be times of day (0..1439 minutes after midnight)"};
    if (w.start == w.end)
      return util::parse_error{where + "\"" + w.to_string() +
                               "\": start and end are the same time, so the window is empty"};
  }
  return {};
}

util::parsed<std::unique_ptr<limiter>> limiter::create(policy p, util::clock& clk,
                                                       std::optional<quota_state> persisted) {
  if (auto v = validate(p); !v) return v.error();
  return std::unique_ptr<limiter>(new limiter(std::move(p), clk, persisted));
}

limiter::limiter(policy p, util::clock& clk, std::optional<quota_state> persisted)
    : clk_(clk), policy_(std::move(p)), burst_(policy_.effective_burst()) {
  tokens_ = static_cast<std::int64_t>(burst_);
  last_refill_ = clk_.steady_now();
  const sys_time now = clk_.system_now();
  period_start_ = last_occurrence(policy_.quota_reset, now);
  if (persisted) {
    const sys_time saved = util::from_unix_ms(persisted->period_start_unix_ms);
    // A reset that passed while stopped refills; otherwise the count carries
    // over (also when the wall clock is now behind the saved period).
    if (now < saved + one_day) used_ = persisted->used_bytes;
  }
  // Version 0 means "what was handed in is what would be saved".
  if (!persisted || *persisted != quota_state{util::to_unix_ms(period_start_), used_}) version_ = 1;
}

void limiter::refill(steady_time now) const {
  if (now <= last_refill_) return;
  const auto dt =
      static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(now - last_refill_).count());
  last_refill_ = now;
  if (!policy_.rate_bytes_per_s) return;
  const auto burst = static_cast<std::int64_t>(burst_);
  if (tokens_ >= burst) {
    carry_ = 0;
    return;
  }
  const u128 acc = static_cast<u128>(carry_) + static_cast<u128>(dt) * *policy_.rate_bytes_per_s;
  const u128 add = acc / nano;
  const auto room = static_cast<u128>(burst - tokens_);
  if (add >= room) {
    tokens_ = burst;
    carry_ = 0;
  } else {
    tokens_ += static_cast<std::int64_t>(add);
    carry_ = static_cast<std::uint64_t>(acc % nano);
  }
}

void limiter::roll_period(sys_time now) const {
  if (now >= period_start_ + one_day) {
    period_start_ = last_occurrence(policy_.quota_reset, now);
    used_ = 0;
    bump();
  } else if (now < period_start_) {
    // The wall clock stepped back: follow it, keep the count.
    period_start_ = last_occurrence(policy_.quota_reset, now);
    bump();
  }
}

decision limiter::decide(std::uint64_t bytes, steady_time steady, sys_time wall) const {
  decision d;
  // Wall-clock holds: the quota until its reset, then the windows from there.
  std::optional<sys_time> resume;
  if (policy_.daily_quota_bytes && used_ >= *policy_.daily_quota_bytes) {
    resume = period_start_ + one_day;
    d.reason = hold_reason::quota;
  }
  if (!policy_.send_windows.empty()) {
    const sys_time from = resume.value_or(wall);
    const auto open = next_open(policy_.send_windows, from);
    if (open && *open != from) {
      resume = *open;
      if (d.reason == hold_reason::none) d.reason = hold_reason::outside_window;
    }
  }
  if (resume) {
    d.allowed = false;
    d.resume_wall = resume;
    d.retry_at = steady_for(*resume, wall, steady);
    return d;
  }
  if (policy_.rate_bytes_per_s) {
    const auto need = static_cast<std::int64_t>(std::min<std::uint64_t>(bytes, burst_));
    if (tokens_ < need) {
      const u128 missing = static_cast<u128>(need - tokens_) * nano - carry_;
      const u128 rate = *policy_.rate_bytes_per_s;
      const u128 ns = (missing + rate - 1) / rate;
      d.allowed = false;
      d.reason = hold_reason::rate;
      d.retry_at = last_refill_ + std::chrono::nanoseconds{static_cast<std::int64_t>(ns)};
      return d;
    }
  }
  return d;
}

decision limiter::check(std::uint64_t bytes) {
  std::lock_guard lk(mu_);
  const steady_time steady = clk_.steady_now();
  const sys_time wall = clk_.system_now();
  refill(steady);
  roll_period(wall);
  last_check_bytes_ = bytes;
  return decide(bytes, steady, wall);
}

void limiter::consume(std::uint64_t wire_bytes) {
  std::lock_guard lk(mu_);
  const steady_time steady = clk_.steady_now();
  const sys_time wall = clk_.system_now();
  refill(steady);
  roll_period(wall);
  if (policy_.rate_bytes_per_s) {
    const auto take = static_cast<std::int64_t>(std::min<std::uint64_t>(wire_bytes, max_tokens));
    tokens_ = std::max(min_tokens, tokens_ - take);
  }
  used_ = wire_bytes > std::numeric_limits<std::uint64_t>::max() - used_ ? std::numeric_limits<std::uint64_t>::max()
                                                                         : used_ + wire_bytes;
  bytes_total_ += wire_bytes;
  if (wire_bytes) bump();
}

util::parsed<void> limiter::set_policy(policy p) {
  if (auto v = validate(p); !v) return v;
  std::lock_guard lk(mu_);
  const steady_time steady = clk_.steady_now();
  const sys_time wall = clk_.system_now();
  refill(steady); // credit the time so far at the old rate
  roll_period(wall);
  const bool had_rate = policy_.rate_bytes_per_s.has_value();
  const bool reset_moved = p.quota_reset != policy_.quota_reset;
  policy_ = std::move(p);
  burst_ = policy_.effective_burst();
  if (!policy_.rate_bytes_per_s) {
    carry_ = 0;
  } else if (!had_rate) {
    tokens_ = static_cast<std::int64_t>(burst_);
    carry_ = 0;
  } else if (tokens_ >= static_cast<std::int64_t>(burst_)) {
    tokens_ = static_cast<std::int64_t>(burst_);
    carry_ = 0;
  }
  if (reset_moved) {
    period_start_ = last_occurrence(policy_.quota_reset, wall);
    bump();
  }
  return {};
}

policy limiter::current_policy() const {
  std::lock_guard lk(mu_);
  return policy_;
}

status limiter::snapshot() const {
  std::lock_guard lk(mu_);
  const steady_time steady = clk_.steady_now();
  const sys_time wall = clk_.system_now();
  refill(steady);
  roll_period(wall);
  status s;
  s.mode = policy_.mode_string();
  s.rate_bytes_per_s = policy_.rate_bytes_per_s;
  s.burst_bytes = burst_;
  s.tokens = policy_.rate_bytes_per_s ? tokens_ : 0;
  s.quota_bytes = policy_.daily_quota_bytes;
  s.quota_used_bytes = used_;
  if (policy_.daily_quota_bytes)
    s.quota_remaining_bytes = *policy_.daily_quota_bytes - std::min(used_, *policy_.daily_quota_bytes);
  s.quota_period_start = period_start_;
  s.quota_resets_at = period_start_ + one_day;
  const decision d = decide(last_check_bytes_, steady, wall);
  s.hold = d.reason;
  s.hold_until = d.resume_wall;
  if (!policy_.send_windows.empty()) {
    const auto& w = policy_.send_windows;
    s.in_window = in_any(w, wall);
    if (s.in_window) {
      s.window_closes_at = next_close(w, wall);
    } else {
      s.window_opens_at = next_open(w, wall);
      if (s.window_opens_at) s.window_closes_at = next_close(w, *s.window_opens_at);
    }
  }
  s.bytes_total = bytes_total_;
  return s;
}

quota_export limiter::export_quota() const {
  std::lock_guard lk(mu_);
  const sys_time wall = clk_.system_now();
  roll_period(wall);
  return {quota_state{util::to_unix_ms(period_start_), used_}, version_.load(std::memory_order_acquire)};
}

} // namespace edgerelay::bandwidth
