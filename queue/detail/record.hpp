#pragma once
// The byte layout of a queued segment (the value under a peer queue key) and
// of a dead-letter entry. Documented in docs/store-format.md; any change bumps
// the version byte.
//
// queue record, version 1:
//   u8  version (=1)  u8 flags (0)  u16 attempts
//   i64 created_ms    i64 next_attempt_ms (0: ready now)
//   u64 checksum (xxh3-64 of payload)
//   u8  id_len     id bytes
//   u8  stream_len stream bytes
//   u16 error_len  last error bytes
//   payload (the rest)

#include "util/bytes.hpp"

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>

namespace edgerelay::queue::detail {

inline constexpr std::uint8_t record_version = 1;
inline constexpr std::size_t record_fixed = 1 + 1 + 2 + 8 + 8 + 8;

struct record_view {
  std::uint16_t attempts = 0;
  std::int64_t created_ms = 0;
  std::int64_t next_attempt_ms = 0;
  std::uint64_t checksum = 0;
  std::string_view id;
  std::string_view stream;
  std::string_view last_error;
  std::string_view payload;
};

inline std::size_t record_size(std::size_t id, std::size_t stream, std::size_t err, std::size_t payload) {
  return record_fixed + 1 + id + 1 + stream + 2 + err + payload;
}
inline std::size_t record_size(const record_view& r) {
  return record_size(r.id.size(), r.stream.size(), r.last_error.size(), r.payload.size());
}

// Writes r into out, which must have record_size(r) bytes.
inline void encode_record(const record_view& r, char* out) {
  auto* p = reinterpret_cast<unsigned char*>(out);
  p[0] = record_version;
  p[1] = 0;
  util::put_be16(p + 2, r.attempts);
  util::put_be64(p + 4, static_cast<std::uint64_t>(r.created_ms));
  util::put_be64(p + 12, static_cast<std::uint64_t>(r.next_attempt_ms));
  util::put_be64(p + 20, r.checksum);
  p += record_fixed;
  auto copy = [&p](std::string_view s) {
    if (!s.empty()) std::memcpy(p, s.data(), s.size()); // memcpy from a null empty view is UB
    p += s.size();
  };
  *p++ = static_cast<unsigned char>(r.id.size());
  copy(r.id);
  *p++ = static_cast<unsigned char>(r.stream.size());
  copy(r.stream);
  util::put_be16(p, static_cast<std::uint16_t>(r.last_error.size()));
  p += 2;
  copy(r.last_error);
  copy(r.payload);
}

// Only the fixed header; cheap enough for scans that skip most records.
inline bool decode_next_attempt(std::string_view v, std::int64_t& next_attempt_ms) {
  if (v.size() < record_fixed || static_cast<unsigned char>(v[0]) != record_version) return false;
  next_attempt_ms = static_cast<std::int64_t>(util::get_be64(reinterpret_cast<const unsigned char*>(v.data()) + 12));
  return true;
}

inline std::optional<record_view> decode_record(std::string_view v) {
  util::reader rd(v);
  record_view r;
  if (rd.u8() != record_version) return std::nullopt;
  rd.u8();
  r.attempts = rd.u16();
  r.created_ms = static_cast<std::int64_t>(rd.u64());
  r.next_attempt_ms = static_cast<std::int64_t>(rd.u64());
  r.checksum = rd.u64();
  r.id = rd.bytes(rd.u8());
  r.stream = rd.bytes(rd.u8());
  r.last_error = rd.bytes(rd.u16());
  if (!rd.ok()) return std::nullopt;
  r.payload = rd.rest();
  return r;
}

// dead-letter entry, version 1:
//   u8 version (=1)  u32 peer id  i64 deadlettered_ms
//   u8 reason_len reason bytes
//   the queue record (as above, with its attempts and last error)
struct deadletter_view {
  std::uint32_t peer = 0;
  std::int64_t deadlettered_ms = 0;
  std::string_view reason;
  std::string_view record;
};

inline std::string encode_deadletter(std::uint32_t peer, std::int64_t at_ms, std::string_view reason,
                                     std::string_view record) {
  std::string out;
  out.reserve(1 + 4 + 8 + 1 + reason.size() + record.size());
  util::writer w(out);
  w.u8(1);
  w.u32(peer);
  w.u64(static_cast<std::uint64_t>(at_ms));
  w.u8(static_cast<std::uint8_t>(reason.size()));
  w.bytes(reason);
  w.bytes(record);
  return out;
}

inline std::optional<deadletter_view> decode_deadletter(std::string_view v) {
  util::reader rd(v);
  deadletter_view d;
  if (rd.u8() != 1) return std::nullopt;
  d.peer = rd.u32();
  d.deadlettered_ms = static_cast<std::int64_t>(rd.u64());
  d.reason = rd.bytes(rd.u8());
  if (!rd.ok()) return std::nullopt;
  d.record = rd.rest();
  return d;
}

inline std::string key64(std::uint64_t k) {
  std::string s(8, '\0');
  util::put_be64(reinterpret_cast<unsigned char*>(s.data()), k);
  return s;
}
inline std::uint64_t key64(std::string_view s) {
  return s.size() == 8 ? util::get_be64(reinterpret_cast<const unsigned char*>(s.data())) : 0;
}

} // namespace edgerelay::queue::detail
