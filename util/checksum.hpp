#pragma once
// Segment checksums: XXH3 64-bit over the payload bytes.

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace edgerelay::util {

std::uint64_t checksum(std::string_view data) noexcept;
// checksum() of the concatenation of several pieces, without joining them.
std::uint64_t checksum(std::initializer_list<std::string_view> pieces) noexcept;
// 16 lower-case hex digits, the form used in JSON and logs.
std::string checksum_hex(std::uint64_t c);

} // namespace edgerelay::util
