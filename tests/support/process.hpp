#pragma once
// Child processes for end-to-end tests: started with posix_spawn, output to a
// log file, always killed and reaped by the destructor.

#include <atomic>
#include <chrono>
#include <csignal>
#include <fcntl.h>
#include <filesystem>
#include <fstream>
#include <spawn.h>
#include <sstream>
#include <string>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

extern char** environ;

namespace edgerelay::test {

class process {
public:
  process() = default;
  process(const std::vector<std::string>& args, const std::filesystem::path& log) : log_(log) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&fa);
  }
  process(process&& o) noexcept : pid_(std::exchange(o.pid_, -1)), log_(std::move(o.log_)) {}
  process& operator=(process&& o) noexcept {
    if (this != &o) {
      stop(SIGKILL);
      pid_ = std::exchange(o.pid_, -1);
      log_ = std::move(o.log_);
    }
    return *this;
  }
  ~process() { stop(SIGKILL); }

  // Waits for the child to end by itself; returns its exit code, or -1 (and
  // kills it) when it is still running after `limit`.
  int wait(std::chrono::milliseconds limit) {
    if (pid_ <= 0) return -1;
    int status = 0;
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        stop(SIGKILL);
        return -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  bool running() const { return pid_ > 0 && ::waitpid(pid_, nullptr, WNOHANG) == 0; }
  pid_t pid() const { return pid_; }
  // Sends sig and reaps the child (SIGKILL after 10 s if it does not end); returns its wait status.
  int stop(int sig = SIGTERM) {
    if (pid_ <= 0) return 0;
    ::kill(pid_, sig);
    int status = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pid_ = -1;
    return status;
  }
  std::string log() const {
    std::ifstream in(log_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

private:
  pid_t pid_ = -1;
  std::filesystem::path log_;
};

// Runs build/bin/edgerelay with args to its end (killed after `limit`),
// its output in a log file under `dir`; returns the exit code (-1 when it had
// to be killed) and the output.
struct command_result {
  int code;
  std::string out;
};
inline command_result run_edgerelay(const std::filesystem::path& dir, std::vector<std::string> args,
                                    std::chrono::seconds limit = std::chrono::seconds(30)) {
  args.insert(args.begin(), std::string(EDGERELAY_BIN_DIR) + "/edgerelay");
  static std::atomic<int> n{0};
  process p(args, dir / ("edgerelay-" + std::to_string(++n) + ".log"));
  int code = p.wait(limit);
  return {code, p.log()};
}

} // namespace edgerelay::test
