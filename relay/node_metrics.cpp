#include "relay/node_metrics.hpp"

namespace edgerelay::relay {

const char* to_string(attempt_result r) noexcept {
  switch (r) {
  case attempt_result::ok: return "ok";
  case attempt_result::rejected: return "rejected";
  case attempt_result::error: return "error";
  case attempt_result::timeout: return "timeout";
  case attempt_result::unreachable: return "unreachable";
  }
  return "error";
}

node_metrics::node_metrics()
    : queue_oldest_age(reg.add_gauge("edgerelay_queue_oldest_age_seconds",
                                     "Age of the segment at the head of the peer's queue (0 when empty).", {"peer"})),
      loss(reg.add_gauge("edgerelay_loss_segments",
                         "Segments routed to the peer and not accounted for as delivered, queued, dead-lettered, "
                         "evicted or purged (the accounting identity; always 0 unless something is wrong).",
                         {"peer"})),
      tls_rotations(reg.add_counter("edgerelay_tls_cert_rotations_total",
                                    "Certificate, key, CA or CRL changes picked up without a restart, by TLS "
                                    "material name and result (applied, failed).",
                                    {"name", "result"})),
      sessions_closed(reg.add_counter("edgerelay_tls_sessions_closed_total",
                                      "Live connections closed because reloaded trust material (a new CRL or CA "
                                      "file) no longer trusts the other side, by listener (or peer:<name>) and "
                                      "reason.",
                                      {"listener", "reason"})),
      crl_next_update(reg.add_gauge("edgerelay_tls_crl_next_update_timestamp_seconds",
                                    "Earliest nextUpdate of the CRLs in force for a TLS material (Unix time): once "
                                    "it passes, every chain those CRLs cover is refused.",
                                    {"name"})) {}

peer_metrics node_metrics::for_peer(const std::string& name) {
  peer_metrics p;
  p.latency = &m.delivery_latency.labels({name});
  for (int i = 0; i < 5; ++i)
    p.attempts[i] = &m.delivery_attempts.labels({name, to_string(static_cast<attempt_result>(i))});
  m.peer_connected.labels({name});
  m.bytes_sent.labels({name});
  return p;
}

} // namespace edgerelay::relay
