#include "relay/soak.hpp"

#include "util/bytes.hpp"
#include "util/checksum.hpp"
#include "util/text.hpp"
#include "util/units.hpp"

#include <boost/assert.hpp>
#include <boost/json/array.hpp>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>
#include <unistd.h>

namespace edgerelay::relay {

namespace json = boost::json;
using std::chrono::steady_clock;

// ---------------------------------------------------------------- payload

namespace {

constexpr char canary_magic[4] = {'E', 'R', 'C', 'N'};
constexpr std::uint8_t canary_version = 1;

// splitmix64: the padding generator, seeded by the canary's seq.
std::uint64_t splitmix_next(std::uint64_t& state) noexcept {
  std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::uint64_t padding_seed(std::uint64_t seq) noexcept { return seq ^ 0x43414E4152593031ull; } // "CANARY01"

// Writes n padding bytes for `seq` to out (out may alias nothing else).
void fill_padding(char* out, std::size_t n, std::uint64_t seq) noexcept {
  std::uint64_t state = padding_seed(seq);
  std::size_t i = 0;
  while (i < n) {
    std::uint64_t v = splitmix_next(state);
    for (int b = 0; b < 8 && i < n; ++b, ++i) {
      out[i] = static_cast<char>(static_cast<unsigned char>(v & 0xFF));
      v >>= 8;
    }
  }
}

bool padding_ok(std::string_view pad, std::uint64_t seq) noexcept {
  std::uint64_t state = padding_seed(seq);
  std::size_t i = 0;
  while (i < pad.size()) {
    std::uint64_t v = splitmix_next(state);
    for (int b = 0; b < 8 && i < pad.size(); ++b, ++i) {
      if (static_cast<unsigned char>(pad[i]) != static_cast<unsigned char>(v & 0xFF)) return false;
      v >>= 8;
    }
  }
  return true;
}

bool valid_name(std::string_view s) noexcept { return !s.empty() && s.size() <= 255; }

} // namespace

std::size_t canary_min_size(std::string_view origin, std::string_view peer) noexcept {
  return canary_fixed_header_bytes + origin.size() + peer.size() + canary_checksum_bytes;
}

std::string make_canary_payload(const canary_info& info) {
  BOOST_ASSERT(valid_name(info.origin) && valid_name(info.peer));
  const std::size_t header = canary_fixed_header_bytes + info.origin.size() + info.peer.size();
  const std::size_t total = std::max<std::size_t>(info.size, header + canary_checksum_bytes);
  std::string out;
  out.reserve(total);
  util::writer w(out);
  w.bytes(std::string_view(canary_magic, 4));
  w.u8(canary_version);
  w.u8(static_cast<std::uint8_t>(info.origin.size()));
  w.u8(static_cast<std::uint8_t>(info.peer.size()));
  w.u8(0);
  w.u64(info.epoch);
  w.u64(info.seq);
  w.u64(info.lane_seq);
  w.u64(info.round);
  w.u32(info.index);
  w.u32(static_cast<std::uint32_t>(total));
  w.u64(static_cast<std::uint64_t>(info.sent_at_ms));
  w.bytes(info.origin);
  w.bytes(info.peer);
  w.u64(util::checksum(out));
  const std::size_t pad = total - out.size();
  out.resize(total);
  fill_padding(out.data() + (total - pad), pad, info.seq);
  return out;
}

std::optional<canary_info> parse_canary_payload(std::string_view payload) noexcept {
  try {
    if (payload.size() < canary_min_size("o", "p")) return std::nullopt;
    if (payload.size() > std::numeric_limits<std::uint32_t>::max()) return std::nullopt;
    util::reader r(payload);
    if (r.bytes(4) != std::string_view(canary_magic, 4)) return std::nullopt;
    if (r.u8() != canary_version) return std::nullopt;
    const std::size_t olen = r.u8(), plen = r.u8();
    if (r.u8() != 0 || olen == 0 || plen == 0) return std::nullopt;
    canary_info info;
    info.epoch = r.u64();
    info.seq = r.u64();
    info.lane_seq = r.u64();
    info.round = r.u64();
    info.index = r.u32();
    info.size = r.u32();
    info.sent_at_ms = static_cast<std::int64_t>(r.u64());
    const auto origin = r.bytes(olen);
    const auto peer = r.bytes(plen);
    const std::size_t header = canary_fixed_header_bytes + olen + plen;
    const auto sum = r.u64();
    if (!r.ok()) return std::nullopt;
    if (info.size != payload.size()) return std::nullopt;
    if (info.seq == 0 || info.lane_seq == 0 || info.round == 0) return std::nullopt;
    if (sum != util::checksum(payload.substr(0, header))) return std::nullopt;
    if (!padding_ok(r.rest(), info.seq)) return std::nullopt;
    info.origin.assign(origin);
    info.peer.assign(peer);
    return info;
  } catch (...) { // std::bad_alloc from the two name copies: nothing else throws
    return std::nullopt;
  }
}

// ---------------------------------------------------------------- latency

std::size_t latency_histogram::bucket_of(std::uint64_t us) noexcept {
  if (us < sub_count) return static_cast<std::size_t>(us);
  const unsigned e = 63u - static_cast<unsigned>(std::countl_zero(us)); // >= sub_bits
  const std::uint64_t sub = (us >> (e - sub_bits)) - sub_count;         // 0 .. sub_count-1
  return sub_count + (e - sub_bits) * sub_count + static_cast<std::size_t>(sub);
}

std::uint64_t latency_histogram::bucket_high(std::size_t bucket) noexcept {
  if (bucket < sub_count) return bucket;
  const std::size_t k = bucket - sub_count;
  const unsigned shift = static_cast<unsigned>(k / sub_count);
  const std::uint64_t sub = k % sub_count;
  const std::uint64_t low = (sub_count + sub) << shift;
  return low + ((std::uint64_t{1} << shift) - 1);
}

void latency_histogram::record(std::uint64_t us) noexcept {
  ++buckets_[bucket_of(us)];
  ++count_;
  max_ = std::max(max_, us);
}

std::uint64_t latency_histogram::percentile_us(double q) const noexcept {
  if (count_ == 0) return 0;
  q = std::clamp(q, 0.0, 1.0);
  auto rank = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_)));
  rank = std::clamp<std::uint64_t>(rank, 1, count_);
  std::uint64_t seen = 0;
  for (std::size_t i = 0; i < bucket_count; ++i) {
    seen += buckets_[i];
    if (seen >= rank) return std::min(bucket_high(i), max_);
  }
  return max_;
}

std::vector<std::pair<std::uint32_t, std::uint64_t>> latency_histogram::nonzero() const {
  std::vector<std::pair<std::uint32_t, std::uint64_t>> out;
  for (std::size_t i = 0; i < bucket_count; ++i)
    if (buckets_[i] != 0) out.emplace_back(static_cast<std::uint32_t>(i), buckets_[i]);
  return out;
}

bool latency_histogram::restore(const std::vector<std::pair<std::uint32_t, std::uint64_t>>& buckets,
                                std::uint64_t max_us) {
  std::array<std::uint64_t, bucket_count> b{};
  std::uint64_t n = 0;
  for (const auto& [i, c] : buckets) {
    if (i >= bucket_count || c == 0 || b[i] != 0) return false;
    if (bucket_of(max_us) < i) return false; // a value above the recorded max
    b[i] = c;
    n += c;
  }
  if (n == 0 ? max_us != 0 : b[bucket_of(max_us)] == 0) return false; // max must lie in a recorded bucket
  buckets_ = b;
  count_ = n;
  max_ = n == 0 ? 0 : max_us;
  return true;
}

// ---------------------------------------------------------------- sender side

const char* to_string(canary_event e) noexcept {
  switch (e) {
  case canary_event::delivered: return "delivered";
  case canary_event::delivered_late: return "delivered_late";
  case canary_event::recovered: return "recovered";
  case canary_event::duplicate: return "duplicate";
  case canary_event::lost: return "lost";
  case canary_event::foreign: return "foreign";
  case canary_event::unknown: return "unknown";
  case canary_event::malformed: return "malformed";
  }
  return "unknown";
}

double soak_counters::clean_delivery_rate() const noexcept {
  return rounds == 0 ? 0.0 : static_cast<double>(clean_rounds) / static_cast<double>(rounds);
}

namespace {

enum class fate : std::uint8_t { pending = 0, delivered = 1, failed = 2 };

struct window_entry {
  std::uint64_t round = 0;
  std::int64_t sent_ms = 0;
  std::uint32_t lane = 0;
  fate state = fate::pending;
  std::optional<steady_clock::time_point> sent_steady; // absent after a restore
};

struct lane_seq_state {
  std::string peer;
  std::uint64_t next = 1;
};

struct open_round {
  std::uint64_t number = 0;
  steady_clock::time_point deadline{};
  std::int64_t started_ms = 0;
  std::int64_t deadline_ms = 0;
  std::uint32_t expected = 0, in_time = 0, failed = 0, duplicates = 0, late = 0;
  std::string first_failure;
};

constexpr char blob_magic[4] = {'E', 'R', 'S', 'K'};

// The counters in their persisted order (format 1). Append only.
constexpr std::uint64_t soak_counters::*persisted_counters[] = {
    &soak_counters::rounds,
    &soak_counters::clean_rounds,
    &soak_counters::unclean_interrupted,
    &soak_counters::unclean_failed,
    &soak_counters::unclean_duplicate,
    &soak_counters::unclean_late,
    &soak_counters::segments_sent,
    &soak_counters::segments_delivered,
    &soak_counters::delivered_late,
    &soak_counters::duplicates,
    &soak_counters::loss,
    &soak_counters::failed,
    &soak_counters::recovered,
    &soak_counters::ignored,
    &soak_counters::max_queue_depth,
    &soak_counters::rss_start_bytes,
    &soak_counters::rss_max_bytes,
    &soak_counters::restarts,
};

void put_str8(util::writer& w, std::string_view s) {
  w.u8(static_cast<std::uint8_t>(s.size()));
  w.bytes(s);
}
void put_str16(util::writer& w, std::string_view s) {
  s = s.substr(0, 0xFFFF);
  w.u16(static_cast<std::uint16_t>(s.size()));
  w.bytes(s);
}
std::string get_str8(util::reader& r) { return std::string(r.bytes(r.u8())); }
std::string get_str16(util::reader& r) { return std::string(r.bytes(r.u16())); }

std::string format_ms(std::chrono::milliseconds d) { return util::format_duration(d); }

error make_err(errc e, std::string message) { return error{make_error_code(e), std::move(message)}; }

} // namespace

struct soak_tracker::impl {
  impl(soak_options o, util::clock& clk) : clock(clk), opt(std::move(o)) {}

  mutable std::mutex mu;
  util::clock& clock;
  soak_options opt;
  std::string clock_kind;
  std::int64_t epoch_ms = 0; // started_at
  std::int64_t updated_ms = 0;
  std::uint64_t next_round = 1;
  bool rss_seen = false;
  soak_counters c;
  latency_histogram hist;
  std::vector<lane_seq_state> lanes;
  std::optional<open_round> open;
  std::optional<round_outcome> last;
  std::map<std::uint64_t, window_entry> window;

  void touch() { updated_ms = util::to_unix_ms(clock.system_now()); }

  std::uint32_t lane_of(const std::string& peer) {
    for (std::size_t i = 0; i < lanes.size(); ++i)
      if (lanes[i].peer == peer) return static_cast<std::uint32_t>(i);
    lanes.push_back({peer, 1});
    return static_cast<std::uint32_t>(lanes.size() - 1);
  }

  round_outcome close_round(bool interrupted) {
    BOOST_ASSERT(open);
    const auto& o = *open;
    round_outcome out;
    out.round = o.number;
    ++c.rounds;
    const std::uint32_t missed = o.expected - std::min(o.in_time, o.expected);
    out.clean = !interrupted && missed == 0 && o.failed == 0 && o.duplicates == 0;
    if (out.clean) {
      ++c.clean_rounds;
      out.result = "clean";
    } else {
      if (interrupted) {
        out.result = "interrupted";
        ++c.unclean_interrupted;
      } else if (o.failed != 0) {
        out.result = "failed";
        ++c.unclean_failed;
      } else if (o.duplicates != 0) {
        out.result = "duplicate";
        ++c.unclean_duplicate;
      } else {
        out.result = "late";
        ++c.unclean_late;
      }
      std::string r = "round " + std::to_string(o.number) + ": ";
      if (interrupted) r += "interrupted by restart; ";
      r += std::to_string(missed) + " of " + std::to_string(o.expected) + " canaries not acknowledged within " +
           format_ms(opt.interval);
      if (o.failed != 0)
        r += ", " + std::to_string(o.failed) + " dead-lettered or evicted (first: " + o.first_failure + ")";
      if (o.duplicates != 0) r += ", " + std::to_string(o.duplicates) + " acknowledged twice";
      if (o.late != 0) r += ", " + std::to_string(o.late) + " acknowledged late";
      out.reason = std::move(r);
    }
    open.reset();
    last = out;
    touch();
    return out;
  }

  // Common checks of a report; the entry when the canary is ours and remembered.
  canary_event classify(std::string_view peer, const canary_info& info) const {
    if (info.origin != opt.node_id || info.peer != peer) return canary_event::foreign;
    if (info.epoch != static_cast<std::uint64_t>(epoch_ms) || info.seq == 0 || info.seq >= c.next_seq)
      return canary_event::unknown;
    return canary_event::delivered;
  }

  void record_latency(const window_entry* e, std::int64_t sent_ms, steady_clock::time_point now_steady,
                      std::int64_t now_ms) {
    std::int64_t us;
    if (e && e->sent_steady)
      us = std::chrono::duration_cast<std::chrono::microseconds>(now_steady - *e->sent_steady).count();
    else
      us = (now_ms - sent_ms) * 1000;
    hist.record(us < 0 ? 0 : static_cast<std::uint64_t>(us));
  }

  canary_event delivered(std::string_view peer, const canary_info& info) {
    auto ev = classify(peer, info);
    if (ev != canary_event::delivered) {
      ++c.ignored;
      return ev;
    }
    const auto now_steady = clock.steady_now();
    const auto now_ms = util::to_unix_ms(clock.system_now());
    touch();
    auto it = window.find(info.seq);
    if (it == window.end()) { // issued, but the window forgot it: a delivery we cannot place in a round
      ++c.segments_delivered;
      ++c.delivered_late;
      record_latency(nullptr, info.sent_at_ms, now_steady, now_ms);
      return canary_event::delivered_late;
    }
    auto& e = it->second;
    const bool in_open = open && open->number == e.round;
    switch (e.state) {
    case fate::delivered:
      ++c.duplicates;
      if (in_open) ++open->duplicates;
      return canary_event::duplicate;
    case fate::failed:
      e.state = fate::delivered;
      ++c.segments_delivered;
      ++c.recovered;
      --c.loss;
      record_latency(&e, e.sent_ms, now_steady, now_ms);
      return canary_event::recovered;
    case fate::pending: break;
    }
    e.state = fate::delivered;
    ++c.segments_delivered;
    record_latency(&e, e.sent_ms, now_steady, now_ms);
    if (in_open && now_steady <= open->deadline) {
      ++open->in_time;
      return canary_event::delivered;
    }
    if (in_open) ++open->late;
    ++c.delivered_late;
    return canary_event::delivered_late;
  }

  canary_event failed(std::string_view peer, const canary_info& info, std::string_view reason) {
    auto ev = classify(peer, info);
    if (ev != canary_event::delivered) {
      ++c.ignored;
      return ev;
    }
    touch();
    auto it = window.find(info.seq);
    if (it != window.end()) {
      auto& e = it->second;
      if (e.state != fate::pending) {
        ++c.ignored;
        return canary_event::duplicate;
      }
      e.state = fate::failed;
      if (open && open->number == e.round && open->failed++ == 0)
        open->first_failure = std::string(reason.substr(0, 200));
    }
    ++c.failed;
    ++c.loss;
    return canary_event::lost;
  }

  telemetry::soak_record evidence() const {
    telemetry::soak_record s;
    s.rounds = c.rounds;
    s.clean_rounds = c.clean_rounds;
    s.segments_sent = c.segments_sent;
    s.segments_delivered = c.segments_delivered;
    s.loss = static_cast<std::int64_t>(c.loss);
    s.duplicates = c.duplicates;
    s.latency = percentiles();
    s.max_queue_depth = c.max_queue_depth;
    s.rss_start_bytes = c.rss_start_bytes;
    s.rss_max_bytes = c.rss_max_bytes;
    s.restarts = c.restarts;
    s.clock = clock_kind;
    return s;
  }

  telemetry::latency_percentiles percentiles() const {
    auto ms = [](std::uint64_t us) { return static_cast<double>(us) / 1000.0; };
    return {ms(hist.percentile_us(0.50)), ms(hist.percentile_us(0.90)), ms(hist.percentile_us(0.99)),
            ms(hist.max_us())};
  }

  std::string serialize() const {
    std::string out;
    util::writer w(out);
    w.bytes(std::string_view(blob_magic, 4));
    w.u16(format_version);
    put_str8(w, opt.node_id);
    put_str8(w, clock_kind);
    w.u64(static_cast<std::uint64_t>(epoch_ms));
    w.u64(static_cast<std::uint64_t>(updated_ms));
    w.u64(c.next_seq);
    w.u64(next_round);
    w.u8(rss_seen ? 1 : 0);
    w.u32(static_cast<std::uint32_t>(std::size(persisted_counters)));
    for (auto m : persisted_counters)
      w.u64(c.*m);
    const auto buckets = hist.nonzero();
    w.u64(hist.max_us());
    w.u32(static_cast<std::uint32_t>(buckets.size()));
    for (const auto& [i, n] : buckets) {
      w.u32(i);
      w.u64(n);
    }
    w.u32(static_cast<std::uint32_t>(lanes.size()));
    for (const auto& l : lanes) {
      put_str8(w, l.peer);
      w.u64(l.next);
    }
    w.u8(open ? 1 : 0);
    if (open) {
      w.u64(open->number);
      w.u64(static_cast<std::uint64_t>(open->started_ms));
      w.u64(static_cast<std::uint64_t>(open->deadline_ms));
      w.u32(open->expected);
      w.u32(open->in_time);
      w.u32(open->failed);
      w.u32(open->duplicates);
      w.u32(open->late);
      put_str16(w, open->first_failure);
    }
    w.u8(last ? 1 : 0);
    if (last) {
      w.u64(last->round);
      w.u8(last->clean ? 1 : 0);
      put_str16(w, last->result);
      put_str16(w, last->reason);
    }
    w.u32(static_cast<std::uint32_t>(window.size()));
    for (const auto& [seq, e] : window) {
      w.u64(seq);
      w.u64(e.round);
      w.u64(static_cast<std::uint64_t>(e.sent_ms));
      w.u32(e.lane);
      w.u8(static_cast<std::uint8_t>(e.state));
    }
    w.u64(util::checksum(out));
    return out;
  }

  // Reads a format-1 body (after magic and version, checksum already verified).
  std::optional<std::string> read(util::reader& r) {
    const auto node_id = get_str8(r);
    if (r.ok() && node_id != opt.node_id) return "the soak record belongs to node " + util::quote(node_id);
    const auto kind = get_str8(r);
    epoch_ms = static_cast<std::int64_t>(r.u64());
    updated_ms = static_cast<std::int64_t>(r.u64());
    c.next_seq = r.u64();
    next_round = r.u64();
    const auto rss = r.u8();
    rss_seen = rss == 1;
    const auto ncounters = r.u32();
    if (r.ok() && ncounters != std::size(persisted_counters)) return std::string("wrong number of counters");
    for (auto m : persisted_counters)
      c.*m = r.u64();
    const auto max_us = r.u64();
    const auto nb = r.u32();
    if (!r.ok() || nb > latency_histogram::bucket_count) return std::string("truncated or bad histogram");
    std::vector<std::pair<std::uint32_t, std::uint64_t>> buckets;
    for (std::uint32_t i = 0; i < nb && r.ok(); ++i) {
      const auto idx = r.u32();
      buckets.emplace_back(idx, r.u64());
    }
    if (!r.ok() || !hist.restore(buckets, max_us)) return std::string("bad latency histogram");
    const auto nl = r.u32();
    for (std::uint32_t i = 0; i < nl && r.ok(); ++i) {
      lane_seq_state l;
      l.peer = get_str8(r);
      l.next = r.u64();
      if (r.ok() && (l.peer.empty() || l.next == 0)) return std::string("bad lane");
      lanes.push_back(std::move(l));
    }
    if (r.u8() == 1) {
      open_round o;
      o.number = r.u64();
      o.started_ms = static_cast<std::int64_t>(r.u64());
      o.deadline_ms = static_cast<std::int64_t>(r.u64());
      o.expected = r.u32();
      o.in_time = r.u32();
      o.failed = r.u32();
      o.duplicates = r.u32();
      o.late = r.u32();
      o.first_failure = get_str16(r);
      o.deadline = clock.steady_now();
      open = std::move(o);
    }
    if (r.u8() == 1) {
      round_outcome l;
      l.round = r.u64();
      l.clean = r.u8() == 1;
      l.result = get_str16(r);
      l.reason = get_str16(r);
      last = std::move(l);
    }
    const auto nw = r.u32();
    std::uint64_t prev = 0;
    for (std::uint32_t i = 0; i < nw && r.ok(); ++i) {
      const auto seq = r.u64();
      window_entry e;
      e.round = r.u64();
      e.sent_ms = static_cast<std::int64_t>(r.u64());
      e.lane = r.u32();
      const auto st = r.u8();
      if (!r.ok()) break;
      if (seq <= prev || seq >= c.next_seq || e.lane >= lanes.size() || st > 2) return std::string("bad canary entry");
      e.state = static_cast<fate>(st);
      prev = seq;
      window.emplace_hint(window.end(), seq, e);
    }
    if (!r.ok()) return std::string("truncated");
    if (r.remaining() != 8) return std::string("trailing bytes");
    if (kind != "wall" && kind != "manual") return "unknown clock " + util::quote(kind);
    if (c.next_seq == 0 || next_round == 0 || c.clean_rounds > c.rounds) return std::string("inconsistent counters");
    clock_kind = kind;
    return std::nullopt;
  }
};

soak_tracker::soak_tracker(std::unique_ptr<impl> p) : impl_(std::move(p)) {}
soak_tracker::~soak_tracker() = default;

namespace {
std::optional<error> check_options(const soak_options& o) {
  if (!valid_name(o.node_id)) return make_err(errc::invalid_argument, "soak: node id must be 1..255 bytes");
  if (o.interval <= std::chrono::milliseconds::zero())
    return make_err(errc::invalid_argument, "soak: canary_interval must be positive");
  if (o.segments == 0) return make_err(errc::invalid_argument, "soak: canary_segments must be at least 1");
  if (o.size > std::numeric_limits<std::uint32_t>::max())
    return make_err(errc::invalid_argument, "soak: canary_size must be below 4 GiB");
  if (o.window == 0) return make_err(errc::invalid_argument, "soak: window must be at least 1");
  return std::nullopt;
}
} // namespace

boost::system::result<std::unique_ptr<soak_tracker>, error> soak_tracker::create(soak_options options,
                                                                                 util::clock& clock) {
  if (auto e = check_options(options)) return *e;
  auto p = std::make_unique<impl>(std::move(options), clock);
  p->clock_kind = clock.kind();
  p->epoch_ms = util::to_unix_ms(clock.system_now());
  p->updated_ms = p->epoch_ms;
  return std::unique_ptr<soak_tracker>(new soak_tracker(std::move(p)));
}

boost::system::result<std::unique_ptr<soak_tracker>, error>
soak_tracker::restore(std::string_view blob, soak_options options, util::clock& clock) {
  if (auto e = check_options(options)) return *e;
  util::reader r(blob);
  if (r.bytes(4) != std::string_view(blob_magic, 4))
    return make_err(errc::malformed, "soak record: not a soak record (bad magic)");
  const auto version = r.u16();
  if (!r.ok()) return make_err(errc::malformed, "soak record: truncated");
  if (version > format_version)
    return make_err(errc::store_foreign, "soak record: format version " + std::to_string(version) +
                                             " was written by a newer edgerelay; this one reads up to version " +
                                             std::to_string(format_version));
  if (version == 0) return make_err(errc::malformed, "soak record: format version 0 is not valid");
  if (blob.size() < 6 + 8 || util::get_be64(reinterpret_cast<const unsigned char*>(blob.data() + blob.size() - 8)) !=
                                 util::checksum(blob.substr(0, blob.size() - 8)))
    return make_err(errc::malformed, "soak record: checksum mismatch (damaged or truncated)");
  auto p = std::make_unique<impl>(std::move(options), clock);
  if (auto problem = p->read(r)) {
    const auto code = problem->starts_with("the soak record belongs") ? errc::store_foreign : errc::malformed;
    return make_err(code, "soak record: " + *problem);
  }
  if (std::string_view(clock.kind()) != "wall") p->clock_kind = clock.kind();
  ++p->c.restarts;
  if (p->open) p->close_round(true);
  p->touch();
  return std::unique_ptr<soak_tracker>(new soak_tracker(std::move(p)));
}

std::vector<outgoing_canary> soak_tracker::begin_round(std::span<const std::string> peers) {
  std::lock_guard lock(impl_->mu);
  auto& m = *impl_;
  if (m.open) m.close_round(false);
  std::vector<std::string> names;
  std::set<std::string_view> seen;
  for (const auto& p : peers)
    if (valid_name(p) && seen.insert(p).second) names.push_back(p);
  if (names.empty()) return {};
  open_round o;
  o.number = m.next_round++;
  const auto now_steady = m.clock.steady_now();
  o.deadline = now_steady + m.opt.interval;
  o.started_ms = util::to_unix_ms(m.clock.system_now());
  o.deadline_ms = o.started_ms + m.opt.interval.count();
  std::vector<outgoing_canary> out;
  out.reserve(names.size() * m.opt.segments);
  for (const auto& peer : names) {
    const auto lane = m.lane_of(peer);
    for (std::uint32_t i = 0; i < m.opt.segments; ++i) {
      canary_info info;
      info.origin = m.opt.node_id;
      info.peer = peer;
      info.epoch = static_cast<std::uint64_t>(m.epoch_ms);
      info.seq = m.c.next_seq++;
      info.lane_seq = m.lanes[lane].next++;
      info.round = o.number;
      info.index = i;
      info.sent_at_ms = o.started_ms;
      info.size = static_cast<std::uint32_t>(std::max<std::uint64_t>(m.opt.size, canary_min_size(m.opt.node_id, peer)));
      window_entry e;
      e.round = o.number;
      e.sent_ms = o.started_ms;
      e.lane = lane;
      e.sent_steady = now_steady;
      m.window.emplace_hint(m.window.end(), info.seq, e);
      auto payload = make_canary_payload(info);
      out.push_back({peer, std::move(payload), std::move(info)});
      ++m.c.segments_sent;
      ++o.expected;
    }
  }
  // The open round's canaries are never forgotten, whatever the window.
  while (m.window.size() > m.opt.window && m.window.begin()->second.round != o.number)
    m.window.erase(m.window.begin());
  m.open = std::move(o);
  m.touch();
  return out;
}

std::optional<round_outcome> soak_tracker::end_round_if_due() {
  std::lock_guard lock(impl_->mu);
  if (!impl_->open || impl_->clock.steady_now() < impl_->open->deadline) return std::nullopt;
  return impl_->close_round(false);
}

std::optional<steady_clock::time_point> soak_tracker::round_deadline() const {
  std::lock_guard lock(impl_->mu);
  if (!impl_->open) return std::nullopt;
  return impl_->open->deadline;
}

canary_event soak_tracker::on_delivered(std::string_view peer, std::string_view payload) {
  auto info = parse_canary_payload(payload);
  std::lock_guard lock(impl_->mu);
  if (!info) {
    ++impl_->c.ignored;
    return canary_event::malformed;
  }
  return impl_->delivered(peer, *info);
}

canary_event soak_tracker::on_delivered(std::string_view peer, const canary_info& info) {
  std::lock_guard lock(impl_->mu);
  return impl_->delivered(peer, info);
}

canary_event soak_tracker::on_failed(std::string_view peer, std::string_view payload, std::string_view reason) {
  auto info = parse_canary_payload(payload);
  std::lock_guard lock(impl_->mu);
  if (!info) {
    ++impl_->c.ignored;
    return canary_event::malformed;
  }
  return impl_->failed(peer, *info, reason);
}

canary_event soak_tracker::on_failed(std::string_view peer, const canary_info& info, std::string_view reason) {
  std::lock_guard lock(impl_->mu);
  return impl_->failed(peer, info, reason);
}

void soak_tracker::observe_queue_depth(std::uint64_t segments) {
  std::lock_guard lock(impl_->mu);
  if (segments > impl_->c.max_queue_depth) {
    impl_->c.max_queue_depth = segments;
    impl_->touch();
  }
}

void soak_tracker::observe_rss(std::uint64_t bytes) {
  std::lock_guard lock(impl_->mu);
  auto& m = *impl_;
  if (!m.rss_seen) {
    m.rss_seen = true;
    m.c.rss_start_bytes = bytes;
  }
  m.c.rss_max_bytes = std::max(m.c.rss_max_bytes, bytes);
  m.touch();
}

soak_counters soak_tracker::counters() const {
  std::lock_guard lock(impl_->mu);
  return impl_->c;
}

std::optional<round_outcome> soak_tracker::last_round() const {
  std::lock_guard lock(impl_->mu);
  return impl_->last;
}

telemetry::latency_percentiles soak_tracker::latency() const {
  std::lock_guard lock(impl_->mu);
  return impl_->percentiles();
}

telemetry::soak_record soak_tracker::evidence_record() const {
  std::lock_guard lock(impl_->mu);
  return impl_->evidence();
}

json::object soak_tracker::soak_record() const {
  std::lock_guard lock(impl_->mu);
  auto o = telemetry::to_json(impl_->evidence());
  o["started_at"] = util::format_utc(util::from_unix_ms(impl_->epoch_ms));
  o["updated_at"] = util::format_utc(util::from_unix_ms(impl_->updated_ms));
  o["interval_s"] = static_cast<double>(impl_->opt.interval.count()) / 1000.0;
  return o;
}

json::object soak_tracker::status_json() const {
  std::lock_guard lock(impl_->mu);
  const auto& c = impl_->c;
  return json::object{{"rounds", c.rounds},
                      {"clean_rounds", c.clean_rounds},
                      {"clean_delivery_rate", c.clean_delivery_rate()},
                      {"loss", c.loss}};
}

std::string soak_tracker::serialize() const {
  std::lock_guard lock(impl_->mu);
  return impl_->serialize();
}

std::string soak_tracker::clock_kind() const {
  std::lock_guard lock(impl_->mu);
  return impl_->clock_kind;
}

std::uint64_t current_rss_bytes() noexcept {
  std::FILE* f = std::fopen("/proc/self/statm", "re");
  if (!f) return 0;
  unsigned long long size = 0, resident = 0;
  const int n = std::fscanf(f, "%llu %llu", &size, &resident);
  std::fclose(f);
  if (n != 2) return 0;
  const long page = ::sysconf(_SC_PAGESIZE);
  return page > 0 ? static_cast<std::uint64_t>(resident) * static_cast<std::uint64_t>(page) : 0;
}

// ---------------------------------------------------------------- receiver side

const char* to_string(verify_event e) noexcept {
  switch (e) {
  case verify_event::in_order: return "in_order";
  case verify_event::gap: return "gap";
  case verify_event::reordered: return "reordered";
  case verify_event::duplicate: return "duplicate";
  case verify_event::stale: return "stale";
  case verify_event::corrupt: return "corrupt";
  case verify_event::untracked: return "untracked";
  }
  return "unknown";
}

namespace {
struct lane_state {
  std::uint64_t epoch = 0;
  std::uint64_t base = 0;          // the first lane_seq seen in this epoch
  std::uint64_t highest = 0;       // the highest lane_seq seen
  std::vector<std::uint64_t> seen; // bit (s % bits) for s in (highest - bits, highest]
  std::uint64_t received = 0, gaps = 0, missing = 0, reordered = 0, duplicates = 0, stale = 0;
  std::int64_t last_received_ms = 0;

  std::size_t bits() const noexcept { return seen.size() * 64; }
  bool test(std::uint64_t s) const noexcept { return (seen[(s % bits()) / 64] >> (s % 64)) & 1u; }
  void set(std::uint64_t s) noexcept { seen[(s % bits()) / 64] |= std::uint64_t{1} << (s % 64); }
  void clear(std::uint64_t s) noexcept { seen[(s % bits()) / 64] &= ~(std::uint64_t{1} << (s % 64)); }
};
} // namespace

struct canary_verifier::impl {
  impl(util::clock& c, verifier_options o) : clock(c), opt(o) {}
  mutable std::mutex mu;
  util::clock& clock;
  verifier_options opt;
  totals t;
  std::map<std::pair<std::string, std::string>, lane_state> lanes;

  verify_event receive(std::string_view origin, std::string_view payload) {
    ++t.received;
    auto info = parse_canary_payload(payload);
    if (!info || (!origin.empty() && origin != info->origin)) {
      ++t.corrupt;
      return verify_event::corrupt;
    }
    auto key = std::make_pair(info->origin, info->peer);
    auto it = lanes.find(key);
    if (it == lanes.end()) {
      if (lanes.size() >= opt.max_lanes) {
        ++t.untracked;
        return verify_event::untracked;
      }
      it = lanes.emplace(std::move(key), lane_state{}).first;
      it->second.seen.assign((std::max<std::size_t>(opt.window, 1) + 63) / 64, 0);
    }
    auto& l = it->second;
    ++l.received;
    l.last_received_ms = util::to_unix_ms(clock.system_now());
    const auto s = info->lane_seq;
    if (l.base == 0 || info->epoch > l.epoch) {
      if (l.base != 0) ++t.epochs;
      l.epoch = info->epoch;
      l.base = l.highest = s;
      std::fill(l.seen.begin(), l.seen.end(), 0);
      l.set(s);
      return verify_event::in_order;
    }
    if (info->epoch < l.epoch || s < l.base) {
      ++l.stale;
      ++t.stale;
      return verify_event::stale;
    }
    if (s > l.highest) {
      const auto d = s - l.highest;
      if (d >= l.bits())
        std::fill(l.seen.begin(), l.seen.end(), 0);
      else
        for (auto x = l.highest + 1; x <= s; ++x)
          l.clear(x);
      l.set(s);
      l.highest = s;
      if (d == 1) return verify_event::in_order;
      ++l.gaps;
      ++t.gaps;
      l.missing += d - 1;
      t.missing += d - 1;
      return verify_event::gap;
    }
    if (l.highest - s >= l.bits()) {
      ++l.stale;
      ++t.stale;
      return verify_event::stale;
    }
    if (l.test(s)) {
      ++l.duplicates;
      ++t.duplicates;
      return verify_event::duplicate;
    }
    l.set(s);
    ++l.reordered;
    ++t.reordered;
    if (l.missing > 0) --l.missing;
    if (t.missing > 0) --t.missing;
    return verify_event::reordered;
  }
};

canary_verifier::canary_verifier(util::clock& clock, verifier_options options)
    : impl_(std::make_unique<impl>(clock, options)) {}
canary_verifier::~canary_verifier() = default;

verify_event canary_verifier::on_received(std::string_view origin, std::string_view payload) {
  std::lock_guard lock(impl_->mu);
  return impl_->receive(origin, payload);
}

canary_verifier::totals canary_verifier::counts() const {
  std::lock_guard lock(impl_->mu);
  return impl_->t;
}

json::object canary_verifier::summary_json() const {
  std::lock_guard lock(impl_->mu);
  const auto& t = impl_->t;
  json::array lanes;
  for (const auto& [key, l] : impl_->lanes)
    lanes.push_back(json::object{{"origin", key.first},
                                 {"peer", key.second},
                                 {"epoch", l.epoch},
                                 {"received", l.received},
                                 {"last_lane_seq", l.highest},
                                 {"gaps", l.gaps},
                                 {"missing", l.missing},
                                 {"reordered", l.reordered},
                                 {"duplicates", l.duplicates},
                                 {"stale", l.stale},
                                 {"last_received_at", util::format_utc(util::from_unix_ms(l.last_received_ms))}});
  return json::object{{"received", t.received},   {"corrupt", t.corrupt},     {"gaps", t.gaps},
                      {"missing", t.missing},     {"reordered", t.reordered}, {"duplicates", t.duplicates},
                      {"stale", t.stale},         {"untracked", t.untracked}, {"epochs", t.epochs},
                      {"lanes", std::move(lanes)}};
}

} // namespace edgerelay::relay
