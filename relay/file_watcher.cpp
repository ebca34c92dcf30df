#include "relay/file_watcher.hpp"
#include "util/thread_name.hpp"

#include <spdlog/spdlog.h>

#include <cstring>
#include <poll.h>
#include <set>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

namespace edgerelay::relay {

file_watcher::file_watcher(std::function<void(const std::string& group)> on_change, options o)
    : on_change_(std::move(on_change)), opt_(o) {
  inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (inotify_fd_ < 0)
    spdlog::warn("file watcher: inotify unavailable ({}); polling every {} ms", std::strerror(errno),
                 opt_.poll_interval.count());
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  thread_ = std::thread([this] {
    util::name_this_thread("er-file-watch");
    run();
  });
}

file_watcher::~file_watcher() {
  stop();
  if (inotify_fd_ >= 0) ::close(inotify_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void file_watcher::stop() {
  {
    std::lock_guard lk(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
  }
  std::uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

file_watcher::signature file_watcher::sign(const std::filesystem::path& p) {
  struct stat st {};
  signature s;
  if (::stat(p.c_str(), &st) != 0) return s;
  s.exists = true;
  s.ino = st.st_ino;
  s.size = static_cast<std::uint64_t>(st.st_size);
  s.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  s.ctime_ns = static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
  return s;
}

void file_watcher::set_groups(std::vector<watch_group> groups) {
  {
    std::lock_guard lk(mu_);
    groups_.clear();
    for (auto& g : groups) {
      group_state gs;
      std::erase_if(g.files, [](const std::filesystem::path& f) { return f.empty(); });
      for (auto& f : g.files)
        gs.sigs.push_back(sign(f));
      gs.g = std::move(g);
      groups_.push_back(std::move(gs));
    }
    rewatch_dirs();
  }
  std::uint64_t one = 1;
  if (wake_fd_ >= 0) (void)!::write(wake_fd_, &one, sizeof one);
}

void file_watcher::rewatch_dirs() {
  if (inotify_fd_ < 0) return;
  std::set<std::string> want;
  for (auto& g : groups_)
    for (auto& f : g.g.files)
      want.insert(std::filesystem::absolute(f).parent_path().string());
  for (auto it = dir_watches_.begin(); it != dir_watches_.end();) {
    if (!want.count(it->first)) {
      ::inotify_rm_watch(inotify_fd_, it->second);
      it = dir_watches_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& d : want) {
    if (dir_watches_.count(d)) continue;
    int wd = ::inotify_add_watch(inotify_fd_, d.c_str(),
                                 IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_ATTRIB | IN_MODIFY);
    if (wd >= 0) dir_watches_[d] = wd; // a directory that does not exist yet is found by polling
  }
}

bool file_watcher::scan(std::vector<std::string>& due) {
  auto now = std::chrono::steady_clock::now();
  bool settling = false;
  for (auto& g : groups_) {
    bool changed = false;
    for (std::size_t i = 0; i < g.g.files.size(); ++i) {
      auto s = sign(g.g.files[i]);
      if (!(s == g.sigs[i])) {
        g.sigs[i] = s;
        changed = true;
      }
    }
    if (changed) {
      g.pending = true;
      g.changed_at = now;
    }
    if (!g.pending) continue;
    if (now - g.changed_at >= opt_.settle) {
      g.pending = false;
      due.push_back(g.g.name);
    } else {
      settling = true;
    }
  }
  return settling;
}

void file_watcher::run() {
  char buf[16 * 1024];
  for (;;) {
    std::vector<std::string> due;
    bool settling;
    {
      std::lock_guard lk(mu_);
      if (stopping_) return;
      settling = scan(due);
      // A directory created after start (or re-created) gets its watch here.
      rewatch_dirs();
    }
    for (auto& name : due)
      on_change_(name);
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {inotify_fd_, POLLIN, 0}};
    auto timeout = settling ? std::min<std::chrono::milliseconds>(opt_.settle / 4 + std::chrono::milliseconds(1),
                                                                  opt_.poll_interval)
                            : opt_.poll_interval;
    int n = ::poll(fds, inotify_fd_ >= 0 ? 2 : 1, static_cast<int>(timeout.count()));
    if (n <= 0) continue;
    if (fds[0].revents & POLLIN) {
      std::uint64_t v;
      (void)!::read(wake_fd_, &v, sizeof v);
    }
    if (inotify_fd_ >= 0 && (fds[1].revents & POLLIN))
      while (::read(inotify_fd_, buf, sizeof buf) > 0) {
        // The events only wake the scan; which file changed is read from the signatures.
      }
  }
}

} // namespace edgerelay::relay
