#pragma once
// Internal to relay/node*.cpp: node::impl, the peer runtime and the helpers
// that the node, its forwarders (node_forwarders.cpp) and its listeners' handlers
// (node_handlers.cpp) share. Not part of the library's interface.

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
#include <set>
#include <thread>
#include <unordered_set>

namespace edgerelay::relay {

namespace net = boost::asio;
namespace json = boost::json;
using namespace std::chrono_literals;
using sys_ec = boost::system::error_code;

inline std::string version_string() { return EDGERELAY_VERSION; }

// "<origin node id>:<origin seq>": a non-empty node id and a decimal sequence.
inline bool valid_segment_id(std::string_view id) {
  auto colon = id.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon + 1 == id.size() || id.size() - colon > 21) return false;
  for (char c : id.substr(colon + 1))
    if (c < '0' || c > '9') return false;
  return true;
}

// The reserved stream of the canary soak; producers may not write to it.
inline constexpr std::string_view canary_stream = "_canary";

inline transport::tls_files to_transport(const tls_files& f, const std::vector<allow_rule>& allow = {}) {
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
inline const char* state_name(int s) {
  static const char* names[] = {"connecting", "connected", "backoff", "disabled", "holding_quota", "outside_window"};
  return names[s];
}

inline telemetry::audit_rotation audit_rotation_of(const node_config& c) {
  return {c.node.audit_log_max_bytes, c.node.audit_log_keep};
}

// node.audit_log, its directory created if absent.
inline boost::system::result<std::unique_ptr<telemetry::audit_log>, error> open_audit_log(const node_config& c,
                                                                                          util::clock& clk) {
  std::error_code ec;
  std::filesystem::create_directories(c.node.audit_log.parent_path(), ec);
  if (ec)
    return error{ec, "node.audit_log: cannot create " + c.node.audit_log.parent_path().string() + ": " + ec.message()};
  auto a = telemetry::audit_log::open(c.node.audit_log, c.node.id, clk, audit_rotation_of(c));
  if (!a) return error{a.error().code, "node.audit_log: " + a.error().message};
  return std::move(*a);
}

inline bandwidth::policy to_policy(const bandwidth_section& b) {
  bandwidth::policy p;
  p.rate_bytes_per_s = b.rate;
  p.burst_bytes = b.burst;
  p.daily_quota_bytes = b.daily_quota;
  p.quota_reset.since_midnight = b.quota_reset;
  for (auto& w : b.send_windows)
    p.send_windows.push_back({{w.start}, {w.end}});
  return p;
}

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
    // The files were refused for a time they have not reached yet (a
    // certificate's notBefore, a CRL's lastUpdate): retried by the
    // maintenance timer until they go in force or change.
    bool retry_later = false;
    bool refresh_failed = false; // the files in force were changed and refused: a reload tries them again
  };
  mutable std::mutex tls_mu;
  std::mutex tls_refresh_mu; // one refresh at a time (the watcher's thread, reloads)
  std::map<std::string, tls_slot> tls_slots;
  std::unique_ptr<file_watcher> watcher;
  // The names whose expiry series the last scrape set (collect_metrics).
  std::mutex tls_series_mu;
  std::set<std::string> tls_cert_series, tls_crl_series;
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
      retry_refused_tls();
      schedule_maintenance();
    });
  }
  // TLS files refused for a time not reached yet (notBefore, lastUpdate) go
  // in force once it has passed, without waiting for another change.
  void retry_refused_tls() {
    std::vector<std::string> names;
    {
      std::lock_guard lk(tls_mu);
      for (auto& [name, slot] : tls_slots)
        if (slot.retry_later) names.push_back(name);
    }
    for (auto& n : names)
      refresh_tls(n, "retry");
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
  // Builds the named material again, from `next` (a reload that moves it to
  // other files) or from the files it has, and records the outcome: on
  // success the rotation (status, metric, audit event, log, the files'
  // fingerprint as the new baseline) and a re-check of the sessions (of
  // `peer`'s connection for a peer); on failure note_tls_failure() and, in
  // `refused`, why. Returns 1 applied, -1 refused.
  int apply_tls(const std::string& name, transport::tls_material& m, forwarder* peer, const char* cause,
                std::optional<transport::tls_files> next, std::string* refused);
  // The same with tls_refresh_mu held and the files already read.
  int apply_tls_locked(const std::string& name, transport::tls_material& m, forwarder* peer, const char* cause,
                       std::optional<transport::tls_files> next, std::uint64_t fp, const std::string& crl_text,
                       std::string* refused);
  // A change of TLS files that was refused: status tls[].failures and
  // last_error, the rotations metric {result="failed"}, the log, the audit log.
  void note_tls_failure(const std::string& name, const char* cause, const std::string& message,
                        const std::string& cert);
  // A peer's limiter with `bw`, carrying the quota usage the store saved for it.
  boost::system::result<std::unique_ptr<bandwidth::limiter>, std::string> make_limiter(queue::peer_id id,
                                                                                       const bandwidth_section& bw);
  void refresh_all_tls(const char* cause);
  void track_session(const char* listener, const std::shared_ptr<transport::ws_channel>& ch,
                     const transport::connection_info& who);
  void recheck_sessions(const std::string& listener, const transport::tls_material& m);
  json::array tls_status() const;
  std::vector<std::string> readiness_problems() const;
  json::object status() const;
  std::string metrics() const;
};

// The listeners' handlers (node_handlers.cpp).
std::unique_ptr<transport::http_handler> make_ingest_handler(node::impl& n);
std::unique_ptr<transport::http_handler> make_relay_listen_handler(node::impl& n);
std::unique_ptr<transport::http_handler> make_admin_handler(node::impl& n);

} // namespace edgerelay::relay
