#pragma once
// Fixed-width big-endian coding. Big-endian keys sort in numeric order under
// LMDB's default memcmp comparison.

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace edgerelay::util {

inline void put_be64(unsigned char* p, std::uint64_t v) noexcept {
  v = __builtin_bswap64(v);
  std::memcpy(p, &v, 8);
}
inline std::uint64_t get_be64(const unsigned char* p) noexcept {
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}
inline void put_be32(unsigned char* p, std::uint32_t v) noexcept {
  v = __builtin_bswap32(v);
  std::memcpy(p, &v, 4);
}
inline std::uint32_t get_be32(const unsigned char* p) noexcept {
  std::uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}
inline void put_be16(unsigned char* p, std::uint16_t v) noexcept {
  v = __builtin_bswap16(v);
  std::memcpy(p, &v, 2);
}
inline std::uint16_t get_be16(const unsigned char* p) noexcept {
  std::uint16_t v;
  std::memcpy(&v, p, 2);
  return __builtin_bswap16(v);
}

// Appends big-endian fields to a byte string.
class writer {
public:
  explicit writer(std::string& out) : out_(out) {}
  void u8(std::uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(std::uint16_t v) { append(&v, 2, put_be16); }
  void u32(std::uint32_t v) { append(&v, 4, put_be32); }
  void u64(std::uint64_t v) { append(&v, 8, put_be64); }
  void bytes(std::string_view b) { out_.append(b); }

private:
  template <class T, class F>
  void append(const T* v, std::size_t n, F put) {
    unsigned char buf[8];
    put(buf, *v);
    out_.append(reinterpret_cast<const char*>(buf), n);
  }
  std::string& out_;
};

// Reads big-endian fields from a byte view; every read checks the remaining
// length and latches failure instead of reading past the end.
class reader {
public:
  explicit reader(std::string_view in) : in_(in) {}
  bool ok() const noexcept { return ok_; }
  std::size_t remaining() const noexcept { return in_.size(); }
  std::uint8_t u8() { return take(1) ? static_cast<std::uint8_t>(last_[0]) : 0; }
  std::uint16_t u16() { return take(2) ? get_be16(ptr()) : 0; }
  std::uint32_t u32() { return take(4) ? get_be32(ptr()) : 0; }
  std::uint64_t u64() { return take(8) ? get_be64(ptr()) : 0; }
  std::string_view bytes(std::size_t n) { return take(n) ? last_ : std::string_view{}; }
  std::string_view rest() {
    auto r = in_;
    in_ = {};
    return r;
  }

private:
  const unsigned char* ptr() const noexcept { return reinterpret_cast<const unsigned char*>(last_.data()); }
  bool take(std::size_t n) {
    if (!ok_ || in_.size() < n) {
      ok_ = false;
      last_ = {};
      return false;
    }
    last_ = in_.substr(0, n);
    in_.remove_prefix(n);
    return true;
  }
  std::string_view in_;
  std::string_view last_;
  bool ok_ = true;
};

} // namespace edgerelay::util
