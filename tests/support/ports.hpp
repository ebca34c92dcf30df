#pragma once
// test::free_port — a TCP port on 127.0.0.1 for a node a test starts as a
// process with a fixed address in its config.
//
// Asking the kernel for port 0 and releasing it is not enough: the port
// comes from the ephemeral range, so until the node binds it, and again
// while a test kills and restarts the node on the same port, any connect()
// or bind(0) of a test running in parallel (ctest -j2) may take it, and the
// node then fails to start (EADDRINUSE). This picks ports below that range
// (/proc/sys/net/ipv4/ip_local_port_range), which the kernel never hands
// out on its own, checks that the port is free by binding it, and never
// returns the same port twice in one process.

#include <cstdint>

namespace edgerelay::test {

std::uint16_t free_port();

} // namespace edgerelay::test
