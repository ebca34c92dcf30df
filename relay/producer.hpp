#pragma once
// relay::ws_producer — the client side of the relay protocol for fast
// producers: one WebSocket connection to a node's ingest listener
// (`ws://host:port/v1/relay`, or `wss://` when the listener has TLS), a
// window of unacknowledged batches, and per-segment results. The node assigns
// each segment its id and created time; an ACK means the segments are
// durably committed there (docs/protocol.md, "Producers").
//
// Threads: send() and flush() are called from one producer thread and block
// while the window is full; the connection runs on the producer's own I/O
// thread. A failed connection is not re-established: every later call
// returns the error, and segments of batches not yet acknowledged may or may
// not have been stored (resend them: producers get at-least-once delivery).

#include "transport/tls.hpp"
#include "util/errc.hpp"

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace edgerelay::relay {

struct producer_options {
  std::string url;                       // ws://host:port[/path] or wss://host:port[/path]; path defaults to /v1/relay
  std::string name = "producer";         // travels as HELLO's node id (logs of the node show it)
  transport::tls_files tls;              // wss://: the CA to verify the node with, and a client cert if it requires one
  std::string server_name;               // wss://: the name the node's certificate must carry (default: the URL's host)
  std::uint32_t window = 8;              // unacknowledged batches in flight
  std::size_t batch_max_bytes = 1 << 20; // payload bytes per batch (a single larger segment travels alone)
  std::size_t batch_max_segments = 4096;
  std::chrono::milliseconds dial_timeout{10000}; // connect, TLS, upgrade and HELLO → HELLO_ACK
  std::chrono::milliseconds ack_timeout{30000};  // the longest wait for a window slot or the final ACKs
  bool zstd = false;                             // offer zstd compression of batches
};

struct producer_stats {
  std::uint64_t segments_sent = 0;                 // handed to the connection in batches
  std::uint64_t segments_ok = 0;                   // acknowledged as stored
  std::uint64_t segments_rejected = 0;             // acknowledged as refused (see rejections)
  std::map<std::string, std::uint64_t> rejections; // reason -> count
  std::uint64_t batches_acked = 0;
  std::uint64_t bytes_on_wire = 0; // sent, WebSocket framing included
};

class ws_producer {
public:
  static boost::system::result<std::unique_ptr<ws_producer>, error> connect(producer_options options);
  ~ws_producer();
  ws_producer(const ws_producer&) = delete;
  ws_producer& operator=(const ws_producer&) = delete;

  // Copies one segment into the batch being built; sends the batch when it is
  // full, waiting (up to ack_timeout) for a window slot.
  boost::system::result<void, error> send(std::string_view stream, std::string_view payload);
  // send() of one segment whose payload is the concatenation of `parts`
  // (e.g. a header and a body), copied into the batch once.
  boost::system::result<void, error> send_parts(std::string_view stream, std::span<const std::string_view> parts);
  // Sends the partial batch now (waiting, up to ack_timeout, for a window
  // slot) without waiting for its ACK: a paced producer's "linger" point,
  // so a batch never waits for segments that come later.
  boost::system::result<void, error> push();
  // Sends the partial batch and waits until every batch is acknowledged.
  boost::system::result<void, error> flush();
  producer_stats stats() const;

  struct impl;

private:
  explicit ws_producer(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

} // namespace edgerelay::relay
