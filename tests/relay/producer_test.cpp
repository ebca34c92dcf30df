// relay::ws_producer against an in-process node's ingest listener.

#include "relay/config.hpp"
#include "relay/node.hpp"
#include "relay/producer.hpp"
#include "relay/spool.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/temp_dir.hpp"
#include "util/checksum.hpp"

#include <catch2/catch.hpp>

using namespace edgerelay;
using namespace std::chrono_literals;

namespace {

// A node with a WebSocket ingest listener and one file:// peer, its spool.
auto start_spool_node(const test::temp_dir& dir) {
  return test::start_node(relay::parse_config("[node]\nid = \"edge\"\ndata_dir = \"" + (dir / "data").string() +
                                                  "\"\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = "
                                                  "\"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n"
                                                  "[[peer]]\nname = \"spool\"\nurl = \"file://" +
                                                  (dir / "spool").string() + "\"\n",
                                              "edge.toml", dir.path()));
}

} // namespace

TEST_CASE("push sends a partial batch at once and it is stored before any flush", "[relay][producer]") {
  test::temp_dir dir("producer");
  auto n = start_spool_node(dir);
  auto accepted = [&] { return n->status().at("totals").at("accepted").to_number<std::int64_t>(); };
  relay::producer_options po;
  po.url = "ws://" + n->address("ingest");
  po.batch_max_segments = 4096; // far more than is sent: only push() can make these travel
  auto p = relay::ws_producer::connect(po);
  INFO((p ? std::string() : p.error().message));
  REQUIRE(p.has_value());
  for (int i = 0; i < 3; ++i)
    REQUIRE((*p)->send("s", "payload-" + std::to_string(i)).has_value());
  CHECK((*p)->stats().segments_sent == 0);
  REQUIRE((*p)->push().has_value());
  CHECK((*p)->stats().segments_sent == 3);
  CHECK(test::eventually([&] { return accepted() == 3; }, 10s));
  CHECK(test::eventually([&] { return (*p)->stats().segments_ok == 3; }, 10s));
  // An empty push sends nothing; flush then has nothing left to wait for.
  REQUIRE((*p)->push().has_value());
  REQUIRE((*p)->flush().has_value());
  CHECK((*p)->stats().batches_acked == 1);
  p->reset();
  n->stop();
}

TEST_CASE("send_parts stores the concatenation of its parts as one segment, checksum and all", "[relay][producer]") {
  test::temp_dir dir("producer");
  auto n = start_spool_node(dir);
  relay::producer_options po;
  po.url = "ws://" + n->address("ingest");
  auto p = relay::ws_producer::connect(po);
  REQUIRE(p.has_value());
  const std::string_view parts[] = {"header|", "", "body-of-the-segment"};
  REQUIRE((*p)->send_parts("s", parts).has_value());
  REQUIRE((*p)->send("s", "plain").has_value());
  REQUIRE((*p)->flush().has_value());
  // The node verifies every checksum: a wrong one would be rejected.
  CHECK((*p)->stats().segments_ok == 2);
  CHECK((*p)->stats().segments_rejected == 0);
  std::vector<std::string> payloads;
  CHECK(test::eventually(
      [&] {
        payloads.clear();
        auto r = relay::read_spool(dir / "spool", [&](const relay::spool_record& rec) {
          payloads.emplace_back(rec.payload);
          CHECK(rec.checksum == util::checksum(rec.payload));
          return true;
        });
        return r && payloads.size() == 2;
      },
      10s));
  CHECK(payloads == std::vector<std::string>{"header|body-of-the-segment", "plain"});
  p->reset();
  n->stop();
}
