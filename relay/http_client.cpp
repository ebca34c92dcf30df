#include "relay/http_client.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "transport/tls.hpp"

namespace edgerelay::relay {

namespace beast = boost::beast;
namespace http = boost::beast::http;
namespace net = boost::asio;

boost::system::result<http_reply, error> http_call(const std::string& method, const std::string& url,
                                                   const std::string& body, std::chrono::milliseconds timeout) {
  std::string rest = url.rfind("http://", 0) == 0 ? url.substr(7) : url;
  auto slash = rest.find('/');
  std::string hostport = rest.substr(0, slash), target = slash == std::string::npos ? "/" : rest.substr(slash);
  auto colon = hostport.rfind(':');
  if (colon == std::string::npos)
    return error{make_error_code(errc::invalid_argument), "\"" + url + "\" has no port (use http://host:port/...)"};
  std::string host = hostport.substr(0, colon), port = hostport.substr(colon + 1);
  net::io_context io;
  beast::tcp_stream s(io);
  beast::error_code ec;
  net::ip::tcp::resolver res(io);
  auto eps = res.resolve(host, port, ec);
  if (ec) return error{ec, "cannot resolve " + host + ": " + ec.message()};
  s.expires_after(timeout);
  http::request<http::string_body> req{http::string_to_verb(method), target, 11};
  req.set(http::field::host, hostport);
  req.set(http::field::user_agent, "edgerelay");
  req.body() = body;
  req.prepare_payload();
  beast::flat_buffer buf;
  http::response_parser<http::string_body> p;
  p.body_limit(256ull << 20);
  s.async_connect(eps, [&](beast::error_code e, const net::ip::tcp::endpoint&) {
    if (e) {
      ec = e;
      return;
    }
    http::async_write(s, req, [&](beast::error_code e2, std::size_t) {
      if (e2) {
        ec = e2;
        return;
      }
      http::async_read(s, buf, p, [&](beast::error_code e3, std::size_t) { ec = e3; });
    });
  });
  io.run();
  if (ec) return error{ec, method + " " + url + ": " + ec.message()};
  return http_reply{p.get().result_int(), p.get().body()};
}

boost::system::result<http_reply, error> https_call(net::ssl::context& tls, const std::string& method,
                                                    const std::string& host, std::uint16_t port,
                                                    const std::string& target, const std::string& server_name,
                                                    const std::string& body, const std::string& content_type,
                                                    std::chrono::milliseconds timeout, std::uint64_t* request_bytes) {
  if (request_bytes) *request_bytes = 0;
  net::io_context io;
  beast::ssl_stream<beast::tcp_stream> s(io, tls);
  const std::string where = "https://" + host + ":" + std::to_string(port) + target;
  if (auto r = transport::prepare_client_ssl(s.native_handle(), server_name); !r) return r.error();
  beast::error_code ec;
  net::ip::tcp::resolver res(io);
  auto eps = res.resolve(host, std::to_string(port), ec);
  if (ec) return error{ec, "cannot resolve " + host + ": " + ec.message()};
  http::request<http::string_body> req{http::string_to_verb(method), target, 11};
  req.set(http::field::host, host);
  req.set(http::field::user_agent, "edgerelay");
  req.set(http::field::content_type, content_type);
  req.body() = body;
  req.prepare_payload();
  beast::flat_buffer buf;
  http::response_parser<http::string_body> p;
  p.body_limit(1u << 20);
  std::string stage = "connect";
  beast::get_lowest_layer(s).expires_after(timeout);
  beast::get_lowest_layer(s).async_connect(eps, [&](beast::error_code e, const net::ip::tcp::endpoint&) {
    if ((ec = e)) return;
    stage = "TLS handshake";
    s.async_handshake(net::ssl::stream_base::client, [&](beast::error_code e2) {
      if ((ec = e2)) return;
      stage = "request";
      http::async_write(s, req, [&](beast::error_code e3, std::size_t written) {
        if (request_bytes) *request_bytes = written;
        if ((ec = e3)) return;
        stage = "response";
        http::async_read(s, buf, p, [&](beast::error_code e4, std::size_t) { ec = e4; });
      });
    });
  });
  io.run();
  if (ec) {
    std::string why =
        stage == "TLS handshake" ? transport::describe_handshake_failure(ec, s.native_handle()) : ec.message();
    return error{ec, "POST " + where + ": " + stage + " failed: " + why};
  }
  return http_reply{p.get().result_int(), p.get().body()};
}

} // namespace edgerelay::relay
