#pragma once
// The segment log: the first part of the edge queue proposed in
// docs/proposals/edge-queue-log.md (step 1 there), built and tested on its
// own; the store does not use it yet.
//
// An append-only log of frames in preallocated files, written by one thread
// and read by any number through read-only maps. A frame is what one group
// commit appends: an opaque body (the store's encoding of the group's
// segments) with the range of queue keys it holds. One append is one
// pwritev() and, with `sync`, one fdatasync(): the files are written in full
// (zeros) before they take frames and recycled rather than deleted, so an
// append changes neither a file's size nor its extents and the flush needs
// no journal commit.
//
// Files: DIR/qlog-<16 hex seq>.erq hold frames, DIR/qspare-<16 hex>.erq are
// written-out files waiting to be used. Format (docs/proposals/edge-queue-log.md):
//   file header (the first 4 KiB): "ERQLOG01", u32 version (1), u32 0,
//     u64 seq, u64 file size, u64 salt (random, new each time the file is
//     used), u64 xxh3-64 of the 40 bytes before it; zeros.
//   frame (8-byte aligned, from offset 4096):
//     u32 magic "ERQF", u32 body length, u64 seq of its file,
//     u64 first key, u64 last key, u32 count, u32 flags (0),
//     u64 xxh3-64, seeded with the file's salt, of the 40 bytes before it and
//     of the body; body; zeros to 8.
//   trailer (the file's last 48 bytes, once it is full): a frame with no
//     body, flags 1 (end) and, as its last key, the offset where its frames
//     end. Written and flushed before the next file takes frames.
// Frames a recycled file held before never pass as its own (another salt),
// and a producer cannot make a payload pass for a frame (it cannot know the
// salt).
//
// Recovery (open): every file but the newest must have its trailer (their
// frames are checked when they are read); the newest is checked frame by
// frame, and the first frame that fails its checks ends the log (a torn
// tail: its append never returned). When a frame that passes its checks lies
// anywhere after it, or an older file lacks its trailer or its header, the
// log is damaged and open() refuses it, saying which file and offset, rather
// than drop what follows. Only the newest file may lack a valid header (it
// was being taken into use): it goes back to the spares. Damage to the very
// last frame cannot be told from a torn tail and reads as one. With `sync`
// off, a power cut may leave frames flushed out of order, which open()
// refuses as damage.
//
// The directory belongs to one process: the store's lock on its data_dir
// (the log lives inside it) keeps a second one out.

#include "util/errc.hpp"

#include <atomic>
#include <compare>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string_view>
#include <vector>

namespace edgerelay::queue::detail {

struct segment_log_file; // one file of the log (segment_log.cpp)

// Where a frame starts: its file's seq and its offset in that file.
struct log_pos {
  std::uint64_t seq = 0;
  std::uint64_t offset = 0;
  friend auto operator<=>(const log_pos&, const log_pos&) = default;
};

struct log_frame {
  log_pos pos;
  std::uint64_t first_key = 0, last_key = 0;
  std::uint32_t count = 0;
  std::string_view body; // points into the file's read-only map
};

struct segment_log_options {
  std::filesystem::path dir;
  std::uint64_t file_bytes = 64ull << 20; // a multiple of 4096, at least 64 KiB
  bool sync = true;                       // fdatasync each append
  std::size_t spare_files = 2;            // released files kept for reuse; more are deleted
};

class segment_log {
public:
  static constexpr std::uint64_t header_bytes = 4096;
  static constexpr std::uint64_t frame_header_bytes = 48;

  // Opens (creating DIR if missing) and finds the log's end. Fails with
  // errc::store_corrupt for a damaged log, errc::invalid_argument for bad
  // options, or the system's error for I/O.
  static boost::system::result<std::unique_ptr<segment_log>, error> open(segment_log_options o);
  ~segment_log();
  segment_log(const segment_log&) = delete;
  segment_log& operator=(const segment_log&) = delete;

  // The largest body one frame can hold.
  std::uint64_t max_body() const noexcept;

  // Appends one frame whose body is the concatenation of `pieces` (writer
  // thread only). Durable when it returns with `sync`. On failure nothing of
  // the frame counts: the log's end stays where it was and the next append
  // writes over what this one left.
  boost::system::result<log_pos, error> append(std::uint64_t first_key, std::uint64_t last_key, std::uint32_t count,
                                               std::span<const std::string_view> pieces);

  // Where the next frame goes; every frame before it is complete (and
  // durable with `sync`).
  log_pos end() const;
  // The position of the oldest frame still held.
  log_pos begin() const;

  // Calls fn for each frame from `from` (a frame's position, begin(), or a
  // position end() returned; log_pos{} is begin()) up to the end as of the
  // call, in order, while fn returns true. Safe beside append() and
  // release_before() on other threads, and takes no lock while fn runs (fn
  // may take its time; it must not call append() or release_before()). The
  // bodies stay valid until visit() returns, or as long as `keep` (when
  // given) holds the files visited: a file released while held is deleted,
  // not recycled. Returns the position after the last frame fn was given
  // (fn's `false` included).
  using file_ref = std::shared_ptr<const segment_log_file>;
  boost::system::result<log_pos, error> visit(log_pos from, const std::function<bool(const log_frame&)>& fn,
                                              std::vector<file_ref>* keep = nullptr) const;

  // Gives up every file whose frames all lie before `pos` (writer thread
  // only); they become spares or are deleted (all are tried; the first
  // failure is returned).
  boost::system::result<void, error> release_before(log_pos pos);

  // Makes sure a spare file is ready, so that the next file change does not
  // have to write a whole file on the append path (writer thread only).
  boost::system::result<void, error> prepare_spare();

  struct stats_t {
    std::size_t files = 0, spares = 0;
    std::uint64_t disk_bytes = 0; // the files' and the spares' bytes
    std::uint64_t appends = 0, files_started = 0, files_written = 0;
  };
  stats_t stats() const; // any thread

private:
  using file = segment_log_file;
  segment_log() = default;
  boost::system::result<void, error> recover();
  boost::system::result<void, error> start_next_file();
  boost::system::result<void, error> seal(file& f, std::uint64_t off);
  boost::system::result<void, error> sync_dir();

  segment_log_options opt_;
  mutable std::shared_mutex files_mu_; // shared: readers; exclusive: a file is added or removed
  std::vector<std::shared_ptr<file>> files_;
  std::vector<std::filesystem::path> spares_; // changed under files_mu_ exclusive
  std::uint64_t next_seq_ = 1, next_spare_ = 1;
  std::atomic<std::uint64_t> end_offset_{0}; // in files_.back()
  std::atomic<std::uint64_t> appends_{0}, files_started_{0}, files_written_{0};
};

} // namespace edgerelay::queue::detail
