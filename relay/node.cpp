#include "relay/node_impl.hpp"

#include <set>

namespace edgerelay::relay {

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
    json::object p = pr->fwd && !pr->removed
                         ? pr->fwd->status()
                         : json::object{{"state", "disabled"}, {"last_conn_bytes", 0}, {"last_conn_ms", 0}};
    if (pr->removed) p["last_error"] = "not in the config any more (removed); its queue and counters are kept";
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
    if (p->removed) {
      // Not a peer that is down: its queue's series (above) stay while the store keeps it.
      m.remove_peer_link(name);
      continue;
    }
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
  // Each material's expiry series; those of a material gone (a peer removed)
  // or without a CRL any more are dropped, so no alert fires for them.
  std::set<std::string> certs, crls;
  for (auto& g : watch_groups()) {
    std::shared_ptr<forwarder> keep;
    if (auto* t = tls_material_of(g.name, keep))
      if (auto ctx = t->current()) {
        if (auto ci = transport::context_cert_info(*ctx)) {
          m.tls_cert_expiry.labels({g.name}).set(static_cast<double>(ci->not_after_unix));
          certs.insert(g.name);
        }
        if (auto next = transport::context_crl_next_update(*ctx)) {
          mx.crl_next_update.labels({g.name}).set(static_cast<double>(*next));
          crls.insert(g.name);
        }
      }
  }
  {
    std::lock_guard lk(tls_series_mu);
    for (auto& n : tls_cert_series)
      if (!certs.count(n)) m.tls_cert_expiry.remove_matching("name", n);
    for (auto& n : tls_crl_series)
      if (!crls.count(n)) mx.crl_next_update.remove_matching("name", n);
    tls_cert_series = std::move(certs);
    tls_crl_series = std::move(crls);
  }
  for (auto& [result, n] : canary->round_counts())
    m.canary_rounds.labels({result}).set(n);
}

std::string node::impl::metrics() const { return mx.reg.expose(); }

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
  // A change that fails keeps the old section in the config in force (below),
  // so the next reload tries it again, and is reported like a refused rotation.
  std::set<std::string> tls_kept;
  auto reload_tls = [&](const char* name, transport::tls_material* m, const std::optional<server_tls>& was,
                        const std::optional<server_tls>& now) {
    if (!m || !now || (was && *was == *now)) return;
    // Counted, audited and baselined like a rotation of the files in place,
    // so that the refresh after it finds nothing changed (it used to apply
    // the same files a second time, with a second audit event).
    std::string refused;
    if (apply_tls(name, *m, nullptr, "reload", to_transport(now->files, now->allow), &refused) < 0) {
      rep.failed.push_back(std::string(name) + ": " + refused + " (the old material stays in use)");
      tls_kept.insert(name);
    } else {
      rep.applied.push_back(std::string(name) + ": TLS material and allow list");
    }
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
          tls_kept.insert("peer:" + np.name);
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
      // Added, or configured again: its limiter starts from the quota usage
      // the store saved for that name (every 200 ms, removed peers too),
      // read with the peer's own settings (its quota_reset decides whether
      // that usage belongs to the current period). The bytes counters go on.
      pr->shared = new_peer_shared(np.name);
      if (was) {
        pr->shared->wire_bytes = was->shared->wire_bytes.load();
        pr->shared->uncompressed_bytes = was->shared->uncompressed_bytes.load();
      }
      auto l = make_limiter(pr->id, np.bandwidth);
      if (!l) {
        rep.failed.push_back("peer " + np.name + ": " + l.error());
        continue;
      }
      pr->shared->limiter = std::move(*l);
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
  published->node.unready_before_cert_expiry = next->node.unready_before_cert_expiry;
  published->node.audit_log_max_bytes = next->node.audit_log_max_bytes;
  published->node.audit_log_keep = next->node.audit_log_keep;
  published->queue = cur->queue;
  published->queue.max_retry = next->queue.max_retry;
  published->queue.retry_backoff = next->queue.retry_backoff;
  published->admin = cur->admin;
  published->evidence = cur->evidence;
  if (published->ingest && cur->ingest) published->ingest->listen = cur->ingest->listen;
  if (published->listen && cur->listen) published->listen->address = cur->listen->address;
  // What could not be applied keeps its old settings in force too.
  if (tls_kept.count("listen") && published->listen && cur->listen) published->listen->tls = cur->listen->tls;
  if (tls_kept.count("ingest") && published->ingest && cur->ingest) published->ingest->tls = cur->ingest->tls;
  for (auto& pp : published->peers)
    if (tls_kept.count("peer:" + pp.name))
      for (auto& op : *old_peers)
        if (op->cfg.name == pp.name) pp = op->cfg;
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
  bool first = false;
  {
    std::lock_guard lk(tls_mu);
    auto it = tls_slots.find(name);
    if (it == tls_slots.end()) { // first sight: the baseline
      tls_slots[name].fingerprint = fp;
      tls_slots[name].crl_checksum = crl_sum;
      first = true;
    }
  }
  if (first) {
    // The material was built from the files a moment before `fp` read them;
    // build it again so that what is in force is not older than the
    // baseline (a file replaced in between would otherwise never be applied).
    if (auto r = m->reload(); !r) {
      {
        std::lock_guard lk(tls_mu);
        auto& slot = tls_slots[name];
        slot.refresh_failed = true;
        slot.retry_later = transport::refused_until_later(r.error().code);
      }
      note_tls_failure(name, cause, r.error().message, m->snapshot().files->cert.string());
    }
    return 0;
  }
  {
    std::lock_guard lk(tls_mu);
    auto it = tls_slots.find(name);
    // Unchanged files are tried again only after a refusal: on an explicit
    // reload, and (cause "retry") when the refusal was for a time not reached yet.
    const bool failed = it->second.refresh_failed;
    const bool again = failed && (std::string_view(cause) == "reload" ||
                                  (std::string_view(cause) == "retry" && it->second.retry_later));
    if (it->second.fingerprint == fp && !again) return 0;
  }
  std::string refused;
  int r = apply_tls_locked(name, *m, keep.get(), cause, std::nullopt, fp, crl_text, &refused);
  if (message)
    *message = r > 0 ? "tls " + name + ": changed certificate, key, CA or CRL files"
                     : "tls " + name + ": " + refused + " (the previous material stays in use)";
  return r;
}

int node::impl::apply_tls(const std::string& name, transport::tls_material& m, forwarder* peer, const char* cause,
                          std::optional<transport::tls_files> next, std::string* refused) {
  std::lock_guard one(tls_refresh_mu);
  const auto& files = next ? *next : *m.snapshot().files;
  const std::string crl_text = files.crl.empty() ? std::string() : file_contents(files.crl);
  return apply_tls_locked(name, m, peer, cause, std::move(next), files_fingerprint(files), crl_text, refused);
}

int node::impl::apply_tls_locked(const std::string& name, transport::tls_material& m, forwarder* peer,
                                 const char* cause, std::optional<transport::tls_files> next, std::uint64_t fp,
                                 const std::string& crl_text, std::string* refused) {
  const auto crl_sum = util::checksum(crl_text);
  const bool moved = next.has_value();
  const std::string cert = moved ? next->cert.string() : m.snapshot().files->cert.string();
  const auto before = transport::context_cert_info(*m.current());
  auto r = next ? m.reload(std::move(*next)) : m.reload();
  bool crl_changed = false;
  {
    std::lock_guard lk(tls_mu);
    auto& slot = tls_slots[name];
    // A refused move to other files keeps the old files in force, with
    // their baseline and refusal state: the next reload tries the move
    // again (the old config section stays in force), not the old files.
    if (r || !moved) {
      slot.fingerprint = fp;
      slot.refresh_failed = !r;
      slot.retry_later = !r && transport::refused_until_later(r.error().code);
    }
    if (r && slot.crl_checksum != crl_sum) {
      crl_changed = !crl_text.empty();
      slot.crl_checksum = crl_sum;
    }
    if (r) {
      ++slot.rotations;
      slot.last_error.clear();
      slot.last_rotation_ms = now_ms();
    }
  }
  if (!r) {
    note_tls_failure(name, cause, r.error().message, cert);
    if (refused) *refused = r.error().message;
    return -1;
  }
  mx.tls_rotations.labels({name, "applied"}).inc();
  auto unix_time = [](std::int64_t sec) { return std::chrono::system_clock::time_point(std::chrono::seconds(sec)); };
  if (auto ci = transport::context_cert_info(*m.current()))
    audit->cert_rotated(name, unix_time(before ? before->not_after_unix : 0), unix_time(ci->not_after_unix),
                        ci->sha256);
  if (crl_changed) audit->crl_reloaded(name, revoked_entries(crl_text));
  if (auto ci = transport::context_cert_info(*m.current()))
    spdlog::info("tls {}: new material in force ({}): certificate {} serial {} valid until {}", name, cause,
                 ci->subject, ci->serial, utc_of_unix(ci->not_after_unix));
  else
    spdlog::info("tls {}: new material in force ({})", name, cause);
  if (peer)
    peer->recheck_peer();
  else
    recheck_sessions(name, m);
  return 1;
}

boost::system::result<std::unique_ptr<bandwidth::limiter>, std::string>
node::impl::make_limiter(queue::peer_id id, const bandwidth_section& bw) {
  auto saved = store->load_quota_state(id);
  if (!saved) return "cannot read its quota state: " + saved.error().message();
  std::optional<bandwidth::quota_state> persisted;
  if (*saved) persisted = bandwidth::quota_state{(*saved)->period_start_unix_ms, (*saved)->used_bytes};
  auto l = bandwidth::limiter::create(to_policy(bw), *clk, persisted);
  if (!l) return "bandwidth: " + l.error().message;
  return std::move(*l);
}

void node::impl::note_tls_failure(const std::string& name, const char* cause, const std::string& message,
                                  const std::string& cert) {
  {
    std::lock_guard lk(tls_mu);
    auto& slot = tls_slots[name];
    ++slot.failures;
    slot.last_error = message;
  }
  mx.tls_rotations.labels({name, "failed"}).inc();
  spdlog::error("tls {}: changed files not used ({}); the previous material stays in force: {}", name, cause, message);
  audit->cert_reload_failed(name, cert, message);
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
    const auto ctx = m->current();
    if (auto ci = transport::context_cert_info(*ctx)) {
      o["subject"] = ci->subject;
      o["serial"] = ci->serial;
      o["not_after"] = ci->not_after_unix;
      o["not_after_utc"] = utc_of_unix(ci->not_after_unix);
    }
    if (auto next = transport::context_crl_next_update(*ctx)) {
      o["crl_next_update"] = *next;
      o["crl_next_update_utc"] = utc_of_unix(*next);
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
    auto ctx = m->current();
    const auto in_words = [&](std::int64_t left_ms) {
      return left_ms <= 0 ? std::string()
                          : ", in " + util::format_duration(std::chrono::duration_cast<std::chrono::minutes>(
                                          std::chrono::milliseconds(left_ms)));
    };
    const std::string why = "; the node reports unready from node.unready_before_cert_expiry (" +
                            util::format_duration(margin) + ") before";
    if (auto ci = transport::context_cert_info(*ctx)) {
      const std::int64_t left_ms = ci->not_after_unix * 1000 - now;
      if (left_ms <= margin.count())
        out.push_back("tls " + g.name + ": certificate " + ci->subject + " (serial " + ci->serial + ") " +
                      (left_ms <= 0 ? "expired at " : "expires at ") + utc_of_unix(ci->not_after_unix) +
                      in_words(left_ms) + why + ": install a renewed certificate");
    }
    // A CRL only once it has run out: CAs issue CRLs valid for a day or a
    // few and replace them before, so a margin would keep the node unready
    // for good (EdgerelayCrlExpiringSoon warns ahead).
    if (auto next = transport::context_crl_next_update(*ctx); next && *next * 1000 <= now)
      out.push_back("tls " + g.name + ": the CRL in force expired at " + utc_of_unix(*next) +
                    " (nextUpdate); every chain it covers is refused: install a new CRL");
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
    auto l = m->make_limiter(*id, p.bandwidth);
    if (!l) return error{make_error_code(errc::invalid_argument), "peer " + p.name + ": " + l.error()};
    pr->shared->limiter = std::move(*l);
    ps->push_back(std::move(pr));
  }
  // Peers the store holds that the config no longer names (removed by a
  // reload before this start, or from the file while the node was down):
  // their queues and counters stay in status, metrics and the totals, as
  // after a reload, until a peer of that name is configured again.
  for (auto& [id, name] : m->store->peers()) {
    bool configured = false;
    for (auto& p : m->cfg.peers)
      configured = configured || p.name == name;
    if (configured) continue;
    auto pr = std::make_shared<peer_runtime>();
    pr->cfg.name = name;
    pr->id = id;
    pr->removed = true;
    pr->shared = m->new_peer_shared(name);
    auto l = m->make_limiter(id, bandwidth_section{}); // its saved quota usage, for when it is configured again
    if (!l) return error{make_error_code(errc::invalid_argument), "peer " + name + ": " + l.error()};
    pr->shared->limiter = std::move(*l);
    pr->shared->quota_saved_version = pr->shared->limiter->quota_version(); // it sends nothing: its saved quota stays
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
  m.admin_h = make_admin_handler(m);
  if (m.cfg.admin.tls) {
    auto t = transport::tls_material::create(transport::tls_role::server,
                                             to_transport(m.cfg.admin.tls->files, m.cfg.admin.tls->allow));
    if (!t) return error{t.error().code, "admin.tls: " + t.error().message};
    m.admin_tls = std::move(*t);
  }
  if (auto r = listen_on("admin", m.cfg.admin.listen, *m.admin_h, m.admin_tls.get(), m.admin_srv); !r) return r;
  if (m.cfg.ingest) {
    m.ingest_h = make_ingest_handler(m);
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
    m.listen_h = make_relay_listen_handler(m);
    if (auto r = listen_on("listen", m.cfg.listen->address, *m.listen_h, m.listen_tls.get(), m.listen_srv); !r)
      return r;
  }
  auto ps = std::make_shared<peer_list>();
  for (auto& p : *m.peers_now()) {
    auto pr = std::make_shared<peer_runtime>(*p);
    if (!pr->removed) {
      auto f = m.make_forwarder(pr->cfg, pr->id, pr->shared);
      if (!f) return f.error();
      pr->fwd = *f;
    }
    ps->push_back(std::move(pr));
  }
  {
    std::lock_guard lk(m.live_mu);
    m.peers = ps;
  }
  m.canary->start(m.io);
  for (auto& p : *ps)
    if (p->fwd) p->fwd->start();
  // Certificates, keys, CAs and CRLs are re-read when they change on disk.
  m.refresh_all_tls("start"); // the baseline of each material
  m.watcher = std::make_unique<file_watcher>([&m](const std::string& name) { m.refresh_tls(name, "file changed"); });
  m.watcher->set_groups(m.watch_groups());
  m.refresh_all_tls("start"); // what changed before the watcher looked
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
  // Enqueues waiting for room (overflow = block) are answered now, while the
  // ingest handler and the io_context their callbacks use still exist (the
  // store outlives both and would end them in its destructor).
  m.store->expire_waiting();
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
    if (!p->fwd) continue; // removed before this start: never sent, its saved state stays as it is
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

queue::store& node::store_for_test() { return *impl_->store; }

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
