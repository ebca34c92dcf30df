#pragma once
// `edgerelay evidence run` and `edgerelay evidence export` (docs/evidence.md,
// "Validation scenarios" and "Exporting the soak").

#include "telemetry/evidence.hpp"
#include "util/clock.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::relay {

struct evidence_run_options {
  std::string out;                 // where <claim>.json files go (created when missing)
  std::vector<std::string> claims; // empty: every scenario
  bool quick = false;              // CI sizes (the whole run well under 5 minutes)
};

// Runs the scenarios one after another with real edgerelay processes on
// loopback, a progress line per scenario on stdout, one report per claim.
// Returns the CLI exit code: 0 no scenario failed; 1 a scenario failed (or a
// report could not be written); 2 a usage error (an unknown claim id, a claim
// that is not a scenario), with the valid ids on stderr.
int cmd_evidence_run(const evidence_run_options& options);

// The RL-SOAK-01 report for a node's soak record (the body of GET
// /v1/evidence/soak): status PASS exactly when Gate D holds, environment.clock
// from the record, started_at/finished_at from the record's started_at and
// updated_at. `source` names the document in errors. Errors: the body is not
// the soak record (evidence_error naming the field).
telemetry::evidence_result<telemetry::report> soak_report(std::string_view body, const std::string& source,
                                                          const std::string& network, util::clock& clock);

// GETs <admin>/v1/evidence/soak and writes soak_report() to `out` (a file
// named RL-SOAK-01.json, or a folder to write it into). Returns 0 written, 1 the
// node or the file failed, 2 a usage error (a file name other than RL-SOAK-01.json).
int cmd_evidence_export(const std::string& admin, const std::string& out, const std::string& network);

} // namespace edgerelay::relay
