#include "relay/node_impl.hpp"

#include <algorithm>
#include <deque>

namespace edgerelay::relay {

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
        // Nothing ready: whatever a crash left spooled and still queued has
        // been read (and acked) by now, so the ids it left need not be kept.
        if (b && !recent_.empty()) recent_.clear();
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
          // What the spool already holds (skipped above) was delivered: it is
          // acked, not counted as a failed attempt with the rest.
          if (!o.skipped.empty()) {
            std::vector<std::uint64_t> rest;
            rest.reserve(keys.size() - o.skipped.size());
            std::size_t j = 0;
            for (auto k : keys)
              if (j < o.skipped.size() && o.skipped[j] == k)
                ++j;
              else
                rest.push_back(k);
            if (n_.store->ack_wait(id_, o.skipped)) {
              std::lock_guard lk(spooled_mu_);
              spooled_unacked_.insert(o.skipped.begin(), o.skipped.end());
            }
            keys = std::move(rest);
          }
          if (!keys.empty()) n_.store->nack_wait(id_, keys, r.error().message);
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
      // In the spool already: remembered while the ack is in flight (a failed
      // commit makes them readable again before this callback runs) and after
      // it failed, so that a second read acks them instead of appending them.
      auto acked = std::make_shared<const std::vector<std::uint64_t>>(keys);
      {
        std::lock_guard lk(spooled_mu_);
        inflight_acks_.push_back(acked);
      }
      n_.store->ack(id_, std::move(keys),
                    [this, acked = std::move(acked), created = std::move(o.created)](boost::system::error_code ec) {
                      if (!ec) {
                        shared_->metrics.attempt(attempt_result::ok);
                        const auto now = n_.now_ms();
                        for (auto c : created)
                          shared_->metrics.delivered(c, now);
                      }
                      {
                        std::lock_guard lk(spooled_mu_);
                        std::erase(inflight_acks_, acked);
                        if (ec)
                          spooled_unacked_.insert(acked->begin(), acked->end());
                        else if (!spooled_unacked_.empty())
                          for (auto k : *acked)
                            spooled_unacked_.erase(k);
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
    std::vector<std::uint64_t> skipped; // of keys, those already in the spool (not appended again)
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
    std::unique_lock sl(spooled_mu_);
    if (spooled_unacked_.empty() && inflight_acks_.empty()) sl.unlock();
    auto spooled_already = [&](std::uint64_t key) {
      if (spooled_unacked_.count(key)) return true;
      for (auto& a : inflight_acks_) // few, sorted; new reads are past them unless an ack failed
        if (!a->empty() && key >= a->front() && key <= a->back() && std::binary_search(a->begin(), a->end(), key))
          return true;
      return false;
    };
    for (auto& s : segs) {
      o.keys.push_back(s.key);
      o.created.push_back(s.created_ms);
      // Spooled before a crash (its ids are kept until the queue has nothing
      // ready: segments in backoff can come before them), or spooled by an
      // append whose ack failed or is still in flight: acked again, not
      // written twice.
      if ((!recent_.empty() && recent_.count(s.id)) || (sl.owns_lock() && spooled_already(s.key))) {
        o.skipped.push_back(s.key);
        continue;
      }
      recs.push_back({s.id, s.stream, s.created_ms, s.checksum, s.payload});
      bytes += s.payload.size() + s.id.size() + s.stream.size();
    }
    if (sl.owns_lock()) sl.unlock();
    if (!recs.empty() && !shared_->limiter->check(bytes).allowed) {
      o.held = bytes;
      return;
    }
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
  struct id_hash { // lookups by string_view, without a string per segment
    using is_transparent = void;
    std::size_t operator()(std::string_view v) const noexcept { return std::hash<std::string_view>{}(v); }
  };
  std::unordered_set<std::string, id_hash, std::equal_to<>> recent_; // ids at the spool's end when it was opened
  // Queue keys in the spool whose ack failed (a failed group commit): when
  // they are read again they are acked without a second append. Keys are
  // never reused, so one is dropped once its ack succeeds.
  std::mutex spooled_mu_;
  std::unordered_set<std::uint64_t> spooled_unacked_;
  std::deque<std::shared_ptr<const std::vector<std::uint64_t>>> inflight_acks_; // sorted keys of each ack in flight
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
      auto t0 = std::chrono::steady_clock::now();
      auto ctx = tls_->current();
      std::uint64_t written = 0;
      auto r = https_call(*ctx, "POST", cfg.host, cfg.port, cfg.target.empty() ? "/" : cfg.target,
                          cfg.server_name.empty() ? cfg.host : cfg.server_name, body, "application/json",
                          cfg.dial_timeout + cfg.ack_timeout, &written);
      // What went onto the connection: nothing when it or its handshake failed.
      if (written) count_wire(written);
      {
        std::lock_guard lk(mu_);
        last_bytes_ = written;
        last_ms_ = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count();
      }
      if (r && r->status >= 200 && r->status < 300) {
        // The endpoint has the batch: acknowledge it until that commits (a
        // failed group commit, say on a full disk), never by posting it again.
        // The batch stays leased meanwhile, so that evict_lru cannot count
        // as evicted what the endpoint has.
        for (bool retried = false;; retried = true) {
          auto ec = n_.store->ack_wait(id_, keys, queue::store::failed_ack_leases::keep);
          if (!ec) {
            if (retried) {
              std::lock_guard lk(mu_);
              last_error_.clear();
            }
            break;
          }
          {
            std::lock_guard lk(mu_);
            last_error_ = "ack after a delivered POST failed (retried): " + ec.message();
          }
          if (!pause(1s)) {
            n_.store->release(id_, keys);
            return;
          }
        }
        shared_->metrics.attempt(attempt_result::ok);
        const auto now = n_.now_ms();
        for (auto& sg : b->segments)
          shared_->metrics.delivered(sg.created_ms, now);
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

} // namespace

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

} // namespace edgerelay::relay
