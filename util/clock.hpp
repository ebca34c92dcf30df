#pragma once
// Time sources. Logic never reads the real clock directly: it takes a clock&.
// steady_now() is for intervals and timeouts; system_now() is for timestamps
// that are persisted or compared with wall time (backoff schedules stored in
// the queue, quota resets, retention, evidence timestamps).

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>

namespace edgerelay::util {

class clock {
public:
  virtual ~clock() = default;
  virtual std::chrono::steady_clock::time_point steady_now() = 0;
  virtual std::chrono::system_clock::time_point system_now() = 0;
  // Reports whether this clock follows real time ("wall") or a test's hand ("manual").
  virtual const char* kind() const = 0;
};

// The process-wide real clock. Thread-safe, stateless.
class system_clock_source final : public clock {
public:
  std::chrono::steady_clock::time_point steady_now() override { return std::chrono::steady_clock::now(); }
  std::chrono::system_clock::time_point system_now() override { return std::chrono::system_clock::now(); }
  const char* kind() const override { return "wall"; }
  static system_clock_source& instance();
};

// A clock that moves only when advance() or set_system() is called. Both time
// lines move together. Thread-safe: any thread may read or advance it.
class manual_clock final : public clock {
public:
  explicit manual_clock(std::chrono::system_clock::time_point start = std::chrono::system_clock::time_point{
                            std::chrono::hours{24 * 365 * 56}});
  std::chrono::steady_clock::time_point steady_now() override;
  std::chrono::system_clock::time_point system_now() override;
  const char* kind() const override { return "manual"; }
  void advance(std::chrono::nanoseconds d);
  // Moves the wall time to t (forwards or backwards); steady time moves forwards
  // by the same amount when t is later, and stays put when t is earlier.
  void set_system(std::chrono::system_clock::time_point t);

private:
  std::atomic<std::int64_t> steady_ns_{0};
  std::atomic<std::int64_t> system_ns_;
};

// Milliseconds since the Unix epoch, the unit the store persists.
inline std::int64_t to_unix_ms(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}
inline std::chrono::system_clock::time_point from_unix_ms(std::int64_t ms) {
  return std::chrono::system_clock::time_point{std::chrono::milliseconds{ms}};
}

} // namespace edgerelay::util
