// The segment log (queue/detail/segment_log.hpp): frames in order across
// files and reopens, torn tails against damage, recycling, bad input, a reader
// beside the writer, random damage, and a writer killed while appending.
//
// The crash test's cycles: EDGERELAY_LOG_TORTURE_CYCLES (default 20, ~3 s);
// release runs use 500.

#include "queue/detail/segment_log.hpp"
#include "tests/support/result_printer.hpp"
#include "tests/support/temp_dir.hpp"
#include "util/errc.hpp"

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <fcntl.h>
#include <mutex>
#include <poll.h>
#include <random>
#include <string>
#include <sys/resource.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace edgerelay;
using queue::detail::log_frame;
using queue::detail::log_pos;
using queue::detail::segment_log;
using queue::detail::segment_log_options;

namespace {

constexpr std::uint64_t small_file = 64u << 10;

// The body of frame `key`: its size and bytes follow from the key alone.
std::string body_for(std::uint64_t key) {
  std::mt19937_64 g(key * 7919 + 1);
  std::string b(static_cast<std::size_t>(g() % 5000), '\0');
  for (auto& c : b)
    c = static_cast<char>(g());
  return b;
}

std::unique_ptr<segment_log> open_log(const std::filesystem::path& dir, std::size_t spares = 2) {
  segment_log_options o;
  o.dir = dir;
  o.file_bytes = small_file;
  o.spare_files = spares;
  auto r = segment_log::open(o);
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r);
  return std::move(*r);
}

boost::system::result<std::unique_ptr<segment_log>, error> try_open(const std::filesystem::path& dir) {
  segment_log_options o;
  o.dir = dir;
  o.file_bytes = small_file;
  return segment_log::open(o);
}

// Appends frame `key` (its body in two pieces).
log_pos append_key(segment_log& l, std::uint64_t key) {
  auto b = body_for(key);
  std::string_view v(b);
  std::string_view pieces[] = {v.substr(0, v.size() / 3), v.substr(v.size() / 3)};
  auto r = l.append(key, key, 1, pieces);
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r);
  return *r;
}

struct seen_frame {
  log_pos pos;
  std::uint64_t key;
  bool body_ok;
};

std::vector<seen_frame> read_all(const segment_log& l, log_pos from = {}) {
  std::vector<seen_frame> out;
  auto r = l.visit(from, [&](const log_frame& f) {
    out.push_back({f.pos, f.first_key, f.first_key == f.last_key && f.count == 1 && f.body == body_for(f.first_key)});
    return true;
  });
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r);
  CHECK(*r == l.end());
  return out;
}

void check_keys(const std::vector<seen_frame>& got, std::uint64_t first, std::uint64_t last) {
  REQUIRE(got.size() == last - first + 1);
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("frame " << i);
    CHECK(got[i].key == first + i);
    CHECK(got[i].body_ok);
  }
}

// Appends frames key + 1, key + 2, … until one fails (at most 100) and
// returns that failure's message (empty if none did); key ends as the last
// frame appended.
std::string append_until_failure(segment_log& l, std::uint64_t& key) {
  for (int i = 0; i < 100; ++i) {
    auto b = body_for(key + 1);
    std::string_view pieces[] = {b};
    auto r = l.append(key + 1, key + 1, 1, pieces);
    if (!r) return r.error().message;
    ++key;
  }
  return {};
}

std::filesystem::path file_of(const std::filesystem::path& dir, std::uint64_t seq) {
  char name[48];
  std::snprintf(name, sizeof name, "qlog-%016llx.erq", static_cast<unsigned long long>(seq));
  return dir / name;
}

void poke(const std::filesystem::path& p, std::uint64_t off, const std::string& bytes) {
  int fd = ::open(p.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  REQUIRE(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(off)) == static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

std::string peek(const std::filesystem::path& p, std::uint64_t off, std::size_t n) {
  std::string s(n, '\0');
  int fd = ::open(p.c_str(), O_RDONLY);
  REQUIRE(fd >= 0);
  REQUIRE(::pread(fd, s.data(), n, static_cast<off_t>(off)) == static_cast<ssize_t>(n));
  ::close(fd);
  return s;
}

void flip(const std::filesystem::path& p, std::uint64_t off) {
  auto b = peek(p, off, 1);
  b[0] = static_cast<char>(b[0] ^ 0x5a);
  poke(p, off, b);
}

} // namespace

TEST_CASE("segment log: frames come back in order across files and after a reopen", "[segment_log]") {
  test::temp_dir dir{"qlog"};
  std::vector<log_pos> pos;
  {
    auto l = open_log(dir.path());
    for (std::uint64_t k = 1; k <= 200; ++k)
      pos.push_back(append_key(*l, k));
    CHECK(l->stats().files > 5);
    check_keys(read_all(*l), 1, 200);
    check_keys(read_all(*l, pos[120]), 121, 200);
    // A visit that stops says where to go on from.
    std::size_t n = 0;
    auto next = l->visit({}, [&](const log_frame&) { return ++n < 50; });
    REQUIRE(next);
    check_keys(read_all(*l, *next), 51, 200);
  }
  auto l = open_log(dir.path());
  check_keys(read_all(*l), 1, 200);
  for (std::uint64_t k = 201; k <= 260; ++k)
    append_key(*l, k);
  l.reset();
  l = open_log(dir.path());
  check_keys(read_all(*l), 1, 260);
  CHECK(l->begin() == pos[0]);
}

TEST_CASE("segment log: a torn last frame ends the log and the next append takes its place", "[segment_log]") {
  test::temp_dir dir{"qlog"};
  log_pos torn;
  {
    auto l = open_log(dir.path());
    for (std::uint64_t k = 1; k <= 10; ++k)
      append_key(*l, k);
    torn = append_key(*l, 11);
  }
  // The 11th frame's last bytes never reached the disk.
  auto b = body_for(11);
  poke(file_of(dir.path(), torn.seq), torn.offset + segment_log::frame_header_bytes + b.size() - 4,
       std::string(4, '\0') == b.substr(b.size() - 4) ? std::string(4, '\1') : std::string(4, '\0'));
  {
    auto l = open_log(dir.path());
    CHECK(l->end() == torn);
    check_keys(read_all(*l), 1, 10);
    append_key(*l, 11);
    append_key(*l, 12);
  }
  auto l = open_log(dir.path());
  check_keys(read_all(*l), 1, 12);

  SECTION("a header cut short counts as torn too") {
    auto end = l->end();
    append_key(*l, 13);
    l.reset();
    poke(file_of(dir.path(), end.seq), end.offset + 20, std::string(28, '\0'));
    l = open_log(dir.path());
    CHECK(l->end() == end);
    check_keys(read_all(*l), 1, 12);
  }
}

TEST_CASE("segment log: damage with complete frames after it is refused, not cut off", "[segment_log]") {
  test::temp_dir dir{"qlog"};
  std::vector<log_pos> pos;
  {
    auto l = open_log(dir.path());
    for (std::uint64_t k = 1; k <= 100; ++k)
      pos.push_back(append_key(*l, k));
  }
  SECTION("in the newest file") {
    // The last file's first frame, with more frames after it in that file.
    auto last_seq = pos.back().seq;
    auto it = std::find_if(pos.begin(), pos.end(), [&](const log_pos& p) { return p.seq == last_seq; });
    REQUIRE(it + 2 < pos.end());
    flip(file_of(dir.path(), it->seq), it->offset + segment_log::frame_header_bytes);
    auto r = try_open(dir.path());
    REQUIRE_FALSE(r);
    CHECK(r.error().code == make_error_code(errc::store_corrupt));
    CHECK_THAT(r.error().message, Catch::Contains(file_of(dir.path(), it->seq).string()) &&
                                      Catch::Contains("damaged frame at offset " + std::to_string(it->offset)) &&
                                      Catch::Contains("complete frame after it"));
  }
  SECTION("an older file's trailer") {
    auto first = file_of(dir.path(), pos.front().seq);
    flip(first, small_file - 10);
    auto r = try_open(dir.path());
    REQUIRE_FALSE(r);
    CHECK(r.error().code == make_error_code(errc::store_corrupt));
    CHECK_THAT(r.error().message,
               Catch::Contains(first.string()) && Catch::Contains("end trailer is missing or damaged"));
  }
  SECTION("a frame of an older file is refused when it is read") {
    flip(file_of(dir.path(), pos[3].seq), pos[3].offset + segment_log::frame_header_bytes + 1);
    auto l = open_log(dir.path());
    std::uint64_t n = 0;
    auto r = l->visit({}, [&](const log_frame&) { return ++n, true; });
    REQUIRE_FALSE(r);
    CHECK(n == 3);
    CHECK(r.error().code == make_error_code(errc::store_corrupt));
    CHECK_THAT(r.error().message, Catch::Contains("damaged frame at offset " + std::to_string(pos[3].offset)));
    // What follows it can still be read from a later position.
    check_keys(read_all(*l, pos[4]), 5, 100);
  }
  SECTION("a file of another size") {
    ::truncate(file_of(dir.path(), pos.front().seq).c_str(), small_file / 2);
    auto r = try_open(dir.path());
    REQUIRE_FALSE(r);
    CHECK(r.error().code == make_error_code(errc::store_corrupt));
    CHECK_THAT(r.error().message, Catch::Contains("cut short or not a queue log file"));
  }
  SECTION("an older file's header") {
    auto first = file_of(dir.path(), pos.front().seq);
    flip(first, 3);
    auto r = try_open(dir.path());
    REQUIRE_FALSE(r);
    CHECK(r.error().code == make_error_code(errc::store_corrupt));
    CHECK_THAT(r.error().message, Catch::Contains(first.string()) && Catch::Contains("header is missing or damaged"));
    CHECK(std::filesystem::exists(first)); // refused, not recycled
  }
  SECTION("a damaged header of a file that holds frames") {
    flip(file_of(dir.path(), pos.back().seq), 3);
    auto r = try_open(dir.path());
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains("header is damaged but it holds frames"));
  }
}

TEST_CASE("segment log: released files are recycled and what they held never comes back", "[segment_log]") {
  test::temp_dir dir{"qlog"};
  std::vector<log_pos> pos;
  auto l = open_log(dir.path(), 2);
  for (std::uint64_t k = 1; k <= 300; ++k)
    pos.push_back(append_key(*l, k));
  const auto written = l->stats().files_written;
  // Keep from frame 200 on.
  REQUIRE(l->release_before(pos[199]));
  auto s = l->stats();
  CHECK(s.spares == 2);
  CHECK(l->begin().seq == pos[199].seq);
  auto first_kept = static_cast<std::uint64_t>(
      std::find_if(pos.begin(), pos.end(), [&](const log_pos& p) { return p.seq == pos[199].seq; }) - pos.begin());
  check_keys(read_all(*l), first_kept + 1, 300);
  // The next files are the recycled ones, not new ones.
  for (std::uint64_t k = 301; k <= 340; ++k)
    pos.push_back(append_key(*l, k));
  CHECK(l->stats().files_written == written);
  CHECK(l->stats().spares < 2);
  // A position in a released file is an error, not a silent skip.
  auto gone = l->visit(pos[0], [](const log_frame&) { return true; });
  REQUIRE_FALSE(gone);
  CHECK(gone.error().code == make_error_code(errc::not_found));
  // After a reopen: the same frames, none of what the recycled files held.
  l.reset();
  l = open_log(dir.path(), 2);
  check_keys(read_all(*l), first_kept + 1, 340);
  // Spares past spare_files are deleted.
  REQUIRE(l->release_before(l->end()));
  CHECK(l->stats().files == 1);
  CHECK(l->stats().spares == 2);
  std::size_t on_disk = 0;
  for (auto& e : std::filesystem::directory_iterator(dir.path()))
    on_disk += e.path().extension() == ".erq";
  CHECK(on_disk == 3);
}

TEST_CASE("segment log: a file being taken into use when the writer stopped goes back to the spares", "[segment_log]") {
  test::temp_dir dir{"qlog"};
  log_pos last;
  {
    auto l = open_log(dir.path());
    for (std::uint64_t k = 1; k <= 20; ++k)
      last = append_key(*l, k);
  }
  // Renamed to the next seq, its header still the one of its former use (or
  // not written at all).
  auto next = file_of(dir.path(), last.seq + 1);
  SECTION("former header") { std::filesystem::copy_file(file_of(dir.path(), last.seq), next); }
  SECTION("header never written") { test::write_file(next, std::string(small_file, '\0')); }
  {
    auto l = open_log(dir.path());
    check_keys(read_all(*l), 1, 20);
    CHECK(l->end() > last);
    CHECK(l->stats().spares == 1);
    for (std::uint64_t k = 21; k <= 60; ++k)
      append_key(*l, k);
  }
  auto l = open_log(dir.path());
  check_keys(read_all(*l), 1, 60);
}

TEST_CASE("segment log: a file start that fails is undone, appends go on, and the log opens", "[segment_log]") {
#if defined(__SANITIZE_ADDRESS__)
  // Under the sanitizers, their runtime needs a free descriptor in the
  // error path below (UBSan's first check of a type); the next test case
  // covers a failed start in every build.
  WARN("skipped in a sanitizer build: it runs out of file descriptors on purpose");
  return;
#endif
  test::temp_dir dir{"qlog"};
  std::uint64_t key = 0;
  {
    auto l = open_log(dir.path());
    for (int i = 0; i < 10; ++i)
      append_key(*l, ++key);
    REQUIRE(l->prepare_spare()); // the next start needs no new file
    // Room for one more descriptor (the file's), not for the directory's
    // that the start opens last, after the rename and the header.
    rlimit was{};
    REQUIRE(::getrlimit(RLIMIT_NOFILE, &was) == 0);
    const int lowest = ::dup(0);
    REQUIRE(lowest >= 0);
    ::close(lowest);
    rlimit low = was;
    low.rlim_cur = static_cast<rlim_t>(lowest + 1);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &low) == 0);
    const auto files_before = l->stats().files;
    const std::string failure = append_until_failure(*l, key);
    REQUIRE(::setrlimit(RLIMIT_NOFILE, &was) == 0);
    INFO(failure);
    CHECK_THAT(failure, Catch::Contains("queue log directory"));
    CHECK(l->stats().files == files_before);
    // The writer goes on with the next file.
    for (int i = 0; i < 40; ++i)
      append_key(*l, ++key);
  }
  auto l = open_log(dir.path());
  check_keys(read_all(*l), 1, key);
}

TEST_CASE("segment log: a spare cut short fails its start once, is dropped, and the log goes on", "[segment_log]") {
  test::temp_dir dir{"qlog"};
  std::uint64_t key = 0;
  {
    auto l = open_log(dir.path());
    for (int i = 0; i < 10; ++i)
      append_key(*l, ++key);
    REQUIRE(l->prepare_spare());
    std::size_t cut = 0;
    for (auto& e : std::filesystem::directory_iterator(dir.path()))
      if (e.path().filename().string().starts_with("qspare-")) {
        std::filesystem::resize_file(e.path(), small_file / 2);
        ++cut;
      }
    REQUIRE(cut >= 1);
    const std::string failure = append_until_failure(*l, key);
    INFO(failure);
    CHECK_THAT(failure, Catch::Contains("cut short"));
    // The next append writes a new spare instead of taking the bad one again.
    for (int i = 0; i < 60; ++i)
      append_key(*l, ++key);
  }
  auto l = open_log(dir.path());
  check_keys(read_all(*l), 1, key);
}

TEST_CASE("segment log: bad options and a frame too large get a clear error and change nothing", "[segment_log]") {
  test::temp_dir dir{"qlog"};
  segment_log_options o;
  o.dir = dir.path();
  o.file_bytes = 100000;
  auto bad = segment_log::open(o);
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == make_error_code(errc::invalid_argument));
  CHECK_THAT(bad.error().message, Catch::Contains("100000") && Catch::Contains("multiple of 4096"));

  auto l = open_log(dir.path());
  append_key(*l, 1);
  auto end = l->end();
  std::string big(l->max_body() + 1, 'x');
  std::string_view pieces[] = {big};
  auto r = l->append(2, 2, 1, pieces);
  REQUIRE_FALSE(r);
  CHECK(r.error().code == make_error_code(errc::segment_too_large));
  CHECK_THAT(r.error().message, Catch::Contains(std::to_string(big.size())));
  CHECK(l->end() == end);
  big.pop_back();
  pieces[0] = big;
  REQUIRE(l->append(2, 2, 1, pieces)); // the largest body fits
  append_key(*l, 3);
  l.reset();
  l = open_log(dir.path());
  std::vector<std::uint64_t> keys;
  REQUIRE(l->visit({}, [&](const log_frame& f) { return keys.push_back(f.first_key), true; }));
  CHECK(keys == std::vector<std::uint64_t>{1, 2, 3});
}

TEST_CASE("segment log: a reader beside the writer sees whole frames in order", "[segment_log]") {
  test::temp_dir dir{"qlog"};
  auto l = open_log(dir.path());
  constexpr std::uint64_t total = 3000;
  std::atomic<std::uint64_t> read_upto{0}; // the writer releases only what the reader is past
  std::atomic<bool> failed{false}, stop{false};
  log_pos reader_at{};
  std::mutex pos_mu;
  std::thread reader([&] {
    std::uint64_t expect = 1;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    log_pos from{};
    while (expect <= total && !stop && std::chrono::steady_clock::now() < deadline) {
      auto r = l->visit(from, [&](const log_frame& f) {
        if (f.first_key != expect || f.body != body_for(f.first_key)) failed = true;
        ++expect;
        return true;
      });
      if (!r) {
        failed = true;
        break;
      }
      from = *r;
      {
        std::lock_guard lk(pos_mu);
        reader_at = from;
      }
      read_upto = expect - 1;
    }
  });
  bool wrote_all = true;
  for (std::uint64_t k = 1; k <= total && wrote_all; ++k) {
    auto b = body_for(k);
    std::string_view pieces[] = {b};
    wrote_all = l->append(k, k, 1, pieces).has_value();
    if (k % 100 == 0) {
      log_pos p;
      {
        std::lock_guard lk(pos_mu);
        p = reader_at;
      }
      if (p != log_pos{}) wrote_all = wrote_all && l->release_before(p).has_value();
    }
  }
  if (!wrote_all) stop = true;
  reader.join();
  REQUIRE(wrote_all);
  CHECK_FALSE(failed);
  CHECK(read_upto == total);
}

TEST_CASE("segment log: random damage to the newest file opens to a prefix or is refused", "[segment_log]") {
  test::temp_dir dir{"qlog"};
  std::vector<log_pos> pos;
  {
    auto l = open_log(dir.path());
    for (std::uint64_t k = 1; k <= 40; ++k)
      pos.push_back(append_key(*l, k));
  }
  const auto newest = file_of(dir.path(), pos.back().seq);
  const auto pristine = test::slurp(newest);
  std::mt19937_64 g(20261124);
  int opened = 0, refused = 0;
  for (int i = 0; i < 200; ++i) {
    test::write_file(newest, pristine);
    const auto used = pos.back().offset + segment_log::frame_header_bytes + body_for(40).size() + 8;
    const auto at = segment_log::header_bytes + g() % (used - segment_log::header_bytes);
    if (g() % 2) {
      flip(newest, at);
    } else {
      poke(newest, at, std::string(static_cast<std::size_t>(1 + g() % 3000), '\0')); // a tail that never landed
    }
    auto r = try_open(dir.path());
    if (!r) {
      CHECK(r.error().code == make_error_code(errc::store_corrupt));
      ++refused;
      continue;
    }
    ++opened;
    auto got = read_all(**r);
    // Every frame that ends before the damage is kept: only what follows it may go.
    const auto intact = static_cast<std::size_t>(std::count_if(pos.begin(), pos.end(), [&](const log_pos& p) {
      return p.seq != pos.back().seq ||
             p.offset + segment_log::frame_header_bytes + body_for(&p - pos.data() + 1).size() <= at;
    }));
    CHECK(got.size() >= intact);
    for (std::size_t j = 0; j < got.size(); ++j) {
      CHECK(got[j].key == j + 1);
      CHECK(got[j].body_ok);
    }
  }
  CHECK(opened > 0);
  CHECK(refused > 0);
}

TEST_CASE("segment log: a writer killed while appending loses no frame it returned", "[segment_log][torture]") {
  test::temp_dir dir{"qlog"};
  int cycles = 20;
  if (const char* c = std::getenv("EDGERELAY_LOG_TORTURE_CYCLES")) cycles = std::max(1, std::atoi(c));
  std::mt19937_64 g(std::random_device{}());
  std::uint64_t durable = 0; // frames 1..durable were returned by some append
  for (int cycle = 0; cycle < cycles; ++cycle) {
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(fds[0]);
      segment_log_options o;
      o.dir = dir.path();
      o.file_bytes = small_file;
      auto r = segment_log::open(o);
      if (!r) ::_exit(3);
      auto& l = **r;
      std::uint64_t next = 0; // 0: no frame seen yet (released files took the first ones)
      log_pos keep_from{};
      std::uint64_t seen = 0;
      if (!l.visit({}, [&](const log_frame& f) {
            if ((next != 0 && f.first_key != next) || f.body != body_for(f.first_key)) ::_exit(8);
            next = f.first_key + 1;
            if (++seen % 50 == 0) keep_from = f.pos;
            return true;
          }))
        ::_exit(4);
      if (next == 0) next = 1;
      for (;; ++next) {
        auto b = body_for(next);
        std::string_view pieces[] = {b};
        if (!l.append(next, next, 1, pieces)) ::_exit(5);
        if (::write(fds[1], &next, sizeof next) != sizeof next) ::_exit(6);
        if (next % 97 == 0 && keep_from != log_pos{}) {
          if (!l.release_before(keep_from)) ::_exit(7);
        }
      }
    }
    ::close(fds[1]);
    const auto kill_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(20 + g() % 130);
    std::uint64_t last = durable;
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(kill_at - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{fds[0], POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      std::uint64_t v = 0;
      auto n = ::read(fds[0], &v, sizeof v);
      if (n <= 0) break;
      if (n == sizeof v) last = v;
    }
    ::kill(pid, SIGKILL);
    // Whatever the pipe still holds was returned before the kill.
    std::uint64_t v = 0;
    while (::read(fds[0], &v, sizeof v) == sizeof v)
      last = v;
    ::close(fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    INFO("cycle " << cycle << " child status " << status);
    REQUIRE((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));

    auto l = open_log(dir.path());
    std::vector<std::uint64_t> keys;
    bool bodies_ok = true;
    REQUIRE(l->visit({}, [&](const log_frame& f) {
      keys.push_back(f.first_key);
      bodies_ok = bodies_ok && f.body == body_for(f.first_key);
      return true;
    }));
    CHECK(bodies_ok);
    if (keys.empty()) {
      CHECK(last == 0); // killed before its first append returned
      continue;
    }
    for (std::size_t j = 1; j < keys.size(); ++j)
      REQUIRE(keys[j] == keys[j - 1] + 1);
    // Every frame an append returned is there; at most the one in flight more.
    CHECK(keys.back() >= last);
    CHECK(keys.back() <= last + 1);
    durable = keys.back();
  }
  CHECK(durable > 0);
}
