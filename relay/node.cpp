#include "relay/node.hpp"
#include "util/text.hpp"

#include "bandwidth/limiter.hpp"
#include "queue/store.hpp"
#include "relay/canary_driver.hpp"
#include "relay/file_watcher.hpp"
#include "relay/http_client.hpp"
#include "relay/node_metrics.hpp"
#include "relay/spool.hpp"
#include "telemetry/audit.hpp"
#include "transport/detail/openssl.hpp"
#include "transport/http_server.hpp"
#include "transport/relay_codec.hpp"
#include "transport/tls.hpp"
#include "transport/ws_client.hpp"
#include "util/bytes.hpp"
#include "util/checksum.hpp"
#include "util/thread_name.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/json.hpp>
#include <openssl/pem.h>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <atomic>
#include <cmath>
#include <condition_variable>
#include <fstream>
#include <future>
#include <iterator>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_set>

namespace edgerelay::relay {

namespace net = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;
using sys_ec = boost::system::error_code;

namespace {

std::string version_string() { return EDGERELAY_VERSION; }

// "<origin node id>:<origin seq>": a non-empty node id and a decimal sequence.
bool valid_segment_id(std::string_view id) {
  auto colon = id.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == id.size() || id.size() - colon > 21) return false;
  for (char c : id.substr(colon + 1))
    if (c < '0' || c > '9') return false;
  return true;
}

// The reserved stream of the canary soak; producers may not write to it.
constexpr std::string_view canary_stream = "_canary";

transport::tls_files to_transport(const tls_files& f, const std::vector<allow_rule>& allow = {}) {
  transport::tls_files t;
  t.cert = f.cert;
  t.key = f.key;
  t.ca = f.ca;
  t.crl = f.crl;
  for (auto& a : allow)
    t.allow.push_back(a.to_string());
  return t;
}

// A forwarder's state as /v1/status names it.
enum peer_state : int { connecting, connected, backing_off, disabled, holding_quota, outside_window };
const char* state_name(int s) {
  static const char* names[] = {"connecting", "connected", "backoff", "disabled", "holding_quota", "outside_window"};
  return names[s];
}

telemetry::audit_rotation audit_rotation_of(const node_config& c) {
  return {c.node.audit_log_max_bytes, c.node.audit_log_keep};
}

// node.audit_log, its directory created if absent.
boost::system::result<std::unique_ptr<telemetry::audit_log>, error> open_audit_log(const node_config& c,
                                                                                   util::clock& clk) {
  std::error_code ec;
  std::filesystem::create_directories(c.node.audit_log.parent_path(), ec);
  if (ec)
    return error{ec, "node.audit_log: cannot create " + c.node.audit_log.parent_path().string() + ": " + ec.message()};
  auto a = telemetry::audit_log::open(c.node.audit_log, c.node.id, clk, audit_rotation_of(c));
  if (!a) return error{a.error().code, "node.audit_log: " + a.error().message};
  return std::move(*a);
}

bandwidth::policy to_policy(const bandwidth_section& b) {
  bandwidth::policy p;
  p.rate_bytes_per_s = b.rate;
  p.burst_bytes = b.burst;
  p.daily_quota_bytes = b.daily_quota;
  p.quota_reset.since_midnight = b.quota_reset;
  for (auto& w : b.send_windows)
    p.send_windows.push_back({{w.start}, {w.end}});
  return p;
}

} // namespace

// A peer's forwarder: what the status shows of it and how to stop it.
class forwarder {
public:
  virtual ~forwarder() = default;
  virtual void start() = 0;
  virtual void stop() = 0;
  virtual void notify() = 0; // new data may be queued
  virtual json::object status() const = 0;
  // Applies settings that need no new connection (window, batch_max_bytes,
  // dial_timeout, ack_timeout, streams, bandwidth); any thread.
  virtual void reconfigure(const peer_section& p) = 0;
  // The TLS material its connections use (null for file:// sinks).
  virtual transport::tls_material* tls() { return nullptr; }
  // The material was reloaded: check the live connection's server against
  // the new trust material and close it if it is no longer trusted. Any thread.
  virtual void recheck_peer() {}
};

// What a peer's forwarder shares with the node and outlives a forwarder that
// a reload replaces: the bandwidth limiter and the byte counters.
struct peer_shared {
  std::shared_ptr<bandwidth::limiter> limiter;
  std::atomic<std::uint64_t> wire_bytes{0};         // on the wire: after compression, framing included
  std::atomic<std::uint64_t> uncompressed_bytes{0}; // the same messages before compression
  std::atomic<std::uint64_t> quota_saved_version{0};
  peer_metrics metrics; // this peer's series on the delivery path

  // Bytes a sink without compression wrote: on the wire as they are.
  void count_wire(std::uint64_t bytes) {
    limiter->consume(bytes);
    wire_bytes += bytes;
    uncompressed_bytes += bytes;
  }
};

// One configured peer at run time. Immutable once published in
// node::impl::peers; a reload publishes new ones.
struct peer_runtime {
  peer_section cfg;
  queue::peer_id id = 0;
  bool removed = false; // dropped from the config by a reload: not routed, forwarder stopped, data kept
  std::shared_ptr<peer_shared> shared;
  std::shared_ptr<forwarder> fwd;
};
using peer_list = std::vector<std::shared_ptr<const peer_runtime>>;

struct node::impl {
  // The config the node started with. Only what a reload cannot change is
  // read from it after start (node, queue limits, listen addresses); what can
  // change is in `peers` and `live`.
  node_config cfg;
  util::clock* clk;
  unsigned threads;
  // Before the store and everything else: the store's observers and the
  // forwarders keep references into it.
  node_metrics mx;
  std::unique_ptr<queue::store> store;
  // The canary soak (relay/canary_driver.hpp): after the store, so it goes first.
  std::shared_ptr<canary_driver> canary;
  std::unique_ptr<telemetry::audit_log> audit; // node.audit_log; opened by create(), never null after it
  mutable std::mutex live_mu;                  // guards peers and live (copy the pointer, then read without the lock)
  std::shared_ptr<const peer_list> peers = std::make_shared<peer_list>();
  std::shared_ptr<const node_config> live; // the config in force (after reloads)
  std::mutex reload_mu;                    // one reload at a time
  // Declared before io on purpose: members are destroyed in reverse order, so
  // the io_context (and with it every pending handler that still holds a
  // session) goes first, while the handlers and TLS material those sessions
  // refer to still exist. A session keeps its server alive itself.
  std::unique_ptr<transport::tls_material> listen_tls, ingest_tls, admin_tls;
  std::unique_ptr<transport::http_handler> ingest_h, listen_h, admin_h;
  net::io_context io;
  std::shared_ptr<transport::http_server> ingest_srv, listen_srv, admin_srv; // their acceptors need io
  std::optional<net::executor_work_guard<net::io_context::executor_type>> work;
  std::vector<std::thread> pool;
  // The admin listener's slow answers (a /metrics scrape reads up to 100,000
  // records per peer for the oldest segment's age; status, dead-letter
  // pages) run on a thread of their own, so that a scrape never holds up an
  // io thread that carries ingest and relay traffic.
  net::io_context admin_io;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> admin_work;
  std::thread admin_thread;
  std::optional<net::steady_timer> quota_timer;
  std::optional<net::steady_timer> watchdog_timer;
  std::optional<net::steady_timer> maintenance_timer;

  // TLS material by name ("listen", "ingest", "admin", "peer:<name>"): what
  // rotations did to it. Guarded by tls_mu.
  struct tls_slot {
    std::uint64_t rotations = 0, failures = 0;
    std::string last_error; // the last failed reload, until a reload succeeds
    std::int64_t last_rotation_ms = 0;
    std::uint64_t fingerprint = 0;  // of the contents of the files in force
    std::uint64_t crl_checksum = 0; // of the CRL file alone (a CRL reload is its own audit event)
  };
  mutable std::mutex tls_mu;
  std::mutex tls_refresh_mu; // one refresh at a time (the watcher's thread, reloads)
  std::map<std::string, tls_slot> tls_slots;
  std::unique_ptr<file_watcher> watcher;
  // Live relay sessions on the TLS listeners, to close those whose client a
  // reloaded CRL or CA no longer trusts.
  struct live_session {
    std::string listener;
    std::weak_ptr<transport::ws_channel> ch;
    std::shared_ptr<const transport::peer_certificates> certs;
    std::string who;
  };
  std::mutex sessions_mu;
  std::vector<live_session> sessions;
  std::chrono::microseconds watchdog_interval{0};
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

  std::shared_ptr<const peer_list> peers_now() const {
    std::lock_guard lk(live_mu);
    return peers;
  }
  std::shared_ptr<const node_config> config_now() const {
    std::lock_guard lk(live_mu);
    return live;
  }
  static std::vector<queue::peer_id> route(const peer_list& ps, std::string_view stream) {
    std::vector<queue::peer_id> out;
    for (auto& p : ps)
      if (!p->removed && p->cfg.routes(stream)) out.push_back(p->id);
    return out;
  }
  std::vector<queue::peer_id> route(std::string_view stream) const { return route(*peers_now(), stream); }
  void notify_all() {
    for (auto& p : *peers_now())
      if (p->fwd) p->fwd->notify();
  }
  // Persists a quota state that changed since it was last saved (async).
  void save_quota(const peer_runtime& p) {
    auto& sh = *p.shared;
    auto v = sh.limiter->quota_version();
    if (v == sh.quota_saved_version.load()) return;
    auto q = sh.limiter->export_quota();
    store->save_quota_state(p.id, q.state.period_start_unix_ms, q.state.used_bytes, nullptr);
    sh.quota_saved_version = q.version;
  }
  void save_quotas() {
    for (auto& p : *peers_now())
      save_quota(*p);
  }
  void schedule_quota_save() {
    quota_timer->expires_after(200ms);
    quota_timer->async_wait([this](sys_ec ec) {
      if (ec) return;
      save_quotas();
      schedule_quota_save();
    });
  }
  // Dead-letter retention and dedupe-window expiry (store::maintenance), at a
  // tenth of the shorter of the two, between 1 s and 60 s.
  std::chrono::milliseconds maintenance_interval() const {
    auto shorter = std::min(cfg.queue.deadletter_retention, cfg.queue.dedupe_window);
    return std::clamp<std::chrono::milliseconds>(shorter / 10, 1s, 60s);
  }
  void schedule_maintenance() {
    maintenance_timer->expires_after(maintenance_interval());
    maintenance_timer->async_wait([this](sys_ec ec) {
      if (ec) return;
      store->maintenance([](const auto& r) {
        if (!r)
          spdlog::error("store maintenance failed: {}", r.error().message());
        else if (r->deadletter_purged)
          spdlog::info("dead-letter retention: {} segment(s) older than queue.deadletter_retention purged",
                       r->deadletter_purged);
      });
      schedule_maintenance();
    });
  }
  // systemd's watchdog (WatchdogSec=): pinged from the event loop at half
  // the interval, so a loop that stops turning stops the pings.
  void schedule_watchdog() {
    watchdog_timer->expires_after(watchdog_interval / 2);
    watchdog_timer->async_wait([this](sys_ec ec) {
      if (ec) return;
      sd_notify(0, "WATCHDOG=1");
      schedule_watchdog();
    });
  }
  boost::system::result<std::shared_ptr<forwarder>, error> make_forwarder(const peer_section& p, queue::peer_id id,
                                                                          std::shared_ptr<peer_shared> shared);
  boost::system::result<reload_report, config_errors> reload();
  // A TLS handshake or authorisation refused: by a listener, or "peer:<name>"
  // for a server this node refused as a client.
  void count_refused(std::string_view listener, std::string_view reason) {
    mx.m.tls_handshake_failures.labels({listener, reason}).inc();
  }
  std::shared_ptr<peer_shared> new_peer_shared(const std::string& name) {
    auto sh = std::make_shared<peer_shared>();
    sh->metrics = mx.for_peer(name);
    return sh;
  }
  std::int64_t now_ms() const {
    return std::chrono::duration_cast<std::chrono::milliseconds>(clk->system_now().time_since_epoch()).count();
  }
  void collect_metrics();

  transport::tls_material* tls_material_of(const std::string& name, std::shared_ptr<forwarder>& keep) const;
  std::vector<watch_group> watch_groups() const;
  // Re-reads the named material's files; when their contents changed, builds
  // the new context (the old one stays on failure), counts the rotation and
  // re-checks the live sessions it authenticates. Any thread.
  // Returns 0 unchanged (or first sight), 1 applied, -1 refused (message says why).
  int refresh_tls(const std::string& name, const char* cause, std::string* message = nullptr);
  void refresh_all_tls(const char* cause);
  void track_session(const char* listener, const std::shared_ptr<transport::ws_channel>& ch,
                     const transport::connection_info& who);
  void recheck_sessions(const std::string& listener, const transport::tls_material& m);
  json::array tls_status() const;
  std::vector<std::string> readiness_problems() const;
  json::object status() const;
  std::string metrics() const;
};

// ------------------------------------------------------------ file sink

namespace {

// A forwarder that delivers on a thread of its own (blocking I/O: fsync, a
// synchronous HTTPS call). Derived classes start the thread with launch(),
// call stop() in their destructor, and wait between rounds with pause().
class threaded_forwarder : public forwarder {
public:
  void stop() override {
    {
      std::lock_guard lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void notify() override {
    {
      std::lock_guard lk(mu_);
      poked_ = true;
    }
    cv_.notify_all();
  }
  void reconfigure(const peer_section& p) override {
    std::lock_guard lk(mu_);
    cfg_ = p;
  }

protected:
  threaded_forwarder(node::impl& n, const peer_section& p, queue::peer_id id, std::shared_ptr<peer_shared> shared)
      : n_(n), id_(id), shared_(std::move(shared)), name_(p.name), cfg_(p) {}

  peer_section config() const {
    std::lock_guard lk(mu_);
    return cfg_;
  }
  // Waits until the bandwidth budget lets `bytes` go (1: "is anything allowed
  // at all?"), showing holding_quota / outside_window meanwhile. False when
  // stopping.
  bool wait_budget(std::uint64_t bytes) {
    for (;;) {
      auto d = shared_->limiter->check(bytes);
      if (d.allowed) {
        std::lock_guard lk(mu_);
        if (state_ == holding_quota || state_ == outside_window) state_ = connected;
        return true;
      }
      settle(); // what was sent before the hold is accounted for before the hold shows
      {
        std::lock_guard lk(mu_);
        if (d.reason == bandwidth::hold_reason::quota) state_ = holding_quota;
        if (d.reason == bandwidth::hold_reason::outside_window) state_ = outside_window;
      }
      // Re-check at least every 50 ms: the limiter is the authority, and a
      // manual clock in tests moves without waking anyone.
      auto wait = std::clamp<std::chrono::nanoseconds>(d.retry_at - n_.clk->steady_now(), 1ms, 50ms);
      std::unique_lock lk(mu_);
      if (cv_.wait_for(lk, wait, [&] { return stopping_; })) return false;
    }
  }
  void count_wire(std::uint64_t bytes) { shared_->count_wire(bytes); }

  // Completes whatever the forwarder still has in flight (called before a
  // bandwidth hold is shown).
  virtual void settle() {}

  template <class F>
  void launch(F&& body) {
    thread_ = std::thread([name = "er-fwd-" + name_, body = std::forward<F>(body)]() mutable {
      util::name_this_thread(name);
      body();
    });
  }
  bool stopping() {
    std::lock_guard lk(mu_);
    return stopping_;
  }
  // Waits up to d or until notify()/stop(); false when stopping.
  bool pause(std::chrono::milliseconds d) {
    std::unique_lock lk(mu_);
    cv_.wait_for(lk, d, [&] { return stopping_ || poked_; });
    poked_ = false;
    return !stopping_;
  }
  node::impl& n_;
  queue::peer_id id_;
  std::shared_ptr<peer_shared> shared_;
  const std::string name_;
  mutable std::mutex mu_; // guards the members below and what status() reads
  peer_section cfg_;      // the settings in force (reconfigure() replaces them)
  std::condition_variable cv_;
  bool stopping_ = false, poked_ = false;
  int state_ = connecting;

private:
  std::thread thread_;
};

// The spool a file:// sink writes, shared by its thread (the queue path)
// and the store's writer (the direct path). One append at a time.
struct spool_slot {
  std::mutex mu;
  std::unique_ptr<spool_writer> w; // set once, before either path uses the slot

  // Appends `recs` (see spool_writer::append); `wire` gets the bytes written.
  boost::system::result<void, error> append(std::span<const spool_input> recs, std::uint64_t& wire) {
    std::lock_guard lk(mu);
    const auto before = w->bytes_written();
    auto r = w->append(recs);
    wire = w->bytes_written() - before;
    return r;
  }
  std::uint64_t bytes_written() {
    std::lock_guard lk(mu);
    return w ? w->bytes_written() : 0;
  }
};

// The file sink's direct path (queue::store::set_direct_sink; docs/spool.md,
// "Direct delivery"). While the peer's queue is empty, the store's writer
// appends the segments routed to this peer alone to the spool itself, inside
// the transaction that accepts them, so a hub writes each segment once (the
// spool) instead of three times (the queue, the spool, the queue's delete).
// Off while the peer has a rate, a quota or send windows, and after a failed
// append until the sink's own path has appended again.
class spool_direct final : public queue::direct_sink {
public:
  spool_direct(std::shared_ptr<spool_slot> spool, std::shared_ptr<peer_shared> shared, util::clock& clk,
               std::string name)
      : spool_(std::move(spool)), shared_(std::move(shared)), clk_(clk), name_(std::move(name)) {}

  bool ready() override {
    if (!enabled.load(std::memory_order_acquire)) return false;
    auto p = shared_->limiter->current_policy();
    return p.get_mode() == bandwidth::mode::unlimited && p.send_windows.empty();
  }
  boost::system::result<void, error> deliver(std::span<const queue::segment_view> segs) override {
    std::uint64_t wire = 0;
    if (auto r = spool_->append(segs, wire); !r) {
      enabled = false;
      spdlog::warn("peer {}: direct spool append failed, the segments are queued instead: {}", name_,
                   r.error().message);
      return r.error();
    }
    shared_->count_wire(wire);
    shared_->metrics.attempt(attempt_result::ok);
    const auto now =
        std::chrono::duration_cast<std::chrono::milliseconds>(clk_.system_now().time_since_epoch()).count();
    for (auto& s : segs)
      shared_->metrics.delivered(s.created_ms, now);
    return {};
  }
  std::atomic<bool> enabled{true};

private:
  std::shared_ptr<spool_slot> spool_;
  std::shared_ptr<peer_shared> shared_;
  util::clock& clk_;
  const std::string name_;
};

// Delivers a peer's queue into a durable spool directory. Runs on its own
// thread because every append is fsynced before the segments are acked.
//
// The acknowledgement of a spooled batch (an LMDB commit, fsynced) overlaps
// the next batch's append and fsync: at most one ack is in flight, so at most
// two batches are in the spool and still queued at any instant. A crash
// there leaves them queued; on restart the writer reads the ids at the end
// of the spool and the first batches skip what is already written, so a
// crash of the sink delivers nothing twice.
//
// Segments routed to this peer alone skip the queue while it is empty
// (spool_direct). A crash between such an append and the commit that counts
// it leaves them spooled and uncounted: on restart the ids at the spool's
// end that the store neither received nor queued are counted delivered
// (store::recover_direct) before the direct path is turned on again.
class file_forwarder final : public threaded_forwarder {
public:
  static constexpr std::size_t max_batch_segments = 4096;
  static constexpr std::size_t max_acks_in_flight = 1;
  // The ids read back from the spool's end at start: the queue path's
  // unacknowledged batches and one transaction's direct deliveries.
  static constexpr std::size_t recent_ids =
      (max_acks_in_flight + 1) * max_batch_segments + queue::store::direct_max_segments;

  file_forwarder(node::impl& n, const peer_section& p, queue::peer_id id, std::shared_ptr<peer_shared> shared)
      : threaded_forwarder(n, p, id, std::move(shared)) {}
  ~file_forwarder() override { stop(); }

  void start() override {
    auto w = spool_writer::open(cfg_.spool_dir, 64ull << 20, recent_ids);
    if (!w) {
      std::lock_guard lk(mu_);
      last_error_ = w.error().message;
      state_ = disabled;
      spdlog::error("peer {}: {}", name_, last_error_);
      return;
    }
    spool_->w = std::move(*w);
    auto& tail = spool_->w->recent_ids();
    recent_.insert(tail.begin(), tail.end());
    state_ = connected;
    direct_ = std::make_shared<spool_direct>(spool_, shared_, *n_.clk, name_);
    // The direct path goes on once the crash's leftovers are counted.
    n_.store->recover_direct(
        id_, tail, [reg = reg_, st = n_.store.get(), id = id_, d = direct_, name = name_](result<std::uint64_t> r) {
          if (!r) {
            spdlog::error("peer {}: direct delivery stays off: counting what the spool holds failed: {}", name,
                          r.error().message());
            return;
          }
          if (*r)
            spdlog::warn("peer {}: {} segment(s) at the spool's end were delivered directly before a crash kept their "
                         "commit; counted delivered",
                         name, *r);
          std::lock_guard lk(reg->mu);
          if (!reg->stopped) st->set_direct_sink(id, d);
        });
    launch([this] {
      run();
      settle();
    });
  }
  void stop() override {
    {
      std::lock_guard lk(reg_->mu);
      reg_->stopped = true;
      n_.store->set_direct_sink(id_, nullptr);
    }
    threaded_forwarder::stop();
  }
  json::object status() const override {
    const std::uint64_t bytes = spool_->bytes_written();
    std::lock_guard lk(mu_);
    json::object o;
    o["state"] = state_name(state_);
    o["last_error"] = last_error_;
    o["last_conn_bytes"] = bytes;
    o["last_conn_ms"] = 0;
    return o;
  }

private:
  void run() {
    for (;;) {
      if (stopping()) return;
      if (!wait_budget(1)) return;
      // The records go from the store's map straight into the spool, inside
      // the read (no copy of the batch first); acks and nacks come after it.
      spooled o;
      auto b = n_.store->read_batch_visit(id_, max_batch_segments, config().batch_max_bytes,
                                          [&](std::span<const queue::segment_out> segs) { spool(segs, o); });
      if (!b || b->segments == 0) {
        if (!pause(50ms)) return;
        continue;
      }
      auto& keys = o.keys;
      if (o.held) {
        n_.store->release(id_, keys);
        if (!wait_budget(o.held)) return;
        continue;
      }
      if (o.appended) {
        if (*o.appended && direct_) direct_->enabled = true; // the spool takes appends again
        count_wire(o.wire);
        {
          std::lock_guard lk(mu_);
          if (state_ == holding_quota || state_ == outside_window) state_ = connected;
        }
        if (auto& r = *o.appended; !r) {
          {
            std::lock_guard lk(mu_);
            last_error_ = r.error().message;
            state_ = backing_off;
          }
          spdlog::error("peer {}: {}", name_, r.error().message);
          shared_->metrics.attempt(attempt_result::error);
          n_.store->nack_wait(id_, keys, r.error().message);
          std::unique_lock lk(mu_);
          cv_.wait_for(lk, 1s, [&] { return stopping_; });
          state_ = connected;
          continue;
        }
      }
      wait_acks(max_acks_in_flight - 1);
      {
        std::lock_guard lk(mu_);
        ++acks_in_flight_;
      }
      n_.store->ack(id_, std::move(keys), [this, created = std::move(o.created)](boost::system::error_code ec) {
        if (!ec) {
          shared_->metrics.attempt(attempt_result::ok);
          const auto now = n_.now_ms();
          for (auto c : created)
            shared_->metrics.delivered(c, now);
        }
        {
          std::lock_guard lk(mu_);
          if (ec) last_error_ = "ack after spool write failed: " + ec.message();
          --acks_in_flight_;
        }
        cv_.notify_all();
      });
    }
  }
  // What spool() did with one batch it was shown.
  struct spooled {
    std::vector<std::uint64_t> keys;
    std::vector<std::int64_t> created;
    std::uint64_t held = 0; // bytes the budget did not allow yet: nothing was written
    std::uint64_t wire = 0; // bytes written to the spool
    std::optional<boost::system::result<void, error>> appended; // set when an append was tried
  };
  // Appends a batch to the spool while the store shows it (inside its read:
  // no calls into the store here). Skips what a crash left spooled; holds
  // the whole batch when the budget does not allow its bytes at once (the
  // caller releases it, waits and reads it again).
  void spool(std::span<const queue::segment_out> segs, spooled& o) {
    std::vector<spool_input> recs;
    recs.reserve(segs.size());
    o.keys.reserve(segs.size());
    o.created.reserve(segs.size());
    std::uint64_t bytes = 0;
    bool all_known = !recent_.empty();
    for (auto& s : segs) {
      o.keys.push_back(s.key);
      o.created.push_back(s.created_ms);
      if (!recent_.empty() && recent_.count(std::string(s.id))) continue; // spooled before a crash
      all_known = false;
      recs.push_back({s.id, s.stream, s.created_ms, s.checksum, s.payload});
      bytes += s.payload.size() + s.id.size() + s.stream.size();
    }
    if (!recs.empty() && !shared_->limiter->check(bytes).allowed) {
      o.held = bytes;
      return;
    }
    // What a crash left spooled and queued is the head of the queue; once a
    // batch goes past it, nothing later can be in the spool.
    if (!recent_.empty() && !all_known) recent_.clear();
    if (recs.empty()) return;
    o.appended = spool_->append(recs, o.wire);
  }

  void settle() override { wait_acks(0); }
  // Waits until at most n acknowledgements are in flight.
  void wait_acks(std::size_t n) {
    std::unique_lock lk(mu_);
    cv_.wait(lk, [&] { return acks_in_flight_ <= n; });
  }

  // Whether the direct path may be registered: not once stop() began.
  struct registration {
    std::mutex mu;
    bool stopped = false;
  };
  std::shared_ptr<spool_slot> spool_ = std::make_shared<spool_slot>();
  std::shared_ptr<spool_direct> direct_;
  std::shared_ptr<registration> reg_ = std::make_shared<registration>();
  std::unordered_set<std::string> recent_; // ids at the spool's end when it was opened
  std::size_t acks_in_flight_ = 0;
  std::string last_error_;
};

// ------------------------------------------------------------ https sink

// POSTs a peer's queue to any HTTPS endpoint as JSON batches
// ({"segments": [{"id", "stream", "created_at", "checksum", "payload_base64"}]})
// over mutual TLS. 2xx: delivered. 4xx: the endpoint refuses the data, so
// retrying cannot help: dead-letter with reason http_<status>. 5xx, timeouts
// and connection errors: an attempt failed; retried with backoff.
class https_forwarder final : public threaded_forwarder {
public:
  https_forwarder(node::impl& n, const peer_section& p, queue::peer_id id, std::shared_ptr<peer_shared> shared,
                  std::unique_ptr<transport::tls_material> tls)
      : threaded_forwarder(n, p, id, std::move(shared)), tls_(std::move(tls)) {}
  ~https_forwarder() override { stop(); }
  transport::tls_material* tls() override { return tls_.get(); } // each POST is a new connection

  void start() override {
    state_ = connecting;
    launch([this] { run(); });
  }
  json::object status() const override {
    std::lock_guard lk(mu_);
    return json::object{{"state", state_name(state_)},
                        {"last_error", last_error_},
                        {"last_conn_bytes", last_bytes_},
                        {"last_conn_ms", last_ms_}};
  }

private:
  void run() {
    unsigned failures = 0;
    std::mt19937 rng{std::random_device{}()};
    for (;;) {
      if (stopping()) return;
      if (!wait_budget(1)) return;
      auto cfg = config();
      auto b = n_.store->read_batch(id_, 4096, cfg.batch_max_bytes);
      if (!b || b->segments.empty()) {
        if (!pause(50ms)) return;
        continue;
      }
      json::array segs;
      std::vector<std::uint64_t> keys;
      for (auto& sg : b->segments) {
        segs.push_back(json::object{{"id", sg.id},
                                    {"stream", sg.stream},
                                    {"created_at", sg.created_ms},
                                    {"checksum", util::checksum_hex(sg.checksum)},
                                    {"payload_base64", util::base64(sg.payload)}});
        keys.push_back(sg.key);
      }
      std::string body = json::serialize(json::object{{"segments", std::move(segs)}});
      if (!wait_budget(body.size())) {
        n_.store->release(id_, keys);
        return;
      }
      count_wire(body.size());
      auto t0 = std::chrono::steady_clock::now();
      auto ctx = tls_->current();
      auto r = https_call(*ctx, "POST", cfg.host, cfg.port, cfg.target.empty() ? "/" : cfg.target,
                          cfg.server_name.empty() ? cfg.host : cfg.server_name, body, "application/json",
                          cfg.dial_timeout + cfg.ack_timeout);
      {
        std::lock_guard lk(mu_);
        last_bytes_ = body.size();
        last_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
      }
      if (r && r->status >= 200 && r->status < 300) {
        if (!n_.store->ack_wait(id_, keys)) {
          shared_->metrics.attempt(attempt_result::ok);
          const auto now = n_.now_ms();
          for (auto& sg : b->segments)
            shared_->metrics.delivered(sg.created_ms, now);
        }
        failures = 0;
        std::lock_guard lk(mu_);
        state_ = connected;
        continue;
      }
      std::string why = r ? "HTTP " + std::to_string(r->status) + ": " + r->body.substr(0, 200) : r.error().message;
      if (r && r->status >= 400 && r->status < 500) {
        std::vector<queue::rejected_item> items;
        for (auto k : keys)
          items.push_back({k, "http_" + std::to_string(r->status), why});
        shared_->metrics.attempt(attempt_result::rejected);
        n_.store->reject_wait(id_, std::move(items));
        std::lock_guard lk(mu_);
        last_error_ = why;
        continue;
      }
      spdlog::warn("peer {}: {}", cfg.name, why);
      shared_->metrics.attempt(attempt_result::error);
      n_.store->nack_wait(id_, keys, why);
      {
        std::lock_guard lk(mu_);
        state_ = backing_off;
        last_error_ = why;
      }
      double d = std::min(30000.0, 200.0 * std::pow(2.0, std::min(++failures, 8u) - 1.0));
      d *= std::uniform_real_distribution<double>(0.8, 1.2)(rng);
      std::unique_lock lk(mu_);
      if (cv_.wait_for(lk, std::chrono::milliseconds(static_cast<std::int64_t>(d)), [&] { return stopping_; })) return;
    }
  }

  std::unique_ptr<transport::tls_material> tls_;
  std::string last_error_;
  std::uint64_t last_bytes_ = 0;
  std::int64_t last_ms_ = 0;
};

// ------------------------------------------------------------ relay forwarder

// Sends a peer's queue over the relay protocol (WebSocket over mTLS): a
// window of unacknowledged batches, ACK results applied to the store, an ACK
// timeout that closes the connection, and reconnects with exponential
// backoff and jitter. A failed dial or a lost connection counts an attempt
// for the segments it concerned, so an outage ends in the dead-letter store
// after max_retry attempts instead of queueing forever.
class relay_forwarder final : public forwarder, public std::enable_shared_from_this<relay_forwarder> {
public:
  relay_forwarder(node::impl& n, const peer_section& p, queue::peer_id id, std::shared_ptr<peer_shared> shared,
                  std::unique_ptr<transport::tls_material> tls)
      : n_(n), cfg_(p), id_(id), shared_(std::move(shared)), tls_(std::move(tls)), strand_(net::make_strand(n.io)),
        timer_(strand_), tick_(strand_), hold_timer_(strand_) {}

  void start() override {
    net::post(strand_, [self = shared_from_this()] {
      self->dial();
      self->schedule_tick();
    });
  }
  void stop() override {
    std::promise<void> done;
    net::post(strand_, [self = shared_from_this(), &done] {
      self->stopping_ = true;
      self->timer_.cancel();
      self->tick_.cancel();
      self->hold_timer_.cancel();
      if (self->ch_) self->ch_->close("node stopping");
      self->release_inflight();
      done.set_value();
    });
    done.get_future().wait_for(5s);
  }
  void notify() override {
    net::post(strand_, [self = shared_from_this()] { self->pump(); });
  }
  void reconfigure(const peer_section& p) override {
    net::post(strand_, [self = shared_from_this(), p] {
      self->cfg_ = p;
      self->pump();
    });
  }
  json::object status() const override {
    std::lock_guard lk(mu_);
    json::object o;
    o["state"] = state_name(state_);
    o["last_error"] = last_error_;
    o["last_conn_bytes"] = last_conn_bytes_;
    o["last_conn_ms"] = last_conn_ms_;
    o["connections"] = connections_;
    return o;
  }

private:
  struct inflight {
    std::vector<std::uint64_t> keys;
    std::chrono::steady_clock::time_point sent;
    std::vector<std::int64_t> created_ms; // per key, for the delivery latency
  };

  transport::tls_material* tls() override { return tls_.get(); }
  void recheck_peer() override {
    net::post(strand_, [self = shared_from_this()] {
      if (!self->ch_) return;
      auto certs = self->ch_->peer_certs();
      if (!certs) return;
      std::string detail;
      auto f = certs->reverify(*self->tls_->current(), &detail);
      if (f == transport::tls_failure::none) return;
      std::string why = std::string("the server's certificate is no longer trusted after the TLS material was "
                                    "reloaded (") +
                        transport::to_string(f) + "): " + detail;
      spdlog::warn("peer {}: {}", self->cfg_.name, why);
      self->n_.mx.sessions_closed.labels({"peer:" + self->cfg_.name, transport::to_string(f)}).inc();
      self->ch_->close(why);
    });
  }

  void set_state(int s, std::string err = {}) {
    std::lock_guard lk(mu_);
    state_ = s;
    if (!err.empty()) last_error_ = std::move(err);
  }

  void dial() {
    if (stopping_) return;
    set_state(connecting);
    transport::ws_target t{cfg_.host, cfg_.port, cfg_.target.empty() ? "/v1/relay" : cfg_.target, cfg_.server_name};
    transport::ws_options wo;
    wo.idle_timeout = std::max<std::chrono::milliseconds>(cfg_.ack_timeout, 5s);
    conn_started_ = std::chrono::steady_clock::now();
    transport::ws_dial(n_.io, t, tls_->current(), wo, cfg_.dial_timeout,
                       [self = shared_from_this()](transport::dial_result r) {
                         net::post(self->strand_, [self, r = std::move(r)]() mutable { self->on_dial(std::move(r)); });
                       });
  }

  void on_dial(transport::dial_result r) {
    if (stopping_) {
      if (r) (*r)->close("node stopping");
      return;
    }
    if (!r) {
      spdlog::warn("peer {}: {}", cfg_.name, r.error().message);
      fail_attempt(r.error().message);
      backoff(r.error().message);
      // Counted after the status says why: whoever sees the counter move
      // finds the reason in the peer's last_error.
      if (r.error().reason.rfind("tls:", 0) == 0) {
        n_.count_refused("peer:" + cfg_.name, r.error().reason.substr(4));
        n_.audit->auth_denied("peer:" + cfg_.name, cfg_.host + ":" + std::to_string(cfg_.port), "",
                              r.error().reason.substr(4), r.error().message);
      }
      return;
    }
    ch_ = *r;
    auto self = shared_from_this();
    auto gen = ++generation_;
    // The callbacks hold the forwarder weakly: the node owns it, and a
    // channel left open by a stopped io_context must not keep it alive.
    std::weak_ptr<relay_forwarder> weak = self;
    ch_->start({[weak, gen](std::string&& m) {
                  if (auto s = weak.lock())
                    net::post(s->strand_, [s, gen, m = std::move(m)] {
                      if (gen == s->generation_) s->on_message(m);
                    });
                },
                [weak, gen](const sys_ec&, const std::string& why) {
                  if (auto s = weak.lock())
                    net::post(s->strand_, [s, gen, why] {
                      if (gen == s->generation_) s->on_closed(why);
                    });
                }});
    hello_.node_id = n_.cfg.node.id;
    hello_.versions = {transport::relay_protocol_version};
    hello_.compressions.clear();
    if (cfg_.compression == compression_codec::zstd) hello_.compressions.push_back(transport::compression_zstd);
    hello_.compressions.push_back(transport::compression_none);
    hello_.max_window = cfg_.window;
    hello_.max_batch_bytes = cfg_.batch_max_bytes;
    std::string out;
    if (auto e = transport::encode_hello(hello_, out); !e) return ch_->close("hello: " + e.error().message);
    ch_->send(std::move(out));
  }

  // The peer is unreachable: count an attempt for the next batch so an
  // outage reaches the dead-letter store after max_retry attempts.
  void fail_attempt(const std::string& why) {
    auto b = n_.store->read_batch(id_, 4096, cfg_.batch_max_bytes);
    if (!b || b->segments.empty()) return;
    std::vector<std::uint64_t> keys;
    for (auto& s : b->segments)
      keys.push_back(s.key);
    shared_->metrics.attempt(attempt_result::unreachable);
    n_.store->nack(id_, std::move(keys), why, nullptr);
  }

  void backoff(const std::string& why) {
    set_state(backing_off, why);
    ++failures_;
    double d = 200.0 * std::pow(2.0, std::min(failures_, 8u) - 1.0);
    d = std::min(d, 30000.0);
    std::uniform_real_distribution<double> j(0.8, 1.2);
    d *= j(rng_);
    timer_.expires_after(std::chrono::milliseconds(static_cast<std::int64_t>(d)));
    timer_.async_wait([self = shared_from_this()](sys_ec ec) {
      if (!ec) self->dial();
    });
  }

  void on_message(const std::string& m) {
    auto d = transport::decode(m);
    if (!d) return ch_->close("undecodable message: " + d.error().message);
    if (auto* ha = std::get_if<transport::hello_ack>(&*d)) {
      auto t = transport::accept_hello_ack(hello_, *ha);
      if (!t) return ch_->close("handshake: " + t.error().message);
      terms_ = *t;
      handshake_done_ = true;
      {
        std::lock_guard lk(mu_);
        ++connections_;
      }
      next_batch_ = 1;
      failures_ = 0;
      set_state(connected);
      return pump();
    }
    if (auto* a = std::get_if<transport::ack>(&*d)) return on_ack(*a);
    if (auto* e = std::get_if<transport::error_message>(&*d)) {
      std::string why = "peer error: " + std::string(e->message);
      spdlog::warn("peer {}: {}", cfg_.name, why);
      return ch_->close(why);
    }
    ch_->close("unexpected message");
  }

  void on_ack(const transport::ack& a) {
    auto it = inflight_.find(a.batch_number);
    if (it == inflight_.end() || a.results.size() != it->second.keys.size())
      return ch_->close("ACK for unknown batch " + std::to_string(a.batch_number));
    std::vector<std::uint64_t> ok;
    std::vector<queue::rejected_item> rejected;
    const auto now = n_.now_ms();
    for (std::size_t i = 0; i < a.results.size(); ++i) {
      if (a.results[i].status == transport::ack_status::rejected) {
        rejected.push_back({it->second.keys[i], "rejected:" + std::string(a.results[i].reason),
                            "the peer rejected it: " + std::string(a.results[i].reason)});
      } else {
        ok.push_back(it->second.keys[i]);
        shared_->metrics.delivered(it->second.created_ms[i], now);
      }
    }
    shared_->metrics.attempt(rejected.empty() ? attempt_result::ok : attempt_result::rejected);
    if (!ok.empty()) n_.store->ack(id_, std::move(ok), nullptr);
    if (!rejected.empty()) n_.store->reject(id_, std::move(rejected), nullptr);
    inflight_.erase(it);
    {
      std::lock_guard lk(mu_);
      last_conn_bytes_ = ch_ ? ch_->bytes_sent() : 0;
      last_conn_ms_ =
          std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - conn_started_)
              .count();
    }
    pump();
  }

  // Sends batches while the window, the channel's queue and the bandwidth
  // budget allow. A batch the rate limit holds stays encoded (and leased) in
  // pending_ until its tokens are there; under a quota or window hold nothing
  // is read at all.
  void pump() {
    if (stopping_ || !ch_ || !handshake_done_) return;
    std::uint32_t window = std::min<std::uint32_t>(cfg_.window, terms_.window ? terms_.window : cfg_.window);
    std::uint64_t max_bytes =
        terms_.max_batch_bytes ? std::min(cfg_.batch_max_bytes, terms_.max_batch_bytes) : cfg_.batch_max_bytes;
    auto& lim = *shared_->limiter;
    while (inflight_.size() < window && ch_->queued() < 4) {
      if (!pending_) {
        if (auto d = lim.check(1); !d.allowed && d.reason != bandwidth::hold_reason::rate) return hold(d);
        // Encoded straight from the store's map: no copy of the batch first.
        std::optional<encode_failure> failed;
        auto b = n_.store->read_batch_visit(id_, 4096, max_bytes,
                                            [&](std::span<const queue::segment_out> segs) { failed = encode(segs); });
        if (!b) {
          set_state(connected, "store read failed: " + b.error().message());
          return;
        }
        if (b->segments == 0) return;
        if (failed) {
          on_encode_failure(std::move(*failed));
          continue;
        }
      }
      if (auto d = lim.check(pending_->wire_bytes); !d.allowed) return hold(d);
      set_state(connected);
      auto wire = pending_->wire_bytes;
      if (!ch_->send(std::move(pending_->message))) return; // closing: on_closed releases pending_
      lim.consume(wire);
      shared_->wire_bytes += wire;
      shared_->uncompressed_bytes += pending_->uncompressed_bytes;
      inflight_[pending_->number] = {std::move(pending_->keys), std::chrono::steady_clock::now(),
                                     std::move(pending_->created_ms)};
      pending_.reset();
    }
  }

  // Why a batch could not be encoded: the record that cannot travel (if the
  // codec names one) and the keys of the whole batch.
  struct encode_failure {
    std::vector<std::uint64_t> keys;
    std::size_t item;
    std::string message;
  };

  // Encodes a batch into pending_ (called inside the store's read: it must
  // not call into the store). On failure nothing is pending and the caller
  // hands the failure to on_encode_failure() after the read.
  std::optional<encode_failure> encode(std::span<const queue::segment_out> segs) {
    std::vector<transport::segment_record> recs;
    std::vector<std::uint64_t> keys;
    std::vector<std::int64_t> created;
    recs.reserve(segs.size());
    keys.reserve(segs.size());
    created.reserve(segs.size());
    std::uint64_t raw = transport::batch_header_bytes;
    for (auto& sg : segs) {
      recs.push_back({sg.id, sg.stream, sg.created_ms, sg.checksum, sg.payload});
      keys.push_back(sg.key);
      created.push_back(sg.created_ms);
      raw += transport::encoded_size(recs.back());
    }
    std::string out;
    transport::batch_encoding enc;
    enc.algorithm = terms_.algorithm;
    auto num = next_batch_;
    auto r = transport::encode_batch(num, recs, out, enc);
    if (!r) return encode_failure{std::move(keys), r.error().item, r.error().message};
    ++next_batch_;
    std::uint64_t wire = transport::ws_wire_bytes(out.size(), true);
    pending_ = pending_batch{
        num, std::move(out), std::move(keys), wire, transport::ws_wire_bytes(raw, true), std::move(created)};
    return std::nullopt;
  }

  // A record that cannot travel (the codec names it) would fail every
  // attempt: dead-letter it with the reason and send the rest later.
  void on_encode_failure(encode_failure f) {
    if (f.item >= f.keys.size()) {
      n_.store->release(id_, f.keys);
      ch_->close("encode: " + f.message);
      return;
    }
    n_.store->reject(id_, {{f.keys[f.item], "rejected:encode", f.message}}, nullptr);
    f.keys.erase(f.keys.begin() + static_cast<std::ptrdiff_t>(f.item));
    n_.store->release(id_, f.keys);
  }

  // The budget holds: show why, and look again when it may have changed (at
  // the latest on the next tick, so a stepped or manual clock is noticed).
  void hold(const bandwidth::decision& d) {
    if (d.reason == bandwidth::hold_reason::quota)
      set_state(holding_quota);
    else if (d.reason == bandwidth::hold_reason::outside_window)
      set_state(outside_window);
    if (d.reason != bandwidth::hold_reason::rate) return; // the 50 ms tick re-checks
    auto wait = std::clamp<std::chrono::nanoseconds>(d.retry_at - n_.clk->steady_now(), 1ms, 1s);
    hold_timer_.expires_after(wait);
    hold_timer_.async_wait([self = shared_from_this()](sys_ec ec) {
      if (!ec) self->pump();
    });
  }

  void schedule_tick() {
    tick_.expires_after(50ms);
    tick_.async_wait([self = shared_from_this()](sys_ec ec) {
      if (ec || self->stopping_) return;
      self->on_tick();
      self->schedule_tick();
    });
  }

  void on_tick() {
    auto now = std::chrono::steady_clock::now();
    if (ch_ && !inflight_.empty() && now - inflight_.begin()->second.sent > cfg_.ack_timeout) {
      ack_timed_out_ = true;
      return ch_->close("no ACK within ack_timeout (" + std::to_string(cfg_.ack_timeout.count()) + " ms)");
    }
    pump();
  }

  void on_closed(const std::string& why) {
    if (ch_) {
      std::lock_guard lk(mu_);
      last_conn_bytes_ = ch_->bytes_sent();
    }
    ch_.reset();
    handshake_done_ = false;
    ++generation_;
    if (pending_) {
      n_.store->release(id_, pending_->keys);
      pending_.reset();
    }
    // Everything unacknowledged failed this attempt; it is retried.
    for (auto& [num, f] : inflight_) {
      shared_->metrics.attempt(ack_timed_out_ ? attempt_result::timeout : attempt_result::error);
      n_.store->nack(id_, std::move(f.keys), "connection lost: " + why, nullptr);
    }
    inflight_.clear();
    ack_timed_out_ = false;
    if (stopping_) return;
    spdlog::warn("peer {}: connection closed: {}", cfg_.name, why);
    backoff("connection closed: " + why);
  }

  void release_inflight() {
    for (auto& [num, f] : inflight_)
      n_.store->release(id_, f.keys);
    inflight_.clear();
    if (pending_) {
      n_.store->release(id_, pending_->keys);
      pending_.reset();
    }
  }

  struct pending_batch {
    std::uint64_t number;
    std::string message;
    std::vector<std::uint64_t> keys;
    std::uint64_t wire_bytes;         // message + WebSocket frame
    std::uint64_t uncompressed_bytes; // what it would have been without compression
    std::vector<std::int64_t> created_ms;
  };

  node::impl& n_;
  peer_section cfg_; // strand only; reconfigure() replaces it
  queue::peer_id id_;
  std::shared_ptr<peer_shared> shared_;
  std::unique_ptr<transport::tls_material> tls_;
  net::strand<net::io_context::executor_type> strand_;
  net::steady_timer timer_, tick_, hold_timer_;
  std::optional<pending_batch> pending_;
  bool handshake_done_ = false;
  bool ack_timed_out_ = false; // the connection is being closed because an ACK did not come in time
  std::shared_ptr<transport::ws_channel> ch_;
  std::uint64_t generation_ = 0;
  transport::hello hello_;
  transport::session_terms terms_{};
  std::map<std::uint64_t, inflight> inflight_;
  std::uint64_t next_batch_ = 1;
  unsigned failures_ = 0;
  bool stopping_ = false;
  std::mt19937 rng_{std::random_device{}()};
  std::chrono::steady_clock::time_point conn_started_;
  mutable std::mutex mu_; // guards what status() reads
  int state_ = 0;
  std::string last_error_;
  std::uint64_t last_conn_bytes_ = 0;
  std::int64_t last_conn_ms_ = 0;
  std::uint64_t connections_ = 0; // relay protocol sessions established since start
};

// ------------------------------------------------------------ receiver

// The receiving side of the relay protocol on one connection: HELLO →
// HELLO_ACK, then each BATCH is verified, committed durably (dropping ids
// seen within the dedupe window) and answered with an ACK per segment.
//
// Two roles. On the relay listener the sender is another node: records carry
// their origin id and created time, which are kept. On the ingest listener
// the sender is a producer: this node is the origin, so a record must come
// without an id (rejected "id_not_allowed" otherwise), gets its id and
// created time here, and may not use the reserved stream "_canary". On the
// relay listener a "_canary" record is another node's canary: the node's
// canary verifier checks it and it is acknowledged here, never stored or
// forwarded (docs/soak.md, "Receiving canaries").
enum class receiver_role { relay, ingest };

class relay_receiver : public std::enable_shared_from_this<relay_receiver> {
public:
  relay_receiver(node::impl& n, std::shared_ptr<transport::ws_channel> ch, std::string who, receiver_role role)
      : n_(n), ch_(ch), who_(std::move(who)), role_(role) {}

  void start() {
    auto self = shared_from_this();
    // The channel's callbacks own the receiver; the receiver only watches the
    // channel (weak), so no cycle outlives a connection or a stopped node.
    if (auto ch = ch_.lock())
      ch->start({[self](std::string&& m) { self->on_message(std::move(m)); },
                 [self](const sys_ec&, const std::string&) { self->ch_.reset(); }});
  }

private:
  void refuse(transport::wire_error code, const std::string& why) {
    auto ch = ch_.lock();
    if (!ch) return;
    std::string out;
    transport::encode_error(code, why, out);
    ch->send(std::move(out));
    ch->close(why);
  }

  void on_message(std::string&& m) {
    auto ch = ch_.lock();
    if (!ch) return;
    // The codec's own limits bound memory; a segment over this node's
    // max_segment_bytes is rejected alone (too_large), not the whole batch.
    transport::codec_limits lim;
    lim.max_segment_bytes = std::max<std::size_t>(lim.max_segment_bytes, n_.cfg.queue.max_segment_bytes);
    auto msg = std::make_shared<std::string>(std::move(m));
    auto d = transport::decode(*msg, lim);
    if (!d) {
      spdlog::warn("relay from {}: {}", who_, d.error().message);
      return refuse(transport::wire_error_for(d.error()), d.error().message);
    }
    if (auto* h = std::get_if<transport::hello>(&*d)) {
      transport::server_offer offer;
      offer.node_id = n_.cfg.node.id;
      static constexpr std::string_view algorithms[] = {transport::compression_zstd, transport::compression_none};
      offer.compressions = algorithms;
      offer.window = 64;
      offer.max_batch_bytes = 16ull << 20;
      offer.dedupe_window_ms = static_cast<std::uint64_t>(n_.cfg.queue.dedupe_window.count());
      auto ack = transport::negotiate(*h, offer);
      if (!ack) return refuse(transport::wire_error_for(ack.error()), ack.error().message);
      std::string out;
      transport::encode_hello_ack(*ack, out);
      hello_done_ = true;
      ch->send(std::move(out));
      return;
    }
    if (!hello_done_) return refuse(transport::wire_error::protocol, "HELLO must come first");
    auto* b = std::get_if<transport::batch>(&*d);
    if (!b) return refuse(transport::wire_error::protocol, "only BATCH messages are expected after the handshake");
    handle_batch(msg, std::move(*b));
  }

  void handle_batch(std::shared_ptr<std::string> msg, transport::batch b) {
    struct pending {
      std::shared_ptr<std::string> msg;
      transport::batch batch;
      std::vector<std::vector<queue::peer_id>> routes;
      std::vector<int> slot; // record index -> enqueue index, or -1 when rejected or a canary
      std::vector<std::string> reasons;
      std::vector<bool> canary; // a `_canary` record from another node: verified and answered here, not stored
    };
    auto p = std::make_shared<pending>();
    p->msg = std::move(msg);
    p->batch = std::move(b);
    auto& recs = p->batch.records;
    p->routes.resize(recs.size());
    p->slot.assign(recs.size(), -1);
    p->reasons.resize(recs.size());
    p->canary.assign(recs.size(), false);
    std::vector<queue::segment_in> segs;
    segs.reserve(recs.size());
    auto routing = n_.peers_now();
    for (std::size_t i = 0; i < recs.size(); ++i) {
      auto& r = recs[i];
      bool producer = role_ == receiver_role::ingest;
      if (!transport::verify(r))
        p->reasons[i] = "checksum";
      else if (!queue::valid_stream_name(r.stream))
        p->reasons[i] = "bad_stream";
      else if (producer && r.stream == canary_stream)
        p->reasons[i] = "reserved_stream";
      else if (producer && !r.id.empty())
        p->reasons[i] = "id_not_allowed";
      else if (!producer && !valid_segment_id(r.id))
        p->reasons[i] = "bad_id";
      else if (r.payload.empty())
        p->reasons[i] = "empty";
      else if (r.payload.size() > n_.cfg.queue.max_segment_bytes)
        p->reasons[i] = "too_large";
      else if (r.stream == canary_stream) {
        p->canary[i] = true; // docs/soak.md, "Receiving canaries"
        continue;
      } else if ((p->routes[i] = node::impl::route(*routing, r.stream)).empty())
        p->reasons[i] = "no_route";
      if (!p->reasons[i].empty()) {
        n_.mx.rejected(p->reasons[i]);
        continue;
      }
      p->slot[i] = static_cast<int>(segs.size());
      // transport::verify() above checked the checksum: the store need not again.
      if (producer)
        segs.push_back({r.stream, r.payload, p->routes[i], {}, 0, r.checksum, true});
      else
        segs.push_back({r.stream, r.payload, p->routes[i], r.id, r.created_ms, r.checksum, true});
    }
    auto self = shared_from_this();
    auto finish = [self, p](const queue::enqueue_result* res) {
      transport::ack a;
      a.batch_number = p->batch.number;
      for (std::size_t i = 0; i < p->batch.records.size(); ++i) {
        transport::segment_result sr;
        if (p->canary[i]) {
          auto& rec = p->batch.records[i];
          auto v = self->n_.canary->on_canary_received(rec.id, rec.payload);
          if (v == verify_event::corrupt) {
            sr.status = transport::ack_status::rejected;
            sr.reason = "bad_canary";
          } else {
            sr.status = v == verify_event::duplicate ? transport::ack_status::duplicate : transport::ack_status::ok;
          }
        } else if (p->slot[i] < 0) {
          sr.status = transport::ack_status::rejected;
          sr.reason = p->reasons[i];
        } else {
          sr.status = res->status[static_cast<std::size_t>(p->slot[i])] == queue::item_status::duplicate
                          ? transport::ack_status::duplicate
                          : transport::ack_status::ok;
        }
        a.results.push_back(sr);
      }
      std::string out;
      transport::encode_ack(a, out);
      if (auto ch = self->ch_.lock()) ch->send(std::move(out));
    };
    if (segs.empty()) return finish(nullptr);
    auto count = segs.size();
    n_.store->enqueue(std::move(segs), [self, p, finish, count](queue::enqueue_result&& r) {
      if (r.ec) {
        self->n_.mx.rejected(r.ec == errc::queue_full ? "queue_full" : "store_unavailable", count);
        spdlog::warn("relay from {}: batch not stored: {}", self->who_, r.message);
        auto ch = self->ch_.lock();
        if (!ch) return;
        std::string out;
        transport::encode_error(transport::wire_error::unavailable, r.message, out);
        ch->send(std::move(out));
        ch->close(r.message);
        return;
      }
      // Counted per run of one stream (one label lookup per run, not per segment).
      std::string_view run_stream;
      std::uint64_t run = 0;
      for (std::size_t i = 0; i < p->batch.records.size(); ++i) {
        if (p->slot[i] < 0 || r.status[static_cast<std::size_t>(p->slot[i])] != queue::item_status::stored) continue;
        if (run && p->batch.records[i].stream != run_stream) {
          self->n_.mx.accepted(run_stream, run);
          run = 0;
        }
        run_stream = p->batch.records[i].stream;
        ++run;
      }
      if (run) self->n_.mx.accepted(run_stream, run);
      finish(&r);
      self->n_.notify_all();
    });
  }

  node::impl& n_;
  std::weak_ptr<transport::ws_channel> ch_;
  std::string who_;
  receiver_role role_;
  bool hello_done_ = false;
};

// ------------------------------------------------------------ HTTP handlers

std::string json_str(const json::value& v) { return json::serialize(v); }

json::object to_json(const reload_report& r) {
  auto arr = [](const std::vector<std::string>& v) {
    json::array a;
    for (auto& x : v)
      a.push_back(json::value(x));
    return a;
  };
  return json::object{
      {"applied", arr(r.applied)}, {"restart_required", arr(r.restart_required)}, {"failed", arr(r.failed)}};
}

class ingest_handler final : public transport::http_handler {
public:
  explicit ingest_handler(node::impl& n) : n_(n) {}

  void on_request(transport::http_request&& req, const transport::connection_info&, transport::responder r) override {
    std::string_view t = req.target();
    constexpr std::string_view prefix = "/v1/streams/";
    if (req.method() != boost::beast::http::verb::post || t.rfind(prefix, 0) != 0)
      return r.send_error(404, "not_found",
                          "no such endpoint: " + std::string(req.method_string()) + " " + std::string(t));
    auto rest = t.substr(prefix.size());
    auto slash = rest.find('/');
    if (slash == std::string_view::npos) return r.send_error(404, "not_found", "no such endpoint: " + std::string(t));
    std::string stream(rest.substr(0, slash));
    auto what = rest.substr(slash + 1);
    if (!queue::valid_stream_name(stream) || stream == canary_stream) {
      n_.mx.rejected("bad_stream");
      return r.send_error(400, "bad_stream", "stream \"" + stream + "\" must match [a-z0-9._-]{1,64}");
    }
    auto peers = n_.route(stream);
    if (peers.empty()) {
      n_.mx.rejected("no_route");
      return r.send_error(404, "no_route", "no peer routes stream \"" + stream + "\"");
    }
    auto body = std::make_shared<std::string>(std::move(req.body()));
    auto routes = std::make_shared<std::vector<queue::peer_id>>(std::move(peers));
    auto sname = std::make_shared<std::string>(stream);
    std::vector<queue::segment_in> segs;
    if (what == "segments") {
      if (body->empty()) {
        n_.mx.rejected("empty");
        return r.send_error(400, "empty", "a segment needs at least one byte");
      }
      segs.push_back({*sname, *body, *routes});
    } else if (what == "batch") {
      util::reader rd(*body);
      while (rd.remaining() > 0) {
        auto len = rd.u32();
        auto p = rd.bytes(len);
        if (!rd.ok()) {
          n_.mx.rejected("malformed");
          return r.send_error(400, "malformed",
                              "batch body: segment " + std::to_string(segs.size()) +
                                  " is cut short (each segment is a 4-byte big-endian length, then the payload)");
        }
        if (len == 0) {
          n_.mx.rejected("empty");
          return r.send_error(400, "empty", "batch body: segment " + std::to_string(segs.size()) + " is empty");
        }
        segs.push_back({*sname, p, *routes});
      }
      if (segs.empty()) {
        n_.mx.rejected("empty");
        return r.send_error(400, "empty", "batch body holds no segment");
      }
    } else {
      return r.send_error(404, "not_found", "no such endpoint: " + std::string(t));
    }
    for (auto& s : segs)
      if (s.payload.size() > n_.cfg.queue.max_segment_bytes) {
        n_.mx.rejected("too_large", segs.size());
        return r.send_error(413, "too_large",
                            "segment of " + std::to_string(s.payload.size()) + " bytes exceeds max_segment_bytes (" +
                                std::to_string(n_.cfg.queue.max_segment_bytes) + ")");
      }
    bool batch = what == "batch";
    auto rp = std::make_shared<transport::responder>(std::move(r));
    auto& node_id = n_.cfg.node.id;
    auto count = segs.size();
    n_.store->enqueue(
        std::move(segs), [this, rp, body, routes, sname, batch, node_id, count](queue::enqueue_result&& res) {
          if (res.ec) {
            unsigned status = res.ec == errc::queue_full ? 507 : res.ec == errc::timeout ? 429 : 503;
            n_.mx.rejected(status == 503 ? "store_unavailable" : "queue_full", count);
            return rp->send_error(status, res.ec == errc::queue_full ? "queue_full" : "store_unavailable", res.message);
          }
          json::object o;
          if (batch) {
            json::array ids;
            for (std::size_t i = 0; i < res.status.size(); ++i)
              ids.push_back(json::value(node_id + ":" + std::to_string(res.first_seq + i)));
            o["ids"] = std::move(ids);
          } else {
            o["id"] = node_id + ":" + std::to_string(res.first_seq);
          }
          n_.mx.accepted(*sname, static_cast<std::uint64_t>(
                                     std::count(res.status.begin(), res.status.end(), queue::item_status::stored)));
          rp->send_json(201, json_str(o));
          n_.notify_all();
        });
  }
  // Fast producers: the relay protocol on the ingest listener (see
  // docs/protocol.md, "Producers").
  bool accept_websocket(const transport::http_request& req, const transport::connection_info&) override {
    return req.target() == transport::relay_path;
  }
  void on_websocket(std::shared_ptr<transport::ws_channel> ch, const transport::connection_info& who) override {
    if (who.peer_certs) n_.track_session("ingest", ch, who);
    std::make_shared<relay_receiver>(n_, ch, who.identity.empty() ? who.remote.address().to_string() : who.identity,
                                     receiver_role::ingest)
        ->start();
  }
  void on_refused(const transport::connection_info& who, std::string_view reason, std::string_view detail) override {
    n_.count_refused("ingest", reason);
    spdlog::warn("ingest listener refused {}: {} ({})", who.remote.address().to_string(), reason, detail);
    n_.audit->auth_denied("ingest", who.remote.address().to_string(), who.identity, reason, detail);
  }

private:
  node::impl& n_;
};

class relay_listen_handler final : public transport::http_handler {
public:
  explicit relay_listen_handler(node::impl& n) : n_(n) {}
  void on_request(transport::http_request&& req, const transport::connection_info&, transport::responder r) override {
    r.send_error(404, "not_found",
                 "the relay listener serves only the WebSocket endpoint /v1/relay, not " + std::string(req.target()));
  }
  bool accept_websocket(const transport::http_request& req, const transport::connection_info&) override {
    return req.target() == transport::relay_path;
  }
  void on_websocket(std::shared_ptr<transport::ws_channel> ch, const transport::connection_info& who) override {
    n_.track_session("listen", ch, who);
    std::make_shared<relay_receiver>(n_, ch, who.identity.empty() ? who.remote.address().to_string() : who.identity,
                                     receiver_role::relay)
        ->start();
  }
  void on_refused(const transport::connection_info& who, std::string_view reason, std::string_view detail) override {
    n_.count_refused("listen", reason);
    spdlog::warn("relay listener refused {}: {} ({})", who.remote.address().to_string(), reason, detail);
    n_.audit->auth_denied("listen", who.remote.address().to_string(), who.identity, reason, detail);
  }

private:
  node::impl& n_;
};

class admin_handler final : public transport::http_handler {
public:
  explicit admin_handler(node::impl& n) : n_(n) {}
  void on_refused(const transport::connection_info& who, std::string_view reason, std::string_view detail) override {
    spdlog::warn("admin listener refused {}: {} ({})", who.remote.address().to_string(), reason, detail);
    n_.audit->auth_denied("admin", who.remote.address().to_string(), who.identity, reason, detail);
  }
  void on_request(transport::http_request&& req, const transport::connection_info& who,
                  transport::responder r) override {
    namespace http = boost::beast::http;
    std::string_view t = req.target();
    auto q = t.find('?');
    std::string_view path = t.substr(0, q), query = q == std::string_view::npos ? "" : t.substr(q + 1);
    bool get = req.method() == http::verb::get, post = req.method() == http::verb::post;
    if (get && path == "/healthz") return r.send_json(200, R"({"status":"ok"})");
    if (get && path == "/readyz") {
      auto problems = n_.readiness_problems();
      json::array why;
      for (auto& p : problems)
        why.push_back(json::value(p));
      return r.send_json(problems.empty() ? 200 : 503,
                         json_str(json::object{{"ready", problems.empty()}, {"problems", std::move(why)}}));
    }
    if (get && path == "/v1/status")
      return off_io(std::move(r), [this](transport::responder& out) { out.send_json(200, json_str(n_.status())); });
    if (get && path == "/metrics")
      return off_io(std::move(r), [this](transport::responder& out) {
        http::response<http::string_body> res{http::status::ok, 11};
        res.set(http::field::content_type, telemetry::registry::content_type);
        res.body() = n_.metrics();
        out.send(std::move(res));
      });
    if (get && path == "/v1/deadletter")
      return off_io(std::move(r),
                    [this, q = std::string(query)](transport::responder& out) { list(q, std::move(out)); });
    if (get && path == "/v1/evidence/soak")
      return off_io(std::move(r),
                    [this](transport::responder& out) { out.send_json(200, json_str(n_.canary->soak_report())); });
    if (post && path == "/v1/reload") return reload(std::move(r));
    if (post && (path == "/v1/deadletter/retry" || path == "/v1/deadletter/purge"))
      return dl_op(path.ends_with("retry"), req.body(), who, std::move(r));
    r.send_error(404, "not_found", "no such endpoint: " + std::string(req.method_string()) + " " + std::string(path));
  }

private:
  // Answers on the admin thread (node::impl::admin_io) instead of the
  // connection's io thread; the responder posts the answer back.
  template <class F>
  void off_io(transport::responder r, F&& answer) {
    net::post(n_.admin_io, [r = std::move(r), answer = std::forward<F>(answer)]() mutable { answer(r); });
  }

  static std::string param(std::string_view query, std::string_view key) {
    while (!query.empty()) {
      auto amp = query.find('&');
      auto kv = query.substr(0, amp);
      auto eq = kv.find('=');
      if (kv.substr(0, eq) == key && eq != std::string_view::npos) return std::string(kv.substr(eq + 1));
      if (amp == std::string_view::npos) break;
      query.remove_prefix(amp + 1);
    }
    return {};
  }

  void list(std::string_view query, transport::responder r) {
    queue::deadletter_filter f;
    if (auto v = param(query, "peer"); !v.empty()) f.peer = v;
    if (auto v = param(query, "stream"); !v.empty()) f.stream = v;
    if (auto v = param(query, "reason"); !v.empty()) f.reason = v;
    try {
      if (auto v = param(query, "after"); !v.empty()) f.after_key = std::stoull(v);
      if (auto v = param(query, "limit"); !v.empty()) f.limit = std::min<std::size_t>(std::stoul(v), 10000);
    } catch (const std::exception&) {
      return r.send_error(400, "bad_query", "after and limit must be whole numbers");
    }
    auto page = n_.store->deadletter_list(f);
    if (!page) return r.send_error(503, "store_unavailable", page.error().message());
    json::array entries;
    for (auto& e : page->entries)
      entries.push_back(json::object{{"key", e.key},
                                     {"id", e.id},
                                     {"peer", e.peer},
                                     {"stream", e.stream},
                                     {"reason", e.reason},
                                     {"last_error", e.last_error},
                                     {"attempts", e.attempts},
                                     {"bytes", e.bytes},
                                     {"created_ms", e.created_ms},
                                     {"deadlettered_ms", e.deadlettered_ms}});
    json::object o{{"entries", std::move(entries)}};
    if (page->next_after) o["next_after"] = *page->next_after;
    r.send_json(200, json_str(o));
  }

  // Re-reads the config file (like SIGHUP). Runs on an io thread: a reload
  // reads a small file and builds TLS contexts, never touches the store's map.
  void reload(transport::responder r) {
    auto rep = n_.reload();
    if (!rep) {
      json::array errs;
      for (auto& e : rep.error())
        errs.push_back(json::value(e.to_string()));
      return r.send_json(400, json_str(json::object{{"error", "invalid_config"},
                                                    {"message", "the new config is invalid; nothing was changed"},
                                                    {"errors", std::move(errs)}}));
    }
    r.send_json(200, json_str(to_json(*rep)));
  }

  void dl_op(bool retry, const std::string& body, const transport::connection_info& who, transport::responder r) {
    boost::system::error_code ec;
    auto v = json::parse(body.empty() ? std::string("{}") : body, ec);
    if (ec || !v.is_object())
      return r.send_error(400, "bad_body",
                          "the body must be a JSON object: {\"ids\": [...]}, {\"all\": true} or "
                          "{\"older_than_s\": N}, optionally with \"peer\"");
    auto& o = v.as_object();
    queue::deadletter_selector sel;
    if (auto* ids = o.if_contains("ids"); ids && ids->is_array())
      for (auto& id : ids->as_array())
        if (id.is_string()) sel.ids.emplace_back(id.as_string());
    if (auto* all = o.if_contains("all"); all && all->is_bool()) sel.all = all->as_bool();
    if (auto* old = o.if_contains("older_than_s"); old && old->is_number())
      sel.older_than = std::chrono::milliseconds(static_cast<std::int64_t>(old->to_number<double>() * 1000));
    if (auto* p = o.if_contains("peer"); p && p->is_string()) sel.peer = std::string(p->as_string());
    auto rp = std::make_shared<transport::responder>(std::move(r));
    auto filter = std::make_shared<json::object>(o);
    telemetry::audit_actor actor{who.remote.address().to_string(), who.identity};
    auto done = [this, rp, retry, filter, actor](result<std::uint64_t> n) {
      if (!n) {
        n_.audit->deadletter_op_failed(retry ? "retry" : "purge", actor, *filter, n.error().message());
        if (n.error() == errc::invalid_argument)
          return rp->send_error(400, "bad_selector", "say exactly one of ids, all or older_than_s");
        return rp->send_error(n.error() == errc::queue_full ? 507 : 503, "failed", n.error().message());
      }
      n_.audit->deadletter_op(retry ? "retry" : "purge", actor, *filter, *n);
      rp->send_json(200, json_str(json::object{{retry ? "retried" : "purged", *n}}));
      if (retry) n_.notify_all();
    };
    if (retry)
      n_.store->deadletter_retry(std::move(sel), done);
    else
      n_.store->deadletter_purge(std::move(sel), done);
  }

  node::impl& n_;
};

} // namespace

// ------------------------------------------------------------ status & metrics

namespace {

json::object bandwidth_status(const bandwidth::status& b) {
  json::object o{
      {"mode", b.mode},
      {"rate_bytes_per_s", b.rate_bytes_per_s ? json::value(*b.rate_bytes_per_s) : json::value(nullptr)},
      {"burst_bytes", b.burst_bytes},
      {"quota_bytes", b.quota_bytes ? json::value(*b.quota_bytes) : json::value(nullptr)},
      {"quota_used_bytes", b.quota_used_bytes},
      {"quota_remaining_bytes", b.quota_remaining_bytes ? json::value(*b.quota_remaining_bytes) : json::value(nullptr)},
      {"quota_resets_at", util::format_utc(b.quota_resets_at)},
      {"hold", bandwidth::to_string(b.hold)},
      {"in_window", b.in_window}};
  if (b.hold_until) o["hold_until"] = util::format_utc(*b.hold_until);
  if (b.window_opens_at) o["window_opens_at"] = util::format_utc(*b.window_opens_at);
  if (b.window_closes_at) o["window_closes_at"] = util::format_utc(*b.window_closes_at);
  return o;
}

} // namespace

json::object node::impl::status() const {
  auto st = store->stats();
  auto ps = peers_now();
  auto conf = config_now();
  json::object o;
  auto up = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started).count();
  o["node"] = json::object{
      {"id", cfg.node.id}, {"version", version_string()}, {"uptime_s", up}, {"sync", queue::to_string(cfg.node.sync)}};
  std::uint64_t routed = 0, delivered = 0, queued = 0, inflight = 0, dl = 0, ev = 0, pu = 0, qseg = 0;
  json::array peers_json;
  for (auto& pr : *ps) {
    const queue::peer_stats* sp = nullptr;
    for (auto& x : st.peers)
      if (x.id == pr->id) sp = &x;
    if (!sp) continue;
    auto& c = sp->counters;
    json::object p = pr->fwd && !pr->removed ? pr->fwd->status() : json::object{{"state", "disabled"}};
    if (pr->removed) p["last_error"] = "removed from the config by a reload; its queue is kept";
    p["name"] = pr->cfg.name;
    p["url"] = pr->cfg.url;
    p["queued"] = c.queued;
    p["queued_bytes"] = c.queued_bytes;
    p["inflight"] = sp->inflight;
    p["routed"] = c.routed;
    p["delivered"] = c.delivered;
    p["deadletter"] = c.deadletter;
    p["evicted"] = c.evicted;
    p["purged"] = c.purged;
    p["attempts"] = c.attempts;
    p["direct_delivered"] = sp->direct_delivered;
    p["bytes_sent"] = pr->shared->wire_bytes.load();
    p["compression"] = json::object{{"algorithm", to_string(pr->cfg.compression)},
                                    {"bytes_before", pr->shared->uncompressed_bytes.load()},
                                    {"bytes_after", pr->shared->wire_bytes.load()}};
    p["bandwidth"] = bandwidth_status(pr->shared->limiter->snapshot());
    peers_json.push_back(std::move(p));
    routed += c.routed;
    delivered += c.delivered;
    queued += c.queued;
    qseg += c.queued;
    inflight += sp->inflight;
    dl += c.deadletter;
    ev += c.evicted;
    pu += c.purged;
  }
  std::int64_t loss = static_cast<std::int64_t>(routed) - static_cast<std::int64_t>(delivered + queued + dl + ev + pu);
  o["totals"] = json::object{{"accepted", st.accepted},
                             {"routed", routed},
                             {"delivered", delivered},
                             {"queued", queued},
                             {"inflight", inflight},
                             {"deadletter", dl},
                             {"evicted", ev},
                             {"purged", pu},
                             {"rejected", st.rejected},
                             {"duplicates", st.duplicates},
                             {"loss", loss}};
  o["queue"] = json::object{{"segments", qseg},
                            {"bytes", st.queued_bytes},
                            {"capacity_bytes", st.capacity_bytes},
                            {"overflow", queue::to_string(cfg.queue.overflow)}};
  o["peers"] = std::move(peers_json);
  o["deadletter"] = json::object{{"segments", st.deadletter_segments}, {"bytes", st.deadletter_bytes}};
  o["tls"] = tls_status();
  o["soak"] = canary->status_json();
  return o;
}

// Runs at the start of every scrape: what the store and the forwarders keep
// themselves is published into the registry here, once per scrape.
void node::impl::collect_metrics() {
  auto st = store->stats();
  auto ps = peers_now();
  auto& m = mx.m;
  const auto now = now_ms();
  for (auto& sp : st.peers) {
    const auto& c = sp.counters;
    std::string_view name = sp.name;
    m.segments_delivered.labels({name}).set(c.delivered);
    m.segments_evicted.labels({name}).set(c.evicted);
    m.queue_segments.labels({name}).set(static_cast<double>(c.queued));
    m.queue_bytes.labels({name}).set(static_cast<double>(c.queued_bytes));
    mx.loss.labels({name}).set(
        static_cast<double>(static_cast<std::int64_t>(c.routed) -
                            static_cast<std::int64_t>(c.delivered + c.queued + c.deadletter + c.evicted + c.purged)));
    double age = 0;
    if (auto o = store->oldest_created_ms(sp.id); o && o->created_ms)
      age = static_cast<double>(std::max<std::int64_t>(0, now - *o->created_ms)) / 1000.0;
    mx.queue_oldest_age.labels({name}).set(age);
  }
  m.deadletter_segments.labels().set(static_cast<double>(st.deadletter_segments));
  for (auto& p : *ps) {
    std::string_view name = p->cfg.name;
    m.bytes_sent.labels({name}).set(p->shared->wire_bytes.load());
    if (auto b = p->shared->limiter->snapshot(); b.quota_remaining_bytes)
      m.bandwidth_quota_remaining.labels({name}).set(static_cast<double>(*b.quota_remaining_bytes));
    bool up = false;
    if (p->fwd && !p->removed) {
      auto st_json = p->fwd->status();
      auto* state = st_json.if_contains("state");
      std::string_view sv = state && state->is_string() ? std::string_view(state->get_string()) : "";
      up = sv == "connected" || sv == "holding_quota" || sv == "outside_window";
    }
    m.peer_connected.labels({name}).set(up ? 1 : 0);
  }
  for (auto& g : watch_groups()) {
    std::shared_ptr<forwarder> keep;
    if (auto* t = tls_material_of(g.name, keep))
      if (auto ci = transport::context_cert_info(*t->current()))
        m.tls_cert_expiry.labels({g.name}).set(static_cast<double>(ci->not_after_unix));
  }
  for (auto& [result, n] : canary->round_counts())
    m.canary_rounds.labels({result}).set(n);
}

std::string node::impl::metrics() const { return mx.reg.expose(); }

boost::system::result<std::shared_ptr<forwarder>, error>
node::impl::make_forwarder(const peer_section& p, queue::peer_id id, std::shared_ptr<peer_shared> shared) {
  if (p.kind == peer_kind::file)
    return std::shared_ptr<forwarder>(std::make_shared<file_forwarder>(*this, p, id, shared));
  auto t = transport::tls_material::create(transport::tls_role::client, to_transport(p.tls),
                                           p.server_name.empty() ? p.host : p.server_name);
  if (!t) return error{t.error().code, "peer " + p.name + ": " + t.error().message};
  if (p.kind == peer_kind::http)
    return std::shared_ptr<forwarder>(std::make_shared<https_forwarder>(*this, p, id, shared, std::move(*t)));
  return std::shared_ptr<forwarder>(std::make_shared<relay_forwarder>(*this, p, id, shared, std::move(*t)));
}

namespace {

// Settings of a peer that only a new forwarder (a new connection) can apply.
bool needs_new_forwarder(const peer_section& a, const peer_section& b) {
  return a.url != b.url || a.kind != b.kind || a.host != b.host || a.port != b.port || a.target != b.target ||
         a.server_name != b.server_name || a.tls != b.tls || a.spool_dir != b.spool_dir ||
         a.compression != b.compression;
}

} // namespace

boost::system::result<reload_report, config_errors> node::impl::reload() {
  std::lock_guard rl(reload_mu);
  auto next = load_config(cfg.source);
  if (!next) {
    spdlog::error("reload of {} refused, nothing changed:\n{}", cfg.source, to_string(next.error()));
    std::vector<std::string> errs;
    for (auto& e : next.error())
      errs.push_back(e.to_string());
    audit->config_reload_rejected(cfg.source, errs);
    return next.error();
  }
  auto cur = config_now();
  reload_report rep;
  auto restart = [&](bool changed, const char* key) {
    if (changed) rep.restart_required.push_back(key);
  };
  restart(next->node.id != cur->node.id, "node.id");
  restart(next->node.data_dir != cur->node.data_dir, "node.data_dir");
  restart(next->node.sync != cur->node.sync, "node.sync");
  if (next->node.unready_before_cert_expiry != cur->node.unready_before_cert_expiry)
    rep.applied.push_back("node.unready_before_cert_expiry");
  restart(next->node.audit_log != cur->node.audit_log, "node.audit_log");
  if (audit_rotation_of(*next) != audit_rotation_of(*cur)) {
    audit->set_rotation(audit_rotation_of(*next));
    rep.applied.push_back("node.audit_log_max_bytes, node.audit_log_keep");
  }
  {
    auto a = next->queue, b = cur->queue;
    bool retry_changed = a.max_retry != b.max_retry || a.retry_backoff != b.retry_backoff;
    a.max_retry = b.max_retry;
    a.retry_backoff = b.retry_backoff;
    restart(!(a == b), "queue (other than max_retry and retry_backoff)");
    if (retry_changed) {
      store->set_retry_policy(next->queue.max_retry, next->queue.retry_backoff);
      rep.applied.push_back("queue.max_retry, queue.retry_backoff");
    }
  }
  restart(next->admin != cur->admin, "admin");
  restart(next->evidence != cur->evidence, "evidence");
  restart(next->ingest.has_value() != cur->ingest.has_value() ||
              (next->ingest && next->ingest->listen != cur->ingest->listen),
          "ingest.listen");
  restart(next->listen.has_value() != cur->listen.has_value() ||
              (next->listen && next->listen->address != cur->listen->address),
          "listen.address");
  // TLS material and allow lists of the listeners: new handshakes use them,
  // live connections continue. A broken file keeps the old material.
  auto reload_tls = [&](const char* name, transport::tls_material* m, const std::optional<server_tls>& was,
                        const std::optional<server_tls>& now) {
    if (!m || !now || (was && *was == *now)) return;
    if (auto r = m->reload(to_transport(now->files, now->allow)); !r)
      rep.failed.push_back(std::string(name) + ": " + r.error().message + " (the old material stays in use)");
    else
      rep.applied.push_back(std::string(name) + ": TLS material and allow list");
  };
  auto opt_tls = [](const auto& sec, auto member) -> std::optional<server_tls> {
    if (!sec) return std::nullopt;
    return std::optional<server_tls>((*sec).*member);
  };
  if (next->listen && cur->listen)
    reload_tls("listen", listen_tls.get(), opt_tls(cur->listen, &listen_section::tls),
               opt_tls(next->listen, &listen_section::tls));
  if (next->ingest && cur->ingest) {
    if (next->ingest->tls.has_value() != cur->ingest->tls.has_value())
      rep.restart_required.push_back("ingest.tls (turning TLS on or off)");
    else
      reload_tls("ingest", ingest_tls.get(), cur->ingest->tls, next->ingest->tls);
  }

  // Peers, by name.
  auto old_peers = peers_now();
  auto fresh = std::make_shared<peer_list>();
  std::vector<std::shared_ptr<forwarder>> to_start, to_stop;
  for (auto& np : next->peers) {
    std::shared_ptr<const peer_runtime> was;
    for (auto& op : *old_peers)
      if (op->cfg.name == np.name) was = op;
    auto pr = std::make_shared<peer_runtime>();
    pr->cfg = np;
    if (was && !was->removed) {
      pr->id = was->id;
      pr->shared = was->shared;
      pr->fwd = was->fwd;
      if (needs_new_forwarder(was->cfg, np)) {
        auto f = make_forwarder(np, pr->id, pr->shared);
        if (!f) {
          rep.failed.push_back(f.error().message + " (the peer keeps its old settings)");
          fresh->push_back(was);
          continue;
        }
        to_stop.push_back(was->fwd);
        pr->fwd = *f;
        to_start.push_back(pr->fwd);
        rep.applied.push_back("peer " + np.name + ": reconnecting with new connection settings");
      } else if (!(was->cfg == np)) {
        if (!(was->cfg.bandwidth == np.bandwidth)) {
          if (auto r = pr->shared->limiter->set_policy(to_policy(np.bandwidth)); !r)
            rep.failed.push_back("peer " + np.name + ": bandwidth: " + r.error().message);
          else
            rep.applied.push_back("peer " + np.name + ": bandwidth (" + pr->shared->limiter->snapshot().mode + ")");
        }
        pr->fwd->reconfigure(np);
        rep.applied.push_back("peer " + np.name + ": settings applied to the live connection");
      }
    } else {
      auto id = store->add_peer(np.name);
      if (!id) {
        rep.failed.push_back("peer " + np.name + ": cannot register: " + id.error().message());
        continue;
      }
      pr->id = *id;
      pr->shared = was ? was->shared : new_peer_shared(np.name);
      if (!pr->shared->limiter) {
        auto l = bandwidth::limiter::create(to_policy(np.bandwidth), *clk);
        if (!l) {
          rep.failed.push_back("peer " + np.name + ": bandwidth: " + l.error().message);
          continue;
        }
        pr->shared->limiter = std::move(*l);
      } else {
        (void)pr->shared->limiter->set_policy(to_policy(np.bandwidth));
      }
      auto f = make_forwarder(np, pr->id, pr->shared);
      if (!f) {
        rep.failed.push_back(f.error().message);
        continue;
      }
      pr->fwd = *f;
      to_start.push_back(pr->fwd);
      rep.applied.push_back("peer " + np.name + (was ? ": re-added" : ": added"));
    }
    fresh->push_back(std::move(pr));
  }
  for (auto& op : *old_peers) {
    bool kept = false;
    for (auto& np : *fresh)
      kept = kept || np->cfg.name == op->cfg.name;
    if (kept) continue;
    if (!op->removed) {
      to_stop.push_back(op->fwd);
      rep.applied.push_back("peer " + op->cfg.name + ": removed (not routed any more; its queue is kept)");
    }
    auto gone = std::make_shared<peer_runtime>(*op);
    gone->removed = true;
    fresh->push_back(std::move(gone));
  }
  auto published = std::make_shared<node_config>(*next);
  // What needs a restart keeps its old value in the config in force.
  published->node = cur->node;
  published->queue = cur->queue;
  published->queue.max_retry = next->queue.max_retry;
  published->queue.retry_backoff = next->queue.retry_backoff;
  published->admin = cur->admin;
  published->evidence = cur->evidence;
  if (published->ingest && cur->ingest) published->ingest->listen = cur->ingest->listen;
  if (published->listen && cur->listen) published->listen->address = cur->listen->address;
  {
    std::lock_guard lk(live_mu);
    peers = fresh;
    live = published;
  }
  for (auto& f : to_stop)
    if (f) f->stop();
  for (auto& f : to_start)
    f->start();
  notify_all();
  // Files whose paths did not change may still have new contents.
  for (auto& g : watch_groups()) {
    std::string msg;
    int r = refresh_tls(g.name, "reload", &msg);
    if (r > 0) rep.applied.push_back(msg);
    if (r < 0) rep.failed.push_back(msg);
  }
  if (watcher) watcher->set_groups(watch_groups());
  for (auto& a : rep.applied)
    spdlog::info("reload: applied: {}", a);
  for (auto& r : rep.restart_required)
    spdlog::warn("reload: {} changed in the file; a restart is required (left as it was)", r);
  for (auto& f : rep.failed)
    spdlog::error("reload: not applied: {}", f);
  if (rep.applied.empty() && rep.restart_required.empty() && rep.failed.empty())
    spdlog::info("reload: nothing changed");
  audit->config_reloaded(cfg.source, rep.applied, rep.restart_required, rep.failed);
  return rep;
}

// ------------------------------------------------------------ TLS rotation

namespace {

// What a TLS material's files hold now: a rotation is a change of contents,
// not of modification times.
std::uint64_t files_fingerprint(const transport::tls_files& f) {
  std::string all;
  for (const auto* p : {&f.cert, &f.key, &f.ca, &f.crl}) {
    all += p->string();
    all.push_back('\0');
    if (p->empty()) continue;
    std::ifstream in(*p, std::ios::binary);
    if (!in) {
      all += "<unreadable>";
      continue;
    }
    all.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    all.push_back('\0');
  }
  return util::checksum(all);
}

// The contents of a file ("" when unreadable), to tell which file of a
// material changed.
std::string file_contents(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return in ? std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()) : std::string();
}

// How many revoked serials the CRLs in a PEM text list, for the audit log.
std::uint64_t revoked_entries(const std::string& pem) {
  transport::detail::bio_ptr bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  std::uint64_t n = 0;
  while (bio) {
    X509_CRL* crl = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr);
    if (!crl) break;
    if (auto* revoked = X509_CRL_get_REVOKED(crl)) n += static_cast<std::uint64_t>(sk_X509_REVOKED_num(revoked));
    X509_CRL_free(crl);
  }
  ERR_clear_error();
  return n;
}

std::string utc_of_unix(std::int64_t seconds) {
  return util::format_utc(std::chrono::system_clock::time_point(std::chrono::seconds(seconds)));
}

} // namespace

transport::tls_material* node::impl::tls_material_of(const std::string& name, std::shared_ptr<forwarder>& keep) const {
  if (name == "listen") return listen_tls.get();
  if (name == "ingest") return ingest_tls.get();
  if (name == "admin") return admin_tls.get();
  if (name.rfind("peer:", 0) != 0) return nullptr;
  for (auto& p : *peers_now())
    if (!p->removed && p->fwd && "peer:" + p->cfg.name == name) {
      keep = p->fwd;
      return keep->tls();
    }
  return nullptr;
}

std::vector<watch_group> node::impl::watch_groups() const {
  auto conf = config_now();
  std::vector<watch_group> out;
  auto add = [&](std::string name, const tls_files& f) {
    out.push_back({std::move(name), {f.cert, f.key, f.ca, f.crl}});
  };
  if (listen_tls && conf->listen) add("listen", conf->listen->tls.files);
  if (ingest_tls && conf->ingest && conf->ingest->tls) add("ingest", conf->ingest->tls->files);
  if (admin_tls && conf->admin.tls) add("admin", conf->admin.tls->files);
  for (auto& p : conf->peers)
    if (p.kind != peer_kind::file) add("peer:" + p.name, p.tls);
  return out;
}

int node::impl::refresh_tls(const std::string& name, const char* cause, std::string* message) {
  std::lock_guard one(tls_refresh_mu);
  std::shared_ptr<forwarder> keep;
  auto* m = tls_material_of(name, keep);
  if (!m) return 0;
  const auto files = m->snapshot().files;
  const auto fp = files_fingerprint(*files);
  const std::string crl_text = files->crl.empty() ? std::string() : file_contents(files->crl);
  const auto crl_sum = util::checksum(crl_text);
  {
    std::lock_guard lk(tls_mu);
    auto it = tls_slots.find(name);
    if (it == tls_slots.end()) { // first sight: the baseline
      tls_slots[name].fingerprint = fp;
      tls_slots[name].crl_checksum = crl_sum;
      return 0;
    }
    if (it->second.fingerprint == fp) return 0;
  }
  const auto before = transport::context_cert_info(*m->current());
  auto r = m->reload();
  bool crl_changed = false;
  {
    std::lock_guard lk(tls_mu);
    auto& slot = tls_slots[name];
    slot.fingerprint = fp;
    if (r && slot.crl_checksum != crl_sum) {
      crl_changed = !files->crl.empty();
      slot.crl_checksum = crl_sum;
    }
    if (!r) {
      ++slot.failures;
      slot.last_error = r.error().message;
    } else {
      ++slot.rotations;
      slot.last_error.clear();
      slot.last_rotation_ms = now_ms();
    }
  }
  if (!r) {
    mx.tls_rotations.labels({name, "failed"}).inc();
    spdlog::error("tls {}: changed files not used ({}); the previous material stays in force: {}", name, cause,
                  r.error().message);
    if (message) *message = "tls " + name + ": " + r.error().message + " (the previous material stays in use)";
    audit->cert_reload_failed(name, m->snapshot().files->cert.string(), r.error().message);
    return -1;
  }
  mx.tls_rotations.labels({name, "applied"}).inc();
  auto unix_time = [](std::int64_t sec) { return std::chrono::system_clock::time_point(std::chrono::seconds(sec)); };
  if (auto ci = transport::context_cert_info(*m->current()))
    audit->cert_rotated(name, unix_time(before ? before->not_after_unix : 0), unix_time(ci->not_after_unix),
                        ci->sha256);
  if (crl_changed) audit->crl_reloaded(name, revoked_entries(crl_text));
  if (auto ci = transport::context_cert_info(*m->current()))
    spdlog::info("tls {}: new material in force ({}): certificate {} serial {} valid until {}", name, cause,
                 ci->subject, ci->serial, utc_of_unix(ci->not_after_unix));
  else
    spdlog::info("tls {}: new material in force ({})", name, cause);
  if (keep)
    keep->recheck_peer();
  else
    recheck_sessions(name, *m);
  if (message) *message = "tls " + name + ": changed certificate, key, CA or CRL files";
  return 1;
}

void node::impl::refresh_all_tls(const char* cause) {
  for (auto& g : watch_groups())
    refresh_tls(g.name, cause);
}

void node::impl::track_session(const char* listener, const std::shared_ptr<transport::ws_channel>& ch,
                               const transport::connection_info& who) {
  if (!who.peer_certs) return;
  std::lock_guard lk(sessions_mu);
  std::erase_if(sessions, [](const live_session& s) { return s.ch.expired(); });
  sessions.push_back({listener, ch, who.peer_certs,
                      who.remote.address().to_string() + (who.identity.empty() ? "" : " (" + who.identity + ")")});
}

void node::impl::recheck_sessions(const std::string& listener, const transport::tls_material& m) {
  auto ctx = m.current();
  std::vector<live_session> mine;
  {
    std::lock_guard lk(sessions_mu);
    std::erase_if(sessions, [](const live_session& s) { return s.ch.expired(); });
    for (auto& s : sessions)
      if (s.listener == listener) mine.push_back(s);
  }
  for (auto& s : mine) {
    auto ch = s.ch.lock();
    if (!ch) continue;
    std::string detail;
    auto f = s.certs->reverify(*ctx, &detail);
    if (f == transport::tls_failure::none) continue;
    std::string why = std::string("certificate no longer trusted after the TLS material was reloaded (") +
                      transport::to_string(f) + "): " + detail;
    spdlog::warn("{} listener: closing the live session of {}: {}", listener, s.who, why);
    mx.sessions_closed.labels({listener, transport::to_string(f)}).inc();
    std::string out;
    transport::encode_error(transport::wire_error::unauthorized, why, out);
    ch->send(std::move(out));
    ch->close(why);
  }
}

json::array node::impl::tls_status() const {
  json::array out;
  for (auto& g : watch_groups()) {
    std::shared_ptr<forwarder> keep;
    auto* m = tls_material_of(g.name, keep);
    if (!m) continue;
    json::object o{{"name", g.name}};
    if (auto ci = transport::context_cert_info(*m->current())) {
      o["subject"] = ci->subject;
      o["serial"] = ci->serial;
      o["not_after"] = ci->not_after_unix;
      o["not_after_utc"] = utc_of_unix(ci->not_after_unix);
    }
    std::lock_guard lk(tls_mu);
    auto it = tls_slots.find(g.name);
    tls_slot slot = it == tls_slots.end() ? tls_slot{} : it->second;
    o["rotations"] = slot.rotations;
    o["failures"] = slot.failures;
    o["last_error"] = slot.last_error;
    o["last_rotation_at"] = slot.last_rotation_ms ? json::value(util::format_utc(std::chrono::system_clock::time_point(
                                                        std::chrono::milliseconds(slot.last_rotation_ms))))
                                                  : json::value(nullptr);
    out.push_back(std::move(o));
  }
  return out;
}

std::vector<std::string> node::impl::readiness_problems() const {
  std::vector<std::string> out;
  const auto margin = config_now()->node.unready_before_cert_expiry;
  if (margin.count() <= 0) return out;
  const auto now = now_ms();
  for (auto& g : watch_groups()) {
    std::shared_ptr<forwarder> keep;
    auto* m = tls_material_of(g.name, keep);
    if (!m) continue;
    auto ci = transport::context_cert_info(*m->current());
    if (!ci) continue;
    const std::int64_t left_ms = ci->not_after_unix * 1000 - now;
    if (left_ms > margin.count()) continue;
    out.push_back("tls " + g.name + ": certificate " + ci->subject + " (serial " + ci->serial + ") " +
                  (left_ms <= 0 ? "expired at " : "expires at ") + utc_of_unix(ci->not_after_unix) +
                  (left_ms <= 0 ? "" : ", in " + std::to_string(left_ms / 60000) + " min") +
                  "; the node reports unready from node.unready_before_cert_expiry (" +
                  std::to_string(margin.count() / 1000) + " s) before: install a renewed certificate");
  }
  return out;
}

// ------------------------------------------------------------ node

node::node(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
node::~node() { stop(); }

boost::system::result<std::unique_ptr<node>, error> node::create(node_config cfg, util::clock* clock,
                                                                 unsigned threads) {
  auto m = std::make_unique<impl>();
  m->cfg = std::move(cfg);
  m->live = std::make_shared<node_config>(m->cfg);
  m->clk = clock ? clock : &util::system_clock_source::instance();
  m->threads = threads ? threads : std::max(2u, std::thread::hardware_concurrency());
  auto so = m->cfg.store_options();
  so.clock = m->clk;
  auto st = queue::store::open(so);
  if (!st) return st.error();
  m->store = std::move(*st);
  {
    auto* n = m.get();
    n->mx.reg.add_collect_hook([n] { n->collect_metrics(); });
    n->store->set_commit_observer([n](double seconds, std::size_t) { n->mx.m.store_commit.labels().observe(seconds); });
    n->store->set_deadletter_observer([n](queue::peer_id id, std::string_view reason, std::uint64_t count) {
      std::string name = "peer-" + std::to_string(id);
      for (auto& [pid, pname] : n->store->peers())
        if (pid == id) name = pname;
      n->mx.m.segments_deadlettered.labels({name, reason}).inc(count);
    });
  }
  if (auto a = open_audit_log(m->cfg, *m->clk); a)
    m->audit = std::move(*a);
  else
    return a.error();
  auto ps = std::make_shared<peer_list>();
  for (auto& p : m->cfg.peers) {
    auto id = m->store->add_peer(p.name);
    if (!id) return error{id.error(), "cannot register peer " + p.name + ": " + id.error().message()};
    auto pr = std::make_shared<peer_runtime>();
    pr->cfg = p;
    pr->id = *id;
    pr->shared = m->new_peer_shared(p.name);
    // The quota used so far in this period survives restarts (a reset passed
    // meanwhile starts a fresh period).
    auto saved = m->store->load_quota_state(*id);
    if (!saved)
      return error{saved.error(), "peer " + p.name + ": cannot read its quota state: " + saved.error().message()};
    std::optional<bandwidth::quota_state> persisted;
    if (*saved) persisted = bandwidth::quota_state{(*saved)->period_start_unix_ms, (*saved)->used_bytes};
    auto l = bandwidth::limiter::create(to_policy(p.bandwidth), *m->clk, persisted);
    if (!l)
      return error{make_error_code(errc::invalid_argument), "peer " + p.name + ": bandwidth: " + l.error().message};
    pr->shared->limiter = std::move(*l);
    ps->push_back(std::move(pr));
  }
  m->peers = ps;
  auto* mp = m.get();
  canary_driver::node_hooks hooks{[mp] {
                                    std::vector<canary_peer> out;
                                    for (auto& p : *mp->peers_now())
                                      if (!p->removed) out.push_back({p->cfg.name, p->id});
                                    return out;
                                  },
                                  [mp] { mp->notify_all(); }};
  auto cd = canary_driver::create(*m->store, *m->clk, m->cfg.node.id, m->cfg.evidence, std::move(hooks));
  if (!cd) return cd.error();
  m->canary = std::move(*cd);
  return std::unique_ptr<node>(new node(std::move(m)));
}

namespace {
json::object listener_addresses(const node& n) {
  json::object o;
  for (const char* l : {"admin", "ingest", "listen"})
    if (auto a = n.address(l); !a.empty()) o[l] = a;
  return o;
}
} // namespace

boost::system::result<void, error> node::start() {
  auto& m = *impl_;
  m.work.emplace(m.io.get_executor());
  auto listen_on = [&](const char* name, const endpoint& at, transport::http_handler& h,
                       const transport::tls_material* tls,
                       std::shared_ptr<transport::http_server>& out) -> boost::system::result<void, error> {
    auto ep = transport::parse_endpoint(at.to_string());
    if (!ep) return error{ep.error().code, std::string(name) + ": " + ep.error().message};
    auto s = transport::http_server::create(m.io, *ep, h, {}, tls);
    if (!s) return error{s.error().code, std::string(name) + ": " + s.error().message};
    out = *s;
    out->start();
    return {};
  };
  m.admin_h = std::make_unique<admin_handler>(m);
  if (m.cfg.admin.tls) {
    auto t = transport::tls_material::create(transport::tls_role::server,
                                             to_transport(m.cfg.admin.tls->files, m.cfg.admin.tls->allow));
    if (!t) return error{t.error().code, "admin.tls: " + t.error().message};
    m.admin_tls = std::move(*t);
  }
  if (auto r = listen_on("admin", m.cfg.admin.listen, *m.admin_h, m.admin_tls.get(), m.admin_srv); !r) return r;
  if (m.cfg.ingest) {
    m.ingest_h = std::make_unique<ingest_handler>(m);
    if (m.cfg.ingest->tls) {
      auto t = transport::tls_material::create(transport::tls_role::server,
                                               to_transport(m.cfg.ingest->tls->files, m.cfg.ingest->tls->allow));
      if (!t) return error{t.error().code, "ingest.tls: " + t.error().message};
      m.ingest_tls = std::move(*t);
    }
    if (auto r = listen_on("ingest", m.cfg.ingest->listen, *m.ingest_h, m.ingest_tls.get(), m.ingest_srv); !r) return r;
  }
  if (m.cfg.listen) {
    auto t = transport::tls_material::create(transport::tls_role::server,
                                             to_transport(m.cfg.listen->tls.files, m.cfg.listen->tls.allow));
    if (!t) return error{t.error().code, "listen: " + t.error().message};
    m.listen_tls = std::move(*t);
    m.listen_h = std::make_unique<relay_listen_handler>(m);
    if (auto r = listen_on("listen", m.cfg.listen->address, *m.listen_h, m.listen_tls.get(), m.listen_srv); !r)
      return r;
  }
  auto ps = std::make_shared<peer_list>();
  for (auto& p : *m.peers_now()) {
    auto pr = std::make_shared<peer_runtime>(*p);
    auto f = m.make_forwarder(pr->cfg, pr->id, pr->shared);
    if (!f) return f.error();
    pr->fwd = *f;
    ps->push_back(std::move(pr));
  }
  {
    std::lock_guard lk(m.live_mu);
    m.peers = ps;
  }
  m.canary->start(m.io);
  for (auto& p : *ps)
    p->fwd->start();
  // Certificates, keys, CAs and CRLs are re-read when they change on disk.
  m.refresh_all_tls("start"); // the baseline of each material
  m.watcher = std::make_unique<file_watcher>([&m](const std::string& name) { m.refresh_tls(name, "file changed"); });
  m.watcher->set_groups(m.watch_groups());
  m.quota_timer.emplace(m.io);
  m.schedule_quota_save();
  m.maintenance_timer.emplace(m.io);
  m.schedule_maintenance();
  if (std::uint64_t usec = 0; sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    m.watchdog_interval = std::chrono::microseconds(usec);
    m.watchdog_timer.emplace(m.io);
    m.schedule_watchdog();
    spdlog::info("systemd watchdog: pinging every {} ms", usec / 2000);
  }
  for (unsigned i = 0; i < m.threads; ++i)
    m.pool.emplace_back([&m, i] {
      util::name_this_thread("er-io-" + std::to_string(i));
      m.io.run();
    });
  m.admin_io.restart();
  m.admin_work.emplace(m.admin_io.get_executor());
  m.admin_thread = std::thread([&m] {
    util::name_this_thread("er-admin");
    m.admin_io.run();
  });
  m.audit->node_started(version_string(), listener_addresses(*this));
  return {};
}

void node::stop() {
  auto& m = *impl_;
  if (!m.work) return;
  if (m.watcher) m.watcher->stop();
  for (auto* s : {&m.ingest_srv, &m.listen_srv, &m.admin_srv})
    if (*s) (*s)->stop();
  for (auto& p : *m.peers_now())
    if (p->fwd) p->fwd->stop();
  m.work.reset();
  m.io.stop();
  for (auto& t : m.pool)
    t.join();
  m.pool.clear();
  // Admin answers still waiting are dropped with their connections.
  m.admin_work.reset();
  m.admin_io.stop();
  if (m.admin_thread.joinable()) m.admin_thread.join();
  m.quota_timer.reset();
  m.watchdog_timer.reset();
  m.maintenance_timer.reset();
  m.canary->stop();
  // The last quota usage, so that a restart does not refill it.
  for (auto& p : *m.peers_now()) {
    auto q = p->shared->limiter->export_quota();
    m.store->save_quota_state_wait(p->id, q.state.period_start_unix_ms, q.state.used_bytes);
  }
  auto ps = std::make_shared<peer_list>();
  for (auto& p : *m.peers_now()) {
    auto pr = std::make_shared<peer_runtime>(*p);
    pr->fwd.reset();
    ps->push_back(std::move(pr));
  }
  {
    std::lock_guard lk(m.live_mu);
    m.peers = ps;
  }
  m.audit->node_stopped();
}

boost::system::result<reload_report, config_errors> node::reload() { return impl_->reload(); }

json::object node::status() const { return impl_->status(); }

json::object node::soak_report() const { return impl_->canary->soak_report(); }

std::string node::address(std::string_view listener) const {
  const std::shared_ptr<transport::http_server>* s = listener == "ingest"   ? &impl_->ingest_srv
                                                     : listener == "listen" ? &impl_->listen_srv
                                                                            : &impl_->admin_srv;
  if (!*s) return {};
  auto ep = (*s)->local_endpoint();
  return ep.address().to_string() + ":" + std::to_string(ep.port());
}

} // namespace edgerelay::relay
