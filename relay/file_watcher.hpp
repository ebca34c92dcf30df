#pragma once
// relay::file_watcher — notices when files change on disk: certificates,
// keys, CA bundles and CRLs that an operator (or an ACME client, or a
// Kubernetes secret update) replaces while the node runs.
//
// Each watched group has a name and a list of files. The watcher wakes on
// inotify events in the files' directories (a write, a rename into place, a
// symlink swapped) and also polls every `poll_interval` as a fallback
// (filesystems without inotify, events lost to a queue overflow, a directory
// that appears later). A file's signature is (exists, inode, size, mtime,
// ctime), following symlinks. When a group's signature changes, the watcher
// waits until it has been stable for `settle` (a certificate and its key are
// seldom replaced in one instant), then calls on_change(name) once, on the
// watcher's thread.
//
// Threads: set_groups() and stop() from any thread; on_change runs on the
// watcher's own thread, one call at a time.

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace edgerelay::relay {

struct watch_group {
  std::string name;
  std::vector<std::filesystem::path> files; // empty paths are ignored
};

class file_watcher {
public:
  struct options {
    std::chrono::milliseconds poll_interval{1000};
    std::chrono::milliseconds settle{200};
  };
  file_watcher(std::function<void(const std::string& group)> on_change, options o);
  explicit file_watcher(std::function<void(const std::string& group)> on_change)
      : file_watcher(std::move(on_change), options{}) {}
  ~file_watcher(); // stops
  file_watcher(const file_watcher&) = delete;
  file_watcher& operator=(const file_watcher&) = delete;

  // Replaces the watched groups. The current state of each file is the
  // baseline: only later changes are reported.
  void set_groups(std::vector<watch_group> groups);
  void stop();
  // Whether inotify is in use (false: polling only).
  bool using_inotify() const noexcept { return inotify_fd_ >= 0; }

private:
  struct signature {
    bool exists = false;
    std::uint64_t ino = 0, size = 0;
    std::int64_t mtime_ns = 0, ctime_ns = 0;
    friend bool operator==(const signature&, const signature&) = default;
  };
  struct group_state {
    watch_group g;
    std::vector<signature> sigs;
    bool pending = false;
    std::chrono::steady_clock::time_point changed_at;
  };
  static signature sign(const std::filesystem::path& p);
  void run();
  void rewatch_dirs();                      // under mu_
  bool scan(std::vector<std::string>& due); // under mu_; true when something is still settling

  std::function<void(const std::string&)> on_change_;
  options opt_;
  int inotify_fd_ = -1;
  int wake_fd_ = -1; // an eventfd: stop() and set_groups() wake the thread
  std::mutex mu_;
  std::vector<group_state> groups_;
  std::map<std::string, int> dir_watches_; // directory -> inotify watch descriptor
  bool stopping_ = false;
  std::thread thread_;
};

} // namespace edgerelay::relay
