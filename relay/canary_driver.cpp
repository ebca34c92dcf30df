#include "relay/canary_driver.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <optional>

namespace edgerelay::relay {

namespace net = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

constexpr std::string_view soak_stream = "_canary";

// The results of canary_rounds_total, in the order they are exposed.
constexpr const char* round_results[] = {"clean", "interrupted", "failed", "duplicate", "late"};

// One round's canaries between begin_round() and the enqueue's commit: the
// segment views of the enqueue point into it.
struct round_batch {
  std::vector<outgoing_canary> canaries;
  std::vector<queue::peer_id> peer_ids; // one per canary
};

} // namespace

struct canary_driver::impl {
  queue::store& store;
  util::clock& clk;
  node_hooks hooks;
  std::chrono::milliseconds interval{0};
  std::unique_ptr<soak_tracker> tracker; // null: the soak is off on this node
  canary_verifier verifier;

  // Timer state: the controlling thread in start()/stop(), otherwise one io
  // thread at a time (the timer chain), so tick_mu only orders those.
  std::mutex tick_mu;
  std::unique_ptr<net::steady_timer> timer;
  std::chrono::steady_clock::time_point next_round_at{};
  std::uint64_t logged_round = 0; // the last closed round already logged and persisted
  // Set by stop(): callbacks still in the store's queue then leave the node alone.
  std::atomic<bool> stopped{false};

  impl(queue::store& s, util::clock& c, node_hooks h) : store(s), clk(c), hooks(std::move(h)), verifier(c) {}

  void persist_async() {
    store.put_record(std::string(record_key), tracker->serialize(), [](boost::system::error_code ec) {
      if (ec) spdlog::error("canary soak: the soak record could not be persisted: {}", ec.message());
    });
  }

  // Logs (and persists) a round that closed since the last call.
  void note_closed() {
    auto last = tracker->last_round();
    if (!last || last->round == logged_round) return;
    logged_round = last->round;
    if (last->clean)
      spdlog::debug("canary soak: round {} clean", last->round);
    else
      spdlog::warn("canary soak: round {} unclean ({}): {}", last->round, last->result, last->reason);
    persist_async();
  }

  void fail_all(const round_batch& b, const std::string& reason) {
    for (auto& c : b.canaries)
      tracker->on_failed(c.peer, c.info, reason);
  }

  std::chrono::milliseconds tick_period() const {
    return std::clamp<std::chrono::milliseconds>(interval / 4, 5ms, 250ms);
  }
};

namespace {

void schedule(const std::shared_ptr<canary_driver>& self, canary_driver::impl& m) {
  if (!m.timer) return;
  auto wait = std::clamp<std::chrono::nanoseconds>(m.next_round_at - m.clk.steady_now(), 1ms, m.tick_period());
  m.timer->expires_after(wait);
  std::weak_ptr<canary_driver> weak = self;
  m.timer->async_wait([weak](boost::system::error_code ec) {
    if (ec) return;
    if (auto s = weak.lock()) s->tick();
  });
}

} // namespace

canary_driver::canary_driver(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
canary_driver::~canary_driver() = default;

boost::system::result<std::shared_ptr<canary_driver>, error>
canary_driver::create(queue::store& store, util::clock& clock, std::string node_id, const evidence_section& ev,
                      node_hooks hooks) {
  auto m = std::make_unique<impl>(store, clock, std::move(hooks));
  m->interval = ev.canary_interval;
  if (ev.canary_interval > std::chrono::milliseconds::zero()) {
    soak_options so;
    so.node_id = std::move(node_id);
    so.interval = ev.canary_interval;
    so.segments = ev.canary_segments;
    so.size = ev.canary_size;
    auto saved = store.get_record(record_key);
    if (!saved)
      return error{saved.error(), "cannot read the canary soak record from the store: " + saved.error().message()};
    if (*saved) {
      auto t = soak_tracker::restore(**saved, so, clock);
      if (t) {
        m->tracker = std::move(*t);
        auto c = m->tracker->counters();
        spdlog::info("canary soak: continuing the persisted soak ({} rounds, {} clean, restart {})", c.rounds,
                     c.clean_rounds, c.restarts);
      } else {
        spdlog::error("canary soak: the persisted soak record cannot be continued ({}); starting a fresh soak",
                      t.error().message);
      }
    }
    if (!m->tracker) {
      auto t = soak_tracker::create(so, clock);
      if (!t) return error{t.error().code, "canary soak: " + t.error().message};
      m->tracker = std::move(*t);
    }
  }
  return std::shared_ptr<canary_driver>(new canary_driver(std::move(m)));
}

bool canary_driver::enabled() const noexcept { return impl_->tracker != nullptr; }

void canary_driver::start(net::io_context& io) {
  auto& m = *impl_;
  if (!m.tracker) return;
  std::lock_guard lk(m.tick_mu);
  m.tracker->observe_rss(current_rss_bytes());
  // The restored state (restarts, a round closed as interrupted) is durable
  // before anything else happens.
  m.note_closed();
  if (auto ec = m.store.put_record_wait(std::string(record_key), m.tracker->serialize()))
    spdlog::error("canary soak: the soak record could not be persisted: {}", ec.message());
  std::weak_ptr<canary_driver> weak = shared_from_this();
  m.store.set_fate_observer(std::string(soak_stream), [weak](std::vector<queue::fate_event>&& evs) {
    if (auto s = weak.lock()) s->on_fates(std::move(evs));
  });
  m.next_round_at = m.clk.steady_now() + m.interval;
  m.timer = std::make_unique<net::steady_timer>(io);
  schedule(shared_from_this(), m);
}

void canary_driver::stop() {
  auto& m = *impl_;
  if (!m.tracker) return;
  std::lock_guard lk(m.tick_mu);
  if (!m.timer) return;
  m.stopped = true;
  m.timer->cancel();
  m.timer.reset();
  m.note_closed();
  if (auto ec = m.store.put_record_wait(std::string(record_key), m.tracker->serialize()))
    spdlog::error("canary soak: the soak record could not be persisted at stop: {}", ec.message());
}

void canary_driver::tick() {
  auto& m = *impl_;
  std::lock_guard lk(m.tick_mu);
  if (!m.timer) return;
  m.tracker->end_round_if_due();
  m.note_closed();
  auto now = m.clk.steady_now();
  if (now >= m.next_round_at) {
    auto peers = m.hooks.peers ? m.hooks.peers() : std::vector<canary_peer>{};
    std::vector<std::string> names;
    std::map<std::string, queue::peer_id, std::less<>> ids;
    for (auto& p : peers) {
      names.push_back(p.name);
      ids.emplace(p.name, p.id);
    }
    auto b = std::make_shared<round_batch>();
    b->canaries = m.tracker->begin_round(names);
    m.note_closed(); // begin_round() closes a round still open
    m.next_round_at = m.tracker->round_deadline().value_or(now + m.interval);
    if (!b->canaries.empty()) {
      auto st = m.store.stats();
      std::uint64_t depth = 0;
      for (auto& p : st.peers)
        depth += p.counters.queued;
      m.tracker->observe_queue_depth(depth);
      m.tracker->observe_rss(current_rss_bytes());
      for (auto& c : b->canaries)
        b->peer_ids.push_back(ids.at(c.peer));
      // The record first: after a crash it knows every seq this round hands out.
      std::weak_ptr<canary_driver> weak = shared_from_this();
      m.store.put_record(std::string(record_key), m.tracker->serialize(), [weak, b](boost::system::error_code ec) {
        auto self = weak.lock();
        if (!self) return;
        auto& mm = *self->impl_;
        if (mm.stopped) return; // the node stopped in between: the round stays unsent, as after a crash
        if (ec) {
          spdlog::error("canary soak: round not sent, the soak record could not be persisted: {}", ec.message());
          mm.fail_all(*b, "not sent: the soak record could not be persisted: " + ec.message());
          return;
        }
        std::vector<queue::segment_in> segs;
        segs.reserve(b->canaries.size());
        for (std::size_t i = 0; i < b->canaries.size(); ++i)
          segs.push_back({soak_stream, b->canaries[i].payload, std::span<const queue::peer_id>(&b->peer_ids[i], 1)});
        mm.store.enqueue(std::move(segs), [weak, b](queue::enqueue_result&& r) {
          auto me = weak.lock();
          if (!me) return;
          auto& m3 = *me->impl_;
          if (r.ec) {
            spdlog::warn("canary soak: round not queued: {}", r.message);
            m3.fail_all(*b, "not queued: " + r.message);
            return;
          }
          if (m3.hooks.notify && !m3.stopped) m3.hooks.notify();
        });
      });
    }
  }
  schedule(shared_from_this(), m);
}

void canary_driver::on_fates(std::vector<queue::fate_event>&& events) {
  auto& m = *impl_;
  if (!m.tracker) return;
  // Failures are logged once per peer and reason, not once per canary.
  std::map<std::pair<std::string, std::string>, std::uint64_t> lost;
  for (auto& e : events) {
    canary_event ce;
    if (e.fate == queue::segment_fate::delivered) {
      ce = m.tracker->on_delivered(e.peer_name, e.payload);
    } else {
      std::string reason = e.fate == queue::segment_fate::evicted ? std::string("evicted") : e.reason;
      ce = m.tracker->on_failed(e.peer_name, e.payload, reason);
      if (ce == canary_event::lost) ++lost[{e.peer_name, reason}];
    }
    if (ce == canary_event::malformed || ce == canary_event::unknown || ce == canary_event::foreign)
      spdlog::debug("canary soak: segment {} for peer {} ignored ({})", e.id, e.peer_name, to_string(ce));
  }
  for (auto& [k, n] : lost)
    spdlog::warn("canary soak: {} canaries for peer {} lost: {}", n, k.first, k.second);
}

verify_event canary_driver::on_canary_received(std::string_view segment_id, std::string_view payload) {
  auto colon = segment_id.rfind(':');
  auto origin = colon == std::string_view::npos ? std::string_view{} : segment_id.substr(0, colon);
  auto ev = impl_->verifier.on_received(origin, payload);
  if (ev == verify_event::gap || ev == verify_event::corrupt)
    spdlog::warn("canary soak: canary {} from {}: {}", segment_id, origin, to_string(ev));
  return ev;
}

json::object canary_driver::soak_report() const {
  auto& m = *impl_;
  json::object o;
  if (m.tracker) {
    o = m.tracker->soak_record();
    o["enabled"] = true;
  } else {
    o["enabled"] = false;
    o["message"] = "this node sends no canaries ([evidence] canary_interval = \"0s\"); the verifier below counts "
                   "the canaries it receives";
  }
  o["verifier"] = m.verifier.summary_json();
  return o;
}

json::object canary_driver::status_json() const {
  auto& m = *impl_;
  json::object o = m.tracker
                       ? m.tracker->status_json()
                       : json::object{{"rounds", 0}, {"clean_rounds", 0}, {"clean_delivery_rate", 0.0}, {"loss", 0}};
  o["enabled"] = m.tracker != nullptr;
  o["canaries_received"] = m.verifier.counts().received;
  return o;
}

std::vector<std::pair<const char*, std::uint64_t>> canary_driver::round_counts() const {
  soak_counters c;
  if (impl_->tracker) c = impl_->tracker->counters();
  const std::uint64_t values[] = {c.clean_rounds, c.unclean_interrupted, c.unclean_failed, c.unclean_duplicate,
                                  c.unclean_late};
  std::vector<std::pair<const char*, std::uint64_t>> out;
  for (std::size_t i = 0; i < std::size(round_results); ++i)
    out.emplace_back(round_results[i], values[i]);
  return out;
}

} // namespace edgerelay::relay
