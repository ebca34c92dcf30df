#include "relay/impair.hpp"

#include "util/clock.hpp"
#include "util/thread_name.hpp"
#include "util/units.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <future>
#include <linux/sockios.h>
#include <mutex>
#include <optional>
#include <random>
#include <sys/ioctl.h>
#include <thread>
#include <unordered_map>
#include <vector>

namespace edgerelay::relay {

namespace net = boost::asio;
using tcp = net::ip::tcp;
using steady_time = std::chrono::steady_clock::time_point;

std::string to_string(const impairment& i) {
  std::string s;
  auto add = [&](const std::string& part) { s += (s.empty() ? "" : ", ") + part; };
  if (i.delay.count() > 0) add("delay " + util::format_duration(i.delay));
  if (i.jitter.count() > 0) add("jitter " + util::format_duration(i.jitter));
  if (i.rate_bytes_per_s > 0) add("rate " + util::format_rate(i.rate_bytes_per_s));
  if (i.reset_after_bytes > 0) add("reset after " + util::format_size(i.reset_after_bytes));
  if (i.blackhole) add("blackhole");
  if (i.refuse) add("refuse");
  return s.empty() ? "none" : s;
}

namespace {

constexpr std::size_t read_chunk_bytes = 64 * 1024;
// Pacing slices are about this long at the configured rate.
constexpr std::uint64_t slices_per_second = 50;
// After the last byte allowed by reset_after, how long the proxy waits for its
// send buffers to empty before it resets (so the peer really receives them).
constexpr std::chrono::milliseconds reset_drain_limit{500};
constexpr std::chrono::milliseconds reset_drain_poll{1};
constexpr std::chrono::milliseconds relisten_retry{100};

std::string to_string(const tcp::endpoint& e) {
  auto a = e.address();
  return (a.is_v6() ? "[" + a.to_string() + "]" : a.to_string()) + ":" + std::to_string(e.port());
}

// Sends an RST instead of a FIN when the socket is closed.
void reset_socket(tcp::socket& s) {
  if (!s.is_open()) return;
  boost::system::error_code ec;
  s.set_option(net::socket_base::linger(true, 0), ec);
  s.close(ec);
}

std::size_t unsent_bytes(tcp::socket& s) {
  int n = 0;
  if (!s.is_open() || ::ioctl(s.native_handle(), SIOCOUTQ, &n) != 0) return 0;
  return static_cast<std::size_t>(std::max(n, 0));
}

class connection;

} // namespace

struct impair_proxy::impl {
  explicit impl(impair_options o)
      : opt(std::move(o)), clk(opt.clock ? opt.clock : &util::system_clock_source::instance()), cur(opt.initial),
        rng(opt.seed ? opt.seed : std::random_device{}()), cur_copy(opt.initial) {}

  impair_options opt;
  util::clock* clk;
  net::io_context io{1};
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::thread thread;
  tcp::acceptor acceptor{io};
  net::steady_timer relisten_timer{io};
  tcp::endpoint bound;
  std::uint64_t accept_gen = 0;

  // Only on the io thread.
  impairment cur;
  std::mt19937_64 rng;
  std::unordered_map<connection*, std::shared_ptr<connection>> live;

  // For current() from any thread.
  mutable std::mutex cur_mu;
  impairment cur_copy;

  std::atomic<std::uint64_t> accepted{0}, rejected{0}, upstream_failures{0}, to_upstream{0}, to_client{0}, dropped{0},
      queued{0}, resets{0}, active{0};

  steady_time now() const { return clk->steady_now(); }

  // Runs f on the io thread and waits for its result.
  template <class F>
  auto on_io(F f) -> decltype(f()) {
    std::packaged_task<decltype(f())()> task(std::move(f));
    auto done = task.get_future();
    net::post(io, [&task] { task(); });
    return done.get();
  }

  result<void> listen();
  void stop_listening();
  void relisten();
  void do_accept();
  void on_accept(tcp::socket s);
  void apply(const impairment& next);
  std::size_t reset_all(bool count);
  void forget(connection* c);
  std::chrono::microseconds sample_delay();
};

namespace {

// One proxied connection: the client's socket, the upstream socket and a pipe
// per direction. Lives on the proxy's io thread; handlers hold shared_from_this.
class connection : public std::enable_shared_from_this<connection> {
public:
  connection(impair_proxy::impl& px, tcp::socket client)
      : px_(px), client_(std::move(client)), upstream_(px.io), connect_timer_(px.io), drain_timer_(px.io),
        up_(client_, upstream_, px.to_upstream, px.io), down_(upstream_, client_, px.to_client, px.io) {}

  void start() {
    auto self = shared_from_this();
    connect_timer_.expires_after(px_.opt.connect_timeout);
    connect_timer_.async_wait([this, self](boost::system::error_code ec) {
      if (!ec && state_ == state::connecting) fail_upstream();
    });
    upstream_.async_connect(px_.opt.upstream, [this, self](boost::system::error_code ec) {
      if (state_ != state::connecting) return;
      connect_timer_.cancel();
      if (ec) {
        fail_upstream();
        return;
      }
      state_ = state::open;
      boost::system::error_code ignored;
      client_.set_option(tcp::no_delay(true), ignored);
      upstream_.set_option(tcp::no_delay(true), ignored);
      for (pipe* p : {&up_, &down_}) {
        read(*p);
        pump(*p);
      }
    });
  }

  // The impairment changed: wake every waiting pipe so it re-evaluates.
  void changed(const impairment& before, const impairment& after) {
    if (state_ != state::open) return;
    for (pipe* p : {&up_, &down_}) {
      if (before.rate_bytes_per_s != after.rate_bytes_per_s) p->next_send = {};
      stop_waiting(*p);
      pump(*p);
    }
    if (after.reset_after_bytes > 0 && forwarded_ >= after.reset_after_bytes) reset_when_sent();
  }

  // Resets both sides now; `count` says whether it is an impairment reset.
  void reset(bool count) {
    if (state_ == state::closed) return;
    if (count) ++px_.resets;
    close(true);
  }

private:
  enum class state { connecting, open, draining, closed };

  struct chunk {
    std::vector<char> data;
    std::size_t offset = 0;
    steady_time due;
  };

  // One direction: reads from `from`, queues with due times, writes to `to`.
  struct pipe {
    pipe(tcp::socket& f, tcp::socket& t, std::atomic<std::uint64_t>& c, net::io_context& io)
        : from(f), to(t), counter(c), timer(io), buf(read_chunk_bytes) {}
    tcp::socket& from;
    tcp::socket& to;
    std::atomic<std::uint64_t>& counter;
    net::steady_timer timer;
    std::vector<char> buf;
    std::deque<chunk> q;
    std::uint64_t queued = 0;
    steady_time last_due{}, next_send{};
    std::uint64_t wait_gen = 0; // tells a cancelled wait's late handler apart from the current one
    bool reading = false, writing = false, waiting = false, eof = false, shut = false;
  };

  void fail_upstream() {
    ++px_.upstream_failures;
    close(true);
  }

  void read(pipe& p) {
    if (state_ != state::open || p.reading || p.eof) return;
    std::uint64_t room = px_.opt.max_queue_bytes - std::min(p.queued, px_.opt.max_queue_bytes);
    if (room == 0) return;
    auto want = static_cast<std::size_t>(std::min<std::uint64_t>(room, p.buf.size()));
    p.reading = true;
    p.from.async_read_some(net::buffer(p.buf.data(), want),
                           [this, self = shared_from_this(), &p](boost::system::error_code ec, std::size_t n) {
                             p.reading = false;
                             if (state_ != state::open) return;
                             if (ec == net::error::eof) {
                               p.eof = true;
                               pump(p);
                               return;
                             }
                             if (ec) {
                               close(true);
                               return;
                             }
                             on_data(p, n);
                             read(p);
                           });
  }

  void on_data(pipe& p, std::size_t n) {
    if (px_.cur.blackhole) {
      px_.dropped += n;
      return;
    }
    auto due = px_.now() + px_.sample_delay();
    due = std::max(due, p.last_due);
    p.last_due = due;
    p.q.push_back({std::vector<char>(p.buf.begin(), p.buf.begin() + static_cast<std::ptrdiff_t>(n)), 0, due});
    p.queued += n;
    px_.queued += n;
    pump(p);
  }

  void dequeue(pipe& p, std::uint64_t n) {
    p.queued -= n;
    px_.queued -= n;
  }

  void wait_until(pipe& p, steady_time t) {
    p.waiting = true;
    p.timer.expires_after(t - px_.now());
    p.timer.async_wait([this, self = shared_from_this(), &p, gen = p.wait_gen](boost::system::error_code) {
      if (gen != p.wait_gen) return;
      p.waiting = false;
      if (state_ == state::open) pump(p);
    });
  }

  void stop_waiting(pipe& p) {
    ++p.wait_gen;
    p.waiting = false;
    p.timer.cancel();
  }

  // Forwards what is due from p's queue, one write (or one wait) at a time.
  void pump(pipe& p) {
    if (state_ != state::open || p.writing || p.waiting) return;
    const impairment& imp = px_.cur;
    if (imp.blackhole && !p.q.empty()) {
      std::uint64_t n = 0;
      for (auto& c : p.q)
        n += c.data.size() - c.offset;
      p.q.clear();
      dequeue(p, n);
      px_.dropped += n;
      read(p);
    }
    if (p.q.empty()) {
      if (p.eof && !p.shut) {
        p.shut = true;
        boost::system::error_code ignored;
        p.to.shutdown(tcp::socket::shutdown_send, ignored);
        if (up_.shut && down_.shut) close(false);
      }
      return;
    }
    auto now = px_.now();
    chunk& c = p.q.front();
    if (c.due > now) {
      wait_until(p, c.due);
      return;
    }
    std::size_t len = c.data.size() - c.offset;
    if (imp.rate_bytes_per_s > 0) {
      if (p.next_send > now) {
        wait_until(p, p.next_send);
        return;
      }
      auto slice = std::clamp<std::uint64_t>(imp.rate_bytes_per_s / slices_per_second, 1, read_chunk_bytes);
      len = static_cast<std::size_t>(std::min<std::uint64_t>(len, slice));
      p.next_send = std::max(p.next_send, now) +
                    std::chrono::nanoseconds(static_cast<std::int64_t>(len * 1'000'000'000ull / imp.rate_bytes_per_s));
    }
    if (imp.reset_after_bytes > 0) {
      // Both directions share the budget: count what is already being written.
      if (committed_ >= imp.reset_after_bytes) return;
      len = static_cast<std::size_t>(std::min<std::uint64_t>(len, imp.reset_after_bytes - committed_));
    }
    committed_ += len;
    p.writing = true;
    net::async_write(p.to, net::buffer(c.data.data() + c.offset, len),
                     [this, self = shared_from_this(), &p](boost::system::error_code ec, std::size_t n) {
                       p.writing = false;
                       if (state_ == state::closed) return;
                       if (ec) {
                         close(true);
                         return;
                       }
                       forwarded_ += n;
                       p.counter += n;
                       chunk& front = p.q.front();
                       front.offset += n;
                       if (front.offset == front.data.size()) p.q.pop_front();
                       dequeue(p, n);
                       if (state_ != state::open) return;
                       auto limit = px_.cur.reset_after_bytes;
                       if (limit > 0 && forwarded_ >= limit) {
                         reset_when_sent();
                         return;
                       }
                       read(p);
                       pump(p);
                     });
  }

  // reset_after reached: stop forwarding, let the kernel deliver what was
  // written (bounded by reset_drain_limit), then reset both sides.
  void reset_when_sent() {
    if (state_ != state::open) return;
    state_ = state::draining;
    for (pipe* p : {&up_, &down_})
      stop_waiting(*p);
    drain_deadline_ = px_.now() + reset_drain_limit;
    poll_drained();
  }

  void poll_drained() {
    if (state_ != state::draining) return;
    if ((unsent_bytes(client_) == 0 && unsent_bytes(upstream_) == 0) || px_.now() >= drain_deadline_) {
      reset(true);
      return;
    }
    drain_timer_.expires_after(reset_drain_poll);
    drain_timer_.async_wait([this, self = shared_from_this()](boost::system::error_code) { poll_drained(); });
  }

  void close(bool rst) {
    if (state_ == state::closed) return;
    state_ = state::closed;
    connect_timer_.cancel();
    drain_timer_.cancel();
    for (pipe* p : {&up_, &down_}) {
      stop_waiting(*p);
      dequeue(*p, p->queued);
      p->q.clear();
    }
    boost::system::error_code ignored;
    if (rst) {
      reset_socket(client_);
      reset_socket(upstream_);
    } else {
      client_.close(ignored);
      upstream_.close(ignored);
    }
    px_.forget(this);
  }

  impair_proxy::impl& px_;
  tcp::socket client_, upstream_;
  net::steady_timer connect_timer_, drain_timer_;
  pipe up_, down_;
  state state_ = state::connecting;
  std::uint64_t forwarded_ = 0; // written to either destination
  std::uint64_t committed_ = 0; // forwarded_ plus writes in flight
  steady_time drain_deadline_{};
};

} // namespace

std::chrono::microseconds impair_proxy::impl::sample_delay() {
  std::chrono::microseconds d = cur.delay;
  if (cur.jitter.count() > 0) {
    auto j = std::chrono::duration_cast<std::chrono::microseconds>(cur.jitter).count();
    d += std::chrono::microseconds(std::uniform_int_distribution<std::int64_t>(-j, j)(rng));
  }
  return std::max(d, std::chrono::microseconds{0});
}

result<void> impair_proxy::impl::listen() {
  boost::system::error_code ec;
  tcp::acceptor a(io);
  a.open(bound.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(bound, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return ec;
  acceptor = std::move(a);
  do_accept();
  return {};
}

void impair_proxy::impl::stop_listening() {
  ++accept_gen;
  relisten_timer.cancel();
  boost::system::error_code ignored;
  acceptor.close(ignored);
}

// Listens again on the same port after `refuse` was lifted; retries while the
// port is taken (it should not be: it was ours a moment ago).
void impair_proxy::impl::relisten() {
  if (cur.refuse || acceptor.is_open()) return;
  if (auto r = listen(); !r) {
    spdlog::warn("impair: cannot listen on {} again: {}; retrying", to_string(bound), r.error().message());
    relisten_timer.expires_after(relisten_retry);
    relisten_timer.async_wait([this](boost::system::error_code ec) {
      if (!ec) relisten();
    });
  }
}

void impair_proxy::impl::do_accept() {
  acceptor.async_accept([this, gen = accept_gen](boost::system::error_code ec, tcp::socket s) {
    if (gen != accept_gen) return;
    if (!ec) {
      on_accept(std::move(s));
    } else if (ec == net::error::operation_aborted) {
      return;
    } else {
      // Out of descriptors or similar: try again a little later.
      spdlog::warn("impair: accept on {}: {}", to_string(bound), ec.message());
      relisten_timer.expires_after(relisten_retry);
      relisten_timer.async_wait([this, gen](boost::system::error_code e) {
        if (!e && gen == accept_gen) do_accept();
      });
      return;
    }
    do_accept();
  });
}

void impair_proxy::impl::on_accept(tcp::socket s) {
  if (cur.refuse || live.size() >= opt.max_connections) {
    ++rejected;
    reset_socket(s);
    return;
  }
  ++accepted;
  auto c = std::make_shared<connection>(*this, std::move(s));
  live.emplace(c.get(), c);
  active = live.size();
  c->start();
}

void impair_proxy::impl::forget(connection* c) {
  live.erase(c);
  active = live.size();
}

void impair_proxy::impl::apply(const impairment& next) {
  impairment before = cur;
  cur = next;
  {
    std::lock_guard lock(cur_mu);
    cur_copy = next;
  }
  if (next.refuse && !before.refuse) stop_listening();
  if (!next.refuse && before.refuse) relisten();
  std::vector<std::shared_ptr<connection>> all;
  for (auto& [p, c] : live)
    all.push_back(c);
  for (auto& c : all)
    c->changed(before, next);
}

std::size_t impair_proxy::impl::reset_all(bool count) {
  std::vector<std::shared_ptr<connection>> all;
  for (auto& [p, c] : live)
    all.push_back(c);
  for (auto& c : all)
    c->reset(count);
  return all.size();
}

boost::system::result<std::unique_ptr<impair_proxy>, error> impair_proxy::create(impair_options o) {
  auto bad = [](const std::string& why) { return error{make_error_code(errc::invalid_argument), "impair: " + why}; };
  if (!o.listen.address().is_loopback())
    return bad("listen address " + to_string(o.listen) + " is not a loopback address (use 127.0.0.1 or [::1])");
  if (o.upstream.port() == 0 || o.upstream.address().is_unspecified())
    return bad("upstream " + to_string(o.upstream) + " needs an address and a port other than 0");
  if (o.max_queue_bytes == 0) return bad("max_queue_bytes must be at least 1");
  if (o.max_connections == 0) return bad("max_connections must be at least 1");
  if (o.clock && std::string_view(o.clock->kind()) != "wall")
    return bad(std::string("the proxy needs a clock that follows real time, not a \"") + o.clock->kind() +
               "\" clock: its timers sleep in real time");
  auto p = std::make_unique<impl>(std::move(o));
  p->bound = p->opt.listen;
  if (auto r = p->listen(); !r)
    return error{r.error(), "impair: cannot listen on " + to_string(p->opt.listen) + ": " + r.error().message()};
  p->bound = p->acceptor.local_endpoint();
  if (p->cur.refuse) p->stop_listening();
  p->work.emplace(p->io.get_executor());
  p->thread = std::thread([io = &p->io] {
    util::name_this_thread("er-impair");
    io->run();
  });
  return std::unique_ptr<impair_proxy>(new impair_proxy(std::move(p)));
}

impair_proxy::impair_proxy(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

impair_proxy::~impair_proxy() {
  impl_->on_io([this] {
    impl_->stop_listening();
    impl_->reset_all(false);
  });
  impl_->work.reset();
  impl_->io.stop();
  impl_->thread.join();
  impl_->live.clear();
}

std::string impair_proxy::address() const { return to_string(impl_->bound); }
tcp::endpoint impair_proxy::local_endpoint() const { return impl_->bound; }

void impair_proxy::set(const impairment& i) {
  impl_->on_io([this, i] { impl_->apply(i); });
}

impairment impair_proxy::current() const {
  std::lock_guard lock(impl_->cur_mu);
  return impl_->cur_copy;
}

std::size_t impair_proxy::drop_all() {
  return impl_->on_io([this] { return impl_->reset_all(true); });
}

impair_counters impair_proxy::counters() const {
  impair_counters c;
  c.connections_accepted = impl_->accepted;
  c.connections_active = impl_->active;
  c.connections_rejected = impl_->rejected;
  c.upstream_failures = impl_->upstream_failures;
  c.bytes_to_upstream = impl_->to_upstream;
  c.bytes_to_client = impl_->to_client;
  c.bytes_dropped = impl_->dropped;
  c.queued_bytes = impl_->queued;
  c.resets = impl_->resets;
  return c;
}

} // namespace edgerelay::relay
