#include "relay/evidence_cli.hpp"

#include "telemetry/evidence.hpp"
#include "util/errc.hpp"

#include <iomanip>
#include <iostream>

namespace edgerelay::relay {

namespace {

int exit_code_for(const telemetry::evidence_error& e) {
  if (e.code == errc::malformed || e.code == errc::not_found || e.code == errc::invalid_argument) return 2;
  return 1;
}

} // namespace

int cmd_evidence_matrix(const std::string& in, const std::string& out) {
  namespace ev = telemetry;
  auto reports = ev::read_reports(in);
  if (!reports) {
    std::cerr << "edgerelay evidence matrix: " << reports.error().to_string() << "\n";
    return exit_code_for(reports.error());
  }
  auto m = ev::build_matrix(*reports);
  if (!m) {
    std::cerr << "edgerelay evidence matrix: " << m.error().to_string() << "\n";
    return exit_code_for(m.error());
  }
  if (auto w = ev::write_matrix(*m, out); !w) {
    std::cerr << "edgerelay evidence matrix: " << w.error().to_string() << "\n";
    return exit_code_for(w.error());
  }
  for (const auto& row : m->claims)
    std::cout << std::left << std::setw(12) << row.claim.id << std::setw(17) << ev::to_string(row.state)
              << ev::to_string(row.advice) << "\n";
  const auto& cw = m->campaign;
  std::cout << "campaign window: " << cw.reports << " reports, "
            << (cw.reports == 0 ? "none" : (cw.within ? "inside 7 days" : "outside 7 days")) << "\n";
  for (const auto& lv : m->levels)
    std::cout << ev::to_string(lv.level) << ": "
              << (lv.ready ? std::string("ready") : "not ready (" + std::to_string(lv.blockers.size()) + " blockers)")
              << "\n";
  std::cout << "wrote " << (std::filesystem::path(out) / ev::matrix_md_name).string() << " and "
            << (std::filesystem::path(out) / ev::matrix_json_name).string() << "\n";
  return 0;
}

} // namespace edgerelay::relay
