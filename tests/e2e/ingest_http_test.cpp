// The HTTP ingest API's answers (docs/ingest.md): what a producer gets for
// a stored segment, a bad or reserved stream, a segment too large, and a
// full queue under `overflow = "reject"` (507) and `"block"` (429 after
// block_timeout), each with its error code and counted under the same reason.

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/toml.hpp"
#include "transport/pki.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

using namespace edgerelay;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;
namespace json = boost::json;

namespace {

// An edge whose only peer never answers (nothing is delivered, the queue
// fills) with a 64 KiB queue.
std::unique_ptr<relay::node> start_edge(const test::temp_dir& dir, const std::string& name,
                                        const std::string& overflow_lines) {
  auto pki = transport::pki_init(dir / (name + "-pki"));
  REQUIRE(pki.has_value());
  std::string toml = "[node]\nid = \"" + name + "\"\ndata_dir = " + test::q(dir / name) +
                     "\n[queue]\nmax_bytes = \"64KiB\"\nmax_segment_bytes = \"16KiB\"\n" + overflow_lines +
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
