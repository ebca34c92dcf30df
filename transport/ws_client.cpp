#include "transport/ws_client.hpp"

#include "transport/impl/ws_session.hpp"
#include "transport/tls.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

namespace edgerelay::transport {

namespace beast = boost::beast;
namespace net = boost::asio;
namespace websocket = boost::beast::websocket;
using tcp = net::ip::tcp;

void throw_exception_from_error(const dial_error& e, const boost::source_location& loc) {
  boost::throw_exception(boost::system::system_error(e.code, e.message), loc);
}

namespace {

template <class Stream>
class dialer : public std::enable_shared_from_this<dialer<Stream>> {
public:
  dialer(net::io_context& io, ws_target t, std::shared_ptr<net::ssl::context> tls, ws_options o,
         std::chrono::milliseconds timeout, std::function<void(dial_result)> done)
      : strand_(net::make_strand(io)), resolver_(strand_), target_(std::move(t)), tls_(std::move(tls)), opt_(o),
        timeout_(timeout), done_(std::move(done)) {
    if (target_.server_name.empty()) target_.server_name = target_.host;
  }

  void start() {
    deadline_ = std::chrono::steady_clock::now() + timeout_;
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      stream_.emplace(strand_);
    } else {
      stream_.emplace(beast::tcp_stream(strand_), *tls_);
      if (auto r = prepare_client_ssl(stream_->native_handle(), target_.server_name); !r)
        return fail(r.error().code, "tls:handshake_other", r.error().message);
    }
    resolver_.async_resolve(target_.host, std::to_string(target_.port),
                            [self = this->shared_from_this()](beast::error_code ec, tcp::resolver::results_type rs) {
                              if (ec)
                                return self->fail(ec, "resolve",
                                                  "cannot resolve " + self->target_.host + ": " + ec.message());
                              self->connect(rs);
                            });
  }

private:
  std::chrono::steady_clock::duration remaining() const {
    auto r = deadline_ - std::chrono::steady_clock::now();
    return r > std::chrono::steady_clock::duration::zero() ? r : std::chrono::milliseconds(1);
  }

  void connect(const tcp::resolver::results_type& rs) {
    auto& low = beast::get_lowest_layer(*stream_);
    low.expires_after(remaining());
    low.async_connect(rs, [self = this->shared_from_this()](beast::error_code ec, const tcp::endpoint&) {
      if (ec == beast::error::timeout) return self->fail(ec, "timeout", "connect timed out");
      if (ec) return self->fail(ec, "connect", "connect to " + self->where() + ": " + ec.message());
      // Messages are written whole: Nagle would hold the last partial
      // segment of each one back until the peer's delayed ACK.
      beast::error_code ignored;
      beast::get_lowest_layer(*self->stream_).socket().set_option(tcp::no_delay(true), ignored);
      self->handshake_tls();
    });
  }

  void handshake_tls() {
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      handshake_ws();
    } else {
      beast::get_lowest_layer(*stream_).expires_after(remaining());
      stream_->async_handshake(net::ssl::stream_base::client, [self = this->shared_from_this()](beast::error_code ec) {
        if (ec) {
          SSL* ssl = self->stream_->native_handle();
          return self->fail(ec, std::string("tls:") + to_string(classify_handshake(ec, ssl)),
                            "TLS handshake with " + self->where() + " failed: " + describe_handshake_failure(ec, ssl));
        }
        self->handshake_ws();
      });
    }
  }

  void handshake_ws() {
    beast::get_lowest_layer(*stream_).expires_never();
    opt_.masked = true;
    std::shared_ptr<const peer_certificates> certs;
    if constexpr (!std::is_same_v<Stream, beast::tcp_stream>)
      certs = peer_certificates::capture(stream_->native_handle());
    ws_ = std::make_shared<detail::ws_session<Stream>>(std::move(*stream_), opt_);
    ws_->set_peer_certs(std::move(certs));
    stream_.reset();
    auto& ws = ws_->stream();
    websocket::stream_base::timeout t{};
    t.handshake_timeout = std::chrono::duration_cast<std::chrono::milliseconds>(remaining());
    t.idle_timeout = opt_.idle_timeout;
    t.keep_alive_pings = true;
    ws.set_option(t);
    ws.async_handshake(target_.host + ":" + std::to_string(target_.port), target_.path,
                       [self = this->shared_from_this()](beast::error_code ec) {
                         if (ec)
                           return self->fail(ec, "websocket",
                                             "WebSocket handshake with " + self->where() + " failed: " + ec.message());
                         websocket::stream_base::timeout t2{};
                         t2.handshake_timeout = self->opt_.handshake_timeout;
                         t2.idle_timeout = self->opt_.idle_timeout;
                         t2.keep_alive_pings = true;
                         self->ws_->stream().set_option(t2);
                         auto done = std::move(self->done_);
                         done(std::shared_ptr<ws_channel>(self->ws_));
                       });
  }

  std::string where() const { return target_.host + ":" + std::to_string(target_.port); }

  void fail(const beast::error_code& ec, std::string reason, std::string message) {
    if (!done_) return;
    auto done = std::move(done_);
    done(dial_error{ec, std::move(reason), std::move(message)});
  }

  net::strand<net::io_context::executor_type> strand_;
  tcp::resolver resolver_;
  ws_target target_;
  std::shared_ptr<net::ssl::context> tls_;
  ws_options opt_;
  std::chrono::milliseconds timeout_;
  std::function<void(dial_result)> done_;
  std::chrono::steady_clock::time_point deadline_;
  std::optional<Stream> stream_;
  std::shared_ptr<detail::ws_session<Stream>> ws_;
};

} // namespace

void ws_dial(net::io_context& io, ws_target target, std::shared_ptr<net::ssl::context> tls, ws_options options,
             std::chrono::milliseconds dial_timeout, std::function<void(dial_result)> done) {
  if (tls) {
    auto d = std::make_shared<dialer<beast::ssl_stream<beast::tcp_stream>>>(io, std::move(target), std::move(tls),
                                                                            options, dial_timeout, std::move(done));
    d->start();
  } else {
    auto d = std::make_shared<dialer<beast::tcp_stream>>(io, std::move(target), nullptr, options, dial_timeout,
                                                         std::move(done));
    d->start();
  }
}

} // namespace edgerelay::transport
