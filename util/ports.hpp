#pragma once
// util::pick_local_port — a TCP port on 127.0.0.1 for a process that is
// started with a fixed address in its config and restarted on it (the
// evidence harness's node restarts, the e2e tests).
//
// Asking the kernel for port 0 and releasing it is not enough: the port
// comes from the ephemeral range, so until the process binds it, and again
// between a kill and the restart on the same port, any connect() or bind(0)
// of another program may take it as its local port, and the process then
// fails to start (EADDRINUSE). This picks ports below that range
// (/proc/sys/net/ipv4/ip_local_port_range), which the kernel never hands
// out on its own, checks that the port is free by binding it, and never
// returns the same port twice in one process.
//
// Several such processes run at once (ctest -j, the evidence scenarios):
// each port picked is also reserved machine-wide, for as long as the picking
// process lives, by binding an abstract Unix socket named after it
// ("edgerelay-port-<n>"; the kernel frees the name when the process ends,
// however it ends). A port another live process reserved is never picked,
// so two test processes cannot both give one port to the nodes they start
// (the node started second failed with EADDRINUSE). When there is no room
// below the range it falls back to the kernel's choice.

#include <cstdint>

namespace edgerelay::util {

std::uint16_t pick_local_port();

} // namespace edgerelay::util
