#pragma once
// Segment checksums: XXH3 64-bit over the payload bytes.

#include <cstdint>
#include <string>
#include <string_view>

namespace edgerelay::util {

std::uint64_t checksum(std::string_view data) noexcept;
// 16 lower-case hex digits, the form used in JSON and logs.
std::string checksum_hex(std::uint64_t c);

} // namespace edgerelay::util
