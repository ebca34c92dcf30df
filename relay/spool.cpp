#include "relay/spool.hpp"

#include "util/bytes.hpp"
#include "util/checksum.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

namespace edgerelay::relay {

namespace {
constexpr std::string_view file_magic = "ERSPOOL1";
// A record's bytes besides id, stream and payload: u32 length, u8 id length,
// u8 stream length, i64 created, u64 checksum, u32 payload length, u32 crc.
constexpr std::size_t record_frame_bytes = 4 + 1 + 1 + 8 + 8 + 4 + 4;

error io_error(const std::string& what, int e) {
  return error{boost::system::error_code(e, boost::system::system_category()), what + ": " + std::strerror(e)};
}

std::filesystem::path file_for(const std::filesystem::path& dir, std::uint64_t seq) {
  char name[40];
  std::snprintf(name, sizeof name, "spool-%016llx.ers", static_cast<unsigned long long>(seq));
  return dir / name;
}

} // namespace

bool is_spool_file_name(std::string_view n) noexcept {
  if (n.size() != 26 || !n.starts_with("spool-") || !n.ends_with(".ers")) return false;
  return std::all_of(n.begin() + 6, n.begin() + 22,
                     [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

namespace {

// The spool files of `dir` in order; a name that only looks like one (not
// 16 hex digits) is not. A directory that cannot be listed is an error, not
// an empty spool.
boost::system::result<std::vector<std::pair<std::uint64_t, std::filesystem::path>>, error>
list_files(const std::filesystem::path& dir) {
  std::vector<std::pair<std::uint64_t, std::filesystem::path>> out;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(dir, ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec)) {
    auto n = it->path().filename().string();
    std::uint64_t seq = 0;
    if (!is_spool_file_name(n)) continue;
    std::from_chars(n.data() + 6, n.data() + 22, seq, 16);
    out.emplace_back(seq, it->path());
  }
  if (ec) return io_error("cannot list the spool directory " + dir.string(), ec.value());
  std::sort(out.begin(), out.end());
  return out;
}

bool write_all(int fd, const char* p, std::size_t n) {
  while (n) {
    auto w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

// Reads one spool file's records in order; `n` numbers them across files.
// Returns false when `visit` asked to stop.
boost::system::result<bool, error> read_file(const std::filesystem::path& path, std::uint64_t& n,
                                             const std::function<bool(const spool_record&)>& visit) {
  // Mapped, not read into memory: a file is up to the rotation size (64 MiB).
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return io_error("cannot read spool file " + path.string(), errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return io_error("cannot read spool file " + path.string(), e);
  }
  const auto size = static_cast<std::size_t>(st.st_size);
  void* map = size ? ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0) : nullptr;
  int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) return io_error("cannot map spool file " + path.string(), map_errno);
  struct unmap {
    void* p;
    std::size_t n;
    ~unmap() {
      if (p) ::munmap(p, n);
    }
  } guard{map, size};
  if (map) ::madvise(map, size, MADV_SEQUENTIAL);
  std::string_view data(static_cast<const char*>(map), size);
  // Empty, or a torn start of the header: a file whose creation a crash or
  // a full disk interrupted, before any record could be written into it.
  if (data.size() < file_magic.size() && file_magic.substr(0, data.size()) == data) return true;
  if (data.compare(0, file_magic.size(), file_magic) != 0)
    return error{make_error_code(errc::malformed), path.string() + ": not a spool file (bad magic)"};
  util::reader rd(data.substr(file_magic.size()));
  while (rd.remaining() > 0) {
    if (rd.remaining() < 4) break; // torn tail
    auto len = rd.u32();
    if (rd.remaining() < len) break; // torn tail
    auto body = rd.bytes(len);
    util::reader r(body);
    spool_record rec;
    rec.id = std::string(r.bytes(r.u8()));
    rec.stream = std::string(r.bytes(r.u8()));
    rec.created_ms = static_cast<std::int64_t>(r.u64());
    rec.checksum = r.u64();
    rec.payload = std::string(r.bytes(r.u32()));
    auto crc = r.u32();
    if (!r.ok() || r.remaining() != 0 ||
        crc != static_cast<std::uint32_t>(util::checksum(body.substr(0, body.size() - 4)))) {
      if (rd.remaining() == 0) break; // the last record was torn
      return error{make_error_code(errc::malformed),
                   path.string() + ": damaged record " + std::to_string(n) + " (crc or length)"};
    }
    ++n;
    if (!visit(rec)) return false;
  }
  return true;
}
} // namespace

spool_writer::~spool_writer() {
  if (fd_ >= 0) ::close(fd_);
}

boost::system::result<std::unique_ptr<spool_writer>, error>
spool_writer::open(const std::filesystem::path& dir, std::uint64_t rotate_bytes, std::size_t recent_ids) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return error{ec, "cannot create spool directory " + dir.string() + ": " + ec.message()};
  std::unique_ptr<spool_writer> w(new spool_writer());
  w->dir_ = dir;
  w->rotate_ = rotate_bytes;
  auto listed = list_files(dir);
  if (!listed) return listed.error();
  auto& files = *listed;
  // The ids of the last records already in the spool: a crash between a
  // batch's fsync and its acknowledgement leaves those segments queued, and
  // the sink must not write them twice (see recent_ids()). Each append goes
  // into one file and at most two appends are unacknowledged, so they are in
  // the newest two files that hold records (every start opens a new file,
  // which stays empty when the node stops again before writing).
  if (recent_ids > 0) {
    std::vector<std::filesystem::path> tail;
    for (auto it = files.rbegin(); it != files.rend() && tail.size() < 2; ++it) {
      std::error_code sec;
      auto sz = std::filesystem::file_size(it->second, sec);
      if (sec || sz > file_magic.size()) tail.insert(tail.begin(), it->second); // unreadable: read_file says why
    }
    std::deque<std::string> ring;
    std::uint64_t n = 0;
    for (auto& path : tail) {
      auto ok = read_file(path, n, [&](const spool_record& r) {
        ring.push_back(r.id);
        if (ring.size() > recent_ids) ring.pop_front();
        return true;
      });
      if (!ok) return error{ok.error().code, "cannot read the end of the spool to resume it: " + ok.error().message};
    }
    w->recent_.assign(std::make_move_iterator(ring.begin()), std::make_move_iterator(ring.end()));
  }
  // Always start a new file: a torn tail of the last one stays where readers skip it.
  w->seq_ = files.empty() ? 1 : files.back().first + 1;
  if (auto r = w->roll(); !r) return r.error();
  return w;
}

// Drops [cached_from_, upto) of the current file from the page cache, in
// whole pages (the kernel keeps a page the range covers only in part, so
// cached_from_ stays page-aligned); upto = file_bytes_ drops to the end.
// Only called on fsynced bytes (clean pages); advisory, so a failure is
// harmless.
void spool_writer::drop_cached(std::uint64_t upto) {
  static const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const bool to_end = upto >= file_bytes_;
  if (!to_end) upto -= upto % page;
  if (fd_ < 0 || upto <= cached_from_) return;
  ::posix_fadvise(fd_, static_cast<off_t>(cached_from_), to_end ? 0 : static_cast<off_t>(upto - cached_from_),
                  POSIX_FADV_DONTNEED);
  cached_from_ = upto;
}

// The next file is made complete (header written and fsynced) before it
// replaces the current one: when that fails (a full disk), it is removed and
// the current file stays the one appended to, so no record ever goes into a
// file without its header.
boost::system::result<void, error> spool_writer::roll() {
  auto path = file_for(dir_, seq_++); // a number once tried is not used again (O_EXCL)
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_APPEND, 0640);
  if (fd < 0) return io_error("cannot create spool file " + path.string(), errno);
  if (!write_all(fd, file_magic.data(), file_magic.size()) || ::fsync(fd) != 0) {
    int e = errno;
    ::close(fd);
    ::unlink(path.c_str()); // if this fails too, readers take what is left for an empty file
    return io_error("cannot write spool file " + path.string(), e);
  }
  // The new name must survive a power cut too.
  int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  if (fd_ >= 0) {
    drop_cached(file_bytes_);
    ::close(fd_);
  }
  fd_ = fd;
  file_bytes_ = file_magic.size();
  cached_from_ = 0;
  return {};
}

boost::system::result<void, error> spool_writer::append(std::span<const spool_input> records) {
  // Small records are framed whole into `buf`; a larger payload is not
  // copied but written from where it is (the store's map, inside the sink's
  // read) with writev. From 512 B up the copy costs more than an iovec: at
  // 1 KiB payloads it was 2 % of all CPU in a T2 profile.
  constexpr std::size_t inline_below = 512;
  struct piece {
    const char* ext; // nullptr: `off` into buf
    std::size_t off, len;
  };
  std::string& buf = buf_;
  buf.clear();
  {
    std::size_t framed = 0;
    for (auto& r : records)
      framed +=
          record_frame_bytes + r.id.size() + r.stream.size() + (r.payload.size() < inline_below ? r.payload.size() : 0);
    buf.reserve(framed);
  }
  std::vector<piece> pieces;
  std::uint64_t total = 0;
  auto add_buf = [&](std::size_t from) {
    if (buf.size() == from) return;
    if (!pieces.empty() && !pieces.back().ext && pieces.back().off + pieces.back().len == from)
      pieces.back().len += buf.size() - from;
    else
      pieces.push_back({nullptr, from, buf.size() - from});
  };
  for (auto& r : records) {
    const bool inline_payload = r.payload.size() < inline_below;
    std::size_t start = buf.size();
    buf.append(4, '\0');
    util::writer w(buf);
    w.u8(static_cast<std::uint8_t>(r.id.size()));
    w.bytes(r.id);
    w.u8(static_cast<std::uint8_t>(r.stream.size()));
    w.bytes(r.stream);
    w.u64(static_cast<std::uint64_t>(r.created_ms));
    w.u64(r.checksum);
    w.u32(static_cast<std::uint32_t>(r.payload.size()));
    std::uint32_t crc = 0;
    if (inline_payload) {
      w.bytes(r.payload);
      crc = static_cast<std::uint32_t>(util::checksum(std::string_view(buf).substr(start + 4)));
    } else {
      crc = static_cast<std::uint32_t>(util::checksum({std::string_view(buf).substr(start + 4), r.payload}));
    }
    const std::size_t len = buf.size() - start - 4 + (inline_payload ? 0 : r.payload.size()) + 4;
    util::put_be32(reinterpret_cast<unsigned char*>(buf.data() + start), static_cast<std::uint32_t>(len));
    if (!inline_payload) {
      add_buf(start);
      pieces.push_back({r.payload.data(), 0, r.payload.size()});
      start = buf.size();
    }
    w.u32(crc);
    add_buf(start);
    total += len + 4;
  }
  if (file_bytes_ > file_magic.size() && file_bytes_ + total > rotate_)
    if (auto r = roll(); !r) return r.error();
  std::vector<iovec> iov;
  iov.reserve(pieces.size());
  for (auto& p : pieces)
    iov.push_back({const_cast<char*>(p.ext ? p.ext : buf.data() + p.off), p.len});
  std::size_t i = 0;
  while (i < iov.size()) {
    auto n = ::writev(fd_, iov.data() + i, static_cast<int>(std::min<std::size_t>(iov.size() - i, IOV_MAX)));
    if (n < 0) {
      if (errno == EINTR) continue;
      return cut_back(io_error("spool write in " + dir_.string(), errno));
    }
    auto done = static_cast<std::size_t>(n);
    while (i < iov.size() && done >= iov[i].iov_len)
      done -= iov[i++].iov_len;
    if (done) { // a short write inside iov[i]
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + done;
      iov[i].iov_len -= done;
    }
  }
  if (::fdatasync(fd_) != 0) return cut_back(io_error("spool fsync in " + dir_.string(), errno));
  file_bytes_ += total;
  written_ += total;
  if (file_bytes_ >= cached_from_ + cache_keep_bytes + cache_drop_step) drop_cached(file_bytes_ - cache_keep_bytes);
  if (buf.capacity() > (8u << 20)) std::string().swap(buf); // an odd huge batch does not stay resident
  return {};
}

// A failed append leaves nothing of itself: the file is cut back to the end
// of the last good append, so a later append of the same records (the queue
// retries them) cannot put them in the spool twice, and no torn record sits
// between good ones.
error spool_writer::cut_back(error e) {
  if (::ftruncate(fd_, static_cast<off_t>(file_bytes_)) != 0 || ::fdatasync(fd_) != 0)
    e.message += "; cutting the file back to its last good record also failed: " + std::string(std::strerror(errno));
  return e;
}

boost::system::result<std::uint64_t, error> read_spool(const std::filesystem::path& dir,
                                                       const std::function<bool(const spool_record&)>& visit) {
  if (!std::filesystem::is_directory(dir))
    return error{make_error_code(errc::not_found), dir.string() + " is not a spool directory"};
  std::uint64_t n = 0;
  auto files = list_files(dir);
  if (!files) return files.error();
  for (auto& [seq, path] : *files) {
    auto more = read_file(path, n, visit);
    if (!more) return more.error();
    if (!*more) return n;
  }
  return n;
}

} // namespace edgerelay::relay
