// A file:// sink whose ack fails after its spool write (the store's commit
// refused, as on a full disk): the segments are already in the spool, so
// the sink must ack them on its next read instead of appending them again.
// The fault comes from the store's seam (store::fail_next_commits_for_test).

#include "queue/store.hpp"
#include "relay/config.hpp"
#include "relay/node.hpp"
#include "relay/producer.hpp"
#include "relay/spool.hpp"
#include "tests/support/node_runner.hpp"
#include "tests/support/temp_dir.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <cerrno>
#include <map>
#include <set>
#include <string>

using namespace edgerelay;
using namespace std::chrono_literals;
using test::eventually;

namespace {

std::string q(const std::filesystem::path& p) { return "\"" + p.string() + "\""; }

} // namespace

TEST_CASE("a spool sink whose ack fails acks on its next read and never writes a segment twice", "[e2e][spool]") {
  test::temp_dir dir("spool-ack");
  // Two file:// peers for every stream: each segment is queued for both (a
  // fan-out is never delivered directly), so each sink reads, appends, acks.
  auto node = test::start_node(relay::parse_config(
      "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "data") +
          "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n"
          "[[peer]]\nname = \"a\"\nurl = \"file://" +
          (dir / "spool-a").string() + "\"\nstreams = [\"*\"]\n[[peer]]\nname = \"b\"\nurl = \"file://" +
          (dir / "spool-b").string() + "\"\nstreams = [\"*\"]\n",
      "hub.toml", dir.path()));
  auto& store = node->store_for_test();
  // The first commit that holds an ack fails; the producer's batch (one
  // enqueue, before any ack) is not touched by it.
  store.fail_next_commits_for_test(1, ENOSPC, queue::store::commit_fault::with_ack);

  relay::producer_options po;
  po.url = "ws://" + node->address("ingest");
  po.batch_max_segments = 1000;
  auto p = relay::ws_producer::connect(po);
  INFO((p ? std::string() : p.error().message));
  REQUIRE(p.has_value());
  constexpr int n = 300;
  for (int i = 0; i < n; ++i)
    REQUIRE((*p)->send("s", "segment-" + std::to_string(i)).has_value());
  REQUIRE((*p)->flush().has_value());
  CHECK((*p)->stats().segments_ok == n);

  auto total = [&](const char* k) { return node->status().at("totals").at(k).to_number<std::int64_t>(); };
  REQUIRE(eventually([&] { return total("delivered") == 2 * n && total("queued") == 0; }, 20s));
  CHECK(store.commit_faults_pending_for_test() == 0); // an ack did fail
  CHECK(total("loss") == 0);
  for (const char* spool : {"spool-a", "spool-b"}) {
    INFO(spool);
    std::map<std::string, int> ids;
    auto read = relay::read_spool(dir / spool, [&](const relay::spool_record& r) {
      ++ids[std::string(r.id)];
      return true;
    });
    REQUIRE(read.has_value());
    CHECK(*read == n);
    CHECK(ids.size() == n);
    for (auto& [id, count] : ids)
      if (count != 1) FAIL_CHECK(id << " is in the spool " << count << " times");
  }
  node->stop();
}
