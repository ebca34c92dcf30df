#pragma once
// The received-id (dedupe) table for ids of the form "<origin>:<seq>": a
// table of ranges of sequence numbers per origin instead of one entry per id.
// A sender assigns its sequence numbers in order, so what a receiver takes
// from one origin is one range that grows at its end: each request costs one
// lookup and one write, whatever its number of segments, and the table holds
// a range per origin and per gap (a segment the sender never delivered:
// evicted, dead-lettered, or still queued behind a retry), not a row per id.
//
//   key    u8 origin length ‖ origin ‖ be64 first seq
//   value  be64 last seq ‖ be64 ms when an id of the range was last received
//
// A range is forgotten dedupe_window after its last received id (see
// expire_ranges); until then every id in it is a duplicate. An id is thus
// remembered at least dedupe_window, and longer when later ids of the same
// unbroken run keep arriving. Ids that do not parse as canonical
// "<origin>:<decimal seq>" stay in the per-id table (store.cpp).

#include "queue/detail/lmdb.hpp"
#include "util/bytes.hpp"

#include <charconv>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::queue::detail {

struct origin_seq {
  std::string_view origin;
  std::uint64_t seq = 0;
};

// "<origin>:<seq>" with a 1..255-byte origin (up to the last ':') and a
// decimal seq without leading zeros that fits 64 bits; nullopt otherwise
// ("a:007" is not "a:7", so such an id keeps its own row).
inline std::optional<origin_seq> parse_origin_seq(std::string_view id) {
  auto colon = id.rfind(':');
  if (colon == std::string_view::npos || colon == 0 || colon > 255) return std::nullopt;
  auto digits = id.substr(colon + 1);
  if (digits.empty() || digits.size() > 20 || (digits.size() > 1 && digits[0] == '0')) return std::nullopt;
  std::uint64_t v = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
  if (ec != std::errc{} || end != digits.data() + digits.size()) return std::nullopt;
  return origin_seq{id.substr(0, colon), v};
}

inline std::string range_key(std::string_view origin, std::uint64_t first) {
  std::string k;
  k.reserve(1 + origin.size() + 8);
  k.push_back(static_cast<char>(origin.size()));
  k.append(origin);
  char b[8];
  util::put_be64(reinterpret_cast<unsigned char*>(b), first);
  k.append(b, 8);
  return k;
}

struct id_range {
  std::uint64_t first = 0, last = 0;
  std::int64_t seen_ms = 0;
};

// The range stored under key k with value v, if k belongs to `origin` and
// both are well formed.
inline std::optional<id_range> decode_range(std::string_view origin, std::string_view k, std::string_view v) {
  if (k.size() != 1 + origin.size() + 8 || static_cast<unsigned char>(k[0]) != origin.size() ||
      k.substr(1, origin.size()) != origin || v.size() != 16)
    return std::nullopt;
  auto u = [](std::string_view s) { return util::get_be64(reinterpret_cast<const unsigned char*>(s.data())); };
  return id_range{u(k.substr(1 + origin.size())), u(v.substr(0, 8)), static_cast<std::int64_t>(u(v.substr(8)))};
}

inline std::string encode_range_value(std::uint64_t last, std::int64_t seen_ms) {
  std::string v(16, '\0');
  util::put_be64(reinterpret_cast<unsigned char*>(v.data()), last);
  util::put_be64(reinterpret_cast<unsigned char*>(v.data() + 8), static_cast<std::uint64_t>(seen_ms));
  return v;
}

// Lookups and inserts for one request inside the writer's transaction. A
// lookup that finds no range around seq remembers the gap it found, so the
// next ids of the same origin inside that gap need no further lookup (the
// usual request: one origin, consecutive seqs past its range's end).
class id_range_table {
public:
  id_range_table(txn& w, MDB_dbi dbi, std::int64_t now_ms, std::int64_t window_ms)
      : w_(w), dbi_(dbi), now_(now_ms), window_(window_ms) {}

  bool live(const id_range& r) const { return r.seen_ms + window_ >= now_; }

  // seen: the id is in a range received within the window.
  int contains(const origin_seq& id, bool& seen) {
    seen = false;
    if (cache_ != cached::none && id.origin == cache_origin_) {
      if (cache_ == cached::gap && (!gap_has_lo_ || id.seq > lo_) && id.seq < hi_) return MDB_SUCCESS;
      if (cache_ == cached::live && id.seq >= lo_ && id.seq <= hi_) {
        seen = true;
        return MDB_SUCCESS;
      }
    }
    cache_ = cached::none;
    int rc = open_cursor();
    if (rc) return rc;
    std::string key = range_key(id.origin, id.seq);
    std::string_view k = key, v;
    // The gap is (lo, hi), both exclusive; with no range above, hi is the
    // largest seq, which is then looked up whenever it comes.
    std::uint64_t hi = std::numeric_limits<std::uint64_t>::max();
    rc = cur_.get(k, v, MDB_SET_RANGE);
    if (rc == MDB_SUCCESS) {
      if (auto n = decode_range(id.origin, k, v)) {
        if (n->first == id.seq) return found(id.origin, *n, seen);
        hi = n->first;
      }
    }
    rc = step_back(rc, k, v);
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return rc;
    bool has_lo = false;
    std::uint64_t lo = 0;
    if (rc == MDB_SUCCESS) {
      if (auto p = decode_range(id.origin, k, v)) {
        if (p->last >= id.seq) return found(id.origin, *p, seen);
        has_lo = true;
        lo = p->last;
      }
    }
    cache_ = cached::gap;
    cache_origin_.assign(id.origin);
    gap_has_lo_ = has_lo;
    lo_ = lo;
    hi_ = hi;
    return MDB_SUCCESS;
  }

  // Records [first, last] of `origin` as received now. None of them is in a
  // live range (the caller looked each up). Live ranges that touch it are
  // merged into it; forgotten (expired) ranges that overlap it are deleted.
  int insert(std::string_view origin, std::uint64_t first, std::uint64_t last) {
    cache_ = cached::none;
    int rc = open_cursor();
    if (rc) return rc;
    id_range merged{first, last, now_};
    std::vector<std::string> dead;
    std::string key = range_key(origin, first);
    std::string_view k = key, v;
    // Ranges that start at or after `first` and touch [first, last + 1].
    rc = cur_.get(k, v, MDB_SET_RANGE);
    while (rc == MDB_SUCCESS) {
      auto n = decode_range(origin, k, v);
      if (!n) break;
      bool overlaps = n->first <= merged.last;
      bool adjacent = !overlaps && n->first - 1 == merged.last;
      if (!overlaps && !adjacent) break;
      if (live(*n)) {
        merged.last = std::max(merged.last, n->last);
        dead.emplace_back(k);
      } else if (overlaps) {
        dead.emplace_back(k);
      } else {
        break; // a forgotten neighbour stays apart
      }
      rc = cur_.get(k, v, MDB_NEXT);
    }
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return rc;
    // The range before `first`, if it reaches first - 1 or beyond.
    if (first > 0) {
      k = key;
      rc = step_back(cur_.get(k, v, MDB_SET_RANGE), k, v);
      if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return rc;
      if (rc == MDB_SUCCESS) {
        auto p = decode_range(origin, k, v);
        if (p && p->last >= first - 1) {
          if (live(*p)) {
            merged.first = p->first;
            merged.last = std::max(merged.last, p->last);
            dead.emplace_back(k);
          } else if (p->last >= first) {
            dead.emplace_back(k);
          }
        }
      }
    }
    for (auto& d : dead) {
      rc = w_.del(dbi_, d);
      if (rc && rc != MDB_NOTFOUND) return rc;
    }
    return w_.put(dbi_, range_key(origin, merged.first), encode_range_value(merged.last, merged.seen_ms));
  }

private:
  int open_cursor() { return cur_.get() ? MDB_SUCCESS : cursor::open(w_, dbi_, cur_); }
  // After an MDB_SET_RANGE that returned rc: moves to the entry before the
  // key it was given (the last entry when none was at or after it).
  int step_back(int rc, std::string_view& k, std::string_view& v) {
    if (rc == MDB_SUCCESS) return cur_.get(k, v, MDB_PREV);
    if (rc == MDB_NOTFOUND) return cur_.get(k, v, MDB_LAST);
    return rc;
  }
  // The id is inside range r: seen while r is live; a live r answers the
  // next ids inside it without a lookup.
  int found(std::string_view origin, const id_range& r, bool& seen) {
    seen = live(r);
    if (seen) {
      cache_ = cached::live;
      cache_origin_.assign(origin);
      lo_ = r.first;
      hi_ = r.last;
    }
    return MDB_SUCCESS;
  }

  txn& w_;
  MDB_dbi dbi_;
  std::int64_t now_, window_;
  cursor cur_;
  // What the last lookup learnt about cache_origin_: a gap (lo_, hi_) with
  // no range in it (no lower bound unless gap_has_lo_), or a live range
  // [lo_, hi_].
  enum class cached { none, gap, live } cache_ = cached::none;
  bool gap_has_lo_ = false;
  std::string cache_origin_;
  std::uint64_t lo_ = 0, hi_ = 0;
};

// Deletes every range whose last id arrived more than window_ms before
// now_ms; adds the number of ids they held to `expired`.
inline int expire_ranges(txn& w, MDB_dbi dbi, std::int64_t now_ms, std::int64_t window_ms, std::uint64_t& expired) {
  cursor c;
  int rc = cursor::open(w, dbi, c);
  if (rc) return rc;
  std::string_view k, v;
  rc = c.get(k, v, MDB_FIRST);
  while (rc == MDB_SUCCESS) {
    const std::size_t olen = k.empty() ? 0 : static_cast<unsigned char>(k[0]);
    if (k.size() != 1 + olen + 8) return MDB_CORRUPTED;
    auto r = decode_range(k.substr(1, olen), k, v);
    if (!r || r->last < r->first) return MDB_CORRUPTED;
    if (r->seen_ms + window_ms >= now_ms) {
      rc = c.get(k, v, MDB_NEXT);
      continue;
    }
    rc = c.del();
    if (rc) return rc;
    std::uint64_t n = r->last - r->first;
    expired += n == std::numeric_limits<std::uint64_t>::max() ? n : n + 1;
    rc = c.current_after_del(k, v);
  }
  return rc == MDB_NOTFOUND ? MDB_SUCCESS : rc;
}

} // namespace edgerelay::queue::detail
