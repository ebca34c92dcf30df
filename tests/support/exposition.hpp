#pragma once
// Reading a Prometheus text exposition (GET /metrics) in tests.

#include <optional>
#include <string>

namespace edgerelay::test {

// The value of one series, named exactly as exposed ("name{labels}"); nullopt
// when the exposition does not have it.
inline std::optional<double> series_value(const std::string& text, const std::string& series) {
  const std::string body = "\n" + text;
  auto at = body.find("\n" + series + " ");
  if (at == std::string::npos) return std::nullopt;
  at += series.size() + 2;
  return std::stod(body.substr(at, body.find('\n', at) - at));
}

// The sum of every series of a family whose label text contains `needle`.
inline double family_sum(const std::string& text, const std::string& family, const std::string& needle = "") {
  const std::string body = "\n" + text;
  double sum = 0;
  std::size_t at = 0;
  while ((at = body.find("\n" + family + "{", at)) != std::string::npos) {
    auto eol = body.find('\n', at + 1);
    auto line = body.substr(at + 1, eol - at - 1);
    if (line.find(needle) != std::string::npos) sum += std::stod(line.substr(line.rfind(' ') + 1));
    at = eol;
  }
  return sum;
}

} // namespace edgerelay::test
