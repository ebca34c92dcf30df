#pragma once
// A fresh directory under the system temp dir, removed with everything in it
// when the object goes out of scope; slurp(), a whole file as a string; and write_file().

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>

namespace edgerelay::test {

class temp_dir {
public:
  explicit temp_dir(const std::string& tag = "t") {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("edgerelay-" + tag + "-" + std::to_string(rd()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& s) const { return path_ / s; }

private:
  std::filesystem::path path_;
};

// The whole file (empty when it cannot be read).
inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

// Replaces the file's content with s (creates it when missing).
inline void write_file(const std::filesystem::path& p, const std::string& s) {
  std::ofstream(p, std::ios::binary | std::ios::trunc) << s;
}

} // namespace edgerelay::test
