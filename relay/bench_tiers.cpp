#include "relay/bench_tiers.hpp"

#include "relay/http_client.hpp"
#include "relay/producer.hpp"
#include "transport/pki.hpp"
#include "util/bytes.hpp"
#include "util/checksum.hpp"
#include "util/thread_name.hpp"
#include "util/units.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <poll.h>
#include <random>
#include <sstream>
#include <stdexcept>
#include <sys/inotify.h>
#include <sys/prctl.h>
#include <sys/utsname.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace edgerelay::relay {
namespace {

namespace fs = std::filesystem;
namespace json = boost::json;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

struct tier_def {
  const char* name;
  std::uint64_t bytes;
};
constexpr tier_def all_tiers[] = {{"T1", 64}, {"T2", 1024}, {"T3", 16 << 10}, {"T4", 256 << 10}, {"T5", 1 << 20}};

// A failure that ends the tier (a node that does not start, a producer that
// fails); the tier is reported as failed and the run goes on.
struct bench_failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(steady::now().time_since_epoch()).count();
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ------------------------------------------------------------ child nodes

// One `edgerelay run --config FILE` child: output to a log file; stopped
// (SIGTERM, then SIGKILL after 10 s) and reaped by stop() or the destructor.
// The child asks the kernel for SIGKILL if this process dies first, so not
// even a killed bench leaves nodes behind. Created and stopped by the main
// thread only (the death signal follows the thread that forked).
class node_process {
public:
  node_process(const fs::path& exe, const fs::path& config, const fs::path& log) : log_(log) {
    std::string e = exe.string(), c = config.string(), l = log.string();
    const char* argv[] = {e.c_str(), "run", "--config", c.c_str(), nullptr};
    pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) throw bench_failure(std::string("fork: ") + std::strerror(errno));
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      int fd = ::open(l.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd < 0) ::_exit(127);
      ::dup2(fd, 1);
      ::dup2(fd, 2);
      int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      if (null >= 0) ::dup2(null, 0);
      ::execv(argv[0], const_cast<char* const*>(argv));
      ::_exit(127);
    }
  }
  ~node_process() { stop(); }
  node_process(const node_process&) = delete;
  node_process& operator=(const node_process&) = delete;

  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0 && ::waitpid(pid_, nullptr, WNOHANG) == 0; }
  std::string log() const { return read_file(log_); }

  // Returns the exit status as waitpid reports it.
  int stop() {
    if (pid_ <= 0) return 0;
    ::kill(pid_, SIGTERM);
    int status = 0;
    auto deadline = steady::now() + 10s;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (steady::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
    pid_ = -1;
    return status;
  }

  // CPU seconds (user + system) so far, from /proc/<pid>/stat.
  double cpu_seconds() const {
    auto s = read_file("/proc/" + std::to_string(pid_) + "/stat");
    auto close = s.rfind(')');
    if (close == std::string::npos) return 0;
    std::istringstream in(s.substr(close + 2));
    std::string tok;
    double ticks = 0;
    for (int field = 3; in >> tok && field <= 15; ++field)
      if (field == 14 || field == 15) ticks += std::stod(tok);
    return ticks / static_cast<double>(::sysconf(_SC_CLK_TCK));
  }

  // Peak resident set (VmHWM) in bytes.
  std::uint64_t peak_rss() const {
    std::istringstream in(read_file("/proc/" + std::to_string(pid_) + "/status"));
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    return 0;
  }

  // The bound addresses from the node's "node running: admin A, ingest B,
  // listen C" line; waits for it (the node binds port 0).
  std::map<std::string, std::string> wait_for_addresses(const std::string& name) {
    auto deadline = steady::now() + 30s;
    while (steady::now() < deadline) {
      auto text = log();
      auto at = text.find("node running: ");
      if (at != std::string::npos && text.find('\n', at) != std::string::npos) {
        std::map<std::string, std::string> out;
        std::istringstream in(text.substr(at + 14, text.find('\n', at) - at - 14));
        std::string key, value;
        while (in >> key >> value) {
          if (!value.empty() && value.back() == ',') value.pop_back();
          out[key] = value;
        }
        return out;
      }
      if (!running()) break;
      std::this_thread::sleep_for(20ms);
    }
    throw bench_failure("the " + name + " node did not start; its log says:\n" + log());
  }

private:
  pid_t pid_ = -1;
  fs::path log_;
};

json::object node_status(const std::string& admin) {
  auto r = http_call("GET", "http://" + admin + "/v1/status", {}, 5s);
  if (!r) throw bench_failure("status of " + admin + ": " + r.error().message);
  if (r->status != 200) throw bench_failure("status of " + admin + ": HTTP " + std::to_string(r->status));
  return json::parse(r->body).as_object();
}

std::int64_t num(const json::value& v) { return v.to_number<std::int64_t>(); }

// ------------------------------------------------------------ payloads

// Every payload is a 24-byte header (magic, producer, sequence number, the
// producer's steady-clock send time in ns) followed by filler cut from a
// fixed random pool at an offset given by the sequence number, so the tailer
// can check every byte without keeping what was sent.
constexpr std::uint32_t payload_magic = 0x45524254; // "ERBT"
constexpr std::size_t header_bytes = 24;

class filler_pool {
public:
  filler_pool() : pool_(size_, '\0') {
    std::mt19937_64 rng(0x5eed);
    for (std::size_t i = 0; i + 8 <= size_; i += 8) {
      auto v = rng();
      std::memcpy(pool_.data() + i, &v, 8);
    }
  }
  std::string_view slice(std::uint32_t producer, std::uint64_t seq, std::size_t len) const {
    std::size_t span = size_ - (2u << 20);
    std::size_t off = static_cast<std::size_t>((seq * 4099 + producer * 131) % span);
    return std::string_view(pool_).substr(off, len);
  }
  // The payload of `len` bytes as two parts: the header (written into
  // `header`) and the filler, a view into the pool.
  std::array<std::string_view, 2> payload_parts(std::array<unsigned char, header_bytes>& header, std::size_t len,
                                                std::uint32_t producer, std::uint64_t seq) const {
    auto* p = header.data();
    util::put_be32(p, payload_magic);
    util::put_be32(p + 4, producer);
    util::put_be64(p + 8, seq);
    util::put_be64(p + 16, static_cast<std::uint64_t>(now_ns()));
    return {std::string_view(reinterpret_cast<const char*>(p), header_bytes), slice(producer, seq, len - header_bytes)};
  }

private:
  static constexpr std::size_t size_ = 4u << 20;
  std::string pool_;
};

// ------------------------------------------------------------ the spool tailer

// Reads the hub's spool directory as the file sink appends to it (inotify
// wakes it on every write), checks each record and notes when it was first
// readable. Owns its thread; the counters are read after stop().
class spool_tailer {
public:
  // For producers from `timed_from` on, it also keeps each segment's send
  // time (windows()).
  spool_tailer(fs::path dir, const filler_pool& pool, unsigned producers, unsigned timed_from)
      : dir_(std::move(dir)), pool_(pool), timed_from_(timed_from) {
    seen_.resize(producers);
    latency_ns_.resize(producers);
    sent_ms_.resize(producers);
  }
  ~spool_tailer() { stop(); }

  void start() {
    ifd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (ifd_ < 0 || ::inotify_add_watch(ifd_, dir_.c_str(), IN_MODIFY | IN_CREATE | IN_MOVED_TO) < 0)
      throw bench_failure("inotify on " + dir_.string() + ": " + std::strerror(errno));
    thread_ = std::thread([this] {
      util::name_this_thread("bench-tailer");
      loop();
    });
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (fd_ >= 0) ::close(fd_);
    if (ifd_ >= 0) ::close(ifd_);
    fd_ = ifd_ = -1;
  }

  // Distinct bench segments seen so far (any thread).
  std::uint64_t distinct() const { return distinct_.load(std::memory_order_acquire); }
  std::int64_t last_arrival_ns() const { return last_arrival_.load(std::memory_order_acquire); }

  // After stop():
  std::uint64_t duplicates() const { return duplicates_; }
  std::uint64_t id_duplicates() const { return id_duplicates_; }
  std::uint64_t bad_records() const { return bad_; }
  std::uint64_t foreign() const { return foreign_; }
  // Producer p's segments 0..count-1 not seen.
  std::uint64_t missing(unsigned p, std::uint64_t count) const {
    std::uint64_t m = 0;
    for (std::uint64_t s = 0; s < count; ++s)
      if (s >= seen_[p].size() || seen_[p][s] == 0) ++m;
    return m;
  }
  // Seen but never acknowledged to the producer (sequence numbers >= count).
  std::uint64_t beyond(unsigned p, std::uint64_t count) const {
    std::uint64_t m = 0;
    for (std::uint64_t s = count; s < seen_[p].size(); ++s)
      m += seen_[p][s] ? 1 : 0;
    return m;
  }
  const std::deque<std::int64_t>& latencies(unsigned p) const { return latency_ns_[p]; }
  // The latencies of the timed producers grouped by the 100 ms window of
  // their send time, counted from the first send of those producers.
  std::vector<std::vector<std::int64_t>> windows() const {
    const auto from = timed_from_, to = static_cast<unsigned>(sent_ms_.size());
    std::uint32_t first = UINT32_MAX;
    for (unsigned p = from; p < to; ++p)
      for (auto t : sent_ms_[p])
        first = std::min(first, t);
    std::vector<std::vector<std::int64_t>> w;
    for (unsigned p = from; p < to; ++p)
      for (std::size_t i = 0; i < sent_ms_[p].size(); ++i) {
        std::size_t k = (sent_ms_[p][i] - first) / window_ms;
        if (w.size() <= k) w.resize(k + 1);
        w[k].push_back(latency_ns_[p][i]);
      }
    return w;
  }
  static constexpr std::uint32_t window_ms = 100;

private:
  void loop() {
    while (!stop_) {
      drain();
      pollfd pfd{ifd_, POLLIN, 0};
      if (::poll(&pfd, 1, 20) <= 0) {
        dir_changed_ = true; // quiet for 20 ms: look at the directory again anyway
        continue;
      }
      alignas(inotify_event) char ev[4096];
      for (ssize_t n; (n = ::read(ifd_, ev, sizeof ev)) > 0;)
        for (ssize_t at = 0; at < n;) {
          const auto* e = reinterpret_cast<const inotify_event*>(ev + at);
          if (e->mask & (IN_CREATE | IN_MOVED_TO | IN_Q_OVERFLOW)) dir_changed_ = true;
          at += static_cast<ssize_t>(sizeof(inotify_event) + e->len);
        }
    }
    dir_changed_ = true;
    drain();
  }

  // The spool file with the lowest sequence number above `after`, if any.
  // It lists the directory only when a file may have appeared since the last
  // listing: the file sink appends to one file at a time, and a listing on
  // every wake-up (one per write) cost the tailer more CPU than reading.
  std::optional<std::pair<std::uint64_t, fs::path>> next_file(std::uint64_t after) {
    if (!dir_changed_ && newest_listed_ <= after) return std::nullopt;
    dir_changed_ = false; // before listing: a file created after it sets it again
    std::optional<std::pair<std::uint64_t, fs::path>> best;
    std::error_code ec;
    for (auto& e : fs::directory_iterator(dir_, ec)) {
      auto n = e.path().filename().string();
      if (n.size() != 26 || n.rfind("spool-", 0) != 0 || n.substr(22) != ".ers") continue;
      auto seq = std::stoull(n.substr(6, 16), nullptr, 16);
      newest_listed_ = std::max<std::uint64_t>(newest_listed_, seq);
      if (seq > after && (!best || seq < best->first)) best = {seq, e.path()};
    }
    if (ec) dir_changed_ = true;
    return best;
  }

  void drain() {
    for (;;) {
      if (fd_ < 0) {
        auto f = next_file(file_seq_);
        if (!f) return;
        fd_ = ::open(f->second.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd_ < 0) return;
        file_seq_ = f->first;
        len_ = at_ = 0;
        magic_done_ = false;
      }
      if (read_some()) continue;
      // At the end of this file: move on only when a newer one exists, after
      // one more read (the writer finishes a file before it creates the next).
      if (!next_file(file_seq_)) return;
      if (read_some()) continue;
      ::close(fd_);
      fd_ = -1;
    }
  }

  // Reads what is there and handles complete records; false at end of file.
  bool read_some() {
    // The unhandled rest (a partial record) moves to the front; the buffer
    // only grows (a resize would zero-fill the whole read size every time).
    if (at_ > 0) {
      std::memmove(buf_.data(), buf_.data() + at_, len_ - at_);
      len_ -= at_;
      at_ = 0;
    }
    if (buf_.size() < len_ + read_chunk) buf_.resize(len_ + read_chunk);
    auto n = ::read(fd_, buf_.data() + len_, read_chunk);
    if (n <= 0) return false;
    len_ += static_cast<std::size_t>(n);
    auto arrival = now_ns();
    if (!magic_done_) {
      if (len_ < 8) return true;
      if (std::string_view(buf_.data(), 8) != "ERSPOOL1") {
        ++bad_;
        ::lseek(fd_, 0, SEEK_END);
        len_ = 0;
        return true;
      }
      at_ = 8;
      magic_done_ = true;
    }
    while (len_ - at_ >= 4) {
      auto len = util::get_be32(reinterpret_cast<const unsigned char*>(buf_.data() + at_));
      if (len_ - at_ - 4 < len) break;
      handle(std::string_view(buf_).substr(at_ + 4, len), arrival);
      at_ += 4 + len;
    }
    return true;
  }

  void handle(std::string_view body, std::int64_t arrival) {
    util::reader r(body);
    auto id = r.bytes(r.u8());
    auto stream = r.bytes(r.u8());
    (void)r.u64(); // created_ms
    auto sum = r.u64();
    auto payload = r.bytes(r.u32());
    auto crc = r.u32();
    if (!r.ok() || r.remaining() != 0 ||
        crc != static_cast<std::uint32_t>(util::checksum(body.substr(0, body.size() - 4)))) {
      ++bad_;
      return;
    }
    if (stream != "bench") {
      ++foreign_;
      return;
    }
    const auto* p = reinterpret_cast<const unsigned char*>(payload.data());
    if (payload.size() < header_bytes || util::get_be32(p) != payload_magic || sum != util::checksum(payload)) {
      ++bad_;
      return;
    }
    auto producer = util::get_be32(p + 4);
    auto seq = util::get_be64(p + 8);
    auto sent = static_cast<std::int64_t>(util::get_be64(p + 16));
    if (producer >= seen_.size() || seq > (1ull << 32) ||
        payload.substr(header_bytes) != pool_.slice(producer, seq, payload.size() - header_bytes)) {
      ++bad_;
      return;
    }
    auto& seen = seen_[producer];
    if (seen.size() <= seq) seen.resize(seq + grow_step, 0);
    // The id names the relay hop: one id twice is a relay duplicate.
    if (auto colon = id.rfind(':'); colon != std::string_view::npos) {
      std::uint64_t n = 0;
      for (char c : id.substr(colon + 1))
        n = n * 10 + static_cast<std::uint64_t>(c - '0');
      if (n < (1ull << 32)) {
        if (ids_.size() <= n) ids_.resize(n + grow_step, 0);
        if (ids_[n]++) ++id_duplicates_;
      }
    }
    if (seen[seq]++) {
      ++duplicates_;
      return;
    }
    latency_ns_[producer].push_back(arrival - sent);
    // One entry per latency entry of the producer, so that windows() can pair them.
    if (producer >= timed_from_)
      sent_ms_[producer].push_back(static_cast<std::uint32_t>(std::max<std::int64_t>(0, sent - t0_ns_) / 1000000));
    last_arrival_.store(arrival, std::memory_order_relaxed);
    distinct_.fetch_add(1, std::memory_order_release);
  }

  fs::path dir_;
  const filler_pool& pool_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  int ifd_ = -1, fd_ = -1;
  std::uint64_t file_seq_ = 0;
  std::uint64_t newest_listed_ = 0; // the highest spool file sequence number a listing saw
  bool dir_changed_ = true;         // a file may have appeared since the last listing
  static constexpr std::size_t read_chunk = 4u << 20;
  std::string buf_; // [0, len_) read from the file, [at_, len_) not handled yet
  std::size_t len_ = 0;
  std::size_t at_ = 0;
  bool magic_done_ = false;
  std::atomic<std::uint64_t> distinct_{0};
  std::atomic<std::int64_t> last_arrival_{0};
  std::uint64_t duplicates_ = 0, id_duplicates_ = 0, bad_ = 0, foreign_ = 0;
  // Deques grown in small steps: the arrival time is taken on this thread,
  // so it must never stop to copy a large vector (doubling a vector of
  // millions of entries stalled it for tens of ms, which showed as latency).
  static constexpr std::size_t grow_step = 1 << 16;
  std::vector<std::deque<std::uint8_t>> seen_;
  std::deque<std::uint8_t> ids_;
  std::vector<std::deque<std::int64_t>> latency_ns_;
  const unsigned timed_from_;
  const std::int64_t t0_ns_ = now_ns();
  std::vector<std::deque<std::uint32_t>> sent_ms_; // ms after t0_ns_, producers >= timed_from_ only
};

// ------------------------------------------------------------ producers

struct producer_result {
  std::uint64_t sent = 0, ok = 0, rejected = 0;
  std::int64_t first_send_ns = 0;
  std::string error;
};

// One producer connection. rate 0: as fast as it goes, in full batches;
// otherwise paced at `rate` segments/s in 1 ms ticks, the partial batch
// pushed at the end of each tick.
void run_producer(const std::string& url, const filler_pool& pool, std::uint32_t index, std::uint64_t seq_base,
                  std::size_t bytes, double seconds, double rate, producer_result& res) {
  producer_options po;
  po.url = url;
  po.name = "bench-" + std::to_string(index);
  po.window = 16;
  po.batch_max_bytes = bytes >= (256u << 10) ? (4u << 20) : (2u << 20);
  po.batch_max_segments = 4096;
  auto p = ws_producer::connect(po);
  if (!p) {
    res.error = p.error().message;
    return;
  }
  std::array<unsigned char, header_bytes> header{};
  res.first_send_ns = now_ns();
  auto start = steady::now();
  auto end = start + std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(seconds));
  auto send_one = [&]() -> bool {
    auto parts = pool.payload_parts(header, bytes, index, seq_base + res.sent);
    if (auto r = (*p)->send_parts("bench", parts); !r) {
      res.error = r.error().message;
      return false;
    }
    ++res.sent;
    return true;
  };
  if (rate <= 0) {
    std::size_t burst = std::max<std::size_t>(1, (64u << 10) / bytes);
    while (steady::now() < end)
      for (std::size_t i = 0; i < burst; ++i)
        if (!send_one()) return;
  } else {
    auto tick = start;
    while (tick < end) {
      double due = rate * std::chrono::duration<double>(steady::now() - start).count();
      while (static_cast<double>(res.sent) < due)
        if (!send_one()) return;
      if (auto r = (*p)->push(); !r) {
        res.error = r.error().message;
        return;
      }
      tick += 1ms;
      std::this_thread::sleep_until(tick);
    }
  }
  if (auto r = (*p)->flush(); !r) res.error = r.error().message;
  auto st = (*p)->stats();
  res.ok = st.segments_ok;
  res.rejected = st.segments_rejected;
  if (res.rejected && res.error.empty()) {
    res.error = "the edge rejected " + std::to_string(res.rejected) + " segments:";
    for (auto& [why, n] : st.rejections)
      res.error += " " + why + " " + std::to_string(n);
  }
}

// ------------------------------------------------------------ one tier

struct latency_stats {
  double p50_ms = 0, p99_ms = 0, max_ms = 0;
};

latency_stats percentiles(std::vector<std::int64_t> v) {
  latency_stats s;
  if (v.empty()) return s;
  auto at = [&](double q) {
    auto k = static_cast<std::size_t>(q * static_cast<double>(v.size() - 1));
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
    return static_cast<double>(v[k]) / 1e6;
  };
  s.p50_ms = at(0.50);
  s.p99_ms = at(0.99);
  s.max_ms = static_cast<double>(*std::max_element(v.begin(), v.end())) / 1e6;
  return s;
}

// The half-load latency window by window (spool_tailer::windows): how many
// 100 ms windows there were, the median of their p99s (the steady state),
// and how many had a p99 above 10 ms. A p99 over the whole phase above
// 10 ms with few such windows comes from stalls, not from the steady state.
// `timeline` is every window's p99 in send order (nullopt: nothing was sent
// in it), to tell a short stall from a slow stretch of many seconds.
struct window_stats {
  std::size_t count = 0, over_10ms = 0;
  double p99_ms_median = 0;
  std::vector<std::optional<double>> timeline;
};

window_stats summarize(std::vector<std::vector<std::int64_t>> windows) {
  window_stats s;
  std::vector<double> p99s;
  for (auto& w : windows) {
    if (w.empty()) {
      s.timeline.emplace_back();
      continue;
    }
    auto p = percentiles(std::move(w)).p99_ms;
    p99s.push_back(p);
    s.timeline.emplace_back(p);
    if (p > 10.0) ++s.over_10ms;
  }
  s.count = p99s.size();
  if (!p99s.empty()) {
    auto mid = p99s.begin() + static_cast<std::ptrdiff_t>(p99s.size() / 2);
    std::nth_element(p99s.begin(), mid, p99s.end());
    s.p99_ms_median = *mid;
  }
  return s;
}

// Each window's p99 in ms, null for an empty window.
json::array timeline_json(const std::vector<std::optional<double>>& t) {
  json::array a;
  a.reserve(t.size());
  for (auto& p : t)
    if (p)
      a.emplace_back(*p);
    else
      a.emplace_back(nullptr);
  return a;
}

struct tier_result {
  std::string tier;
  std::uint64_t segment_bytes = 0;
  double segments_per_s = 0, mb_per_s = 0;
  latency_stats full, half;
  window_stats half_windows;
  double half_rate = 0, half_achieved = 0;
  double cpu_s_per_gb = 0, cpu_edge_s = 0, cpu_hub_s = 0;
  std::uint64_t rss_edge = 0, rss_hub = 0;
  std::uint64_t delivered = 0, loss = 0, duplicates = 0, checksum_errors = 0;
  std::int64_t node_loss = 0;
  bool monotonic_drain = false;
  double drain_s = 0, load_s = 0;
  std::uint64_t max_queue = 0;
  // Of what the hub's file sink delivered in each phase, the share its direct
  // path took (docs/spool.md, "Direct delivery"); the rest went through its queue.
  double direct_share_full = 0, direct_share_half = 0;
  std::string error;
  bool ok() const {
    return error.empty() && loss == 0 && duplicates == 0 && checksum_errors == 0 && node_loss == 0 && monotonic_drain &&
           delivered > 0;
  }
};

std::string q(const fs::path& p) { return "\"" + p.string() + "\""; }

class tier_run {
public:
  tier_run(const fs::path& exe, const fs::path& dir, const transport::pki_paths& pki, const tier_def& t,
           const bench_tiers_options& o, const filler_pool& pool)
      : exe_(exe), dir_(dir), pki_(pki), t_(t), o_(o), pool_(pool) {}

  tier_result run() {
    res_.tier = t_.name;
    res_.segment_bytes = t_.bytes;
    fs::create_directories(dir_ / "hub" / "spool");
    fs::create_directories(dir_ / "edge");
    start_nodes();
    unsigned n = std::max(1u, o_.producers);
    spool_tailer tail(dir_ / "hub" / "spool", pool_, 2 * n, n);
    tail.start();

    double full_s = o_.full_seconds > 0 ? o_.full_seconds : (o_.quick ? 2.0 : 15.0);
    double half_s = o_.half_seconds > 0 ? o_.half_seconds : (o_.quick ? 2.0 : 10.0);

    // Phase 1: full load, then the drain.
    double cpu0 = edge_->cpu_seconds() + hub_->cpu_seconds();
    double cpu_e0 = edge_->cpu_seconds(), cpu_h0 = hub_->cpu_seconds();
    auto full = load(0, n, full_s, 0);
    std::uint64_t acked_full = 0;
    for (auto& r : full)
      acked_full += r.ok;
    drain(tail, acked_full, true);
    std::int64_t first = full[0].first_send_ns;
    for (auto& r : full)
      first = std::min(first, r.first_send_ns);
    double span = static_cast<double>(tail.last_arrival_ns() - first) / 1e9;
    res_.delivered = tail.distinct();
    res_.load_s = span;
    res_.segments_per_s = span > 0 ? static_cast<double>(res_.delivered) / span : 0;
    res_.mb_per_s = res_.segments_per_s * static_cast<double>(t_.bytes) / 1e6;
    res_.cpu_edge_s = edge_->cpu_seconds() - cpu_e0;
    res_.cpu_hub_s = hub_->cpu_seconds() - cpu_h0;
    double gb = static_cast<double>(res_.delivered) * static_cast<double>(t_.bytes) / 1e9;
    res_.cpu_s_per_gb = gb > 0 ? (edge_->cpu_seconds() + hub_->cpu_seconds() - cpu0) / gb : 0;
    std::fprintf(stderr,
                 "bench tiers: %s full load: %llu segments of %llu B delivered in %.1f s: %.0f segments/s, %.1f MB/s; "
                 "drain %.2f s (max queue %llu, monotonic %s)\n",
                 t_.name, static_cast<unsigned long long>(res_.delivered), static_cast<unsigned long long>(t_.bytes),
                 span, res_.segments_per_s, res_.mb_per_s, res_.drain_s,
                 static_cast<unsigned long long>(res_.max_queue), res_.monotonic_drain ? "yes" : "NO");

    auto [direct0, delivered0] = hub_direct();
    res_.direct_share_full = delivered0 ? static_cast<double>(direct0) / static_cast<double>(delivered0) : 0;

    // Phase 2: half the measured rate, paced.
    res_.half_rate = res_.segments_per_s / 2;
    std::uint64_t before = tail.distinct();
    auto t0 = steady::now();
    auto half = load(n, n, half_s, res_.half_rate / n);
    double half_elapsed = std::chrono::duration<double>(steady::now() - t0).count();
    std::uint64_t acked_half = 0;
    for (auto& r : half)
      acked_half += r.ok;
    drain(tail, acked_full + acked_half, false);
    res_.half_achieved = static_cast<double>(tail.distinct() - before) / std::max(half_elapsed, 1e-9);
    auto [direct1, delivered1] = hub_direct();
    if (delivered1 > delivered0)
      res_.direct_share_half = static_cast<double>(direct1 - direct0) / static_cast<double>(delivered1 - delivered0);

    // Final accounting, from both nodes and the sink.
    for (const char* which : {"edge", "hub"}) {
      auto s = node_status(which == std::string("edge") ? edge_admin_ : hub_admin_);
      res_.node_loss += std::abs(num(s.at("totals").at("loss")));
    }
    res_.rss_edge = edge_->peak_rss();
    res_.rss_hub = hub_->peak_rss();
    tail.stop();
    for (unsigned i = 0; i < 2 * n; ++i) {
      auto& r = i < n ? full[i] : half[i - n];
      res_.loss += tail.missing(i, r.ok);
      if (!r.error.empty() && res_.error.empty()) res_.error = "producer " + std::to_string(i) + ": " + r.error;
    }
    res_.duplicates = tail.duplicates() + tail.id_duplicates();
    res_.checksum_errors = tail.bad_records();
    std::vector<std::int64_t> lf, lh;
    for (unsigned i = 0; i < n; ++i) {
      lf.insert(lf.end(), tail.latencies(i).begin(), tail.latencies(i).end());
      lh.insert(lh.end(), tail.latencies(n + i).begin(), tail.latencies(n + i).end());
    }
    res_.full = percentiles(std::move(lf));
    res_.half = percentiles(std::move(lh));
    res_.half_windows = summarize(tail.windows());
    std::fprintf(stderr,
                 "bench tiers: %s half load: %.0f segments/s asked, %.0f delivered; latency p50 %.2f ms, p99 %.2f ms, "
                 "max %.2f ms; 100 ms windows: p99 median %.2f ms, %zu of %zu above 10 ms; hub direct %.0f %% (full "
                 "load %.0f %%); %s\n",
                 t_.name, res_.half_rate, res_.half_achieved, res_.half.p50_ms, res_.half.p99_ms, res_.half.max_ms,
                 res_.half_windows.p99_ms_median, res_.half_windows.over_10ms, res_.half_windows.count,
                 100 * res_.direct_share_half, 100 * res_.direct_share_full,
                 res_.ok() ? "checks hold" : "CHECKS FAILED");
    stop_nodes();
    return res_;
  }

  // Stops the nodes (also on the error path: the destructors would too).
  void stop_nodes() {
    if (edge_) edge_->stop();
    if (hub_) hub_->stop();
  }
  tier_result& partial() { return res_; }

private:
  void start_nodes() {
    auto hub_toml = dir_ / "hub.toml";
    std::ofstream(hub_toml) << "[node]\nid = \"hub\"\ndata_dir = " << q(dir_ / "hub" / "data") << "\nsync = \"full\"\n"
                            << queue_section() << "[listen]\naddress = \"127.0.0.1:0\"\ncert = " << q(pki_.server_cert)
                            << "\nkey = " << q(pki_.server_key) << "\nca = " << q(pki_.ca_cert)
                            << "\nallow = [\"URI:spiffe://edgerelay/edge/*\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                            << "[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"spool\"\nurl = \"file://"
                            << (dir_ / "hub" / "spool").string() << "\"\nbatch_max_bytes = \"4MiB\"\n";
    hub_ = std::make_unique<node_process>(exe_, hub_toml, dir_ / "hub.log");
    auto ha = hub_->wait_for_addresses("hub");
    hub_admin_ = ha["admin"];
    auto edge_toml = dir_ / "edge.toml";
    std::ofstream(edge_toml) << "[node]\nid = \"edge\"\ndata_dir = " << q(dir_ / "edge" / "data")
                             << "\nsync = \"full\"\n"
                             << queue_section() << "[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = "
                             << "\"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = \"hub\"\n"
                             << "url = \"wss://" << ha["listen"]
                             << "/v1/relay\"\nserver_name = \"localhost\"\ncert = " << q(pki_.client_cert)
                             << "\nkey = " << q(pki_.client_key) << "\nca = " << q(pki_.ca_cert)
                             << "\nwindow = 16\nbatch_max_bytes = \"4MiB\"\ncompression = \"none\"\n";
    edge_ = std::make_unique<node_process>(exe_, edge_toml, dir_ / "edge.log");
    auto ea = edge_->wait_for_addresses("edge");
    edge_admin_ = ea["admin"];
    ingest_ = "ws://" + ea["ingest"] + "/v1/relay";
  }

  // Each node's bounded queue, waiting for room when full: the hub holds the
  // edge back and the edge the producers (bench_tiers_options::
  // queue_max_bytes). Nothing when unbounded (the nodes' defaults).
  std::string queue_section() const {
    if (o_.queue_max_bytes == 0) return {};
    return "[queue]\nmax_bytes = \"" + std::to_string(o_.queue_max_bytes) +
           "B\"\noverflow = \"block\"\nblock_timeout = \"20s\"\n";
  }

  std::vector<producer_result> load(unsigned first, unsigned n, double seconds, double rate_each) {
    std::vector<producer_result> res(n);
    std::vector<std::thread> th;
    for (unsigned i = 0; i < n; ++i)
      th.emplace_back([&, i] {
        util::name_this_thread("bench-producer");
        run_producer(ingest_, pool_, first + i, 0, t_.bytes, seconds, rate_each, res[i]);
      });
    for (auto& t : th)
      t.join();
    for (unsigned i = 0; i < n; ++i)
      if (!res[i].error.empty()) throw bench_failure("producer " + std::to_string(first + i) + ": " + res[i].error);
    return res;
  }

  // After the load: polls the edge's queue depth until it is empty and the
  // sink holds `expect` segments; notes whether the depth only went down.
  void drain(spool_tailer& tail, std::uint64_t expect, bool record) {
    auto t0 = steady::now();
    auto deadline = t0 + (o_.quick ? 120s : 600s);
    std::int64_t prev = -1;
    bool monotonic = true;
    std::uint64_t max_q = 0;
    std::optional<steady::time_point> empty_at;
    for (;;) {
      auto s = node_status(edge_admin_);
      auto depth = num(s.at("queue").at("segments"));
      max_q = std::max<std::uint64_t>(max_q, static_cast<std::uint64_t>(depth));
      if (prev >= 0 && depth > prev) monotonic = false;
      prev = depth;
      if (depth == 0 && tail.distinct() >= expect) break;
      // The edge is empty but the sink is short: give the hub a while to
      // deliver what it holds, then stop waiting and let the loss count show it.
      if (depth == 0 && !empty_at) empty_at = steady::now();
      if (empty_at && steady::now() - *empty_at > 30s) break;
      if (steady::now() > deadline)
        throw bench_failure("the queue did not drain: edge queue " + std::to_string(depth) + ", sink " +
                            std::to_string(tail.distinct()) + " of " + std::to_string(expect));
      if (!edge_->running() || !hub_->running()) throw bench_failure("a node ended during the drain");
      std::this_thread::sleep_for(20ms);
    }
    if (record) {
      res_.monotonic_drain = monotonic;
      res_.drain_s = std::chrono::duration<double>(steady::now() - t0).count();
      res_.max_queue = max_q;
    } else {
      res_.monotonic_drain = res_.monotonic_drain && monotonic;
    }
  }

  fs::path exe_, dir_;
  transport::pki_paths pki_;
  tier_def t_;
  const bench_tiers_options& o_;
  const filler_pool& pool_;
  std::unique_ptr<node_process> hub_, edge_;
  // The hub's spool peer: (delivered by its direct path, delivered), so far.
  std::pair<std::uint64_t, std::uint64_t> hub_direct() {
    auto s = node_status(hub_admin_);
    auto& p = s.at("peers").as_array().at(0);
    return {static_cast<std::uint64_t>(num(p.at("direct_delivered"))),
            static_cast<std::uint64_t>(num(p.at("delivered")))};
  }
  std::string hub_admin_, edge_admin_, ingest_;
  tier_result res_;
};

// ------------------------------------------------------------ report

std::string machine_description() {
  std::string model = "unknown CPU";
  std::istringstream cpu(read_file("/proc/cpuinfo"));
  for (std::string line; std::getline(cpu, line);)
    if (line.rfind("model name", 0) == 0) {
      model = line.substr(line.find(':') + 2);
      break;
    }
  std::uint64_t mem_kb = 0;
  std::istringstream mem(read_file("/proc/meminfo"));
  for (std::string line; std::getline(mem, line);)
    if (line.rfind("MemTotal:", 0) == 0) mem_kb = std::stoull(line.substr(9));
  utsname u{};
  ::uname(&u);
  char buf[512];
  std::snprintf(buf, sizeof buf, "%s, %ld CPUs, %.1f GiB RAM, %s %s %s", model.c_str(), ::sysconf(_SC_NPROCESSORS_ONLN),
                static_cast<double>(mem_kb) / (1024.0 * 1024.0), u.sysname, u.release, u.machine);
  return buf;
}

// EDGERELAY_COMMIT, else `git describe` of the source tree the binary was
// built in (<tree>/build/bin/edgerelay), else "unknown".
std::string commit_of(const fs::path& exe) {
  if (const char* c = std::getenv("EDGERELAY_COMMIT"); c && *c) return c;
  auto tree = exe.parent_path().parent_path().parent_path();
  std::string cmd = "git -C '" + tree.string() + "' describe --always --dirty --abbrev=12 2>/dev/null";
  std::string out;
  if (FILE* f = ::popen(cmd.c_str(), "r")) {
    char b[128];
    while (std::fgets(b, sizeof b, f))
      out += b;
    ::pclose(f);
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r'))
    out.pop_back();
  return out.empty() ? "unknown" : out;
}

json::object to_json(const tier_result& r) {
  return json::object{{"tier", r.tier},
                      {"segment_bytes", r.segment_bytes},
                      {"segments_per_s", r.segments_per_s},
                      {"mb_per_s", r.mb_per_s},
                      {"p50_ms", r.full.p50_ms},
                      {"p99_ms", r.full.p99_ms},
                      {"max_ms", r.full.max_ms},
                      {"p50_ms_at_half_load", r.half.p50_ms},
                      {"p99_ms_at_half_load", r.half.p99_ms},
                      {"max_ms_at_half_load", r.half.max_ms},
                      {"half_load_segments_per_s", r.half_achieved},
                      {"half_load_windows", json::object{{"window_ms", spool_tailer::window_ms},
                                                         {"count", r.half_windows.count},
                                                         {"p99_ms_median", r.half_windows.p99_ms_median},
                                                         {"over_10ms", r.half_windows.over_10ms},
                                                         {"p99_ms", timeline_json(r.half_windows.timeline)}}},
                      {"cpu_s_per_gb", r.cpu_s_per_gb},
                      {"cpu_s", json::object{{"edge", r.cpu_edge_s}, {"hub", r.cpu_hub_s}}},
                      {"rss_max_bytes", json::object{{"edge", r.rss_edge}, {"hub", r.rss_hub}}},
                      {"segments_delivered", r.delivered},
                      {"load_s", r.load_s},
                      {"drain_s", r.drain_s},
                      {"max_queue_segments", r.max_queue},
                      {"hub_direct_share", json::object{{"full", r.direct_share_full}, {"half", r.direct_share_half}}},
                      {"loss", r.loss},
                      {"node_loss", r.node_loss},
                      {"duplicates", r.duplicates},
                      {"checksum_errors", r.checksum_errors},
                      {"monotonic_drain", r.monotonic_drain},
                      {"pass", r.ok()},
                      {"error", r.error}};
}

bool on_tmpfs(const fs::path& p) {
  struct statfs s {};
  return ::statfs(p.c_str(), &s) == 0 && (s.f_type == 0x01021994 /* TMPFS_MAGIC */ || s.f_type == 0x858458f6);
}

} // namespace

int run_bench_tiers(const bench_tiers_options& o) {
  std::vector<tier_def> tiers;
  if (o.tiers.empty()) tiers.assign(std::begin(all_tiers), std::end(all_tiers));
  for (auto& name : o.tiers) {
    auto it = std::find_if(std::begin(all_tiers), std::end(all_tiers), [&](auto& t) { return name == t.name; });
    if (it == std::end(all_tiers)) {
      std::cerr << "edgerelay bench tiers: --tiers: unknown tier \"" << name << "\" (use T1, T2, T3, T4, T5)\n";
      return 2;
    }
    if (std::none_of(tiers.begin(), tiers.end(), [&](auto& t) { return name == t.name; })) tiers.push_back(*it);
  }
  std::error_code ec;
  auto exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) {
    std::cerr << "edgerelay bench tiers: cannot find this program (/proc/self/exe): " << ec.message() << "\n";
    return 1;
  }
  bool temp = !o.dir;
  // Absolute: the nodes' configs name their spool, PKI and data by this path
  // and the nodes run in their own directories.
  fs::path dir = fs::absolute(
      o.dir ? fs::path(*o.dir) : fs::temp_directory_path() / ("edgerelay-bench-" + std::to_string(::getpid())), ec);
  if (!ec) fs::create_directories(dir, ec);
  if (ec) {
    std::cerr << "edgerelay bench tiers: cannot create " << dir.string() << ": " << ec.message() << "\n";
    return 1;
  }
  if (on_tmpfs(dir)) {
    std::cerr << "edgerelay bench tiers: " << dir.string()
              << " is on tmpfs, where fsync costs nothing; use --dir on a real disk\n";
    if (temp) fs::remove_all(dir, ec);
    return 2;
  }
  struct cleanup_t {
    fs::path dir;
    bool remove;
    ~cleanup_t() {
      std::error_code e;
      if (remove) fs::remove_all(dir, e);
    }
  } cleanup{dir, temp && !o.keep};

  auto pki = transport::pki_init(dir / "pki");
  if (!pki) {
    std::cerr << "edgerelay bench tiers: pki init: " << pki.error().message << "\n";
    return 1;
  }
  filler_pool pool;
  std::string machine = machine_description(), commit = commit_of(exe);
  const std::string queues = o.queue_max_bytes ? "queues " + util::format_size(o.queue_max_bytes) + ", overflow = block"
                                               : std::string("queues unbounded (node defaults)");
  std::fprintf(stderr, "bench tiers: %s; commit %s; %s; work dir %s%s\n", machine.c_str(), commit.c_str(),
               queues.c_str(), dir.string().c_str(), o.quick ? "; quick" : "");

  std::vector<tier_result> results;
  for (auto& t : tiers) {
    // Whatever is still dirty in the page cache (the previous tier's deleted
    // files, another program's writes) is written back now, not during this
    // tier's fsyncs.
    ::sync();
    tier_run run(exe, dir / t.name, *pki, t, o, pool);
    tier_result r;
    try {
      r = run.run();
    } catch (const std::exception& e) {
      run.stop_nodes();
      r = run.partial();
      r.error = e.what();
      std::fprintf(stderr, "bench tiers: %s FAILED: %s\n", t.name, e.what());
    }
    results.push_back(r);
    if (!o.keep) fs::remove_all(dir / t.name, ec);
  }

  std::printf("\nedgerelay bench tiers (%s) — %s, commit %s, %s\n", o.quick ? "quick" : "full", machine.c_str(),
              commit.c_str(), queues.c_str());
  std::printf("%-4s %9s %11s %9s %9s %9s %9s %11s %10s %10s %10s %6s %5s %9s %s\n", "tier", "bytes", "segments/s",
              "MB/s", "p50 ms", "p99 ms", "max ms", "p99@half", "cpu s/GB", "RSS edge", "RSS hub", "loss", "dups",
              "drain", "result");
  bool all_ok = true;
  for (auto& r : results) {
    all_ok = all_ok && r.ok();
    std::printf("%-4s %9llu %11.0f %9.1f %9.2f %9.2f %9.2f %11.2f %10.2f %9.1fM %9.1fM %6llu %5llu %9s %s\n",
                r.tier.c_str(), static_cast<unsigned long long>(r.segment_bytes), r.segments_per_s, r.mb_per_s,
                r.full.p50_ms, r.full.p99_ms, r.full.max_ms, r.half.p99_ms, r.cpu_s_per_gb,
                static_cast<double>(r.rss_edge) / (1 << 20), static_cast<double>(r.rss_hub) / (1 << 20),
                static_cast<unsigned long long>(r.loss), static_cast<unsigned long long>(r.duplicates),
                r.monotonic_drain ? "monotonic" : "NO", r.ok() ? "ok" : ("FAIL " + r.error).c_str());
  }
  if (o.out) {
    json::array arr;
    for (auto& r : results)
      arr.push_back(to_json(r));
    json::object doc{{"machine", machine}, {"commit", commit},
                     {"quick", o.quick},   {"queue_max_bytes", o.queue_max_bytes},
                     {"pass", all_ok},     {"tiers", std::move(arr)}};
    std::ofstream f(*o.out, std::ios::trunc);
    f << json::serialize(doc) << "\n";
    if (!f) {
      std::cerr << "edgerelay bench tiers: cannot write " << o.out->string() << "\n";
      return 1;
    }
  }
  return all_ok ? 0 : 1;
}

} // namespace edgerelay::relay
