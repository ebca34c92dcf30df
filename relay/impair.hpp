#pragma once
// relay::impair_proxy — a TCP impairment proxy for the validation scenarios
// (DESIGN.md §8), for machines without netem. It listens on a loopback
// address, forwards every accepted connection to one upstream host:port, and
// impairs the bytes on the way: delay, jitter, bandwidth, reset after N bytes,
// blackhole, refuse. The impairment can be changed while connections are live
// (set()), and live connections can be reset on demand (drop_all()).
//
// Directions: one impairment applies to both directions of every connection,
// but each direction (client -> upstream, upstream -> client) has its own
// delay queue, its own pacing (rate) and its own backpressure, so traffic in
// one direction never waits for the other.
//
// Threads: the proxy owns one io_context run by one internal thread; every
// connection's state lives on that thread. All public member functions are
// thread-safe and may be called from any thread except from inside the proxy
// (there is no user callback that runs on it). set() and drop_all() are
// synchronous: when they return, the change is in effect for every live
// connection.
//
// Memory: per connection and direction at most `max_queue_bytes` of read but
// not yet forwarded data is held; when the queue is full the proxy stops
// reading from that source until it drains (TCP backpressure reaches the
// sender). Connections are limited to `max_connections`.
//
// Destruction stops accepting and resets every live connection (SO_LINGER 0).
//
// The exact behaviour of each impairment is documented in docs/impair.md.

#include "util/errc.hpp"

#include <boost/asio/ip/tcp.hpp>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

namespace edgerelay::util {
class clock;
}

namespace edgerelay::relay {

// What the proxy does to the traffic. The default value forwards unchanged.
struct impairment {
  // Fixed one-way latency: a chunk read at t is written at t + delay (each
  // direction, so a round trip gains 2 * delay). Order is always preserved.
  std::chrono::milliseconds delay{0};
  // Uniform random offset in [-jitter, +jitter] added to delay per chunk read;
  // the total never drops below zero and never moves a chunk ahead of the
  // previous one (bytes are never reordered).
  std::chrono::milliseconds jitter{0};
  // Bandwidth limit in bytes per second, per direction and per connection
  // (not shared between connections); 0 = unlimited. Strict pacing without
  // burst, in slices of about 20 ms worth of bytes.
  std::uint64_t rate_bytes_per_s = 0;
  // After this many bytes have been forwarded in a connection (both
  // directions together, counting bytes actually written), the proxy resets
  // both sides (RST via SO_LINGER 0). Exactly this many bytes are forwarded.
  // 0 = never.
  std::uint64_t reset_after_bytes = 0;
  // Connections are accepted and kept open, but every data byte read in either
  // direction — and every byte already queued — is dropped. Dropped bytes are
  // lost for good; lifting the blackhole forwards only bytes read afterwards.
  // A FIN or RST from either side still passes (so closed connections end).
  bool blackhole = false;
  // The proxy stops listening: connect() to address() fails with "connection
  // refused" (ECONNREFUSED). Live connections are not affected. Lifting it
  // listens again on the same address.
  bool refuse = false;

  bool operator==(const impairment&) const = default;
};

// "none", or e.g. "delay 200ms, jitter 20ms, rate 125 KB/s, reset after 64 KiB, blackhole".
std::string to_string(const impairment& i);

struct impair_options {
  // Where to listen: must be a loopback address; port 0 picks a free port.
  boost::asio::ip::tcp::endpoint listen{boost::asio::ip::address_v4::loopback(), 0};
  // Where every connection is forwarded (required, port not 0).
  boost::asio::ip::tcp::endpoint upstream;
  // The impairment in force from the start; change it with set().
  impairment initial;
  // Per connection and direction, the most read-but-unforwarded bytes held.
  std::uint64_t max_queue_bytes = 4ull << 20;
  // Connections beyond this are reset at accept.
  std::size_t max_connections = 1024;
  // How long the connection to the upstream may take; on failure or timeout
  // the client's connection is reset.
  std::chrono::milliseconds connect_timeout{5000};
  // Seed of the jitter's random sequence; 0 = a random seed.
  std::uint64_t seed = 0;
  // The time source; must follow real time (kind() == "wall") because the
  // proxy's timers sleep in real time. nullptr = the system clock.
  util::clock* clock = nullptr;
};

// Counters since creation. Bytes are counted when written to the destination.
struct impair_counters {
  std::uint64_t connections_accepted = 0; // accepted and forwarded (not counting rejected ones)
  std::uint64_t connections_active = 0;   // live now
  std::uint64_t connections_rejected = 0; // reset at accept: over max_connections, or accepted while refusing
  std::uint64_t upstream_failures = 0;    // the upstream connect failed or timed out (client reset)
  std::uint64_t bytes_to_upstream = 0;
  std::uint64_t bytes_to_client = 0;
  std::uint64_t bytes_dropped = 0; // by the blackhole, both directions
  std::uint64_t queued_bytes = 0;  // read but not yet forwarded, now, all connections
  std::uint64_t resets = 0;        // connections reset by reset_after or drop_all
};

class impair_proxy {
public:
  // Binds and listens on options.listen, then starts the proxy thread. Fails
  // with errc::invalid_argument for a non-loopback listen address, a missing
  // upstream, a zero max_queue_bytes or a manual clock, and with the socket's
  // error when the address cannot be bound.
  static boost::system::result<std::unique_ptr<impair_proxy>, error> create(impair_options options);
  ~impair_proxy();
  impair_proxy(const impair_proxy&) = delete;
  impair_proxy& operator=(const impair_proxy&) = delete;

  // The bound address, e.g. "127.0.0.1:40123"; constant after create().
  std::string address() const;
  boost::asio::ip::tcp::endpoint local_endpoint() const;

  // Replaces the impairment for live and new connections. Chunks already
  // queued keep their due time; a new rate applies to the next slice (pacing
  // restarts); a blackhole drops what is queued; a reset_after that live
  // connections already exceed resets them now.
  void set(const impairment& i);
  impairment current() const;

  // Resets every live connection now (both sides get an RST), including those
  // still connecting upstream. Returns how many were reset.
  std::size_t drop_all();

  impair_counters counters() const;

  struct impl;

private:
  explicit impair_proxy(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace edgerelay::relay
