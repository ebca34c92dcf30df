// Crash torture of the queue store (DESIGN.md §3; evidence claim RL-CRAS-01).
//
// Every cycle starts tests/helpers/store_torture_child on one data directory,
// which loads the store (8 producers, 2 consumers per peer that ack, nack,
// reject or release, a dead-letter retrier) and reports on stdout which
// enqueues committed (E), which acks it is about to submit (A) and which acks
// succeeded (D). The test kills the child with SIGKILL 50..400 ms after its
// start, reaps it, then opens the store itself and checks:
//
//   - the store opens, verify_accounting() is clean, no lease survived;
//   - every segment that is in a queue or in the dead-letter store is there
//     once per peer, its payload matches its checksum, and when the child
//     reported it, its checksum, size and routing are the reported ones;
//   - every (segment, peer) the test has ever known of — reported by an E line
//     or found by an earlier check — is in exactly one place: that peer's
//     queue, the dead-letter store, the eviction journal, purged by the test,
//     or delivered; "delivered" (gone without a trace) is accepted only if the
//     child printed A for it, and nothing comes back from a final state;
//   - a segment whose ack succeeded (D) is never found again, nor evicted;
//   - no segment id is assigned twice; the eviction journal has no gaps;
//   - counters: delivered >= D lines and <= A lines, evicted = journal
//     entries, purged = what the test purged, queued and deadletter = what the
//     scans found.
//
// State accumulates across cycles in the same directory. When the dead-letter
// store holds more than 16 MiB the test purges it (and counts those as purged).
//
// Cycles: EDGERELAY_TORTURE_CYCLES, default 30 (~7 s on 2 cores). Release runs
// use 1000 (~4 min on 2 cores, ~200 MB peak resident):
//   EDGERELAY_TORTURE_CYCLES=1000 build/bin/edgerelay_tests "store survives*"
// EDGERELAY_TORTURE_SEED fixes the kill times and the child's random choices
// (the interleaving still depends on the scheduler). On failure the data
// directory is kept and its path printed.

#include "queue/store.hpp"
#include "tests/support/torture_options.hpp"
#include "util/checksum.hpp"
#include "util/clock.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fcntl.h>
#include <filesystem>
#include <poll.h>
#include <random>
#include <spawn.h>
#include <string>
#include <string_view>
#include <sys/wait.h>
#include <system_error>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>

extern char** environ;

namespace {

namespace fs = std::filesystem;
namespace q = edgerelay::queue;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

using edgerelay::test::torture_options;

constexpr std::uint64_t purge_deadletter_above = 16ull << 20;
constexpr std::size_t npeers = 2;
const std::array<std::string, npeers> peer_names{"a", "b"};

int peer_index(std::string_view name) {
  for (std::size_t i = 0; i < npeers; ++i)
    if (name == peer_names[i]) return static_cast<int>(i);
  return -1;
}

std::uint64_t env_u64(const char* name, std::uint64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  std::uint64_t out = 0;
  std::string_view s(v);
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (ec != std::errc{} || p != s.data() + s.size()) FAIL(name << "=" << s << " is not a number");
  return out;
}

// "torture:<seq>" -> seq
bool parse_id(std::string_view id, std::uint64_t& seq) {
  constexpr std::string_view prefix = "torture:";
  if (!id.starts_with(prefix)) return false;
  id.remove_prefix(prefix.size());
  auto [p, ec] = std::from_chars(id.data(), id.data() + id.size(), seq);
  return ec == std::errc{} && p == id.data() + id.size() && seq > 0 && seq < (1ull << 32);
}

std::vector<std::string_view> fields(std::string_view line) {
  std::vector<std::string_view> out;
  while (!line.empty()) {
    auto sp = line.find(' ');
    out.push_back(line.substr(0, sp));
    if (sp == std::string_view::npos) break;
    line.remove_prefix(sp + 1);
  }
  return out;
}

// A child process whose stdout is a pipe to us. Destruction kills (SIGKILL)
// and reaps it if that has not happened yet, so no check can leak a child.
class child_process {
public:
  child_process(const std::string& exe, const std::vector<std::string>& args) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], STDOUT_FILENO);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(exe.c_str()));
    for (auto& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int rc = ::posix_spawn(&pid_, exe.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(p[1]);
    if (rc != 0) {
      ::close(p[0]);
      pid_ = -1;
      throw std::system_error(rc, std::generic_category(), "posix_spawn " + exe);
    }
    fd_ = p[0];
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
  }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  ~child_process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      reap();
    }
    if (fd_ >= 0) ::close(fd_);
  }

  int fd() const { return fd_; }
  void kill() {
    if (pid_ > 0) ::kill(pid_, SIGKILL);
  }
  // Waits for the child to end; returns its wait status.
  int reap() {
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    return status;
  }

private:
  pid_t pid_ = -1;
  int fd_ = -1;
};

// Splits a non-blocking byte stream into lines; a final line without '\n'
// (cut short by the kill) is never delivered.
class line_reader {
public:
  // Reads what is available now; false at end of file.
  template <class F>
  bool pump(int fd, F&& on_line) {
    char buf[1 << 16];
    for (;;) {
      ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        pending_.append(buf, static_cast<std::size_t>(n));
        std::size_t start = 0;
        for (auto nl = pending_.find('\n'); nl != std::string::npos; nl = pending_.find('\n', start)) {
          on_line(std::string_view(pending_).substr(start, nl - start));
          start = nl + 1;
        }
        pending_.erase(0, start);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      return false;
    }
  }
  std::size_t partial_bytes() const { return pending_.size(); }

private:
  std::string pending_;
};

// What the test knows about one origin sequence (segment id "torture:<seq>").
// Peer sets are bit masks: bit 0 is peer a, bit 1 peer b. 16 bytes: a
// 1,000-cycle run tracks millions of ids.
struct seg_track {
  std::uint64_t checksum = 0;    // from the E line
  std::uint32_t bytes = 0;       // from the E line
  std::uint8_t routed = 0;       // from the E line; 0: no E line seen
  std::uint8_t acked = 0;        // an A line was seen
  std::uint8_t done = 0;         // a D line was seen
  std::uint8_t seen : 2 = 0;     // found in a queue or the dead-letter store by a check
  std::uint8_t terminal : 2 = 0; // evicted, delivered or purged: must never be found again
  std::uint8_t evicted : 2 = 0;  // in the eviction journal
};
static_assert(sizeof(seg_track) == 16);

struct peer_totals {
  std::uint64_t a_lines = 0, d_lines = 0, e_pairs = 0, journal = 0, purged = 0, delivered_inferred = 0;
};

struct run_totals {
  std::uint64_t cycles = 0, started = 0, e_lines = 0, partial_lines = 0, purges = 0, max_queued = 0, max_deadletter = 0;
  double max_cycle_s = 0;
};

using pair_list = std::vector<std::pair<std::uint64_t, int>>; // (seq, peer index)

class torture {
public:
  explicit torture(fs::path dir) : dir_(std::move(dir)) {}

  // One cycle: run and kill the child, then check the store. Returns the problems found.
  std::vector<std::string> cycle(std::uint64_t child_seed, std::chrono::milliseconds kill_after) {
    problems_.clear();
    new_pairs_.clear();
    const auto t0 = steady::now();
    run_child(child_seed, kill_after);
    check_store();
    ++totals_.cycles;
    totals_.max_cycle_s = std::max(totals_.max_cycle_s, std::chrono::duration<double>(steady::now() - t0).count());
    return problems_;
  }

  const run_totals& totals() const { return totals_; }
  const std::array<peer_totals, npeers>& peers() const { return peer_; }

private:
  template <class... T>
  void problem(T&&... parts) {
    if (problems_.size() >= 200) return;
    std::string s;
    (s.append(parts), ...);
    problems_.push_back(std::move(s));
  }
  static std::string num(std::uint64_t v) { return std::to_string(v); }
  static std::string id(std::uint64_t seq) { return "torture:" + std::to_string(seq); }

  seg_track& track(std::uint64_t seq) {
    if (seq >= tracks_.size()) tracks_.resize(seq + 1);
    return tracks_[seq];
  }

  void run_child(std::uint64_t seed, std::chrono::milliseconds kill_after) {
    child_process child(EDGERELAY_BIN_DIR "/store_torture_child", {dir_.string(), std::to_string(seed)});
    line_reader reader;
    auto on_line = [&](std::string_view l) { handle_line(l); };
    const auto kill_at = steady::now() + kill_after;
    bool eof = false;
    for (auto now = steady::now(); !eof && now < kill_at; now = steady::now()) {
      pollfd pfd{child.fd(), POLLIN, 0};
      auto wait_ms = std::chrono::ceil<std::chrono::milliseconds>(kill_at - now).count();
      ::poll(&pfd, 1, static_cast<int>(wait_ms));
      eof = !reader.pump(child.fd(), on_line);
    }
    child.kill();
    // Everything written before the kill is still in the pipe: read it all.
    const auto drain_until = steady::now() + 10s;
    while (!eof && steady::now() < drain_until) {
      pollfd pfd{child.fd(), POLLIN, 0};
      ::poll(&pfd, 1, 100);
      eof = !reader.pump(child.fd(), on_line);
    }
    if (!eof) problem("the child's stdout did not reach end of file within 10 s of SIGKILL");
    if (reader.partial_bytes()) ++totals_.partial_lines;
    const int status = child.reap();
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
      problem("the child ended before it was killed: ",
              WIFEXITED(status) ? "exit status " + num(static_cast<std::uint64_t>(WEXITSTATUS(status)))
                                : "signal " + num(static_cast<std::uint64_t>(WTERMSIG(status))));
  }

  void handle_line(std::string_view line) {
    auto f = fields(line);
    if (f.empty()) return problem("empty line from the child");
    std::uint64_t seq = 0;
    if (f[0] == "S" && f.size() == 1) {
      ++totals_.started;
    } else if (f[0] == "E" && f.size() == 5 && parse_id(f[1], seq)) {
      std::uint8_t routed = f[2] == "a" ? 1 : f[2] == "b" ? 2 : f[2] == "ab" ? 3 : 0;
      std::uint64_t cks = 0, bytes = 0;
      auto [p1, e1] = std::from_chars(f[3].data(), f[3].data() + f[3].size(), cks, 16);
      auto [p2, e2] = std::from_chars(f[4].data(), f[4].data() + f[4].size(), bytes);
      if (!routed || e1 != std::errc{} || e2 != std::errc{}) return problem("malformed line: ", std::string(line));
      auto& t = track(seq);
      if (t.routed || t.seen || t.terminal)
        return problem(id(seq), ": the store assigned this id again (E line for an id already known)");
      t.routed = routed;
      t.checksum = cks;
      t.bytes = static_cast<std::uint32_t>(bytes);
      ++totals_.e_lines;
      for (int p = 0; p < static_cast<int>(npeers); ++p)
        if (routed & (1u << p)) {
          new_pairs_.emplace_back(seq, p);
          ++peer_[p].e_pairs;
        }
    } else if ((f[0] == "A" || f[0] == "D") && f.size() == 3 && peer_index(f[1]) >= 0 && parse_id(f[2], seq)) {
      const int p = peer_index(f[1]);
      const std::uint8_t bit = static_cast<std::uint8_t>(1u << p);
      auto& t = track(seq);
      if (f[0] == "A") {
        t.acked |= bit;
        ++peer_[p].a_lines;
      } else {
        if (!(t.acked & bit)) problem(id(seq), ": D line for peer ", f[1], " without an A line before it");
        t.done |= bit;
        ++peer_[p].d_lines;
      }
    } else if (f[0] == "X" || f[0] == "F") {
      problem("the child reported: ", std::string(line));
    } else {
      problem("malformed line from the child: ", std::string(line.substr(0, 200)));
    }
  }

  // An entry found in peer p's queue or the dead-letter store.
  void found(int p, std::uint64_t seq, std::uint64_t checksum, std::uint64_t bytes, const char* where) {
    ++present_[p][seq];
    auto& t = track(seq);
    if (!t.routed) return;
    if (!(t.routed & (1u << p)))
      problem(id(seq), " is in the ", where, " of peer ", peer_names[p], " but was routed only to ",
              t.routed == 1 ? "a" : "b");
    if (t.checksum != checksum)
      problem(id(seq), " in the ", where, " of peer ", peer_names[p], ": checksum ",
              edgerelay::util::checksum_hex(checksum), " but enqueued with ",
              edgerelay::util::checksum_hex(t.checksum));
    if (t.bytes != bytes)
      problem(id(seq), " in the ", where, " of peer ", peer_names[p], ": ", num(bytes),
              " payload bytes but enqueued with ", num(t.bytes));
  }

  void check_store() {
    edgerelay::util::manual_clock clk(std::chrono::system_clock::now() + 24h); // every backoff has expired
    auto opts = torture_options(dir_);
    opts.clock = &clk;
    auto opened = q::store::open(opts);
    if (!opened) return problem("the store did not open after the kill: ", opened.error().message);
    auto& st = **opened;

    auto before = st.stats();
    for (auto& ps : before.peers)
      if (ps.inflight) problem("peer ", ps.name, ": ", num(ps.inflight), " segments leased right after opening");

    auto acc = st.verify_accounting();
    if (!acc) return problem("verify_accounting failed: ", acc.error().message());
    for (auto& s : acc->problems)
      problem("verify_accounting: ", s);
    if (!acc->clean && acc->problems.empty()) problem("verify_accounting: not clean, no problem named");

    for (auto& m : present_)
      m.clear();
    std::array<std::uint64_t, npeers> queued{}, deadletter{};

    // The queues: lease everything (the clock is a day ahead, so all is ready), then release.
    for (std::size_t p = 0; p < npeers; ++p) {
      auto pid = st.find_peer(peer_names[p]);
      if (!pid) continue; // the first child may die before registering it
      std::vector<std::uint64_t> keys;
      for (;;) {
        auto b = st.read_batch(*pid, 4096, 64ull << 20);
        if (!b) {
          problem("read_batch(", peer_names[p], ") failed: ", b.error().message());
          break;
        }
        if (b->segments.empty()) {
          if (b->next_ready) problem("peer ", peer_names[p], ": a segment is not ready although every backoff expired");
          break;
        }
        for (auto& s : b->segments) {
          keys.push_back(s.key);
          std::uint64_t seq = 0;
          if (!parse_id(s.id, seq)) {
            problem("queue of peer ", peer_names[p], " holds a segment with id \"", std::string(s.id), "\"");
            continue;
          }
          if (edgerelay::util::checksum(s.payload) != s.checksum)
            problem(id(seq), " in the queue of peer ", peer_names[p], ": payload does not match its checksum");
          found(static_cast<int>(p), seq, s.checksum, s.payload.size(), "queue");
        }
      }
      queued[p] = keys.size();
      st.release(*pid, keys);
    }

    // The dead-letter store.
    pair_list dl_pairs;
    q::deadletter_filter f;
    f.limit = 1000;
    for (;;) {
      auto page = st.deadletter_list(f);
      if (!page) {
        problem("deadletter_list failed: ", page.error().message());
        break;
      }
      for (auto& e : page->entries) {
        std::uint64_t seq = 0;
        int p = peer_index(e.peer);
        if (p < 0 || !parse_id(e.id, seq)) {
          problem("dead-letter entry ", num(e.key), " has peer \"", e.peer, "\" and id \"", e.id, "\"");
          continue;
        }
        ++deadletter[p];
        dl_pairs.emplace_back(seq, p);
        found(p, seq, e.checksum, e.bytes, "dead-letter store");
      }
      if (!page->next_after) break;
      f.after_key = *page->next_after;
    }

    // The eviction journal, from where the previous check stopped.
    for (;;) {
      auto ev = st.evictions(journal_seq_, 4096);
      if (!ev) {
        problem("evictions failed: ", ev.error().message());
        break;
      }
      for (auto& e : *ev) {
        if (e.seq != journal_seq_ + 1)
          problem("eviction journal: entry ", num(e.seq), " follows ", num(journal_seq_), " (entries lost)");
        journal_seq_ = e.seq;
        std::uint64_t seq = 0;
        int p = peer_index(e.peer);
        if (p < 0 || !parse_id(e.id, seq)) {
          problem("eviction journal entry ", num(e.seq), " has peer \"", e.peer, "\" and id \"", e.id, "\"");
          continue;
        }
        const auto bit = static_cast<std::uint8_t>(1u << p);
        auto& t = track(seq);
        ++peer_[p].journal;
        if (t.done & bit)
          problem(id(seq), " for peer ", peer_names[p],
                  ": its ack succeeded (D) but it is in the eviction journal (entry ", num(e.seq), ")");
        else if (t.terminal & bit)
          problem(id(seq), " for peer ", peer_names[p], ": evicted (entry ", num(e.seq), ") after it was ",
                  (t.evicted & bit) ? "already evicted" : "delivered or purged");
        if (t.routed && !(t.routed & bit))
          problem(id(seq), ": evicted from peer ", peer_names[p], " but not routed to it");
        if (t.routed && t.bytes != e.bytes)
          problem(id(seq), ": journal says ", num(e.bytes), " bytes, enqueued with ", num(t.bytes));
        t.terminal |= bit;
        t.evicted |= bit;
      }
      if (ev->size() < 4096) break;
    }

    // Everything present is present once, and not after a final state.
    pair_list now_present;
    for (std::size_t p = 0; p < npeers; ++p) {
      const auto bit = static_cast<std::uint8_t>(1u << p);
      for (auto& [seq, n] : present_[p]) {
        auto& t = track(seq);
        if (n > 1)
          problem(id(seq), " is ", num(n), " times in the queue and dead-letter store of peer ", peer_names[p]);
        if (t.done & bit)
          problem(id(seq), " for peer ", peer_names[p], ": its ack succeeded (D) but it is still stored");
        else if (t.evicted & bit)
          problem(id(seq), " for peer ", peer_names[p], ": stored and also in the eviction journal");
        else if (t.terminal & bit)
          problem(id(seq), " for peer ", peer_names[p], ": stored again after it was delivered or purged");
        t.seen |= bit;
        now_present.emplace_back(seq, static_cast<int>(p));
      }
    }

    // Everything known and not present reached a final state: evicted, or delivered after an A line.
    for (auto* list : {&candidates_, &new_pairs_})
      for (auto [seq, p] : *list) {
        if (present_[p].count(seq)) continue;
        const auto bit = static_cast<std::uint8_t>(1u << p);
        auto& t = track(seq);
        if (t.terminal & bit) continue;
        t.terminal |= bit;
        if (t.acked & bit) {
          ++peer_[p].delivered_inferred;
          continue;
        }
        problem(id(seq), " for peer ", peer_names[p],
                " is lost: ", t.routed ? "its enqueue was acknowledged" : "it was stored",
                ", and it is in no queue, not dead-lettered, not evicted, and no ack was ever submitted");
      }
    candidates_ = std::move(now_present);

    // Counters against what the test saw.
    auto after = st.stats();
    for (auto& ps : after.peers) {
      int p = peer_index(ps.name);
      if (p < 0) {
        problem("unexpected peer \"", ps.name, "\"");
        continue;
      }
      auto& c = ps.counters;
      auto& pt = peer_[p];
      auto check = [&](bool ok, const std::string& what) {
        if (!ok) problem("peer ", ps.name, ": ", what);
      };
      check(c.delivered >= pt.d_lines,
            "delivered counter " + num(c.delivered) + " < " + num(pt.d_lines) + " acks reported successful (D)");
      check(c.delivered <= pt.a_lines,
            "delivered counter " + num(c.delivered) + " > " + num(pt.a_lines) + " acks submitted (A)");
      check(pt.delivered_inferred <= c.delivered,
            "delivered counter " + num(c.delivered) + " < " + num(pt.delivered_inferred) + " segments found delivered");
      check(c.evicted == pt.journal,
            "evicted counter " + num(c.evicted) + " != " + num(pt.journal) + " eviction journal entries");
      check(c.purged == pt.purged, "purged counter " + num(c.purged) + " != " + num(pt.purged) + " purged by the test");
      check(c.queued == queued[p], "queued counter " + num(c.queued) + " but read_batch returned " + num(queued[p]));
      check(c.deadletter == deadletter[p],
            "deadletter counter " + num(c.deadletter) + " but deadletter_list returned " + num(deadletter[p]));
      check(c.routed >= pt.e_pairs,
            "routed counter " + num(c.routed) + " < " + num(pt.e_pairs) + " acknowledged enqueues routed to it");
      totals_.max_queued = std::max(totals_.max_queued, c.queued);
    }
    totals_.max_deadletter = std::max(totals_.max_deadletter, after.deadletter_segments);

    // Keep the dead-letter store bounded; the test knows exactly what it purges.
    if (problems_.empty() && after.deadletter_bytes > purge_deadletter_above) {
      q::deadletter_selector all;
      all.all = true;
      auto n = st.deadletter_purge_wait(all);
      if (!n) return problem("deadletter_purge failed: ", n.error().message());
      if (*n != dl_pairs.size())
        problem("deadletter_purge removed ", num(*n), " entries, the listing had ", num(dl_pairs.size()));
      for (auto [seq, p] : dl_pairs) {
        track(seq).terminal |= static_cast<std::uint8_t>(1u << p);
        ++peer_[p].purged;
      }
      ++totals_.purges;
      auto acc2 = st.verify_accounting();
      if (!acc2 || !acc2->clean) problem("verify_accounting is not clean after the test's purge");
    }
  }

  fs::path dir_;
  std::vector<std::string> problems_;
  std::deque<seg_track> tracks_; // index: origin sequence
  std::array<std::unordered_map<std::uint64_t, std::uint32_t>, npeers> present_;
  pair_list candidates_; // present at the previous check
  pair_list new_pairs_;  // from this cycle's E lines
  std::uint64_t journal_seq_ = 0;
  std::array<peer_totals, npeers> peer_{};
  run_totals totals_;
};

// The data directory: removed after a passing run, kept (and named) after a failing one.
class torture_dir {
public:
  torture_dir() {
    std::string tmpl = (fs::temp_directory_path() / "edgerelay-torture-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) throw std::system_error(errno, std::generic_category(), "mkdtemp");
    path_ = tmpl;
  }
  ~torture_dir() {
    if (!keep_) {
      std::error_code ec;
      fs::remove_all(path_, ec);
    }
  }
  const fs::path& path() const { return path_; }
  void keep() { keep_ = true; }

private:
  fs::path path_;
  bool keep_ = false;
};

} // namespace

TEST_CASE("store survives repeated SIGKILL under load with nothing lost or duplicated", "[queue][crash]") {
  const std::uint64_t cycles = env_u64("EDGERELAY_TORTURE_CYCLES", 30);
  const std::uint64_t seed = env_u64("EDGERELAY_TORTURE_SEED", std::random_device{}());
  torture_dir dir;
  std::printf("crash torture: %llu cycles, EDGERELAY_TORTURE_SEED=%llu, dir %s\n",
              static_cast<unsigned long long>(cycles), static_cast<unsigned long long>(seed), dir.path().c_str());
  std::fflush(stdout);

  std::mt19937_64 rng(seed);
  torture t(dir.path());
  const auto t0 = steady::now();
  for (std::uint64_t c = 1; c <= cycles; ++c) {
    const std::uint64_t child_seed = rng() >> 1;
    const auto kill_after = std::chrono::milliseconds(50 + rng() % 351);
    auto problems = t.cycle(child_seed, kill_after);
    if (!problems.empty()) {
      dir.keep();
      std::string msg = "cycle " + std::to_string(c) + " (killed after " + std::to_string(kill_after.count()) +
                        " ms; data kept in " + dir.path().string() + "):";
      for (auto& p : problems)
        msg += "\n  " + p;
      FAIL(msg);
    }
  }
  const double secs = std::chrono::duration<double>(steady::now() - t0).count();
  const auto& tot = t.totals();
  std::printf("crash torture: %llu cycles in %.1f s (longest %.2f s), child opened the store in %llu, "
              "%llu enqueued segments reported, %llu cut-off last lines, %llu dead-letter purges, "
              "max queued %llu, max dead-lettered %llu\n",
              static_cast<unsigned long long>(tot.cycles), secs, tot.max_cycle_s,
              static_cast<unsigned long long>(tot.started), static_cast<unsigned long long>(tot.e_lines),
              static_cast<unsigned long long>(tot.partial_lines), static_cast<unsigned long long>(tot.purges),
              static_cast<unsigned long long>(tot.max_queued), static_cast<unsigned long long>(tot.max_deadletter));
  for (std::size_t p = 0; p < npeers; ++p) {
    auto& pt = t.peers()[p];
    std::printf("  peer %s: %llu routed enqueues, %llu A, %llu D, %llu found delivered, %llu evicted, %llu purged\n",
                peer_names[p].c_str(), static_cast<unsigned long long>(pt.e_pairs),
                static_cast<unsigned long long>(pt.a_lines), static_cast<unsigned long long>(pt.d_lines),
                static_cast<unsigned long long>(pt.delivered_inferred), static_cast<unsigned long long>(pt.journal),
                static_cast<unsigned long long>(pt.purged));
  }
  std::fflush(stdout);
  CHECK(tot.cycles == cycles);
}
