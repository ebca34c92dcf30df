#pragma once
// Where the disk benchmarks (store_bench, log_bench) write: a directory on a
// real disk, $EDGERELAY_BENCH_DIR or <build dir>/bench-data. tmpfs and ramfs
// are refused: an fsync there costs nothing and the figures would mean
// nothing.

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <sys/vfs.h>
#include <unistd.h>

namespace edgerelay::bench {

namespace fs = std::filesystem;

// The data directory: $EDGERELAY_BENCH_DIR, else <dir of the binary>/../bench-data.
inline fs::path bench_base_dir() {
  if (const char* env = std::getenv("EDGERELAY_BENCH_DIR"); env && *env) return fs::path(env);
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return fs::current_path() / "bench-data";
  return exe.parent_path().parent_path() / "bench-data";
}

inline std::string fs_name(long type) {
  switch (static_cast<unsigned long>(type)) {
  case 0xEF53: return "ext2/3/4";
  case 0x58465342: return "xfs";
  case 0x9123683E: return "btrfs";
  case 0x01021994: return "tmpfs";
  case 0x858458F6: return "ramfs";
  case 0x6969: return "nfs";
  case 0x794C7630: return "overlayfs";
  default: {
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(type));
    return buf;
  }
  }
}

// Creates the base directory and checks that it lives on a real disk.
// Returns an error sentence, or nothing when the directory is usable.
inline std::optional<std::string> check_base_dir(const fs::path& base, std::string* fs_type = nullptr) {
  std::error_code ec;
  fs::create_directories(base, ec);
  if (ec) return "cannot create " + base.string() + ": " + ec.message();
  struct statfs sf {};
  if (::statfs(base.c_str(), &sf) != 0) return "cannot statfs " + base.string() + ": " + std::strerror(errno);
  std::string name = fs_name(static_cast<long>(sf.f_type));
  if (fs_type) *fs_type = name;
  if (name == "tmpfs" || name == "ramfs")
    return base.string() + " is on " + name +
           ", where fsync costs nothing; set EDGERELAY_BENCH_DIR to a directory on a real disk";
  return std::nullopt;
}

// A fresh, empty directory under the base, removed when this goes away.
class scratch_dir {
public:
  explicit scratch_dir(std::string_view name) {
    static std::atomic<int> counter{0};
    path_ = bench_base_dir() / (std::string(name) + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::error_code ec;
    fs::remove_all(path_, ec);
    fs::create_directories(path_, ec);
  }
  ~scratch_dir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  scratch_dir(const scratch_dir&) = delete;
  scratch_dir& operator=(const scratch_dir&) = delete;
  const fs::path& path() const { return path_; }

private:
  fs::path path_;
};

} // namespace edgerelay::bench
