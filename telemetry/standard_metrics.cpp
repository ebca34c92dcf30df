#include "telemetry/standard_metrics.hpp"

namespace edgerelay::telemetry {

standard_metrics::standard_metrics(registry& r)
    : segments_accepted(r.add_counter("edgerelay_segments_accepted_total",
                                      "Segments newly stored by this node, by stream (duplicates not counted).",
                                      {"stream"})),
      segments_delivered(r.add_counter("edgerelay_segments_delivered_total",
                                       "Segments whose delivery to a peer was acknowledged.", {"peer"})),
      segments_deadlettered(r.add_counter("edgerelay_segments_deadlettered_total",
                                          "Segments moved to the dead-letter store, by peer and reason.",
                                          {"peer", "reason"})),
      segments_evicted(r.add_counter("edgerelay_segments_evicted_total",
                                     "Queued segments evicted by the overflow policy (evict_lru).", {"peer"})),
      segments_rejected(
          r.add_counter("edgerelay_segments_rejected_total", "Segments refused at ingest, by reason.", {"reason"})),
      queue_segments(r.add_gauge("edgerelay_queue_segments", "Segments queued for a peer now.", {"peer"})),
      queue_bytes(r.add_gauge("edgerelay_queue_bytes", "Payload bytes queued for a peer now.", {"peer"})),
      deadletter_segments(r.add_gauge("edgerelay_deadletter_segments", "Segments in the dead-letter store now.")),
      delivery_attempts(r.add_counter("edgerelay_delivery_attempts_total",
                                      "Attempts to deliver a batch to a peer, by result.", {"peer", "result"})),
      peer_connected(r.add_gauge("edgerelay_peer_connected", "1 while the link to a peer is up, else 0.", {"peer"})),
      delivery_latency(r.add_histogram("edgerelay_delivery_latency_seconds",
                                       "Time from a segment's acceptance to its acknowledged delivery to a peer.",
                                       {"peer"}, default_latency_buckets())),
      bytes_sent(r.add_counter("edgerelay_bytes_sent_total", "Bytes sent on the wire to a peer.", {"peer"})),
      bandwidth_quota_remaining(r.add_gauge("edgerelay_bandwidth_quota_remaining_bytes",
                                            "Bytes left in a peer's daily quota until the next reset.", {"peer"})),
      tls_handshake_failures(r.add_counter("edgerelay_tls_handshake_failures_total",
                                           "TLS connections refused by a listener, by reason.",
                                           {"listener", "reason"})),
      tls_cert_expiry(r.add_gauge("edgerelay_tls_cert_expiry_timestamp_seconds",
                                  "Unix time at which a configured certificate expires (notAfter).", {"name"})),
      store_commit(r.add_histogram("edgerelay_store_commit_seconds",
                                   "Duration of one group-commit write transaction, fsync included.", {},
                                   default_commit_buckets())),
      canary_rounds(
          r.add_counter("edgerelay_canary_rounds_total", "Canary soak rounds completed, by result.", {"result"})) {}

std::size_t standard_metrics::remove_peer(std::string_view peer) {
  std::size_t n = 0;
  for (detail::family_base* f : std::initializer_list<detail::family_base*>{
           &segments_delivered, &segments_deadlettered, &segments_evicted, &queue_segments, &queue_bytes,
           &delivery_attempts, &peer_connected, &delivery_latency, &bytes_sent, &bandwidth_quota_remaining})
    n += f->remove_matching("peer", peer);
  return n;
}

std::size_t standard_metrics::remove_peer_link(std::string_view peer) {
  std::size_t n = 0;
  for (detail::family_base* f : std::initializer_list<detail::family_base*>{
           &delivery_attempts, &peer_connected, &delivery_latency, &bytes_sent, &bandwidth_quota_remaining})
    n += f->remove_matching("peer", peer);
  return n;
}

} // namespace edgerelay::telemetry
