#include "bandwidth/limiter.hpp"
#include "bandwidth/schedule.hpp"
#include "tests/support/result_printer.hpp"
#include "util/clock.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

using namespace edgerelay;
using namespace std::chrono_literals;
using bandwidth::hold_reason;
using bandwidth::sys_time;

namespace {

// Day `d` of the test calendar at hh:mm:ss UTC, plus `extra`.
sys_time at(int d, int hh, int mm, int ss = 0, std::chrono::nanoseconds extra = {}) {
  const auto since = std::chrono::hours{24 * (20000 + d) + hh} + std::chrono::minutes{mm} + std::chrono::seconds{ss};
  return sys_time{std::chrono::duration_cast<sys_time::duration>(since + extra)};
}

bandwidth::time_of_day tod(int hh, int mm) { return {std::chrono::minutes{hh * 60 + mm}}; }

bandwidth::window win(int h1, int m1, int h2, int m2) { return {tod(h1, m1), tod(h2, m2)}; }

std::unique_ptr<bandwidth::limiter> make(const bandwidth::policy& p, util::clock& clk,
                                         std::optional<bandwidth::quota_state> persisted = std::nullopt) {
  auto r = bandwidth::limiter::create(p, clk, persisted);
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r);
  return std::move(*r);
}

bandwidth::policy rate_policy(std::uint64_t rate, std::uint64_t burst) {
  bandwidth::policy p;
  p.rate_bytes_per_s = rate;
  p.burst_bytes = burst;
  return p;
}

bandwidth::policy quota_policy(std::uint64_t quota, bandwidth::time_of_day reset = {}) {
  bandwidth::policy p;
  p.daily_quota_bytes = quota;
  p.quota_reset = reset;
  return p;
}

} // namespace

// ------------------------------------------------------------------ bucket

TEST_CASE("token bucket: a full bucket allows burst bytes, then refills exactly rate bytes per second", "[bandwidth]") {
  util::manual_clock clk(at(0, 10, 0));
  auto lim = make(rate_policy(1000, 10'000), clk);
  CHECK(lim->snapshot().tokens == 10'000);
  REQUIRE(lim->check(10'000).allowed);
  lim->consume(10'000);
  CHECK(lim->snapshot().tokens == 0);

  // One byte needs exactly 1 ms.
  auto d = lim->check(1);
  CHECK_FALSE(d.allowed);
  CHECK(d.reason == hold_reason::rate);
  CHECK(d.retry_at == clk.steady_now() + 1ms);
  CHECK_FALSE(d.resume_wall);
  clk.advance(1ms - 1ns);
  CHECK_FALSE(lim->check(1).allowed);
  clk.advance(1ns);
  CHECK(lim->check(1).allowed);

  clk.advance(2500ms - 1ms);
  CHECK(lim->snapshot().tokens == 2500);
  // 3000 bytes: 500 missing = 0.5 s at 1000 B/s.
  d = lim->check(3000);
  CHECK_FALSE(d.allowed);
  CHECK(d.retry_at == clk.steady_now() + 500ms);
  clk.advance(500ms);
  CHECK(lim->check(3000).allowed);

  // Never more than burst, however long the pause.
  clk.advance(std::chrono::hours{5});
  CHECK(lim->snapshot().tokens == 10'000);
}

TEST_CASE("token bucket: fractional refill is carried, so a rate that is not a whole number per ns is exact",
          "[bandwidth]") {
  util::manual_clock clk(at(0, 0, 0));
  auto lim = make(rate_policy(3, 1000), clk);
  lim->consume(1000);
  // 3 B/s: one byte every 333 333 333.33 ns.
  auto d = lim->check(1);
  CHECK(d.retry_at == clk.steady_now() + 333'333'334ns);
  clk.advance(333'333'333ns);
  CHECK(lim->snapshot().tokens == 0);
  clk.advance(1ns);
  CHECK(lim->snapshot().tokens == 1);
  clk.advance(666'666'666ns); // 1 s in all
  CHECK(lim->snapshot().tokens == 3);
}

TEST_CASE("token bucket: a batch larger than burst goes out from a full bucket and its debt delays the next",
          "[bandwidth]") {
  util::manual_clock clk(at(0, 10, 0));
  auto lim = make(rate_policy(1000, 2000), clk);
  // Not full: a big batch waits until the bucket is full, no longer.
  lim->consume(1);
  auto d = lim->check(5000);
  CHECK_FALSE(d.allowed);
  CHECK(d.retry_at == clk.steady_now() + 1ms);
  clk.advance(1ms);
  REQUIRE(lim->check(5000).allowed);
  lim->consume(5000);
  CHECK(lim->snapshot().tokens == -3000);
  // 1000 bytes need the 3000 of debt repaid plus 1000: 4 s.
  d = lim->check(1000);
  CHECK_FALSE(d.allowed);
  CHECK(d.reason == hold_reason::rate);
  CHECK(d.retry_at == clk.steady_now() + 4s);
  clk.advance(4s - 1ns);
  CHECK_FALSE(lim->check(1000).allowed);
  clk.advance(1ns);
  CHECK(lim->check(1000).allowed);
}

TEST_CASE("token bucket: the 8 Mbit example of docs/bandwidth.md holds to the nanosecond", "[bandwidth]") {
  util::manual_clock clk(at(0, 10, 0));
  auto lim = make(rate_policy(1'000'000, 0), clk);
  REQUIRE(lim->check(1'048'576).allowed);
  lim->consume(1'048'576);
  CHECK(lim->snapshot().tokens == -48'576);
  CHECK(lim->check(65'536).retry_at == clk.steady_now() + 114'112us);
}

TEST_CASE("token bucket: no drift over a million small refill steps", "[bandwidth]") {
  util::manual_clock clk(at(0, 0, 0));
  constexpr std::uint64_t rate = 1'000'003;
  constexpr std::uint64_t burst = 1'000'000'000'000ull;
  auto lim = make(rate_policy(rate, burst), clk);
  lim->consume(burst);
  REQUIRE(lim->snapshot().tokens == 0);
  constexpr std::uint64_t step_ns = 1'337;
  constexpr std::uint64_t steps = 1'000'000;
  for (std::uint64_t i = 0; i < steps; ++i) {
    clk.advance(std::chrono::nanoseconds{step_ns});
    (void)lim->check(1);
  }
  // Exactly what one refill over the whole time would give.
  const std::uint64_t expected = steps * step_ns * rate / 1'000'000'000ull;
  CHECK(expected == 1'337'004ull); // 1.337 s at 1 000 003 B/s; truncating each step would give 1 000 000
  CHECK(lim->snapshot().tokens == static_cast<std::int64_t>(expected));
}

TEST_CASE("token bucket: the default burst is one second of rate, at least 64 KiB", "[bandwidth]") {
  util::manual_clock clk;
  CHECK(make(rate_policy(1000, 0), clk)->snapshot().burst_bytes == 64 * 1024);
  CHECK(make(rate_policy(1'250'000, 0), clk)->snapshot().burst_bytes == 1'250'000);
  CHECK(make(rate_policy(1'250'000, 4096), clk)->snapshot().burst_bytes == 4096);
  CHECK(make(quota_policy(10), clk)->snapshot().burst_bytes == 0);
}

// ------------------------------------------------------------------ quota

TEST_CASE("quota: spent quota holds until the reset instant and refills exactly then, not 1 us before", "[bandwidth]") {
  util::manual_clock clk(at(0, 10, 0));
  auto lim = make(quota_policy(1000), clk);
  REQUIRE(lim->check(600).allowed);
  lim->consume(600);
  REQUIRE(lim->check(600).allowed); // used 600 < 1000: a batch may overshoot
  lim->consume(600);
  auto s = lim->snapshot();
  CHECK(s.quota_used_bytes == 1200);
  CHECK(s.quota_remaining_bytes == 0u);
  CHECK(s.quota_resets_at == at(1, 0, 0));

  auto d = lim->check(1);
  CHECK_FALSE(d.allowed);
  CHECK(d.reason == hold_reason::quota);
  REQUIRE(d.resume_wall);
  CHECK(*d.resume_wall == at(1, 0, 0));
  CHECK(d.retry_at == clk.steady_now() + 14h);
  CHECK(lim->snapshot().hold == hold_reason::quota);

  clk.set_system(at(1, 0, 0) - 1us);
  CHECK_FALSE(lim->check(1).allowed);
  CHECK(lim->snapshot().quota_used_bytes == 1200);
  clk.advance(1us);
  CHECK(lim->check(1).allowed);
  s = lim->snapshot();
  CHECK(s.quota_used_bytes == 0);
  CHECK(s.quota_remaining_bytes == 1000u);
  CHECK(s.quota_period_start == at(1, 0, 0));
  CHECK(s.quota_resets_at == at(2, 0, 0));
  CHECK(s.hold == hold_reason::none);
}

TEST_CASE("quota: bytes sent in a period never exceed the quota by more than one batch", "[bandwidth]") {
  util::manual_clock clk(at(0, 1, 0));
  constexpr std::uint64_t quota = 100'000;
  auto lim = make(quota_policy(quota), clk);
  std::uint64_t sent = 0, largest = 0, batch = 1;
  for (int i = 0; i < 100'000 && lim->check(batch).allowed; ++i) {
    lim->consume(batch);
    sent += batch;
    largest = std::max(largest, batch);
    batch = batch * 7 % 4099 + 1; // 1 .. 4099, irregular
    clk.advance(1ms);
  }
  CHECK(sent >= quota);
  CHECK(sent < quota + largest);
  CHECK(lim->check(1).reason == hold_reason::quota);
}

TEST_CASE("quota: a reset crossed while the node was stopped gives a fresh quota on load", "[bandwidth]") {
  util::manual_clock clk(at(0, 23, 0));
  bandwidth::quota_state saved;
  {
    auto lim = make(quota_policy(1000), clk);
    lim->consume(1000);
    REQUIRE_FALSE(lim->check(1).allowed);
    saved = lim->export_quota().state;
  }
  CHECK(saved.period_start_unix_ms == util::to_unix_ms(at(0, 0, 0)));
  CHECK(saved.used_bytes == 1000);

  // Restarted within the same period: still spent, and nothing new to save.
  clk.set_system(at(0, 23, 59, 59, 999'999us));
  auto same = make(quota_policy(1000), clk, saved);
  CHECK_FALSE(same->check(1).allowed);
  CHECK(same->snapshot().quota_used_bytes == 1000);
  CHECK(same->quota_version() == 0);

  // Restarted exactly at the reset, and a day later: fresh.
  clk.set_system(at(1, 0, 0));
  auto next = make(quota_policy(1000), clk, saved);
  CHECK(next->check(1).allowed);
  CHECK(next->snapshot().quota_used_bytes == 0);
  CHECK(next->quota_version() != 0);
  CHECK(next->export_quota().state == bandwidth::quota_state{util::to_unix_ms(at(1, 0, 0)), 0});

  clk.set_system(at(3, 17, 0));
  auto later = make(quota_policy(1000), clk, saved);
  CHECK(later->check(1).allowed);
  CHECK(later->snapshot().quota_period_start == at(3, 0, 0));
}

TEST_CASE("quota: a reset at 13:30Z bounds the period at 13:30 each day", "[bandwidth]") {
  util::manual_clock clk(at(0, 13, 29, 59));
  auto lim = make(quota_policy(500, tod(13, 30)), clk);
  auto s = lim->snapshot();
  CHECK(s.quota_period_start == at(-1, 13, 30));
  CHECK(s.quota_resets_at == at(0, 13, 30));
  lim->consume(500);
  auto d = lim->check(1);
  CHECK_FALSE(d.allowed);
  CHECK(d.resume_wall == at(0, 13, 30));
  CHECK(d.retry_at == clk.steady_now() + 1s);
  clk.advance(1s - 1us);
  CHECK_FALSE(lim->check(1).allowed);
  clk.advance(1us);
  CHECK(lim->check(1).allowed);
  s = lim->snapshot();
  CHECK(s.quota_period_start == at(0, 13, 30));
  CHECK(s.quota_resets_at == at(1, 13, 30));
  // Spending it again holds until 13:30 the next day, not midnight.
  lim->consume(500);
  CHECK(lim->check(1).resume_wall == at(1, 13, 30));
}

TEST_CASE("quota: used bytes are kept when the wall clock steps back", "[bandwidth]") {
  util::manual_clock clk(at(5, 12, 0));
  auto lim = make(quota_policy(100), clk);
  lim->consume(100);
  clk.set_system(at(4, 12, 0));
  auto d = lim->check(1);
  CHECK_FALSE(d.allowed);
  CHECK(d.resume_wall == at(5, 0, 0));
  CHECK(lim->snapshot().quota_used_bytes == 100);
}

// ------------------------------------------------------------------ windows

TEST_CASE("send windows: a window crossing midnight is open from 22:00 to 06:00 and resumes exactly at 22:00",
          "[bandwidth]") {
  util::manual_clock clk(at(0, 23, 59));
  bandwidth::policy p;
  p.send_windows = {win(22, 0, 6, 0)};
  auto lim = make(p, clk);
  CHECK(lim->check(1).allowed);
  auto s = lim->snapshot();
  CHECK(s.in_window);
  CHECK(s.window_closes_at == at(1, 6, 0));
  CHECK_FALSE(s.window_opens_at);

  clk.set_system(at(1, 5, 59, 59, 999'999us));
  CHECK(lim->check(1).allowed);

  clk.set_system(at(1, 6, 0));
  auto d = lim->check(1);
  CHECK_FALSE(d.allowed);
  CHECK(d.reason == hold_reason::outside_window);
  CHECK(d.resume_wall == at(1, 22, 0));
  CHECK(d.retry_at == clk.steady_now() + 16h);
  s = lim->snapshot();
  CHECK_FALSE(s.in_window);
  CHECK(s.hold == hold_reason::outside_window);
  CHECK(s.window_opens_at == at(1, 22, 0));
  CHECK(s.window_closes_at == at(2, 6, 0));

  clk.set_system(at(1, 22, 0) - 1us);
  CHECK_FALSE(lim->check(1).allowed);
  clk.advance(1us);
  CHECK(lim->check(1).allowed);
}

TEST_CASE("send windows: outside every window the peer resumes at the nearest window start", "[bandwidth]") {
  util::manual_clock clk(at(0, 6, 0));
  bandwidth::policy p;
  p.send_windows = {win(22, 0, 6, 0), win(12, 0, 13, 0)};
  auto lim = make(p, clk);
  CHECK(lim->check(1).resume_wall == at(0, 12, 0));
  clk.set_system(at(0, 12, 30));
  CHECK(lim->check(1).allowed);
  CHECK(lim->snapshot().window_closes_at == at(0, 13, 0));
  clk.set_system(at(0, 13, 0));
  CHECK(lim->check(1).resume_wall == at(0, 22, 0));
}

TEST_CASE("send windows: touching windows are one stretch, windows covering the day never close", "[bandwidth]") {
  const std::vector<bandwidth::window> touching{win(1, 0, 2, 0), win(2, 0, 3, 0)};
  CHECK(bandwidth::next_close(touching, at(0, 1, 30)) == at(0, 3, 0));
  CHECK(bandwidth::next_open(touching, at(0, 3, 0)) == at(1, 1, 0));
  const std::vector<bandwidth::window> all_day{win(0, 0, 12, 0), win(12, 0, 0, 0)};
  CHECK(bandwidth::in_any(all_day, at(0, 23, 59, 59)));
  CHECK_FALSE(bandwidth::next_close(all_day, at(0, 5, 0)));
}

TEST_CASE("spent quota and send windows together resume at the first window start after the reset", "[bandwidth]") {
  util::manual_clock clk(at(0, 3, 0));
  bandwidth::policy p = quota_policy(100);
  p.send_windows = {win(2, 0, 4, 0)};
  auto lim = make(p, clk);
  REQUIRE(lim->check(100).allowed);
  lim->consume(100);
  auto d = lim->check(1);
  CHECK_FALSE(d.allowed);
  CHECK(d.reason == hold_reason::quota);
  CHECK(d.resume_wall == at(1, 2, 0));
  clk.set_system(at(1, 1, 0)); // quota refilled, window still shut
  d = lim->check(1);
  CHECK(d.reason == hold_reason::outside_window);
  CHECK(d.resume_wall == at(1, 2, 0));
}

// ------------------------------------------------------------------ reload

TEST_CASE("a policy replaced at run time keeps the bucket's tokens and the quota's used bytes", "[bandwidth]") {
  util::manual_clock clk(at(0, 10, 0));
  bandwidth::policy p = rate_policy(1000, 10'000);
  p.daily_quota_bytes = 100'000;
  auto lim = make(p, clk);
  lim->consume(7000);
  const auto v0 = lim->quota_version();

  bandwidth::policy q = rate_policy(5000, 20'000);
  q.daily_quota_bytes = 50'000;
  REQUIRE(lim->set_policy(q));
  auto s = lim->snapshot();
  CHECK(s.tokens == 3000);
  CHECK(s.quota_used_bytes == 7000);
  CHECK(s.quota_bytes == 50'000u);
  CHECK(s.rate_bytes_per_s == 5000u);
  CHECK(lim->quota_version() == v0); // the period did not move: nothing new to persist
  clk.advance(1s);
  CHECK(lim->snapshot().tokens == 8000); // refilled at the new rate

  // A smaller burst caps the tokens; a smaller quota keeps the used bytes and may hold at once.
  q.burst_bytes = 2000;
  q.daily_quota_bytes = 5000;
  REQUIRE(lim->set_policy(q));
  s = lim->snapshot();
  CHECK(s.tokens == 2000);
  CHECK(s.quota_used_bytes == 7000);
  CHECK(lim->check(1).reason == hold_reason::quota);

  // No quota: sending resumes, bytes are still counted for the period.
  q.daily_quota_bytes.reset();
  REQUIRE(lim->set_policy(q));
  REQUIRE(lim->check(1000).allowed);
  lim->consume(1000);
  CHECK(lim->snapshot().quota_used_bytes == 8000);
  CHECK_FALSE(lim->snapshot().quota_remaining_bytes);
}

TEST_CASE("a reload that moves quota_reset keeps used bytes until the next occurrence of the new reset time",
          "[bandwidth]") {
  util::manual_clock clk(at(0, 10, 0));
  auto lim = make(quota_policy(1000), clk);
  lim->consume(1000);
  const auto v0 = lim->quota_version();

  REQUIRE(lim->set_policy(quota_policy(1000, tod(13, 30))));
  auto s = lim->snapshot();
  CHECK(s.quota_used_bytes == 1000);
  CHECK(s.quota_period_start == at(-1, 13, 30));
  CHECK(s.quota_resets_at == at(0, 13, 30));
  CHECK(lim->quota_version() != v0);
  CHECK(lim->export_quota().state == bandwidth::quota_state{util::to_unix_ms(at(-1, 13, 30)), 1000});

  // A reset time already passed today does not refill now: the next one does.
  REQUIRE(lim->set_policy(quota_policy(1000, tod(6, 0))));
  s = lim->snapshot();
  CHECK(s.quota_used_bytes == 1000);
  CHECK(s.quota_resets_at == at(1, 6, 0));
  CHECK_FALSE(lim->check(1).allowed);
  clk.set_system(at(1, 6, 0));
  CHECK(lim->check(1).allowed);
}

TEST_CASE("a rate added by reload starts with a full bucket, an invalid policy is refused and the old one kept",
          "[bandwidth]") {
  util::manual_clock clk(at(0, 10, 0));
  auto lim = make(quota_policy(1'000'000), clk);
  lim->consume(500);
  REQUIRE(lim->set_policy(rate_policy(100, 4000)));
  CHECK(lim->snapshot().tokens == 4000);

  auto bad = lim->set_policy(rate_policy(0, 0));
  REQUIRE_FALSE(bad);
  CHECK(bad.error().message == "rate: must be more than 0 bytes per second (leave it out for no rate limit)");
  CHECK(lim->current_policy() == rate_policy(100, 4000));

  bandwidth::policy empty_window;
  empty_window.send_windows = {win(22, 0, 6, 0), win(5, 0, 5, 0)};
  auto r = bandwidth::limiter::create(empty_window, clk);
  REQUIRE_FALSE(r);
  CHECK(r.error().message == "send_windows[1]: \"05:00-05:00Z\": start and end are the same time, so the window is "
                             "empty");
}

// ------------------------------------------------------------------ persistence hook

TEST_CASE("quota_version changes with every counted byte and period change, and export gives the state to save",
          "[bandwidth]") {
  util::manual_clock clk(at(0, 10, 0));
  auto lim = make(quota_policy(1000), clk);
  auto e0 = lim->export_quota();
  CHECK(e0.version == lim->quota_version());
  CHECK(e0.state == bandwidth::quota_state{util::to_unix_ms(at(0, 0, 0)), 0});
  (void)lim->check(10);
  CHECK(lim->quota_version() == e0.version); // checking changes nothing
  lim->consume(10);
  auto e1 = lim->export_quota();
  CHECK(e1.version != e0.version);
  CHECK(e1.state.used_bytes == 10);
  clk.set_system(at(1, 0, 0));
  auto e2 = lim->export_quota(); // the rollover is noticed by the export itself
  CHECK(e2.version != e1.version);
  CHECK(e2.state == bandwidth::quota_state{util::to_unix_ms(at(1, 0, 0)), 0});
}

// ------------------------------------------------------------------ modes

TEST_CASE("mode strings name the limits in force", "[bandwidth]") {
  bandwidth::policy p;
  CHECK(p.mode_string() == "unlimited");
  p.rate_bytes_per_s = 1000;
  CHECK(p.mode_string() == "rate");
  p.daily_quota_bytes = 1;
  CHECK(p.mode_string() == "rate+quota");
  p.rate_bytes_per_s.reset();
  CHECK(p.mode_string() == "quota");
  p.send_windows = {win(22, 0, 6, 0)};
  CHECK(p.mode_string() == "quota+windows");
  p.daily_quota_bytes.reset();
  CHECK(p.mode_string() == "unlimited+windows");
  p.rate_bytes_per_s = 1;
  CHECK(p.mode_string() == "rate+windows");
  p.daily_quota_bytes = 1;
  CHECK(p.mode_string() == "rate+quota+windows");
  util::manual_clock clk;
  CHECK(make(p, clk)->snapshot().mode == "rate+quota+windows");
  CHECK(std::string(to_string(hold_reason::outside_window)) == "outside_window");
}

TEST_CASE("an unlimited limiter allows any batch at any time and counts the bytes", "[bandwidth]") {
  util::manual_clock clk(at(0, 0, 0));
  auto lim = make(bandwidth::policy{}, clk);
  for (int i = 0; i < 10; ++i) {
    auto d = lim->check(1ull << 40);
    REQUIRE(d.allowed);
    CHECK(d.reason == hold_reason::none);
    lim->consume(1ull << 40);
  }
  auto s = lim->snapshot();
  CHECK(s.mode == "unlimited");
  CHECK(s.bytes_total == 10ull << 40);
  CHECK(s.hold == hold_reason::none);
  CHECK(s.in_window);
}

// ------------------------------------------------------------------ parsing

TEST_CASE("times of day and send windows parse from their UTC text forms", "[bandwidth]") {
  auto t = bandwidth::parse_time_of_day("13:30Z");
  REQUIRE(t);
  CHECK(t->since_midnight == 810min);
  CHECK(t->to_string() == "13:30Z");
  auto w = bandwidth::parse_send_window("22:00-06:00Z");
  REQUIRE(w);
  CHECK(*w == win(22, 0, 6, 0));
  CHECK(w->to_string() == "22:00-06:00Z");
  CHECK(bandwidth::parse_send_window("22:00Z-06:00Z").value() == win(22, 0, 6, 0));
  const std::vector<std::string> texts{"22:00-06:00Z", "12:00-13:00Z"};
  auto ws = bandwidth::parse_send_windows(texts);
  REQUIRE(ws);
  CHECK(*ws == std::vector<bandwidth::window>{win(22, 0, 6, 0), win(12, 0, 13, 0)});
}

TEST_CASE("parse errors quote the input and say exactly what is wrong", "[bandwidth]") {
  auto tod_error = [](std::string_view s) {
    auto r = bandwidth::parse_time_of_day(s);
    return r ? std::string("(parsed)") : r.error().message;
  };
  CHECK(tod_error("24:00Z") == "\"24:00Z\": hour must be 0..23");
  CHECK(tod_error("00:60Z") == "\"00:60Z\": minute must be 0..59");
  CHECK(tod_error("13:30") == "\"13:30\": missing the \"Z\" at the end (times are UTC, e.g. \"13:30Z\")");
  const std::string shape = "expected a UTC time of day \"HH:MMZ\" (HH 00..23, MM 00..59), e.g. \"00:00Z\"";
  CHECK(tod_error("0:00Z") == "\"0:00Z\": " + shape);
  CHECK(tod_error("13:30+01:00") == "\"13:30+01:00\": " + shape);
  CHECK(tod_error("") == "\"\": " + shape);

  auto windows_error = [](std::vector<std::string> v) {
    auto r = bandwidth::parse_send_windows(v);
    return r ? std::string("(parsed)") : r.error().message;
  };
  CHECK(windows_error({"22:00-06:00Z", "25:00-06:00Z"}) == "send_windows[1]: \"25:00-06:00Z\": hour must be 0..23");
  CHECK(windows_error({"22:00-06:61Z"}) == "send_windows[0]: \"22:00-06:61Z\": minute must be 0..59");
  CHECK(windows_error({"22:00-06:00"}) == "send_windows[0]: \"22:00-06:00\": missing the \"Z\" at the end (send "
                                          "windows are UTC, e.g. \"22:00-06:00Z\")");
  CHECK(windows_error({"06:00-06:00Z"}) ==
        "send_windows[0]: \"06:00-06:00Z\": start and end are the same time, so the window is empty");
  CHECK(windows_error({"22-6Z"}) == "send_windows[0]: \"22-6Z\": expected a UTC send window \"HH:MM-HH:MMZ\" "
                                    "(start inclusive, end exclusive, may cross midnight), e.g. \"22:00-06:00Z\"");
  CHECK(windows_error({}) ==
        "send_windows: is empty, so the peer could never send (leave the key out to send at any time)");
}

// ------------------------------------------------------------------ threads

TEST_CASE("the limiter counts every byte when many threads check and consume at once", "[bandwidth]") {
  util::manual_clock clk(at(0, 0, 0));
  bandwidth::policy p = rate_policy(1'000'000'000, 1'000'000'000);
  p.daily_quota_bytes = 1ull << 50;
  auto lim = make(p, clk);
  constexpr int threads = 4, rounds = 20'000;
  std::atomic<std::uint64_t> allowed{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < threads; ++t)
    ts.emplace_back([&] {
      for (int i = 0; i < rounds; ++i) {
        if (lim->check(100).allowed) allowed += 1;
        lim->consume(100);
        clk.advance(1us);
      }
    });
  for (auto& t : ts)
    t.join();
  auto s = lim->snapshot();
  CHECK(s.bytes_total == std::uint64_t{threads} * rounds * 100);
  CHECK(s.quota_used_bytes == std::uint64_t{threads} * rounds * 100);
  CHECK(allowed.load() > 0);
}
