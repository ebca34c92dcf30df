#include "transport/http_server.hpp"

#include "transport/impl/ws_session.hpp"
#include "transport/tls.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value.hpp>

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <charconv>
#include <list>
#include <mutex>

namespace edgerelay::transport {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace net = boost::asio;
namespace websocket = boost::beast::websocket;
using tcp = net::ip::tcp;

// ------------------------------------------------------------- responder

responder& responder::operator=(responder&& o) noexcept {
  if (this != &o) {
    if (sink_) send_error(500, "internal", "request dropped without an answer");
    sink_ = std::move(o.sink_);
    version_ = o.version_;
    keep_alive_ = o.keep_alive_;
  }
  return *this;
}

responder::~responder() {
  if (sink_) send_error(500, "internal", "request dropped without an answer");
}

void responder::send(http_response&& res) {
  if (!sink_) return;
  res.version(version_);
  res.keep_alive(keep_alive_ && res.keep_alive());
  res.prepare_payload();
  auto s = std::move(sink_);
  s->deliver(std::move(res));
}

void responder::send_json(unsigned status, std::string body) {
  http_response res{static_cast<http::status>(status), version_};
  res.set(http::field::content_type, "application/json");
  res.keep_alive(keep_alive_);
  res.body() = std::move(body);
  send(std::move(res));
}

void responder::send_error(unsigned status, std::string_view code, std::string_view message) {
  boost::json::object o;
  o["error"] = code;
  o["message"] = message;
  send_json(status, boost::json::serialize(o));
}

// ------------------------------------------------------------- sessions

namespace {

// The identity a verified client certificate presents: first SAN URI, else
// first SAN DNS name, else the subject CN.
std::string peer_identity(SSL* ssl) {
  X509* cert = SSL_get0_peer_certificate(ssl);
  if (!cert) return {};
  std::string uri, dns;
  if (auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr))) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
      const GENERAL_NAME* n = sk_GENERAL_NAME_value(names, i);
      auto text = [](const ASN1_IA5STRING* s) {
        return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                           static_cast<std::size_t>(ASN1_STRING_length(s)));
      };
      if (n->type == GEN_URI && uri.empty()) uri = "URI:" + text(n->d.uniformResourceIdentifier);
      if (n->type == GEN_DNS && dns.empty()) dns = "DNS:" + text(n->d.dNSName);
    }
    GENERAL_NAMES_free(names);
  }
  if (!uri.empty()) return uri;
  if (!dns.empty()) return dns;
  char cn[256] = {0};
  if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0)
    return std::string("CN:") + cn;
  return {};
}

class session_base {
public:
  virtual ~session_base() = default;
  virtual void shutdown() = 0;
};

} // namespace

struct http_server::impl {
  net::io_context& io;
  tcp::acceptor acceptor;
  http_handler& handler;
  http_limits limits;
  const tls_material* tls;
  std::atomic<std::size_t> conns{0};
  std::mutex mu;
  std::list<std::weak_ptr<session_base>> sessions;
  bool stopped = false;

  impl(net::io_context& i, http_handler& h, http_limits l, const tls_material* t)
      : io(i), acceptor(net::make_strand(i)), handler(h), limits(l), tls(t) {}

  void track(const std::shared_ptr<session_base>& s) {
    std::lock_guard lk(mu);
    for (auto it = sessions.begin(); it != sessions.end();)
      it = it->expired() ? sessions.erase(it) : std::next(it);
    sessions.push_back(s);
  }
  void accept_next(std::shared_ptr<http_server> keep);
  void on_accept(tcp::socket sock, const std::shared_ptr<http_server>& owner);
};

namespace {

template <class Stream>
class http_session final : public session_base, public std::enable_shared_from_this<http_session<Stream>> {
public:
  http_session(http_server::impl& srv, std::shared_ptr<http_server> owner, Stream&& stream,
               std::shared_ptr<net::ssl::context> ctx, std::shared_ptr<const tls_files> files, tcp::endpoint remote)
      : srv_(srv), owner_(std::move(owner)), stream_(std::move(stream)), ctx_(std::move(ctx)),
        files_(std::move(files)) {
    who_.remote = remote;
    who_.tls = ctx_ != nullptr;
    ++srv_.conns;
  }
  ~http_session() override { --srv_.conns; }

  void start() {
    net::dispatch(stream_.get_executor(), [self = this->shared_from_this()] { self->begin(); });
  }

  void shutdown() override {
    net::post(stream_.get_executor(), [self = this->shared_from_this()] {
      beast::error_code ec;
      beast::get_lowest_layer(self->stream_).socket().shutdown(tcp::socket::shutdown_both, ec);
      beast::get_lowest_layer(self->stream_).close();
    });
  }

  // Delivers a response from any thread onto this session's strand.
  class sink final : public responder::sink {
  public:
    explicit sink(std::shared_ptr<http_session> s) : s_(std::move(s)) {}
    void deliver(http_response&& res) override {
      auto s = std::move(s_);
      auto r = std::make_shared<http_response>(std::move(res));
      net::post(s->stream_.get_executor(), [s, r] { s->write(std::move(*r)); });
    }

  private:
    std::shared_ptr<http_session> s_;
  };

private:
  void begin() {
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      read();
    } else {
      beast::get_lowest_layer(stream_).expires_after(srv_.limits.handshake_timeout);
      stream_.async_handshake(net::ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) { self->on_handshake(ec); });
    }
  }

  void on_handshake(beast::error_code ec) {
    if constexpr (!std::is_same_v<Stream, beast::tcp_stream>) {
      SSL* ssl = stream_.native_handle();
      if (ec) {
        srv_.handler.on_refused(who_, to_string(classify_handshake(ec, ssl)), describe_handshake_failure(ec, ssl));
        return close();
      }
      std::string detail;
      auto f = authorize_peer(ssl, files_ ? files_->allow : std::vector<std::string>{}, &detail);
      if (f != tls_failure::none) {
        if (f == tls_failure::not_allowed) who_.identity = peer_identity(ssl);
        srv_.handler.on_refused(who_, to_string(f), detail);
        return close();
      }
      who_.identity = peer_identity(ssl);
      who_.peer_certs = peer_certificates::capture(ssl);
      read();
    }
  }

  void read() {
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(srv_.limits.header_bytes));
    parser_->body_limit(srv_.limits.body_bytes);
    beast::get_lowest_layer(stream_).expires_after(srv_.limits.idle_timeout);
    http::async_read(stream_, buf_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
  }

  void on_read(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == net::error::eof || ec == beast::error::timeout ||
        ec == net::error::operation_aborted || ec == net::error::connection_reset)
      return close();
    if (ec == http::error::body_limit)
      return fail_request(413, "too_large",
                          "request body exceeds the limit of " + std::to_string(srv_.limits.body_bytes) + " bytes");
    if (ec == http::error::header_limit)
      return fail_request(431, "header_too_large",
                          "request header exceeds the limit of " + std::to_string(srv_.limits.header_bytes) + " bytes");
    if (ec) return fail_request(400, "bad_request", "malformed HTTP request: " + ec.message());

    http_request req = parser_->release();
    if (!still_trusted()) return;
    if (websocket::is_upgrade(req)) {
      if (!srv_.handler.accept_websocket(req, who_)) {
        responder r(std::make_shared<sink>(this->shared_from_this()), req.version(), false);
        r.send_error(404, "not_found", "no WebSocket endpoint at " + std::string(req.target()));
        return;
      }
      return upgrade(std::move(req));
    }
    keep_alive_ = req.keep_alive();
    responder r(std::make_shared<sink>(this->shared_from_this()), req.version(), keep_alive_);
    srv_.handler.on_request(std::move(req), who_, std::move(r));
  }

  // A keep-alive connection outlives a reload of the listener's material: a
  // new CRL, CA or allow list applies to each request on it, not only to the
  // next handshake. A client no longer trusted is refused (403) and the
  // connection closed. (Relay sessions are re-checked by the node itself.)
  bool still_trusted() {
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      return true;
    } else {
      if (!who_.peer_certs || !srv_.tls) return true;
      auto snap = srv_.tls->snapshot();
      if (snap.context == (checked_ ? checked_ : ctx_)) return true;
      std::string detail;
      auto f = who_.peer_certs->reverify(*snap.context, &detail);
      if (f == tls_failure::none)
        f = authorize_peer(stream_.native_handle(), snap.files ? snap.files->allow : std::vector<std::string>{},
                           &detail);
      if (f != tls_failure::none) {
        detail = "certificate no longer trusted after the TLS material was reloaded: " + detail;
        srv_.handler.on_refused(who_, to_string(f), detail);
        fail_request(403, to_string(f), detail);
        return false;
      }
      checked_ = snap.context; // trusted under the new material: checked once per reload
      return true;
    }
  }

  void upgrade(http_request req) {
    beast::get_lowest_layer(stream_).expires_never();
    ws_options wo;
    wo.max_message_bytes = srv_.limits.body_bytes;
    auto ws = std::make_shared<detail::ws_session<Stream>>(std::move(stream_), wo);
    auto who = who_;
    auto& handler = srv_.handler;
    auto r = std::make_shared<http_request>(std::move(req));
    ws->stream().async_accept(*r, [ws, r, who, &handler](beast::error_code ec) {
      if (ec) return;
      handler.on_websocket(ws, who);
    });
  }

  void fail_request(unsigned status, std::string_view code, std::string message) {
    keep_alive_ = false;
    responder r(std::make_shared<sink>(this->shared_from_this()), 11, false);
    r.send_error(status, code, message);
  }

  void write(http_response&& res) {
    res_ = std::move(res);
    bool keep = res_.keep_alive() && keep_alive_;
    beast::get_lowest_layer(stream_).expires_after(srv_.limits.request_timeout);
    http::async_write(stream_, res_, [self = this->shared_from_this(), keep](beast::error_code ec, std::size_t) {
      if (ec || !keep) return self->close();
      self->read();
    });
  }

  void close() {
    if constexpr (std::is_same_v<Stream, beast::tcp_stream>) {
      beast::error_code ec;
      stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
      stream_.close();
    } else {
      beast::get_lowest_layer(stream_).expires_after(std::chrono::seconds(2));
      stream_.async_shutdown(
          [self = this->shared_from_this()](beast::error_code) { beast::get_lowest_layer(self->stream_).close(); });
    }
  }

  http_server::impl& srv_;
  std::shared_ptr<http_server> owner_; // keeps srv_ alive as long as the session (e.g. pending in a stopped io_context)
  Stream stream_;
  std::shared_ptr<net::ssl::context> ctx_;     // keeps the context alive for the stream
  std::shared_ptr<const tls_files> files_;     // the allow list that goes with ctx_
  std::shared_ptr<net::ssl::context> checked_; // the newer material the client was re-checked against, if any
  connection_info who_;
  beast::flat_buffer buf_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http_response res_;
  bool keep_alive_ = false;
};

} // namespace

void http_server::impl::accept_next(std::shared_ptr<http_server> keep) {
  acceptor.async_accept(net::make_strand(io), [this, keep](beast::error_code ec, tcp::socket sock) {
    {
      std::lock_guard lk(mu);
      if (stopped) return;
    }
    if (!ec) on_accept(std::move(sock), keep);
    accept_next(keep);
  });
}

void http_server::impl::on_accept(tcp::socket sock, const std::shared_ptr<http_server>& owner) {
  beast::error_code ec;
  auto remote = sock.remote_endpoint(ec);
  if (ec) return;
  // Every message is written whole (a batch, an ACK, a response): Nagle's
  // algorithm would only hold its last partial segment back until the
  // peer's (delayed) ACK of the one before.
  sock.set_option(tcp::no_delay(true), ec);
  if (conns.load() >= limits.max_connections) {
    handler.on_refused(connection_info{remote, tls != nullptr, {}}, "too_many_connections",
                       "connection limit of " + std::to_string(limits.max_connections) + " reached");
    sock.close(ec);
    return;
  }
  if (tls) {
    auto snap = tls->snapshot();
    using tls_stream = beast::ssl_stream<beast::tcp_stream>;
    auto s = std::make_shared<http_session<tls_stream>>(
        *this, owner, tls_stream(beast::tcp_stream(std::move(sock)), *snap.context), snap.context, snap.files, remote);
    track(s);
    s->start();
  } else {
    auto s = std::make_shared<http_session<beast::tcp_stream>>(*this, owner, beast::tcp_stream(std::move(sock)),
                                                               nullptr, nullptr, remote);
    track(s);
    s->start();
  }
}

http_server::http_server(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
http_server::~http_server() = default;

boost::system::result<std::shared_ptr<http_server>, error>
http_server::create(net::io_context& io, const tcp::endpoint& at, http_handler& handler, http_limits limits,
                    const tls_material* tls) {
  auto m = std::make_unique<impl>(io, handler, limits, tls);
  beast::error_code ec;
  auto where = at.address().to_string() + ":" + std::to_string(at.port());
  m->acceptor.open(at.protocol(), ec);
  if (!ec) m->acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) m->acceptor.bind(at, ec);
  if (!ec) m->acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return error{ec, "cannot listen on " + where + ": " + ec.message()};
  return std::shared_ptr<http_server>(new http_server(std::move(m)));
}

void http_server::start() {
  net::dispatch(impl_->acceptor.get_executor(), [self = shared_from_this()] { self->impl_->accept_next(self); });
}

void http_server::stop() {
  std::list<std::weak_ptr<session_base>> open;
  {
    std::lock_guard lk(impl_->mu);
    impl_->stopped = true;
    open.swap(impl_->sessions);
  }
  net::post(impl_->acceptor.get_executor(), [self = shared_from_this()] {
    beast::error_code ec;
    self->impl_->acceptor.close(ec);
  });
  for (auto& w : open)
    if (auto s = w.lock()) s->shutdown();
}

tcp::endpoint http_server::local_endpoint() const {
  beast::error_code ec;
  return impl_->acceptor.local_endpoint(ec);
}

std::size_t http_server::connections() const { return impl_->conns.load(); }

boost::system::result<tcp::endpoint, error> parse_endpoint(std::string_view hp) {
  auto bad = [&](const std::string& why) {
    return error{make_error_code(errc::invalid_argument), "\"" + std::string(hp) + "\" is not host:port: " + why};
  };
  auto colon = hp.rfind(':');
  if (colon == std::string_view::npos) return bad("no port");
  std::string_view host = hp.substr(0, colon), port_s = hp.substr(colon + 1);
  unsigned port = 0;
  auto [p, e] = std::from_chars(port_s.data(), port_s.data() + port_s.size(), port);
  if (e != std::errc{} || p != port_s.data() + port_s.size() || port > 65535) return bad("port must be 0..65535");
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host == "localhost") host = "127.0.0.1";
  if (host.empty() || host == "*") host = "0.0.0.0";
  beast::error_code ec;
  auto addr = net::ip::make_address(std::string(host), ec);
  if (ec) return bad("\"" + std::string(host) + "\" is not an IP address");
  return tcp::endpoint(addr, static_cast<std::uint16_t>(port));
}

} // namespace edgerelay::transport
