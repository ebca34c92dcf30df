#include "relay/node_impl.hpp"

#include <algorithm>
#include <charconv>
#include <initializer_list>
#include <optional>

namespace edgerelay::relay {

namespace {

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

// A WebSocket session of the relay protocol on a listener: tracked for
// certificate re-checks when the client presented one, then served.
void serve_relay_session(node::impl& n, const char* listener, std::shared_ptr<transport::ws_channel> ch,
                         const transport::connection_info& who, receiver_role role) {
  if (who.peer_certs) n.track_session(listener, ch, who);
  std::make_shared<relay_receiver>(n, ch, who.identity.empty() ? who.remote.address().to_string() : who.identity, role)
      ->start();
}

// A connection a listener refused at authentication or authorisation:
// logged and audited; counted in tls_handshake_failures_total when `counted`
// (every listener with TLS does).
void listener_refused(node::impl& n, const char* listener, const char* what, bool counted,
                      const transport::connection_info& who, std::string_view reason, std::string_view detail) {
  if (counted) n.count_refused(listener, reason);
  spdlog::warn("{} refused {}: {} ({})", what, who.remote.address().to_string(), reason, detail);
  n.audit->auth_denied(listener, who.remote.address().to_string(), who.identity, reason, detail);
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
      // Names starting with "_" are the node's own (the canary soak's "_canary").
      const bool reserved = stream.starts_with("_") && queue::valid_stream_name("x" + stream.substr(1));
      return r.send_error(400, "bad_stream",
                          "stream \"" + stream + "\" " +
                              (reserved ? "is reserved: names starting with \"_\" belong to the node (the canary "
                                          "soak's \"_canary\")"
                                        : "must match [a-z0-9._-]{1,64} and not start with \"_\""));
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
            // 507: full under overflow = "reject"; 429: still full after
            // block_timeout under "block" (try again later); 503: the store failed.
            unsigned status = res.ec == errc::queue_full ? 507 : res.ec == errc::timeout ? 429 : 503;
            const char* code = status == 503 ? "store_unavailable" : "queue_full";
            n_.mx.rejected(code, count);
            return rp->send_error(status, code, res.message);
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
    serve_relay_session(n_, "ingest", std::move(ch), who, receiver_role::ingest);
  }
  void on_refused(const transport::connection_info& who, std::string_view reason, std::string_view detail) override {
    listener_refused(n_, "ingest", "ingest listener", true, who, reason, detail);
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
    serve_relay_session(n_, "listen", std::move(ch), who, receiver_role::relay);
  }
  void on_refused(const transport::connection_info& who, std::string_view reason, std::string_view detail) override {
    listener_refused(n_, "listen", "relay listener", true, who, reason, detail);
  }

private:
  node::impl& n_;
};

class admin_handler final : public transport::http_handler {
public:
  explicit admin_handler(node::impl& n) : n_(n) {}
  void on_refused(const transport::connection_info& who, std::string_view reason, std::string_view detail) override {
    listener_refused(n_, "admin", "admin listener", true, who, reason, detail);
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

  // The query's parameters, percent-decoded ("+" is a space); an empty,
  // repeated or undecodable one is an error, as is one not in `known`.
  static std::optional<std::string> query_params(std::string_view query, std::initializer_list<std::string_view> known,
                                                 std::map<std::string, std::string>& out) {
    while (!query.empty()) {
      auto amp = query.find('&');
      auto kv = query.substr(0, amp);
      query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
      if (kv.empty()) continue;
      auto eq = kv.find('=');
      auto key = util::percent_decode(kv.substr(0, eq), true);
      auto value = util::percent_decode(eq == std::string_view::npos ? std::string_view{} : kv.substr(eq + 1), true);
      if (!key || !value) return "a malformed percent escape in \"" + std::string(kv) + "\"";
      const std::string &k = *key, &v = *value;
      if (std::find(known.begin(), known.end(), k) == known.end()) {
        std::string names;
        for (auto n : known)
          names += (names.empty() ? "" : ", ") + std::string(n);
        return "unknown parameter \"" + k + "\" (use " + names + ")";
      }
      if (v.empty()) return "parameter \"" + k + "\" has no value";
      if (!out.emplace(k, v).second) return "parameter \"" + k + "\" is given twice";
    }
    return std::nullopt;
  }

  void list(std::string_view query, transport::responder r) {
    std::map<std::string, std::string> q;
    if (auto why = query_params(query, {"peer", "stream", "reason", "after", "limit"}, q))
      return r.send_error(400, "bad_query", *why);
    auto param = [&](const char* k) { return q.contains(k) ? q[k] : std::string(); };
    queue::deadletter_filter f;
    if (auto v = param("peer"); !v.empty()) f.peer = v;
    if (auto v = param("stream"); !v.empty()) f.stream = v;
    if (auto v = param("reason"); !v.empty()) f.reason = v;
    auto whole = [](const std::string& text, std::uint64_t& out) {
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
      return ec == std::errc() && end == text.data() + text.size();
    };
    std::uint64_t n = 0;
    if (auto v = param("after"); !v.empty()) {
      if (!whole(v, n)) return r.send_error(400, "bad_query", "after=" + v + ": not a whole number (a next_after)");
      f.after_key = n;
    }
    if (auto v = param("limit"); !v.empty()) {
      if (!whole(v, n) || n == 0) return r.send_error(400, "bad_query", "limit=" + v + ": not a whole number from 1");
      f.limit = static_cast<std::size_t>(std::min<std::uint64_t>(n, 10000));
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
    // Strict: a field this does not understand, or of the wrong type, is
    // refused before anything is touched. Ignoring it could widen what the
    // operation selects (a "peer" that is not a string would mean every peer).
    auto bad = [&](const std::string& why) { return r.send_error(400, "bad_body", why); };
    for (auto& [k, val] : o)
      if (k != "ids" && k != "all" && k != "older_than_s" && k != "peer")
        return bad("unknown field \"" + std::string(k) + "\" (use ids, all, older_than_s, peer)");
    queue::deadletter_selector sel;
    if (auto* ids = o.if_contains("ids")) {
      if (!ids->is_array()) return bad("ids must be an array of segment ids (strings), not " + json_str(*ids));
      for (auto& id : ids->as_array()) {
        if (!id.is_string()) return bad("ids must be an array of segment ids (strings), not " + json_str(id));
        sel.ids.emplace_back(id.as_string());
      }
    }
    if (auto* all = o.if_contains("all")) {
      if (!all->is_bool()) return bad("all must be true or false, not " + json_str(*all));
      sel.all = all->as_bool();
    }
    if (auto* old = o.if_contains("older_than_s")) {
      // At most about 300 years: the milliseconds must fit the clock's arithmetic.
      if (!old->is_number() || !(old->to_number<double>() >= 0) || old->to_number<double>() > 1e10)
        return bad("older_than_s must be a number of seconds from 0 to 10000000000, not " + json_str(*old));
      sel.older_than = std::chrono::milliseconds(static_cast<std::int64_t>(old->to_number<double>() * 1000));
    }
    if (auto* p = o.if_contains("peer")) {
      if (!p->is_string() || p->as_string().empty()) return bad("peer must be a peer's name, not " + json_str(*p));
      sel.peer = std::string(p->as_string());
    }
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

std::unique_ptr<transport::http_handler> make_ingest_handler(node::impl& n) {
  return std::make_unique<ingest_handler>(n);
}
std::unique_ptr<transport::http_handler> make_relay_listen_handler(node::impl& n) {
  return std::make_unique<relay_listen_handler>(n);
}
std::unique_ptr<transport::http_handler> make_admin_handler(node::impl& n) {
  return std::make_unique<admin_handler>(n);
}

} // namespace edgerelay::relay
