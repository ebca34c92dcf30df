#include "util/checksum.hpp"

#include <cstdio>
#define XXH_STATIC_LINKING_ONLY // XXH3_state_t on the stack
#include <xxhash.h>

namespace edgerelay::util {

std::uint64_t checksum(std::string_view data) noexcept { return XXH3_64bits(data.data(), data.size()); }

std::uint64_t checksum(std::initializer_list<std::string_view> pieces) noexcept {
  XXH3_state_t st;
  XXH3_64bits_reset(&st);
  for (auto p : pieces)
    XXH3_64bits_update(&st, p.data(), p.size());
  return XXH3_64bits_digest(&st);
}

std::string checksum_hex(std::uint64_t c) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(c));
  return buf;
}

} // namespace edgerelay::util
