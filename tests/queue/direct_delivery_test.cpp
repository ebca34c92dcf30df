// store::set_direct_sink and store::recover_direct (docs/store.md, "Direct
// delivery"): segments routed to one peer alone skip its queue while it is
// empty, are counted in the same transaction, and keep their order and
// exactly-once delivery when the sink fails or a crash kept the commit.

#include "queue/store.hpp"
#include "tests/support/result_printer.hpp"
#include "tests/support/temp_dir.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cerrno>
#include <mutex>

using namespace edgerelay;
using namespace std::chrono_literals;

namespace {

// Remembers what it was handed; fails the deliveries it is told to.
class recording_sink final : public queue::direct_sink {
public:
  bool ready() override { return ready_; }
  boost::system::result<void, error> deliver(std::span<const queue::segment_view> segs) override {
    std::lock_guard lk(mu_);
    ++calls_;
    if (fail_) return error{make_error_code(errc::store_io), "disk on fire"};
    for (auto& s : segs) {
      ids_.emplace_back(s.id);
      payloads_.emplace_back(s.payload);
    }
    return {};
  }
  std::vector<std::string> ids() {
    std::lock_guard lk(mu_);
    return ids_;
  }
  std::vector<std::string> payloads() {
    std::lock_guard lk(mu_);
    return payloads_;
  }
  int calls() {
    std::lock_guard lk(mu_);
    return calls_;
  }
  std::atomic<bool> ready_{true}, fail_{false};

private:
  std::mutex mu_;
  std::vector<std::string> ids_, payloads_;
  int calls_ = 0;
};

struct direct_fixture {
  test::temp_dir dir{"direct"};
  util::manual_clock clk;
  queue::store_options opt;
  std::unique_ptr<queue::store> s;
  queue::peer_id a = 0, b = 0;
  std::shared_ptr<recording_sink> sink = std::make_shared<recording_sink>();

  explicit direct_fixture(std::function<void(queue::store_options&)> tweak = {}) {
    opt.data_dir = dir / "data";
    opt.node_id = "hub";
    opt.clock = &clk;
    if (tweak) tweak(opt);
    auto r = queue::store::open(opt);
    REQUIRE(r);
    s = std::move(*r);
    a = s->add_peer("a").value();
    b = s->add_peer("b").value();
  }
  // Enqueues ids "<origin>:<first>".."<origin>:<first + n - 1>" (payload "p<seq>")
  // routed to `peers`; returns the statuses.
  std::vector<queue::item_status> put(std::string origin, std::uint64_t first, std::size_t n,
                                      std::vector<queue::peer_id> peers) {
    std::vector<std::string> ids, payloads;
    for (std::size_t i = 0; i < n; ++i) {
      ids.push_back(origin + ":" + std::to_string(first + i));
      payloads.push_back("p" + std::to_string(first + i));
    }
    std::vector<queue::segment_in> segs;
    for (std::size_t i = 0; i < n; ++i)
      segs.push_back({"data", payloads[i], peers, ids[i], 1000});
    auto r = s->enqueue_wait(std::move(segs));
    REQUIRE_FALSE(r.ec);
    return r.status;
  }
  queue::peer_stats stats(queue::peer_id p) {
    for (auto& x : s->stats().peers)
      if (x.id == p) return x;
    FAIL("no such peer");
    return {};
  }
  std::vector<std::string> drain(queue::peer_id p) {
    std::vector<std::string> ids;
    for (;;) {
      auto bt = s->read_batch(p, 10000, 1 << 30);
      REQUIRE(bt);
      if (bt->segments.empty()) return ids;
      std::vector<std::uint64_t> keys;
      for (auto& sg : bt->segments) {
        keys.push_back(sg.key);
        ids.emplace_back(sg.id);
      }
      REQUIRE_FALSE(s->ack_wait(p, keys));
    }
  }
  void clean_accounting() {
    auto rep = s->verify_accounting();
    REQUIRE(rep);
    INFO((rep->problems.empty() ? std::string() : rep->problems[0]));
    CHECK(rep->clean);
  }
};

std::vector<std::string> range_ids(const std::string& origin, std::uint64_t first, std::uint64_t last) {
  std::vector<std::string> v;
  for (auto i = first; i <= last; ++i)
    v.push_back(origin + ":" + std::to_string(i));
  return v;
}

} // namespace

TEST_CASE("segments routed to one peer with an empty queue go to its direct sink, counted delivered",
          "[queue][direct]") {
  direct_fixture f;
  f.s->set_direct_sink(f.a, f.sink);
  auto st = f.put("edge", 1, 50, {f.a});
  CHECK(std::count(st.begin(), st.end(), queue::item_status::stored) == 50);
  CHECK(f.sink->ids() == range_ids("edge", 1, 50));
  CHECK(f.sink->payloads()[49] == "p50");
  auto ps = f.stats(f.a);
  CHECK(ps.counters.routed == 50);
  CHECK(ps.counters.delivered == 50);
  CHECK(ps.counters.queued == 0);
  CHECK(ps.direct_delivered == 50);
  CHECK(f.s->stats().accepted == 50);
  f.clean_accounting();
  // A resend is a duplicate: the ids entered the dedupe table.
  st = f.put("edge", 1, 50, {f.a});
  CHECK(std::count(st.begin(), st.end(), queue::item_status::duplicate) == 50);
  CHECK(f.sink->ids().size() == 50);
  CHECK(f.drain(f.a).empty());
}

TEST_CASE("fan-out, id-less and other peers' segments are queued as before", "[queue][direct]") {
  direct_fixture f;
  f.s->set_direct_sink(f.a, f.sink);
  f.put("edge", 1, 5, {f.a, f.b}); // two peers: queued for both
  f.put("edge", 6, 5, {f.b});      // another peer
  const queue::peer_id pa[] = {f.a};
  REQUIRE_FALSE(f.s->enqueue_wait({{"data", "no id", pa}}).ec); // assigned here: queued
  CHECK(f.sink->calls() == 0);
  CHECK(f.stats(f.a).counters.queued == 6);
  CHECK(f.stats(f.b).counters.queued == 10);
  CHECK(f.drain(f.a).size() == 6);
  f.clean_accounting();
}

TEST_CASE("a peer with something queued keeps queueing until it drains: order is kept", "[queue][direct]") {
  direct_fixture f;
  f.sink->ready_ = false;
  f.s->set_direct_sink(f.a, f.sink);
  f.put("edge", 1, 10, {f.a}); // sink not ready: queued
  f.sink->ready_ = true;
  f.put("edge", 11, 10, {f.a}); // the queue holds 1..10: behind them
  CHECK(f.sink->calls() == 0);
  CHECK(f.drain(f.a) == range_ids("edge", 1, 20));
  f.put("edge", 21, 10, {f.a}); // drained: direct again
  CHECK(f.sink->ids() == range_ids("edge", 21, 30));
  auto ps = f.stats(f.a);
  CHECK(ps.counters.routed == 30);
  CHECK(ps.counters.delivered == 30);
  CHECK(ps.direct_delivered == 10);
  f.clean_accounting();
}

TEST_CASE("one transaction delivers at most direct_max_segments directly, and queues the rest in order",
          "[queue][direct]") {
  direct_fixture f;
  f.s->set_direct_sink(f.a, f.sink);
  const std::size_t n = queue::store::direct_max_segments + 100;
  f.put("edge", 1, n, {f.a});
  CHECK(f.sink->ids().size() == queue::store::direct_max_segments);
  CHECK(f.stats(f.a).counters.queued == 100);
  auto rest = f.drain(f.a);
  REQUIRE(rest.size() == 100);
  CHECK(rest.front() == "edge:" + std::to_string(queue::store::direct_max_segments + 1));
  f.clean_accounting();
}

TEST_CASE("a failed direct delivery queues the segments instead: nothing lost, nothing twice", "[queue][direct]") {
  direct_fixture f;
  f.sink->fail_ = true;
  f.s->set_direct_sink(f.a, f.sink);
  auto st = f.put("edge", 1, 20, {f.a});
  CHECK(std::count(st.begin(), st.end(), queue::item_status::stored) == 20);
  CHECK(f.sink->calls() == 1); // tried once, then the group went the queue's way
  CHECK(f.stats(f.a).counters.queued == 20);
  CHECK(f.stats(f.a).direct_delivered == 0);
  CHECK(f.drain(f.a) == range_ids("edge", 1, 20));
  f.clean_accounting();
}

TEST_CASE("when one sink fails, what another sink already delivered is counted, not queued", "[queue][direct]") {
  direct_fixture f;
  auto other = std::make_shared<recording_sink>();
  other->fail_ = true;
  f.s->set_direct_sink(f.a, f.sink);
  f.s->set_direct_sink(f.b, other);
  // One request: a's part is delivered, then b's sink fails; the group is
  // applied again without direct delivery, and a's part must not be queued
  // (it is durable at a's sink already).
  std::vector<std::string> ids = range_ids("edge", 1, 10);
  const queue::peer_id pa[] = {f.a}, pb[] = {f.b};
  std::vector<queue::segment_in> segs;
  for (std::size_t i = 0; i < ids.size(); ++i)
    segs.push_back(
        {"data", "x", i < 5 ? std::span<const queue::peer_id>(pa) : std::span<const queue::peer_id>(pb), ids[i], 1000});
  auto r = f.s->enqueue_wait(std::move(segs));
  REQUIRE_FALSE(r.ec);
  CHECK(f.sink->ids() == range_ids("edge", 1, 5));
  CHECK(f.sink->calls() == 1);
  CHECK(f.stats(f.a).counters.queued == 0);
  CHECK(f.stats(f.a).counters.delivered == 5);
  CHECK(f.stats(f.b).counters.queued == 5);
  f.clean_accounting();
  // A resend of a's part is a duplicate.
  auto st = f.put("edge", 1, 5, {f.a});
  CHECK(std::count(st.begin(), st.end(), queue::item_status::duplicate) == 5);
  CHECK(f.sink->calls() == 1);
}

TEST_CASE("a direct delivery whose commit fails is not written again: the resend is counted delivered",
          "[queue][direct]") {
  direct_fixture f;
  f.s->set_direct_sink(f.a, f.sink);
  // The sink makes the segments durable, then the commit that would count
  // them fails (a full disk): the sender hears of the failure.
  f.s->fail_next_commits_for_test(1, ENOSPC);
  std::vector<std::string> ids = range_ids("edge", 1, 10);
  const queue::peer_id pa[] = {f.a};
  std::vector<queue::segment_in> segs;
  for (auto& id : ids)
    segs.push_back({"data", "x", pa, id, 1000});
  auto r = f.s->enqueue_wait(segs);
  CHECK(r.ec == std::errc::no_space_on_device);
  CHECK(f.sink->ids() == ids);
  CHECK(f.stats(f.a).counters.routed == 0);
  CHECK(f.stats(f.a).counters.delivered == 0);
  f.clean_accounting();
  // It sends them again: accepted and counted delivered, not written twice.
  auto st = f.put("edge", 1, 10, {f.a});
  CHECK(std::count(st.begin(), st.end(), queue::item_status::stored) == 10);
  CHECK(f.sink->ids() == ids);
  CHECK(f.sink->calls() == 1);
  CHECK(f.stats(f.a).counters.routed == 10);
  CHECK(f.stats(f.a).counters.delivered == 10);
  CHECK(f.stats(f.a).counters.queued == 0);
  f.clean_accounting();
  // And once more: now a duplicate.
  st = f.put("edge", 1, 10, {f.a});
  CHECK(std::count(st.begin(), st.end(), queue::item_status::duplicate) == 10);
  CHECK(f.sink->calls() == 1);
}

TEST_CASE("a null sink turns direct delivery off", "[queue][direct]") {
  direct_fixture f;
  f.s->set_direct_sink(f.a, f.sink);
  f.s->set_direct_sink(f.a, nullptr);
  f.put("edge", 1, 3, {f.a});
  CHECK(f.sink->calls() == 0);
  CHECK(f.stats(f.a).counters.queued == 3);
}

TEST_CASE("direct deliveries are reported to the fate observer as delivered", "[queue][direct]") {
  direct_fixture f;
  std::mutex mu;
  std::vector<queue::fate_event> seen;
  f.s->set_fate_observer("data", [&](std::vector<queue::fate_event>&& evs) {
    std::lock_guard lk(mu);
    for (auto& e : evs)
      seen.push_back(std::move(e));
  });
  f.s->set_direct_sink(f.a, f.sink);
  f.put("edge", 1, 2, {f.a});
  std::lock_guard lk(mu);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].fate == queue::segment_fate::delivered);
  CHECK(seen[0].peer_name == "a");
  CHECK(seen[1].id == "edge:2");
  CHECK(seen[1].payload == "p2");
}

TEST_CASE("direct delivery needs no room in the queue: evict_lru evicts nothing for it", "[queue][direct]") {
  direct_fixture f([](queue::store_options& o) {
    o.overflow = queue::overflow_policy::evict_lru;
    o.max_bytes = 2000;
  });
  f.put("edge", 1, 20, {f.b}); // b's queue fills most of the capacity
  auto before = f.stats(f.b).counters.queued;
  f.s->set_direct_sink(f.a, f.sink);
  std::string big(1500, 'z');
  const queue::peer_id pa[] = {f.a};
  REQUIRE_FALSE(f.s->enqueue_wait({{"data", big, pa, "edge:100", 1000}}).ec);
  CHECK(f.sink->ids() == std::vector<std::string>{"edge:100"});
  CHECK(f.stats(f.b).counters.evicted == 0);
  CHECK(f.stats(f.b).counters.queued == before);
  f.clean_accounting();
}

TEST_CASE("recover_direct counts what a crash left delivered and uncommitted, and nothing else", "[queue][direct]") {
  direct_fixture f;
  f.put("edge", 1, 5, {f.a}); // received and queued (no sink)
  auto queued_ids = f.drain(f.a);
  REQUIRE(queued_ids.size() == 5); // received, delivered by the queue
  f.put("edge", 6, 3, {f.a});      // received, still queued
  const queue::peer_id pa[] = {f.a};
  REQUIRE_FALSE(f.s->enqueue_wait({{"data", "own", pa}}).ec); // hub:1, assigned here (delivered below)
  auto own = f.drain(f.a);
  REQUIRE(own.size() == 4);   // edge:6..8 and hub:1
  f.put("edge", 9, 2, {f.a}); // edge:9, edge:10 queued
  // The sink's tail: everything above, plus edge:11..13 and "odd-id" that no
  // commit counted (a direct delivery cut off by a crash), one of them twice.
  std::vector<std::string> tail = range_ids("edge", 1, 13);
  tail.push_back("hub:1");
  tail.push_back("odd-id");
  tail.push_back("edge:12");
  auto before = f.stats(f.a).counters;
  auto n = f.s->recover_direct_wait(f.a, tail);
  REQUIRE(n);
  CHECK(*n == 4); // edge:11, edge:12, edge:13, odd-id
  auto after = f.stats(f.a).counters;
  CHECK(after.routed == before.routed + 4);
  CHECK(after.delivered == before.delivered + 4);
  f.clean_accounting();
  // Their resend is a duplicate; running the recovery again counts nothing.
  auto st = f.put("edge", 11, 3, {f.a});
  CHECK(std::count(st.begin(), st.end(), queue::item_status::duplicate) == 3);
  std::string odd = "odd-id";
  REQUIRE(f.s->enqueue_wait({{"data", "x", pa, odd, 1000}}).status == std::vector{queue::item_status::duplicate});
  n = f.s->recover_direct_wait(f.a, tail);
  REQUIRE(n);
  CHECK(*n == 0);
  CHECK_FALSE(f.s->recover_direct_wait(99, tail));
}

TEST_CASE("a transaction that only delivered directly commits without the metadata flush, others with it",
          "[queue][direct]") {
  direct_fixture f;
  f.s->set_direct_sink(f.a, f.sink);
  auto relaxed = [&] { return f.s->stats().commits_direct_only; };
  f.put("edge", 1, 10, {f.a}); // direct only
  CHECK(relaxed() == 1);
  f.put("edge", 1, 10, {f.a}); // duplicates only: nothing that only LMDB holds
  CHECK(relaxed() == 2);
  f.put("edge", 11, 5, {f.b}); // queued for b: flushed
  CHECK(relaxed() == 2);
  const queue::peer_id pa[] = {f.a};
  REQUIRE_FALSE(f.s->enqueue_wait({{"data", "no id", pa}}).ec); // assigned here, queued: flushed
  CHECK(relaxed() == 2);
  CHECK(f.drain(f.a).size() == 1); // the ack: flushed
  CHECK(relaxed() == 2);
  REQUIRE(f.s->recover_direct_wait(f.a, {"edge:99"})); // not an enqueue: flushed
  CHECK(relaxed() == 2);
  f.put("edge", 100, 3, {f.a}); // the queue drained: direct only again
  CHECK(relaxed() == 3);
  // sync = none never flushes anything, so nothing is counted as relaxed.
  f.s.reset();
  f.opt.sync = queue::sync_mode::none;
  f.s = std::move(queue::store::open(f.opt).value());
  f.s->set_direct_sink(f.a, f.sink);
  f.put("edge", 200, 3, {f.a});
  CHECK(f.s->stats().commits_direct_only == 0);
  CHECK(f.sink->ids().size() == 16); // 1..10, 100..102, 200..202
}

TEST_CASE("a segment behind one the same request queues for the peer is queued too, and needs its room",
          "[queue][direct]") {
  const queue::peer_id ab[] = {1, 2}, a_only[] = {1};
  std::string small(100, 's'), big(900, 'b');
  std::vector<queue::segment_in> req = {{"data", small, ab, "edge:1", 1000}, {"data", big, a_only, "edge:2", 1000}};
  SECTION("room enough: both queued for a, in order, nothing direct") {
    direct_fixture f;
    f.s->set_direct_sink(f.a, f.sink);
    REQUIRE_FALSE(f.s->enqueue_wait(req).ec);
    CHECK(f.sink->calls() == 0);
    CHECK(f.drain(f.a) == range_ids("edge", 1, 2));
    f.clean_accounting();
  }
  SECTION("no room for the second: the request is refused whole") {
    direct_fixture f([](queue::store_options& o) { o.max_bytes = 1000; });
    f.s->set_direct_sink(f.a, f.sink);
    auto r = f.s->enqueue_wait(req);
    CHECK(r.ec == make_error_code(errc::queue_full));
    CHECK(f.s->stats().queued_bytes == 0);
    CHECK(f.sink->calls() == 0);
  }
}
