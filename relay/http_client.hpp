#pragma once
// A small blocking HTTP/1.1 client for the CLI (status, send, deadletter) and
// the demo: one request per connection, bounded by a timeout.

#include "util/errc.hpp"

#include <chrono>
#include <string>

namespace edgerelay::relay {

struct http_reply {
  unsigned status = 0;
  std::string body;
};

// url: "http://host:port/path" or "host:port/path".
boost::system::result<http_reply, error> http_call(const std::string& method, const std::string& url,
                                                   const std::string& body = {},
                                                   std::chrono::milliseconds timeout = std::chrono::seconds(10));

} // namespace edgerelay::relay

namespace boost::asio::ssl {
class context;
}

namespace edgerelay::relay {

// One HTTPS request with mutual TLS: the server's certificate must name
// server_name (checked by `tls`, a client context from transport/tls.hpp).
// `request_bytes`, when given, receives the bytes of the HTTP request
// (headers and body) written to the TLS stream: 0 when the connection or the
// handshake failed, whatever the outcome after that.
boost::system::result<http_reply, error>
https_call(boost::asio::ssl::context& tls, const std::string& method, const std::string& host, std::uint16_t port,
           const std::string& target, const std::string& server_name, const std::string& body,
           const std::string& content_type, std::chrono::milliseconds timeout, std::uint64_t* request_bytes = nullptr);

} // namespace edgerelay::relay
