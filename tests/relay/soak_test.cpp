#include "relay/soak.hpp"
#include "util/units.hpp"

#include <catch2/catch.hpp>

#include <random>
#include <set>

using namespace edgerelay;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace {

// A hand-driven clock that claims to be the wall clock: the seam that lets a
// test drive 1,440 rounds instantly and still see Gate D pass.
class wall_test_clock final : public util::clock {
public:
  std::chrono::steady_clock::time_point steady_now() override { return m_.steady_now(); }
  std::chrono::system_clock::time_point system_now() override { return m_.system_now(); }
  const char* kind() const override { return "wall"; }
  void advance(std::chrono::nanoseconds d) { m_.advance(d); }

private:
  util::manual_clock m_;
};

relay::soak_options opts(std::uint32_t segments = 3, std::chrono::milliseconds interval = 60s) {
  relay::soak_options o;
  o.node_id = "edge-1";
  o.interval = interval;
  o.segments = segments;
  o.size = 256;
  return o;
}

std::unique_ptr<relay::soak_tracker> make(util::clock& c, relay::soak_options o = opts()) {
  auto t = relay::soak_tracker::create(std::move(o), c);
  REQUIRE(t.has_value());
  return std::move(*t);
}

const std::vector<std::string> two_peers{"hub", "sink"};
const std::vector<std::string> one_peer{"hub"};

// Acknowledges every canary, then lets the interval pass and closes the round.
template <class Clock>
relay::round_outcome clean_round(relay::soak_tracker& t, Clock& c, const std::vector<std::string>& peers = one_peer) {
  for (const auto& o : t.begin_round(peers))
    REQUIRE(t.on_delivered(o.peer, o.payload) == relay::canary_event::delivered);
  c.advance(60s);
  auto r = t.end_round_if_due();
  REQUIRE(r.has_value());
  return *r;
}

template <class Clock>
relay::round_outcome late_round(relay::soak_tracker& t, Clock& c) {
  auto out = t.begin_round(one_peer);
  for (std::size_t i = 1; i < out.size(); ++i)
    t.on_delivered(out[i].peer, out[i].payload);
  c.advance(60s);
  auto r = t.end_round_if_due();
  REQUIRE(r.has_value());
  return *r;
}

relay::canary_info sample_info(std::uint32_t size = 200) {
  relay::canary_info i;
  i.origin = "edge-1";
  i.peer = "hub";
  i.epoch = 1'700'000'000'000;
  i.seq = 42;
  i.lane_seq = 7;
  i.round = 3;
  i.index = 2;
  i.sent_at_ms = 1'700'000'123'456;
  i.size = size;
  return i;
}

} // namespace

// ---------------------------------------------------------------- payload

TEST_CASE("a canary payload parses back to the fields it was made from", "[soak]") {
  const auto info = sample_info();
  const auto p = relay::make_canary_payload(info);
  REQUIRE(p.size() == 200);
  auto back = relay::parse_canary_payload(p);
  REQUIRE(back.has_value());
  CHECK(*back == info);
  CHECK(p.substr(0, 4) == "ERCN");
}

TEST_CASE("a canary_size below the header gives the smallest valid payload", "[soak]") {
  auto info = sample_info(10);
  const auto p = relay::make_canary_payload(info);
  CHECK(p.size() == relay::canary_min_size("edge-1", "hub"));
  CHECK(p.size() == 56 + 6 + 3 + 8);
  auto back = relay::parse_canary_payload(p);
  REQUIRE(back.has_value());
  CHECK(back->size == p.size());
}

TEST_CASE("padding differs between canaries and is checked byte by byte", "[soak]") {
  auto a = sample_info(300), b = sample_info(300);
  b.seq = 43;
  const auto pa = relay::make_canary_payload(a), pb = relay::make_canary_payload(b);
  const auto header = relay::canary_min_size("edge-1", "hub");
  CHECK(pa.substr(header) != pb.substr(header));
  auto bad = pa;
  bad.back() = static_cast<char>(bad.back() ^ 0x01);
  CHECK_FALSE(relay::parse_canary_payload(bad).has_value());
}

TEST_CASE("every single-bit flip, truncation and extension of a canary is refused", "[soak]") {
  const auto p = relay::make_canary_payload(sample_info(120));
  REQUIRE(relay::parse_canary_payload(p).has_value());
  for (std::size_t i = 0; i < p.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      auto q = p;
      q[i] = static_cast<char>(q[i] ^ (1 << bit));
      INFO("byte " << i << " bit " << bit);
      CHECK_FALSE(relay::parse_canary_payload(q).has_value());
    }
  for (std::size_t n = 0; n < p.size(); ++n)
    CHECK_FALSE(relay::parse_canary_payload(std::string_view(p).substr(0, n)).has_value());
  CHECK_FALSE(relay::parse_canary_payload(p + "x").has_value());
}

TEST_CASE("random garbage never parses as a canary", "[soak]") {
  std::mt19937_64 rng(20261123);
  std::uniform_int_distribution<int> len(0, 400), byte(0, 255);
  const auto good = relay::make_canary_payload(sample_info(150));
  int parsed = 0;
  for (int round = 0; round < 3000; ++round) {
    std::string g(static_cast<std::size_t>(len(rng)), '\0');
    for (auto& ch : g)
      ch = static_cast<char>(byte(rng));
    if (round % 3 == 1 && g.size() >= 8) g.replace(0, 8, good.substr(0, 8)); // a valid-looking start
    if (round % 3 == 2) {                                                    // a real header, random tail
      g = good.substr(0, std::min<std::size_t>(good.size(), g.size())) + g;
      g.resize(good.size());
      if (g == good) continue;
    }
    if (relay::parse_canary_payload(g)) ++parsed;
  }
  CHECK(parsed == 0);
}

// ---------------------------------------------------------------- rounds

TEST_CASE("rounds whose canaries are all acknowledged in time are clean", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  auto out = t->begin_round(two_peers);
  REQUIRE(out.size() == 6);
  std::set<std::uint64_t> seqs;
  for (const auto& o : out) {
    seqs.insert(o.info.seq);
    CHECK(o.payload.size() == 256);
    CHECK(o.info.round == 1);
  }
  CHECK(seqs.size() == 6);
  c.advance(250ms);
  for (const auto& o : out)
    CHECK(t->on_delivered(o.peer, o.payload) == relay::canary_event::delivered);
  CHECK_FALSE(t->end_round_if_due().has_value()); // the interval has not passed yet
  c.advance(60s);
  auto r = t->end_round_if_due();
  REQUIRE(r.has_value());
  CHECK(r->clean);
  CHECK(r->result == "clean");
  CHECK(clean_round(*t, c, two_peers).clean);
  const auto k = t->counters();
  CHECK(k.rounds == 2);
  CHECK(k.clean_rounds == 2);
  CHECK(k.segments_sent == 12);
  CHECK(k.segments_delivered == 12);
  CHECK(k.loss == 0);
  CHECK(k.clean_delivery_rate() == 1.0);
  CHECK(t->latency().max_ms == Approx(250.0));
}

TEST_CASE("a canary acknowledged after the interval makes its round unclean and still counts as delivered", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  auto out = t->begin_round(one_peer);
  for (std::size_t i = 1; i < out.size(); ++i)
    t->on_delivered("hub", out[i].payload);
  c.advance(60s + 1ms);
  auto r = t->end_round_if_due();
  REQUIRE(r.has_value());
  CHECK_FALSE(r->clean);
  CHECK(r->result == "late");
  CHECK_THAT(r->reason, Contains("1 of 3 canaries not acknowledged within 1m"));
  CHECK(t->on_delivered("hub", out[0].payload) == relay::canary_event::delivered_late);
  const auto k = t->counters();
  CHECK(k.rounds == 1);
  CHECK(k.clean_rounds == 0);
  CHECK(k.unclean_late == 1);
  CHECK(k.segments_delivered == 3);
  CHECK(k.delivered_late == 1);
  CHECK(k.loss == 0);
}

TEST_CASE("an acknowledgement after the deadline is late even before the round is closed", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  auto out = t->begin_round(one_peer);
  t->on_delivered("hub", out[0].payload);
  t->on_delivered("hub", out[1].payload);
  c.advance(61s);
  CHECK(t->on_delivered("hub", out[2].payload) == relay::canary_event::delivered_late);
  auto r = t->end_round_if_due();
  REQUIRE(r.has_value());
  CHECK(r->result == "late");
}

TEST_CASE("a dead-lettered canary makes its round unclean and counts in loss until it is delivered", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  auto out = t->begin_round(one_peer);
  t->on_delivered("hub", out[0].payload);
  t->on_delivered("hub", out[1].payload);
  CHECK(t->on_failed("hub", out[2].payload, "max_retry") == relay::canary_event::lost);
  CHECK(t->on_failed("hub", out[2].info, "max_retry") == relay::canary_event::duplicate); // counted once
  c.advance(60s);
  auto r = t->end_round_if_due();
  REQUIRE(r.has_value());
  CHECK(r->result == "failed");
  CHECK_THAT(r->reason, Contains("1 dead-lettered or evicted (first: max_retry)"));
  auto k = t->counters();
  CHECK(k.loss == 1);
  CHECK(k.unclean_failed == 1);
  CHECK(t->evidence_record().loss == 1);
  CHECK_FALSE(telemetry::gate_d(t->evidence_record()).loss_ok);
  CHECK(t->status_json().at("loss").as_uint64() == 1);

  // A dead-letter retry that reaches the peer takes the canary out of loss.
  CHECK(t->on_delivered("hub", out[2].payload) == relay::canary_event::recovered);
  k = t->counters();
  CHECK(k.loss == 0);
  CHECK(k.recovered == 1);
  CHECK(k.segments_delivered == 3);
  CHECK(k.clean_rounds == 0);
}

TEST_CASE("an evicted canary reported by its info counts in loss", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  auto out = t->begin_round(two_peers);
  CHECK(t->on_failed("sink", out[4].info, "evicted") == relay::canary_event::lost);
  CHECK(t->counters().loss == 1);
}

TEST_CASE("a canary acknowledged twice counts as a duplicate and makes its round unclean", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  auto out = t->begin_round(one_peer);
  for (const auto& o : out)
    t->on_delivered(o.peer, o.payload);
  CHECK(t->on_delivered("hub", out[1].payload) == relay::canary_event::duplicate);
  c.advance(60s);
  auto r = t->end_round_if_due();
  REQUIRE(r.has_value());
  CHECK(r->result == "duplicate");
  const auto k = t->counters();
  CHECK(k.duplicates == 1);
  CHECK(k.segments_delivered == 3);
  CHECK(t->evidence_record().duplicates == 1);
}

TEST_CASE("reports that are not this soak's canaries are ignored", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  auto out = t->begin_round(two_peers);
  CHECK(t->on_delivered("sink", out[0].payload) == relay::canary_event::foreign); // sent to hub
  CHECK(t->on_delivered("hub", "not a canary") == relay::canary_event::malformed);
  auto other = out[0].info;
  other.origin = "edge-2";
  CHECK(t->on_delivered("hub", other) == relay::canary_event::foreign);
  auto future = out[0].info;
  future.seq = 1000;
  CHECK(t->on_delivered("hub", future) == relay::canary_event::unknown);
  auto old_epoch = out[0].info;
  old_epoch.epoch -= 1;
  CHECK(t->on_delivered("hub", old_epoch) == relay::canary_event::unknown);
  const auto k = t->counters();
  CHECK(k.segments_delivered == 0);
  CHECK(k.ignored == 5);
}

TEST_CASE("beginning a round closes the one still open, and no peers means no round", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  auto first = t->begin_round(one_peer);
  CHECK(t->round_deadline().has_value());
  c.advance(30s);
  auto second = t->begin_round(one_peer);
  REQUIRE(t->last_round().has_value());
  CHECK(t->last_round()->round == 1);
  CHECK(t->last_round()->result == "late");
  CHECK(second.front().info.round == 2);
  CHECK(second.front().info.seq == first.back().info.seq + 1);
  CHECK(second.front().info.lane_seq == first.back().info.lane_seq + 1);
  c.advance(60s);
  CHECK(t->begin_round({}).empty());
  CHECK(t->counters().rounds == 2);
  CHECK_FALSE(t->round_deadline().has_value());
}

TEST_CASE("latency percentiles come from known acknowledgement delays", "[soak]") {
  util::manual_clock c;
  auto t = make(c, opts(100, 10min));
  auto out = t->begin_round(one_peer);
  REQUIRE(out.size() == 100);
  for (auto& o : out) {
    c.advance(1ms); // canary i (0-based) is acknowledged (i + 1) ms after the round began
    REQUIRE(t->on_delivered(o.peer, o.payload) == relay::canary_event::delivered);
  }
  const auto l = t->latency();
  // Nearest rank, reported as the bucket's top: never below the true value, at most 1/32 above.
  CHECK(l.p50_ms >= 50.0);
  CHECK(l.p50_ms <= 50.0 * (1 + 1.0 / 32));
  CHECK(l.p90_ms >= 90.0);
  CHECK(l.p90_ms <= 90.0 * (1 + 1.0 / 32));
  CHECK(l.p99_ms >= 99.0);
  CHECK(l.p99_ms <= 99.0 * (1 + 1.0 / 32));
  CHECK(l.max_ms == Approx(100.0));
}

TEST_CASE("the latency histogram keeps each value within 1/32 of its bucket top in fixed memory", "[soak]") {
  relay::latency_histogram h;
  std::mt19937_64 rng(7);
  for (int i = 0; i < 5000; ++i) {
    const std::uint64_t v = rng() >> (rng() % 64);
    const auto b = relay::latency_histogram::bucket_of(v);
    REQUIRE(b < relay::latency_histogram::bucket_count);
    const auto hi = relay::latency_histogram::bucket_high(b);
    REQUIRE(hi >= v);
    REQUIRE(static_cast<double>(hi - v) <= static_cast<double>(v) / 32.0 + 1.0);
  }
  CHECK(relay::latency_histogram::bucket_of(~std::uint64_t{0}) == relay::latency_histogram::bucket_count - 1);
  CHECK(relay::latency_histogram::bucket_high(relay::latency_histogram::bucket_count - 1) == ~std::uint64_t{0});
  CHECK(h.percentile_us(0.5) == 0);
  h.record(7);
  CHECK(h.percentile_us(0.99) == 7);
}

TEST_CASE("queue depth and RSS observations keep their maximum and the first RSS", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  t->observe_queue_depth(5);
  t->observe_queue_depth(40);
  t->observe_queue_depth(7);
  t->observe_rss(1000);
  t->observe_rss(3000);
  t->observe_rss(2000);
  const auto k = t->counters();
  CHECK(k.max_queue_depth == 40);
  CHECK(k.rss_start_bytes == 1000);
  CHECK(k.rss_max_bytes == 3000);
  CHECK(relay::current_rss_bytes() > 0);
}

// ---------------------------------------------------------------- persistence

TEST_CASE("a restored soak keeps its counters, counts the restart and closes the open round as interrupted", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  clean_round(*t, c);
  late_round(*t, c);
  t->observe_queue_depth(12);
  t->observe_rss(4096);
  auto open = t->begin_round(one_peer);
  t->on_delivered("hub", open[0].payload);
  const auto before = t->counters();
  const auto lat_before = t->latency();
  const auto blob = t->serialize();
  t.reset();

  c.advance(5s);
  auto r = relay::soak_tracker::restore(blob, opts(), c);
  REQUIRE(r.has_value());
  auto& u = **r;
  auto k = u.counters();
  CHECK(k.restarts == 1);
  CHECK(k.rounds == 3);
  CHECK(k.clean_rounds == 1);
  CHECK(k.unclean_late == 1);
  CHECK(k.unclean_interrupted == 1);
  CHECK(k.segments_sent == before.segments_sent);
  CHECK(k.segments_delivered == before.segments_delivered);
  CHECK(k.max_queue_depth == 12);
  CHECK(k.rss_start_bytes == 4096);
  CHECK(u.latency() == lat_before);
  REQUIRE(u.last_round().has_value());
  CHECK(u.last_round()->round == 3);
  CHECK(u.last_round()->result == "interrupted");
  CHECK_THAT(u.last_round()->reason, Contains("interrupted by restart"));
  CHECK_FALSE(u.round_deadline().has_value());

  // Canaries sent before the restart are still recognised; the sequence continues.
  CHECK(u.on_delivered("hub", open[1].payload) == relay::canary_event::delivered_late);
  CHECK(u.on_delivered("hub", open[0].payload) == relay::canary_event::duplicate);
  auto next = u.begin_round(one_peer);
  CHECK(next.front().info.seq == open.back().info.seq + 1);
  CHECK(next.front().info.lane_seq == open.back().info.lane_seq + 1);
  CHECK(next.front().info.round == 4);
  CHECK(next.front().info.epoch == open.front().info.epoch);

  // A second restart counts again.
  auto again = relay::soak_tracker::restore(u.serialize(), opts(), c);
  REQUIRE(again.has_value());
  CHECK((*again)->counters().restarts == 2);
  CHECK((*again)->counters().rounds == 4);
}

TEST_CASE("restore refuses a newer format, another node, and damaged blobs with a clear message", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  clean_round(*t, c);
  const auto blob = t->serialize();

  auto newer = blob;
  newer[5] = static_cast<char>(relay::soak_tracker::format_version + 1);
  auto r = relay::soak_tracker::restore(newer, opts(), c);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == make_error_code(errc::store_foreign));
  CHECK_THAT(r.error().message, Contains("newer edgerelay"));

  auto other = opts();
  other.node_id = "edge-2";
  r = relay::soak_tracker::restore(blob, other, c);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == make_error_code(errc::store_foreign));
  CHECK_THAT(r.error().message, Contains("edge-1"));

  r = relay::soak_tracker::restore("garbage", opts(), c);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == make_error_code(errc::malformed));

  for (std::size_t n = 0; n < blob.size(); ++n)
    CHECK_FALSE(relay::soak_tracker::restore(blob.substr(0, n), opts(), c).has_value());
  for (std::size_t i = 6; i < blob.size(); ++i) {
    auto d = blob;
    d[i] = static_cast<char>(d[i] ^ 0x10);
    CHECK_FALSE(relay::soak_tracker::restore(d, opts(), c).has_value());
  }
}

TEST_CASE("a soak that ran on a manual clock stays manual after a restart on the wall clock", "[soak]") {
  util::manual_clock mc;
  auto t = make(mc);
  CHECK(t->clock_kind() == "manual");
  wall_test_clock wc;
  auto r = relay::soak_tracker::restore(t->serialize(), opts(), wc);
  REQUIRE(r.has_value());
  CHECK((*r)->clock_kind() == "manual");
  CHECK((*r)->evidence_record().clock == "manual");
}

// ---------------------------------------------------------------- Gate D and the record

TEST_CASE("Gate D passes after 1440 clean wall-clock rounds and not after 1439", "[soak]") {
  wall_test_clock c;
  auto t = make(c, opts(1));
  for (int i = 0; i < 1439; ++i)
    REQUIRE(clean_round(*t, c).clean);
  auto g = telemetry::gate_d(t->evidence_record());
  CHECK_FALSE(g.rounds_ok);
  CHECK(g.rate_ok);
  CHECK(g.loss_ok);
  CHECK_FALSE(g.overall);
  CHECK_FALSE(t->soak_record().at("gate_d").at("overall").as_bool());

  REQUIRE(clean_round(*t, c).clean);
  g = telemetry::gate_d(t->evidence_record());
  CHECK(g.rounds_ok);
  CHECK(g.overall);
  const auto rec = t->soak_record();
  CHECK(rec.at("rounds").as_uint64() == 1440);
  CHECK(rec.at("clock").as_string() == "wall");
  CHECK(rec.at("gate_d").at("overall").as_bool());
}

TEST_CASE("Gate D never passes on the manual clock", "[soak]") {
  util::manual_clock c;
  auto t = make(c, opts(1));
  for (int i = 0; i < 1440; ++i)
    REQUIRE(clean_round(*t, c).clean);
  const auto g = telemetry::gate_d(t->evidence_record());
  CHECK(g.rounds_ok);
  CHECK(g.rate_ok);
  CHECK(g.loss_ok);
  CHECK_FALSE(g.clock_ok);
  CHECK_FALSE(g.overall);
}

TEST_CASE("Gate D fails at a clean delivery rate of 0.989 and passes at 0.990", "[soak]") {
  wall_test_clock c;
  auto t = make(c, opts(1));
  for (int i = 0; i < 1978; ++i)
    clean_round(*t, c);
  for (int i = 0; i < 22; ++i)
    late_round(*t, c); // 1 segment per round: none acknowledged
  auto rec = t->evidence_record();
  REQUIRE(rec.rounds == 2000);
  CHECK(rec.clean_delivery_rate() == Approx(0.989));
  auto g = telemetry::gate_d(rec);
  CHECK(g.rounds_ok);
  CHECK_FALSE(g.rate_ok);
  CHECK_FALSE(g.overall);
  for (int i = 0; i < 200; ++i) // 2178 / 2200 = 0.990
    clean_round(*t, c);
  g = telemetry::gate_d(t->evidence_record());
  CHECK(g.rate_ok);
  CHECK(g.overall);
}

TEST_CASE("the soak record carries exactly the DESIGN fields plus its timestamps and interval", "[soak]") {
  util::manual_clock c;
  auto t = make(c);
  clean_round(*t, c);
  const auto rec = t->soak_record();
  std::set<std::string> keys;
  for (const auto& kv : rec)
    keys.insert(std::string(kv.key()));
  const std::set<std::string> want{
      "rounds",     "clean_rounds", "clean_delivery_rate", "segments_sent",   "segments_delivered", "loss",
      "duplicates", "latency_ms",   "max_queue_depth",     "rss_start_bytes", "rss_max_bytes",      "restarts",
      "clock",      "gate_d",       "started_at",          "updated_at",      "interval_s"};
  CHECK(keys == want);
  CHECK(rec.at("interval_s").as_double() == 60.0);
  CHECK(rec.at("started_at").as_string() == util::format_utc(c.system_now() - 60s));
  CHECK(rec.at("updated_at").as_string() == util::format_utc(c.system_now()));
  // The evidence model accepts the record as RL-SOAK-01's metrics.soak.
  auto parsed = telemetry::parse_soak(telemetry::to_json(t->evidence_record()), "RL-SOAK-01.json", "metrics.soak");
  REQUIRE(parsed.has_value());
  CHECK(parsed->rounds == 1);
  const auto st = t->status_json();
  CHECK(st.size() == 4);
  CHECK(st.at("clean_delivery_rate").as_double() == 1.0);
}

// ---------------------------------------------------------------- verifier

namespace {
std::string lane_canary(std::uint64_t lane_seq, std::string peer = "hub", std::uint64_t epoch = 1000) {
  relay::canary_info i = sample_info(128);
  i.peer = std::move(peer);
  i.epoch = epoch;
  i.seq = lane_seq * 2 + (i.peer == "hub" ? 0 : 1);
  i.lane_seq = lane_seq;
  return relay::make_canary_payload(i);
}
} // namespace

TEST_CASE("the verifier counts gaps, fills them when late canaries arrive, and counts duplicates", "[soak]") {
  util::manual_clock c;
  relay::canary_verifier v(c);
  CHECK(v.on_received("edge-1", lane_canary(1)) == relay::verify_event::in_order);
  CHECK(v.on_received("edge-1", lane_canary(2)) == relay::verify_event::in_order);
  CHECK(v.on_received("edge-1", lane_canary(5)) == relay::verify_event::gap);
  auto k = v.counts();
  CHECK(k.gaps == 1);
  CHECK(k.missing == 2);
  CHECK(v.on_received("edge-1", lane_canary(3)) == relay::verify_event::reordered);
  CHECK(v.counts().missing == 1);
  CHECK(v.on_received("edge-1", lane_canary(3)) == relay::verify_event::duplicate);
  CHECK(v.on_received("edge-1", lane_canary(5)) == relay::verify_event::duplicate);
  k = v.counts();
  CHECK(k.duplicates == 2);
  CHECK(k.missing == 1);
  CHECK(k.received == 6);
  const auto s = v.summary_json();
  CHECK(s.at("missing").as_uint64() == 1);
  const auto& lane = s.at("lanes").as_array().at(0).as_object();
  CHECK(lane.at("origin").as_string() == "edge-1");
  CHECK(lane.at("last_lane_seq").as_uint64() == 5);
}

TEST_CASE("the verifier keeps one sequence per origin and peer, and restarts a lane on a new epoch", "[soak]") {
  util::manual_clock c;
  relay::canary_verifier v(c);
  CHECK(v.on_received("edge-1", lane_canary(1, "hub")) == relay::verify_event::in_order);
  CHECK(v.on_received("edge-1", lane_canary(1, "sink")) == relay::verify_event::in_order);
  CHECK(v.on_received("edge-1", lane_canary(2, "hub")) == relay::verify_event::in_order);
  CHECK(v.on_received("edge-1", lane_canary(2, "sink")) == relay::verify_event::in_order);
  CHECK(v.on_received("edge-1", lane_canary(1, "hub", 2000)) == relay::verify_event::in_order); // fresh soak
  CHECK(v.on_received("edge-1", lane_canary(3, "hub", 1000)) == relay::verify_event::stale);
  const auto k = v.counts();
  CHECK(k.gaps == 0);
  CHECK(k.epochs == 1);
  CHECK(k.stale == 1);
}

TEST_CASE("the verifier counts corrupt padding, garbage and a mismatched origin as corrupt", "[soak]") {
  util::manual_clock c;
  relay::canary_verifier v(c);
  auto p = lane_canary(1);
  p[p.size() - 3] = static_cast<char>(p[p.size() - 3] ^ 0x40);
  CHECK(v.on_received("edge-1", p) == relay::verify_event::corrupt);
  CHECK(v.on_received("edge-1", "hello") == relay::verify_event::corrupt);
  CHECK(v.on_received("edge-9", lane_canary(1)) == relay::verify_event::corrupt);
  CHECK(v.on_received("", lane_canary(1)) == relay::verify_event::in_order);
  const auto k = v.counts();
  CHECK(k.corrupt == 3);
  CHECK(k.received == 4);
}

TEST_CASE("the verifier's memory per lane is bounded: very old sequences are stale", "[soak]") {
  util::manual_clock c;
  relay::canary_verifier v(c, {64, 1});
  CHECK(v.on_received("edge-1", lane_canary(1)) == relay::verify_event::in_order);
  CHECK(v.on_received("edge-1", lane_canary(200)) == relay::verify_event::gap);
  CHECK(v.on_received("edge-1", lane_canary(100)) == relay::verify_event::stale);
  CHECK(v.on_received("edge-1", lane_canary(150)) == relay::verify_event::reordered);
  CHECK(v.on_received("edge-1", lane_canary(1, "sink")) == relay::verify_event::untracked); // max_lanes = 1
  const auto k = v.counts();
  CHECK(k.missing == 197);
  CHECK(k.untracked == 1);
}
