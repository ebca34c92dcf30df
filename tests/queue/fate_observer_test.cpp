#include "queue/store.hpp"
#include "tests/support/result_printer.hpp"
#include "tests/support/temp_dir.hpp"

#include <catch2/catch.hpp>

#include <mutex>

using namespace edgerelay;
using namespace std::chrono_literals;

namespace {

struct fate_fixture {
  test::temp_dir dir{"fates"};
  util::manual_clock clk;
  queue::store_options opt;
  std::unique_ptr<queue::store> s;
  queue::peer_id a = 0, b = 0;
  std::mutex mu;
  std::vector<queue::fate_event> seen;

  explicit fate_fixture(std::function<void(queue::store_options&)> tweak = {}) {
    opt.data_dir = dir / "data";
    opt.node_id = "n1";
    opt.clock = &clk;
    opt.retry_backoff.initial = 0ms;
    opt.retry_backoff.jitter = 0;
    if (tweak) tweak(opt);
    auto r = queue::store::open(opt);
    REQUIRE(r);
    s = std::move(*r);
    a = s->add_peer("a").value();
    b = s->add_peer("b").value();
    s->set_fate_observer("_canary", [this](std::vector<queue::fate_event>&& evs) {
      std::lock_guard lk(mu);
      for (auto& e : evs)
        seen.push_back(std::move(e));
    });
  }
  void put(std::string_view stream, std::string_view payload, queue::peer_id p) {
    const queue::peer_id peers[] = {p};
    auto r = s->enqueue_wait({queue::segment_in{stream, payload, peers}});
    REQUIRE_FALSE(r.ec);
  }
  std::vector<std::uint64_t> lease_all(queue::peer_id p) {
    auto bt = s->read_batch(p, 100, 1 << 20);
    REQUIRE(bt);
    std::vector<std::uint64_t> keys;
    for (auto& sg : bt->segments)
      keys.push_back(sg.key);
    return keys;
  }
  std::vector<queue::fate_event> events() {
    std::lock_guard lk(mu);
    return seen;
  }
};

} // namespace

TEST_CASE("acked segments of the watched stream are reported delivered, other streams not", "[queue][fates]") {
  fate_fixture f;
  f.put("_canary", "c1", f.a);
  f.put("data", "d1", f.a);
  f.put("_canary", "c2", f.b);
  REQUIRE_FALSE(f.s->ack_wait(f.a, f.lease_all(f.a)));
  REQUIRE_FALSE(f.s->ack_wait(f.b, f.lease_all(f.b)));
  auto ev = f.events();
  REQUIRE(ev.size() == 2);
  CHECK(ev[0].fate == queue::segment_fate::delivered);
  CHECK(ev[0].peer == f.a);
  CHECK(ev[0].peer_name == "a");
  CHECK(ev[0].payload == "c1");
  CHECK(ev[0].id == "n1:1");
  CHECK(ev[1].peer_name == "b");
  CHECK(ev[1].payload == "c2");
  // Acking again (already gone) reports nothing more.
  REQUIRE_FALSE(f.s->ack_wait(f.a, {1, 2, 3}));
  CHECK(f.events().size() == 2);
}

TEST_CASE("rejected and max_retry segments of the watched stream are reported dead-lettered with the reason",
          "[queue][fates]") {
  fate_fixture f([](queue::store_options& o) { o.max_retry = 2; });
  f.put("_canary", "rejected", f.a);
  auto k = f.lease_all(f.a);
  REQUIRE(k.size() == 1);
  REQUIRE_FALSE(f.s->reject_wait(f.a, {{k[0], "rejected:bad_canary", "the peer rejected it"}}));
  f.put("_canary", "retried", f.b);
  REQUIRE_FALSE(f.s->nack_wait(f.b, f.lease_all(f.b), "connection refused"));
  CHECK(f.events().size() == 1); // one failed attempt of two: still queued
  f.clk.advance(1s);
  REQUIRE_FALSE(f.s->nack_wait(f.b, f.lease_all(f.b), "connection refused"));
  auto ev = f.events();
  REQUIRE(ev.size() == 2);
  CHECK(ev[0].fate == queue::segment_fate::deadlettered);
  CHECK(ev[0].reason == "rejected:bad_canary");
  CHECK(ev[0].payload == "rejected");
  CHECK(ev[1].fate == queue::segment_fate::deadlettered);
  CHECK(ev[1].reason == "max_retry");
  CHECK(ev[1].peer_name == "b");
  CHECK(ev[1].payload == "retried");
  // A dead-letter retry puts it back; its ack is then reported as delivered.
  auto n = f.s->deadletter_retry_wait({.ids = {ev[1].id}});
  REQUIRE(n);
  CHECK(*n == 1);
  REQUIRE_FALSE(f.s->ack_wait(f.b, f.lease_all(f.b)));
  ev = f.events();
  REQUIRE(ev.size() == 3);
  CHECK(ev[2].fate == queue::segment_fate::delivered);
  CHECK(ev[2].payload == "retried");
}

TEST_CASE("evicted segments of the watched stream are reported evicted", "[queue][fates]") {
  fate_fixture f([](queue::store_options& o) {
    o.overflow = queue::overflow_policy::evict_lru;
    o.max_bytes = 600;
  });
  f.put("_canary", std::string(200, 'c'), f.a);
  f.put("data", std::string(200, 'd'), f.b);
  f.put("data", std::string(300, 'e'), f.b); // room only by evicting the oldest: the canary
  auto ev = f.events();
  REQUIRE(ev.size() == 1);
  CHECK(ev[0].fate == queue::segment_fate::evicted);
  CHECK(ev[0].reason == "evicted");
  CHECK(ev[0].peer_name == "a");
  CHECK(ev[0].payload == std::string(200, 'c'));
}

TEST_CASE("no fates are reported once the observer is turned off", "[queue][fates]") {
  fate_fixture f;
  f.put("_canary", "c1", f.a);
  f.s->set_fate_observer({}, nullptr);
  REQUIRE_FALSE(f.s->ack_wait(f.a, f.lease_all(f.a)));
  CHECK(f.events().empty());
}
