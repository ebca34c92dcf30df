// Bandwidth management and hot reload at a running node: the daily quota on a
// manual clock (hold, refill exactly at the reset, persistence across
// restarts), send windows, and on loopback with real traffic: the rate limit,
// a rate changed by reload on the same connection, quota-only mode, zstd
// compression. Plus reload's refusals and SIGHUP.

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "relay/producer.hpp"
#include "relay/spool.hpp"
#include "tests/support/exposition.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/toml.hpp"
#include "transport/pki.hpp"
#include "util/checksum.hpp"
#include "util/clock.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <thread>

using namespace edgerelay;
using test::eventually;
using test::write_file;
using namespace std::chrono_literals;
namespace json = boost::json;
using Catch::Matchers::Contains;

namespace {

using test::q;

std::unique_ptr<relay::node> start_node(const std::filesystem::path& file, util::clock* clk = nullptr) {
  return test::start_node(relay::load_config(file), clk);
}

json::object peer_status(relay::node& n, std::size_t i = 0) {
  return n.status().at("peers").as_array().at(i).as_object();
}
std::int64_t num(const json::value& v) { return v.to_number<std::int64_t>(); }

void post_segments(relay::node& n, int count, std::size_t size, const std::string& stream = "s") {
  relay::producer_options po;
  po.url = "ws://" + n.address("ingest");
  po.batch_max_segments = 64;
  auto p = relay::ws_producer::connect(po);
  REQUIRE(p.has_value());
  std::string payload;
  for (int i = 0; i < count; ++i) {
    payload = std::to_string(i) + ":" + std::string(size, static_cast<char>('a' + i % 26));
    payload.resize(size);
    REQUIRE((*p)->send(stream, payload).has_value());
  }
  REQUIRE((*p)->flush().has_value());
}

// 2026-11-23T00:00:00Z
constexpr auto day0 = std::chrono::system_clock::time_point{std::chrono::seconds{1795392000}};

std::string terminal_node(const std::filesystem::path& dir, const std::string& bandwidth) {
  return "[node]\nid = \"edge\"\ndata_dir = " + q(dir / "data") +
         "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
         "[evidence]\ncanary_interval = \"0s\"\n"
         "[[peer]]\nname = \"spool\"\nurl = \"file://" +
         (dir / "spool").string() + "\"\nbatch_max_bytes = \"1KiB\"\nbandwidth = " + bandwidth + "\n";
}

} // namespace

TEST_CASE("a spent daily quota holds the peer until exactly the reset instant, also across a restart",
          "[e2e][bandwidth]") {
  test::temp_dir dir{"bw-quota"};
  util::manual_clock clk(day0 + 10h);
  auto file = dir / "edge.toml";
  write_file(file, terminal_node(dir.path(), "{daily_quota = \"4KiB\", quota_reset = \"06:00Z\"}"));
  auto edge = start_node(file, &clk);
  post_segments(*edge, 40, 500); // 20,000 bytes of payload: five times the quota
  REQUIRE(eventually([&] { return peer_status(*edge).at("state") == "holding_quota"; }));
  auto delivered = num(edge->status().at("totals").at("delivered"));
  auto bw = peer_status(*edge).at("bandwidth").as_object();
  CHECK(num(bw.at("quota_remaining_bytes")) == 0);
  CHECK(bw.at("quota_resets_at") == "2026-11-24T06:00:00.000Z");
  CHECK(bw.at("mode") == "quota");
  // At most one batch (1 KiB of payload + ids) beyond the quota.
  CHECK(num(bw.at("quota_used_bytes")) <= 4096 + 1024 + 200);
  CHECK(delivered > 0);
  CHECK(delivered < 40);

  // A restart inside the same period does not refill the quota.
  edge->stop();
  edge.reset();
  clk.advance(10h); // 20:00, still before the 06:00 reset
  edge = start_node(file, &clk);
  std::this_thread::sleep_for(300ms);
  CHECK(peer_status(*edge).at("state") == "holding_quota");
  CHECK(num(edge->status().at("totals").at("delivered")) == delivered);

  // One microsecond before the reset: still holding.
  clk.set_system(day0 + 30h - 1us);
  std::this_thread::sleep_for(300ms);
  CHECK(num(edge->status().at("totals").at("delivered")) == delivered);
  // At the reset instant the next period's quota is there.
  clk.set_system(day0 + 30h);
  CHECK(eventually([&] { return num(edge->status().at("totals").at("delivered")) > delivered; }));
  edge->stop();
}

TEST_CASE("a reset that passed while the node was stopped gives a fresh quota at start", "[e2e][bandwidth]") {
  test::temp_dir dir{"bw-quota-stopped"};
  util::manual_clock clk(day0 + 23h);
  auto file = dir / "edge.toml";
  write_file(file, terminal_node(dir.path(), "{daily_quota = \"2KiB\"}"));
  auto edge = start_node(file, &clk);
  post_segments(*edge, 20, 500);
  REQUIRE(eventually([&] { return peer_status(*edge).at("state") == "holding_quota"; }));
  auto delivered = num(edge->status().at("totals").at("delivered"));
  edge->stop();
  edge.reset();
  clk.advance(2h); // past 00:00Z while stopped
  edge = start_node(file, &clk);
  CHECK(eventually([&] { return num(edge->status().at("totals").at("delivered")) > delivered; }));
  edge->stop();
}

TEST_CASE("segments a crash left spooled and queued are not spooled again when other segments come before them",
          "[e2e][spool]") {
  // The state a crash leaves when segments waiting for a retry (re-keyed to
  // the end, then ready again) come before a batch that was spooled but not
  // acknowledged: built here with a closed send window (everything queued)
  // and the later batch written into the spool by hand.
  test::temp_dir dir{"spool-crash-order"};
  util::manual_clock clk(day0 + 12h);
  auto file = dir / "edge.toml";
  write_file(file, terminal_node(dir.path(), "{send_windows = [\"22:00-06:00Z\"]}"));
  auto payload = [](int i) {
    std::string p = "segment-" + std::to_string(i);
    p.resize(600, '.');
    return p;
  };
  std::vector<std::string> ids;
  {
    auto edge = start_node(file, &clk);
    const std::string ingest = "http://" + edge->address("ingest");
    for (int i = 0; i < 6; ++i) {
      auto r = relay::http_call("POST", ingest + "/v1/streams/s/segments", payload(i)); // one per 1 KiB batch
      REQUIRE(r.has_value());
      REQUIRE(r->status == 201);
      ids.push_back(std::string(json::parse(r->body).at("id").as_string()));
    }
    REQUIRE(num(edge->status().at("totals").at("queued")) == 6);
    edge->stop();
  }
  {
    // The last three ("spooled before the crash"), behind the first three in the queue.
    auto w = relay::spool_writer::open(dir / "spool");
    REQUIRE(w.has_value());
    std::vector<std::string> payloads;
    for (int i = 3; i < 6; ++i)
      payloads.push_back(payload(i));
    std::vector<relay::spool_input> recs;
    for (int i = 0; i < 3; ++i)
      recs.push_back({ids[static_cast<std::size_t>(i) + 3], "s", 0,
                      util::checksum(payloads[static_cast<std::size_t>(i)]), payloads[static_cast<std::size_t>(i)]});
    REQUIRE((*w)->append(recs).has_value());
  }
  write_file(file, terminal_node(dir.path(), "{}"));
  auto edge = start_node(file, &clk);
  REQUIRE(eventually([&] { return num(edge->status().at("totals").at("delivered")) == 6; }));
  std::map<std::string, int> seen;
  auto read = relay::read_spool(dir / "spool", [&](const relay::spool_record& r) {
    ++seen[r.id];
    return true;
  });
  REQUIRE(read.has_value());
  CHECK(*read == 6); // each once: the first three appended, the last three acked without a second copy
  for (auto& id : ids)
    CHECK(seen[id] == 1);
  CHECK(num(edge->status().at("totals").at("loss")) == 0);
  edge->stop();
}

TEST_CASE("a peer configured again by a reload after a start without it keeps the quota it used in the period",
          "[e2e][bandwidth][reload]") {
  test::temp_dir dir{"bw-quota-readd"};
  util::manual_clock clk(day0 + 10h);
  auto file = dir / "edge.toml";
  const auto with_spool = terminal_node(dir.path(), "{daily_quota = \"1MiB\", quota_reset = \"11:00Z\"}");
  const auto without_spool = "[node]\nid = \"edge\"\ndata_dir = " + q(dir / "data") +
                             "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                             "[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"other\"\nurl = \"file://" +
                             (dir / "other").string() + "\"\n";
  write_file(file, with_spool);
  auto edge = start_node(file, &clk);
  post_segments(*edge, 10, 500);
  REQUIRE(eventually([&] { return num(edge->status().at("totals").at("delivered")) == 10; }));
  auto used = [&] {
    const auto st = edge->status();
    for (auto& pv : st.at("peers").as_array())
      if (pv.as_object().at("name") == "spool") return num(pv.as_object().at("bandwidth").at("quota_used_bytes"));
    return std::int64_t{-1};
  };
  const auto spent = used();
  REQUIRE(spent > 5000);
  edge->stop();
  edge.reset();
  // A start whose file lacks the peer (maintenance, a template mistake), then the peer comes back by a reload.
  write_file(file, without_spool);
  edge = start_node(file, &clk);
  write_file(file, with_spool);
  auto r = relay::http_call("POST", "http://" + edge->address("admin") + "/v1/reload");
  REQUIRE(r.has_value());
  INFO(r->body);
  CHECK_THAT(r->body, Contains("peer spool: re-added"));
  CHECK(used() == spent); // not a fresh quota
  edge->stop();
  edge.reset();
  edge = start_node(file, &clk);
  CHECK(used() == spent); // and the saved usage was not overwritten
  edge->stop();
  edge.reset();
  // Away over its own reset (11:00Z, not the default 00:00Z): back, it starts the new period with nothing used.
  write_file(file, without_spool);
  edge = start_node(file, &clk);
  clk.advance(2h); // 12:00
  write_file(file, with_spool);
  r = relay::http_call("POST", "http://" + edge->address("admin") + "/v1/reload");
  REQUIRE(r.has_value());
  CHECK(used() == 0);
  edge->stop();
}

TEST_CASE("outside its send window a peer holds, and it starts sending when the window opens across midnight",
          "[e2e][bandwidth]") {
  test::temp_dir dir{"bw-window"};
  util::manual_clock clk(day0 + 12h);
  auto file = dir / "edge.toml";
  write_file(file, terminal_node(dir.path(), "{send_windows = [\"22:00-06:00Z\"]}"));
  auto edge = start_node(file, &clk);
  post_segments(*edge, 10, 100);
  REQUIRE(eventually([&] { return peer_status(*edge).at("state") == "outside_window"; }));
  std::this_thread::sleep_for(200ms);
  CHECK(num(edge->status().at("totals").at("delivered")) == 0);
  clk.set_system(day0 + 22h - 1ms);
  std::this_thread::sleep_for(200ms);
  CHECK(num(edge->status().at("totals").at("delivered")) == 0);
  clk.set_system(day0 + 22h);
  CHECK(eventually([&] { return num(edge->status().at("totals").at("delivered")) == 10; }));
  edge->stop();
}

namespace {

// An edge relaying to a hub over mTLS on loopback, both in this process on
// the real clock; the edge's config file can be rewritten and reloaded.
struct relay_pair {
  test::temp_dir dir{"bw-pair"};
  transport::pki_paths pki;
  std::unique_ptr<relay::node> hub, edge;
  std::filesystem::path edge_file = dir / "edge.toml";

  explicit relay_pair(const std::string& peer_extra, const std::string& listen_extra = "") {
    auto p = transport::pki_init(dir / "pki");
    REQUIRE(p.has_value());
    pki = *p;
    write_hub(listen_extra, "127.0.0.1:0");
    hub = start_node(dir / "hub.toml");
    write_edge(peer_extra);
    edge = start_node(edge_file);
  }
  ~relay_pair() {
    if (edge) edge->stop();
    if (hub) hub->stop();
  }
  void write_hub(const std::string& listen_extra, const std::string& address) {
    write_file(dir / "hub.toml", "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "hub") + "\n[listen]\naddress = \"" +
                                     address + "\"\ncert = " + q(pki.server_cert) + "\nkey = " + q(pki.server_key) +
                                     "\nca = " + q(pki.ca_cert) + "\n" + listen_extra +
                                     "\n[admin]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n"
                                     "[[peer]]\nname = \"spool\"\nurl = \"file://" +
                                     (dir / "spool").string() + "\"\n");
  }
  void write_edge(const std::string& peer_extra) {
    write_file(edge_file, "[node]\nid = \"edge\"\ndata_dir = " + q(dir / "edge") +
                              "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                              "[evidence]\ncanary_interval = \"0s\"\n"
                              "[[peer]]\nname = \"hub\"\nurl = \"wss://" +
                              hub->address("listen") +
                              "/v1/relay\"\nserver_name = \"localhost\"\ncert = " + q(pki.client_cert) +
                              "\nkey = " + q(pki.client_key) + "\nca = " + q(pki.ca_cert) + "\n" + peer_extra + "\n");
  }
  std::int64_t sent() { return num(peer_status(*edge).at("bytes_sent")); }
  // Bytes/s sent by the edge over `d`, measured on its wire counter.
  double rate_over(std::chrono::milliseconds d) {
    auto b0 = sent();
    auto t0 = std::chrono::steady_clock::now();
    std::this_thread::sleep_for(d);
    auto b1 = sent();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return static_cast<double>(b1 - b0) / s;
  }
};

} // namespace

TEST_CASE("rate = 8Mbit holds 1 MB/s within 10 % over 10 s, and a reload to 2Mbit applies within 1 s on the same "
          "connection",
          "[e2e][bandwidth][slow]") {
  relay_pair rp("batch_max_bytes = \"16KiB\"\nbandwidth = {rate = \"8Mbit\", burst = \"16KiB\"}");
  // 24 MB queued: more than the whole test can send.
  post_segments(*rp.edge, 6000, 4096);
  REQUIRE(eventually([&] { return rp.sent() > 100000; }));
  double r = rp.rate_over(10s);
  INFO("measured " << r << " B/s");
  CHECK(r >= 0.9e6);
  CHECK(r <= 1.1e6);
  auto conns = num(peer_status(*rp.edge).at("connections"));
  CHECK(conns == 1);

  rp.write_edge("batch_max_bytes = \"16KiB\"\nbandwidth = {rate = \"2Mbit\", burst = \"16KiB\"}");
  auto reply = relay::http_call("POST", "http://" + rp.edge->address("admin") + "/v1/reload");
  REQUIRE(reply.has_value());
  INFO(reply->body);
  REQUIRE(reply->status == 200);
  CHECK_THAT(reply->body, Contains("peer hub: bandwidth"));
  std::this_thread::sleep_for(1s);
  double r2 = rp.rate_over(4s);
  INFO("after reload " << r2 << " B/s");
  CHECK(r2 >= 0.225e6);
  CHECK(r2 <= 0.275e6);
  CHECK(num(peer_status(*rp.edge).at("connections")) == conns);
  CHECK(peer_status(*rp.edge).at("bandwidth").at("rate_bytes_per_s") == 250000);
}

TEST_CASE("quota-only mode stops after the quota, exceeding it by at most one batch", "[e2e][bandwidth]") {
  relay_pair rp("batch_max_bytes = \"64KiB\"\nbandwidth = {daily_quota = \"1MiB\"}");
  post_segments(*rp.edge, 768, 4096); // 3 MiB
  REQUIRE(eventually([&] { return peer_status(*rp.edge).at("state") == "holding_quota"; }));
  auto s1 = rp.sent();
  std::this_thread::sleep_for(500ms);
  auto s2 = rp.sent();
  CHECK(s2 == s1);
  // One batch on the wire: 64 KiB of payload plus per-record and frame overhead.
  CHECK(s2 <= (1 << 20) + 64 * 1024 + 16 * 60 + 64);
  CHECK(s2 >= (1 << 20));
  auto bw = peer_status(*rp.edge).at("bandwidth").as_object();
  CHECK(num(bw.at("quota_remaining_bytes")) == 0);
  auto m = relay::http_call("GET", "http://" + rp.edge->address("admin") + "/metrics");
  REQUIRE(m.has_value());
  CHECK_THAT(m->body, Contains("edgerelay_bandwidth_quota_remaining_bytes{peer=\"hub\"} 0"));
  CHECK(num(rp.hub->status().at("totals").at("accepted")) < 768);
}

TEST_CASE("zstd sends fewer bytes than the payloads of a compressible stream, which arrives byte-identical",
          "[e2e][bandwidth]") {
  relay_pair rp("compression = \"zstd\"");
  std::map<std::string, std::string> sent; // checksum hex -> payload
  relay::producer_options po;
  po.url = "ws://" + rp.edge->address("ingest");
  auto p = relay::ws_producer::connect(po);
  REQUIRE(p.has_value());
  std::uint64_t payload_bytes = 0;
  for (int i = 0; i < 500; ++i) {
    std::string payload;
    for (int k = 0; k < 40; ++k)
      payload += "temperature=21." + std::to_string(i % 10) + " humidity=40 sensor=gw-" + std::to_string(k) + "\n";
    payload_bytes += payload.size();
    sent[util::checksum_hex(util::checksum(payload))] = payload;
    REQUIRE((*p)->send("telemetry", payload).has_value());
  }
  REQUIRE((*p)->flush().has_value());
  REQUIRE(eventually([&] { return num(rp.hub->status().at("totals").at("delivered")) == 500; }, 20s));
  auto c = peer_status(*rp.edge).at("compression").as_object();
  CHECK(c.at("algorithm") == "zstd");
  INFO("before " << num(c.at("bytes_before")) << " after " << num(c.at("bytes_after")) << " payload " << payload_bytes);
  CHECK(num(c.at("bytes_after")) * 4 < static_cast<std::int64_t>(payload_bytes));
  CHECK(num(c.at("bytes_before")) > static_cast<std::int64_t>(payload_bytes));
  std::size_t same = 0;
  auto read = relay::read_spool(rp.dir / "spool", [&](const relay::spool_record& r) {
    auto it = sent.find(util::checksum_hex(r.checksum));
    if (it != sent.end() && it->second == r.payload) ++same;
    return true;
  });
  REQUIRE(read.has_value());
  CHECK(same == 500);
}

TEST_CASE("reload adds and removes peers live, reports what needs a restart, and refuses an invalid file",
          "[e2e][reload]") {
  relay_pair rp("streams = [\"s\", \"keep-2\"]");
  auto admin = "http://" + rp.edge->address("admin");
  // A second peer (a local spool) and a changed data_dir.
  std::string extra_peer =
      "\n[[peer]]\nname = \"local\"\nurl = \"file://" + (rp.dir / "local").string() + "\"\nstreams = [\"keep-*\"]\n";
  auto text = [&] {
    std::ifstream in(rp.edge_file);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  };
  auto original = text();
  auto changed = original + extra_peer;
  auto pos = changed.find(q(rp.dir / "edge"));
  changed.replace(pos, q(rp.dir / "edge").size(), q(rp.dir / "elsewhere"));
  write_file(rp.edge_file, changed);
  auto r = relay::http_call("POST", admin + "/v1/reload");
  REQUIRE(r.has_value());
  INFO(r->body);
  REQUIRE(r->status == 200);
  CHECK_THAT(r->body, Contains("peer local: added"));
  CHECK_THAT(r->body, Contains("node.data_dir"));
  REQUIRE(rp.edge->status().at("peers").as_array().size() == 2);
  post_segments(*rp.edge, 5, 10, "keep-1");
  CHECK(eventually([&] { return num(peer_status(*rp.edge, 1).at("delivered")) == 5; }));
  CHECK(num(peer_status(*rp.edge, 0).at("routed")) == 0);
  CHECK(num(peer_status(*rp.edge, 0).at("connections")) == 1); // the hub connection was not touched

  // An invalid file changes nothing and answers with check-config's lines.
  write_file(rp.edge_file, changed + "\n[queue]\nmax_bytes = \"lots\"\n");
  r = relay::http_call("POST", admin + "/v1/reload");
  REQUIRE(r.has_value());
  CHECK(r->status == 400);
  CHECK_THAT(r->body, Contains("queue.max_bytes") && Contains("invalid_config"));
  CHECK(rp.edge->status().at("peers").as_array().size() == 2);

  // Removing the peer stops routing to it; its counters stay visible.
  write_file(rp.edge_file, original);
  r = relay::http_call("POST", admin + "/v1/reload");
  REQUIRE(r.has_value());
  CHECK(r->status == 200);
  CHECK_THAT(r->body, Contains("peer local: removed"));
  CHECK(peer_status(*rp.edge, 1).at("state") == "disabled");
  // Every field of a peer entry is there for a removed peer too.
  CHECK(peer_status(*rp.edge, 1).contains("last_conn_bytes"));
  CHECK(peer_status(*rp.edge, 1).contains("last_conn_ms"));
  auto ingest = "http://" + rp.edge->address("ingest");
  auto posted = relay::http_call("POST", ingest + "/v1/streams/keep-2/segments", "x");
  REQUIRE(posted.has_value());
  CHECK(posted->status == 201); // routed to the hub peer only
  CHECK(eventually([&] { return num(peer_status(*rp.edge, 0).at("delivered")) == 1; }));
  CHECK(num(peer_status(*rp.edge, 1).at("routed")) == 5);
}

TEST_CASE("a removed peer's queue stays in status, totals and metrics, across a restart too, and its link does not "
          "look down",
          "[e2e][reload]") {
  test::temp_dir dir{"removed-peer"};
  auto p = transport::pki_init(dir / "pki");
  REQUIRE(p.has_value());
  const auto file = dir / "node.toml";
  const std::string head = "[node]\nid = \"n\"\ndata_dir = " + q(dir / "data") +
                           "\n[queue]\nmax_retry = 1000\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = "
                           "\"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\nurl = "
                           "\"file://" +
                           (dir / "spool").string() + "\"\nstreams = [\"s\"]\n";
  // "stuck": a closed port, so what is routed to it stays queued.
  const std::string stuck = "[[peer]]\nname = \"stuck\"\nurl = \"wss://127.0.0.1:1\"\nserver_name = \"localhost\"\n"
                            "streams = [\"held\"]\ncert = " +
                            q(p->client_cert) + "\nkey = " + q(p->client_key) + "\nca = " + q(p->ca_cert) + "\n";
  write_file(file, head + stuck);
  auto n = start_node(file);
  post_segments(*n, 3, 10, "held");
  REQUIRE(num(peer_status(*n, 1).at("routed")) == 3);
  auto reload = [&] {
    auto r = relay::http_call("POST", "http://" + n->address("admin") + "/v1/reload");
    REQUIRE(r.has_value());
    INFO(r->body);
    CHECK(r->status == 200);
    return r->body;
  };
  write_file(file, head);
  CHECK_THAT(reload(), Contains("peer stuck: removed"));
  auto check_kept = [&](const char* when) {
    INFO(when);
    auto st = n->status();
    auto& peers = st.at("peers").as_array();
    REQUIRE(peers.size() == 2);
    auto& s = peers.at(1).as_object();
    CHECK(s.at("name") == "stuck");
    CHECK(s.at("state") == "disabled");
    CHECK(num(s.at("queued")) == 3);
    CHECK(s.contains("last_conn_bytes"));
    CHECK(s.at("last_error").as_string().find("kept") != std::string::npos);
    CHECK(num(st.at("totals").at("queued")) == 3);
    CHECK(num(st.at("queue").at("segments")) == 3);
    CHECK(num(st.at("totals").at("loss")) == 0);
    auto m = relay::http_call("GET", "http://" + n->address("admin") + "/metrics");
    REQUIRE(m.has_value());
    CHECK(test::series_value(m->body, "edgerelay_queue_segments{peer=\"stuck\"}") == 3.0);
    CHECK(test::series_value(m->body, "edgerelay_peer_connected{peer=\"spool\"}").has_value());
    // Removed on purpose is not down: no peer_connected series to alert on.
    CHECK_FALSE(test::series_value(m->body, "edgerelay_peer_connected{peer=\"stuck\"}"));
    CHECK_FALSE(test::series_value(m->body, "edgerelay_bytes_sent_total{peer=\"stuck\"}"));
  };
  check_kept("after the reload");
  // A start with a config that does not name it: the store still holds its queue, and status says so.
  n->stop();
  n.reset();
  n = start_node(file);
  check_kept("after a restart");
  // Configured again (now a spool of its own): its queue is delivered.
  write_file(file, head + "[[peer]]\nname = \"stuck\"\nurl = \"file://" + (dir / "stuck-spool").string() +
                       "\"\nstreams = [\"held\"]\n");
  CHECK_THAT(reload(), Contains("peer stuck: re-added"));
  CHECK(eventually([&] { return num(peer_status(*n, 1).at("delivered")) == 3; }));
  CHECK(num(n->status().at("totals").at("queued")) == 0);
  n->stop();
}

TEST_CASE("SIGHUP reloads a running node's config and logs what it applied", "[e2e][reload]") {
  test::temp_dir dir{"bw-sighup"};
  auto file = dir / "node.toml";
  auto body = [&](const std::string& bw) {
    return "[node]\nid = \"n\"\ndata_dir = " + q(dir / "data") +
           "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
           "[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\nurl = \"file://" +
           (dir / "spool").string() + "\"\n" + bw;
  };
  write_file(file, body(""));
  auto log = dir / "node.log";
  test::process node({std::string(EDGERELAY_BIN_DIR) + "/edgerelay", "run", "--config", file.string()}, log);
  auto read_log = [&] {
    std::ifstream in(log);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  };
  std::string admin;
  REQUIRE(eventually([&] {
    auto l = read_log();
    auto at = l.find("admin ");
    if (at == std::string::npos) return false;
    admin = l.substr(at + 6, l.find_first_of(",\n", at) - at - 6);
    return true;
  }));
  write_file(file, body("bandwidth = {rate = \"1MiB/s\"}\n"));
  REQUIRE(node.running());
  ::kill(node.pid(), SIGHUP);
  REQUIRE(eventually(
      [&] { return read_log().find("reload: applied: peer spool: bandwidth (rate)") != std::string::npos; }));
  auto st = relay::http_call("GET", "http://" + admin + "/v1/status");
  REQUIRE(st.has_value());
  CHECK_THAT(st->body, Contains("\"rate_bytes_per_s\":1048576"));
  write_file(file, body("bandwidth = {rate = \"fast\"}\n"));
  ::kill(node.pid(), SIGHUP);
  REQUIRE(eventually([&] { return read_log().find("refused, nothing changed") != std::string::npos; }));
  CHECK_THAT(read_log(), Contains("peer[0].bandwidth.rate"));
  CHECK(node.running());
  CHECK(node.stop(SIGTERM) == 0);
}

TEST_CASE("a reloaded allow list applies to the next handshake, max_retry changes live", "[e2e][reload]") {
  relay_pair rp("", "allow = [\"CN:nobody\"]");
  auto ingest = "http://" + rp.edge->address("ingest");
  auto posted = relay::http_call("POST", ingest + "/v1/streams/s/segments", "held back");
  REQUIRE(posted.has_value());
  REQUIRE(posted->status == 201);
  auto hub_metrics = [&] {
    auto m = relay::http_call("GET", "http://" + rp.hub->address("admin") + "/metrics");
    return m ? m->body : std::string();
  };
  REQUIRE(eventually([&] { return hub_metrics().find("reason=\"not_allowed\"") != std::string::npos; }));
  CHECK(num(rp.hub->status().at("totals").at("accepted")) == 0);

  // The same listen address (a restart-only key) with the allow list removed.
  rp.write_hub("", "127.0.0.1:0");
  auto r = relay::http_call("POST", "http://" + rp.hub->address("admin") + "/v1/reload");
  REQUIRE(r.has_value());
  INFO(r->body);
  REQUIRE(r->status == 200);
  CHECK_THAT(r->body, Contains("listen: TLS material and allow list"));
  CHECK_THAT(r->body, !Contains("listen.address"));
  CHECK(eventually([&] { return num(rp.hub->status().at("totals").at("accepted")) == 1; }, 20s));

  // A config naming a missing file is refused as a whole: nothing changes.
  rp.write_hub("crl = " + q(rp.dir / "missing-crl.pem"), "127.0.0.1:0");
  r = relay::http_call("POST", "http://" + rp.hub->address("admin") + "/v1/reload");
  REQUIRE(r.has_value());
  CHECK(r->status == 400); // check-config refuses a missing file: nothing changed
  CHECK_THAT(r->body, Contains("listen.crl"));

  rp.write_edge("");
  auto text = [&] {
    std::ifstream in(rp.edge_file);
    return std::string((std::istreambuf_iterator<char>(in)), {});
  }();
  write_file(rp.edge_file, text + "\n[queue]\nmax_retry = 3\n");
  r = relay::http_call("POST", "http://" + rp.edge->address("admin") + "/v1/reload");
  REQUIRE(r.has_value());
  INFO(r->body);
  CHECK(r->status == 200);
  CHECK_THAT(r->body, Contains("queue.max_retry"));
}

TEST_CASE("a rate-limited file:// sink holds each batch until its bytes are allowed and spools all of it once, in "
          "order",
          "[e2e][bandwidth]") {
  // The sink writes a batch while the store shows it; when the budget does
  // not allow the batch's bytes, it lets the batch go, waits, and reads it
  // again. 200 segments of 1 KiB at 2 Mbit/s (250 KB/s) with a 4 KiB burst
  // take at least 0.6 s.
  test::temp_dir dir("bw-file-rate");
  write_file(dir / "edge.toml", terminal_node(dir.path(), "{rate = \"2Mbit\", burst = \"4KiB\"}"));
  auto n = start_node(dir / "edge.toml");
  auto t0 = std::chrono::steady_clock::now();
  post_segments(*n, 200, 1024);
  std::vector<std::string> payloads;
  REQUIRE(eventually(
      [&] {
        payloads.clear();
        auto r = relay::read_spool(dir / "spool", [&](const relay::spool_record& rec) {
          payloads.emplace_back(rec.payload);
          return true;
        });
        return r && payloads.size() >= 200;
      },
      30s));
  auto took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  CHECK(took >= 0.6);
  REQUIRE(payloads.size() == 200);
  for (int i = 0; i < 200; ++i)
    CHECK(payloads[static_cast<std::size_t>(i)].rfind(std::to_string(i) + ":", 0) == 0);
  CHECK(eventually([&] { return num(peer_status(*n).at("delivered")) == 200; }, 10s));
  n->stop();
}
