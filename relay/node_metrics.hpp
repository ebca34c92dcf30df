#pragma once
// The node's metrics (docs/metrics.md): the families of the external contract
// (telemetry::standard_metrics) plus the node's own, and each peer's children
// taken once so the delivery path updates them without a lookup.
//
// Threads: any member from any thread (the registry's guarantees).

#include "telemetry/standard_metrics.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace edgerelay::relay {

// The result label of edgerelay_delivery_attempts_total{peer,result}.
enum class attempt_result { ok, rejected, error, timeout, unreachable };

// One peer's series on the delivery path. The pointers stay valid as long as
// the registry that made them (children are never freed before it).
struct peer_metrics {
  telemetry::histogram* latency = nullptr;
  telemetry::counter* attempts[5] = {};

  void attempt(attempt_result r, std::uint64_t n = 1) const noexcept { attempts[static_cast<int>(r)]->inc(n); }
  // A segment created (accepted at its origin) at created_ms was acknowledged at now_ms.
  void delivered(std::int64_t created_ms, std::int64_t now_ms) const noexcept {
    latency->observe(static_cast<double>(std::max<std::int64_t>(0, now_ms - created_ms)) / 1000.0);
  }
};

struct node_metrics {
  node_metrics();

  telemetry::registry reg;
  telemetry::standard_metrics m{reg};
  // Not in DESIGN §7's list; the alerts (deploy/prometheus/alerts.yml) use the first two.
  telemetry::gauge_family& queue_oldest_age;  // edgerelay_queue_oldest_age_seconds{peer}
  telemetry::gauge_family& loss;              // edgerelay_loss_segments{peer}
  telemetry::counter_family& tls_rotations;   // edgerelay_tls_cert_rotations_total{name,result}
  telemetry::counter_family& sessions_closed; // edgerelay_tls_sessions_closed_total{listener,reason}
  telemetry::gauge_family& crl_next_update;   // edgerelay_tls_crl_next_update_timestamp_seconds{name}

  peer_metrics for_peer(const std::string& name);
  void accepted(std::string_view stream, std::uint64_t n = 1) { m.segments_accepted.labels({stream}).inc(n); }
  void rejected(std::string_view reason, std::uint64_t n = 1) { m.segments_rejected.labels({reason}).inc(n); }
};

const char* to_string(attempt_result r) noexcept;

} // namespace edgerelay::relay
