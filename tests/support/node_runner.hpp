#pragma once
// In-process nodes for end-to-end tests: start one from a config (failing the
// test with the config's or the node's own message), and wait for a
// condition with a deadline instead of sleeping.

#include "relay/config.hpp"
#include "relay/node.hpp"

#include <catch2/catch.hpp>

#include <chrono>
#include <memory>
#include <thread>

namespace edgerelay::test {

template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

inline std::unique_ptr<relay::node> start_node(relay::config_result<relay::node_config> cfg,
                                               util::clock* clk = nullptr) {
  INFO((cfg ? std::string() : relay::to_string(cfg.error())));
  REQUIRE(cfg.has_value());
  auto n = relay::node::create(std::move(*cfg), clk, 2);
  INFO((n ? std::string() : n.error().message));
  REQUIRE(n.has_value());
  auto started = (*n)->start();
  INFO((started ? std::string() : started.error().message));
  REQUIRE(started.has_value());
  return std::move(*n);
}

} // namespace edgerelay::test
