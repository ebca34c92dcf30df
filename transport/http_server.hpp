#pragma once
// transport::http_server — an HTTP/1.1 listener on Boost.Beast, plain or TLS
// (mutual TLS when the TLS material requires client certificates), with
// limits on everything a client controls: header and body size, handshake,
// idle and request timeouts, and the number of connections. WebSocket
// upgrades are handed to the handler as a type-erased ws_channel.
//
// Threads: the server runs on the io_context it is given (any number of
// threads). Each connection has its own strand; handlers are called on it.
// A responder may be completed from any thread (for example the store's
// writer thread after a durable commit): the response is posted back to the
// connection's strand.

#include "transport/ws_channel.hpp"
#include "util/errc.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace boost::asio::ssl {
class context;
}

namespace edgerelay::transport {

using http_request = boost::beast::http::request<boost::beast::http::string_body>;
using http_response = boost::beast::http::response<boost::beast::http::string_body>;

struct http_limits {
  std::size_t header_bytes = 16 * 1024;
  std::size_t body_bytes = 64ull << 20;
  std::chrono::milliseconds handshake_timeout{10000};
  std::chrono::milliseconds idle_timeout{60000};    // waiting for the next request
  std::chrono::milliseconds request_timeout{30000}; // reading one request once it started, and writing the answer
  std::size_t max_connections = 1024;
};

struct connection_info {
  boost::asio::ip::tcp::endpoint remote;
  bool tls = false;
  std::string identity; // the verified client certificate's first SAN URI, else SAN DNS, else CN
  // The verified client chain (TLS with a client certificate), to check the
  // connection again when the listener's trust material changes.
  std::shared_ptr<const peer_certificates> peer_certs;
};

// Completes one request. Move-only; send() exactly once, from any thread. A
// responder dropped without send() answers 500 so the client is never left
// hanging.
class responder {
public:
  class sink {
  public:
    virtual ~sink() = default;
    virtual void deliver(http_response&& res) = 0;
  };
  responder() = default;
  explicit responder(std::shared_ptr<sink> s, unsigned version, bool keep_alive)
      : sink_(std::move(s)), version_(version), keep_alive_(keep_alive) {}
  responder(responder&&) noexcept = default;
  responder& operator=(responder&&) noexcept;
  responder(const responder&) = delete;
  responder& operator=(const responder&) = delete;
  ~responder();

  void send(http_response&& res);
  // A JSON body with the given status.
  void send_json(unsigned status, std::string body);
  // The project's error shape: {"error": code, "message": text}.
  void send_error(unsigned status, std::string_view code, std::string_view message);

private:
  std::shared_ptr<sink> sink_;
  unsigned version_ = 11;
  bool keep_alive_ = false;
};

class http_handler {
public:
  virtual ~http_handler() = default;
  // Called on the connection's strand.
  virtual void on_request(http_request&& req, const connection_info& who, responder r) = 0;
  // A WebSocket upgrade request: return false to refuse it (404), else the
  // server completes the upgrade and calls on_websocket with the channel.
  virtual bool accept_websocket(const http_request& req, const connection_info& who) {
    (void)req;
    (void)who;
    return false;
  }
  virtual void on_websocket(std::shared_ptr<ws_channel> ch, const connection_info& who) {
    (void)who;
    ch->close("not accepted");
  }
  // A connection refused before any request (TLS handshake failure, client
  // identity not allowed, too many connections): reason is a short class
  // ("no_client_cert", "not_allowed", "too_many_connections", ...).
  // who.identity is set only when the certificate chain verified and the
  // identity itself was refused ("not_allowed"); empty otherwise.
  virtual void on_refused(const connection_info& who, std::string_view reason, std::string_view detail) {
    (void)who;
    (void)reason;
    (void)detail;
  }
};

class tls_material;

class http_server : public std::enable_shared_from_this<http_server> {
public:
  // Binds and listens (port 0 picks a free port). With `tls` (which must
  // outlive the server) every connection is mutual TLS: each new connection
  // uses tls->snapshot() at accept, so reloaded material applies to new
  // connections while live ones continue, and the client's certificate is
  // checked against that snapshot's allow list after the handshake.
  static boost::system::result<std::shared_ptr<http_server>, error> create(boost::asio::io_context& io,
                                                                           const boost::asio::ip::tcp::endpoint& at,
                                                                           http_handler& handler, http_limits limits,
                                                                           const tls_material* tls = nullptr);
  ~http_server();

  void start();
  // Stops accepting and closes every open connection.
  void stop();
  boost::asio::ip::tcp::endpoint local_endpoint() const;
  std::size_t connections() const;

  struct impl;

private:
  explicit http_server(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

// Parses "host:port" (IPv4, [IPv6] or localhost).
boost::system::result<boost::asio::ip::tcp::endpoint, error> parse_endpoint(std::string_view host_port);

} // namespace edgerelay::transport
