#pragma once
// The validation scenarios of `edgerelay evidence run` (DESIGN.md §8, one per
// claim; docs/evidence.md, "Validation scenarios", says what each does, its
// quick and full sizes and its checks). Each fills the report it is given
// with parameters, checks of observed values, metrics and limitations; the
// runner stamps the environment, derives the status and writes the file.
// A scenario may throw scenario_error (or any std::exception) for an
// environment failure; every process and proxy it started is stopped by
// then (RAII).

#include "relay/scenarios/harness.hpp"

#include <span>
#include <string_view>

namespace edgerelay::relay::scenarios {

using scenario_fn = void (*)(context&, telemetry::report&);

struct scenario_info {
  std::string_view claim;
  std::string_view title;
  scenario_fn run;
};

// In run order. RL-SOAK-01 (the canary soak, `evidence export`) and
// XC-CERT-01 (certificate rotation) are not scenarios.
std::span<const scenario_info> scenario_list() noexcept;

void upstream_outage(context& ctx, telemetry::report& r);      // RL-IMPW-01
void bandwidth_impairment(context& ctx, telemetry::report& r); // RL-IMPW-02
void latency_impairment(context& ctx, telemetry::report& r);   // RL-IMPW-03
void throughput_tiers(context& ctx, telemetry::report& r);     // RL-THRU-01
void queue_management(context& ctx, telemetry::report& r);     // RL-QMGM-01
void dead_letter(context& ctx, telemetry::report& r);          // RL-DEAD-01
void bandwidth_modes(context& ctx, telemetry::report& r);      // RL-BAND-01
void multi_peer(context& ctx, telemetry::report& r);           // RL-MULT-01
void contested_link(context& ctx, telemetry::report& r);       // RL-CONN-01
void crash_kill9(context& ctx, telemetry::report& r);          // RL-CRAS-01
void trust_chain(context& ctx, telemetry::report& r);          // XC-CERT-02
void cert_rotation(context& ctx, telemetry::report& r);        // XC-CERT-01

// RL-THRU-01's reading of `bench tiers` output (JSON `{"machine", "commit",
// "tiers": [{"tier", "segments_per_s", "mb_per_s", "p99_ms", "loss",
// "duplicates", "monotonic_drain", ...}]}`): a check per tier for loss 0,
// duplicates 0 and a monotonic drain, at least one tier (quick) or exactly
// T1-T5 (full); the tiers go to metrics.tiers.
void tier_checks(std::string_view document, telemetry::report& r, bool quick);

} // namespace edgerelay::relay::scenarios
