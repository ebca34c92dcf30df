#pragma once
// Writing test configs: a path as a TOML string.

#include <filesystem>
#include <string>

namespace edgerelay::test {

// `p` as a TOML basic string ("..."), with backslashes and quotes escaped.
inline std::string q(const std::filesystem::path& p) {
  std::string out = "\"";
  for (char c : p.string()) {
    if (c == '\\' || c == '"') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

} // namespace edgerelay::test
