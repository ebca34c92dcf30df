#include "queue/store.hpp"

#include "queue/detail/id_ranges.hpp"
#include "queue/detail/lmdb.hpp"
#include "queue/detail/record.hpp"
#include "util/bytes.hpp"
#include "util/checksum.hpp"
#include "util/thread_name.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <thread>
#include <unistd.h>
#include <unordered_map>
#include <unordered_set>

namespace edgerelay {
void throw_exception_from_error(const error& e, const boost::source_location& loc) {
  boost::throw_exception(boost::system::system_error(e.code, e.message), loc);
}
} // namespace edgerelay

namespace edgerelay::queue {

using namespace std::chrono_literals;
using detail::cursor;
using detail::key64;
using detail::txn;
using sys_ec = boost::system::error_code;

bool valid_stream_name(std::string_view s) noexcept {
  if (s == "_canary") return true;
  if (s.empty() || s.size() > 64) return false;
  for (char c : s)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-')) return false;
  return s[0] != '_';
}

const char* to_string(overflow_policy p) noexcept {
  switch (p) {
  case overflow_policy::evict_lru: return "evict_lru";
  case overflow_policy::reject: return "reject";
  case overflow_policy::block: return "block";
  }
  return "?";
}
const char* to_string(sync_mode s) noexcept { return s == sync_mode::full ? "full" : "none"; }

namespace {

// 2: ids_by_time keys are i64 time ‖ u64 sequence with the id as the value
// (appended in key order); format 1 keyed them i64 time ‖ id with an empty
// value. A format 1 store is upgraded when it is opened: its old entries
// stay readable until they expire.
// 3: ids of the form "<origin>:<seq>" are remembered as ranges per origin in
// "id_ranges" (queue/detail/id_ranges.hpp) instead of a row each in "ids";
// a format 2 store's rows stay readable until they expire.
constexpr std::uint32_t format_version = 3;
constexpr std::string_view magic = "edgerelay-store";
constexpr std::size_t max_read_scan = 65536; // entries examined per read_batch at most
// Pages of the read-only map that a drain has touched stay resident (and
// count in RSS) until dropped; dropping them every so many bytes read keeps
// memory flat however large the backlog. The data stays in the page cache.
constexpr std::uint64_t trim_every_bytes = 16ull << 20;

sys_ec lmdb_ec(int rc) {
  switch (rc) {
  case MDB_MAP_FULL: return errc::store_full;
  case MDB_CORRUPTED:
  case MDB_PAGE_NOTFOUND:
  case MDB_INVALID: return errc::store_corrupt;
  case MDB_VERSION_MISMATCH: return errc::store_foreign;
  case ENOSPC: return sys_ec(ENOSPC, boost::system::system_category());
  case EFBIG: return sys_ec(EFBIG, boost::system::system_category());
  default: return errc::store_io;
  }
}

std::string describe(int rc) { return detail::lmdb_error(rc); }

struct counters_codec {
  static std::string encode(const peer_counters& c) {
    std::string s;
    util::writer w(s);
    for (auto v : {c.routed, c.delivered, c.queued, c.queued_bytes, c.deadletter, c.deadletter_bytes, c.evicted,
                   c.purged, c.attempts})
      w.u64(v);
    return s;
  }
  static peer_counters decode(std::string_view v) {
    util::reader r(v);
    peer_counters c;
    for (auto* p : {&c.routed, &c.delivered, &c.queued, &c.queued_bytes, &c.deadletter, &c.deadletter_bytes, &c.evicted,
                    &c.purged, &c.attempts})
      *p = r.u64();
    return c;
  }
};

// The `quota` table's value: i64 period start (Unix ms), u64 used bytes.
struct quota_codec {
  static std::string encode(std::int64_t period_start_ms, std::uint64_t used) {
    std::string s;
    util::writer w(s);
    w.u64(static_cast<std::uint64_t>(period_start_ms));
    w.u64(used);
    return s;
  }
  static std::optional<quota_record> decode(std::string_view v) {
    if (v.size() != 16) return std::nullopt;
    util::reader r(v);
    quota_record q;
    q.period_start_unix_ms = static_cast<std::int64_t>(r.u64());
    q.used_bytes = r.u64();
    return q;
  }
};

struct globals {
  std::uint64_t gseq = 1;  // next queue key
  std::uint64_t oseq = 1;  // next origin sequence
  std::uint64_t dlseq = 1; // next dead-letter key
  std::uint64_t evseq = 1; // next eviction journal key
  std::uint64_t accepted = 0, duplicates = 0, rejected = 0;
  std::uint64_t deadletter_bytes = 0, deadletter_segments = 0;
  std::string encode() const {
    std::string s;
    util::writer w(s);
    for (auto v : {gseq, oseq, dlseq, evseq, accepted, duplicates, rejected, deadletter_bytes, deadletter_segments})
      w.u64(v);
    return s;
  }
  static globals decode(std::string_view v) {
    globals g;
    util::reader r(v);
    for (auto* p : {&g.gseq, &g.oseq, &g.dlseq, &g.evseq, &g.accepted, &g.duplicates, &g.rejected, &g.deadletter_bytes,
                    &g.deadletter_segments})
      *p = r.u64();
    return g;
  }
};

std::size_t decimal_digits(std::uint64_t v) {
  std::size_t n = 1;
  while (v >= 10) {
    v /= 10;
    ++n;
  }
  return n;
}

std::string be32key(std::uint32_t v) {
  std::string s(4, '\0');
  util::put_be32(reinterpret_cast<unsigned char*>(s.data()), v);
  return s;
}

// Merges sorted `add` into sorted `v`.
void sorted_insert(std::vector<std::uint64_t>& v, std::vector<std::uint64_t> add) {
  if (add.empty()) return;
  std::sort(add.begin(), add.end());
  auto mid = v.size();
  v.insert(v.end(), add.begin(), add.end());
  if (mid && v[mid - 1] > v[mid]) std::inplace_merge(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(mid), v.end());
}
// Removes every element of `del` from sorted `v`.
void sorted_erase(std::vector<std::uint64_t>& v, std::vector<std::uint64_t> del) {
  if (del.empty() || v.empty()) return;
  std::sort(del.begin(), del.end());
  auto out = v.begin();
  auto d = del.begin();
  for (auto it = v.begin(); it != v.end(); ++it) {
    while (d != del.end() && *d < *it)
      ++d;
    if (d != del.end() && *d == *it) continue;
    *out++ = *it;
  }
  v.erase(out, v.end());
}

} // namespace

// Per-peer runtime state. `mu` guards cursor and leased; the writer thread
// owns dbi creation; counters are mirrored in impl::committed_.
struct peer_rt {
  peer_id id = 0;
  std::string name;
  MDB_dbi dbi = 0;
  std::mutex mu;
  std::uint64_t cursor = 0;             // every key below is leased or gone
  std::vector<std::uint64_t> leased;    // sorted; also holds keys pinned for eviction
  std::atomic<std::uint64_t> direct{0}; // delivered through its direct sink since open (committed)
};

struct request {
  enum class kind {
    enqueue,
    ack,
    nack,
    reject,
    dl_retry,
    dl_purge,
    maintenance,
    add_peer,
    quota_save,
    record_put,
    direct_recover
  } k;
  std::vector<segment_in> segs;
  enqueue_callback on_enqueue;
  peer_id peer = 0;
  std::vector<std::uint64_t> keys;
  std::string error;
  std::vector<rejected_item> rejects;
  done_callback on_done;
  deadletter_selector sel;
  std::function<void(result<std::uint64_t>)> on_count;
  std::function<void(result<maintenance_result>)> on_maint;
  std::string name;
  std::function<void(result<peer_id>)> on_peer;
  std::optional<std::chrono::steady_clock::time_point> deadline; // overflow = block
  std::int64_t quota_period_ms = 0;                              // quota_save
  std::uint64_t quota_used = 0;                                  // quota_save
  std::string record_key, record_value;                          // record_put
  std::vector<std::string> ids;                                  // direct_recover
  // outcome
  enqueue_result eres;
  sys_ec ec;
  std::uint64_t count = 0;
  maintenance_result mres;
  peer_id pid = 0;
  bool parked = false;
  bool shed = false; // failed for lack of map space in this group
  bool shed_retried = false;
  std::vector<std::uint64_t> unlease;  // keys whose lease ends when this commits
  bool keep_leases_on_failure = false; // ack: store::failed_ack_leases::keep
};

struct store::impl {
  store_options opt;
  // The retry policy in force: opt's at open, replaced by set_retry_policy().
  std::mutex retry_mu;
  std::uint32_t max_retry = 0;
  backoff_policy retry_backoff;
  util::clock* clk = nullptr;
  MDB_env* env = nullptr;
  detail::reader_pool readers; // read-only txns for reuse; ~impl() and grow_map() clear it
  int lock_fd = -1;
  MDB_dbi meta = 0, peers_db = 0, counters_db = 0, dl_db = 0, evj_db = 0, ids_db = 0, ids_t_db = 0, quota_db = 0,
          records_db = 0, id_ranges_db = 0;
  // "ids" has rows (writer thread only): ids that are not "<origin>:<seq>",
  // or rows a format 2 store left. While it is empty a ranged id is not
  // looked up there. As committed, and in the transaction in progress.
  bool ids_db_used = false, w_ids_db_used = false;
  std::vector<std::optional<detail::origin_seq>> parsed_ids; // apply_enqueue's scratch (writer thread)
  // apply_enqueue's scratch (writer thread): where each segment goes (an
  // index into txn_direct, plan_queue or plan_resolved), and which peers
  // this request has queued something for.
  static constexpr int plan_queue = -1, plan_resolved = -2;
  std::vector<int> direct_plan;
  std::vector<char> plan_queued;
  std::uint64_t map_size = 0, max_map = 0;
  // The received-id (dedupe) tables are bounded by dedupe_window, not by any
  // capacity, so the map may grow past max_map by what they take (measured
  // when the map is full; see grow_map).
  std::uint64_t dedupe_map_bytes = 0;
  void* map_base = nullptr; // LMDB's read-only mapping of data.mdb, for trim_map()
  std::size_t map_len = 0;

  mutable std::shared_mutex map_mu;            // shared by every read txn; exclusive to resize the map
  mutable std::shared_mutex peers_mu;          // guards peers / by_name growth
  std::vector<std::unique_ptr<peer_rt>> peers; // index = id - 1
  std::unordered_map<std::string, peer_id> by_name;

  mutable std::mutex stats_mu;          // guards committed, cglob, commits
  std::vector<peer_counters> committed; // index = id - 1
  globals cglob;
  std::uint64_t commits = 0, commits_direct_only = 0;
  std::atomic<std::uint64_t> refused_early{0}; // segments refused before reaching the writer
  std::atomic<std::uint64_t> read_since_trim{0};
  std::atomic<unsigned> fail_commits_for_test{0}; // store::fail_next_commits_for_test
  std::atomic<int> fail_commit_errno_for_test{EIO};
  std::atomic<bool> fail_only_acks_for_test{false};
  // When the writer last dropped the map's pages (writer thread).
  std::chrono::steady_clock::time_point writer_trimmed{};

  // A read-only transaction (from the pool) and a cursor on `dbi` in it.
  int read_cursor(MDB_dbi dbi, txn& t, cursor& c) {
    int rc = readers.begin(env, t);
    return rc ? rc : cursor::open(t, dbi, c);
  }

  // Drops this process's mappings of the map's pages (MADV_DONTNEED on a
  // read-only shared file mapping: later reads fault them back in from the
  // page cache). Caller holds map_mu shared so the map cannot move.
  void trim_map() {
    if (map_base) ::madvise(map_base, map_len, MADV_DONTNEED);
  }

  // Finds LMDB's mapping of data.mdb (mdb_env_info reports its address only
  // with MDB_FIXEDMAP): a value read from the map points into it, and
  // /proc/self/maps gives the mapping's bounds. Called when no transaction
  // is reading (at open, after a resize under map_mu exclusive).
  void locate_map() {
    map_base = nullptr;
    map_len = 0;
    txn t;
    if (readers.begin(env, t) != MDB_SUCCESS) return;
    std::string_view v;
    if (t.get(meta, "magic", v) != MDB_SUCCESS) return;
    auto addr = reinterpret_cast<std::uintptr_t>(v.data());
    FILE* f = std::fopen("/proc/self/maps", "r");
    if (!f) return;
    char line[512];
    while (std::fgets(line, sizeof line, f)) {
      unsigned long lo = 0, hi = 0;
      if (std::sscanf(line, "%lx-%lx", &lo, &hi) == 2 && addr >= lo && addr < hi) {
        map_base = reinterpret_cast<void*>(lo);
        map_len = hi - lo;
        break;
      }
    }
    std::fclose(f);
  }
  commit_observer observer;
  deadletter_observer dl_observer;
  // Dead-letterings of the transaction being built, (peer, reason) -> count;
  // reported to dl_observer after its commit.
  std::map<std::pair<peer_id, std::string>, std::uint64_t> dl_events;

  // The fate observer (set_fate_observer): replaced under fate_mu, taken once
  // per transaction by the writer.
  struct fate_watch {
    std::string stream;
    fate_observer obs;
  };
  std::mutex fate_mu;
  std::shared_ptr<const fate_watch> fate_w;
  std::shared_ptr<const fate_watch> txn_watch; // writer thread: the watch of the transaction in progress
  std::vector<fate_event> fates;               // writer thread: what this transaction decided

  // Notes the fate of the queue record `rec` of peer `p` when its stream is watched.
  void note_fate(peer_rt* p, std::string_view rec, segment_fate what, std::string_view reason) {
    if (!txn_watch) return;
    auto r = detail::decode_record(rec);
    if (!r || r->stream != txn_watch->stream) return;
    fates.push_back({p->id, p->name, what, std::string(r->id), std::string(r->payload), std::string(reason)});
  }

  std::mutex q_mu;
  std::condition_variable q_cv;
  std::vector<std::unique_ptr<request>> pending;
  std::vector<std::unique_ptr<request>> parked;
  bool stopping = false;
  // expire_waiting(): the enqueues waiting for room are ended now; cleared,
  // with expired_cv notified, once the writer has completed them.
  bool expire_requested = false;
  bool expiring = false; // from expire_waiting() on: every enqueue that would wait ends at once
  std::condition_variable expired_cv;
  std::thread writer;
  std::mt19937_64 rng{std::random_device{}()};

  // The last ids_by_time key (time, sequence): every new key is greater, so
  // it is appended (writer thread only).
  std::int64_t idt_ms = 0;
  std::uint64_t idt_seq = 0;
  std::string next_idt_key(std::int64_t now, std::int64_t& ts) {
    if (now > idt_ms) {
      idt_ms = now;
      idt_seq = 0;
    } else {
      ++idt_seq;
    }
    ts = idt_ms;
    std::string k = key64(static_cast<std::uint64_t>(idt_ms));
    k += key64(idt_seq);
    return k;
  }

  // Direct delivery (store::set_direct_sink). The sinks by peer, guarded by
  // direct_mu; the writer takes those that are ready at the start of each
  // transaction into txn_direct, with what the transaction hands them.
  std::mutex direct_mu;
  std::map<peer_id, std::shared_ptr<direct_sink>> direct_sinks;
  struct direct_batch {
    peer_id peer = 0;
    std::shared_ptr<direct_sink> sink;
    std::vector<segment_view> segs;
  };
  std::vector<direct_batch> txn_direct; // writer thread
  bool direct_off = false;              // writer thread: this group is applied again after a sink failed
  // Writer thread: the transaction in progress changed something that only
  // LMDB holds (anything but enqueues whose segments were all delivered
  // directly or duplicates), so its commit must flush the metadata too.
  bool txn_needs_meta_sync = true;
  bool meta_sync_relaxed = false; // MDB_NOMETASYNC is set on the environment now
  // Ids a sink made durable in a transaction that then failed to commit,
  // with their peer (writer thread). When they come again (the group's next
  // attempt, or the sender's resend) they are counted delivered without
  // being delivered twice; the commit that counts them drops them here.
  std::unordered_map<std::string, peer_id> delivered_uncommitted;
  std::vector<std::string> txn_resolved; // this transaction's ids of delivered_uncommitted
  // A sink's deliver() failed: try_group's result, which process() answers
  // by applying the group again without direct delivery. Outside LMDB's
  // error codes (-30799 .. -30780) and errno values.
  static constexpr int direct_failed = -31000;

  // Working copies for the transaction in progress (writer thread only).
  std::vector<peer_counters> work;
  globals wglob;
  std::vector<std::pair<peer_rt*, std::uint64_t>> pinned; // eviction victims pinned in this txn

  ~impl() {
    readers.clear();
    if (env && meta_sync_relaxed) mdb_env_sync(env, 1); // the last commit's metadata, before leaving
    if (env) mdb_env_close(env);
    if (lock_fd >= 0) ::close(lock_fd);
  }

  peer_rt* peer(peer_id id) const {
    std::shared_lock lk(peers_mu);
    return id >= 1 && id <= peers.size() ? peers[id - 1].get() : nullptr;
  }

  std::int64_t now_ms() { return util::to_unix_ms(clk->system_now()); }

  // ---------------------------------------------------------------- writer
  void submit(std::unique_ptr<request> r) {
    {
      std::lock_guard lk(q_mu);
      if (!stopping) {
        pending.push_back(std::move(r));
        q_cv.notify_one();
        return;
      }
    }
    r->ec = errc::store_closed;
    r->eres.ec = errc::store_closed;
    r->eres.message = "the store is closing";
    complete(*r);
  }

  void run_writer() {
    std::vector<std::unique_ptr<request>> group;
    for (;;) {
      bool expire = false, expire_all = false;
      {
        std::unique_lock lk(q_mu);
        // Parked (overflow = block) requests can only fit after another write
        // frees room, so they are re-tried with new requests or at their deadline.
        for (;;) {
          if (parked.empty())
            q_cv.wait(lk, [&] { return stopping || expire_requested || !pending.empty(); });
          else
            q_cv.wait_for(lk, 5ms, [&] { return stopping || expire_requested || !pending.empty(); });
          if (stopping || expire_requested || !pending.empty()) break;
          auto now = clk->steady_now();
          if (std::any_of(parked.begin(), parked.end(), [&](auto& r) { return r->deadline && *r->deadline <= now; }))
            break;
        }
        if (stopping && pending.empty() && parked.empty()) return;
        expire = expire_requested;
        expire_all = expiring;
        // Order: writes that free room (acks, nacks, ...) first, then the
        // enqueues that waited for room, oldest first, then new enqueues.
        group.clear();
        for (auto& p : pending)
          if (p->k != request::kind::enqueue) group.push_back(std::move(p));
        for (auto& p : parked)
          group.push_back(std::move(p));
        parked.clear();
        for (auto& p : pending)
          if (p) group.push_back(std::move(p));
        pending.clear();
      }
      if (stopping || expire || expire_all) {
        for (auto& r : group)
          if (r->k == request::kind::enqueue && r->deadline) r->deadline = std::chrono::steady_clock::time_point{};
      }
      process(group);
      if (expire) {
        std::lock_guard lk(q_mu);
        expire_requested = false;
        expired_cv.notify_all();
      }
    }
  }

  // LMDB reports a short write (what a full disk often gives) as EIO, so a
  // write failure is checked against the free space where the store lives.
  std::pair<sys_ec, std::string> describe_commit_failure(int rc) const {
    const std::string dir = opt.data_dir.string();
    if (rc == ENOSPC || rc == EIO || rc == EFBIG) {
      struct statvfs fs {};
      bool known = ::statvfs(dir.c_str(), &fs) == 0;
      std::uint64_t avail = known ? static_cast<std::uint64_t>(fs.f_bavail) * fs.f_frsize : 0;
      if (rc == ENOSPC || (rc == EIO && known && avail < (64ull << 20)))
        return {sys_ec(ENOSPC, boost::system::system_category()),
                "store commit failed: the file system holding " + dir + " is full (" + std::to_string(avail) +
                    " bytes free); nothing already stored was lost — free disk space or lower queue.max_bytes"};
      return {lmdb_ec(rc), "store commit failed: " + describe(rc) + " writing to " + dir +
                               (known ? " (" + std::to_string(avail) + " bytes free)" : std::string()) +
                               "; nothing already stored was lost"};
    }
    return {lmdb_ec(rc), "store commit failed: " + describe(rc) + " in " + dir};
  }

  // Forgets peers registered by a transaction that did not commit.
  void rollback_peers(std::size_t keep) {
    std::unique_lock lk(peers_mu);
    while (peers.size() > keep) {
      by_name.erase(peers.back()->name);
      peers.pop_back();
    }
    std::lock_guard sl(stats_mu);
    committed.resize(keep);
  }

  void process(std::vector<std::unique_ptr<request>>& group) {
    bool shed_enqueues = false;
    bool committed_ok = false;
    const std::size_t peers_before = peers.size();
    direct_off = false;
    for (;;) {
      int rc = try_group(group, shed_enqueues);
      if (rc == MDB_SUCCESS) {
        committed_ok = true;
        break;
      }
      rollback_peers(peers_before);
      if (rc == direct_failed && !direct_off) {
        direct_off = true; // the sink said why (its own error); the segments are queued instead
        continue;
      }
      if (rc == MDB_MAP_FULL && !shed_enqueues) {
        if (grow_map()) continue;
        shed_enqueues = true; // at the ceiling: fail the enqueues, keep acks and the rest
        continue;
      }
      // A failed commit leaves the committed state as it was: fail every request.
      auto [ec, msg] = describe_commit_failure(rc);
      for (auto& r : group) {
        r->ec = ec;
        r->eres = {};
        r->eres.ec = ec;
        r->eres.message = msg;
        r->parked = false;
      }
      break;
    }
    // Leases end and pins drop only now that the outcome is known. After a
    // commit those keys are gone; after a failure they are still queued and
    // must become readable again, so the read cursor moves back to them.
    for (auto& r : group) {
      if (r->unlease.empty() || (!committed_ok && r->keep_leases_on_failure)) continue;
      if (peer_rt* p = peer(r->peer)) {
        std::lock_guard lk(p->mu);
        if (!committed_ok) p->cursor = std::min(p->cursor, *std::min_element(r->unlease.begin(), r->unlease.end()));
        sorted_erase(p->leased, std::move(r->unlease));
      }
    }
    unpin_all(!committed_ok);
    if (committed_ok && !fates.empty() && txn_watch && txn_watch->obs) txn_watch->obs(std::move(fates));
    fates.clear();
    // Pages freed by a commit are reusable by LMDB only from the transaction
    // after next, so an enqueue shed at the map ceiling gets one more try in
    // a transaction of its own before it fails.
    std::vector<std::unique_ptr<request>> again, retry_shed;
    for (auto& r : group) {
      if (r->parked) {
        again.push_back(std::move(r));
        continue;
      }
      if (r->shed && !r->shed_retried && committed_ok) {
        r->shed_retried = true;
        retry_shed.push_back(std::move(r));
        continue;
      }
      complete(*r);
    }
    if (!retry_shed.empty()) process(retry_shed);
    if (!again.empty()) {
      std::lock_guard lk(q_mu);
      for (auto& r : again)
        parked.push_back(std::move(r));
    }
  }

  // Drops the eviction pins. `still_queued`: the eviction did not commit, so
  // the victims are readable again and the read cursor must not skip them.
  void unpin_all(bool still_queued) {
    std::map<peer_rt*, std::vector<std::uint64_t>> by_peer;
    for (auto& [p, k] : pinned)
      by_peer[p].push_back(k);
    pinned.clear();
    for (auto& [p, keys] : by_peer) {
      std::lock_guard lk(p->mu);
      if (still_queued) p->cursor = std::min(p->cursor, *std::min_element(keys.begin(), keys.end()));
      sorted_erase(p->leased, std::move(keys));
    }
  }

  // The map's ceiling: the capacities' (max_map) plus what the dedupe
  // tables hold now.
  std::uint64_t map_ceiling() const { return max_map + dedupe_map_bytes; }

  // Pages of the dedupe tables, in bytes, as committed. Runs on the writer
  // thread, the only one that moves the map, so no map_mu is needed.
  std::uint64_t measure_dedupe_bytes() {
    txn r;
    if (readers.begin(env, r)) return dedupe_map_bytes;
    std::uint64_t b = 0;
    for (MDB_dbi d : {ids_db, ids_t_db, id_ranges_db}) {
      MDB_stat st;
      if (mdb_stat(r.get(), d, &st) == MDB_SUCCESS)
        b += (st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages) * std::uint64_t{st.ms_psize};
    }
    return b;
  }

  bool grow_map() {
    if (map_size >= max_map) dedupe_map_bytes = measure_dedupe_bytes();
    if (map_size >= map_ceiling()) return false;
    std::uint64_t next = std::min<std::uint64_t>(map_ceiling(), map_size * 2);
    std::unique_lock lk(map_mu);
    readers.clear(); // nothing reads now (map_mu is exclusive)
    int rc = mdb_env_set_mapsize(env, next);
    if (rc != MDB_SUCCESS) return false;
    map_size = next;
    locate_map();
    return true;
  }

  // Applies the whole group in one write transaction and commits it.
  int try_group(std::vector<std::unique_ptr<request>>& group, bool shed_enqueues) {
    auto t0 = std::chrono::steady_clock::now();
    unpin_all(true);
    {
      std::lock_guard lk(stats_mu);
      work = committed;
      wglob = cglob;
    }
    w_ids_db_used = ids_db_used;
    dl_events.clear();
    fates.clear();
    {
      std::lock_guard lk(fate_mu);
      txn_watch = fate_w;
    }
    txn_direct.clear();
    txn_resolved.clear();
    txn_needs_meta_sync = false;
    if (!direct_off) {
      std::vector<std::pair<peer_id, std::shared_ptr<direct_sink>>> sinks;
      {
        std::lock_guard lk(direct_mu);
        sinks.assign(direct_sinks.begin(), direct_sinks.end());
      }
      for (auto& [pid, sink] : sinks)
        if (sink->ready()) txn_direct.push_back({pid, std::move(sink), {}});
    }
    txn w;
    int rc = txn::begin(env, 0, w);
    if (rc) return rc;
    // overflow = block: enqueues wait for room in the order they came. Once
    // one parks, the later ones (their deadlines are later too) park without
    // being tried, so a full queue costs one attempt per transaction, not one
    // per waiting request.
    bool park_rest = false, all_parked = true;
    const auto now = clk->steady_now();
    for (auto& r : group) {
      r->parked = false;
      r->shed = false;
      r->unlease.clear();
      r->ec = {};
      if (r->k == request::kind::enqueue && shed_enqueues) {
        r->eres = {};
        r->eres.ec = errc::store_full;
        r->eres.message = "the store's map reached its ceiling of " + std::to_string(map_ceiling()) +
                          " bytes; free space by delivering or purging, or raise the capacity";
        r->shed = true;
        all_parked = false;
        continue;
      }
      if (park_rest && r->k == request::kind::enqueue && r->deadline && now < *r->deadline) {
        r->parked = true;
        continue;
      }
      if (r->k != request::kind::enqueue) txn_needs_meta_sync = true;
      rc = apply(w, *r);
      if (rc) return rc;
      if (r->parked)
        park_rest = true;
      else
        all_parked = false;
    }
    // Nothing changed: no commit (and no fsync) for a group that only waits.
    if (all_parked) return MDB_SUCCESS;
    // Direct deliveries, before the commit that counts them. Once a sink has
    // made its segments durable, a failure of what follows must not make it
    // deliver them again: they are remembered until a commit counts them.
    std::size_t delivered_batches = 0;
    auto keep_delivered = [&](int code) {
      for (std::size_t i = 0; i < delivered_batches; ++i)
        for (auto& d : txn_direct[i].segs)
          delivered_uncommitted.emplace(std::string(d.id), txn_direct[i].peer);
      return code;
    };
    for (auto& d : txn_direct) {
      if (!d.segs.empty() && !d.sink->deliver(d.segs)) return keep_delivered(direct_failed);
      ++delivered_batches;
    }
    // Persist the counters of this transaction.
    for (std::size_t i = 0; i < work.size(); ++i) {
      if (i < committed.size() && std::memcmp(&work[i], &committed[i], sizeof(peer_counters)) == 0) continue;
      rc = w.put(counters_db, be32key(static_cast<std::uint32_t>(i + 1)), counters_codec::encode(work[i]));
      if (rc) return keep_delivered(rc);
    }
    rc = w.put(meta, "globals", wglob.encode());
    if (rc) return keep_delivered(rc);
    // A transaction that only delivered directly skips the metadata flush
    // (MDB_NOMETASYNC for this commit): its data pages are flushed, and the
    // next commit's flush, or a power cut, decides whether it survives. If
    // it does not, nothing is lost: what it delivered is in the sink, durable
    // before this commit, and recover_direct counts it again from there when
    // the sink starts. LMDB keeps the previous state intact meanwhile.
    const bool relax = opt.sync == sync_mode::full && !txn_needs_meta_sync && txn_resolved.empty();
    if (relax != meta_sync_relaxed) {
      rc = mdb_env_set_flags(env, MDB_NOMETASYNC, relax ? 1 : 0);
      if (rc) return keep_delivered(rc);
      meta_sync_relaxed = relax;
    }
    if (fail_commits_for_test.load(std::memory_order_acquire) > 0 &&
        (!fail_only_acks_for_test ||
         std::any_of(group.begin(), group.end(), [](auto& r) { return r->k == request::kind::ack; }))) {
      fail_commits_for_test.fetch_sub(1, std::memory_order_relaxed);
      return keep_delivered(fail_commit_errno_for_test.load(std::memory_order_relaxed));
    }
    rc = w.commit();
    if (rc) return keep_delivered(rc);
    for (auto& d : txn_direct)
      if (!d.segs.empty()) peers_unlocked(d.peer)->direct += d.segs.size();
    for (auto& id : txn_resolved)
      delivered_uncommitted.erase(id);
    // Every transaction reads the pages it copies on write through the map,
    // and they are new pages each time: without readers, whose reads drop
    // the map's pages every trim_every_bytes (a hub that delivers directly
    // reads almost nothing), those would add up in RSS. The writer is the
    // only thread that moves the map, so it needs no map_mu for this.
    if (auto at = std::chrono::steady_clock::now(); at - writer_trimmed >= std::chrono::seconds(1)) {
      writer_trimmed = at;
      trim_map();
    }
    {
      std::lock_guard lk(stats_mu);
      committed = work;
      cglob = wglob;
      ++commits;
      if (meta_sync_relaxed) ++commits_direct_only;
    }
    ids_db_used = w_ids_db_used;
    if (observer) observer(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), group.size());
    if (dl_observer)
      for (auto& [key, n] : dl_events)
        dl_observer(key.first, key.second, n);
    return MDB_SUCCESS;
  }

  int apply(txn& w, request& r) {
    switch (r.k) {
    case request::kind::enqueue: return apply_enqueue(w, r);
    case request::kind::ack: return apply_ack(w, r);
    case request::kind::nack: return apply_nack(w, r);
    case request::kind::reject: return apply_reject(w, r);
    case request::kind::dl_retry: return apply_dl(w, r, true);
    case request::kind::dl_purge: return apply_dl(w, r, false);
    case request::kind::maintenance: return apply_maintenance(w, r);
    case request::kind::add_peer: return apply_add_peer(w, r);
    case request::kind::quota_save: return apply_quota_save(w, r);
    case request::kind::record_put: return w.put(records_db, r.record_key, r.record_value);
    case request::kind::direct_recover: return apply_recover(w, r);
    }
    return MDB_SUCCESS;
  }

  void complete(request& r) {
    switch (r.k) {
    case request::kind::enqueue:
      if (r.on_enqueue) r.on_enqueue(std::move(r.eres));
      break;
    case request::kind::ack:
    case request::kind::nack:
    case request::kind::reject:
    case request::kind::quota_save:
    case request::kind::record_put:
      if (r.on_done) r.on_done(r.ec);
      break;
    case request::kind::dl_retry:
    case request::kind::dl_purge:
    case request::kind::direct_recover:
      if (r.on_count) {
        if (r.ec)
          r.on_count(r.ec);
        else
          r.on_count(r.count);
      }
      break;
    case request::kind::maintenance:
      if (r.on_maint) {
        if (r.ec)
          r.on_maint(r.ec);
        else
          r.on_maint(r.mres);
      }
      break;
    case request::kind::add_peer:
      if (r.on_peer) {
        if (r.ec)
          r.on_peer(r.ec);
        else
          r.on_peer(r.pid);
      }
      break;
    }
  }

  std::uint64_t queued_bytes_total() const {
    std::uint64_t s = 0;
    for (auto& c : work)
      s += c.queued_bytes;
    return s;
  }

  // Chooses and deletes least-recently-used unleased segments until `need`
  // more bytes fit. Deletes nothing when that is impossible (returns false).
  int make_room(txn& w, std::uint64_t need, bool& ok) {
    ok = true;
    std::uint64_t used = queued_bytes_total();
    if (used + need <= opt.max_bytes) return MDB_SUCCESS;
    ok = false;
    if (opt.overflow != overflow_policy::evict_lru || need > opt.max_bytes) return MDB_SUCCESS;
    std::uint64_t to_free = used + need - opt.max_bytes;

    struct head {
      peer_rt* p;
      cursor c;
      std::uint64_t key = 0;
      std::vector<std::uint64_t> leased;
      std::size_t li = 0;
      bool valid = false;
    };
    // Every peer's lock is held from reading its leases until the victims are
    // pinned, so no reader can lease a victim in between. Readers take one
    // peer lock at a time, so taking them all here (in id order) cannot deadlock.
    std::vector<head> heads;
    std::vector<std::unique_lock<std::mutex>> locks;
    {
      std::shared_lock lk(peers_mu);
      for (auto& p : peers) {
        head h;
        h.p = p.get();
        locks.emplace_back(p->mu);
        h.key = p->cursor;
        h.leased = p->leased;
        int rc = cursor::open(w, p->dbi, h.c);
        if (rc) return rc;
        heads.push_back(std::move(h));
      }
    }
    auto seek = [&](head& h, MDB_cursor_op op) -> int {
      std::string k = key64(h.key);
      std::string_view kv = k, vv;
      int rc = h.c.get(kv, vv, op);
      for (;;) {
        if (rc == MDB_NOTFOUND) {
          h.valid = false;
          return MDB_SUCCESS;
        }
        if (rc) return rc;
        h.key = key64(kv);
        while (h.li < h.leased.size() && h.leased[h.li] < h.key)
          ++h.li;
        if (h.li < h.leased.size() && h.leased[h.li] == h.key) {
          rc = h.c.get(kv, vv, MDB_NEXT);
          continue;
        }
        h.valid = true;
        return MDB_SUCCESS;
      }
    };
    for (auto& h : heads) {
      int rc = seek(h, MDB_SET_RANGE);
      if (rc) return rc;
    }
    struct victim {
      head* h;
      std::uint64_t key;
      std::uint64_t bytes;
    };
    std::vector<victim> victims;
    std::uint64_t freed = 0;
    while (freed < to_free) {
      head* best = nullptr;
      for (auto& h : heads)
        if (h.valid && (!best || h.key < best->key)) best = &h;
      if (!best) return MDB_SUCCESS; // everything left is leased: cannot make room
      std::string_view kv, vv;
      int rc = best->c.get(kv, vv, MDB_GET_CURRENT);
      if (rc) return rc;
      victims.push_back({best, best->key, vv.size()});
      freed += vv.size();
      rc = seek(*best, MDB_NEXT);
      if (rc) return rc;
    }
    // Pin the victims so no reader leases them before this transaction commits.
    for (auto& v : victims) {
      sorted_insert(v.h->p->leased, {v.key});
      pinned.emplace_back(v.h->p, v.key);
    }
    locks.clear();
    std::int64_t now = now_ms();
    for (auto& v : victims) {
      std::string k = key64(v.key);
      std::string_view val;
      int rc = w.get(v.h->p->dbi, k, val);
      if (rc) return rc;
      auto rec = detail::decode_record(val);
      note_fate(v.h->p, val, segment_fate::evicted, "evicted");
      std::string jv;
      {
        util::writer jw(jv);
        jw.u32(v.h->p->id);
        jw.u64(static_cast<std::uint64_t>(now));
        jw.u64(rec ? rec->payload.size() : 0);
        std::string_view id = rec ? rec->id : std::string_view{}, st = rec ? rec->stream : std::string_view{};
        jw.u8(static_cast<std::uint8_t>(id.size()));
        jw.bytes(id);
        jw.u8(static_cast<std::uint8_t>(st.size()));
        jw.bytes(st);
      }
      rc = w.del(v.h->p->dbi, k);
      if (rc) return rc;
      rc = w.put(evj_db, key64(wglob.evseq++), jv, MDB_APPEND);
      if (rc) return rc;
      auto& c = work[v.h->p->id - 1];
      c.queued -= 1;
      c.queued_bytes -= v.bytes;
      c.evicted += 1;
    }
    // Keep the journal bounded: drop its oldest entries.
    MDB_stat st;
    mdb_stat(w.get(), evj_db, &st);
    if (st.ms_entries > opt.eviction_journal_max) {
      std::size_t drop = st.ms_entries - opt.eviction_journal_max;
      cursor c;
      int rc = cursor::open(w, evj_db, c);
      if (rc) return rc;
      std::string_view kv, vv;
      rc = c.get(kv, vv, MDB_FIRST);
      while (rc == MDB_SUCCESS && drop-- > 0) {
        rc = c.del();
        if (rc) return rc;
        rc = c.current_after_del(kv, vv);
      }
      if (rc && rc != MDB_NOTFOUND) return rc;
    }
    ok = true;
    return MDB_SUCCESS;
  }

  int apply_enqueue(txn& w, request& r) {
    auto& segs = r.segs;
    r.eres = {};
    r.eres.status.assign(segs.size(), item_status::stored);
    std::int64_t now = now_ms();
    // Dedupe: ids seen within the window are dropped.
    std::uint64_t need = 0, fresh_without_id = 0;
    char idbuf[64];
    detail::id_range_table ranges(w, id_ranges_db, now, opt.dedupe_window.count());
    auto& parsed = parsed_ids; // "<origin>:<seq>" of each id, for both passes
    parsed.assign(segs.size(), std::nullopt);
    auto& plan = direct_plan;
    plan.assign(segs.size(), plan_queue);
    const bool may_direct = !delivered_uncommitted.empty() || !txn_direct.empty();
    plan_queued.assign(may_direct ? peers.size() : 0, 0);
    std::vector<std::size_t> planned(txn_direct.size()); // by txn_direct entry
    for (std::size_t i = 0; i < segs.size(); ++i) {
      auto& s = segs[i];
      if (!s.id.empty()) {
        bool seen = false;
        auto& os = parsed[i];
        os = detail::parse_origin_seq(s.id);
        if (int rc = received(w, ranges, s.id, os, now, seen)) return rc;
        if (seen) {
          r.eres.status[i] = item_status::duplicate;
          continue;
        }
      } else {
        ++fresh_without_id;
      }
      // What is delivered directly needs no room in the queue.
      if (may_direct && (plan[i] = plan_direct(s, planned)) != plan_queue) continue;
      std::size_t idlen =
          s.id.empty() ? opt.node_id.size() + 1 + decimal_digits(wglob.oseq + fresh_without_id - 1) : s.id.size();
      need += detail::record_size(idlen, s.stream.size(), 0, s.payload.size()) * s.peers.size();
    }
    bool ok = false;
    int rc = make_room(w, need, ok);
    if (rc) return rc;
    if (!ok) {
      if (opt.overflow == overflow_policy::block && r.deadline && clk->steady_now() < *r.deadline) {
        r.parked = true;
        return MDB_SUCCESS;
      }
      r.eres.status.clear();
      std::uint64_t used = queued_bytes_total();
      if (opt.overflow == overflow_policy::block) {
        r.eres.ec = errc::timeout;
        r.eres.message = "no room in the queue within block_timeout (" + std::to_string(opt.block_timeout.count()) +
                         " ms): " + std::to_string(used) + " of " + std::to_string(opt.max_bytes) + " bytes used, " +
                         std::to_string(need) + " more needed";
      } else {
        r.eres.ec = errc::queue_full;
        r.eres.message = "queue full: " + std::to_string(used) + " of " + std::to_string(opt.max_bytes) +
                         " bytes used and " + std::to_string(need) + " more needed" +
                         (opt.overflow == overflow_policy::evict_lru ? " (every evictable segment is in flight)"
                                                                     : " (overflow = reject)");
      }
      wglob.rejected += segs.size();
      return MDB_SUCCESS;
    }
    r.eres.first_seq = wglob.oseq;
    wglob.oseq += fresh_without_id;
    std::uint64_t oseq = r.eres.first_seq;
    // The first pass looked every id up before this request wrote any; an id
    // repeated inside the request is caught here, without a second lookup.
    // A sender's ids come in increasing seqs per origin, and an id above
    // every seq of its origin taken so far cannot be a repeat; from the
    // first id that is not so (or has no seq, or past a few origins) on,
    // every id taken is checked in a hash set instead.
    struct origin_max {
      std::string_view origin;
      std::uint64_t seq;
    };
    std::vector<origin_max> maxes;
    std::unordered_set<std::string_view> ids_here;
    bool hashed = false;
    auto repeated = [&](std::size_t i) {
      if (segs.size() < 2) return false;
      if (const auto& os = parsed[i]; os && !hashed) {
        auto m = std::find_if(maxes.begin(), maxes.end(), [&](const origin_max& x) { return x.origin == os->origin; });
        if (m == maxes.end() && maxes.size() < 16) {
          maxes.push_back({os->origin, os->seq});
          return false;
        }
        if (m != maxes.end() && os->seq > m->seq) {
          m->seq = os->seq;
          return false;
        }
      }
      if (!hashed) {
        hashed = true;
        ids_here.reserve(segs.size());
        for (std::size_t j = 0; j < i; ++j)
          if (!segs[j].id.empty() && r.eres.status[j] != item_status::duplicate) ids_here.insert(segs[j].id);
      }
      return !ids_here.insert(segs[i].id).second;
    };
    std::vector<detail::origin_seq> ranged; // accepted "<origin>:<seq>" ids, for the range table
    for (std::size_t i = 0; i < segs.size(); ++i) {
      auto& s = segs[i];
      if (r.eres.status[i] == item_status::duplicate) {
        ++wglob.duplicates;
        continue;
      }
      detail::record_view rec;
      rec.created_ms = s.created_ms ? s.created_ms : now;
      rec.checksum = s.checksum ? *s.checksum : util::checksum(s.payload);
      rec.stream = s.stream;
      rec.payload = s.payload;
      if (!s.id.empty() && repeated(i)) {
        // The same id twice in one request counts once.
        r.eres.status[i] = item_status::duplicate;
        ++wglob.duplicates;
        continue;
      }
      if (s.id.empty()) {
        std::memcpy(idbuf, opt.node_id.data(), opt.node_id.size());
        idbuf[opt.node_id.size()] = ':';
        auto* e = std::to_chars(idbuf + opt.node_id.size() + 1, idbuf + sizeof idbuf, oseq++).ptr;
        rec.id = std::string_view(idbuf, static_cast<std::size_t>(e - idbuf));
      } else if (const auto& os = parsed[i]) {
        rec.id = s.id;
        ranged.push_back(*os);
      } else {
        rec.id = s.id;
        if (rc = record_id_row(w, s.id, now); rc) return rc;
      }
      ++wglob.accepted;
      if (plan[i] != plan_queue) {
        take_direct(s.peers[0], plan[i], rec);
        continue;
      }
      txn_needs_meta_sync = true; // queued: nothing else holds it
      const std::size_t sz = detail::record_size(rec);
      for (peer_id pid : s.peers) {
        peer_rt* p = peers_unlocked(pid);
        char* where = nullptr;
        rc = w.reserve(p->dbi, key64(wglob.gseq++), sz, where, MDB_APPEND);
        if (rc) return rc;
        detail::encode_record(rec, where);
        auto& c = work[pid - 1];
        ++c.routed;
        ++c.queued;
        c.queued_bytes += sz;
      }
    }
    return record_ranges(ranges, ranged);
  }

  // seen: `id` (parsed into `os` when it is "<origin>:<seq>") was received
  // within the dedupe window.
  int received(txn& w, detail::id_range_table& ranges, std::string_view id, const std::optional<detail::origin_seq>& os,
               std::int64_t now, bool& seen) {
    seen = false;
    if (os) {
      int rc = ranges.contains(*os, seen);
      if (rc) return rc;
    }
    if (!seen && (!os || w_ids_db_used)) {
      std::string_view at;
      int rc = w.get(ids_db, id, at);
      if (rc && rc != MDB_NOTFOUND) return rc;
      seen = rc == MDB_SUCCESS && at.size() == 8 &&
             static_cast<std::int64_t>(key64(at)) + opt.dedupe_window.count() >= now;
    }
    return MDB_SUCCESS;
  }

  // Records an id that is not "<origin>:<seq>" as received now: a row, and
  // its entry in the time index that expiry walks.
  int record_id_row(txn& w, std::string_view id, std::int64_t now) {
    std::int64_t ts = 0;
    std::string tk = next_idt_key(now, ts);
    int rc = w.put(ids_db, id, key64(static_cast<std::uint64_t>(ts)));
    if (rc) return rc;
    rc = w.put(ids_t_db, tk, id, MDB_APPEND);
    if (rc) return rc;
    w_ids_db_used = true;
    return MDB_SUCCESS;
  }

  // Where apply_enqueue's first pass sends segment `s` (in request order):
  // plan_resolved when a sink delivered it in a transaction that did not
  // commit; an index into txn_direct when it is routed to one peer alone,
  // whose sink is ready and whose queue is empty (nothing queued before this
  // request, nor by it so far) and the transaction's share is not full;
  // otherwise plan_queue, and its peers count as queued from here on.
  int plan_direct(const segment_in& s, std::vector<std::size_t>& planned) {
    if (s.peers.size() == 1 && !s.id.empty()) {
      const peer_id pid = s.peers[0];
      if (!delivered_uncommitted.empty()) {
        auto it = delivered_uncommitted.find(std::string(s.id));
        if (it != delivered_uncommitted.end() && it->second == pid) return plan_resolved;
      }
      if (work[pid - 1].queued == 0 && !plan_queued[pid - 1]) {
        for (std::size_t d = 0; d < txn_direct.size(); ++d)
          if (txn_direct[d].peer == pid && txn_direct[d].segs.size() + planned[d] < direct_max_segments) {
            ++planned[d];
            return static_cast<int>(d);
          }
      }
    }
    for (peer_id pid : s.peers)
      plan_queued[pid - 1] = 1;
    return plan_queue;
  }

  // Takes the accepted segment `rec`, routed to `pid` alone, as delivered
  // directly (plan: an index into txn_direct or plan_resolved).
  void take_direct(peer_id pid, int plan, const detail::record_view& rec) {
    if (plan == plan_resolved)
      txn_resolved.emplace_back(rec.id);
    else
      txn_direct[static_cast<std::size_t>(plan)].segs.push_back(
          {rec.id, rec.stream, rec.created_ms, rec.checksum, rec.payload});
    if (txn_watch && rec.stream == txn_watch->stream)
      fates.push_back(
          {pid, peers_unlocked(pid)->name, segment_fate::delivered, std::string(rec.id), std::string(rec.payload), {}});
    auto& c = work[pid - 1];
    ++c.routed;
    ++c.delivered;
  }

  // store::recover_direct: the ids among r.ids that are neither received
  // nor in the peer's queue are counted delivered and recorded as received.
  int apply_recover(txn& w, request& r) {
    peer_rt* p = peer(r.peer);
    if (!p) {
      r.ec = errc::unknown_peer;
      return MDB_SUCCESS;
    }
    // What a crash left spooled and still queued is the head of the queue
    // (the sink's oldest leases) and at most as many as the ids given, so
    // that many records of the head are enough to look at.
    std::unordered_set<std::string> queued;
    {
      cursor c;
      int rc = cursor::open(w, p->dbi, c);
      if (rc) return rc;
      std::string_view k, v;
      std::size_t scanned = 0;
      for (rc = c.get(k, v, MDB_FIRST); rc == MDB_SUCCESS && scanned++ < r.ids.size(); rc = c.get(k, v, MDB_NEXT))
        if (auto rec = detail::decode_record(v)) queued.emplace(rec->id);
      if (rc && rc != MDB_NOTFOUND) return rc;
    }
    const std::int64_t now = now_ms();
    detail::id_range_table ranges(w, id_ranges_db, now, opt.dedupe_window.count());
    std::vector<detail::origin_seq> ranged;
    std::unordered_set<std::string_view> counted;
    const std::string own = opt.node_id + ":"; // ids assigned here: never delivered directly, never in the table
    for (auto& id : r.ids) {
      if (id.empty() || id.starts_with(own) || queued.count(id) || counted.count(id)) continue;
      auto os = detail::parse_origin_seq(id);
      bool seen = false;
      if (int rc = received(w, ranges, id, os, now, seen)) return rc;
      if (seen) continue;
      counted.insert(id);
      if (os) {
        ranged.push_back(*os);
      } else if (int rc = record_id_row(w, id, now)) {
        return rc;
      }
    }
    auto& c = work[r.peer - 1];
    c.routed += counted.size();
    c.delivered += counted.size();
    wglob.accepted += counted.size();
    r.count = counted.size();
    return record_ranges(ranges, ranged);
  }

  // Writes the accepted ranged ids as runs of consecutive seqs per origin:
  // one range-table write per run.
  static int record_ranges(detail::id_range_table& ranges, std::vector<detail::origin_seq>& ids) {
    auto less = [](const detail::origin_seq& a, const detail::origin_seq& b) {
      return a.origin != b.origin ? a.origin < b.origin : a.seq < b.seq;
    };
    if (!std::is_sorted(ids.begin(), ids.end(), less)) std::sort(ids.begin(), ids.end(), less);
    for (std::size_t i = 0; i < ids.size();) {
      std::size_t j = i + 1;
      while (j < ids.size() && ids[j].origin == ids[i].origin && ids[j].seq == ids[j - 1].seq + 1)
        ++j;
      if (int rc = ranges.insert(ids[i].origin, ids[i].seq, ids[j - 1].seq)) return rc;
      i = j;
    }
    return MDB_SUCCESS;
  }

  // The writer thread may read peers without peers_mu: it is the only one that grows it.
  peer_rt* peers_unlocked(peer_id id) const { return peers[id - 1].get(); }

  int apply_ack(txn& w, request& r) {
    peer_rt* p = peer(r.peer);
    if (!p) {
      r.ec = errc::unknown_peer;
      return MDB_SUCCESS;
    }
    auto& c = work[r.peer - 1];
    cursor cur;
    int rc = cursor::open(w, p->dbi, cur);
    if (rc) return rc;
    for (auto k : r.keys) {
      std::string ks = key64(k);
      std::string_view kv = ks, vv;
      rc = cur.get(kv, vv, MDB_SET_KEY);
      if (rc == MDB_NOTFOUND) continue; // already acked: idempotent
      if (rc) return rc;
      std::size_t sz = vv.size();
      note_fate(p, vv, segment_fate::delivered, {});
      rc = cur.del();
      if (rc) return rc;
      ++c.delivered;
      --c.queued;
      c.queued_bytes -= sz;
    }
    r.unlease = r.keys;
    return MDB_SUCCESS;
  }

  std::chrono::milliseconds backoff(std::uint32_t attempts) {
    backoff_policy b;
    {
      std::lock_guard lk(retry_mu);
      b = retry_backoff;
    }
    double d = static_cast<double>(b.initial.count()) * std::pow(b.multiplier, static_cast<double>(attempts) - 1.0);
    d = std::min(d, static_cast<double>(b.max.count()));
    if (b.jitter > 0) {
      std::uniform_real_distribution<double> u(-b.jitter, b.jitter);
      d *= 1.0 + u(rng);
    }
    return std::chrono::milliseconds{static_cast<std::int64_t>(std::max(0.0, d))};
  }

  int to_deadletter(txn& w, peer_rt* p, std::string_view record, std::string_view reason) {
    std::int64_t now = now_ms();
    std::string v = detail::encode_deadletter(p->id, now, reason.substr(0, 255), record);
    int rc = w.put(dl_db, key64(wglob.dlseq++), v, MDB_APPEND);
    if (rc) return rc;
    ++dl_events[{p->id, std::string(reason.substr(0, 255))}];
    auto& c = work[p->id - 1];
    ++c.deadletter;
    c.deadletter_bytes += v.size();
    ++wglob.deadletter_segments;
    wglob.deadletter_bytes += v.size();
    return enforce_deadletter_bytes(w);
  }

  int enforce_deadletter_bytes(txn& w) {
    if (wglob.deadletter_bytes <= opt.deadletter_max_bytes) return MDB_SUCCESS;
    cursor c;
    int rc = cursor::open(w, dl_db, c);
    if (rc) return rc;
    std::string_view kv, vv;
    rc = c.get(kv, vv, MDB_FIRST);
    while (rc == MDB_SUCCESS && wglob.deadletter_bytes > opt.deadletter_max_bytes) {
      rc = purge_current(c, vv);
      if (rc) return rc;
      rc = c.current_after_del(kv, vv);
    }
    return rc == MDB_NOTFOUND ? MDB_SUCCESS : rc;
  }

  // Deletes the dead-letter entry under c, counting it as purged.
  int purge_current(cursor& c, std::string_view vv) {
    auto d = detail::decode_deadletter(vv);
    std::size_t sz = vv.size();
    int rc = c.del();
    if (rc) return rc;
    if (d && d->peer >= 1 && d->peer <= work.size()) {
      auto& pc = work[d->peer - 1];
      --pc.deadletter;
      pc.deadletter_bytes -= sz;
      ++pc.purged;
    }
    --wglob.deadletter_segments;
    wglob.deadletter_bytes -= sz;
    return MDB_SUCCESS;
  }

  int apply_nack(txn& w, request& r) {
    peer_rt* p = peer(r.peer);
    if (!p) {
      r.ec = errc::unknown_peer;
      return MDB_SUCCESS;
    }
    auto& c = work[r.peer - 1];
    std::int64_t now = now_ms();
    std::string scratch;
    std::string_view err = std::string_view(r.error).substr(0, 4096);
    for (auto k : r.keys) {
      std::string ks = key64(k);
      std::string_view vv;
      int rc = w.get(p->dbi, ks, vv);
      if (rc == MDB_NOTFOUND) continue;
      if (rc) return rc;
      auto rec = detail::decode_record(vv);
      if (!rec) return MDB_CORRUPTED;
      std::size_t old_sz = vv.size();
      rec->attempts = static_cast<std::uint16_t>(std::min<std::uint32_t>(rec->attempts + 1u, 65535u));
      rec->last_error = err;
      ++c.attempts;
      scratch.resize(detail::record_size(*rec));
      detail::encode_record(*rec, scratch.data()); // copies out of the map before we modify it
      rc = w.del(p->dbi, ks);
      if (rc) return rc;
      --c.queued;
      c.queued_bytes -= old_sz;
      std::uint32_t limit;
      {
        std::lock_guard lk(retry_mu);
        limit = max_retry;
      }
      if (rec->attempts >= limit) {
        note_fate(p, scratch, segment_fate::deadlettered, "max_retry");
        rc = to_deadletter(w, p, scratch, "max_retry");
        if (rc) return rc;
        continue;
      }
      rec = detail::decode_record(scratch);
      rec->next_attempt_ms = now + backoff(rec->attempts).count();
      // Only a dead letter keeps the error (the peer's status shows the
      // latest): stored in every re-queued record it grew the queue past
      // max_bytes, by up to 4 KiB per segment, on each failed attempt.
      rec->last_error = {};
      std::string again(detail::record_size(*rec), '\0');
      detail::encode_record(*rec, again.data());
      rc = w.put(p->dbi, key64(wglob.gseq++), again, MDB_APPEND);
      if (rc) return rc;
      ++c.queued;
      c.queued_bytes += again.size();
    }
    r.unlease = r.keys;
    return MDB_SUCCESS;
  }

  int apply_reject(txn& w, request& r) {
    peer_rt* p = peer(r.peer);
    if (!p) {
      r.ec = errc::unknown_peer;
      return MDB_SUCCESS;
    }
    auto& c = work[r.peer - 1];
    std::string scratch;
    for (auto& item : r.rejects) {
      std::string ks = key64(item.key);
      std::string_view vv;
      int rc = w.get(p->dbi, ks, vv);
      r.unlease.push_back(item.key);
      if (rc == MDB_NOTFOUND) continue;
      if (rc) return rc;
      auto rec = detail::decode_record(vv);
      if (!rec) return MDB_CORRUPTED;
      std::size_t old_sz = vv.size();
      rec->attempts = static_cast<std::uint16_t>(std::min<std::uint32_t>(rec->attempts + 1u, 65535u));
      rec->last_error = std::string_view(item.error).substr(0, 4096);
      scratch.resize(detail::record_size(*rec));
      detail::encode_record(*rec, scratch.data());
      rc = w.del(p->dbi, ks);
      if (rc) return rc;
      ++c.attempts;
      --c.queued;
      c.queued_bytes -= old_sz;
      note_fate(p, scratch, segment_fate::deadlettered, item.reason.empty() ? "rejected" : item.reason);
      rc = to_deadletter(w, p, scratch, item.reason.empty() ? "rejected" : item.reason);
      if (rc) return rc;
    }
    return MDB_SUCCESS;
  }

  bool selects(const deadletter_selector& s, std::uint64_t dkey, const detail::deadletter_view& d,
               const detail::record_view& rec, std::int64_t now) {
    (void)dkey;
    if (s.peer) {
      auto it = by_name.find(*s.peer);
      if (it == by_name.end() || it->second != d.peer) return false;
    }
    if (s.all) return true;
    if (s.older_than) return d.deadlettered_ms <= now - s.older_than->count();
    return std::find(s.ids.begin(), s.ids.end(), rec.id) != s.ids.end();
  }

  int apply_dl(txn& w, request& r, bool retry) {
    std::int64_t now = now_ms();
    cursor c;
    int rc = cursor::open(w, dl_db, c);
    if (rc) return rc;
    std::string_view kv, vv;
    std::string scratch;
    rc = c.get(kv, vv, MDB_FIRST);
    while (rc == MDB_SUCCESS) {
      auto d = detail::decode_deadletter(vv);
      auto rec = d ? detail::decode_record(d->record) : std::nullopt;
      if (!d || !rec) return MDB_CORRUPTED;
      if (!selects(r.sel, key64(kv), *d, *rec, now)) {
        rc = c.get(kv, vv, MDB_NEXT);
        continue;
      }
      if (!retry) {
        rc = purge_current(c, vv);
        if (rc) return rc;
        ++r.count;
        rc = c.current_after_del(kv, vv);
        continue;
      }
      peer_rt* p = d->peer >= 1 && d->peer <= peers.size() ? peers_unlocked(d->peer) : nullptr;
      if (!p) return MDB_CORRUPTED;
      rec->attempts = 0;
      rec->next_attempt_ms = 0;
      rec->last_error = {};
      scratch.resize(detail::record_size(*rec));
      detail::encode_record(*rec, scratch.data());
      std::size_t dl_sz = vv.size();
      std::uint32_t pid = d->peer;
      std::string dkey(kv);
      bool ok = false;
      rc = make_room(w, scratch.size(), ok);
      if (rc) return rc;
      if (!ok) {
        if (r.count == 0) r.ec = errc::queue_full;
        break;
      }
      // make_room may have moved the cursor's page: find our entry again.
      std::string_view k2 = dkey, v2;
      rc = c.get(k2, v2, MDB_SET_KEY);
      if (rc) return rc;
      rc = c.del();
      if (rc) return rc;
      rc = w.put(p->dbi, key64(wglob.gseq++), scratch, MDB_APPEND);
      if (rc) return rc;
      auto& pc = work[pid - 1];
      --pc.deadletter;
      pc.deadletter_bytes -= dl_sz;
      ++pc.queued;
      pc.queued_bytes += scratch.size();
      --wglob.deadletter_segments;
      wglob.deadletter_bytes -= dl_sz;
      ++r.count;
      rc = c.current_after_del(kv, vv);
    }
    return rc == MDB_NOTFOUND || rc == MDB_SUCCESS ? MDB_SUCCESS : rc;
  }

  int apply_maintenance(txn& w, request& r) {
    std::int64_t now = now_ms();
    std::string_view kv, vv;
    {
      cursor c;
      int rc = cursor::open(w, dl_db, c);
      if (rc) return rc;
      rc = c.get(kv, vv, MDB_FIRST);
      while (rc == MDB_SUCCESS) {
        auto d = detail::decode_deadletter(vv);
        if (!d) return MDB_CORRUPTED;
        if (d->deadlettered_ms > now - opt.deadletter_retention.count()) break;
        rc = purge_current(c, vv);
        if (rc) return rc;
        ++r.mres.deadletter_purged;
        rc = c.current_after_del(kv, vv);
      }
      if (rc && rc != MDB_NOTFOUND) return rc;
    }
    {
      cursor c;
      int rc = cursor::open(w, ids_t_db, c);
      if (rc) return rc;
      rc = c.get(kv, vv, MDB_FIRST);
      while (rc == MDB_SUCCESS) {
        if (kv.size() < 8) return MDB_CORRUPTED;
        auto ts = static_cast<std::int64_t>(key64(kv.substr(0, 8)));
        if (ts + opt.dedupe_window.count() >= now) break;
        // Format 2: time ‖ sequence -> id. Format 1: time ‖ id -> empty.
        std::string id(vv.empty() ? kv.substr(8) : vv);
        rc = c.del();
        if (rc) return rc;
        std::string_view seen;
        if (w.get(ids_db, id, seen) == MDB_SUCCESS && seen.size() == 8 &&
            static_cast<std::int64_t>(key64(seen)) == ts) {
          rc = w.del(ids_db, id);
          if (rc) return rc;
        }
        ++r.mres.dedupe_expired;
        rc = c.current_after_del(kv, vv);
      }
      if (rc && rc != MDB_NOTFOUND) return rc;
      MDB_stat st{};
      rc = mdb_stat(w.get(), ids_db, &st);
      if (rc) return rc;
      w_ids_db_used = st.ms_entries > 0;
    }
    if (int rc = detail::expire_ranges(w, id_ranges_db, now, opt.dedupe_window.count(), r.mres.dedupe_expired))
      return rc;
    return enforce_deadletter_bytes(w);
  }

  int apply_quota_save(txn& w, request& r) {
    if (!peer(r.peer)) {
      r.ec = errc::unknown_peer;
      return MDB_SUCCESS;
    }
    return w.put(quota_db, be32key(r.peer), quota_codec::encode(r.quota_period_ms, r.quota_used));
  }

  int apply_add_peer(txn& w, request& r) {
    {
      std::shared_lock lk(peers_mu);
      auto it = by_name.find(r.name);
      if (it != by_name.end()) {
        r.pid = it->second;
        return MDB_SUCCESS;
      }
    }
    peer_id id = static_cast<peer_id>(peers.size() + 1);
    MDB_dbi dbi;
    int rc = mdb_dbi_open(w.get(), ("q:" + r.name).c_str(), MDB_CREATE, &dbi);
    if (rc) return rc;
    rc = w.put(peers_db, r.name, be32key(id));
    if (rc) return rc;
    auto p = std::make_unique<peer_rt>();
    p->id = id;
    p->name = r.name;
    p->dbi = dbi;
    // Visible before commit only to the writer; readers cannot name it yet.
    {
      std::unique_lock lk(peers_mu);
      peers.push_back(std::move(p));
      by_name.emplace(r.name, id);
    }
    {
      std::lock_guard lk(stats_mu);
      committed.resize(peers.size());
    }
    work.resize(peers.size());
    r.pid = id;
    return MDB_SUCCESS;
  }
};

// ------------------------------------------------------------------ open

namespace {
boost::system::result<std::unique_ptr<store>, error> fail(sys_ec ec, std::string msg) {
  return error{ec, std::move(msg)};
}
} // namespace

store::store(std::unique_ptr<impl> p) : impl_(std::move(p)) {}

void store::expire_waiting() {
  std::unique_lock lk(impl_->q_mu);
  if (impl_->stopping || !impl_->writer.joinable()) return;
  impl_->expire_requested = true;
  impl_->expiring = true;
  impl_->q_cv.notify_all();
  impl_->expired_cv.wait(lk, [&] { return !impl_->expire_requested; });
}

store::~store() {
  {
    std::lock_guard lk(impl_->q_mu);
    impl_->stopping = true;
  }
  impl_->q_cv.notify_all();
  if (impl_->writer.joinable()) impl_->writer.join();
}

boost::system::result<std::unique_ptr<store>, error> store::open(store_options options) {
  namespace fs = std::filesystem;
  auto m = std::make_unique<impl>();
  m->opt = std::move(options);
  m->max_retry = m->opt.max_retry;
  m->retry_backoff = m->opt.retry_backoff;
  auto& o = m->opt;
  m->clk = o.clock ? o.clock : &util::system_clock_source::instance();
  const std::string dir = o.data_dir.string();
  if (o.node_id.empty() || o.node_id.size() > 64 || o.node_id.find(':') != std::string::npos)
    return fail(errc::invalid_argument, "node id \"" + o.node_id + "\" must be 1 to 64 characters without ':'");
  if (o.max_retry == 0) return fail(errc::invalid_argument, "max_retry must be at least 1");

  std::error_code fec;
  fs::create_directories(o.data_dir, fec);
  if (fec) return fail(errc::store_io, "cannot create data_dir " + dir + ": " + fec.message());
  const bool has_data = fs::exists(o.data_dir / "data.mdb");
  if (!has_data) {
    for (auto& e : fs::directory_iterator(o.data_dir, fec)) {
      auto n = e.path().filename().string();
      if (n != "lock.mdb" && n != "edgerelay.lock")
        return fail(errc::store_foreign, "data_dir " + dir + " is not empty (it holds \"" + n +
                                             "\") but has no edgerelay store; point data_dir at an empty "
                                             "directory or at an existing edgerelay data directory");
    }
  }
  m->lock_fd = ::open((o.data_dir / "edgerelay.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (m->lock_fd < 0) return fail(errc::store_io, "cannot open " + dir + "/edgerelay.lock: " + std::strerror(errno));
  if (::flock(m->lock_fd, LOCK_EX | LOCK_NB) != 0)
    return fail(errc::store_io, "data_dir " + dir + " is in use by another edgerelay process; stop it first");

  const std::uint64_t derived = 2 * o.max_bytes + 2 * o.deadletter_max_bytes + (256ull << 20);
  m->max_map = o.max_map_bytes ? o.max_map_bytes : derived;
  std::uint64_t file_size = has_data ? fs::file_size(o.data_dir / "data.mdb", fec) : 0;
  m->map_size = std::min<std::uint64_t>(m->max_map, std::max<std::uint64_t>(64ull << 20, file_size * 2));
  m->map_size = std::max<std::uint64_t>(m->map_size, file_size);

  int rc = mdb_env_create(&m->env);
  if (rc) return fail(errc::store_io, "mdb_env_create: " + describe(rc));
  mdb_env_set_maxdbs(m->env, 4096);
  mdb_env_set_maxreaders(m->env, 1024);
  mdb_env_set_mapsize(m->env, m->map_size);
  unsigned flags = MDB_NOTLS | (o.sync == sync_mode::none ? MDB_NOSYNC : 0u);
  rc = mdb_env_open(m->env, dir.c_str(), flags, 0640);
  if (rc) {
    mdb_env_close(m->env);
    m->env = nullptr;
    if (rc == MDB_INVALID)
      return fail(errc::store_corrupt, dir + "/data.mdb is not a valid LMDB file (damaged or something else); "
                                             "move the directory aside and restore it from a backup, or point "
                                             "data_dir at a new directory to start empty");
    if (rc == MDB_VERSION_MISMATCH)
      return fail(errc::store_foreign,
                  dir +
                      "/data.mdb was written by an incompatible LMDB version; open it with the edgerelay that made it");
    return fail(lmdb_ec(rc), "cannot open the store in " + dir + ": " + describe(rc));
  }
  {
    MDB_envinfo info;
    mdb_env_info(m->env, &info);
    m->map_size = info.me_mapsize;
  }

  txn w;
  rc = txn::begin(m->env, 0, w);
  if (rc) return fail(lmdb_ec(rc), "cannot begin a transaction in " + dir + ": " + describe(rc));
  MDB_dbi main_db;
  rc = mdb_dbi_open(w.get(), nullptr, 0, &main_db);
  if (rc) return fail(lmdb_ec(rc), "cannot read " + dir + "/data.mdb: " + describe(rc));
  MDB_stat st;
  mdb_stat(w.get(), main_db, &st);
  std::string_view probe;
  bool has_meta = w.get(main_db, "meta", probe) == MDB_SUCCESS;
  if (st.ms_entries > 0 && !has_meta)
    return fail(errc::store_foreign, dir + " holds an LMDB environment that edgerelay did not create; point "
                                           "data_dir at an empty directory or at an edgerelay data directory");
  auto open_db = [&](const char* name, MDB_dbi& dbi) { return mdb_dbi_open(w.get(), name, MDB_CREATE, &dbi); };
  for (auto [name, dbi] : {std::pair{"meta", &m->meta},
                           {"peers", &m->peers_db},
                           {"counters", &m->counters_db},
                           {"deadletter", &m->dl_db},
                           {"evictions", &m->evj_db},
                           {"ids", &m->ids_db},
                           {"ids_by_time", &m->ids_t_db},
                           // Added after format 1 shipped; created on first open by a version
                           // that has them, so older data directories open unchanged.
                           {"quota", &m->quota_db},
                           {"records", &m->records_db},
                           {"id_ranges", &m->id_ranges_db}}) {
    rc = open_db(name, *dbi);
    if (rc) {
      if (rc == MDB_INCOMPATIBLE)
        return fail(errc::store_foreign,
                    dir + " holds an LMDB environment that edgerelay did not create (\"" + name + "\" is not a table)");
      return fail(lmdb_ec(rc), "cannot open table " + std::string(name) + " in " + dir + ": " + describe(rc));
    }
  }
  std::string_view v;
  if (w.get(m->meta, "magic", v) == MDB_SUCCESS) {
    if (v != magic) return fail(errc::store_foreign, dir + " holds an LMDB environment that edgerelay did not create");
    std::string_view fv;
    if (w.get(m->meta, "format", fv) != MDB_SUCCESS || fv.size() != 4)
      return fail(errc::store_corrupt, dir + ": store format record missing; restore the directory from a backup");
    auto format = util::get_be32(reinterpret_cast<const unsigned char*>(fv.data()));
    if (format > format_version)
      return fail(errc::store_foreign, dir + " was written by a newer edgerelay (store format " +
                                           std::to_string(format) + ", this one reads up to " +
                                           std::to_string(format_version) + "); upgrade edgerelay");
    std::string_view nid;
    if (w.get(m->meta, "node_id", nid) == MDB_SUCCESS && nid != o.node_id)
      return fail(errc::store_foreign, dir + " belongs to node \"" + std::string(nid) + "\", not \"" + o.node_id +
                                           "\"; segment ids depend on the node id, so use that node's config or "
                                           "a new data_dir");
    if (w.get(m->meta, "globals", v) == MDB_SUCCESS) m->cglob = globals::decode(v);
    if (format < format_version) {
      std::string f(4, '\0');
      util::put_be32(reinterpret_cast<unsigned char*>(f.data()), format_version);
      rc = w.put(m->meta, "format", f);
      if (rc) return fail(lmdb_ec(rc), "cannot upgrade the store format in " + dir + ": " + describe(rc));
    }
  } else if (has_meta) {
    return fail(errc::store_foreign, dir + " holds an LMDB environment that edgerelay did not create");
  } else {
    std::string f(4, '\0');
    util::put_be32(reinterpret_cast<unsigned char*>(f.data()), format_version);
    for (auto [k, val] :
         {std::pair<std::string_view, std::string_view>{"magic", magic}, {"format", f}, {"node_id", o.node_id}}) {
      rc = w.put(m->meta, k, val);
      if (rc) return fail(lmdb_ec(rc), "cannot initialise the store in " + dir + ": " + describe(rc));
    }
    rc = w.put(m->meta, "globals", m->cglob.encode());
    if (rc) return fail(lmdb_ec(rc), "cannot initialise the store in " + dir + ": " + describe(rc));
  }
  // Peers and their counters.
  {
    cursor c;
    cursor::open(w, m->peers_db, c);
    std::string_view kv, vv;
    std::vector<std::pair<peer_id, std::string>> found;
    for (int r2 = c.get(kv, vv, MDB_FIRST); r2 == MDB_SUCCESS; r2 = c.get(kv, vv, MDB_NEXT)) {
      if (vv.size() != 4) return fail(errc::store_corrupt, dir + ": peer table damaged; restore from a backup");
      found.emplace_back(util::get_be32(reinterpret_cast<const unsigned char*>(vv.data())), std::string(kv));
    }
    std::sort(found.begin(), found.end());
    for (std::size_t i = 0; i < found.size(); ++i) {
      if (found[i].first != i + 1)
        return fail(errc::store_corrupt, dir + ": peer ids not dense; restore from a backup");
      auto p = std::make_unique<peer_rt>();
      p->id = found[i].first;
      p->name = found[i].second;
      rc = mdb_dbi_open(w.get(), ("q:" + p->name).c_str(), MDB_CREATE, &p->dbi);
      if (rc) return fail(lmdb_ec(rc), dir + ": cannot open the queue of peer " + p->name + ": " + describe(rc));
      std::string_view cv;
      peer_counters pc;
      if (w.get(m->counters_db, be32key(p->id), cv) == MDB_SUCCESS) pc = counters_codec::decode(cv);
      m->committed.push_back(pc);
      // Keys only grow: make sure the next key is past everything stored.
      cursor qc;
      cursor::open(w, p->dbi, qc);
      std::string_view lk, lv;
      if (qc.get(lk, lv, MDB_LAST) == MDB_SUCCESS) m->cglob.gseq = std::max(m->cglob.gseq, key64(lk) + 1);
      m->by_name.emplace(p->name, p->id);
      m->peers.push_back(std::move(p));
    }
  }
  {
    MDB_stat ids_st{};
    rc = mdb_stat(w.get(), m->ids_db, &ids_st);
    if (rc) return fail(lmdb_ec(rc), "cannot read the received-id table in " + dir + ": " + describe(rc));
    m->ids_db_used = ids_st.ms_entries > 0;
  }
  // New ids_by_time keys go after every stored one (a format 1 key, time ‖ id,
  // sorts after every time ‖ sequence key of the same millisecond).
  {
    cursor c;
    cursor::open(w, m->ids_t_db, c);
    std::string_view lk, lv;
    if (c.get(lk, lv, MDB_LAST) == MDB_SUCCESS && lk.size() >= 8) {
      m->idt_ms = static_cast<std::int64_t>(key64(lk.substr(0, 8)));
      if (lk.size() == 16 && !lv.empty())
        m->idt_seq = key64(lk.substr(8));
      else
        ++m->idt_ms;
    }
  }
  rc = w.commit();
  if (rc) return fail(lmdb_ec(rc), "cannot commit the store's opening transaction in " + dir + ": " + describe(rc));

  m->locate_map();
  impl* raw = m.get();
  std::unique_ptr<store> s(new store(std::move(m)));
  raw->writer = std::thread([raw] {
    util::name_this_thread("er-store-writer");
    raw->run_writer();
  });
  return s;
}

// ------------------------------------------------------------------ API

result<peer_id> store::add_peer(std::string_view name) {
  if (name.empty() || name.size() > 200) return errc::invalid_argument;
  if (auto p = find_peer(name)) return *p;
  std::promise<result<peer_id>> pr;
  auto r = std::make_unique<request>();
  r->k = request::kind::add_peer;
  r->name = std::string(name);
  r->on_peer = [&](result<peer_id> v) { pr.set_value(v); };
  auto f = pr.get_future();
  impl_->submit(std::move(r));
  return f.get();
}

std::optional<peer_id> store::find_peer(std::string_view name) const {
  std::shared_lock lk(impl_->peers_mu);
  auto it = impl_->by_name.find(std::string(name));
  if (it == impl_->by_name.end()) return std::nullopt;
  return it->second;
}

std::vector<std::pair<peer_id, std::string>> store::peers() const {
  std::shared_lock lk(impl_->peers_mu);
  std::vector<std::pair<peer_id, std::string>> out;
  for (auto& p : impl_->peers)
    out.emplace_back(p->id, p->name);
  return out;
}

void store::enqueue(std::vector<segment_in> segments, enqueue_callback done) {
  auto refuse = [&](errc e, std::string msg) {
    enqueue_result r;
    r.ec = e;
    r.message = std::move(msg);
    impl_->refused_early += segments.size();
    if (done) done(std::move(r));
  };
  if (segments.empty()) return refuse(errc::invalid_argument, "an enqueue needs at least one segment");
  const auto npeers = [&] {
    std::shared_lock lk(impl_->peers_mu);
    return impl_->peers.size();
  }();
  for (std::size_t i = 0; i < segments.size(); ++i) {
    auto& s = segments[i];
    auto where = [i] { return "segment " + std::to_string(i) + ": "; };
    if (!valid_stream_name(s.stream))
      return refuse(errc::bad_stream_name,
                    where() + "stream \"" + std::string(s.stream.substr(0, 80)) + "\" must match [a-z0-9._-]{1,64}");
    if (s.payload.empty())
      return refuse(errc::invalid_argument, where() + "payload is empty (segments are 1 byte or more)");
    if (s.payload.size() > impl_->opt.max_segment_bytes)
      return refuse(errc::segment_too_large, where() + "payload of " + std::to_string(s.payload.size()) +
                                                 " bytes exceeds max_segment_bytes (" +
                                                 std::to_string(impl_->opt.max_segment_bytes) + ")");
    if (s.peers.empty()) return refuse(errc::unknown_peer, where() + "routed to no peer");
    for (auto p : s.peers)
      if (p < 1 || p > npeers)
        return refuse(errc::unknown_peer, where() + "routed to unknown peer id " + std::to_string(p));
    if (s.id.size() > 200) return refuse(errc::invalid_argument, where() + "id longer than 200 bytes");
    if (s.checksum && !s.checksum_verified && *s.checksum != util::checksum(s.payload))
      return refuse(errc::checksum_mismatch, where() + "checksum " + util::checksum_hex(*s.checksum) +
                                                 " does not match the payload (" +
                                                 util::checksum_hex(util::checksum(s.payload)) + ")");
  }
  auto r = std::make_unique<request>();
  r->k = request::kind::enqueue;
  r->segs = std::move(segments);
  r->on_enqueue = std::move(done);
  if (impl_->opt.overflow == overflow_policy::block) r->deadline = impl_->clk->steady_now() + impl_->opt.block_timeout;
  impl_->submit(std::move(r));
}

void store::ack(peer_id peer, std::vector<std::uint64_t> keys, done_callback done, failed_ack_leases on_failure) {
  auto r = std::make_unique<request>();
  r->k = request::kind::ack;
  r->peer = peer;
  r->keys = std::move(keys);
  r->on_done = std::move(done);
  r->keep_leases_on_failure = on_failure == failed_ack_leases::keep;
  impl_->submit(std::move(r));
}

void store::nack(peer_id peer, std::vector<std::uint64_t> keys, std::string error, done_callback done) {
  auto r = std::make_unique<request>();
  r->k = request::kind::nack;
  r->peer = peer;
  r->keys = std::move(keys);
  r->error = std::move(error);
  r->on_done = std::move(done);
  impl_->submit(std::move(r));
}

void store::reject(peer_id peer, std::vector<rejected_item> items, done_callback done) {
  auto r = std::make_unique<request>();
  r->k = request::kind::reject;
  r->peer = peer;
  r->rejects = std::move(items);
  r->on_done = std::move(done);
  impl_->submit(std::move(r));
}

namespace {
result<std::uint64_t> check_selector(const deadletter_selector& s) {
  int n = (s.all ? 1 : 0) + (s.older_than ? 1 : 0) + (s.ids.empty() ? 0 : 1);
  if (n != 1) return errc::invalid_argument;
  return 0;
}
} // namespace

void store::deadletter_retry(deadletter_selector sel, std::function<void(result<std::uint64_t>)> done) {
  if (auto c = check_selector(sel); !c) return done(c.error());
  auto r = std::make_unique<request>();
  r->k = request::kind::dl_retry;
  r->sel = std::move(sel);
  r->on_count = std::move(done);
  impl_->submit(std::move(r));
}

void store::deadletter_purge(deadletter_selector sel, std::function<void(result<std::uint64_t>)> done) {
  if (auto c = check_selector(sel); !c) return done(c.error());
  auto r = std::make_unique<request>();
  r->k = request::kind::dl_purge;
  r->sel = std::move(sel);
  r->on_count = std::move(done);
  impl_->submit(std::move(r));
}

void store::maintenance(std::function<void(result<maintenance_result>)> done) {
  auto r = std::make_unique<request>();
  r->k = request::kind::maintenance;
  r->on_maint = std::move(done);
  impl_->submit(std::move(r));
}

void store::save_quota_state(peer_id peer, std::int64_t period_start_unix_ms, std::uint64_t used_bytes,
                             done_callback done) {
  auto r = std::make_unique<request>();
  r->k = request::kind::quota_save;
  r->peer = peer;
  r->quota_period_ms = period_start_unix_ms;
  r->quota_used = used_bytes;
  r->on_done = std::move(done);
  impl_->submit(std::move(r));
}

void store::put_record(std::string key, std::string value, done_callback done) {
  auto r = std::make_unique<request>();
  r->k = request::kind::record_put;
  if (key.empty() || key.size() > 255) {
    r->ec = errc::invalid_argument;
    if (done) done(r->ec);
    return;
  }
  r->record_key = std::move(key);
  r->record_value = std::move(value);
  r->on_done = std::move(done);
  impl_->submit(std::move(r));
}

result<std::optional<std::string>> store::get_record(std::string_view key) const {
  if (key.empty() || key.size() > 255) return errc::invalid_argument;
  std::shared_lock map_lk(impl_->map_mu);
  txn t;
  int rc = impl_->readers.begin(impl_->env, t);
  if (rc) return lmdb_ec(rc);
  std::string_view v;
  rc = t.get(impl_->records_db, key, v);
  if (rc == MDB_NOTFOUND) return std::optional<std::string>{};
  if (rc) return lmdb_ec(rc);
  return std::optional<std::string>(std::string(v));
}

void store::set_fate_observer(std::string stream, fate_observer obs) {
  std::shared_ptr<const impl::fate_watch> w;
  if (!stream.empty() && obs)
    w = std::make_shared<const impl::fate_watch>(impl::fate_watch{std::move(stream), std::move(obs)});
  std::lock_guard lk(impl_->fate_mu);
  impl_->fate_w = std::move(w);
}

result<std::optional<quota_record>> store::load_quota_state(peer_id peer) const {
  if (!impl_->peer(peer)) return errc::unknown_peer;
  std::shared_lock map_lk(impl_->map_mu);
  txn t;
  int rc = impl_->readers.begin(impl_->env, t);
  if (rc) return lmdb_ec(rc);
  std::string_view v;
  rc = t.get(impl_->quota_db, be32key(peer), v);
  if (rc == MDB_NOTFOUND) return std::optional<quota_record>{};
  if (rc) return lmdb_ec(rc);
  auto q = quota_codec::decode(v);
  if (!q) return errc::store_corrupt;
  return q;
}

namespace {
template <class T, class F>
T wait_for(F&& start) {
  std::promise<T> p;
  auto f = p.get_future();
  start([&p](T v) { p.set_value(std::move(v)); });
  return f.get();
}
} // namespace

enqueue_result store::enqueue_wait(std::vector<segment_in> segments) {
  return wait_for<enqueue_result>([&](auto cb) { enqueue(std::move(segments), cb); });
}
sys_ec store::ack_wait(peer_id peer, std::vector<std::uint64_t> keys, failed_ack_leases on_failure) {
  return wait_for<sys_ec>([&](auto cb) { ack(peer, std::move(keys), cb, on_failure); });
}
sys_ec store::nack_wait(peer_id peer, std::vector<std::uint64_t> keys, std::string error) {
  return wait_for<sys_ec>([&](auto cb) { nack(peer, std::move(keys), std::move(error), cb); });
}
sys_ec store::reject_wait(peer_id peer, std::vector<rejected_item> items) {
  return wait_for<sys_ec>([&](auto cb) { reject(peer, std::move(items), cb); });
}
result<std::uint64_t> store::deadletter_retry_wait(deadletter_selector sel) {
  return wait_for<result<std::uint64_t>>([&](auto cb) { deadletter_retry(std::move(sel), cb); });
}
result<std::uint64_t> store::deadletter_purge_wait(deadletter_selector sel) {
  return wait_for<result<std::uint64_t>>([&](auto cb) { deadletter_purge(std::move(sel), cb); });
}
result<maintenance_result> store::maintenance_wait() {
  return wait_for<result<maintenance_result>>([&](auto cb) { maintenance(cb); });
}
sys_ec store::save_quota_state_wait(peer_id peer, std::int64_t period_start_unix_ms, std::uint64_t used_bytes) {
  return wait_for<sys_ec>([&](auto cb) { save_quota_state(peer, period_start_unix_ms, used_bytes, cb); });
}
sys_ec store::put_record_wait(std::string key, std::string value) {
  return wait_for<sys_ec>([&](auto cb) { put_record(std::move(key), std::move(value), cb); });
}

result<batch> store::read_batch(peer_id peer, std::size_t max_segments, std::uint64_t max_bytes) {
  batch out;
  out.peer = peer;
  // The segments view into buffer, and the batch is moved on return: a
  // heap buffer keeps its address across moves, a short (SSO) string does not.
  out.buffer.reserve(64);
  auto r = read_batch_visit(peer, max_segments, max_bytes, [&](std::span<const segment_out> segs) {
    std::size_t n = 0;
    for (auto& g : segs)
      n += g.id.size() + g.stream.size() + g.payload.size();
    out.buffer.reserve(std::max<std::size_t>(n, 64)); // once, to the exact size: the views stay valid
    out.segments.reserve(segs.size());
    auto take = [&](std::string_view v) {
      std::string_view at(out.buffer.data() + out.buffer.size(), v.size());
      out.buffer.append(v);
      return at;
    };
    for (auto& g : segs) {
      segment_out s = g;
      s.id = take(g.id);
      s.stream = take(g.stream);
      s.payload = take(g.payload);
      out.segments.push_back(s);
    }
  });
  if (!r) return r.error();
  out.payload_bytes = r->payload_bytes;
  out.next_ready = r->next_ready;
  return out;
}

result<store::visit_result> store::read_batch_visit(peer_id peer, std::size_t max_segments, std::uint64_t max_bytes,
                                                    const std::function<void(std::span<const segment_out>)>& visit) {
  peer_rt* p = impl_->peer(peer);
  if (!p) return errc::unknown_peer;
  visit_result out;
  if (max_segments == 0) return out;
  std::shared_lock map_lk(impl_->map_mu);
  std::unique_lock lk(p->mu);
  txn t;
  cursor c;
  int rc = impl_->read_cursor(p->dbi, t, c);
  if (rc) return lmdb_ec(rc);
  const std::int64_t now = impl_->now_ms();
  // What the scan takes views into the map until the read txn ends.
  std::vector<segment_out> got;
  got.reserve(std::min<std::size_t>(max_segments, 4096));
  std::optional<std::uint64_t> first_skip;
  std::optional<std::int64_t> next_ready;
  std::optional<std::uint64_t> resume; // where the next scan starts when nothing was skipped
  std::size_t li = std::lower_bound(p->leased.begin(), p->leased.end(), p->cursor) - p->leased.begin();
  std::string start = key64(p->cursor);
  std::string_view kv = start, vv;
  std::size_t scanned = 0;
  std::uint64_t scanned_bytes = 0;
  for (rc = c.get(kv, vv, MDB_SET_RANGE); rc == MDB_SUCCESS; rc = c.get(kv, vv, MDB_NEXT)) {
    std::uint64_t key = key64(kv);
    scanned_bytes += vv.size();
    if (++scanned > max_read_scan) {
      resume = key;
      break;
    }
    resume = key + 1;
    while (li < p->leased.size() && p->leased[li] < key)
      ++li;
    if (li < p->leased.size() && p->leased[li] == key) continue;
    std::int64_t next_ms;
    if (!detail::decode_next_attempt(vv, next_ms)) return errc::store_corrupt;
    if (next_ms > now) {
      if (!first_skip) first_skip = key;
      next_ready = next_ready ? std::min(*next_ready, next_ms) : next_ms;
      continue;
    }
    auto rec = detail::decode_record(vv);
    if (!rec) return errc::store_corrupt;
    got.push_back({key, rec->id, rec->stream, rec->created_ms, rec->checksum, rec->attempts, rec->payload});
    out.payload_bytes += rec->payload.size();
    if (got.size() >= max_segments || out.payload_bytes >= max_bytes) break;
  }
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return lmdb_ec(rc);
  // Every key below the cursor is leased or gone; a segment waiting for its
  // backoff holds the cursor so that later scans come back to it.
  if (first_skip)
    p->cursor = std::max(p->cursor, *first_skip);
  else if (resume)
    p->cursor = std::max(p->cursor, *resume);
  std::vector<std::uint64_t> keys;
  keys.reserve(got.size());
  for (auto& g : got)
    keys.push_back(g.key);
  sorted_insert(p->leased, std::move(keys));
  lk.unlock();
  // Leased: no other read returns them, and the read txn's snapshot keeps
  // the views valid whatever the writer commits meanwhile.
  out.segments = got.size();
  if (!got.empty()) visit(std::span<const segment_out>(got));
  t.abort();
  if (impl_->read_since_trim.fetch_add(scanned_bytes) + scanned_bytes >= trim_every_bytes) {
    impl_->read_since_trim = 0;
    impl_->trim_map();
  }
  if (got.empty() && next_ready) out.next_ready = util::from_unix_ms(*next_ready);
  return out;
}

void store::set_direct_sink(peer_id peer, std::shared_ptr<direct_sink> sink) {
  std::lock_guard lk(impl_->direct_mu);
  if (sink)
    impl_->direct_sinks[peer] = std::move(sink);
  else
    impl_->direct_sinks.erase(peer);
}

void store::recover_direct(peer_id peer, std::vector<std::string> ids,
                           std::function<void(result<std::uint64_t>)> done) {
  auto r = std::make_unique<request>();
  r->k = request::kind::direct_recover;
  r->peer = peer;
  r->ids = std::move(ids);
  r->on_count = std::move(done);
  impl_->submit(std::move(r));
}

result<std::uint64_t> store::recover_direct_wait(peer_id peer, std::vector<std::string> ids) {
  std::promise<result<std::uint64_t>> pr;
  auto f = pr.get_future();
  recover_direct(peer, std::move(ids), [&](result<std::uint64_t> v) { pr.set_value(v); });
  return f.get();
}

void store::fail_next_commits_for_test(unsigned n, int err, commit_fault which) {
  impl_->fail_commit_errno_for_test = err;
  impl_->fail_only_acks_for_test = which == commit_fault::with_ack;
  impl_->fail_commits_for_test = n;
}
unsigned store::commit_faults_pending_for_test() const { return impl_->fail_commits_for_test.load(); }

void store::release(peer_id peer, std::span<const std::uint64_t> keys) {
  peer_rt* p = impl_->peer(peer);
  if (!p || keys.empty()) return;
  std::lock_guard lk(p->mu);
  std::vector<std::uint64_t> k(keys.begin(), keys.end());
  p->cursor = std::min(p->cursor, *std::min_element(k.begin(), k.end()));
  sorted_erase(p->leased, std::move(k));
}

result<deadletter_page> store::deadletter_list(const deadletter_filter& f) const {
  std::shared_lock map_lk(impl_->map_mu);
  txn t;
  cursor c;
  int rc = impl_->read_cursor(impl_->dl_db, t, c);
  if (rc) return lmdb_ec(rc);
  std::optional<peer_id> want_peer;
  if (f.peer) {
    want_peer = find_peer(*f.peer);
    if (!want_peer) return deadletter_page{};
  }
  deadletter_page page;
  std::string start = key64(f.after_key + 1);
  std::string_view kv = start, vv;
  for (rc = c.get(kv, vv, MDB_SET_RANGE); rc == MDB_SUCCESS; rc = c.get(kv, vv, MDB_NEXT)) {
    auto d = detail::decode_deadletter(vv);
    auto rec = d ? detail::decode_record(d->record) : std::nullopt;
    if (!d || !rec) return errc::store_corrupt;
    if (want_peer && d->peer != *want_peer) continue;
    if (f.stream && rec->stream != *f.stream) continue;
    if (f.reason && d->reason != *f.reason) continue;
    if (page.entries.size() == f.limit) {
      page.next_after = page.entries.back().key;
      break;
    }
    deadletter_entry e;
    e.key = key64(kv);
    e.id = rec->id;
    {
      std::shared_lock lk(impl_->peers_mu);
      if (d->peer >= 1 && d->peer <= impl_->peers.size()) e.peer = impl_->peers[d->peer - 1]->name;
    }
    e.stream = rec->stream;
    e.reason = d->reason;
    e.last_error = rec->last_error;
    e.created_ms = rec->created_ms;
    e.deadlettered_ms = d->deadlettered_ms;
    e.attempts = rec->attempts;
    e.bytes = rec->payload.size();
    e.checksum = rec->checksum;
    page.entries.push_back(std::move(e));
  }
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return lmdb_ec(rc);
  return page;
}

result<std::vector<eviction_record>> store::evictions(std::uint64_t after_seq, std::size_t limit) const {
  std::shared_lock map_lk(impl_->map_mu);
  txn t;
  cursor c;
  int rc = impl_->read_cursor(impl_->evj_db, t, c);
  if (rc) return lmdb_ec(rc);
  std::vector<eviction_record> out;
  std::string start = key64(after_seq + 1);
  std::string_view kv = start, vv;
  for (rc = c.get(kv, vv, MDB_SET_RANGE); rc == MDB_SUCCESS && out.size() < limit; rc = c.get(kv, vv, MDB_NEXT)) {
    util::reader r(vv);
    eviction_record e;
    e.seq = key64(kv);
    peer_id pid = r.u32();
    e.at_ms = static_cast<std::int64_t>(r.u64());
    e.bytes = r.u64();
    e.id = std::string(r.bytes(r.u8()));
    e.stream = std::string(r.bytes(r.u8()));
    if (!r.ok()) return errc::store_corrupt;
    {
      std::shared_lock lk(impl_->peers_mu);
      if (pid >= 1 && pid <= impl_->peers.size()) e.peer = impl_->peers[pid - 1]->name;
    }
    out.push_back(std::move(e));
  }
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return lmdb_ec(rc);
  return out;
}

result<store::oldest_result> store::oldest_created_ms(peer_id peer, std::size_t max_scan) const {
  peer_rt* p = impl_->peer(peer);
  if (!p) return errc::unknown_peer;
  std::shared_lock map_lk(impl_->map_mu);
  txn t;
  cursor c;
  int rc = impl_->read_cursor(p->dbi, t, c);
  if (rc) return lmdb_ec(rc);
  oldest_result out;
  std::string_view kv, vv;
  std::size_t seen = 0;
  for (rc = c.get(kv, vv, MDB_FIRST); rc == MDB_SUCCESS; rc = c.get(kv, vv, MDB_NEXT)) {
    if (seen++ == max_scan) {
      out.complete = false;
      break;
    }
    auto r = detail::decode_record(vv);
    if (!r) return errc::store_corrupt;
    if (!out.created_ms || r->created_ms < *out.created_ms) out.created_ms = r->created_ms;
  }
  if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return lmdb_ec(rc);
  return out;
}

store_stats store::stats() const {
  store_stats s;
  std::vector<peer_counters> pc;
  {
    std::lock_guard lk(impl_->stats_mu);
    pc = impl_->committed;
    s.accepted = impl_->cglob.accepted;
    s.duplicates = impl_->cglob.duplicates;
    s.rejected = impl_->cglob.rejected + impl_->refused_early.load();
    s.deadletter_segments = impl_->cglob.deadletter_segments;
    s.deadletter_bytes = impl_->cglob.deadletter_bytes;
    s.commits = impl_->commits;
    s.commits_direct_only = impl_->commits_direct_only;
  }
  std::shared_lock lk(impl_->peers_mu);
  for (std::size_t i = 0; i < impl_->peers.size() && i < pc.size(); ++i) {
    peer_stats ps;
    ps.id = impl_->peers[i]->id;
    ps.name = impl_->peers[i]->name;
    ps.counters = pc[i];
    {
      std::lock_guard pl(impl_->peers[i]->mu);
      ps.inflight = impl_->peers[i]->leased.size();
    }
    ps.direct_delivered = impl_->peers[i]->direct.load();
    s.queued_bytes += pc[i].queued_bytes;
    s.peers.push_back(std::move(ps));
  }
  s.capacity_bytes = impl_->opt.max_bytes;
  s.map_bytes = impl_->map_size;
  return s;
}

result<accounting_report> store::verify_accounting() const {
  std::shared_lock map_lk(impl_->map_mu);
  txn t;
  int rc = impl_->readers.begin(impl_->env, t);
  if (rc) return lmdb_ec(rc);
  accounting_report rep;
  std::vector<std::pair<peer_id, std::string>> ps = peers();
  std::vector<accounting_report::peer_diff> diffs(ps.size());
  for (std::size_t i = 0; i < ps.size(); ++i) {
    auto& d = diffs[i];
    d.peer = ps[i].second;
    std::string_view cv;
    if (t.get(impl_->counters_db, be32key(ps[i].first), cv) == MDB_SUCCESS) d.counters = counters_codec::decode(cv);
    cursor c;
    rc = cursor::open(t, impl_->peers[i]->dbi, c);
    if (rc) return lmdb_ec(rc);
    std::string_view kv, vv;
    for (rc = c.get(kv, vv, MDB_FIRST); rc == MDB_SUCCESS; rc = c.get(kv, vv, MDB_NEXT)) {
      ++d.counted_queued;
      d.counted_queued_bytes += vv.size();
    }
  }
  {
    cursor c;
    rc = cursor::open(t, impl_->dl_db, c);
    if (rc) return lmdb_ec(rc);
    std::string_view kv, vv;
    for (rc = c.get(kv, vv, MDB_FIRST); rc == MDB_SUCCESS; rc = c.get(kv, vv, MDB_NEXT)) {
      auto dl = detail::decode_deadletter(vv);
      if (!dl || dl->peer < 1 || dl->peer > diffs.size()) {
        rep.clean = false;
        rep.problems.push_back("dead-letter entry " + std::to_string(key64(kv)) + " is unreadable");
        continue;
      }
      ++diffs[dl->peer - 1].counted_deadletter;
      diffs[dl->peer - 1].counted_deadletter_bytes += vv.size();
    }
  }
  for (auto& d : diffs) {
    auto& c = d.counters;
    d.loss = static_cast<std::int64_t>(c.routed) -
             static_cast<std::int64_t>(c.delivered + c.queued + c.deadletter + c.evicted + c.purged);
    auto check = [&](bool ok, std::string what) {
      if (!ok) {
        rep.clean = false;
        rep.problems.push_back("peer " + d.peer + ": " + what);
      }
    };
    check(d.loss == 0, "routed " + std::to_string(c.routed) + " != delivered " + std::to_string(c.delivered) +
                           " + queued " + std::to_string(c.queued) + " + deadletter " + std::to_string(c.deadletter) +
                           " + evicted " + std::to_string(c.evicted) + " + purged " + std::to_string(c.purged) +
                           " (loss " + std::to_string(d.loss) + ")");
    check(c.queued == d.counted_queued, "queued counter " + std::to_string(c.queued) + " but " +
                                            std::to_string(d.counted_queued) + " segments in its queue");
    check(c.queued_bytes == d.counted_queued_bytes, "queued_bytes counter " + std::to_string(c.queued_bytes) + " but " +
                                                        std::to_string(d.counted_queued_bytes) + " bytes in its queue");
    check(c.deadletter == d.counted_deadletter, "deadletter counter " + std::to_string(c.deadletter) + " but " +
                                                    std::to_string(d.counted_deadletter) + " dead-letter entries");
    check(c.deadletter_bytes == d.counted_deadletter_bytes,
          "deadletter_bytes counter " + std::to_string(c.deadletter_bytes) + " but " +
              std::to_string(d.counted_deadletter_bytes) + " dead-letter bytes");
  }
  rep.peers = std::move(diffs);
  return rep;
}

const store_options& store::options() const noexcept { return impl_->opt; }

void store::set_retry_policy(std::uint32_t max_retry, backoff_policy backoff) {
  std::lock_guard lk(impl_->retry_mu);
  impl_->max_retry = std::max<std::uint32_t>(1, max_retry);
  impl_->retry_backoff = backoff;
}

void store::set_commit_observer(commit_observer obs) {
  std::lock_guard lk(impl_->q_mu);
  impl_->observer = std::move(obs);
}

void store::set_deadletter_observer(deadletter_observer obs) {
  std::lock_guard lk(impl_->q_mu);
  impl_->dl_observer = std::move(obs);
}

} // namespace edgerelay::queue
