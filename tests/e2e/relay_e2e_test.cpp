// End to end: real edgerelay processes on loopback, an edge forwarding to a
// hub over the relay protocol with mutual TLS, the hub spooling to files.

#include "relay/http_client.hpp"
#include "relay/spool.hpp"
#include "tests/support/ports.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/toml.hpp"
#include "transport/pki.hpp"
#include "util/bytes.hpp"
#include "util/checksum.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <map>
#include <random>

using namespace edgerelay;
using namespace std::chrono_literals;
namespace json = boost::json;
using Catch::Matchers::Contains;

namespace {

using test::free_port;

using test::q;

template <class F>
bool wait_until(F&& f, std::chrono::milliseconds limit) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (f()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return f();
}

struct cluster {
  test::temp_dir dir{"e2e"};
  transport::pki_paths pki;
  std::uint16_t hub_listen = free_port(), hub_admin = free_port(), edge_ingest = free_port(), edge_admin = free_port();
  std::filesystem::path spool = dir / "hub-spool";
  test::process hub, edge;
  std::string edge_extra_queue = "max_retry = 1000\nretry_backoff = {initial = \"50ms\", max = \"500ms\", "
                                 "multiplier = 2.0, jitter = 0.2}\n";
  std::string edge_extra_peers;

  cluster() {
    auto p = transport::pki_init(dir / "pki");
    REQUIRE(p.has_value());
    pki = *p;
  }

  static std::string bin() { return std::string(EDGERELAY_BIN_DIR) + "/edgerelay"; }

  std::filesystem::path write(const std::string& name, const std::string& toml) {
    auto f = dir / name;
    std::ofstream(f) << toml;
    return f;
  }

  bool healthy(std::uint16_t admin) {
    auto r = relay::http_call("GET", "http://127.0.0.1:" + std::to_string(admin) + "/healthz", {}, 1s);
    return r && r->status == 200;
  }

  // Waits for a node just started to answer /healthz; when it does not, the
  // failure says whether the process is still running and shows its log.
  void require_healthy(const test::process& p, std::uint16_t admin, const char* name) {
    auto t0 = std::chrono::steady_clock::now();
    bool ok = wait_until([&] { return !p.running() || healthy(admin); }, 20s) && p.running();
    auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    INFO(name << " after " << waited.count() << " ms: " << (p.running() ? "running" : "exited") << "; its log:\n"
              << p.log());
    REQUIRE(ok);
  }

  void start_hub() {
    auto cfg =
        write("hub.toml", "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "hub") +
                              "\n[listen]\naddress = "
                              "\"127.0.0.1:" +
                              std::to_string(hub_listen) + "\"\ncert = " + q(pki.server_cert) +
                              "\nkey = " + q(pki.server_key) + "\nca = " + q(pki.ca_cert) + "\ncrl = " + q(pki.crl) +
                              "\n[admin]\nlisten = \"127.0.0.1:" + std::to_string(hub_admin) +
                              "\"\n[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\nurl = \"file://" +
                              spool.string() + "\"\n");
    hub = test::process({bin(), "run", "--config", cfg.string()}, dir / "hub.log");
    require_healthy(hub, hub_admin, "hub");
  }

  void start_edge() {
    auto cfg = write(
        "edge.toml",
        "[node]\nid = \"edge\"\ndata_dir = " + q(dir / "edge") + "\n[queue]\n" + edge_extra_queue +
            "[ingest]\nlisten = \"127.0.0.1:" + std::to_string(edge_ingest) +
            "\"\n[admin]\nlisten = \"127.0.0.1:" + std::to_string(edge_admin) +
            "\"\n[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"hub\"\nurl = \"wss://127.0.0.1:" +
            std::to_string(hub_listen) + "/v1/relay\"\nserver_name = \"localhost\"\ncert = " + q(pki.client_cert) +
            "\nkey = " + q(pki.client_key) + "\nca = " + q(pki.ca_cert) + "\ncompression = \"zstd\"\n" +
            "dial_timeout = \"2s\"\nack_timeout = \"10s\"\n" + edge_extra_peers);
    edge = test::process({bin(), "run", "--config", cfg.string()}, dir / "edge.log");
    require_healthy(edge, edge_admin, "edge");
  }

  json::object status(std::uint16_t admin) {
    auto r = relay::http_call("GET", "http://127.0.0.1:" + std::to_string(admin) + "/v1/status");
    REQUIRE(r.has_value());
    REQUIRE(r->status == 200);
    return json::parse(r->body).as_object();
  }
  static std::int64_t total(const json::object& s, const char* k) {
    return s.at("totals").at(k).to_number<std::int64_t>();
  }

  // Sends n segments (sizes from `size`) to the edge and returns id -> checksum.
  std::map<std::string, std::uint64_t> send(int n, const std::function<std::size_t(std::mt19937_64&)>& size,
                                            std::uint64_t seed = 1) {
    std::mt19937_64 rng(seed);
    std::map<std::string, std::uint64_t> sent;
    const std::string base = "http://127.0.0.1:" + std::to_string(edge_ingest) + "/v1/streams/";
    for (int i = 0; i < n;) {
      int k = std::min(100, n - i);
      std::string body;
      std::vector<std::uint64_t> sums;
      std::size_t bytes = 0;
      int j = 0;
      for (; j < k && bytes < (8u << 20); ++j) {
        std::string p(size(rng), '\0');
        for (auto& c : p)
          c = static_cast<char>(rng());
        util::writer(body).u32(static_cast<std::uint32_t>(p.size()));
        body += p;
        bytes += p.size();
        sums.push_back(util::checksum(p));
      }
      auto r = relay::http_call("POST", base + "data/batch", body, 30s);
      REQUIRE(r.has_value());
      INFO(r->body);
      REQUIRE(r->status == 201);
      auto ids = json::parse(r->body).at("ids").as_array();
      REQUIRE(ids.size() == sums.size());
      for (std::size_t x = 0; x < ids.size(); ++x)
        sent[std::string(ids[x].as_string())] = sums[x];
      i += j;
    }
    return sent;
  }

  // id -> how many times it is in the hub's spool; counts bad checksums.
  std::map<std::string, int> spooled(std::uint64_t* bad = nullptr) {
    std::map<std::string, int> seen;
    relay::read_spool(spool, [&](const relay::spool_record& r) {
      ++seen[r.id];
      if (bad && util::checksum(r.payload) != r.checksum) ++*bad;
      return true;
    });
    return seen;
  }

  // `unacknowledged_ok`: segments the sink may hold beyond `sent` — those of a
  // request the edge committed but whose 201 was lost when it was killed.
  // They must still be there at most once.
  void check_exactly_once(const std::map<std::string, std::uint64_t>& sent, std::chrono::milliseconds limit,
                          std::size_t unacknowledged_ok = 0) {
    REQUIRE(wait_until([&] { return spooled().size() >= sent.size(); }, limit));
    std::uint64_t bad = 0;
    auto seen = spooled(&bad);
    CHECK(bad == 0);
    std::size_t missing = 0, dup = 0;
    for (auto& [id, sum] : sent) {
      auto it = seen.find(id);
      if (it == seen.end())
        ++missing;
      else if (it->second != 1)
        ++dup;
    }
    CHECK(missing == 0);
    CHECK(dup == 0);
    std::size_t repeated = 0;
    for (auto& [id, n] : seen)
      if (n != 1) ++repeated;
    CHECK(repeated == 0);
    CHECK(seen.size() >= sent.size());
    CHECK(seen.size() <= sent.size() + unacknowledged_ok);
  }

  // A producer thread: POSTs requests of `per_request` segments of
  // `min_size` + (0 .. `spread` - 1) random bytes to the edge until stop(),
  // `rounds` requests, or the first request without a 201 (why: error()).
  // Every 201's ids and checksums are in sent().
  class producer {
  public:
    producer(cluster& c, std::uint64_t seed, int per_request, std::size_t min_size, std::size_t spread, int rounds)
        : thread_([this, &c, seed, per_request, min_size, spread, rounds] {
            std::mt19937_64 rng(seed);
            const std::string url = "http://127.0.0.1:" + std::to_string(c.edge_ingest) + "/v1/streams/data/batch";
            for (int round = 0; round < rounds && !stop_; ++round) {
              std::string body;
              std::vector<std::uint64_t> sums;
              for (int j = 0; j < per_request; ++j) {
                std::string p(min_size + rng() % spread, '\0');
                for (auto& ch : p)
                  ch = static_cast<char>(rng());
                util::writer(body).u32(static_cast<std::uint32_t>(p.size()));
                body += p;
                sums.push_back(util::checksum(p));
              }
              auto r = relay::http_call("POST", url, body, 10s);
              std::lock_guard lk(mu_);
              if (!r || r->status != 201) {
                error_ = r ? "HTTP " + std::to_string(r->status) + ": " + r->body : r.error().message;
                return;
              }
              auto ids = json::parse(r->body).at("ids").as_array();
              for (std::size_t x = 0; x < ids.size(); ++x)
                sent_[std::string(ids[x].as_string())] = sums[x];
            }
          }) {}
    ~producer() { stop(); }
    void stop() {
      stop_ = true;
      if (thread_.joinable()) thread_.join();
    }
    std::map<std::string, std::uint64_t> sent() {
      std::lock_guard lk(mu_);
      return sent_;
    }
    std::string error() {
      std::lock_guard lk(mu_);
      return error_;
    }

  private:
    std::mutex mu_;
    std::map<std::string, std::uint64_t> sent_;
    std::string error_;
    std::atomic<bool> stop_{false};
    std::thread thread_; // last: starts once the members above exist
  };
};

std::size_t mixed_size(std::mt19937_64& rng) {
  auto r = rng() % 1000;
  if (r == 0) return 1u << 20;                          // 1 MiB
  if (r < 10) return 64u * 1024 + rng() % (900u << 10); // 64 KiB .. ~1 MiB
  if (r < 100) return 1 + rng() % 16384;
  return 1 + rng() % 1024;
}

} // namespace

TEST_CASE("10,000 segments of mixed sizes reach the hub's spool exactly once over mTLS", "[e2e]") {
  cluster c;
  c.start_hub();
  c.start_edge();
  auto sent = c.send(10000, mixed_size);
  c.check_exactly_once(sent, 120s);
  REQUIRE(wait_until([&] { return cluster::total(c.status(c.edge_admin), "delivered") == 10000; }, 20s));
  auto es = c.status(c.edge_admin), hs = c.status(c.hub_admin);
  CHECK(cluster::total(es, "loss") == 0);
  CHECK(cluster::total(hs, "loss") == 0);
  CHECK(cluster::total(hs, "accepted") == 10000);
  CHECK(cluster::total(es, "queued") == 0);
}

TEST_CASE("segments sent while the hub is down are delivered when it comes up", "[e2e]") {
  cluster c;
  c.start_edge();
  auto sent = c.send(500, [](auto& rng) { return 1 + rng() % 4096; });
  std::this_thread::sleep_for(1500ms); // the edge fails to dial a few times
  auto es = c.status(c.edge_admin);
  CHECK(cluster::total(es, "queued") == 500);
  CHECK_THAT(std::string(es.at("peers").as_array()[0].at("last_error").as_string()), Contains("connect"));
  c.start_hub();
  c.check_exactly_once(sent, 60s);
}

TEST_CASE("a hub down past max_retry leaves everything in the dead-letter store, retried by the admin API", "[e2e]") {
  cluster c;
  c.edge_extra_queue = "max_retry = 3\nretry_backoff = {initial = \"20ms\", max = \"50ms\", multiplier = 2.0, "
                       "jitter = 0.0}\n";
  c.start_edge();
  auto sent = c.send(200, [](auto& rng) { return 1 + rng() % 2048; });
  REQUIRE(wait_until([&] { return cluster::total(c.status(c.edge_admin), "deadletter") == 200; }, 60s));
  auto dl = relay::http_call("GET", "http://127.0.0.1:" + std::to_string(c.edge_admin) + "/v1/deadletter?limit=1000");
  REQUIRE(dl.has_value());
  auto entries = json::parse(dl->body).at("entries").as_array();
  REQUIRE(entries.size() == 200);
  CHECK(entries[0].at("reason").as_string() == "max_retry");
  CHECK(entries[0].at("attempts").to_number<int>() == 3);
  CHECK_THAT(std::string(entries[0].at("last_error").as_string()), Contains("127.0.0.1"));
  CHECK(cluster::total(c.status(c.edge_admin), "loss") == 0);
  c.start_hub();
  auto r = relay::http_call("POST", "http://127.0.0.1:" + std::to_string(c.edge_admin) + "/v1/deadletter/retry",
                            R"({"all": true})");
  REQUIRE(r.has_value());
  CHECK(r->status == 200);
  CHECK_THAT(r->body, Contains("\"retried\":200"));
  c.check_exactly_once(sent, 60s);
}

TEST_CASE("kill -9 of the edge mid-run loses nothing and duplicates nothing at the sink", "[e2e]") {
  cluster c;
  c.start_hub();
  c.start_edge();
  // A producer keeps sending while the edge is killed; every segment it got
  // a 201 for must reach the sink exactly once after the restart.
  cluster::producer producer(c, 7, 50, 1, 4096, 2000);
  bool mid = wait_until([&] { return c.spooled().size() > 500; }, 30s);
  c.edge.stop(SIGKILL);
  producer.stop(); // it ends on the first request the dead edge cannot answer
  auto sent = producer.sent();
  REQUIRE(mid);
  auto before = c.spooled().size();
  INFO("acknowledged " << sent.size() << ", at the sink before the restart " << before);
  CHECK(before < sent.size() + 1);
  c.start_edge();
  // The batch in flight at the kill may have been committed without its 201
  // reaching the producer: up to 50 segments the producer does not know of.
  c.check_exactly_once(sent, 60s, 50);
  CHECK(cluster::total(c.status(c.edge_admin), "loss") == 0);
}

TEST_CASE("kill -9 of the hub while its sink writes: the spool holds every segment exactly once", "[e2e]") {
  cluster c;
  c.start_hub();
  c.start_edge();
  // The hub's file sink acknowledges a spooled batch while it writes the
  // next: a kill can leave up to two batches both in the spool and queued.
  // After each restart the sink must skip what the spool already holds.
  cluster::producer producer(c, 11, 200, 16, 256, 20000);
  int kills = 0;
  for (int i = 0; i < 5; ++i) {
    auto base = c.spooled().size();
    // Kill while the sink is busy: a few thousand segments after the last start.
    if (!wait_until([&] { return c.spooled().size() > base + 3000; }, 30s)) break;
    c.hub.stop(SIGKILL);
    ++kills;
    c.start_hub();
  }
  producer.stop();
  CHECK(kills == 5);
  CHECK(producer.error() == ""); // the edge answered every request while the hub was killed
  auto sent = producer.sent();
  INFO("acknowledged " << sent.size() << " segments, hub killed " << kills << " times");
  c.check_exactly_once(sent, 120s);
  CHECK(cluster::total(c.status(c.edge_admin), "loss") == 0);
  auto hs = c.status(c.hub_admin);
  CHECK(cluster::total(hs, "loss") == 0);
  // Each segment in the spool is counted delivered once, whichever way it
  // went: acked from the queue, spooled directly, or found spooled and
  // uncommitted after a kill (docs/store.md, "Direct delivery").
  REQUIRE(wait_until([&] { return cluster::total(c.status(c.hub_admin), "queued") == 0; }, 20s));
  hs = c.status(c.hub_admin);
  CHECK(static_cast<std::size_t>(cluster::total(hs, "delivered")) == c.spooled().size());
  CHECK(hs.at("peers").as_array()[0].at("direct_delivered").to_number<std::int64_t>() > 0);
}

TEST_CASE("a dead peer neither delays nor loses the live peer's deliveries", "[e2e]") {
  cluster c;
  auto dead_port = free_port();
  c.edge_extra_peers = "[[peer]]\nname = \"dead\"\nurl = \"wss://127.0.0.1:" + std::to_string(dead_port) +
                       "/v1/relay\"\nserver_name = \"localhost\"\ncert = " + q(c.pki.client_cert) +
                       "\nkey = " + q(c.pki.client_key) + "\nca = " + q(c.pki.ca_cert) + "\ndial_timeout = \"1s\"\n";
  c.start_hub();
  c.start_edge();
  auto t0 = std::chrono::steady_clock::now();
  auto sent = c.send(2000, [](auto& rng) { return 1 + rng() % 4096; });
  c.check_exactly_once(sent, 60s);
  auto took = std::chrono::steady_clock::now() - t0;
  INFO("live peer delivery took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(took < 30s);
  auto es = c.status(c.edge_admin);
  json::object dead;
  for (auto& p : es.at("peers").as_array())
    if (p.at("name").as_string() == "dead") dead = p.as_object();
  REQUIRE_FALSE(dead.empty());
  CHECK(dead.at("routed").to_number<int>() == 2000);
  CHECK(dead.at("queued").to_number<int>() + dead.at("deadletter").to_number<int>() == 2000);
  CHECK(cluster::total(es, "loss") == 0);
}
