#pragma once
// transport::ws_channel — one WebSocket connection carrying binary messages,
// plain or TLS, client or server side, behind one interface. Liveness: the
// channel pings when idle and closes when nothing (not even a pong) arrives
// within the idle timeout.
//
// Threads: callbacks run on the channel's strand, one at a time. send() and
// close() may be called from any thread.

#include <boost/system/error_code.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

namespace edgerelay::transport {

struct ws_options {
  std::size_t max_message_bytes = 64ull << 20;
  std::chrono::milliseconds idle_timeout{30000}; // a ping goes out at half of it; silence for all of it closes
  std::chrono::milliseconds handshake_timeout{10000};
  std::size_t max_queue = 256; // outbound messages waiting to be written
  bool masked = false;         // client side (set by ws_dial): every frame carries a 4-byte mask
};

// Bytes a binary message of n bytes costs on the wire: the channel sends each
// message as one frame, so n plus one frame header (with the mask a client's
// frames carry).
constexpr std::size_t ws_wire_bytes(std::size_t n, bool masked) noexcept {
  return n + 2 + (n > 65535 ? 8 : n > 125 ? 2 : 0) + (masked ? 4 : 0);
}

class peer_certificates; // transport/tls.hpp

class ws_channel {
public:
  struct callbacks {
    std::function<void(std::string&& message)> on_message;
    // Called once, when the channel is closed for any reason.
    std::function<void(const boost::system::error_code& ec, const std::string& why)> on_closed;
  };
  virtual ~ws_channel() = default;
  // Starts reading; call once.
  virtual void start(callbacks cb) = 0;
  // Queues a binary message. False when closed or the outbound queue is full.
  virtual bool send(std::string message) = 0;
  virtual void close(std::string why) = 0;
  virtual std::uint64_t bytes_sent() const = 0; // on the wire, WebSocket framing included
  virtual std::uint64_t bytes_received() const = 0;
  virtual std::size_t queued() const = 0;

  // The chain the server presented (a dialled TLS channel; null otherwise),
  // to check the connection again when the client's trust material changes.
  std::shared_ptr<const peer_certificates> peer_certs() const { return peer_certs_; }
  void set_peer_certs(std::shared_ptr<const peer_certificates> p) { peer_certs_ = std::move(p); }

private:
  std::shared_ptr<const peer_certificates> peer_certs_;
};

} // namespace edgerelay::transport
