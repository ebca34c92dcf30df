#pragma once
// The edgerelay command line. Exit codes: 0 ok, 1 runtime failure, 2 usage or config error.

namespace edgerelay::relay {
int run_cli(int argc, char** argv);
}
