#pragma once
// UTF-8 validation for text that must be valid UTF-8 on the wire (Prometheus
// label values, JSON log lines) but may come from untrusted input.

#include <cstddef>
#include <string_view>

namespace edgerelay::telemetry::detail {

// U+FFFD, written in place of each byte that is not part of a valid sequence.
inline constexpr std::string_view replacement_character = "\xEF\xBF\xBD";

// Length of the valid UTF-8 sequence (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF) that starts at s[i], or 0 when the byte
// there does not start one.
inline std::size_t utf8_sequence_length(std::string_view s, std::size_t i) noexcept {
  auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  auto cont = [&](std::size_t k) { return k < s.size() && (b(k) & 0xC0) == 0x80; };
  unsigned char c = b(i);
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(i + 1) || !cont(i + 2)) return 0;
    if (c == 0xE0 && b(i + 1) < 0xA0) return 0;  // overlong
    if (c == 0xED && b(i + 1) >= 0xA0) return 0; // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    if (c == 0xF0 && b(i + 1) < 0x90) return 0;  // overlong
    if (c == 0xF4 && b(i + 1) >= 0x90) return 0; // above U+10FFFF
    return 4;
  }
  return 0;
}

// Calls f(piece, true) for each maximal run of valid UTF-8 and f(byte, false)
// for each byte that is not part of a valid sequence, in order.
template <class F>
void for_each_utf8_piece(std::string_view s, F&& f) {
  std::size_t start = 0, i = 0;
  while (i < s.size()) {
    auto n = utf8_sequence_length(s, i);
    if (n) {
      i += n;
      continue;
    }
    if (i > start) f(s.substr(start, i - start), true);
    f(s.substr(i, 1), false);
    start = ++i;
  }
  if (i > start) f(s.substr(start, i - start), true);
}

} // namespace edgerelay::telemetry::detail
