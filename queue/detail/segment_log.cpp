#include "queue/detail/segment_log.hpp"

#include "util/bytes.hpp"

#define XXH_STATIC_LINKING_ONLY // XXH3_state_t on the stack
#include <xxhash.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstring>
#include <fcntl.h>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

namespace edgerelay::queue::detail {

namespace {

constexpr std::string_view file_magic = "ERQLOG01";
constexpr std::uint32_t file_version = 1;
constexpr std::uint32_t frame_magic = 0x45525146; // "ERQF"
constexpr std::uint32_t flag_end = 1;
constexpr std::uint64_t header_fields = 48; // of the 4 KiB header page: magic .. hash

using res_void = boost::system::result<void, error>;

error io_error(const std::string& what, int e) {
  return error{boost::system::error_code(e, boost::system::system_category()), what + ": " + std::strerror(e)};
}

// The same for the errno of the call that just failed, read before the
// message is built (building it may allocate, and an allocation may set errno).
template <class F>
error errno_error(F&& what) {
  const int e = errno;
  return io_error(what(), e);
}

error corrupt(const std::string& what) { return error{make_error_code(errc::store_corrupt), what}; }

std::uint64_t align8(std::uint64_t v) { return (v + 7) & ~std::uint64_t{7}; }

std::string name_for(const char* prefix, std::uint64_t seq) {
  char name[48];
  std::snprintf(name, sizeof name, "%s-%016llx.erq", prefix, static_cast<unsigned long long>(seq));
  return name;
}

// "qlog-<16 hex>.erq" or "qspare-<16 hex>.erq": the number, else nothing.
std::optional<std::uint64_t> number_in(std::string_view n, std::string_view prefix) {
  if (n.size() != prefix.size() + 1 + 16 + 4 || !n.starts_with(prefix) || n[prefix.size()] != '-' ||
      !n.ends_with(".erq"))
    return std::nullopt;
  auto digits = n.substr(prefix.size() + 1, 16);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); }))
    return std::nullopt;
  std::uint64_t v = 0;
  std::from_chars(digits.data(), digits.data() + digits.size(), v, 16);
  return v;
}

bool pwrite_all(int fd, const void* data, std::size_t n, std::uint64_t off) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      if (w == 0) errno = EIO;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
    off += static_cast<std::uint64_t>(w);
  }
  return true;
}

struct header_view {
  std::uint64_t seq = 0, file_bytes = 0, salt = 0;
};

std::optional<header_view> decode_header(const unsigned char* p) {
  if (std::memcmp(p, file_magic.data(), file_magic.size()) != 0) return std::nullopt;
  if (util::get_be32(p + 8) != file_version) return std::nullopt;
  if (util::get_be64(p + 40) != XXH3_64bits(p, 40)) return std::nullopt;
  return header_view{util::get_be64(p + 16), util::get_be64(p + 24), util::get_be64(p + 32)};
}

void encode_header(unsigned char* p, const header_view& h) {
  std::memset(p, 0, header_fields);
  std::memcpy(p, file_magic.data(), file_magic.size());
  util::put_be32(p + 8, file_version);
  util::put_be64(p + 16, h.seq);
  util::put_be64(p + 24, h.file_bytes);
  util::put_be64(p + 32, h.salt);
  util::put_be64(p + 40, XXH3_64bits(p, 40));
}

std::uint64_t new_salt() {
  static thread_local std::mt19937_64 gen{std::random_device{}()};
  return gen();
}

// A seeded XXH3-64 over several pieces. The state is cleared first: a
// seeded reset reads the state's previous seed to decide whether to rebuild
// its secret, so a stack state left as it was could keep the secret of an
// earlier call (under ASan, one hash in a few was wrong).
class seeded_hash {
public:
  explicit seeded_hash(std::uint64_t seed) {
    XXH3_INITSTATE(&st_);
    XXH3_64bits_reset_withSeed(&st_, seed);
  }
  void update(const void* p, std::size_t n) { XXH3_64bits_update(&st_, p, n); }
  std::uint64_t digest() { return XXH3_64bits_digest(&st_); }

private:
  XXH3_state_t st_;
};

struct frame_head {
  std::uint32_t body_len = 0, count = 0, flags = 0;
  std::uint64_t seq = 0, first_key = 0, last_key = 0;
};

void encode_frame_head(unsigned char* p, const frame_head& h) {
  util::put_be32(p, frame_magic);
  util::put_be32(p + 4, h.body_len);
  util::put_be64(p + 8, h.seq);
  util::put_be64(p + 16, h.first_key);
  util::put_be64(p + 24, h.last_key);
  util::put_be32(p + 32, h.count);
  util::put_be32(p + 36, h.flags);
}

} // namespace

struct segment_log_file {
  static constexpr std::uint64_t header_bytes = segment_log::header_bytes;
  static constexpr std::uint64_t frame_header_bytes = segment_log::frame_header_bytes;
  std::uint64_t seq = 0, salt = 0;
  std::filesystem::path path;
  int fd = -1;
  const unsigned char* map = nullptr;
  std::uint64_t size = 0;
  bool sealed = false;          // has its end trailer: takes no more frames
  bool sealing = false;         // a trailer was written, not known durable: takes no more frames either
  std::uint64_t frames_end = 0; // sealed: where its frames end (from the trailer)

  ~segment_log_file() {
    if (map) ::munmap(const_cast<unsigned char*>(map), size);
    if (fd >= 0) ::close(fd);
  }

  // The frame at `off` if it passes every check, with its body.
  std::optional<std::pair<frame_head, std::string_view>> frame_at(std::uint64_t off) const {
    if (off % 8 != 0 || off < header_bytes || off + frame_header_bytes > size) return std::nullopt;
    const unsigned char* p = map + off;
    if (util::get_be32(p) != frame_magic) return std::nullopt;
    frame_head h;
    h.body_len = util::get_be32(p + 4);
    h.seq = util::get_be64(p + 8);
    h.first_key = util::get_be64(p + 16);
    h.last_key = util::get_be64(p + 24);
    h.count = util::get_be32(p + 32);
    h.flags = util::get_be32(p + 36);
    if (h.seq != seq || h.body_len > size - off - frame_header_bytes) return std::nullopt;
    if (!(h.flags & flag_end) && off + frame_header_bytes + align8(h.body_len) > trailer_at()) return std::nullopt;
    seeded_hash hs(salt);
    hs.update(p, 40);
    hs.update(p + frame_header_bytes, h.body_len);
    if (hs.digest() != util::get_be64(p + 40)) return std::nullopt;
    return std::pair{h, std::string_view(reinterpret_cast<const char*>(p + frame_header_bytes), h.body_len)};
  }

  std::uint64_t next(std::uint64_t off, const frame_head& h) const {
    return off + frame_header_bytes + align8(h.body_len);
  }

  // Frames end before the trailer's place, the file's last 48 bytes.
  std::uint64_t trailer_at() const { return size - frame_header_bytes; }

  // Where the frames of a sealed file end, from its trailer, if it has one.
  std::optional<std::uint64_t> trailer() const {
    auto t = frame_at(trailer_at());
    if (!t || !(t->first.flags & flag_end) || t->first.body_len != 0) return std::nullopt;
    const std::uint64_t e = t->first.last_key;
    if (e < header_bytes || e > trailer_at() || e % 8 != 0) return std::nullopt;
    return e;
  }
};

namespace {

// Opens and maps a whole file, read-write fd, read-only map.
boost::system::result<std::shared_ptr<segment_log_file>, error> map_file(const std::filesystem::path& path,
                                                                         std::uint64_t expect_size) {
  auto f = std::make_shared<segment_log_file>();
  f->path = path;
  f->fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (f->fd < 0) return errno_error([&] { return "cannot open queue log file " + path.string(); });
  struct stat st {};
  if (::fstat(f->fd, &st) != 0) return errno_error([&] { return "cannot stat queue log file " + path.string(); });
  if (static_cast<std::uint64_t>(st.st_size) != expect_size)
    return corrupt("queue log file " + path.string() + " is " + std::to_string(st.st_size) + " bytes, not " +
                   std::to_string(expect_size) + " (the log's file size): cut short or not a queue log file");
  f->size = expect_size;
  void* m = ::mmap(nullptr, f->size, PROT_READ, MAP_SHARED, f->fd, 0);
  if (m == MAP_FAILED) return errno_error([&] { return "cannot map queue log file " + path.string(); });
  f->map = static_cast<const unsigned char*>(m);
  return f;
}

} // namespace

segment_log::~segment_log() = default;

std::uint64_t segment_log::max_body() const noexcept {
  // Room for the frame and the trailer.
  return opt_.file_bytes - header_bytes - 2 * frame_header_bytes;
}

boost::system::result<std::unique_ptr<segment_log>, error> segment_log::open(segment_log_options o) {
  if (o.file_bytes % 4096 != 0 || o.file_bytes < (64u << 10) || o.file_bytes > (1ull << 32))
    return error{make_error_code(errc::invalid_argument), "queue log file size " + std::to_string(o.file_bytes) +
                                                              " must be a multiple of 4096 between 64 KiB and 4 GiB"};
  std::error_code ec;
  std::filesystem::create_directories(o.dir, ec);
  if (ec)
    return error{boost::system::error_code(ec.value(), boost::system::system_category()),
                 "cannot create queue log directory " + o.dir.string() + ": " + ec.message()};
  std::unique_ptr<segment_log> l(new segment_log());
  l->opt_ = std::move(o);
  if (auto r = l->recover(); !r) return r.error();
  return l;
}

res_void segment_log::sync_dir() {
  int dfd = ::open(opt_.dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) return errno_error([&] { return "cannot open queue log directory " + opt_.dir.string(); });
  int rc = ::fsync(dfd);
  int e = errno;
  ::close(dfd);
  if (rc != 0) return io_error("cannot sync queue log directory " + opt_.dir.string(), e);
  return {};
}

// Finds the files, the spares and the end. See the header for the rules.
// Nothing on disk is changed before the log is known to be readable.
res_void segment_log::recover() {
  std::map<std::uint64_t, std::filesystem::path> logs;
  std::error_code ec;
  std::vector<std::filesystem::path> stale_tmp;
  for (auto it = std::filesystem::directory_iterator(opt_.dir, ec); !ec && it != std::filesystem::directory_iterator();
       it.increment(ec)) {
    auto n = it->path().filename().string();
    if (auto sq = number_in(n, "qlog")) {
      logs.emplace(*sq, it->path());
      next_seq_ = std::max(next_seq_, *sq + 1);
    } else if (auto sp = number_in(n, "qspare")) {
      spares_.push_back(it->path());
      next_spare_ = std::max(next_spare_, *sp + 1);
    } else if (n.starts_with("qspare-") && n.ends_with(".erq.tmp")) {
      stale_tmp.push_back(it->path()); // a spare being written when the process stopped
    }
  }
  if (ec)
    return error{boost::system::error_code(ec.value(), boost::system::system_category()),
                 "cannot list queue log directory " + opt_.dir.string() + ": " + ec.message()};

  std::vector<std::filesystem::path> to_spares; // renamed once the log is known to be readable
  const std::uint64_t newest_seq = logs.empty() ? 0 : logs.rbegin()->first;
  for (auto& [seq, path] : logs) {
    auto mf = map_file(path, opt_.file_bytes);
    if (!mf) return mf.error();
    auto f = std::move(*mf);
    f->seq = seq;
    auto h = decode_header(f->map);
    if (h && h->file_bytes != opt_.file_bytes)
      return corrupt("queue log file " + path.string() + " was written for files of " + std::to_string(h->file_bytes) +
                     " bytes, not " + std::to_string(opt_.file_bytes));
    if (!h || h->seq != seq) {
      // The newest file may have been being taken into use (renamed, its
      // header not yet written) when the process stopped: it never took a
      // frame and goes back to the spares. Any other file without its header
      // is damaged: refusing is better than reading past its frames.
      if (seq != newest_seq)
        return corrupt("queue log file " + path.string() +
                       ": its header is missing or damaged and newer files follow; the log cannot be read past it");
      if (!h && util::get_be32(f->map + header_bytes) == frame_magic &&
          util::get_be64(f->map + header_bytes + 8) == seq)
        return corrupt("queue log file " + path.string() +
                       ": its header is damaged but it holds frames; the log cannot be read past it");
      to_spares.push_back(path);
      continue;
    }
    f->salt = h->salt;
    files_.push_back(std::move(f));
  }

  // A frame of the file that checks out, anywhere from `from` on.
  auto any_frame_after = [](const file& f, std::uint64_t from) -> std::optional<std::uint64_t> {
    for (std::uint64_t q = from; q + frame_header_bytes <= f.size; q += 8) {
      if (util::get_be32(f.map + q) != frame_magic) continue;
      if (f.frame_at(q)) return q;
    }
    return std::nullopt;
  };
  // Every file but the newest must have its trailer; their frames are
  // checked as they are read. The newest is read frame by frame to its end.
  std::uint64_t end = header_bytes;
  std::vector<std::shared_ptr<file>> kept;
  for (std::size_t i = 0; i < files_.size(); ++i) {
    auto& f = *files_[i];
    const bool newest = i + 1 == files_.size();
    if (auto t = f.trailer()) {
      f.sealed = true;
      f.frames_end = *t;
      if (newest) end = *t;
      kept.push_back(files_[i]);
      continue;
    }
    if (!newest) {
      // A file whose start failed after its header was written (the writer
      // went on with the next seq) holds no frame at all: a spare.
      if (!any_frame_after(f, header_bytes)) {
        to_spares.push_back(f.path);
        continue;
      }
      return corrupt("queue log file " + f.path.string() +
                     ": its end trailer is missing or damaged, and newer files follow; the log cannot be read past it");
    }
    std::uint64_t off = header_bytes;
    while (auto fr = f.frame_at(off))
      off = f.next(off, fr->first);
    // A torn tail is the one frame whose append did not return. A frame
    // that checks out after it means the damage is not a torn tail (with
    // `sync` off several appends may be unflushed, so it is one after all).
    if (opt_.sync)
      if (auto q = any_frame_after(f, off + 8))
        return corrupt("queue log file " + f.path.string() + ": damaged frame at offset " + std::to_string(off) +
                       " (length or hash) with a complete frame after it at offset " + std::to_string(*q) +
                       "; the log cannot be read past it");
    end = off;
    kept.push_back(files_[i]);
  }
  files_ = std::move(kept);

  // The log is readable: now the unused files go back to the spares.
  for (auto& path : to_spares) {
    auto spare = opt_.dir / name_for("qspare", next_spare_++);
    if (::rename(path.c_str(), spare.c_str()) != 0)
      return errno_error([&] { return "cannot return unused queue log file " + path.string() + " to the spares"; });
    spares_.push_back(spare);
  }
  for (auto& t : stale_tmp)
    ::unlink(t.c_str());
  if (!to_spares.empty() || !stale_tmp.empty())
    if (auto r = sync_dir(); !r) return r;
  end_offset_.store(end);
  if (files_.empty() || files_.back()->sealed) {
    if (auto r = start_next_file(); !r) return r;
  }
  return {};
}

res_void segment_log::prepare_spare() {
  if (!spares_.empty()) return {};
  auto path = opt_.dir / name_for("qspare", next_spare_++);
  // Written under a temporary name first: a spare is always whole.
  auto tmp = path;
  tmp += ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return errno_error([&] { return "cannot create queue log file " + tmp.string(); });
  auto fail = [&](const char* what) {
    const int e = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return io_error(std::string(what) + " " + tmp.string(), e);
  };
  static const std::vector<char> zeros(1 << 20, 0);
  for (std::uint64_t off = 0; off < opt_.file_bytes;) {
    auto n = std::min<std::uint64_t>(zeros.size(), opt_.file_bytes - off);
    if (!pwrite_all(fd, zeros.data(), n, off)) return fail("cannot write queue log file");
    off += n;
  }
  if (::fdatasync(fd) != 0) return fail("cannot sync queue log file");
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    auto e = errno_error([&] { return "cannot name queue log file " + path.string(); });
    ::unlink(tmp.c_str());
    return e;
  }
  ++files_written_;
  std::unique_lock lk(files_mu_);
  spares_.push_back(path);
  return {};
}

// Makes a new newest file: a spare renamed to the next seq, given a new
// header (and salt), flushed, then the directory flushed. The caller has
// sealed the old newest file. On failure the file goes back to the spares,
// so that no file with a header and without frames is left between two
// others.
res_void segment_log::start_next_file() {
  if (auto r = prepare_spare(); !r) return r;
  const std::uint64_t seq = next_seq_++; // a seq once tried is not used again
  std::filesystem::path from;
  {
    std::unique_lock lk(files_mu_);
    from = spares_.back();
    spares_.pop_back();
  }
  const auto path = opt_.dir / name_for("qlog", seq);
  auto give_back = [&](error e) {
    auto spare = opt_.dir / name_for("qspare", next_spare_++);
    if (::rename(path.c_str(), spare.c_str()) == 0) { // best effort: open() treats what is left as unused
      std::unique_lock lk(files_mu_);
      spares_.push_back(spare);
    }
    return e;
  };
  if (::rename(from.c_str(), path.c_str()) != 0) {
    auto e =
        errno_error([&] { return "cannot take queue log file " + from.string() + " into use as " + path.string(); });
    std::unique_lock lk(files_mu_);
    spares_.push_back(from);
    return e;
  }
  auto mf = map_file(path, opt_.file_bytes);
  if (!mf) {
    // The file itself is unusable (cut short, unreadable): it is dropped,
    // not given back, or every later start would take it again.
    ::unlink(path.c_str());
    return mf.error();
  }
  auto f = std::move(*mf);
  f->seq = seq;
  f->salt = new_salt();
  unsigned char hdr[header_fields];
  encode_header(hdr, header_view{seq, opt_.file_bytes, f->salt});
  // The first frame's place is zeroed too: a recycled file's old first frame
  // cannot pass (another salt), but zeros make the file read as empty at a glance.
  static const unsigned char zeros[frame_header_bytes] = {};
  if (!pwrite_all(f->fd, hdr, sizeof hdr, 0) || !pwrite_all(f->fd, zeros, sizeof zeros, header_bytes) ||
      ::fdatasync(f->fd) != 0)
    return give_back(errno_error([&] { return "cannot write the header of queue log file " + path.string(); }));
  if (auto r = sync_dir(); !r) return give_back(r.error());
  {
    std::unique_lock lk(files_mu_);
    files_.push_back(std::move(f));
    end_offset_.store(header_bytes);
  }
  ++files_started_;
  return {};
}

// Writes the trailer of `f` (its frames end at `off`) and flushes it. Once
// tried, the file takes no more frames, whether or not the flush worked: a
// trailer left in the page cache would otherwise hide frames written after
// it. A failed seal is tried again by the next append.
res_void segment_log::seal(file& f, std::uint64_t off) {
  f.sealing = true;
  unsigned char eh[frame_header_bytes];
  encode_frame_head(eh, frame_head{0, 0, flag_end, f.seq, 0, off});
  seeded_hash hs(f.salt);
  hs.update(eh, 40);
  util::put_be64(eh + 40, hs.digest());
  if (!pwrite_all(f.fd, eh, sizeof eh, f.trailer_at()) || ::fdatasync(f.fd) != 0)
    return errno_error([&] { return "cannot end queue log file " + f.path.string(); });
  f.frames_end = off;
  f.sealed = true;
  return {};
}

boost::system::result<log_pos, error> segment_log::append(std::uint64_t first_key, std::uint64_t last_key,
                                                          std::uint32_t count,
                                                          std::span<const std::string_view> pieces) {
  std::uint64_t body = 0;
  for (auto p : pieces)
    body += p.size();
  if (body > max_body())
    return error{make_error_code(errc::segment_too_large),
                 "a queue log frame of " + std::to_string(body) + " bytes does not fit in a file of " +
                     std::to_string(opt_.file_bytes) + " bytes (at most " + std::to_string(max_body()) + ")"};
  file* f = files_.back().get();
  std::uint64_t off = end_offset_.load();
  const std::uint64_t need = frame_header_bytes + align8(body);
  if (f->sealed || f->sealing || off + need > f->trailer_at()) {
    if (!f->sealed)
      if (auto r = seal(*f, off); !r) return r.error();
    if (auto r = start_next_file(); !r) return r.error();
    f = files_.back().get();
    off = end_offset_.load();
  }

  unsigned char head[frame_header_bytes];
  encode_frame_head(head, frame_head{static_cast<std::uint32_t>(body), count, 0, f->seq, first_key, last_key});
  seeded_hash hs(f->salt);
  hs.update(head, 40);
  for (auto p : pieces)
    hs.update(p.data(), p.size());
  util::put_be64(head + 40, hs.digest());

  static const char pad[8] = {};
  std::vector<iovec> iov;
  iov.reserve(pieces.size() + 2);
  iov.push_back({head, sizeof head});
  for (auto p : pieces)
    if (!p.empty()) iov.push_back({const_cast<char*>(p.data()), p.size()});
  if (align8(body) != body) iov.push_back({const_cast<char*>(pad), align8(body) - body});

  // One pwritev when it takes everything (IOV_MAX permitting), else in turns.
  std::uint64_t at = off;
  std::size_t i = 0;
  int err = 0;
  while (i < iov.size()) {
    int n = static_cast<int>(std::min<std::size_t>(iov.size() - i, IOV_MAX));
    ssize_t w = ::pwritev(f->fd, iov.data() + i, n, static_cast<off_t>(at));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      err = w == 0 ? EIO : errno;
      break;
    }
    at += static_cast<std::uint64_t>(w);
    auto left = static_cast<std::size_t>(w);
    while (i < iov.size() && left >= iov[i].iov_len)
      left -= iov[i++].iov_len;
    if (left > 0) {
      iov[i].iov_base = static_cast<char*>(iov[i].iov_base) + left;
      iov[i].iov_len -= left;
    }
  }
  if (!err && opt_.sync && ::fdatasync(f->fd) != 0) err = errno;
  if (err) {
    // What was written must not pass for a frame later: its header goes,
    // flushed (best effort: if that fails too, the frame may come back after
    // a crash, as a commit whose answer was lost does).
    static const unsigned char zeros[frame_header_bytes] = {};
    if (pwrite_all(f->fd, zeros, sizeof zeros, off) && opt_.sync) ::fdatasync(f->fd);
    return io_error("cannot append to queue log file " + f->path.string() + " at offset " + std::to_string(off), err);
  }
  end_offset_.store(off + need);
  ++appends_;
  return log_pos{f->seq, off};
}

log_pos segment_log::end() const {
  std::shared_lock lk(files_mu_);
  return log_pos{files_.back()->seq, end_offset_.load()};
}

log_pos segment_log::begin() const {
  std::shared_lock lk(files_mu_);
  return log_pos{files_.front()->seq, header_bytes};
}

boost::system::result<log_pos, error> segment_log::visit(log_pos from, const std::function<bool(const log_frame&)>& fn,
                                                         std::vector<file_ref>* keep) const {
  // The files and the end as of now, held, so that no lock is needed while
  // fn runs: a file released meanwhile stays mapped until they go.
  std::vector<std::shared_ptr<file>> files;
  log_pos end;
  {
    std::shared_lock lk(files_mu_);
    end = log_pos{files_.back()->seq, end_offset_.load()};
    if (from == log_pos{}) from = log_pos{files_.front()->seq, header_bytes};
    auto it = std::lower_bound(files_.begin(), files_.end(), from.seq,
                               [](const std::shared_ptr<file>& f, std::uint64_t s) { return f->seq < s; });
    if (it == files_.end() || (*it)->seq != from.seq)
      return error{make_error_code(errc::not_found), "queue log position " + std::to_string(from.seq) + ":" +
                                                         std::to_string(from.offset) +
                                                         " is in no file the log holds (released, or never written)"};
    files.assign(it, files_.end());
  }
  if (keep) keep->insert(keep->end(), files.begin(), files.end());
  std::uint64_t off = std::max(from.offset, header_bytes);
  for (auto& fp : files) {
    const file& f = *fp;
    const std::uint64_t stop = f.seq == end.seq ? end.offset : f.frames_end;
    while (off < stop) {
      auto fr = f.frame_at(off);
      if (!fr || (fr->first.flags & flag_end))
        return corrupt("queue log file " + f.path.string() + ": damaged frame at offset " + std::to_string(off) +
                       " (length or hash) inside the log");
      log_frame out{log_pos{f.seq, off}, fr->first.first_key, fr->first.last_key, fr->first.count, fr->second};
      off = f.next(off, fr->first);
      if (!fn(out)) return log_pos{f.seq, off};
    }
    if (f.seq == end.seq) return end;
    off = header_bytes;
  }
  return end;
}

res_void segment_log::release_before(log_pos pos) {
  std::vector<std::shared_ptr<file>> gone;
  {
    std::unique_lock lk(files_mu_);
    while (files_.size() > 1 && files_.front()->seq < pos.seq) {
      gone.push_back(std::move(files_.front()));
      files_.erase(files_.begin());
    }
  }
  res_void first_error;
  for (auto& f : gone) {
    auto path = f->path;
    // A file a reader still holds is deleted, not recycled: a recycled file
    // is written again, under the reader's views.
    const bool held = f.use_count() > 1;
    f.reset();
    std::size_t spares = 0;
    {
      std::shared_lock lk(files_mu_);
      spares = spares_.size();
    }
    if (!held && spares < opt_.spare_files) {
      auto spare = opt_.dir / name_for("qspare", next_spare_++);
      if (::rename(path.c_str(), spare.c_str()) == 0) {
        std::unique_lock lk(files_mu_);
        spares_.push_back(spare);
        continue;
      }
      if (first_error) first_error = errno_error([&] { return "cannot recycle queue log file " + path.string(); });
    }
    if (::unlink(path.c_str()) != 0 && first_error)
      first_error = errno_error([&] { return "cannot delete queue log file " + path.string(); });
  }
  if (!gone.empty())
    if (auto r = sync_dir(); !r && first_error) first_error = r;
  return first_error;
}

segment_log::stats_t segment_log::stats() const {
  std::shared_lock lk(files_mu_);
  stats_t s;
  s.files = files_.size();
  s.spares = spares_.size();
  s.disk_bytes = (s.files + s.spares) * opt_.file_bytes;
  s.appends = appends_.load();
  s.files_started = files_started_.load();
  s.files_written = files_written_.load();
  return s;
}

} // namespace edgerelay::queue::detail
