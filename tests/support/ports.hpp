#pragma once
// test::free_port — a TCP port on 127.0.0.1 for a node a test starts as a
// process with a fixed address in its config: util::pick_local_port (below
// the kernel's ephemeral range, free, never the same twice; util/ports.hpp
// says why).

#include "util/ports.hpp"

#include <cstdint>

namespace edgerelay::test {

inline std::uint16_t free_port() { return util::pick_local_port(); }

} // namespace edgerelay::test
