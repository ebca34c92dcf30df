#include "relay/producer.hpp"

#include "transport/relay_codec.hpp"
#include "transport/ws_client.hpp"
#include "util/checksum.hpp"
#include "util/text.hpp"
#include "util/thread_name.hpp"

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>

#include <charconv>
#include <condition_variable>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

namespace edgerelay::relay {

namespace net = boost::asio;

namespace {

struct ws_url {
  bool tls = false;
  std::string host;
  std::uint16_t port = 0;
  std::string path = std::string(transport::relay_path);
};

boost::system::result<ws_url, error> parse_ws_url(std::string_view url) {
  auto bad = [&](const std::string& why) {
    return error{make_error_code(errc::invalid_argument),
                 util::quote(url) + " " + why + " (use ws://host:port[/v1/relay] or wss://host:port[/v1/relay])"};
  };
  ws_url u;
  std::string_view rest;
  if (url.starts_with("ws://"))
    rest = url.substr(5);
  else if (url.starts_with("wss://")) {
    rest = url.substr(6);
    u.tls = true;
  } else
    return bad("is not a WebSocket URL");
  auto slash = rest.find('/');
  std::string_view hostport = rest.substr(0, slash);
  if (slash != std::string_view::npos) u.path = std::string(rest.substr(slash));
  std::string_view host, port;
  if (hostport.starts_with("[")) {
    auto close = hostport.find(']');
    if (close == std::string_view::npos || close + 1 >= hostport.size() || hostport[close + 1] != ':')
      return bad("has a malformed [IPv6]:port");
    host = hostport.substr(1, close - 1);
    port = hostport.substr(close + 2);
  } else {
    auto colon = hostport.rfind(':');
    if (colon == std::string_view::npos) return bad("has no port");
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
  }
  unsigned p = 0;
  auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (host.empty() || ec != std::errc() || end != port.data() + port.size() || p == 0 || p > 65535)
    return bad("has an invalid host or port");
  u.host = std::string(host);
  u.port = static_cast<std::uint16_t>(p);
  return u;
}

error failure(std::string message) { return error{make_error_code(boost::system::errc::io_error), std::move(message)}; }

} // namespace

struct ws_producer::impl {
  producer_options opt;
  net::io_context io;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work{io.get_executor()};
  std::thread thread;
  std::shared_ptr<transport::ws_channel> ch;

  mutable std::mutex mu; // guards everything below
  std::condition_variable cv;
  bool handshake_done = false;
  std::optional<std::string> failed; // why the connection is unusable
  transport::hello hello;
  transport::session_terms terms{};
  std::map<std::uint64_t, std::size_t> inflight; // batch number -> records
  std::uint64_t next_batch = 1;
  producer_stats st;

  // The batch being built: streams and payloads copied into one arena.
  struct slot {
    std::size_t stream_at, stream_len, payload_at, payload_len;
    std::uint64_t checksum;
  };
  std::string arena;
  std::vector<slot> slots;
  std::size_t batch_payload_bytes = 0;

  void on_message(const std::string& m) {
    auto d = transport::decode(m);
    std::lock_guard lk(mu);
    if (!d) {
      fail_locked("undecodable message from the node: " + d.error().message);
    } else if (auto* ha = std::get_if<transport::hello_ack>(&*d)) {
      auto t = transport::accept_hello_ack(hello, *ha);
      if (!t)
        fail_locked("handshake: " + t.error().message);
      else {
        terms = *t;
        handshake_done = true;
      }
    } else if (auto* a = std::get_if<transport::ack>(&*d)) {
      auto it = inflight.find(a->batch_number);
      if (it == inflight.end() || it->second != a->results.size()) {
        fail_locked("ACK for unknown batch " + std::to_string(a->batch_number));
      } else {
        for (auto& r : a->results) {
          if (r.status == transport::ack_status::rejected) {
            ++st.segments_rejected;
            ++st.rejections[std::string(r.reason)];
          } else {
            ++st.segments_ok;
          }
        }
        ++st.batches_acked;
        inflight.erase(it);
      }
    } else if (auto* e = std::get_if<transport::error_message>(&*d)) {
      fail_locked("the node sent ERROR " + std::string(transport::to_string(e->code)) + ": " + std::string(e->message));
    } else {
      fail_locked("unexpected message from the node");
    }
    cv.notify_all();
  }
  void fail_locked(std::string why) {
    if (!failed) failed = std::move(why);
    if (ch) ch->close(*failed);
  }
  void on_closed(const std::string& why) {
    std::lock_guard lk(mu);
    if (!failed) failed = "connection closed: " + why;
    cv.notify_all();
  }

  // Waits (mu held) until pred or failure, at most `limit`.
  template <class Pred>
  boost::system::result<void, error> wait(std::unique_lock<std::mutex>& lk, std::chrono::milliseconds limit,
                                          const char* what, Pred pred) {
    if (!cv.wait_for(lk, limit, [&] { return failed || pred(); }))
      return error{make_error_code(errc::timeout),
                   std::string("no ") + what + " within " + std::to_string(limit.count()) + " ms"};
    if (failed && !pred()) return failure(*failed);
    return {};
  }

  // Encodes and sends the batch being built (mu held).
  boost::system::result<void, error> send_batch(std::unique_lock<std::mutex>& lk) {
    if (slots.empty()) return {};
    std::uint32_t window = std::max<std::uint32_t>(1, std::min(opt.window, terms.window ? terms.window : opt.window));
    if (auto r = wait(lk, opt.ack_timeout, "window slot (ACK)", [&] { return inflight.size() < window; }); !r) return r;
    if (failed) return failure(*failed);
    std::vector<transport::segment_record> recs;
    recs.reserve(slots.size());
    for (auto& s : slots)
      recs.push_back({{},
                      std::string_view(arena).substr(s.stream_at, s.stream_len),
                      0,
                      s.checksum,
                      std::string_view(arena).substr(s.payload_at, s.payload_len)});
    std::string out;
    transport::batch_encoding enc;
    enc.algorithm = terms.algorithm;
    auto num = next_batch++;
    if (auto e = transport::encode_batch(num, recs, out, enc); !e) return failure("encode: " + e.error().message);
    if (!ch->send(std::move(out))) return failure(failed ? *failed : "the connection's outbound queue is full");
    inflight[num] = recs.size();
    st.segments_sent += recs.size();
    slots.clear();
    arena.clear();
    batch_payload_bytes = 0;
    return {};
  }
};

ws_producer::ws_producer(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

ws_producer::~ws_producer() {
  auto& m = *impl_;
  {
    std::lock_guard lk(m.mu);
    if (m.ch) m.ch->close("producer done");
  }
  m.work.reset();
  if (m.thread.joinable()) {
    // The close handshake is bounded by the channel's own timeouts; stop the
    // loop if it is still busy after a grace period.
    std::unique_lock lk(m.mu);
    m.cv.wait_for(lk, std::chrono::seconds(2), [&] { return m.failed.has_value(); });
    lk.unlock();
    m.io.stop();
    m.thread.join();
  }
}

boost::system::result<std::unique_ptr<ws_producer>, error> ws_producer::connect(producer_options options) {
  auto u = parse_ws_url(options.url);
  if (!u) return u.error();
  auto m = std::make_unique<impl>();
  m->opt = std::move(options);
  std::shared_ptr<net::ssl::context> ctx;
  if (u->tls) {
    auto c = transport::make_client_context(m->opt.tls, m->opt.server_name.empty() ? u->host : m->opt.server_name);
    if (!c) return error{c.error().code, "wss: " + c.error().message};
    ctx = *c;
  }
  m->thread = std::thread([p = m.get()] {
    util::name_this_thread("er-producer");
    p->io.run();
  });
  std::unique_ptr<ws_producer> self(new ws_producer(std::move(m)));
  auto& im = *self->impl_;
  std::promise<transport::dial_result> dialed;
  transport::ws_options wo;
  wo.idle_timeout = std::max<std::chrono::milliseconds>(im.opt.ack_timeout, std::chrono::seconds(5));
  transport::ws_dial(im.io, {u->host, u->port, u->path, im.opt.server_name.empty() ? u->host : im.opt.server_name}, ctx,
                     wo, im.opt.dial_timeout, [&](transport::dial_result r) { dialed.set_value(std::move(r)); });
  auto r = dialed.get_future().get();
  if (!r) return error{r.error().code, r.error().message};
  boost::system::result<void, error> handshake;
  {
    std::unique_lock lk(im.mu);
    im.ch = *r;
    impl* p = &im;
    im.ch->start({[p](std::string&& msg) { p->on_message(msg); },
                  [p](const boost::system::error_code&, const std::string& why) { p->on_closed(why); }});
    im.hello.node_id = im.opt.name;
    im.hello.versions = {transport::relay_protocol_version};
    if (im.opt.zstd) im.hello.compressions.push_back(transport::compression_zstd);
    im.hello.compressions.push_back(transport::compression_none);
    im.hello.max_window = std::max<std::uint32_t>(1, im.opt.window);
    im.hello.max_batch_bytes = std::max<std::size_t>(1, im.opt.batch_max_bytes);
    std::string out;
    if (auto e = transport::encode_hello(im.hello, out); !e) return failure("HELLO: " + e.error().message);
    im.ch->send(std::move(out));
    handshake = im.wait(lk, im.opt.dial_timeout, "HELLO_ACK", [&] { return im.handshake_done; });
  }
  if (!handshake) return handshake.error(); // ~ws_producer (without the lock held) closes the connection
  return self;
}

boost::system::result<void, error> ws_producer::send(std::string_view stream, std::string_view payload) {
  return send_parts(stream, std::span<const std::string_view>(&payload, 1));
}

boost::system::result<void, error> ws_producer::send_parts(std::string_view stream,
                                                           std::span<const std::string_view> parts) {
  auto& m = *impl_;
  std::unique_lock lk(m.mu);
  if (m.failed) return failure(*m.failed);
  std::size_t size = 0;
  for (auto part : parts)
    size += part.size();
  std::size_t max_bytes = m.terms.max_batch_bytes
                              ? std::min<std::size_t>(m.opt.batch_max_bytes, m.terms.max_batch_bytes)
                              : m.opt.batch_max_bytes;
  if (!m.slots.empty() && (m.batch_payload_bytes + size > max_bytes || m.slots.size() >= m.opt.batch_max_segments))
    if (auto r = m.send_batch(lk); !r) return r;
  impl::slot s{m.arena.size(), stream.size(), m.arena.size() + stream.size(), size, 0};
  m.arena.append(stream);
  for (auto part : parts)
    m.arena.append(part);
  s.checksum = util::checksum(std::string_view(m.arena).substr(s.payload_at, size));
  m.slots.push_back(s);
  m.batch_payload_bytes += size;
  return {};
}

boost::system::result<void, error> ws_producer::push() {
  auto& m = *impl_;
  std::unique_lock lk(m.mu);
  if (m.failed) return failure(*m.failed);
  return m.send_batch(lk);
}

boost::system::result<void, error> ws_producer::flush() {
  auto& m = *impl_;
  std::unique_lock lk(m.mu);
  if (m.failed) return failure(*m.failed);
  if (auto r = m.send_batch(lk); !r) return r;
  return m.wait(lk, m.opt.ack_timeout, "ACK", [&] { return m.inflight.empty(); });
}

producer_stats ws_producer::stats() const {
  auto& m = *impl_;
  std::lock_guard lk(m.mu);
  auto s = m.st;
  if (m.ch) s.bytes_on_wire = m.ch->bytes_sent();
  return s;
}

} // namespace edgerelay::relay
