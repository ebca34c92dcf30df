#include "relay/cli.hpp"

int main(int argc, char** argv) { return edgerelay::relay::run_cli(argc, argv); }
