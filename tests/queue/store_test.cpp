#include "queue/store.hpp"
#include "tests/support/result_printer.hpp"
#include "tests/support/temp_dir.hpp"
#include "util/checksum.hpp"

#include <catch2/catch.hpp>
#include <lmdb.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <sched.h>
#include <set>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

using namespace edgerelay;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (auto& x : v)
    s += x + "\n";
  return s;
}

struct fixture {
  test::temp_dir dir{"store"};
  util::manual_clock clk;
  queue::store_options opt;
  std::unique_ptr<queue::store> s;
  queue::peer_id a = 0, b = 0;

  explicit fixture(const std::function<void(queue::store_options&)>& tweak = {}) {
    opt.data_dir = dir / "data";
    opt.node_id = "n1";
    opt.clock = &clk;
    opt.max_retry = 3;
    opt.retry_backoff = {1000ms, 60000ms, 2.0, 0.0};
    if (tweak) tweak(opt);
    open();
  }
  void open() {
    auto r = queue::store::open(opt);
    INFO((r ? std::string() : r.error().message));
    REQUIRE(r);
    s = std::move(*r);
    a = *s->add_peer("a");
    b = *s->add_peer("b");
  }
  void reopen() {
    s.reset();
    open();
  }
  // Enqueues n segments of `size` bytes (payload "<tag><i>" padded) and returns their ids.
  std::vector<std::string> put(int n, std::vector<queue::peer_id> peers, std::size_t size = 16,
                               std::string stream = "s1", std::string tag = "p") {
    std::vector<std::string> payloads;
    for (int i = 0; i < n; ++i) {
      auto p = tag + std::to_string(i);
      p.resize(std::max(size, p.size()), '.');
      payloads.push_back(p);
    }
    std::vector<queue::segment_in> segs;
    for (auto& p : payloads)
      segs.push_back({stream, p, peers});
    auto r = s->enqueue_wait(std::move(segs));
    INFO(r.message);
    REQUIRE_FALSE(r.ec);
    std::vector<std::string> ids;
    for (int i = 0; i < n; ++i)
      ids.push_back("n1:" + std::to_string(r.first_seq + static_cast<std::uint64_t>(i)));
    return ids;
  }
  queue::batch read(queue::peer_id p, std::size_t max = 1000, std::uint64_t bytes = 1ull << 30) {
    auto r = s->read_batch(p, max, bytes);
    REQUIRE(r);
    return std::move(*r);
  }
  static std::vector<std::uint64_t> keys(const queue::batch& bt) {
    std::vector<std::uint64_t> k;
    for (auto& x : bt.segments)
      k.push_back(x.key);
    return k;
  }
  static std::vector<std::string> ids(const queue::batch& bt) {
    std::vector<std::string> k;
    for (auto& x : bt.segments)
      k.emplace_back(x.id);
    return k;
  }
  void check_accounting() {
    auto r = s->verify_accounting();
    REQUIRE(r);
    INFO(join(r->problems));
    CHECK(r->clean);
  }
  queue::peer_counters counters(queue::peer_id p) {
    for (auto& ps : s->stats().peers)
      if (ps.id == p) return ps.counters;
    FAIL("no such peer");
    return {};
  }
  std::vector<queue::deadletter_entry> deadletters() {
    queue::deadletter_filter f;
    f.limit = 100000;
    auto r = s->deadletter_list(f);
    REQUIRE(r);
    return r->entries;
  }
};

} // namespace

TEST_CASE("enqueue assigns node:seq ids and keeps stream, created time and checksum") {
  fixture f;
  std::string p1 = "hello", p2 = "world!";
  const queue::peer_id to[] = {f.a};
  auto r = f.s->enqueue_wait({{"metrics", p1, to, {}, 1234}, {"logs.app", p2, to}});
  REQUIRE_FALSE(r.ec);
  REQUIRE(r.status.size() == 2);
  auto bt = f.read(f.a);
  REQUIRE(bt.segments.size() == 2);
  CHECK(bt.segments[0].id == "n1:" + std::to_string(r.first_seq));
  CHECK(bt.segments[1].id == "n1:" + std::to_string(r.first_seq + 1));
  CHECK(bt.segments[0].stream == "metrics");
  CHECK(bt.segments[0].created_ms == 1234);
  CHECK(bt.segments[1].created_ms == util::to_unix_ms(f.clk.system_now()));
  CHECK(bt.segments[0].payload == "hello");
  CHECK(bt.segments[1].checksum == util::checksum("world!"));
  CHECK(bt.payload_bytes == 11);
  f.check_accounting();
}

TEST_CASE("per-peer queues are FIFO and a segment routed to two peers is in both") {
  fixture f;
  auto ids = f.put(5, {f.a, f.b});
  auto more = f.put(3, {f.b});
  CHECK(fixture::ids(f.read(f.a)) == ids);
  auto all_b = ids;
  all_b.insert(all_b.end(), more.begin(), more.end());
  CHECK(fixture::ids(f.read(f.b)) == all_b);
  CHECK(f.counters(f.a).routed == 5);
  CHECK(f.counters(f.b).routed == 8);
  f.check_accounting();
}

TEST_CASE("oldest_created_ms finds the oldest queued segment, also after a retry moved it to the tail") {
  fixture f;
  auto none = f.s->oldest_created_ms(f.a).value();
  CHECK(none.created_ms == std::nullopt);
  CHECK(none.complete);
  CHECK(f.s->oldest_created_ms(99).error() == errc::unknown_peer);
  const auto t0 = std::chrono::duration_cast<std::chrono::milliseconds>(f.clk.system_now().time_since_epoch()).count();
  f.put(1, {f.a});
  f.clk.advance(5s);
  f.put(2, {f.a});
  CHECK(f.s->oldest_created_ms(f.a).value().created_ms == t0);
  // The first segment fails once: it goes back behind the two newer ones.
  auto b = f.s->read_batch(f.a, 1, 1 << 20).value();
  REQUIRE(b.segments.size() == 1);
  CHECK(f.s->oldest_created_ms(f.a).value().created_ms == t0); // leased, still queued
  REQUIRE_FALSE(f.s->nack_wait(f.a, {b.segments[0].key}, "down"));
  CHECK(f.s->oldest_created_ms(f.a).value().created_ms == t0);
  // A scan cut short reads from the head: now the newer segments.
  auto cut = f.s->oldest_created_ms(f.a, 2).value();
  CHECK_FALSE(cut.complete);
  CHECK(cut.created_ms == t0 + 5000);
  f.clk.advance(1h);
  b = f.s->read_batch(f.a, 10, 1 << 20).value();
  REQUIRE(b.segments.size() == 3);
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(b)));
  CHECK(f.s->oldest_created_ms(f.a).value().created_ms == std::nullopt);
}

TEST_CASE("a read leases its segments until ack, nack, reject or release") {
  fixture f;
  f.put(10, {f.a});
  auto first = f.read(f.a, 4);
  REQUIRE(first.segments.size() == 4);
  auto second = f.read(f.a, 100);
  REQUIRE(second.segments.size() == 6);
  CHECK(f.read(f.a).segments.empty());
  CHECK(f.s->stats().peers[0].inflight == 10);
  // Dropping the first lease makes those four readable again, in order.
  auto k1 = fixture::keys(first);
  f.s->release(f.a, k1);
  auto again = f.read(f.a);
  CHECK(fixture::ids(again) == fixture::ids(first));
  // Ack deletes.
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(again)));
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(second)));
  CHECK(f.read(f.a).segments.empty());
  auto c = f.counters(f.a);
  CHECK(c.delivered == 10);
  CHECK(c.queued == 0);
  CHECK(c.queued_bytes == 0);
  CHECK(f.s->stats().peers[0].inflight == 0);
  f.check_accounting();
}

TEST_CASE("read_batch honours max_segments and max_bytes but returns at least one segment") {
  fixture f;
  f.put(10, {f.a}, 100);
  CHECK(f.read(f.a, 3).segments.size() == 3);
  CHECK(f.read(f.a, 100, 250).segments.size() == 3); // stops once 250 bytes are reached
  CHECK(f.read(f.a, 100, 1).segments.size() == 1);
}

TEST_CASE("acking twice is harmless and counts once") {
  fixture f;
  f.put(2, {f.a});
  auto bt = f.read(f.a);
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(bt)));
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(bt)));
  CHECK(f.counters(f.a).delivered == 2);
  f.check_accounting();
}

TEST_CASE("an ack whose commit fails ends its leases, or keeps them when asked: then nothing reads or evicts them") {
  fixture f([](auto& o) {
    o.max_bytes = 1000;
    o.overflow = queue::overflow_policy::evict_lru;
  });
  auto ids = f.put(2, {f.a}, 60, "s1", "a");
  auto bt = f.read(f.a);
  REQUIRE(fixture::ids(bt) == ids);
  // By default a failed ack makes its segments readable again.
  f.s->fail_next_commits_for_test(1, ENOSPC);
  CHECK(f.s->ack_wait(f.a, fixture::keys(bt)) == std::errc::no_space_on_device);
  auto again = f.read(f.a);
  CHECK(fixture::ids(again) == ids);
  // Kept: they stay leased, so they are not read again...
  f.s->fail_next_commits_for_test(1, ENOSPC);
  CHECK(f.s->ack_wait(f.a, fixture::keys(again), queue::store::failed_ack_leases::keep) ==
        std::errc::no_space_on_device);
  CHECK(f.read(f.a).segments.empty());
  CHECK(f.s->stats().peers[0].inflight == 2);
  // ...and evict_lru passes them over, though they are the oldest.
  f.clk.advance(1h);
  for (int i = 0; i < 12; ++i)
    f.put(1, {f.b}, 60, "s1", "b" + std::to_string(i) + "-");
  auto ev = f.s->evictions(0, 100);
  REQUIRE(ev);
  CHECK_FALSE(ev->empty());
  for (auto& e : *ev)
    CHECK(e.peer == "b");
  // release() ends a kept lease as it ends any other.
  f.s->fail_next_commits_for_test(1, ENOSPC);
  CHECK(f.s->ack_wait(f.a, fixture::keys(again), queue::store::failed_ack_leases::keep));
  f.s->release(f.a, fixture::keys(again));
  auto third = f.read(f.a);
  CHECK(fixture::ids(third) == ids);
  // The ack that commits counts both delivered, once, and none evicted.
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(third), queue::store::failed_ack_leases::keep));
  auto c = f.counters(f.a);
  CHECK(c.delivered == 2);
  CHECK(c.evicted == 0);
  CHECK(c.queued == 0);
  CHECK(f.s->stats().peers[0].inflight == 0);
  f.check_accounting();
}

TEST_CASE("a nack counts an attempt and schedules the next by exponential backoff on the clock") {
  fixture f([](auto& o) {
    o.max_retry = 10;
    o.retry_backoff = {1000ms, 5000ms, 2.0, 0.0};
  });
  f.put(1, {f.a});
  // Attempt n waits initial * multiplier^(n-1), capped at max: 1 s, 2 s, 4 s, 5 s, 5 s.
  for (auto wait : {1000ms, 2000ms, 4000ms, 5000ms, 5000ms}) {
    auto bt = f.read(f.a);
    REQUIRE(bt.segments.size() == 1);
    REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(bt), "connection refused"));
    auto none = f.read(f.a);
    CHECK(none.segments.empty());
    REQUIRE(none.next_ready);
    CHECK(*none.next_ready == f.clk.system_now() + wait);
    f.clk.advance(wait - 1ms);
    CHECK(f.read(f.a).segments.empty()); // not a millisecond early
    f.clk.advance(1ms);
  }
  auto bt = f.read(f.a);
  REQUIRE(bt.segments.size() == 1);
  CHECK(bt.segments[0].attempts == 5);
  CHECK(f.counters(f.a).attempts == 5);
  f.check_accounting();
}

TEST_CASE("backoff jitter stays within its fraction") {
  fixture f([](auto& o) {
    o.max_retry = 100;
    o.retry_backoff = {10000ms, 10000ms, 1.0, 0.2};
  });
  f.put(50, {f.a});
  auto bt = f.read(f.a);
  REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(bt), "x"));
  f.clk.advance(7999ms);
  CHECK(f.read(f.a).segments.empty());
  f.clk.advance(4001ms);
  CHECK(f.read(f.a).segments.size() == 50);
}

TEST_CASE("a nacked segment reaches the dead-letter store after exactly max_retry attempts") {
  fixture f; // max_retry 3
  auto ids = f.put(2, {f.a});
  for (int attempt = 1; attempt <= 3; ++attempt) {
    auto bt = f.read(f.a);
    REQUIRE(bt.segments.size() == 2);
    CHECK(f.deadletters().empty());
    REQUIRE_FALSE(
        f.s->nack_wait(f.a, fixture::keys(bt), "timeout after 30s (attempt " + std::to_string(attempt) + ")"));
    f.clk.advance(1h);
    f.check_accounting();
  }
  CHECK(f.read(f.a).segments.empty());
  auto dl = f.deadletters();
  REQUIRE(dl.size() == 2);
  CHECK(dl[0].id == ids[0]);
  CHECK(dl[0].peer == "a");
  CHECK(dl[0].reason == "max_retry");
  CHECK(dl[0].last_error == "timeout after 30s (attempt 3)");
  CHECK(dl[0].attempts == 3);
  auto c = f.counters(f.a);
  CHECK(c.deadletter == 2);
  CHECK(c.queued == 0);
  CHECK(f.s->stats().deadletter_segments == 2);
  f.check_accounting();
}

TEST_CASE("reject sends a segment to the dead-letter store at once with its reason") {
  fixture f;
  f.put(3, {f.a});
  auto bt = f.read(f.a);
  REQUIRE_FALSE(f.s->reject_wait(f.a, {{bt.segments[1].key, "rejected:checksum", "upstream says checksum mismatch"}}));
  f.s->release(f.a, std::vector<std::uint64_t>{bt.segments[0].key, bt.segments[2].key});
  auto dl = f.deadletters();
  REQUIRE(dl.size() == 1);
  CHECK(dl[0].id == bt.segments[1].id);
  CHECK(dl[0].reason == "rejected:checksum");
  CHECK(dl[0].last_error == "upstream says checksum mismatch");
  CHECK(f.read(f.a).segments.size() == 2);
  f.check_accounting();
}

TEST_CASE("the dead-letter observer reports each commit's dead-letterings by peer and reason") {
  fixture f; // max_retry 3
  std::mutex mu;
  std::map<std::pair<queue::peer_id, std::string>, std::uint64_t> seen;
  int calls = 0;
  f.s->set_deadletter_observer([&](queue::peer_id p, std::string_view reason, std::uint64_t n) {
    std::lock_guard lk(mu);
    seen[{p, std::string(reason)}] += n;
    ++calls;
  });
  f.put(2, {f.a});
  f.put(3, {f.b});
  for (int attempt = 1; attempt <= 3; ++attempt) {
    REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(f.read(f.a)), "down"));
    f.clk.advance(1h);
  }
  auto bt = f.read(f.b);
  REQUIRE_FALSE(f.s->reject_wait(
      f.b, {{bt.segments[0].key, "rejected:checksum", "x"}, {bt.segments[2].key, "rejected:checksum", "y"}}));
  f.s->release(f.b, std::vector<std::uint64_t>{bt.segments[1].key});
  std::lock_guard lk(mu);
  CHECK(calls == 2); // one commit dead-lettered a's two, another b's two
  CHECK(seen[{f.a, "max_retry"}] == 2);
  CHECK(seen[{f.b, "rejected:checksum"}] == 2);
  CHECK(seen.size() == 2);
}

TEST_CASE("dead-letter list pages and filters by peer, stream and reason") {
  fixture f([](auto& o) { o.max_retry = 1; });
  f.put(5, {f.a}, 16, "alpha");
  f.put(4, {f.b}, 16, "beta");
  for (auto p : {f.a, f.b})
    REQUIRE_FALSE(f.s->nack_wait(p, fixture::keys(f.read(p)), "down"));
  queue::deadletter_filter flt;
  flt.limit = 3;
  auto p1 = f.s->deadletter_list(flt);
  REQUIRE(p1);
  CHECK(p1->entries.size() == 3);
  REQUIRE(p1->next_after);
  flt.after_key = *p1->next_after;
  auto p2 = f.s->deadletter_list(flt);
  REQUIRE(p2);
  CHECK(p2->entries.size() == 3);
  flt.after_key = *p2->next_after;
  auto p3 = f.s->deadletter_list(flt);
  CHECK(p3->entries.size() == 3);
  CHECK_FALSE(p3->next_after);
  queue::deadletter_filter by_peer;
  by_peer.peer = "b";
  CHECK(f.s->deadletter_list(by_peer)->entries.size() == 4);
  queue::deadletter_filter by_stream;
  by_stream.stream = "alpha";
  CHECK(f.s->deadletter_list(by_stream)->entries.size() == 5);
  queue::deadletter_filter by_reason;
  by_reason.reason = "rejected";
  CHECK(f.s->deadletter_list(by_reason)->entries.empty());
  queue::deadletter_filter nobody;
  nobody.peer = "zzz";
  CHECK(f.s->deadletter_list(nobody)->entries.empty());
}

TEST_CASE("dead-letter retry puts segments back in their peer's queue with attempts reset") {
  fixture f([](auto& o) { o.max_retry = 2; });
  auto ids = f.put(3, {f.a});
  for (int i = 0; i < 2; ++i) {
    REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(f.read(f.a)), "down"));
    f.clk.advance(1h);
  }
  REQUIRE(f.deadletters().size() == 3);
  queue::deadletter_selector one;
  one.ids = {ids[1]};
  auto n = f.s->deadletter_retry_wait(one);
  REQUIRE(n);
  CHECK(*n == 1);
  f.check_accounting();
  auto bt = f.read(f.a);
  REQUIRE(bt.segments.size() == 1);
  CHECK(bt.segments[0].id == ids[1]);
  CHECK(bt.segments[0].attempts == 0);
  CHECK(bt.segments[0].payload == "p1..............");
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(bt)));
  queue::deadletter_selector all;
  all.all = true;
  CHECK(*f.s->deadletter_retry_wait(all) == 2);
  CHECK(f.read(f.a).segments.size() == 2);
  auto c = f.counters(f.a);
  CHECK(c.routed == 3);
  CHECK(c.deadletter == 0);
  CHECK(c.queued == 2);
  CHECK(c.delivered == 1);
  f.check_accounting();
}

TEST_CASE("dead-letter purge by ids, by age and all counts as purged") {
  fixture f([](auto& o) { o.max_retry = 1; });
  auto ids = f.put(2, {f.a});
  REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(f.read(f.a)), "down"));
  f.clk.advance(2h);
  f.put(3, {f.a}, 16, "s1", "q");
  REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(f.read(f.a)), "down"));
  queue::deadletter_selector by_id;
  by_id.ids = {ids[0]};
  CHECK(*f.s->deadletter_purge_wait(by_id) == 1);
  queue::deadletter_selector old;
  old.older_than = 1h;
  CHECK(*f.s->deadletter_purge_wait(old) == 1); // only the second of the first two is that old
  CHECK(f.deadletters().size() == 3);
  queue::deadletter_selector all;
  all.all = true;
  CHECK(*f.s->deadletter_purge_wait(all) == 3);
  auto c = f.counters(f.a);
  CHECK(c.purged == 5);
  CHECK(c.deadletter == 0);
  f.check_accounting();
}

TEST_CASE("a dead-letter selector must say which entries") {
  fixture f;
  queue::deadletter_selector none;
  CHECK(f.s->deadletter_purge_wait(none).error() == errc::invalid_argument);
  queue::deadletter_selector two;
  two.all = true;
  two.ids = {"x"};
  CHECK(f.s->deadletter_retry_wait(two).error() == errc::invalid_argument);
}

TEST_CASE("dead-letter retention purges by age and by deadletter_max_bytes, oldest first") {
  fixture f([](auto& o) {
    o.max_retry = 1;
    o.deadletter_retention = 24h;
    o.deadletter_max_bytes = 1000;
  });
  f.put(2, {f.a}, 100, "s1", "old");
  REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(f.read(f.a)), "down"));
  f.clk.advance(20h);
  f.put(2, {f.a}, 100, "s1", "new");
  REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(f.read(f.a)), "down"));
  CHECK(f.deadletters().size() == 4);
  f.clk.advance(5h); // the first two are now 25 h old
  auto m = f.s->maintenance_wait();
  REQUIRE(m);
  CHECK(m->deadletter_purged == 2);
  auto dl = f.deadletters();
  REQUIRE(dl.size() == 2);
  CHECK_THAT(dl[0].id, Contains("n1:"));
  // Byte cap: each entry is ~170 bytes; adding eight more pushes the oldest out.
  f.put(8, {f.a}, 100, "s1", "more");
  REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(f.read(f.a)), "down"));
  CHECK(f.s->stats().deadletter_bytes <= 1000);
  auto after = f.deadletters();
  CHECK(after.size() < 10);
  CHECK(after.back().key > dl.back().key); // the newest survive
  CHECK(f.counters(f.a).purged == 12 - after.size());
  f.check_accounting();
}

TEST_CASE("overflow reject fails the whole enqueue with a clear error and stores nothing") {
  fixture f([](auto& o) {
    o.max_bytes = 4000;
    o.overflow = queue::overflow_policy::reject;
  });
  f.put(20, {f.a}, 100); // ~2.7 KB with headers
  std::vector<std::string> payloads(20, std::string(100, 'x'));
  std::vector<queue::segment_in> segs;
  const queue::peer_id to[] = {f.a};
  for (auto& p : payloads)
    segs.push_back({"s1", p, to});
  auto r = f.s->enqueue_wait(std::move(segs));
  CHECK(r.ec == errc::queue_full);
  CHECK_THAT(r.message, Contains("queue full") && Contains("4000") && Contains("overflow = reject"));
  CHECK(f.counters(f.a).routed == 20);
  CHECK(f.s->stats().rejected == 20);
  f.check_accounting();
}

namespace {
// 3,000 bytes of capacity with overflow = block (10 s).
void small_blocking_queue(queue::store_options& o) {
  o.max_bytes = 3000;
  o.overflow = queue::overflow_policy::block;
  o.block_timeout = 10s;
}
} // namespace

TEST_CASE("overflow block waits for room and fails after block_timeout") {
  fixture f(small_blocking_queue);
  f.put(20, {f.a}, 100); // nearly full
  std::string p(1000, 'y');
  const queue::peer_id to[] = {f.a};
  // Room appears when the reader acks: the blocked enqueue then completes.
  std::promise<queue::enqueue_result> done;
  f.s->enqueue({{"s1", p, to}}, [&](queue::enqueue_result&& r) { done.set_value(std::move(r)); });
  auto fut = done.get_future();
  CHECK(fut.wait_for(50ms) == std::future_status::timeout);
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(f.read(f.a, 10))));
  REQUIRE(fut.wait_for(5s) == std::future_status::ready);
  CHECK_FALSE(fut.get().ec);
  // No room and nobody frees any: the deadline on the injected clock fails it.
  std::string big(2500, 'z');
  std::promise<queue::enqueue_result> late;
  f.s->enqueue({{"s1", big, to}}, [&](queue::enqueue_result&& r) { late.set_value(std::move(r)); });
  auto lf = late.get_future();
  CHECK(lf.wait_for(50ms) == std::future_status::timeout);
  f.clk.advance(10s);
  REQUIRE(lf.wait_for(5s) == std::future_status::ready);
  auto r = lf.get();
  CHECK(r.ec == errc::timeout);
  CHECK_THAT(r.message, Contains("block_timeout"));
  f.check_accounting();
}

TEST_CASE("overflow block: waiting enqueues complete in the order they came and cost no commits while they wait") {
  fixture f(small_blocking_queue);
  f.put(20, {f.a}, 100); // nearly full
  const queue::peer_id to[] = {f.a};
  const auto commits_before = f.s->stats().commits;
  std::mutex mu;
  std::vector<std::string> order;
  std::vector<std::future<void>> done;
  // A big one that needs nearly the whole capacity, then two small ones that
  // would fit now: they must not overtake it.
  std::string big(2400, 'b'), small(50, 's');
  for (auto [name, payload] : {std::pair{"big", &big}, std::pair{"small1", &small}, std::pair{"small2", &small}}) {
    auto pr = std::make_shared<std::promise<void>>();
    done.push_back(pr->get_future());
    f.s->enqueue({{"s1", *payload, to}}, [&, pr, name](queue::enqueue_result&& r) {
      CHECK_FALSE(r.ec);
      {
        std::lock_guard lk(mu);
        order.push_back(name);
      }
      pr->set_value();
    });
  }
  for (auto& d : done)
    CHECK(d.wait_for(100ms) == std::future_status::timeout);
  CHECK(f.s->stats().commits == commits_before); // waiting is not written
  // Acking the 20 first segments makes room for all three.
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(f.read(f.a, 20))));
  for (auto& d : done)
    REQUIRE(d.wait_for(5s) == std::future_status::ready);
  CHECK(order == std::vector<std::string>{"big", "small1", "small2"});
  CHECK(f.s->stats().peers.at(0).counters.queued == 3);
  f.check_accounting();
}

TEST_CASE("overflow block: expire_waiting ends the waiting enqueues now, and returns after their callbacks ran") {
  fixture f(small_blocking_queue);
  f.put(20, {f.a}, 100); // nearly full
  const queue::peer_id to[] = {f.a};
  std::string big(2500, 'z');
  std::atomic<int> ended{0};
  std::vector<queue::enqueue_result> results(2);
  for (int i = 0; i < 2; ++i)
    f.s->enqueue({{"s1", big, to}}, [&, i](queue::enqueue_result&& r) {
      results[static_cast<std::size_t>(i)] = std::move(r);
      ++ended;
    });
  std::this_thread::sleep_for(50ms);
  CHECK(ended == 0); // waiting: the deadline (10 s on the manual clock) is far
  f.s->expire_waiting();
  CHECK(ended == 2); // when it returns, the callbacks have run
  for (auto& r : results) {
    CHECK(r.ec == errc::timeout);
    CHECK(r.status.empty());
  }
  f.s->expire_waiting(); // nothing waits: returns at once
  // The store goes on storing what fits; what would wait ends at once (the owner is stopping).
  std::string small(50, 's');
  CHECK_FALSE(f.s->enqueue_wait({{"s1", small, to}}).ec);
  auto t0 = std::chrono::steady_clock::now();
  CHECK(f.s->enqueue_wait({{"s1", big, to}}).ec == errc::timeout);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  f.check_accounting();
}

TEST_CASE("evict_lru evicts least recently used unleased segments and journals each") {
  fixture f([](auto& o) {
    o.max_bytes = 1000;
    o.overflow = queue::overflow_policy::evict_lru;
  });
  auto rec = [&](int n, queue::peer_id p, const char* tag) { return f.put(n, {p}, 60, "s1", tag); };
  auto a1 = rec(2, f.a, "a"); // oldest
  auto b1 = rec(2, f.b, "b");
  // A failed attempt makes a1[0] recently used again.
  auto first = f.read(f.a, 1);
  REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(first), "down"));
  // a1[1] is leased now and can never be evicted.
  auto leased = f.read(f.a, 1);
  f.clk.advance(1h);
  REQUIRE(fixture::ids(leased) == std::vector<std::string>{a1[1]});
  // Each record is ~90 bytes: fill past 1000 so evictions start.
  auto c1 = rec(8, f.b, "c");
  auto ev = f.s->evictions(0, 100);
  REQUIRE(ev);
  REQUIRE(ev->size() >= 2);
  // Victim order: b1[0], b1[1] (enqueue order), then a1[0] (its attempt came later), never a1[1].
  CHECK((*ev)[0].id == b1[0]);
  CHECK((*ev)[0].peer == "b");
  CHECK((*ev)[1].id == b1[1]);
  CHECK((*ev)[0].stream == "s1");
  CHECK((*ev)[0].bytes == 60);
  CHECK((*ev)[0].at_ms == util::to_unix_ms(f.clk.system_now()));
  if (ev->size() >= 3) CHECK((*ev)[2].id == a1[0]);
  for (auto& e : *ev)
    CHECK(e.id != a1[1]);
  CHECK(f.counters(f.a).evicted + f.counters(f.b).evicted == ev->size());
  CHECK(f.s->stats().queued_bytes <= 1000);
  f.check_accounting();
}

TEST_CASE("evict_lru refuses when everything evictable is in flight") {
  fixture f([](auto& o) {
    o.max_bytes = 500;
    o.overflow = queue::overflow_policy::evict_lru;
  });
  f.put(4, {f.a}, 60);
  auto bt = f.read(f.a);
  REQUIRE(bt.segments.size() == 4);
  std::string p(200, 'x');
  const queue::peer_id to[] = {f.a};
  auto r = f.s->enqueue_wait({{"s1", p, to}});
  CHECK(r.ec == errc::queue_full);
  CHECK_THAT(r.message, Contains("in flight"));
  f.check_accounting();
}

TEST_CASE("the eviction journal is bounded and keeps the newest entries") {
  fixture f([](auto& o) {
    o.max_bytes = 400;
    o.overflow = queue::overflow_policy::evict_lru;
    o.eviction_journal_max = 5;
  });
  for (int i = 0; i < 20; ++i)
    f.put(1, {f.a}, 60, "s1", "x" + std::to_string(i) + "-");
  auto ev = f.s->evictions(0, 100);
  REQUIRE(ev);
  CHECK(ev->size() == 5);
  CHECK(f.counters(f.a).evicted > 5);
  CHECK(ev->back().seq == f.counters(f.a).evicted);
  f.check_accounting();
}

TEST_CASE("a received id seen within the dedupe window is dropped as a duplicate") {
  fixture f([](auto& o) { o.dedupe_window = 1h; });
  std::string p = "payload";
  const queue::peer_id to[] = {f.a};
  auto r1 = f.s->enqueue_wait({{"s1", p, to, "edge7:1"}, {"s1", p, to, "edge7:2"}, {"s1", p, to, "edge7:1"}});
  REQUIRE_FALSE(r1.ec);
  CHECK(r1.status ==
        std::vector{queue::item_status::stored, queue::item_status::stored, queue::item_status::duplicate});
  auto r2 = f.s->enqueue_wait({{"s1", p, to, "edge7:2"}});
  CHECK(r2.status == std::vector{queue::item_status::duplicate});
  auto bt = f.read(f.a);
  CHECK(fixture::ids(bt) == std::vector<std::string>{"edge7:1", "edge7:2"});
  CHECK(f.s->stats().duplicates == 2);
  f.clk.advance(61min);
  auto m = f.s->maintenance_wait();
  REQUIRE(m);
  CHECK(m->dedupe_expired == 2);
  auto r3 = f.s->enqueue_wait({{"s1", p, to, "edge7:1"}});
  CHECK(r3.status == std::vector{queue::item_status::stored});
  f.check_accounting();
}

namespace {
std::string be64(std::uint64_t v) {
  std::string k(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8)
    k[static_cast<std::size_t>(i)] = static_cast<char>(v & 0xff);
  return k;
}
// Rewrites a closed store as format 1 left it: format record 1, and the given
// received ids in "ids" and "ids_by_time" keyed time ‖ id with an empty value.
void make_format1(const std::filesystem::path& data, std::int64_t ms, const std::vector<std::string>& ids) {
  MDB_env* env = nullptr;
  REQUIRE(mdb_env_create(&env) == 0);
  mdb_env_set_maxdbs(env, 4096);
  REQUIRE(mdb_env_open(env, data.c_str(), 0, 0640) == 0);
  MDB_txn* t = nullptr;
  REQUIRE(mdb_txn_begin(env, nullptr, 0, &t) == 0);
  MDB_dbi meta, idsdb, idt;
  REQUIRE(mdb_dbi_open(t, "meta", 0, &meta) == 0);
  REQUIRE(mdb_dbi_open(t, "ids", 0, &idsdb) == 0);
  REQUIRE(mdb_dbi_open(t, "ids_by_time", 0, &idt) == 0);
  auto put = [&](MDB_dbi d, std::string k, std::string v) {
    MDB_val kv{k.size(), k.data()}, vv{v.size(), v.data()};
    REQUIRE(mdb_put(t, d, &kv, &vv, 0) == 0);
  };
  put(meta, "format", std::string("\0\0\0\1", 4));
  for (auto& id : ids) {
    put(idsdb, id, be64(static_cast<std::uint64_t>(ms)));
    put(idt, be64(static_cast<std::uint64_t>(ms)) + id, "");
  }
  REQUIRE(mdb_txn_commit(t) == 0);
  mdb_env_close(env);
}
// One table of a closed store, opened read-only (the tests that inspect the
// on-disk format).
struct closed_table {
  MDB_env* env = nullptr;
  MDB_txn* t = nullptr;
  MDB_dbi dbi = 0;
  closed_table(const std::filesystem::path& data, const char* name) {
    REQUIRE(mdb_env_create(&env) == 0);
    mdb_env_set_maxdbs(env, 4096);
    REQUIRE(mdb_env_open(env, data.c_str(), MDB_RDONLY, 0640) == 0);
    REQUIRE(mdb_txn_begin(env, nullptr, MDB_RDONLY, &t) == 0);
    REQUIRE(mdb_dbi_open(t, name, 0, &dbi) == 0);
  }
  closed_table(const closed_table&) = delete;
  closed_table& operator=(const closed_table&) = delete;
  ~closed_table() {
    if (t) mdb_txn_abort(t);
    mdb_env_close(env);
  }
};
std::uint32_t stored_format(const std::filesystem::path& data) {
  closed_table meta(data, "meta");
  std::string k = "format";
  MDB_val kv{k.size(), k.data()}, vv{};
  REQUIRE(mdb_get(meta.t, meta.dbi, &kv, &vv) == 0);
  REQUIRE(vv.mv_size == 4);
  auto* b = static_cast<const unsigned char*>(vv.mv_data);
  return (std::uint32_t{b[0]} << 24) | (std::uint32_t{b[1]} << 16) | (std::uint32_t{b[2]} << 8) | b[3];
}
} // namespace

TEST_CASE("a format 1 store is upgraded on open: its received ids still dedupe and expire") {
  fixture f([](auto& o) { o.dedupe_window = 1h; });
  const queue::peer_id to[] = {f.a};
  std::string p = "payload";
  const auto now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(f.clk.system_now().time_since_epoch()).count();
  f.s.reset();
  // Ids received in the same millisecond as the format 1 entries sort on both
  // sides of the new keys' sequence numbers: "old:1" and "zz:9".
  make_format1(f.opt.data_dir, now_ms, {"old:1", "zz:9"});
  f.open();
  CHECK(stored_format(f.opt.data_dir) == 3);
  auto r1 = f.s->enqueue_wait({{"s1", p, to, "old:1"}, {"s1", p, to, "new:1"}, {"s1", p, to, "zz:9"}});
  REQUIRE_FALSE(r1.ec);
  CHECK(r1.status ==
        std::vector{queue::item_status::duplicate, queue::item_status::stored, queue::item_status::duplicate});
  f.reopen();
  auto r2 = f.s->enqueue_wait({{"s1", p, to, "new:1"}, {"s1", p, to, "new:2"}});
  CHECK(r2.status == std::vector{queue::item_status::duplicate, queue::item_status::stored});
  f.clk.advance(61min);
  auto m = f.s->maintenance_wait();
  REQUIRE(m);
  CHECK(m->dedupe_expired == 4); // two format 1 entries, two format 2 entries
  auto r3 = f.s->enqueue_wait({{"s1", p, to, "old:1"}, {"s1", p, to, "new:1"}, {"s1", p, to, "zz:9"}});
  CHECK(r3.status == std::vector{queue::item_status::stored, queue::item_status::stored, queue::item_status::stored});
  f.check_accounting();
}

namespace {
// The rows of the "id_ranges" table of a closed store, as "origin first-last".
std::vector<std::string> id_range_rows(const std::filesystem::path& data) {
  closed_table ranges(data, "id_ranges");
  MDB_cursor* c = nullptr;
  REQUIRE(mdb_cursor_open(ranges.t, ranges.dbi, &c) == 0);
  auto u64 = [](const unsigned char* b) {
    std::uint64_t v = 0;
    for (int i = 0; i < 8; ++i)
      v = (v << 8) | b[i];
    return v;
  };
  std::vector<std::string> rows;
  MDB_val k{}, v{};
  for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    auto* kb = static_cast<const unsigned char*>(k.mv_data);
    std::size_t olen = kb[0];
    REQUIRE(k.mv_size == 1 + olen + 8);
    REQUIRE(v.mv_size == 16);
    rows.push_back(std::string(reinterpret_cast<const char*>(kb + 1), olen) + " " + std::to_string(u64(kb + 1 + olen)) +
                   "-" + std::to_string(u64(static_cast<const unsigned char*>(v.mv_data))));
  }
  mdb_cursor_close(c);
  return rows;
}
std::vector<queue::item_status> statuses(queue::store& s, const std::vector<std::string>& ids, queue::peer_id to) {
  const queue::peer_id peers[] = {to};
  std::vector<queue::segment_in> segs;
  for (auto& id : ids)
    segs.push_back({"s1", "payload", peers, id});
  auto r = s.enqueue_wait(std::move(segs));
  INFO(r.message);
  REQUIRE_FALSE(r.ec);
  return r.status;
}
constexpr auto stored = queue::item_status::stored;
constexpr auto dupe = queue::item_status::duplicate;
// A receiver with an 8 MiB map ceiling that takes 150,000 ids
// "<prefix><n>" (n from 0) in 30 requests, each delivered (acked) at once,
// so the queue stays empty.
template <class Fixture>
void receive_150k(Fixture& f, const std::string& prefix) {
  const queue::peer_id to[] = {f.a};
  for (int round = 0; round < 30; ++round) {
    std::vector<std::string> ids;
    for (int i = 0; i < 5000; ++i)
      ids.push_back(prefix + std::to_string(round * 5000 + i));
    std::vector<queue::segment_in> segs;
    for (auto& id : ids)
      segs.push_back({"s1", "sixteen bytes...", to, id});
    auto r = f.s->enqueue_wait(std::move(segs));
    INFO("round " << round << ": " << r.message);
    REQUIRE_FALSE(r.ec);
    REQUIRE_FALSE(f.s->ack_wait(f.a, Fixture::keys(f.read(f.a, 5000))));
  }
  CHECK(f.s->stats().accepted == 150000);
}
void small_map(queue::store_options& o) {
  o.max_bytes = 1ull << 30;
  o.max_map_bytes = 8ull << 20;
}
} // namespace

TEST_CASE("received <origin>:<seq> ids are kept as ranges per origin: out of order, with gaps, merged when filled") {
  fixture f([](auto& o) { o.dedupe_window = 1h; });
  // Out of order, two origins interleaved, one repeat inside the request.
  CHECK(statuses(*f.s, {"e:3", "e:1", "x:7", "e:2", "e:5", "e:8", "x:8", "e:2", "e:10"}, f.a) ==
        std::vector{stored, stored, stored, stored, stored, stored, stored, dupe, stored});
  f.reopen();
  CHECK(statuses(*f.s, {"e:1", "e:2", "e:3", "e:4", "e:5", "e:6", "e:7", "e:8", "e:9", "e:10", "e:11", "x:6", "x:9"},
                 f.a) ==
        std::vector{dupe, dupe, dupe, stored, dupe, stored, stored, dupe, stored, dupe, stored, stored, stored});
  // Every gap of e filled: one range; x is 6-9.
  f.s.reset();
  CHECK(id_range_rows(f.opt.data_dir) == std::vector<std::string>{"e 1-11", "x 6-9"});
  f.open();
  // x:11 leaves the gap above 9 in the lookup's memory; x:9 is below it.
  CHECK(statuses(*f.s, {"x:11", "x:9"}, f.a) == std::vector{stored, dupe});
  CHECK(statuses(*f.s, {"e:11", "e:6", "x:6", "x:9", "x:10", "e:12"}, f.a) ==
        std::vector{dupe, dupe, dupe, dupe, stored, stored});
  // The largest and the smallest seq, and one past 64 bits (a row of its own).
  CHECK(statuses(*f.s, {"m:18446744073709551615", "m:0", "m:18446744073709551616"}, f.a) ==
        std::vector{stored, stored, stored});
  CHECK(statuses(*f.s, {"m:18446744073709551615", "m:0", "m:18446744073709551616", "m:1"}, f.a) ==
        std::vector{dupe, dupe, dupe, stored});
  f.s.reset();
  CHECK(id_range_rows(f.opt.data_dir) ==
        std::vector<std::string>{"e 1-12", "m 0-1", "m 18446744073709551615-18446744073709551615", "x 6-11"});
  f.open();
  CHECK(f.s->stats().duplicates == 15);
  f.check_accounting();
}

TEST_CASE("a seq with a leading zero is its own id, not the same seq without it") {
  fixture f([](auto& o) { o.dedupe_window = 1h; });
  CHECK(statuses(*f.s, {"a:01", "a:1", "a:0", "a:00"}, f.a) == std::vector{stored, stored, stored, stored});
  CHECK(statuses(*f.s, {"a:1", "a:01", "a:00", "a:0"}, f.a) == std::vector{dupe, dupe, dupe, dupe});
  auto bt = f.read(f.a);
  CHECK(fixture::ids(bt) == std::vector<std::string>{"a:01", "a:1", "a:0", "a:00"});
  f.check_accounting();
}

TEST_CASE("a range is forgotten dedupe_window after its last id arrived, all its ids at once") {
  fixture f([](auto& o) { o.dedupe_window = 1h; });
  CHECK(statuses(*f.s, {"e:1", "e:2", "o:5"}, f.a) == std::vector{stored, stored, stored});
  f.clk.advance(40min);
  // e:3 extends e's range, which now counts from here; o's does not move.
  CHECK(statuses(*f.s, {"e:3"}, f.a) == std::vector{stored});
  f.clk.advance(30min);
  auto m = f.s->maintenance_wait();
  REQUIRE(m);
  CHECK(m->dedupe_expired == 1); // o:5
  CHECK(statuses(*f.s, {"e:1", "o:5"}, f.a) == std::vector{dupe, stored});
  f.clk.advance(31min);
  m = f.s->maintenance_wait();
  REQUIRE(m);
  CHECK(m->dedupe_expired == 3); // e:1-3
  CHECK(statuses(*f.s, {"e:1", "e:3", "o:5"}, f.a) == std::vector{stored, stored, dupe});
  f.check_accounting();
}

TEST_CASE("a forgotten range that maintenance has not removed yet neither dedupes nor absorbs new ids") {
  fixture f([](auto& o) { o.dedupe_window = 1h; });
  CHECK(statuses(*f.s, {"e:1", "e:2", "e:3", "e:4", "e:5", "e:6"}, f.a) ==
        std::vector{stored, stored, stored, stored, stored, stored});
  CHECK(statuses(*f.s, {"e:8"}, f.a) == std::vector{stored});
  f.clk.advance(61min);
  // No maintenance ran: e 1-6 and e 8 are still rows, but forgotten.
  CHECK(statuses(*f.s, {"e:4", "e:7"}, f.a) == std::vector{stored, stored});
  // e:4 replaced the forgotten 1-6 it lay in; e:7 did not join the forgotten 8.
  CHECK(statuses(*f.s, {"e:4", "e:7", "e:1", "e:8"}, f.a) == std::vector{dupe, dupe, stored, stored});
  f.s.reset();
  CHECK(id_range_rows(f.opt.data_dir) == std::vector<std::string>{"e 1-1", "e 4-4", "e 7-8"});
  f.open();
  f.check_accounting();
}

TEST_CASE("150,000 received ids of one origin take one row of the range table") {
  fixture f(small_map);
  receive_150k(f, "up:");
  CHECK(statuses(*f.s, {"up:0", "up:74999", "up:149999", "up:150000"}, f.a) == std::vector{dupe, dupe, dupe, stored});
  f.s.reset();
  CHECK(id_range_rows(f.opt.data_dir) == std::vector<std::string>{"up 0-150000"});
  f.open();
  f.check_accounting();
}

TEST_CASE("bad segments are refused with a precise error and nothing is stored") {
  fixture f([](auto& o) { o.max_segment_bytes = 100; });
  const queue::peer_id to[] = {f.a};
  const queue::peer_id nowhere[] = {99};
  std::string ok = "ok", big(101, 'x');
  auto r = f.s->enqueue_wait({{"s1", ok, to}, {"Bad Name", ok, to}});
  CHECK(r.ec == errc::bad_stream_name);
  CHECK_THAT(r.message, Contains("segment 1") && Contains("Bad Name"));
  r = f.s->enqueue_wait({{"s1", big, to}});
  CHECK(r.ec == errc::segment_too_large);
  CHECK_THAT(r.message, Contains("101") && Contains("max_segment_bytes (100)"));
  r = f.s->enqueue_wait({{"s1", "", to}});
  CHECK(r.ec == errc::invalid_argument);
  r = f.s->enqueue_wait({{"s1", ok, nowhere}});
  CHECK(r.ec == errc::unknown_peer);
  r = f.s->enqueue_wait({{"s1", ok, to, "x:1", 0, util::checksum("other")}});
  CHECK(r.ec == errc::checksum_mismatch);
  CHECK(f.counters(f.a).routed == 0);
  CHECK(queue::valid_stream_name("_canary"));
  CHECK_FALSE(queue::valid_stream_name("_other"));
  CHECK_FALSE(queue::valid_stream_name(std::string(65, 'a')));
  CHECK(queue::valid_stream_name("a.b_c-9"));
}

TEST_CASE("a checksum the caller has verified is stored as given, without a second check") {
  fixture f;
  const queue::peer_id to[] = {f.a};
  // The relay receiver verifies every record's checksum as it decodes the
  // batch and says so: the store keeps the value it was handed.
  const auto sum = util::checksum("payload");
  auto r = f.s->enqueue_wait({{"s1", "payload", to, "x:1", 0, sum, true}});
  REQUIRE_FALSE(r.ec);
  auto b = f.read(f.a);
  REQUIRE(b.segments.size() == 1);
  CHECK(b.segments[0].checksum == sum);
  CHECK(b.segments[0].payload == "payload");
}

TEST_CASE("read_batch_visit leases what read_batch would and shows it without a copy") {
  fixture f;
  auto ids = f.put(5, {f.a}, 32);
  std::vector<std::string> seen, payloads;
  std::vector<std::uint64_t> keys;
  auto r = f.s->read_batch_visit(f.a, 3, 1ull << 30, [&](std::span<const queue::segment_out> segs) {
    for (auto& g : segs) {
      seen.emplace_back(g.id);
      payloads.emplace_back(g.payload);
      keys.push_back(g.key);
      CHECK(g.stream == "s1");
      CHECK(g.checksum == util::checksum(g.payload));
    }
  });
  REQUIRE(r);
  CHECK(r->segments == 3);
  CHECK(r->payload_bytes == 3 * 32);
  CHECK(seen == std::vector<std::string>(ids.begin(), ids.begin() + 3));
  CHECK(payloads[0].rfind("p0", 0) == 0);
  // Leased: a plain read gets the other two, and a visit with nothing left
  // ready does not call the visitor.
  CHECK(fixture::ids(f.read(f.a)) == std::vector<std::string>(ids.begin() + 3, ids.end()));
  bool called = false;
  r = f.s->read_batch_visit(f.a, 10, 1ull << 30, [&](auto) { called = true; });
  REQUIRE(r);
  CHECK(r->segments == 0);
  CHECK_FALSE(called);
  // The visited ones are acked like any read batch's.
  REQUIRE_FALSE(f.s->ack_wait(f.a, keys));
  CHECK(f.counters(f.a).delivered == 3);
  f.check_accounting();
  CHECK(f.s->read_batch_visit(99, 1, 1, [](auto) {}).error() == errc::unknown_peer);
}

TEST_CASE("queues, counters, dead letters and backoff schedules survive a reopen") {
  fixture f([](auto& o) { o.max_retry = 5; });
  auto ids = f.put(4, {f.a, f.b});
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(f.read(f.a, 1))));
  auto bt = f.read(f.b, 2);
  REQUIRE_FALSE(f.s->nack_wait(f.b, fixture::keys(bt), "down"));
  f.read(f.a); // leased at close: a lease does not outlive the process
  f.reopen();
  CHECK(f.counters(f.a).delivered == 1);
  CHECK(f.counters(f.a).queued == 3);
  CHECK(f.counters(f.b).attempts == 2);
  CHECK(f.read(f.a).segments.size() == 3);
  CHECK(f.read(f.b).segments.size() == 2); // two still in backoff
  f.clk.advance(1s);
  CHECK(f.read(f.b).segments.size() == 2);
  auto more = f.put(1, {f.a});
  CHECK(more[0] == "n1:5"); // ids keep counting
  f.check_accounting();
}

TEST_CASE("sync none stores and reads like full") {
  fixture f([](auto& o) { o.sync = queue::sync_mode::none; });
  f.put(100, {f.a});
  f.reopen();
  CHECK(f.read(f.a).segments.size() == 100);
  CHECK(std::string(queue::to_string(queue::sync_mode::none)) == "none");
}

TEST_CASE("the map grows past its initial size as data arrives") {
  fixture f([](auto& o) { o.max_bytes = 1ull << 30; });
  auto before = f.s->stats().map_bytes;
  std::string chunk(1 << 20, 'm');
  const queue::peer_id to[] = {f.a};
  for (int i = 0; i < 80; ++i)
    REQUIRE_FALSE(f.s->enqueue_wait({{"s1", chunk, to}}).ec);
  CHECK(f.s->stats().map_bytes > before);
  CHECK(f.counters(f.a).queued == 80);
  f.check_accounting();
}

TEST_CASE("at the map ceiling an enqueue fails cleanly while acks still work") {
  fixture f([](auto& o) {
    o.max_bytes = 1ull << 30;
    o.max_map_bytes = 72ull << 20;
  });
  std::string chunk(1 << 20, 'm');
  const queue::peer_id to[] = {f.a};
  queue::enqueue_result r;
  int stored = 0;
  for (; stored < 200; ++stored) {
    r = f.s->enqueue_wait({{"s1", chunk, to}});
    if (r.ec) break;
  }
  CHECK(r.ec == errc::store_full);
  CHECK_THAT(r.message, Contains("ceiling"));
  CHECK(stored > 30);
  f.check_accounting();
  REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(f.read(f.a, 10))));
  CHECK(f.counters(f.a).delivered == 10);
  auto after = f.s->enqueue_wait({{"s1", chunk, to}});
  INFO(after.message);
  CHECK_FALSE(after.ec);
  f.check_accounting();
}

TEST_CASE("a failed attempt does not grow the queue: the error text goes only to a dead letter") {
  fixture f([](auto& o) { o.max_retry = 3; });
  f.put(10, {f.a}, 16);
  const auto before = f.counters(f.a).queued_bytes;
  const std::string err(4000, 'e');
  for (int attempt = 1; attempt <= 2; ++attempt) {
    f.clk.advance(1h); // past the retry backoff
    REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(f.read(f.a, 10)), err));
    INFO("attempt " << attempt);
    CHECK(f.counters(f.a).queued == 10);
    CHECK(f.counters(f.a).queued_bytes == before);
  }
  f.clk.advance(1h);
  REQUIRE_FALSE(f.s->nack_wait(f.a, fixture::keys(f.read(f.a, 10)), "the last error"));
  auto dl = f.s->deadletter_list({});
  REQUIRE(dl);
  REQUIRE(dl->entries.size() == 10);
  CHECK(dl->entries[0].last_error == "the last error");
  CHECK(dl->entries[0].reason == "max_retry");
  f.check_accounting();
}

TEST_CASE("the dedupe tables do not count against the map ceiling: a receiver keeps taking ids past it") {
  // The ceiling is derived from the capacities; the received-id tables are
  // bounded by dedupe_window instead. 150,000 ids that each take a row (a
  // seq with a leading zero is not ranged) take more than the whole 8 MiB
  // ceiling, while the queue itself stays empty.
  fixture f(small_map);
  receive_150k(f, "up:0");
  CHECK(f.s->stats().map_bytes > (8ull << 20));
  const queue::peer_id to[] = {f.a};
  // Every id is still remembered.
  const queue::segment_in again[] = {{"s1", "sixteen bytes...", to, "up:00"},
                                     {"s1", "sixteen bytes...", to, "up:0149999"}};
  auto r = f.s->enqueue_wait({again[0], again[1]});
  REQUIRE_FALSE(r.ec);
  CHECK(r.status == std::vector<queue::item_status>{queue::item_status::duplicate, queue::item_status::duplicate});
  f.check_accounting();
}

TEST_CASE("a write the filesystem refuses fails cleanly and leaves stored data intact") {
  // RLIMIT_FSIZE makes the kernel refuse writes past a size (EFBIG), a real
  // write failure like ENOSPC. Done in a child so the limit stays there.
  test::temp_dir dir("fsize");
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int code = 0;
    {
      queue::store_options o;
      o.data_dir = dir / "data";
      o.node_id = "n1";
      auto s = queue::store::open(o);
      if (!s) ::_exit(10);
      auto a = *(*s)->add_peer("a");
      const queue::peer_id to[] = {a};
      std::string small(1000, 's');
      for (int i = 0; i < 50; ++i)
        if ((*s)->enqueue_wait({{"s1", small, to}}).ec) ::_exit(11);
      auto size = std::filesystem::file_size(dir / "data" / "data.mdb");
      std::signal(SIGXFSZ, SIG_IGN);
      rlimit lim{static_cast<rlim_t>(size + 8192), static_cast<rlim_t>(size + 8192)};
      ::setrlimit(RLIMIT_FSIZE, &lim);
      std::string big(1 << 20, 'b');
      auto r = (*s)->enqueue_wait({{"s1", big, to}});
      if (!r.ec)
        code = 12;
      else if (r.message.find("commit failed") == std::string::npos ||
               r.message.find("nothing already stored was lost") == std::string::npos)
        code = 13;
      lim = {RLIM_INFINITY, RLIM_INFINITY};
      ::setrlimit(RLIMIT_FSIZE, &lim);
      auto rep = (*s)->verify_accounting();
      if (!rep || !rep->clean) code = 14;
      auto bt = (*s)->read_batch(a, 1000, 1ull << 30);
      if (!bt || bt->segments.size() != 50) code = 15;
      for (auto& seg : bt->segments)
        if (seg.payload != small) code = 16;
    }
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("a full disk (ENOSPC) fails the write cleanly and keeps what was stored") {
  // A real ENOSPC: a 4 MiB tmpfs in a private mount namespace of a child.
  // Where mount namespaces are not allowed the test says so and checks nothing.
  test::temp_dir dir("enospc");
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("tmpfs", dir.path().c_str(), "tmpfs", 0, "size=4m") != 0)
      ::_exit(77);
    int code = 0;
    {
      queue::store_options o;
      o.data_dir = dir / "data";
      o.node_id = "n1";
      auto s = queue::store::open(o);
      if (!s) ::_exit(10);
      auto a = *(*s)->add_peer("a");
      const queue::peer_id to[] = {a};
      std::string chunk(256 << 10, 'c');
      int stored = 0;
      queue::enqueue_result r;
      for (; stored < 100; ++stored) {
        r = (*s)->enqueue_wait({{"s1", chunk, to}});
        if (r.ec) break;
      }
      if (stored == 100 || stored == 0)
        code = 11;
      else if (r.ec != boost::system::errc::no_space_on_device) {
        std::fprintf(stderr, "ENOSPC test: got %s: %s\n", r.ec.message().c_str(), r.message.c_str());
        code = 12;
      } else if (r.message.find("is full") == std::string::npos ||
                 r.message.find("nothing already stored was lost") == std::string::npos)
        code = 13;
      auto rep = (*s)->verify_accounting();
      if (!rep || !rep->clean) code = 14;
      auto bt = (*s)->read_batch(a, 1000, 1ull << 30);
      if (!bt || bt->segments.size() != static_cast<std::size_t>(stored))
        code = 15;
      else
        for (auto& seg : bt->segments)
          if (seg.payload != chunk) code = 16;
      // Freeing space makes the store writable again.
      if (code == 0) {
        std::vector<std::uint64_t> keys;
        for (auto& seg : bt->segments)
          keys.push_back(seg.key);
        if ((*s)->ack_wait(a, keys)) code = 17;
        std::string small(1000, 's');
        bool ok = false;
        for (int i = 0; i < 3 && !ok; ++i)
          ok = !(*s)->enqueue_wait({{"s1", small, to}}).ec;
        if (!ok) code = 18;
      }
    }
    ::umount(dir.path().c_str());
    ::_exit(code);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) {
    WARN("mount namespaces are not permitted here: the ENOSPC case was not exercised");
    return;
  }
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("open refuses a non-empty directory that holds no store") {
  test::temp_dir dir("foreign");
  std::ofstream(dir / "notes.txt") << "hello";
  queue::store_options o;
  o.data_dir = dir.path();
  o.node_id = "n1";
  auto r = queue::store::open(o);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::store_foreign);
  CHECK_THAT(r.error().message, Contains("notes.txt") && Contains("not empty"));
  CHECK(std::filesystem::exists(dir / "notes.txt"));
}

TEST_CASE("open refuses a corrupt data file and never reinitialises it") {
  test::temp_dir dir("corrupt");
  {
    std::ofstream out(dir / "data.mdb", std::ios::binary);
    out << std::string(64 << 10, '\x5a');
  }
  queue::store_options o;
  o.data_dir = dir.path();
  o.node_id = "n1";
  auto r = queue::store::open(o);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::store_corrupt);
  CHECK_THAT(r.error().message, Contains("data.mdb") && Contains("backup"));
  CHECK(std::filesystem::file_size(dir / "data.mdb") == 64u << 10);
}

TEST_CASE("open refuses an LMDB environment that edgerelay did not create") {
  test::temp_dir dir("otherlmdb");
  {
    MDB_env* env;
    REQUIRE(mdb_env_create(&env) == 0);
    mdb_env_set_maxdbs(env, 4);
    REQUIRE(mdb_env_open(env, dir.path().c_str(), 0, 0640) == 0);
    MDB_txn* t;
    mdb_txn_begin(env, nullptr, 0, &t);
    MDB_dbi dbi;
    mdb_dbi_open(t, nullptr, 0, &dbi);
    MDB_val k{3, const_cast<char*>("key")}, v{5, const_cast<char*>("value")};
    mdb_put(t, dbi, &k, &v, 0);
    mdb_txn_commit(t);
    mdb_env_close(env);
  }
  queue::store_options o;
  o.data_dir = dir.path();
  o.node_id = "n1";
  auto r = queue::store::open(o);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == errc::store_foreign);
  CHECK_THAT(r.error().message, Contains("did not create"));
}

TEST_CASE("open refuses a store of another node id and a store already open") {
  fixture f;
  f.put(1, {f.a});
  queue::store_options o = f.opt;
  auto busy = queue::store::open(o);
  REQUIRE_FALSE(busy);
  CHECK_THAT(busy.error().message, Contains("in use by another edgerelay process"));
  f.s.reset();
  o.node_id = "n2";
  auto other = queue::store::open(o);
  REQUIRE_FALSE(other);
  CHECK(other.error().code == errc::store_foreign);
  CHECK_THAT(other.error().message, Contains("belongs to node \"n1\""));
}

TEST_CASE("concurrent producers and consumers keep the accounting identity") {
  fixture f([](auto& o) {
    o.max_retry = 1000;
    o.retry_backoff = {0ms, 0ms, 1.0, 0.0};
  });
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> acked{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&, t] {
      std::vector<queue::peer_id> to = {t % 2 ? f.a : f.b};
      for (int i = 0; i < 100; ++i) {
        std::vector<std::string> ps(10, std::string(50, static_cast<char>('a' + t)));
        std::vector<queue::segment_in> segs;
        for (auto& p : ps)
          segs.push_back({"s1", p, to});
        REQUIRE_FALSE(f.s->enqueue_wait(std::move(segs)).ec);
      }
    });
  for (auto p : {f.a, f.b})
    threads.emplace_back([&, p] {
      std::set<std::string> seen;
      int n = 0;
      while (!stop || n % 2 == 0) {
        auto bt = f.s->read_batch(p, 37, 1 << 20);
        if (!bt || bt->segments.empty()) {
          if (stop) break;
          std::this_thread::yield();
          continue;
        }
        auto k = fixture::keys(*bt);
        if (++n % 3 == 0)
          f.s->nack_wait(p, k, "flaky");
        else {
          f.s->ack_wait(p, k);
          acked += k.size();
        }
      }
    });
  for (int t = 0; t < 4; ++t)
    threads[static_cast<std::size_t>(t)].join();
  auto deadline = std::chrono::steady_clock::now() + 30s;
  while (acked < 4000 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(1ms);
  stop = true;
  threads[4].join();
  threads[5].join();
  CHECK(acked == 4000);
  f.check_accounting();
}

namespace {
// Resident file-backed memory of this process (the LMDB map's pages count here).
std::uint64_t rss_file_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("RssFile:", 0) == 0) return std::stoull(line.substr(8));
  return 0;
}
} // namespace

TEST_CASE("draining a backlog does not keep the map's pages resident") {
  fixture f([](auto& o) { o.max_bytes = 1ull << 30; });
  std::string chunk(64 << 10, 'r');
  const queue::peer_id to[] = {f.a};
  for (int i = 0; i < 192 * 16; i += 16) { // 192 MiB in requests of 1 MiB
    std::vector<queue::segment_in> segs(16, queue::segment_in{"s1", chunk, to});
    REQUIRE_FALSE(f.s->enqueue_wait(std::move(segs)).ec);
  }
  auto before = rss_file_kib();
  std::uint64_t peak = before, drained = 0;
  for (;;) {
    auto bt = f.read(f.a, 64, 4 << 20);
    if (bt.segments.empty()) break;
    drained += bt.payload_bytes;
    REQUIRE_FALSE(f.s->ack_wait(f.a, fixture::keys(bt)));
    peak = std::max(peak, rss_file_kib());
  }
  CHECK(drained == 192ull << 20);
  INFO("RssFile before the drain " << before << " KiB, peak " << peak << " KiB");
  CHECK(peak - before < 64 * 1024);
}

TEST_CASE("a batch of tiny segments stays valid when moved") {
  fixture f;
  std::string p = "x";
  const queue::peer_id to[] = {f.a};
  REQUIRE_FALSE(f.s->enqueue_wait({{"s", p, to}}).ec);
  auto r = f.s->read_batch(f.a, 10, 1 << 20);
  REQUIRE(r.has_value());
  queue::batch moved = std::move(*r);
  std::vector<queue::batch> many;
  many.push_back(std::move(moved));
  REQUIRE(many[0].segments.size() == 1);
  CHECK(many[0].segments[0].payload == "x");
  CHECK(many[0].segments[0].stream == "s");
  CHECK(many[0].segments[0].id == "n1:1");
}
