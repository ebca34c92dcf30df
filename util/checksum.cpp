#include "util/checksum.hpp"

#include <cstdio>
#include <xxhash.h>

namespace edgerelay::util {

std::uint64_t checksum(std::string_view data) noexcept { return XXH3_64bits(data.data(), data.size()); }

std::string checksum_hex(std::uint64_t c) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(c));
  return buf;
}

} // namespace edgerelay::util
