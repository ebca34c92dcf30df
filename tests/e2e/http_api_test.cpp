// The HTTP APIs' answers to producers and operators:
// - ingest (docs/ingest.md): a stored segment, a bad or reserved stream, a
//   segment too large, and a full queue under `overflow = "reject"` (507) and
//   `"block"` (429 after block_timeout), each with its error code and counted
//   under the same reason;
// - the admin API's dead-letter operations (docs/operations.md): a body it
//   does not understand is refused before anything is touched.

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/toml.hpp"
#include "transport/pki.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <future>
#include <thread>

using namespace edgerelay;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;
namespace json = boost::json;

namespace {

// An edge whose only peer never answers (nothing is delivered, the queue
// fills) with a 64 KiB queue and `queue_lines`.
std::unique_ptr<relay::node> start_edge(const test::temp_dir& dir, const std::string& name,
                                        const std::string& queue_lines) {
  auto pki = transport::pki_init(dir / (name + "-pki"));
  REQUIRE(pki.has_value());
  std::string toml = "[node]\nid = \"" + name + "\"\ndata_dir = " + test::q(dir / name) +
                     "\n[queue]\nmax_bytes = \"64KiB\"\nmax_segment_bytes = \"16KiB\"\n" + queue_lines +
                     "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                     "[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"up\"\n"
                     "url = \"wss://127.0.0.1:1/v1/relay\"\nserver_name = \"localhost\"\ncert = " +
                     test::q(pki->client_cert) + "\nkey = " + test::q(pki->client_key) +
                     "\nca = " + test::q(pki->ca_cert) + "\nstreams = [\"data\"]\n";
  return test::start_node(relay::parse_config(toml, name + ".toml", dir.path()));
}

std::string error_code(const relay::http_reply& r) {
  return std::string(json::parse(r.body).as_object().at("error").as_string());
}

std::int64_t rejected(relay::node& n, const char* reason) {
  auto r = relay::http_call("GET", "http://" + n.address("admin") + "/metrics");
  REQUIRE(r.has_value());
  const std::string key = "edgerelay_segments_rejected_total{reason=\"" + std::string(reason) + "\"} ";
  auto at = r->body.find(key);
  return at == std::string::npos ? 0 : std::stoll(r->body.substr(at + key.size()));
}

} // namespace

TEST_CASE("HTTP ingest answers 201, 400 for a bad or reserved stream, 404, 413, and queue_full as 507 (reject) or "
          "429 after block_timeout (block)",
          "[e2e][ingest]") {
  test::temp_dir dir("ingest-http");
  auto edge = start_edge(dir, "reject", "overflow = \"reject\"");
  const std::string ingest = "http://" + edge->address("ingest");
  const std::string kb10(10 << 10, 'x');

  auto r = relay::http_call("POST", ingest + "/v1/streams/data/segments", "hello");
  REQUIRE(r.has_value());
  CHECK(r->status == 201);
  CHECK_THAT(r->body, Contains("\"id\":\"reject:"));

  r = relay::http_call("POST", ingest + "/v1/streams/Not.Valid/segments", "x");
  CHECK(r->status == 400);
  CHECK(error_code(*r) == "bad_stream");
  CHECK_THAT(r->body, Contains("must match [a-z0-9._-]{1,64} and not start with"));
  for (const char* reserved : {"_canary", "_logs"}) {
    r = relay::http_call("POST", ingest + "/v1/streams/" + reserved + "/segments", "x");
    CHECK(r->status == 400);
    CHECK(error_code(*r) == "bad_stream");
    CHECK_THAT(r->body, Contains("is reserved: names starting with"));
  }
  r = relay::http_call("POST", ingest + "/v1/streams/other/segments", "x");
  CHECK(r->status == 404);
  CHECK(error_code(*r) == "no_route");
  r = relay::http_call("POST", ingest + "/v1/streams/data/segments", std::string(17 << 10, 'y'));
  CHECK(r->status == 413);
  CHECK(error_code(*r) == "too_large");

  // Full under "reject": 507 at once, nothing stored.
  unsigned stored = 0;
  for (int i = 0; i < 20; ++i) {
    r = relay::http_call("POST", ingest + "/v1/streams/data/segments", kb10);
    REQUIRE(r.has_value());
    if (r->status != 201) break;
    ++stored;
  }
  INFO(r->body);
  CHECK(stored >= 3);
  CHECK(r->status == 507);
  CHECK(error_code(*r) == "queue_full");
  CHECK(rejected(*edge, "queue_full") == 1);
  CHECK(rejected(*edge, "bad_stream") == 3);
  edge->stop();

  // Full under "block": the write waits block_timeout, then 429 with the same code.
  auto blocking = start_edge(dir, "block", "overflow = \"block\"\nblock_timeout = \"300ms\"");
  const std::string ingest2 = "http://" + blocking->address("ingest");
  for (int i = 0; i < 20; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    r = relay::http_call("POST", ingest2 + "/v1/streams/data/segments", kb10);
    REQUIRE(r.has_value());
    if (r->status == 201) continue;
    CHECK(std::chrono::steady_clock::now() - t0 >= 300ms);
    break;
  }
  INFO(r->body);
  CHECK(r->status == 429);
  CHECK(error_code(*r) == "queue_full");
  CHECK(rejected(*blocking, "queue_full") == 1);
  CHECK(rejected(*blocking, "store_unavailable") == 0);
  blocking->stop();
}

TEST_CASE("a node stopped while an ingest write waits for room (overflow = block) answers it and stops cleanly",
          "[e2e][ingest]") {
  // The store outlives the ingest handler and the io_context; it used to end
  // the waiting write in its destructor, calling into both after they were
  // gone (a use-after-free that ASan reports).
  test::temp_dir dir("ingest-stop");
  auto edge = start_edge(dir, "stopping", "overflow = \"block\"\nblock_timeout = \"60s\"");
  const std::string ingest = "http://" + edge->address("ingest");
  const std::string kb10(10 << 10, 'x');
  for (int i = 0; i < 20; ++i) { // fill the queue: each write is stored until one waits
    std::promise<int> answered;
    auto f = answered.get_future();
    std::thread writer([&] {
      auto r = relay::http_call("POST", ingest + "/v1/streams/data/segments", kb10, 90s);
      answered.set_value(r ? r->status : -1);
    });
    if (f.wait_for(2s) == std::future_status::ready) {
      writer.join();
      REQUIRE(f.get() == 201);
      continue;
    }
    // This one waits for room that never comes; stop the node under it.
    auto t0 = std::chrono::steady_clock::now();
    edge->stop();
    edge.reset();
    REQUIRE(f.wait_for(10s) == std::future_status::ready);
    writer.join();
    CHECK(std::chrono::steady_clock::now() - t0 < 10s); // not the 60 s of block_timeout
    CHECK(f.get() != 201);                              // answered (429) or its connection closed
    return;
  }
  FAIL("the queue never filled");
}

TEST_CASE("dead-letter retry and purge refuse a body they do not fully understand, and leave the dead letters alone",
          "[e2e][deadletter]") {
  test::temp_dir dir("admin-deadletter");
  auto edge = start_edge(dir, "dl",
                         "max_retry = 1\nretry_backoff = {initial = \"10ms\", max = \"20ms\", multiplier = 2.0, "
                         "jitter = 0.0}");
  const std::string ingest = "http://" + edge->address("ingest"), admin = "http://" + edge->address("admin");
  for (int i = 0; i < 2; ++i)
    REQUIRE(relay::http_call("POST", ingest + "/v1/streams/data/segments", "x")->status == 201);
  auto dead = [&] { return edge->status().at("totals").at("deadletter").to_number<std::int64_t>(); };
  REQUIRE(test::eventually([&] { return dead() == 2; }));

  // Each of these used to be read as something else (a field of the wrong
  // type or an unknown one was skipped): "peer": 5 purged every peer's.
  const char* refused[][2] = {
      {R"({"all": true, "peer": 5})", "peer must be a peer's name"},
      {R"({"all": true, "peer": ""})", "peer must be a peer's name"},
      {R"({"all": "yes"})", "all must be true or false"},
      {R"({"ids": "dl:1"})", "ids must be an array"},
      {R"({"ids": ["dl:1", 2]})", "not 2"},
      {R"({"older_than_s": "1h"})", "older_than_s must be a number"},
      {R"({"older_than_s": -5})", "older_than_s must be a number"},
      {R"({"older_than_s": 1e300, "peer": "up"})", "older_than_s must be a number"},
      {R"({"all": true, "peers": "up"})", R"(unknown field \"peers\")"},
      {R"([1, 2])", "the body must be a JSON object"},
  };
  for (auto& [body, why] : refused) {
    for (const char* op : {"purge", "retry"}) {
      INFO(op << " " << body);
      auto r = relay::http_call("POST", admin + "/v1/deadletter/" + op, body);
      REQUIRE(r.has_value());
      CHECK(r->status == 400);
      CHECK(error_code(*r) == "bad_body");
      CHECK_THAT(r->body, Contains(why));
    }
  }
  CHECK(dead() == 2);

  // The listing's paging parameters are whole numbers too.
  // The listing's filters and paging parameters: an unknown, empty or
  // repeated parameter is refused (it would list more than was asked for).
  for (const char* q : {"limit=0", "limit=10abc", "limit=-1", "after=x", "peers=up", "peer=", "limit=2&limit=3",
                        "reason=max%5", "reason=%00"}) {
    INFO(q);
    auto r = relay::http_call("GET", admin + "/v1/deadletter?" + std::string(q));
    REQUIRE(r.has_value());
    CHECK(r->status == 400);
    CHECK(error_code(*r) == "bad_query");
  }
  // Values are percent-decoded: max%5Fretry is max_retry.
  auto decoded = relay::http_call("GET", admin + "/v1/deadletter?reason=max%5Fretry&peer=up");
  REQUIRE(decoded->status == 200);
  CHECK(json::parse(decoded->body).at("entries").as_array().size() == 2);
  auto listed = relay::http_call("GET", admin + "/v1/deadletter?limit=1");
  REQUIRE(listed->status == 200);
  auto page = json::parse(listed->body).as_object();
  CHECK(page.at("entries").as_array().size() == 1);
  CHECK(page.contains("next_after"));

  // A body that says what it means still works.
  auto r = relay::http_call("POST", admin + "/v1/deadletter/purge", R"({"all": true, "peer": "up"})");
  REQUIRE(r.has_value());
  CHECK(r->status == 200);
  CHECK_THAT(r->body, Contains("\"purged\":2"));
  CHECK(dead() == 0);
  edge->stop();
}
