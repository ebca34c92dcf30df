#include "queue/store.hpp"
#include "tests/support/lmdb_edit.hpp"
#include "tests/support/result_printer.hpp"
#include "tests/support/temp_dir.hpp"

#include <catch2/catch.hpp>
#include <lmdb.h>

#include <future>

using namespace edgerelay;

namespace {

struct record_fixture {
  test::temp_dir dir{"records"};
  util::manual_clock clk;
  queue::store_options opt;
  std::unique_ptr<queue::store> s;

  record_fixture() {
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
  std::optional<std::string> get(std::string_view key) {
    auto r = s->get_record(key);
    REQUIRE(r);
    return *r;
  }
};

} // namespace

TEST_CASE("a record put is read back with the same bytes after the store is reopened", "[queue][records]") {
  record_fixture f;
  std::string blob("soak\0state\xff", 11);
  blob += std::string(100'000, 'x');
  REQUIRE_FALSE(f.s->put_record_wait("soak", blob));
  REQUIRE_FALSE(f.s->put_record_wait("other", "2"));
  CHECK(f.get("soak") == blob);
  f.reopen();
  CHECK(f.get("soak") == blob);
  CHECK(f.get("other") == std::optional<std::string>("2"));
}

TEST_CASE("a record never put reads nullopt and the last put of a key wins", "[queue][records]") {
  record_fixture f;
  CHECK_FALSE(f.get("soak").has_value());
  std::vector<std::future<boost::system::error_code>> done;
  for (int i = 1; i <= 30; ++i) {
    auto p = std::make_shared<std::promise<boost::system::error_code>>();
    done.push_back(p->get_future());
    f.s->put_record("soak", "v" + std::to_string(i), [p](boost::system::error_code ec) { p->set_value(ec); });
  }
  for (auto& d : done)
    CHECK_FALSE(d.get());
  CHECK(f.get("soak") == std::optional<std::string>("v30"));
  f.reopen();
  CHECK(f.get("soak") == std::optional<std::string>("v30"));
  CHECK_FALSE(f.get("absent").has_value());
}

TEST_CASE("a record key must be 1 to 255 bytes", "[queue][records]") {
  record_fixture f;
  CHECK(f.s->put_record_wait("", "x") == errc::invalid_argument);
  CHECK(f.s->put_record_wait(std::string(256, 'k'), "x") == errc::invalid_argument);
  auto r = f.s->get_record("");
  REQUIRE_FALSE(r);
  CHECK(r.error() == errc::invalid_argument);
  REQUIRE_FALSE(f.s->put_record_wait(std::string(255, 'k'), "x"));
  CHECK(f.get(std::string(255, 'k')) == std::optional<std::string>("x"));
}

TEST_CASE("a record put before an enqueue is committed when the enqueue's callback runs", "[queue][records]") {
  record_fixture f;
  auto a = f.s->add_peer("a");
  REQUIRE(a);
  const queue::peer_id peers[] = {*a};
  std::promise<std::optional<std::string>> seen;
  f.s->put_record("soak", "before", nullptr);
  f.s->enqueue({queue::segment_in{"s1", "payload", peers}}, [&](queue::enqueue_result&& r) {
    REQUIRE_FALSE(r.ec);
    auto got = f.s->get_record("soak");
    seen.set_value(got ? *got : std::nullopt);
  });
  CHECK(seen.get_future().get() == std::optional<std::string>("before"));
}

TEST_CASE("a store made before the records table existed opens, keeps its data and then stores records",
          "[queue][records]") {
  record_fixture f;
  auto a = f.s->add_peer("a");
  REQUIRE(a);
  const std::string payload = "kept across the upgrade";
  const queue::peer_id peers[] = {*a};
  REQUIRE_FALSE(f.s->enqueue_wait({queue::segment_in{"s1", payload, peers}}).ec);
  f.s.reset();
  test::drop_store_table(f.opt.data_dir, "records");

  f.open();
  REQUIRE(f.s->find_peer("a") == *a);
  CHECK_FALSE(f.get("soak").has_value());
  auto b = f.s->read_batch(*a, 10, 1 << 20);
  REQUIRE(b);
  REQUIRE(b->segments.size() == 1);
  CHECK(b->segments[0].payload == payload);
  REQUIRE_FALSE(f.s->put_record_wait("soak", "after the upgrade"));
  f.reopen();
  CHECK(f.get("soak") == std::optional<std::string>("after the upgrade"));
  auto acc = f.s->verify_accounting();
  REQUIRE(acc);
  CHECK(acc->clean);
}
