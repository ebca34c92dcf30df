// An edge node whose peer is an https:// endpoint (a test HTTPS server with
// mutual TLS): 2xx delivers, 4xx dead-letters, 5xx is retried.

#include "queue/store.hpp"
#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "tests/support/temp_dir.hpp"
#include "transport/http_server.hpp"
#include "transport/pki.hpp"
#include "transport/tls.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <condition_variable>
#include <functional>
#include <set>
#include <thread>

using namespace edgerelay;
using namespace std::chrono_literals;
namespace json = boost::json;
namespace net = boost::asio;

namespace {

struct sink_handler : transport::http_handler {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<unsigned> script; // statuses to answer, in order; then 200
  std::multiset<std::string> ids;
  std::vector<std::string> first_ids; // the first POST's
  std::set<std::string> identities;   // client certificate identities seen
  int posts = 0;
  // hold_first: the first POST waits (up to 20 s) until `release` is set,
  // then runs `on_release` before it is answered.
  bool hold_first = false, release = false;
  std::function<void()> on_release;
  void on_request(transport::http_request&& req, const transport::connection_info& who,
                  transport::responder r) override {
    std::unique_lock lk(mu);
    ++posts;
    if (hold_first && posts == 1) {
      cv.notify_all();
      cv.wait_for(lk, 20s, [&] { return release; });
      if (on_release) on_release();
    }
    unsigned status = script.empty() ? 200 : script.front();
    if (!script.empty()) script.erase(script.begin());
    if (status == 200) {
      identities.insert(who.identity);
      auto v = json::parse(req.body());
      for (auto& s : v.at("segments").as_array()) {
        ids.insert(std::string(s.at("id").as_string()));
        if (posts == 1) first_ids.emplace_back(s.at("id").as_string());
      }
    }
    r.send_json(status, R"({"ok":)" + std::string(status == 200 ? "true" : "false") + "}");
  }
};

struct https_fixture {
  test::temp_dir dir{"https"};
  transport::pki_paths pki;
  net::io_context io;
  std::optional<net::executor_work_guard<net::io_context::executor_type>> guard{io.get_executor()};
  std::thread t{[this] { io.run(); }};
  sink_handler h;
  std::unique_ptr<transport::tls_material> tls;
  std::shared_ptr<transport::http_server> srv;
  std::unique_ptr<relay::node> edge;

  https_fixture() {
    auto p = transport::pki_init(dir / "pki");
    REQUIRE(p.has_value());
    pki = *p;
    auto m = transport::tls_material::create(transport::tls_role::server, pki.server_files());
    REQUIRE(m.has_value());
    tls = std::move(*m);
    auto s = transport::http_server::create(io, {net::ip::make_address("127.0.0.1"), 0}, h, {}, tls.get());
    REQUIRE(s.has_value());
    srv = *s;
    srv->start();
  }
  ~https_fixture() {
    if (edge) edge->stop();
    srv->stop();
    guard.reset();
    io.stop();
    t.join();
  }
  void start_edge(int max_retry) {
    auto q = [](const std::filesystem::path& x) { return "\"" + x.string() + "\""; };
    std::string toml = "[node]\nid = \"edge\"\ndata_dir = " + q(dir / "data") +
                       "\n[evidence]\ncanary_interval = \"0s\"\n[queue]\nmax_retry = " + std::to_string(max_retry) +
                       "\nretry_backoff = {initial = \"10ms\", max = \"20ms\", multiplier = 2.0, jitter = 0.0}\n"
                       "[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[peer]]\nname = "
                       "\"api\"\nurl = \"https://127.0.0.1:" +
                       std::to_string(srv->local_endpoint().port()) +
                       "/ingest\"\nserver_name = \"localhost\"\ncert = " + q(pki.client_cert) +
                       "\nkey = " + q(pki.client_key) + "\nca = " + q(pki.ca_cert) + "\n";
    auto cfg = relay::parse_config(toml, "edge.toml", dir.path());
    INFO((cfg ? std::string() : relay::to_string(cfg.error())));
    REQUIRE(cfg.has_value());
    auto n = relay::node::create(std::move(*cfg), nullptr, 2);
    REQUIRE(n.has_value());
    edge = std::move(*n);
    REQUIRE(edge->start().has_value());
  }
  void send(int n) {
    for (int i = 0; i < n; ++i) {
      auto r = relay::http_call("POST", "http://" + edge->address("ingest") + "/v1/streams/api/segments",
                                "payload-" + std::to_string(i));
      REQUIRE(r.has_value());
      REQUIRE(r->status == 201);
    }
  }
  std::int64_t total(const char* k) { return edge->status().at("totals").at(k).to_number<std::int64_t>(); }
  std::string peer_error() {
    auto st = edge->status();
    return std::string(st.at("peers").as_array().at(0).at("last_error").as_string());
  }
  template <class F>
  bool wait_until(F&& f) {
    for (int i = 0; i < 200; ++i) {
      if (f()) return true;
      std::this_thread::sleep_for(25ms);
    }
    return f();
  }
};

} // namespace

TEST_CASE("an https peer receives JSON batches over mutual TLS and 2xx delivers them", "[e2e][https]") {
  https_fixture f;
  f.start_edge(5);
  f.send(20);
  REQUIRE(f.wait_until([&] { return f.total("delivered") == 20; }));
  std::lock_guard lk(f.h.mu);
  CHECK(f.h.ids.size() == 20);
  CHECK(f.h.ids.count("edge:1") == 1);
  CHECK(f.h.identities == std::set<std::string>{"URI:spiffe://edgerelay/edge/demo"});
  CHECK(f.total("loss") == 0);
}

TEST_CASE("an https peer's 5xx answers are retried and its 4xx answers dead-letter with the status", "[e2e][https]") {
  https_fixture f;
  {
    std::lock_guard lk(f.h.mu);
    f.h.script = {503, 503, 400};
  }
  f.start_edge(10);
  f.send(1);
  // 503, 503 (two failed attempts), then 400: dead-lettered with reason http_400.
  REQUIRE(f.wait_until([&] { return f.total("deadletter") == 1; }));
  auto st = f.edge->status();
  auto& peer = st.at("peers").as_array()[0].as_object();
  CHECK(peer.at("attempts").to_number<int>() == 3);
  auto dl = relay::http_call("GET", "http://" + f.edge->address("admin") + "/v1/deadletter");
  REQUIRE(dl.has_value());
  CHECK(dl->body.find("\"reason\":\"http_400\"") != std::string::npos);
  // The next segment goes through.
  f.send(1);
  REQUIRE(f.wait_until([&] { return f.total("delivered") == 1; }));
  CHECK(f.total("loss") == 0);
}

TEST_CASE("an https peer counts on the wire only what a POST wrote: nothing while the endpoint is down",
          "[e2e][https][bandwidth]") {
  https_fixture f;
  f.start_edge(1000);
  f.send(1);
  REQUIRE(f.wait_until([&] { return f.total("delivered") == 1; }));
  auto sent = [&] {
    return f.edge->status().at("peers").as_array()[0].as_object().at("bytes_sent").to_number<std::int64_t>();
  };
  const auto one_post = sent();
  CHECK(one_post > 200); // the request as written: headers and the JSON body
  // The endpoint goes away: attempts fail at the connect, and count nothing (they used to count the body
  // each time, against a daily quota too).
  f.srv->stop();
  f.send(1);
  REQUIRE(f.wait_until(
      [&] { return f.edge->status().at("peers").as_array()[0].as_object().at("attempts").to_number<int>() >= 3; }));
  CHECK(sent() == one_post);
  CHECK(f.total("queued") == 1);
}

TEST_CASE("an ack that fails after a 2xx is retried, never by posting the batch again", "[e2e][https]") {
  // The first POST is held until more segments are queued; then the edge's
  // next commit, which is the ack of that POST, fails as on a full disk.
  https_fixture f;
  f.h.hold_first = true;
  f.start_edge(5);
  f.send(3);
  auto& store = f.edge->store_for_test();
  {
    std::unique_lock lk(f.h.mu);
    REQUIRE(f.h.cv.wait_for(lk, 10s, [&] { return f.h.posts >= 1; }));
    f.h.on_release = [&] { store.fail_next_commits_for_test(1, ENOSPC); };
    f.h.release = true;
  }
  f.h.cv.notify_all();
  REQUIRE(f.wait_until([&] { return store.commit_faults_pending_for_test() == 0 && f.total("queued") == 0; }));
  f.send(5);
  REQUIRE(f.wait_until([&] { return f.total("delivered") == 8; }));
  CHECK(f.peer_error().empty());
  std::lock_guard lk(f.h.mu);
  REQUIRE_FALSE(f.h.first_ids.empty());
  for (auto& id : f.h.first_ids)
    CHECK(f.h.ids.count(id) == 1); // posted once
  CHECK(f.h.ids.size() == 8);
  CHECK(std::set<std::string>(f.h.ids.begin(), f.h.ids.end()).size() == 8);
  CHECK(f.total("loss") == 0);
}
