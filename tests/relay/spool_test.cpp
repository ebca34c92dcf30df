#include "relay/spool.hpp"
#include "tests/support/temp_dir.hpp"
#include "util/checksum.hpp"

#include <catch2/catch.hpp>

#include <csignal>
#include <fcntl.h>
#include <fstream>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

using namespace edgerelay;
using Catch::Matchers::Contains;

namespace {
std::vector<relay::spool_record> read_all(const std::filesystem::path& dir) {
  std::vector<relay::spool_record> out;
  auto n = relay::read_spool(dir, [&](const relay::spool_record& r) {
    out.push_back(r);
    return true;
  });
  REQUIRE(n.has_value());
  return out;
}
std::filesystem::path only_file(const std::filesystem::path& dir) {
  for (auto& e : std::filesystem::directory_iterator(dir))
    return e.path();
  return {};
}
} // namespace

TEST_CASE("spool records are read back in order with every field", "[spool]") {
  test::temp_dir d("spool");
  {
    auto w = relay::spool_writer::open(d.path());
    REQUIRE(w.has_value());
    REQUIRE((*w)->append(std::vector<relay::spool_input>{
                             {"e:1", "s1", 1000, util::checksum("alpha"), "alpha"},
                             {"e:2", "s2", 2000, util::checksum(std::string(70000, 'b')), std::string(70000, 'b')}})
                .has_value());
    REQUIRE((*w)->append(std::vector<relay::spool_input>{{"e:3", "s1", 3000, util::checksum("c"), "c"}}).has_value());
    // Either side of the size from which a payload is written from the
    // caller's memory instead of framed inline.
    const std::string p511(511, 'x'), p512(512, 'y');
    REQUIRE((*w)->append(std::vector<relay::spool_input>{{"e:4", "s1", 4000, util::checksum(p511), p511},
                                                         {"e:5", "s1", 5000, util::checksum(p512), p512}})
                .has_value());
  }
  auto recs = read_all(d.path());
  REQUIRE(recs.size() == 5);
  CHECK(recs[3].payload == std::string(511, 'x'));
  CHECK(recs[4].payload == std::string(512, 'y'));
  CHECK(recs[4].id == "e:5");
  CHECK(recs[4].checksum == util::checksum(recs[4].payload));
  CHECK(recs[0].id == "e:1");
  CHECK(recs[0].stream == "s1");
  CHECK(recs[0].created_ms == 1000);
  CHECK(recs[0].payload == "alpha");
  CHECK(recs[1].payload.size() == 70000);
  CHECK(recs[1].checksum == util::checksum(recs[1].payload));
  CHECK(recs[2].id == "e:3");
}

TEST_CASE("spool files rotate by size and a reopen starts a new file", "[spool]") {
  test::temp_dir d("spool");
  {
    auto w = relay::spool_writer::open(d.path(), 1000);
    REQUIRE(w.has_value());
    std::string p(600, 'x');
    for (int i = 0; i < 4; ++i)
      REQUIRE((*w)->append(std::vector<relay::spool_input>{{"e:" + std::to_string(i), "s", 0, util::checksum(p), p}})
                  .has_value());
  }
  { auto w = relay::spool_writer::open(d.path(), 1000); }
  std::size_t files = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(d.path()))
    ++files;
  CHECK(files == 5);
  CHECK(read_all(d.path()).size() == 4);
}

TEST_CASE("a torn last record is ignored, damage elsewhere is an error naming the file", "[spool]") {
  test::temp_dir d("spool");
  {
    auto w = relay::spool_writer::open(d.path());
    REQUIRE((*w)->append(std::vector<relay::spool_input>{{"e:1", "s", 0, util::checksum("one"), "one"},
                                                         {"e:2", "s", 0, util::checksum("two"), "two"}})
                .has_value());
  }
  auto f = only_file(d.path());
  auto size = std::filesystem::file_size(f);
  std::filesystem::resize_file(f, size - 3); // a crash cut the last record short
  auto recs = read_all(d.path());
  REQUIRE(recs.size() == 1);
  CHECK(recs[0].id == "e:1");
  {
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(8 + 4 + 2); // inside the first record's id
    io.put('X');
  }
  std::filesystem::resize_file(f, size); // the second record is complete again (zeros), the first is damaged
  auto n = relay::read_spool(d.path(), [](const relay::spool_record&) { return true; });
  REQUIRE_FALSE(n.has_value());
  CHECK_THAT(n.error().message, Contains(f.filename().string()) && Contains("damaged record 0"));
}

TEST_CASE("reading something that is not a spool directory fails clearly", "[spool]") {
  test::temp_dir d("spool");
  auto n = relay::read_spool(d / "missing", [](const relay::spool_record&) { return true; });
  REQUIRE_FALSE(n.has_value());
  CHECK_THAT(n.error().message, Contains("not a spool directory"));
  std::ofstream(d / "spool-0000000000000001.ers") << "NOTSPOOL";
  n = relay::read_spool(d.path(), [](const relay::spool_record&) { return true; });
  REQUIRE_FALSE(n.has_value());
  CHECK_THAT(n.error().message, Contains("bad magic"));
}

TEST_CASE("a reopened spool knows the ids at its end, across the newest two files", "[spool]") {
  test::temp_dir d("spool");
  std::string p(300, 'y');
  {
    auto w = relay::spool_writer::open(d.path(), 1000, 4);
    REQUIRE(w.has_value());
    CHECK((*w)->recent_ids().empty()); // a new spool has nothing at its end
    // 300 B payloads, rotation at 1,000 B: files of 2 records (e:0 e:1 | e:2 e:3 | e:4)
    for (int i = 0; i < 5; ++i)
      REQUIRE((*w)->append(std::vector<relay::spool_input>{{"e:" + std::to_string(i), "s", 0, util::checksum(p), p}})
                  .has_value());
  }
  auto w = relay::spool_writer::open(d.path(), 1000, 4);
  REQUIRE(w.has_value());
  // The newest two files hold e:2, e:3 and e:4; the oldest file is not read.
  CHECK((*w)->recent_ids() == std::vector<std::string>{"e:2", "e:3", "e:4"});
  w->reset();
  // Restarts that wrote nothing leave empty files behind: they are passed over.
  { auto again = relay::spool_writer::open(d.path(), 1000, 2); }
  auto kept = relay::spool_writer::open(d.path(), 1000, 2);
  REQUIRE(kept.has_value());
  CHECK((*kept)->recent_ids() == std::vector<std::string>{"e:3", "e:4"});
}

TEST_CASE("a reopened spool keeps only the last ids asked for, and a torn tail is not among them", "[spool]") {
  test::temp_dir d("spool");
  {
    auto w = relay::spool_writer::open(d.path());
    std::vector<relay::spool_input> recs;
    std::vector<std::string> ids;
    for (int i = 0; i < 10; ++i)
      ids.push_back("e:" + std::to_string(i));
    for (auto& id : ids)
      recs.push_back({id, "s", 0, util::checksum(id), id});
    REQUIRE((*w)->append(recs).has_value());
  }
  auto f = only_file(d.path());
  std::filesystem::resize_file(f, std::filesystem::file_size(f) - 2); // e:9 torn by a crash
  auto w = relay::spool_writer::open(d.path(), 64 << 20, 3);
  REQUIRE(w.has_value());
  CHECK((*w)->recent_ids() == std::vector<std::string>{"e:6", "e:7", "e:8"});
}

TEST_CASE("a spool whose end cannot be read refuses to open, naming the file", "[spool]") {
  test::temp_dir d("spool");
  std::ofstream(d / "spool-0000000000000001.ers") << "NOTSPOOL, but some other file";
  auto w = relay::spool_writer::open(d.path(), 64 << 20, 8);
  REQUIRE_FALSE(w.has_value());
  CHECK_THAT(w.error().message, Contains("spool-0000000000000001.ers") && Contains("bad magic") &&
                                    Contains("cannot read the end of the spool"));
}

TEST_CASE("an append of more pieces than one writev takes is written whole and in order", "[spool]") {
  test::temp_dir d("spool");
  // 1,500 records alternating 20 KiB (written from the caller's memory) and
  // 10 B (framed inline): about 3,000 I/O pieces, beyond IOV_MAX (1,024).
  std::vector<std::string> ids, payloads;
  for (int i = 0; i < 1500; ++i) {
    ids.push_back("e:" + std::to_string(i));
    std::string p(i % 2 ? 10 : 20 * 1024, static_cast<char>('a' + i % 26));
    p[0] = static_cast<char>(i & 0xff);
    payloads.push_back(std::move(p));
  }
  std::vector<relay::spool_input> recs;
  for (int i = 0; i < 1500; ++i)
    recs.push_back({ids[static_cast<std::size_t>(i)], "s", i, util::checksum(payloads[static_cast<std::size_t>(i)]),
                    payloads[static_cast<std::size_t>(i)]});
  {
    auto w = relay::spool_writer::open(d.path());
    REQUIRE(w.has_value());
    REQUIRE((*w)->append(recs).has_value());
  }
  auto back = read_all(d.path());
  REQUIRE(back.size() == 1500);
  for (std::size_t i = 0; i < back.size(); ++i) {
    INFO("record " << i);
    CHECK(back[i].id == ids[i]);
    CHECK(back[i].created_ms == static_cast<std::int64_t>(i));
    CHECK(back[i].payload == payloads[i]);
  }
}

namespace {
// Pages of [from, to) of `file` that are in the page cache (mincore).
std::size_t resident_pages(const std::filesystem::path& file, std::uint64_t from, std::uint64_t to) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  REQUIRE(fd >= 0);
  const auto len = static_cast<std::size_t>(to - from);
  void* m = ::mmap(nullptr, len, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(from));
  ::close(fd);
  REQUIRE(m != MAP_FAILED);
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((len + page - 1) / page);
  REQUIRE(::mincore(m, len, vec.data()) == 0);
  ::munmap(m, len);
  std::size_t n = 0;
  for (auto v : vec)
    n += v & 1;
  return n;
}
} // namespace

TEST_CASE("the spool keeps only its newest bytes in the page cache, and all of them on disk", "[spool]") {
  test::temp_dir d("spool");
  using w_t = relay::spool_writer;
  // 40 MiB in 1 MiB appends, one file: what lies more than cache_keep_bytes
  // (+ one drop step) behind the end is dropped once fsynced.
  const std::string p(1 << 20, 'q');
  const std::uint64_t rec = 4 + 1 + 4 + 1 + 1 + 8 + 8 + 4 + p.size() + 4; // record with id "e:NN", stream "s"
  std::uint64_t end = 8;
  {
    auto w = w_t::open(d.path(), 1ull << 30);
    REQUIRE(w.has_value());
    for (int i = 0; i < 40; ++i) {
      std::string id = "e:" + std::to_string(10 + i);
      REQUIRE((*w)->append(std::vector<relay::spool_input>{{id, "s", i, util::checksum(p), p}}).has_value());
      end += rec;
      CHECK((*w)->cached_bytes() <= w_t::cache_keep_bytes + w_t::cache_drop_step);
    }
    CHECK((*w)->cached_bytes() >= w_t::cache_keep_bytes);
    auto f = only_file(d.path());
    REQUIRE(std::filesystem::file_size(f) == end);
    const std::uint64_t dropped_upto = end - (*w)->cached_bytes();
    CHECK(dropped_upto >= end - w_t::cache_keep_bytes - w_t::cache_drop_step);
    // The kernel drops clean pages on DONTNEED (ext4, xfs; a tmpfs keeps them).
    const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    CHECK(resident_pages(f, 0, dropped_upto / page * page) == 0);
    CHECK(resident_pages(f, (end - (1 << 20)) / page * page, end) > 0);
  }
  auto back = read_all(d.path());
  REQUIRE(back.size() == 40);
  CHECK(back[0].payload == p);
  CHECK(back[39].id == "e:49");
}

TEST_CASE("a rotation that cannot write the next file's header leaves no file without one, and an empty or "
          "torn-header file reads as empty",
          "[spool]") {
  test::temp_dir d("spool-roll");
  std::string p(600, 'x');
  auto rec = [&](int i) {
    return std::vector<relay::spool_input>{{"e:" + std::to_string(i), "s", 0, util::checksum(p), p}};
  };
  {
    auto w = relay::spool_writer::open(d.path(), 1000);
    REQUIRE(w.has_value());
    REQUIRE((*w)->append(rec(0)).has_value());
    // A file size limit below the 8-byte header: the next file cannot be started (EFBIG), as on a full disk.
    struct rlimit old {};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old) == 0);
    auto* prev = std::signal(SIGXFSZ, SIG_IGN);
    struct rlimit tiny = old;
    tiny.rlim_cur = 4;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &tiny) == 0);
    auto failed = (*w)->append(rec(1)); // needs a new file
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &old) == 0);
    std::signal(SIGXFSZ, prev);
    REQUIRE_FALSE(failed.has_value());
    CHECK_THAT(failed.error().message, Contains("cannot write spool file"));
    // The half-made file is gone; the next append goes on in a complete file.
    std::size_t files = 0;
    for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(d.path()))
      ++files;
    CHECK(files == 1);
    REQUIRE((*w)->append(rec(1)).has_value());
    REQUIRE((*w)->append(rec(2)).has_value());
  }
  auto recs = read_all(d.path());
  REQUIRE(recs.size() == 3);
  CHECK(recs[1].id == "e:1");
  CHECK(recs[2].id == "e:2");
  // What a crash or a full disk can leave at a file's creation: nothing, or part of the header.
  test::write_file(d / "spool-00000000000000f0.ers", "");
  test::write_file(d / "spool-00000000000000f1.ers", "ERSP");
  CHECK(read_all(d.path()).size() == 3);
  auto w = relay::spool_writer::open(d.path(), 1000); // and the sink starts on such a spool
  REQUIRE(w.has_value());
  REQUIRE((*w)->append(rec(3)).has_value());
  CHECK(read_all(d.path()).size() == 4);
}
