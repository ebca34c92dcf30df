#include "queue/store.hpp"
#include "tests/support/lmdb_edit.hpp"
#include "tests/support/result_printer.hpp"
#include "tests/support/temp_dir.hpp"

#include <catch2/catch.hpp>
#include <lmdb.h>

#include <future>

using namespace edgerelay;
using namespace std::chrono_literals;

namespace {

struct quota_fixture {
  test::temp_dir dir{"quota"};
  util::manual_clock clk;
  queue::store_options opt;
  std::unique_ptr<queue::store> s;

  quota_fixture() {
    opt.data_dir = dir / "data";
    opt.node_id = "n1";
    opt.clock = &clk;
    open();
  }
  void open() {
    auto r = queue::store::open(opt);
    INFO((r ? std::string() : r.error().message));
    REQUIRE(r);
    s = std::move(*r);
  }
  void reopen() {
    s.reset();
    open();
  }
  queue::peer_id peer(std::string_view name) {
    auto p = s->add_peer(name);
    REQUIRE(p);
    return *p;
  }
};

} // namespace

TEST_CASE("quota state saved for a peer is loaded with the same values after the store is reopened", "[queue][quota]") {
  quota_fixture f;
  const auto a = f.peer("a");
  const auto b = f.peer("b");
  const std::int64_t start_ms = 1'700'000'000'000 + 13 * 3600'000 + 30 * 60'000;
  REQUIRE_FALSE(f.s->save_quota_state_wait(a, start_ms, 123'456'789'012ull));
  REQUIRE_FALSE(f.s->save_quota_state_wait(b, -86'400'000, 0)); // before the epoch, nothing used
  f.reopen();
  REQUIRE(f.s->find_peer("a") == a);
  auto la = f.s->load_quota_state(a);
  REQUIRE(la);
  REQUIRE(la->has_value());
  CHECK((*la)->period_start_unix_ms == start_ms);
  CHECK((*la)->used_bytes == 123'456'789'012ull);
  auto lb = f.s->load_quota_state(b);
  REQUIRE(lb);
  REQUIRE(lb->has_value());
  CHECK(**lb == queue::quota_record{-86'400'000, 0});
}

TEST_CASE("a peer whose quota state was never saved loads nullopt", "[queue][quota]") {
  quota_fixture f;
  const auto a = f.peer("a");
  const auto b = f.peer("b");
  REQUIRE_FALSE(f.s->save_quota_state_wait(a, 1000, 5));
  auto lb = f.s->load_quota_state(b);
  REQUIRE(lb);
  CHECK_FALSE(lb->has_value());
  f.reopen();
  lb = f.s->load_quota_state(b);
  REQUIRE(lb);
  CHECK_FALSE(lb->has_value());
}

TEST_CASE("the last saved quota state wins, also when saves share one commit", "[queue][quota]") {
  quota_fixture f;
  const auto a = f.peer("a");
  REQUIRE_FALSE(f.s->save_quota_state_wait(a, 1000, 1));
  // Hand in many saves without waiting: the writer groups them; the last one counts.
  std::vector<std::future<boost::system::error_code>> done;
  for (std::uint64_t i = 1; i <= 50; ++i) {
    auto p = std::make_shared<std::promise<boost::system::error_code>>();
    done.push_back(p->get_future());
    f.s->save_quota_state(a, 2000, i * 10, [p](boost::system::error_code ec) { p->set_value(ec); });
  }
  for (auto& d : done)
    CHECK_FALSE(d.get());
  auto l = f.s->load_quota_state(a);
  REQUIRE(l);
  REQUIRE(l->has_value());
  CHECK(**l == queue::quota_record{2000, 500});
  f.reopen();
  l = f.s->load_quota_state(a);
  REQUIRE(l);
  REQUIRE(l->has_value());
  CHECK(**l == queue::quota_record{2000, 500});
}

TEST_CASE("quota state of an unknown peer id is refused on save and on load", "[queue][quota]") {
  quota_fixture f;
  const auto a = f.peer("a");
  CHECK(f.s->save_quota_state_wait(a + 7, 1000, 1) == errc::unknown_peer);
  CHECK(f.s->save_quota_state_wait(0, 1000, 1) == errc::unknown_peer);
  auto l = f.s->load_quota_state(a + 7);
  REQUIRE_FALSE(l);
  CHECK(l.error() == errc::unknown_peer);
  // A refused save does not spoil the others committed with it.
  REQUIRE_FALSE(f.s->save_quota_state_wait(a, 3000, 3));
  auto la = f.s->load_quota_state(a);
  REQUIRE(la);
  CHECK(la->value_or(queue::quota_record{}) == queue::quota_record{3000, 3});
}

TEST_CASE("a store made before the quota table existed opens, keeps its data and then stores quota state",
          "[queue][quota]") {
  quota_fixture f;
  const auto a = f.peer("a");
  const std::string payload = "kept across the upgrade";
  const queue::peer_id peers[] = {a};
  auto e = f.s->enqueue_wait({queue::segment_in{"s1", payload, peers}});
  REQUIRE_FALSE(e.ec);
  f.s.reset();
  test::drop_store_table(f.opt.data_dir, "quota");

  f.open();
  REQUIRE(f.s->find_peer("a") == a);
  auto none = f.s->load_quota_state(a);
  REQUIRE(none);
  CHECK_FALSE(none->has_value());
  auto b = f.s->read_batch(a, 10, 1 << 20);
  REQUIRE(b);
  REQUIRE(b->segments.size() == 1);
  CHECK(b->segments[0].payload == payload);
  REQUIRE_FALSE(f.s->save_quota_state_wait(a, 4000, 44));
  f.reopen();
  auto l = f.s->load_quota_state(a);
  REQUIRE(l);
  CHECK(l->value_or(queue::quota_record{}) == queue::quota_record{4000, 44});
  auto acc = f.s->verify_accounting();
  REQUIRE(acc);
  CHECK(acc->clean);
}
