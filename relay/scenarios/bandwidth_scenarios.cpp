// RL-BAND-01: bandwidth modes at real edge processes (unlimited, rate, a
// rate changed by POST /v1/reload, daily quota on the wall clock), and the
// daily quota's reset on an in-process node driven by a manual clock.

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "relay/scenarios/scenarios.hpp"
#include "util/bytes.hpp"

#include <boost/json.hpp>

#include <fstream>
#include <thread>

namespace edgerelay::relay::scenarios {

namespace json = boost::json;
using namespace std::chrono_literals;

namespace {

void rewrite(const std::filesystem::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::trunc);
  out << text;
  if (!out) throw scenario_error("cannot write " + file.string());
}

std::int64_t bytes_sent(const node_proc& n) { return num(peer(status(n), "hub"), "bytes_sent"); }

// Bytes per second the edge put on the wire over `d` (its own counter).
double wire_rate(const node_proc& n, std::chrono::milliseconds d) {
  auto b0 = bytes_sent(n);
  auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(d);
  auto b1 = bytes_sent(n);
  return static_cast<double>(b1 - b0) / seconds_since(t0);
}

bool within(double v, double target, double tolerance) {
  return v >= target * (1 - tolerance) && v <= target * (1 + tolerance);
}

json::object band(double target, double tolerance) { return {{"bytes_per_s", target}, {"tolerance", tolerance}}; }

// 2026-11-23T00:00:00Z
constexpr auto day0 = std::chrono::system_clock::time_point{std::chrono::seconds{1795392000}};

} // namespace

void bandwidth_modes(context& ctx, telemetry::report& r) {
  const auto window = ctx.quick ? 3s : 10s;
  const double tol = 0.15;
  const std::size_t seg = 4096;
  r.parameters["measure_window_s"] = std::chrono::duration<double>(window).count();
  r.parameters["tolerance"] = tol;
  r.parameters["segment_bytes"] = seg;
  r.parameters["clocks"] = json::object{{"unlimited, rate, reload, quota", "wall (real edgerelay processes)"},
                                        {"daily quota reset", "manual (in-process relay::node on util::manual_clock)"}};
  auto spool = ctx.work / "spool";
  auto hub = start_node(ctx, "hub", hub_toml(ctx, "hub", spool));
  std::mt19937_64 rng(909);
  auto fixed = [&](auto&) { return seg; };

  // Unlimited.
  {
    const std::size_t count = (ctx.quick ? 4u << 20 : 32u << 20) / seg;
    auto edge = start_node(ctx, "edge-unlimited",
                           edge_toml(ctx, "edge-unlimited", "max_retry = 1000", {relay_peer(ctx, "hub", hub.listen)}));
    sent_map sent;
    auto t0 = std::chrono::steady_clock::now();
    send_segments(edge.ingest_url(), "unlimited", count, fixed, rng, sent, 64);
    bool done =
        wait_until([&] { return total(status(edge), "delivered") == static_cast<std::int64_t>(count); }, 120s, 20ms);
    const double took = seconds_since(t0);
    auto s = status(edge);
    auto bw = peer(s, "hub").at("bandwidth").as_object();
    const double rate = static_cast<double>(count * seg) / took;
    r.check("unlimited: every segment delivered", true, done, done);
    r.check_equal("unlimited: status bandwidth.mode", "unlimited", bw.at("mode"));
    r.check("unlimited: throughput above the rate tested next (4 Mbit/s)", json::object{{"more_than_bytes_per_s", 5e5}},
            rate, rate > 5e5);
    r.check_equal("unlimited: accounting identity gap", 0, identity_gap(s));
    r.metrics["unlimited_bytes_per_s"] = rate;
    edge.proc.stop();
  }

  // Rate 4 Mbit/s, then 2 Mbit/s by hot reload on the same connection.
  {
    auto toml = [&](const char* rate) {
      return edge_toml(ctx, "edge-rate", "max_retry = 1000",
                       {relay_peer(ctx, "hub", hub.listen,
                                   std::string("batch_max_bytes = \"16KiB\"\nbandwidth = {rate = \"") + rate +
                                       "\", burst = \"16KiB\"}")});
    };
    auto edge = start_node(ctx, "edge-rate", toml("4Mbit"));
    // More than the whole measurement can send at 500 KB/s.
    const std::size_t count = (ctx.quick ? 6u << 20 : 16u << 20) / seg;
    sent_map sent;
    send_segments(edge.ingest_url(), "rate", count, fixed, rng, sent, 64);
    wait_until([&] { return bytes_sent(edge) > 100000; }, 20s);
    const double r1 = wire_rate(edge, window);
    auto s = status(edge);
    auto p = peer(s, "hub");
    auto conns = num(p, "connections");
    r.check("rate 4Mbit: measured wire rate within tolerance", band(500000, tol), r1, within(r1, 500000, tol));
    r.check_equal("rate 4Mbit: status bandwidth.mode", "rate", p.at("bandwidth").at("mode"));
    r.check_equal("rate 4Mbit: status bandwidth.rate_bytes_per_s", 500000, p.at("bandwidth").at("rate_bytes_per_s"));

    rewrite(edge.config, toml("2Mbit"));
    auto reply = http_call("POST", edge.admin_url() + "/v1/reload", {}, 10s);
    const bool reloaded = reply && reply->status == 200 && reply->body.find("bandwidth") != std::string::npos;
    r.check("reload: POST /v1/reload applied the bandwidth change", "HTTP 200 naming the bandwidth",
            reply ? json::value(std::to_string(reply->status) + " " + reply->body) : json::value(reply.error().message),
            reloaded);
    std::this_thread::sleep_for(1s);
    const double r2 = wire_rate(edge, window);
    s = status(edge);
    p = peer(s, "hub");
    r.check("reload: measured wire rate at 2Mbit within tolerance", band(250000, tol), r2, within(r2, 250000, tol));
    r.check_equal("reload: status bandwidth.rate_bytes_per_s", 250000, p.at("bandwidth").at("rate_bytes_per_s"));
    r.check_equal("reload: the connection was kept (connections)", conns, num(p, "connections"));
    r.check_equal("rate: accounting identity gap", 0, identity_gap(s));
    r.metrics["rate_4mbit_bytes_per_s"] = r1;
    r.metrics["rate_after_reload_2mbit_bytes_per_s"] = r2;
    edge.proc.stop();
  }

  // Daily quota (wall clock): sending stops after the quota, at most one batch beyond it.
  {
    const std::uint64_t quota = 1u << 20, batch = 64u << 10;
    auto edge =
        start_node(ctx, "edge-quota",
                   edge_toml(ctx, "edge-quota", "max_retry = 1000",
                             {relay_peer(ctx, "hub", hub.listen,
                                         "batch_max_bytes = \"64KiB\"\nbandwidth = {daily_quota = \"1MiB\"}")}));
    sent_map sent;
    send_segments(edge.ingest_url(), "quota", (3u << 20) / seg, fixed, rng, sent, 64);
    bool holding = wait_until([&] { return peer(status(edge), "hub").at("state") == "holding_quota"; }, 30s);
    auto s1 = bytes_sent(edge);
    std::this_thread::sleep_for(1s);
    auto s2 = bytes_sent(edge);
    auto p = peer(status(edge), "hub");
    r.check("quota: the peer holds once the quota is spent (state holding_quota)", true, holding, holding);
    r.check_equal("quota: nothing more sent while holding", s1, s2);
    const std::uint64_t limit = quota + batch + 4096;
    r.check("quota: bytes sent between the quota and one batch more",
            json::object{{"at_least", quota}, {"at_most", limit}}, s2,
            s2 >= static_cast<std::int64_t>(quota) && s2 <= static_cast<std::int64_t>(limit));
    r.check_equal("quota: status bandwidth.mode", "quota", p.at("bandwidth").at("mode"));
    r.check_equal("quota: status bandwidth.quota_remaining_bytes", 0, p.at("bandwidth").at("quota_remaining_bytes"));
    r.check("quota: the rest stays queued", json::object{{"more_than", 0}}, num(p, "queued"), num(p, "queued") > 0);
    r.check_equal("quota: accounting identity gap", 0, identity_gap(status(edge)));
    r.metrics["quota_bytes_sent"] = s2;
    edge.proc.stop();
  }
  hub.proc.stop();

  // Daily quota reset at 06:00Z on a manual clock: an in-process node (the
  // injected clock cannot reach another process).
  {
    util::manual_clock clk(day0 + 10h);
    const std::string tag = " [manual clock, in-process node]";
    auto dir = ctx.work / "manual";
    std::filesystem::create_directories(dir);
    const std::string toml = "[node]\nid = \"edge-manual\"\ndata_dir = " + q(dir / "data") +
                             "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                             "[evidence]\ncanary_interval = \"0s\"\n" +
                             file_peer("spool", dir / "spool",
                                       "batch_max_bytes = \"1KiB\"\nbandwidth = {daily_quota = \"4KiB\", "
                                       "quota_reset = \"06:00Z\"}");
    auto cfg = parse_config(toml, "edge-manual.toml", dir);
    if (!cfg) throw scenario_error(to_string(cfg.error()));
    auto created = node::create(std::move(*cfg), &clk, 2);
    if (!created) throw scenario_error("in-process node: " + created.error().message);
    auto& n = **created;
    if (auto st = n.start(); !st) throw scenario_error("in-process node: " + st.error().message);
    struct stopper {
      node& n;
      ~stopper() { n.stop(); }
    } stop_at_end{n};
    auto pstat = [&] { return n.status().at("peers").as_array().at(0).as_object(); };
    auto delivered = [&] { return n.status().at("totals").at("delivered").to_number<std::int64_t>(); };
    const std::size_t count = 40;
    std::string body;
    for (std::size_t i = 0; i < count; ++i) {
      std::string payload(500, static_cast<char>('a' + i % 26));
      util::writer(body).u32(static_cast<std::uint32_t>(payload.size()));
      body += payload;
    }
    auto posted = http_call("POST", "http://" + n.address("ingest") + "/v1/streams/s/batch", body, 10s);
    if (!posted || posted->status != 201) throw scenario_error("in-process node: ingest failed");
    bool holding = wait_until([&] { return pstat().at("state") == "holding_quota"; }, 10s);
    const auto d0 = delivered();
    r.check("quota reset: holding after 4 KiB" + tag, true, holding, holding);
    r.check_equal("quota reset: next reset time" + tag, "2026-11-24T06:00:00.000Z",
                  pstat().at("bandwidth").at("quota_resets_at"));
    clk.set_system(day0 + 30h - 1ms);
    std::this_thread::sleep_for(400ms);
    const auto d1 = delivered();
    r.check_equal("quota reset: nothing sent 1 ms before the reset" + tag, d0, d1);
    clk.set_system(day0 + 30h);
    bool resumed = wait_until([&] { return delivered() > d1; }, 10s);
    r.check("quota reset: sending resumes at the reset instant" + tag, json::object{{"more_than", d1}}, delivered(),
            resumed);
    // Each later day refills the quota until everything is delivered.
    int days = 1;
    while (delivered() < static_cast<std::int64_t>(count) && days < 20) {
      wait_until([&] { return pstat().at("state") == "holding_quota" || delivered() == 40; }, 10s);
      if (delivered() == static_cast<std::int64_t>(count)) break;
      clk.advance(24h);
      ++days;
      std::this_thread::sleep_for(200ms);
    }
    wait_until([&] { return delivered() == static_cast<std::int64_t>(count); }, 5s);
    r.check_equal("quota reset: every segment delivered over the following days" + tag, count, delivered());
    r.check_equal("quota reset: accounting identity loss" + tag, 0,
                  n.status().at("totals").at("loss").to_number<std::int64_t>());
    r.metrics["manual_clock_days_to_deliver_40_x_500_B_at_4_KiB_per_day"] = days;
  }
  r.limitation("the daily quota reset is checked on an in-process node driven by a manual clock "
               "(util::manual_clock), not across a real midnight; its checks are marked [manual clock]");
  r.limitation("wire rates are measured by the edge's own bytes_sent counter on loopback");
}

} // namespace edgerelay::relay::scenarios
