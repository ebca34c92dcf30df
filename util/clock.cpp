#include "util/clock.hpp"

namespace edgerelay::util {

system_clock_source& system_clock_source::instance() {
  static system_clock_source c;
  return c;
}

manual_clock::manual_clock(std::chrono::system_clock::time_point start)
    : system_ns_(std::chrono::duration_cast<std::chrono::nanoseconds>(start.time_since_epoch()).count()) {}

std::chrono::steady_clock::time_point manual_clock::steady_now() {
  return std::chrono::steady_clock::time_point{std::chrono::nanoseconds{steady_ns_.load()}};
}

std::chrono::system_clock::time_point manual_clock::system_now() {
  return std::chrono::system_clock::time_point{
      std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::nanoseconds{system_ns_.load()})};
}

void manual_clock::advance(std::chrono::nanoseconds d) {
  steady_ns_ += d.count();
  system_ns_ += d.count();
}

void manual_clock::set_system(std::chrono::system_clock::time_point t) {
  auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  auto old = system_ns_.exchange(ns);
  if (ns > old) steady_ns_ += ns - old;
}

} // namespace edgerelay::util
