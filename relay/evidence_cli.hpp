#pragma once
// `edgerelay evidence matrix`: aggregates a folder of evidence reports into
// matrix.md and relay-proof-report.json (docs/evidence.md).

#include <string>

namespace edgerelay::relay {

// Reads every report in `in`, writes the matrix into `out` (created when
// missing) and prints one line per claim and per readiness level to stdout.
// Returns the CLI exit code: 0 written; 2 a malformed report or a missing
// input folder ("FILE: field: problem" on stderr); 1 an I/O failure.
int cmd_evidence_matrix(const std::string& in, const std::string& out);

} // namespace edgerelay::relay
