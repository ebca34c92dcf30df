// RL-IMPW-01/02/03 and RL-CONN-01: an edge forwarding to a hub through the
// TCP impairment proxy (relay/impair.hpp), all real processes on loopback.

#include "relay/http_client.hpp"
#include "relay/impair.hpp"
#include "relay/scenarios/scenarios.hpp"

#include <boost/json.hpp>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>

namespace edgerelay::relay::scenarios {

namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<impair_proxy> make_proxy(const std::string& upstream, const impairment& i) {
  impair_options o;
  o.upstream = {boost::asio::ip::address_v4::loopback(), port_of(upstream)};
  o.initial = i;
  auto p = impair_proxy::create(o);
  if (!p) throw scenario_error("impair proxy: " + p.error().message);
  return std::move(*p);
}

json::object counters_json(const impair_counters& c) {
  return {{"connections_accepted", c.connections_accepted},
          {"connections_rejected", c.connections_rejected},
          {"upstream_failures", c.upstream_failures},
          {"bytes_to_upstream", c.bytes_to_upstream},
          {"bytes_to_client", c.bytes_to_client},
          {"bytes_dropped", c.bytes_dropped},
          {"resets", c.resets}};
}

std::size_t small_size(std::mt19937_64& rng) { return 1 + rng() % 2048; }

} // namespace

// ------------------------------------------------------------ RL-IMPW-01

void upstream_outage(context& ctx, telemetry::report& r) {
  const std::size_t n = ctx.quick ? 200 : 2000;
  const int max_retry = 3;
  impairment refuse;
  refuse.refuse = true;
  // The upstream is never reached: every dial is refused by the proxy.
  auto proxy = make_proxy("127.0.0.1:9", refuse);
  r.parameters["segments"] = n;
  r.parameters["segment_bytes"] = "1..2048 (random)";
  r.parameters["max_retry"] = max_retry;
  r.parameters["retry_backoff"] = "initial 20ms, max 50ms, multiplier 2, no jitter";
  r.parameters["outage"] = "every connection to the upstream refused (impair proxy: refuse)";
  auto edge = start_node(ctx, "edge",
                         edge_toml(ctx, "edge",
                                   "max_retry = " + std::to_string(max_retry) +
                                       "\nretry_backoff = {initial = \"20ms\", max = \"50ms\", multiplier = 2.0, "
                                       "jitter = 0.0}",
                                   {relay_peer(ctx, "hub", proxy->address(), "dial_timeout = \"2s\"")}));
  std::mt19937_64 rng(101);
  sent_map sent;
  auto t0 = std::chrono::steady_clock::now();
  send_segments(edge.ingest_url(), "outage", n, small_size, rng, sent);
  bool all_dead = wait_until([&] { return total(status(edge), "deadletter") >= static_cast<std::int64_t>(n); },
                             ctx.quick ? 60s : 300s, 100ms);
  const double took = seconds_since(t0);
  auto s = status(edge);
  r.check_equal("segments acknowledged by the edge", n, sent.size());
  r.check("every segment dead-lettered within the time limit", true, all_dead, all_dead);
  r.check_equal("dead-lettered (status totals.deadletter)", n, total(s, "deadletter"));
  r.check_equal("delivered", 0, total(s, "delivered"));
  r.check_equal("still queued", 0, total(s, "queued"));

  auto dl = http_call("GET", edge.admin_url() + "/v1/deadletter?limit=10000", {}, 30s);
  if (!dl || dl->status != 200) throw scenario_error("GET /v1/deadletter failed");
  auto entries = json::parse(dl->body).at("entries").as_array();
  std::size_t reason_ok = 0, attempts_ok = 0, known = 0;
  std::set<std::string> ids;
  for (auto& e : entries) {
    auto& o = e.as_object();
    if (o.at("reason").as_string() == "max_retry") ++reason_ok;
    if (o.at("attempts").to_number<int>() == max_retry) ++attempts_ok;
    std::string id(o.at("id").as_string());
    if (sent.count(id) && ids.insert(id).second) ++known;
  }
  r.check_equal("dead-letter entries listed", n, entries.size());
  r.check_equal("entries with reason max_retry", n, reason_ok);
  r.check_equal("entries after exactly max_retry attempts", n, attempts_ok);
  r.check_equal("acknowledged segments found in the dead-letter store", n, known);
  auto gauge = metric(edge, "edgerelay_deadletter_segments");
  r.check("metric edgerelay_deadletter_segments", n, gauge ? json::value(*gauge) : json::value(nullptr),
          gauge && *gauge == static_cast<double>(n));
  r.check_equal("accounting identity gap (computed from the peer counters)", 0, identity_gap(s));
  r.check_equal("loss (status totals.loss)", 0, total(s, "loss"));
  r.metrics["seconds_to_deadletter_all"] = took;
  r.metrics["attempts"] = num(peer(s, "hub"), "attempts");
  r.metrics["last_error"] = peer(s, "hub").at("last_error");
  r.limitation("the outage is a refused TCP connection on loopback (impair proxy), not a partition of a real network");
  edge.proc.stop();
}

// ------------------------------------------------------------ RL-IMPW-02

void bandwidth_impairment(context& ctx, telemetry::report& r) {
  struct tier {
    const char* name;
    std::uint64_t rate; // bytes per second
    std::uint64_t volume;
  };
  const std::vector<tier> tiers = {
      {"1Mbit", 125000, ctx.quick ? 256u << 10 : 2u << 20},
      {"10Mbit", 1250000, ctx.quick ? 2u << 20 : 16u << 20},
  };
  const std::size_t seg = 4096;
  r.parameters["segment_bytes"] = seg;
  r.parameters["batch_max_bytes"] = "64KiB";
  json::array params, results;
  for (auto& t : tiers) {
    params.push_back(json::object{{"rate", t.name}, {"rate_bytes_per_s", t.rate}, {"payload_bytes", t.volume}});
    const std::string tag = std::string("at ") + t.name;
    auto spool = ctx.work / ("spool-" + std::string(t.name));
    auto hub = start_node(ctx, std::string("hub-") + t.name, hub_toml(ctx, std::string("hub-") + t.name, spool));
    impairment imp;
    imp.rate_bytes_per_s = t.rate;
    auto proxy = make_proxy(hub.listen, imp);
    auto edge = start_node(ctx, std::string("edge-") + t.name,
                           edge_toml(ctx, std::string("edge-") + t.name, "max_retry = 1000",
                                     {relay_peer(ctx, "hub", proxy->address(),
                                                 "batch_max_bytes = \"64KiB\"\ndial_timeout = \"10s\"\n"
                                                 "ack_timeout = \"30s\"")}));
    std::mt19937_64 rng(202);
    sent_map sent;
    auto t0 = std::chrono::steady_clock::now();
    send_segments(
        edge.ingest_url(), "bulk", t.volume / seg, [&](auto&) { return seg; }, rng, sent, 64);
    const auto limit = std::chrono::milliseconds(static_cast<std::int64_t>(t.volume * 4000 / t.rate) + 30000);
    auto c = wait_spool(spool, sent, limit);
    const double took = seconds_since(t0);
    auto pc = proxy->counters();
    const double goodput = static_cast<double>(c.payload_bytes) / took;
    const double wire = static_cast<double>(pc.bytes_to_upstream) / took;
    check_delivery(r, tag, c);
    r.check(tag + ": wire rate into the hub at most the impaired rate + 5 %",
            json::object{{"at_most_bytes_per_s", static_cast<double>(t.rate) * 1.05}}, wire,
            wire <= static_cast<double>(t.rate) * 1.05);
    r.check(tag + ": goodput at least 50 % of the impaired rate",
            json::object{{"at_least_bytes_per_s", static_cast<double>(t.rate) * 0.5}}, goodput,
            goodput >= static_cast<double>(t.rate) * 0.5);
    auto s = status(edge);
    r.check_equal(tag + ": accounting identity gap (edge)", 0, identity_gap(s));
    r.check_equal(tag + ": dead-lettered", 0, total(s, "deadletter"));
    results.push_back(json::object{{"rate", t.name},
                                   {"rate_bytes_per_s", t.rate},
                                   {"payload_bytes", c.payload_bytes},
                                   {"seconds", took},
                                   {"goodput_bytes_per_s", goodput},
                                   {"wire_bytes_per_s", wire},
                                   {"utilization", goodput / static_cast<double>(t.rate)},
                                   {"proxy", counters_json(pc)}});
    edge.proc.stop();
    hub.proc.stop();
  }
  r.parameters["tiers"] = std::move(params);
  r.metrics["throughput"] = std::move(results);
  r.limitation("bandwidth is shaped by the impairment proxy on loopback (per connection, no packet loss), not by a "
               "real constrained link");
}

// ------------------------------------------------------------ RL-IMPW-03

void latency_impairment(context& ctx, telemetry::report& r) {
  const std::size_t n = ctx.quick ? 100 : 2000;
  const std::vector<int> delays = {200, 500};
  r.parameters["segments"] = n;
  r.parameters["segment_bytes"] = "1..2048 (random)";
  r.parameters["one_way_delay_ms"] = json::array{200, 500};
  r.parameters["dial_timeout"] = "10s";
  r.parameters["ack_timeout"] = "10s";
  json::array results;
  for (int d : delays) {
    const std::string tag = "at " + std::to_string(d) + " ms";
    auto spool = ctx.work / ("spool-" + std::to_string(d));
    auto hub = start_node(ctx, "hub-" + std::to_string(d), hub_toml(ctx, "hub-" + std::to_string(d), spool));
    impairment imp;
    imp.delay = std::chrono::milliseconds(d);
    auto proxy = make_proxy(hub.listen, imp);
    auto edge = start_node(
        ctx, "edge-" + std::to_string(d),
        edge_toml(ctx, "edge-" + std::to_string(d), "max_retry = 1000",
                  {relay_peer(ctx, "hub", proxy->address(), "dial_timeout = \"10s\"\nack_timeout = \"10s\"")}));
    std::mt19937_64 rng(303);
    sent_map sent;
    // One probe first: dial (TCP, TLS, WebSocket upgrade, HELLO) and one batch.
    auto t0 = std::chrono::steady_clock::now();
    send_segments(edge.ingest_url(), "probe", 1, small_size, rng, sent);
    bool probed = wait_until([&] { return total(status(edge), "delivered") == 1; }, 60s, 20ms);
    const double probe_s = seconds_since(t0);
    auto t1 = std::chrono::steady_clock::now();
    send_segments(edge.ingest_url(), "bulk", n, small_size, rng, sent);
    auto c = wait_spool(spool, sent, 120s);
    bool acked =
        wait_until([&] { return total(status(edge), "delivered") == static_cast<std::int64_t>(n + 1); }, 30s, 20ms);
    const double bulk_s = seconds_since(t1);
    check_delivery(r, tag, c);
    r.check(tag + ": first delivery completed", true, probed, probed);
    r.check(tag + ": every delivery acknowledged to the edge", true, acked, acked);
    // The dial alone needs several round trips; fewer than two means the delay was not in force.
    const double min_s = 4.0 * d / 1000.0;
    r.check(tag + ": first delivery took at least two round trips (delay in force)",
            json::object{{"at_least_s", min_s}}, probe_s, probe_s >= min_s);
    auto s = status(edge);
    auto p = peer(s, "hub");
    r.check_equal(tag + ": connections to the hub (no dial or ack timeout forced a reconnect)", 1,
                  num(p, "connections"));
    r.check_equal(tag + ": accounting identity gap (edge)", 0, identity_gap(s));
    r.check_equal(tag + ": dead-lettered", 0, total(s, "deadletter"));
    results.push_back(json::object{{"one_way_delay_ms", d},
                                   {"first_delivery_s", probe_s},
                                   {"bulk_seconds", bulk_s},
                                   {"bulk_segments_per_s", static_cast<double>(n) / bulk_s},
                                   {"connections", num(p, "connections")},
                                   {"attempts", num(p, "attempts")}});
    edge.proc.stop();
    hub.proc.stop();
  }
  r.metrics["latency"] = std::move(results);
  r.limitation("latency is added by the impairment proxy on loopback (fixed delay, no jitter, no packet loss)");
}

// ------------------------------------------------------------ RL-CONN-01

void contested_link(context& ctx, telemetry::report& r) {
  const auto phase = ctx.quick ? 3s : 15s;
  const int cycles = ctx.quick ? 1 : 2;
  r.parameters["phase_seconds"] = std::chrono::duration<double>(phase).count();
  r.parameters["cycles"] = cycles;
  r.parameters["phases"] = json::array{"clean", "flapping (drop_all every 300 ms)", "reset after 48 KiB per connection",
                                       "blackhole (longer than ack_timeout)", "latency 300 ms +/- 50 ms jitter"};
  r.parameters["segment_bytes"] = "1..4096 (random)";
  r.parameters["peer"] = "window 4, batch_max_bytes 16KiB, dial_timeout 2s, ack_timeout 2s, max_retry 1000";
  auto spool = ctx.work / "spool";
  auto hub = start_node(ctx, "hub", hub_toml(ctx, "hub", spool));
  auto proxy = make_proxy(hub.listen, {});
  auto edge = start_node(ctx, "edge",
                         edge_toml(ctx, "edge",
                                   "max_retry = 1000\nretry_backoff = {initial = \"50ms\", max = \"500ms\", "
                                   "multiplier = 2.0, jitter = 0.2}",
                                   {relay_peer(ctx, "hub", proxy->address(),
                                               "window = 4\nbatch_max_bytes = \"16KiB\"\ndial_timeout = \"2s\"\n"
                                               "ack_timeout = \"2s\"")}));
  sent_map sent;
  std::mutex mu;
  std::atomic<bool> stop{false};
  std::string producer_error;
  std::thread producer([&] {
    std::mt19937_64 rng(404);
    try {
      while (!stop) {
        sent_map batch;
        send_segments(
            edge.ingest_url(), "contested", 20, [](auto& g) { return 1 + g() % 4096; }, rng, batch, 20);
        {
          std::lock_guard lk(mu);
          sent.insert(batch.begin(), batch.end());
        }
        std::this_thread::sleep_for(20ms);
      }
    } catch (const std::exception& e) {
      std::lock_guard lk(mu);
      producer_error = e.what();
    }
  });
  json::array timeline;
  auto note = [&](const char* what) {
    std::lock_guard lk(mu);
    timeline.push_back(json::object{{"phase", what}, {"acknowledged_so_far", sent.size()}});
  };
  for (int c = 0; c < cycles; ++c) {
    note("clean");
    std::this_thread::sleep_for(phase);
    note("flapping");
    for (auto until = std::chrono::steady_clock::now() + phase; std::chrono::steady_clock::now() < until;) {
      std::this_thread::sleep_for(300ms);
      proxy->drop_all();
    }
    note("reset after 48 KiB");
    impairment reset;
    reset.reset_after_bytes = 48u << 10;
    proxy->set(reset);
    std::this_thread::sleep_for(phase);
    note("blackhole");
    impairment hole;
    hole.blackhole = true;
    proxy->set(hole);
    std::this_thread::sleep_for(std::max<std::chrono::milliseconds>(phase, 4s));
    note("high latency");
    impairment slow;
    slow.delay = 300ms;
    slow.jitter = 50ms;
    proxy->set(slow);
    std::this_thread::sleep_for(phase);
    proxy->set({});
  }
  stop = true;
  producer.join();
  note("clear, producer stopped");
  auto t0 = std::chrono::steady_clock::now();
  auto cs = wait_spool(spool, sent, ctx.quick ? 90s : 300s);
  bool settled = wait_settled(edge, 30s);
  const double drain_s = seconds_since(t0);
  auto es = status(edge), hs = status(hub);
  auto pc = proxy->counters();
  r.check("producer never failed (ingest is not impaired)", "", json::string_view(producer_error),
          producer_error.empty());
  r.check("segments acknowledged to the producer", json::object{{"at_least", 100}}, sent.size(), sent.size() >= 100);
  check_delivery(r, "after the contested link", cs);
  r.check("edge queue empty after the link recovers", true, settled, settled);
  r.check_equal("delivered (edge status)", sent.size(), total(es, "delivered"));
  r.check_equal("dead-lettered (edge)", 0, total(es, "deadletter"));
  r.check_equal("accounting identity gap (edge)", 0, identity_gap(es));
  r.check_equal("accounting identity gap (hub)", 0, identity_gap(hs));
  r.check("connections reset by the proxy (flaps and reset-after)", json::object{{"at_least", 2}}, pc.resets,
          pc.resets >= 2);
  r.check("bytes dropped by the blackhole", json::object{{"more_than", 0}}, pc.bytes_dropped, pc.bytes_dropped > 0);
  auto conns = num(peer(es, "hub"), "connections");
  r.check("edge reconnected to the hub", json::object{{"at_least", 3}}, conns, conns >= 3);
  r.metrics["timeline"] = std::move(timeline);
  r.metrics["proxy"] = counters_json(pc);
  r.metrics["edge_connections"] = conns;
  r.metrics["edge_attempts"] = num(peer(es, "hub"), "attempts");
  r.metrics["hub_duplicates_dropped"] = total(hs, "duplicates");
  r.metrics["drain_seconds_after_recovery"] = drain_s;
  r.metrics["sink"] = to_json(cs);
  r.limitation("the contested link is emulated by the impairment proxy on loopback: TCP resets, silent drops and "
               "delay, no packet loss or reordering below TCP");
  edge.proc.stop();
  hub.proc.stop();
}

} // namespace edgerelay::relay::scenarios
