#pragma once
// Dialing a relay peer: TCP connect, mutual TLS (when a context is given),
// then the WebSocket handshake, all within dial_timeout.

#include "transport/ws_channel.hpp"
#include "util/errc.hpp"

#include <boost/asio/io_context.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace boost::asio::ssl {
class context;
}

namespace edgerelay::transport {

struct ws_target {
  std::string host; // name or address to connect to
  std::uint16_t port = 0;
  std::string path = "/v1/relay";
  std::string server_name; // the name the server's certificate must carry (default: host)
};

// Why a dial failed: the class feeds the forwarder's retry policy and the
// status's last_error; message is the sentence for operators.
struct dial_error {
  boost::system::error_code code;
  std::string reason; // "resolve", "connect", "timeout", "tls:<tls_failure>", "websocket"
  std::string message;
};

using dial_result = boost::system::result<std::shared_ptr<ws_channel>, dial_error>;

// Calls done exactly once, on an io_context thread. `tls` null: plain WebSocket.
void ws_dial(boost::asio::io_context& io, ws_target target, std::shared_ptr<boost::asio::ssl::context> tls,
             ws_options options, std::chrono::milliseconds dial_timeout, std::function<void(dial_result)> done);

} // namespace edgerelay::transport

namespace edgerelay::transport {
[[noreturn]] void throw_exception_from_error(const dial_error& e, const boost::source_location& loc);
}
