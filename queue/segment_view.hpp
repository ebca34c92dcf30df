#pragma once
// A segment's fields as views into memory someone else owns: what the store
// hands a direct sink (store::set_direct_sink) and what the file sink's
// spool takes (relay::spool_input), so the one passes to the other as it is.

#include <cstdint>
#include <string_view>

namespace edgerelay::queue {

struct segment_view {
  std::string_view id, stream;
  std::int64_t created_ms = 0;
  std::uint64_t checksum = 0;
  std::string_view payload;
};

} // namespace edgerelay::queue
