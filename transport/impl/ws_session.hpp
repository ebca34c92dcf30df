#pragma once
// The one implementation of ws_channel, for any Beast stream (plain
// tcp_stream or ssl_stream<tcp_stream>). Internal to transport/.

#include "transport/ws_channel.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>

#include <atomic>
#include <deque>
#include <mutex>

namespace edgerelay::transport::detail {

namespace beast = boost::beast;
namespace websocket = boost::beast::websocket;

template <class Stream>
class ws_session final : public ws_channel, public std::enable_shared_from_this<ws_session<Stream>> {
public:
  ws_session(websocket::stream<Stream>&& ws, ws_options opt) : ws_(std::move(ws)), opt_(opt) { configure(); }
  explicit ws_session(Stream&& s, ws_options opt) : ws_(std::move(s)), opt_(opt) { configure(); }

  websocket::stream<Stream>& stream() { return ws_; }

  void start(callbacks cb) override {
    boost::asio::dispatch(ws_.get_executor(), [self = this->shared_from_this(), cb = std::move(cb)]() mutable {
      self->cb_ = std::move(cb);
      self->started_ = true;
      self->read();
      self->write_next();
    });
  }

  bool send(std::string message) override {
    {
      std::lock_guard lk(mu_);
      if (closed_ || out_.size() >= opt_.max_queue) return false;
      out_.push_back(std::move(message));
    }
    boost::asio::post(ws_.get_executor(), [self = this->shared_from_this()] { self->write_next(); });
    return true;
  }

  void close(std::string why) override {
    boost::asio::post(ws_.get_executor(), [self = this->shared_from_this(), why = std::move(why)]() mutable {
      self->begin_close(std::move(why));
    });
  }

  std::uint64_t bytes_sent() const override { return sent_.load(); }
  std::uint64_t bytes_received() const override { return received_.load(); }
  std::size_t queued() const override {
    std::lock_guard lk(mu_);
    return out_.size();
  }

private:
  void configure() {
    ws_.binary(true);
    // One frame per message: the bytes a message costs on the wire are then
    // exactly its size plus one frame header (bandwidth accounting), and
    // large messages avoid per-fragment overhead.
    ws_.auto_fragment(false);
    // A client masks every frame: Beast copies and masks the message through
    // a buffer of this size and writes it to the stream one buffer at a
    // time. Its default, 4 KiB, makes a TLS record and a send(2) per 4 KiB
    // (and a 4 KiB read for the peer); 64 KiB fills whole 16 KiB TLS records.
    ws_.write_buffer_bytes(64 << 10);
    ws_.read_message_max(opt_.max_message_bytes);
    websocket::stream_base::timeout t{};
    t.handshake_timeout = opt_.handshake_timeout;
    t.idle_timeout = opt_.idle_timeout;
    t.keep_alive_pings = true;
    ws_.set_option(t);
  }

  void read() {
    ws_.async_read(in_, [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
      if (ec) return self->finish(ec, ec == websocket::error::closed ? "closed by peer" : ec.message());
      self->received_ += n;
      std::string msg = beast::buffers_to_string(self->in_.data());
      self->in_.consume(self->in_.size());
      if (self->cb_.on_message) self->cb_.on_message(std::move(msg));
      if (!self->finished_) self->read();
    });
  }

  void write_next() {
    if (writing_ || !started_ || finished_) return;
    std::string msg;
    {
      std::lock_guard lk(mu_);
      if (out_.empty()) return;
      msg = std::move(out_.front());
      out_.pop_front();
    }
    writing_ = true;
    current_ = std::move(msg);
    ws_.async_write(boost::asio::buffer(current_),
                    [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
                      self->writing_ = false;
                      if (ec) return self->finish(ec, "write: " + ec.message());
                      self->sent_ += ws_wire_bytes(n, self->opt_.masked);
                      self->write_next();
                      if (self->closing_ && !self->writing_) self->do_close();
                    });
  }

  void begin_close(std::string why) {
    if (finished_ || closing_) return;
    closing_ = true;
    close_reason_ = std::move(why);
    {
      std::lock_guard lk(mu_);
      closed_ = true;
    }
    if (!writing_) do_close();
  }

  void do_close() {
    if (close_sent_) return;
    close_sent_ = true;
    ws_.async_close(websocket::close_reason(websocket::close_code::normal, close_reason_.substr(0, 120)),
                    [self = this->shared_from_this()](beast::error_code ec) {
                      self->finish(ec, self->close_reason_.empty() ? "closed" : self->close_reason_);
                    });
  }

  void finish(const beast::error_code& ec, std::string why) {
    if (finished_) return;
    finished_ = true;
    {
      std::lock_guard lk(mu_);
      closed_ = true;
      out_.clear();
    }
    beast::error_code ignored;
    beast::get_lowest_layer(ws_).socket().close(ignored);
    if (cb_.on_closed) cb_.on_closed(ec, why);
    cb_ = {};
  }

  websocket::stream<Stream> ws_;
  ws_options opt_;
  callbacks cb_;
  beast::flat_buffer in_;
  mutable std::mutex mu_; // guards out_ and closed_ (send() comes from any thread)
  std::deque<std::string> out_;
  bool closed_ = false;
  std::string current_;
  bool started_ = false, writing_ = false, closing_ = false, close_sent_ = false, finished_ = false;
  std::string close_reason_;
  std::atomic<std::uint64_t> sent_{0}, received_{0};
};

} // namespace edgerelay::transport::detail
