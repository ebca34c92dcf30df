#pragma once
// The file:// sink's spool: append-only files of segment records in a
// directory, fsynced before the sink acknowledges, rotated by size. Format
// (documented in docs/spool.md):
//   file  spool-<16 hex digits>.ers, starting with the 8 bytes "ERSPOOL1"
//   record  u32 record length (of what follows up to and including crc)
//           u8 id length, id, u8 stream length, stream,
//           i64 created_ms, u64 checksum (xxh3-64 of payload),
//           u32 payload length, payload,
//           u32 crc (low 32 bits of xxh3-64 over the record from id length on)
// A record cut short by a crash is detected by its length and crc and
// dropped when the spool is opened again (it was never acknowledged).

#include "queue/segment_view.hpp"
#include "util/errc.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::relay {

struct spool_record {
  std::string id, stream;
  std::int64_t created_ms = 0;
  std::uint64_t checksum = 0;
  std::string payload;
};

// What append() takes: views of a record's fields (the store's segment_view,
// so the direct path hands its segments over as they are).
using spool_input = queue::segment_view;

// Owns the directory; one writer (not thread-safe: the sink calls it from one strand).
class spool_writer {
public:
  // Opens `dir` (created if missing) and starts a new file. Reads the ids of
  // the last `recent_ids` records of the newest two files (see recent_ids()).
  static boost::system::result<std::unique_ptr<spool_writer>, error>
  open(const std::filesystem::path& dir, std::uint64_t rotate_bytes = 64ull << 20, std::size_t recent_ids = 0);
  ~spool_writer();
  // The ids of the records at the end of the spool when it was opened, oldest
  // first: what a crash between an append's fsync and its acknowledgement may
  // have left both in the spool and still queued. The sink skips those.
  const std::vector<std::string>& recent_ids() const noexcept { return recent_; }
  // Appends every record and fsyncs; true only when all are durable. On
  // failure the file is cut back to where it was, so none of them is left.
  boost::system::result<void, error> append(std::span<const spool_input> records);
  std::uint64_t bytes_written() const noexcept { return written_; }

  // What the writer leaves in the page cache: the newest cache_keep_bytes of
  // the current file. Older parts, once fsynced, are dropped from the cache
  // (posix_fadvise DONTNEED) in steps of cache_drop_step, and a closed file's
  // rest when the next one starts, so the spool recycles the same pages of
  // memory instead of growing the page cache by everything it writes. A
  // reader within cache_keep_bytes of the end reads from memory.
  static constexpr std::uint64_t cache_keep_bytes = 16ull << 20;
  static constexpr std::uint64_t cache_drop_step = 4ull << 20;
  // Bytes of the current file still in the page cache as far as the writer
  // knows (tests).
  std::uint64_t cached_bytes() const noexcept { return file_bytes_ - cached_from_; }

private:
  spool_writer() = default;
  boost::system::result<void, error> roll();
  error cut_back(error e);
  std::filesystem::path dir_;
  std::vector<std::string> recent_;
  void drop_cached(std::uint64_t upto);
  std::uint64_t rotate_ = 0, file_bytes_ = 0, written_ = 0, seq_ = 0;
  std::uint64_t cached_from_ = 0; // offset in the current file from which pages may be cached
  int fd_ = -1;
  std::string buf_; // framed small records; kept between appends for its capacity
};

// True for a spool file's name: spool-<16 hex digits>.ers.
bool is_spool_file_name(std::string_view name) noexcept;

// Reads every record of every spool file in order. `visit` returns false to stop.
// A torn tail (crash mid-append) ends that file's records; other damage is an error.
boost::system::result<std::uint64_t, error> read_spool(const std::filesystem::path& dir,
                                                       const std::function<bool(const spool_record&)>& visit);

} // namespace edgerelay::relay
