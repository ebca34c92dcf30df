#pragma once
// The metric families of the external contract (DESIGN §7, docs/metrics.md),
// registered in one registry under the prefix `edgerelay_`. Construct one
// standard_metrics per node, next to its registry; the references stay valid
// as long as the registry lives.
//
// Threads: as registry — any member of any family may be used from any thread.

#include "telemetry/metrics.hpp"

#include <string_view>

namespace edgerelay::telemetry {

struct standard_metrics {
  // Registers every family in `r`; throws std::invalid_argument when one of
  // the names is already registered there.
  explicit standard_metrics(registry& r);

  counter_family& segments_accepted;       // edgerelay_segments_accepted_total{stream}
  counter_family& segments_delivered;      // edgerelay_segments_delivered_total{peer}
  counter_family& segments_deadlettered;   // edgerelay_segments_deadlettered_total{peer,reason}
  counter_family& segments_evicted;        // edgerelay_segments_evicted_total{peer}
  counter_family& segments_rejected;       // edgerelay_segments_rejected_total{reason}
  gauge_family& queue_segments;            // edgerelay_queue_segments{peer}
  gauge_family& queue_bytes;               // edgerelay_queue_bytes{peer}
  gauge_family& deadletter_segments;       // edgerelay_deadletter_segments
  counter_family& delivery_attempts;       // edgerelay_delivery_attempts_total{peer,result}
  gauge_family& peer_connected;            // edgerelay_peer_connected{peer}
  histogram_family& delivery_latency;      // edgerelay_delivery_latency_seconds{peer}
  counter_family& bytes_sent;              // edgerelay_bytes_sent_total{peer}
  gauge_family& bandwidth_quota_remaining; // edgerelay_bandwidth_quota_remaining_bytes{peer}
  counter_family& tls_handshake_failures;  // edgerelay_tls_handshake_failures_total{listener,reason}
  gauge_family& tls_cert_expiry;           // edgerelay_tls_cert_expiry_timestamp_seconds{name}
  histogram_family& store_commit;          // edgerelay_store_commit_seconds
  counter_family& canary_rounds;           // edgerelay_canary_rounds_total{result}

  // Stops exporting every series labelled peer=`peer`; returns how many
  // series were removed.
  std::size_t remove_peer(std::string_view peer);
  // Stops exporting the series of `peer`'s link and delivery path
  // (peer_connected, delivery_attempts, delivery_latency, bytes_sent,
  // bandwidth_quota_remaining), keeping what its stored queue and counters
  // report: for a peer removed from the config whose queue is kept, which
  // must not look like a peer that is down.
  std::size_t remove_peer_link(std::string_view peer);
};

} // namespace edgerelay::telemetry
