#include "relay/scenarios/harness.hpp"

#include "relay/http_client.hpp"
#include "relay/spool.hpp"
#include "util/bytes.hpp"
#include "util/checksum.hpp"
#include "util/ports.hpp"

#include <boost/json.hpp>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <iterator>
#include <sstream>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

namespace edgerelay::relay::scenarios {

namespace json = boost::json;
using namespace std::chrono_literals;

// ------------------------------------------------------------ child

child::child(const std::vector<std::string>& args, const std::filesystem::path& log) : log_(log) {
  if (args.empty()) throw scenario_error("child: no program");
  std::vector<char*> argv;
  for (auto& a : args)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();
  int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) throw scenario_error("cannot open " + log.string() + ": " + std::strerror(errno));
  pid_t pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    // No listening socket or LMDB handle of this process may live on in the
    // child (a proxy told to refuse must really stop listening).
    ::close_range(3, ~0U, 0);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(fd);
  if (pid < 0) throw scenario_error(std::string("fork failed: ") + std::strerror(errno));
  pid_ = pid;
}

child::child(child&& o) noexcept : pid_(std::exchange(o.pid_, -1)), log_(std::move(o.log_)) {}

child& child::operator=(child&& o) noexcept {
  if (this != &o) {
    stop(SIGKILL);
    pid_ = std::exchange(o.pid_, -1);
    log_ = std::move(o.log_);
  }
  return *this;
}

child::~child() { stop(SIGKILL); }

bool child::running() {
  if (pid_ <= 0) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == 0) return true;
  pid_ = -1;
  return false;
}

int child::stop(int sig, std::chrono::milliseconds grace) {
  if (pid_ <= 0) return 0;
  ::kill(pid_, sig);
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (::waitpid(pid_, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  pid_ = -1;
  return status;
}

int child::wait(std::chrono::milliseconds limit) {
  if (pid_ <= 0) return -1;
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (::waitpid(pid_, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      stop(SIGKILL);
      return -1;
    }
    std::this_thread::sleep_for(20ms);
  }
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

std::string child::log_text() const {
  std::ifstream in(log_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// ------------------------------------------------------------ nodes

namespace {

std::string tail(const std::string& s, std::size_t n = 1500) { return s.size() <= n ? s : s.substr(s.size() - n); }

// "edgerelay: node running: admin A, ingest I, listen L"
std::string address_after(const std::string& line, const std::string& key) {
  auto at = line.find(key + " ");
  if (at == std::string::npos) return {};
  at += key.size() + 1;
  auto end = line.find_first_of(",\n", at);
  return line.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

std::atomic<unsigned> log_counter{0};

} // namespace

node_proc restart_node(const context& ctx, const std::string& name, const std::filesystem::path& config) {
  node_proc n;
  n.name = name;
  n.config = config;
  std::filesystem::path log;
  std::string line;
  // A restart binds the port its config pins (pinned_address(), below the
  // ephemeral range). Another program may still hold that port for a
  // moment (a socket bound to it explicitly): the node then exits with
  // "Address already in use", and starting it again shortly after succeeds.
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  for (;;) {
    log = ctx.work / (name + "-" + std::to_string(++log_counter) + ".log");
    n.proc = child({ctx.exe, "run", "--config", config.string()}, log);
    line.clear();
    bool up = wait_until(
        [&] {
          auto text = n.proc.log_text();
          auto at = text.find("node running:");
          if (at == std::string::npos) return !n.proc.running();
          line = text.substr(at, text.find('\n', at) - at);
          return true;
        },
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()), 20ms);
    if (up && !line.empty()) break;
    if (!up || n.proc.log_text().find("Address already in use") == std::string::npos ||
        std::chrono::steady_clock::now() + 200ms >= deadline)
      throw scenario_error("node " + name + " did not start (" + log.string() + "): " + tail(n.proc.log_text()));
    n.proc.wait(1s);
    std::this_thread::sleep_for(200ms);
  }
  n.admin = address_after(line, "admin");
  n.ingest = address_after(line, "ingest");
  n.listen = address_after(line, "listen");
  bool healthy = wait_until(
      [&] {
        auto r = http_call("GET", n.admin_url() + "/healthz", {}, 1s);
        return r && r->status == 200;
      },
      20s);
  if (!healthy) throw scenario_error("node " + name + " does not answer /healthz on " + n.admin);
  return n;
}

node_proc start_node(const context& ctx, const std::string& name, const std::string& toml) {
  auto file = ctx.work / (name + ".toml");
  {
    std::ofstream out(file, std::ios::trunc);
    out << toml;
    if (!out) throw scenario_error("cannot write " + file.string());
  }
  return restart_node(ctx, name, file);
}

std::string q(const std::filesystem::path& p) { return json::serialize(json::value(p.string())); }

std::string pinned_address() { return "127.0.0.1:" + std::to_string(util::pick_local_port()); }

std::string hub_toml(const context& ctx, const std::string& id, const std::filesystem::path& spool,
                     const std::string& listen_extra, const std::string& listen) {
  return "[node]\nid = \"" + id + "\"\ndata_dir = " + q(ctx.work / (id + "-data")) + "\n[listen]\naddress = \"" +
         listen + "\"\ncert = " + q(ctx.pki.server_cert) + "\nkey = " + q(ctx.pki.server_key) +
         "\nca = " + q(ctx.pki.ca_cert) + "\ncrl = " + q(ctx.pki.crl) + "\n" + listen_extra +
         "\n[admin]\nlisten = \"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n" + file_peer("spool", spool);
}

std::string edge_toml(const context& ctx, const std::string& id, const std::string& queue_lines,
                      const std::vector<std::string>& peers) {
  std::string t = "[node]\nid = \"" + id + "\"\ndata_dir = " + q(ctx.work / (id + "-data")) + "\n[queue]\n" +
                  queue_lines +
                  "\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
                  "[evidence]\ncanary_interval = \"0s\"\n";
  for (auto& p : peers)
    t += p + "\n";
  return t;
}

std::string relay_peer(const context& ctx, const std::string& name, const std::string& address,
                       const std::string& extra) {
  return "[[peer]]\nname = \"" + name + "\"\nurl = \"wss://" + address +
         "/v1/relay\"\nserver_name = \"localhost\"\ncert = " + q(ctx.pki.client_cert) +
         "\nkey = " + q(ctx.pki.client_key) + "\nca = " + q(ctx.pki.ca_cert) + "\n" + extra + "\n";
}

std::string file_peer(const std::string& name, const std::filesystem::path& spool, const std::string& extra) {
  return "[[peer]]\nname = \"" + name + "\"\nurl = \"file://" + spool.string() + "\"\n" + extra + "\n";
}

// ------------------------------------------------------------ admin API

json::object status(const node_proc& n) {
  auto r = http_call("GET", n.admin_url() + "/v1/status", {}, 10s);
  if (!r) throw scenario_error("GET " + n.admin_url() + "/v1/status: " + r.error().message);
  if (r->status != 200) throw scenario_error("GET /v1/status of " + n.name + ": HTTP " + std::to_string(r->status));
  boost::system::error_code ec;
  auto v = json::parse(r->body, ec);
  if (ec || !v.is_object()) throw scenario_error("GET /v1/status of " + n.name + ": not a JSON object");
  return v.as_object();
}

std::int64_t num(const json::object& o, const char* key) {
  auto* v = o.if_contains(key);
  if (!v || !v->is_number()) throw scenario_error(std::string("status: no number \"") + key + "\"");
  return v->to_number<std::int64_t>();
}

std::int64_t total(const json::object& s, const char* key) { return num(s.at("totals").as_object(), key); }

json::object peer(const json::object& s, const std::string& name) {
  for (auto& p : s.at("peers").as_array())
    if (p.as_object().at("name").as_string() == name) return p.as_object();
  throw scenario_error("status: no peer \"" + name + "\"");
}

std::optional<double> metric(const node_proc& n, const std::string& series) {
  auto r = http_call("GET", n.admin_url() + "/metrics", {}, 10s);
  if (!r || r->status != 200) throw scenario_error("GET " + n.admin_url() + "/metrics failed");
  std::istringstream in(r->body);
  std::string line;
  while (std::getline(in, line))
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ')
      return std::stod(line.substr(series.size() + 1));
  return std::nullopt;
}

std::int64_t identity_gap(const json::object& s) {
  std::int64_t gap = 0;
  for (auto& pv : s.at("peers").as_array()) {
    auto& p = pv.as_object();
    gap += num(p, "routed") -
           (num(p, "delivered") + num(p, "queued") + num(p, "deadletter") + num(p, "evicted") + num(p, "purged"));
  }
  return gap;
}

// ------------------------------------------------------------ producers

std::vector<std::string> send_segments(const std::string& ingest_url, const std::string& stream, std::size_t count,
                                       const std::function<std::size_t(std::mt19937_64&)>& size, std::mt19937_64& rng,
                                       sent_map& sent, std::size_t per_request) {
  std::vector<std::string> order;
  const std::string url = ingest_url + "/v1/streams/" + stream + "/batch";
  for (std::size_t i = 0; i < count;) {
    std::size_t k = std::min(per_request, count - i);
    std::string body;
    std::vector<std::uint64_t> sums;
    for (std::size_t j = 0; j < k; ++j) {
      std::string p(std::max<std::size_t>(1, size(rng)), '\0');
      for (auto& c : p)
        c = static_cast<char>(rng());
      util::writer(body).u32(static_cast<std::uint32_t>(p.size()));
      body += p;
      sums.push_back(util::checksum(p));
    }
    auto r = http_call("POST", url, body, 30s);
    if (!r) throw scenario_error("POST " + url + ": " + r.error().message);
    if (r->status != 201)
      throw scenario_error("POST " + url + ": HTTP " + std::to_string(r->status) + " " + tail(r->body, 300));
    auto ids = json::parse(r->body).at("ids").as_array();
    if (ids.size() != sums.size()) throw scenario_error("POST " + url + ": ids do not match the batch");
    for (std::size_t x = 0; x < ids.size(); ++x) {
      std::string id(ids[x].as_string());
      sent[id] = sums[x];
      order.push_back(std::move(id));
    }
    i += k;
  }
  return order;
}

// ------------------------------------------------------------ the spool

background_producer::background_producer(std::string ingest_url, std::string stream, std::size_t per_request,
                                         std::function<std::size_t(std::mt19937_64&)> size, std::uint64_t seed,
                                         std::chrono::milliseconds pause) {
  thread_ = std::thread([this, url = std::move(ingest_url), stream = std::move(stream), per_request,
                         size = std::move(size), seed, pause] {
    std::mt19937_64 rng(seed);
    try {
      for (int round = 0; round < 1000000 && !stop_; ++round) {
        sent_map batch;
        send_segments(url, stream, per_request, size, rng, batch, per_request);
        {
          std::lock_guard lk(mu_);
          acked_ += batch.size();
          sent_.insert(batch.begin(), batch.end());
        }
        if (pause.count()) std::this_thread::sleep_for(pause);
      }
    } catch (const std::exception& e) {
      std::lock_guard lk(mu_);
      error_ = e.what();
    }
  });
}
void background_producer::stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}
std::size_t background_producer::acknowledged() const {
  std::lock_guard lk(mu_);
  return acked_;
}
sent_map background_producer::take_sent() {
  std::lock_guard lk(mu_);
  return std::exchange(sent_, {});
}
std::string background_producer::error() const {
  std::lock_guard lk(mu_);
  return error_;
}

bool wait_settled(const node_proc& n, std::chrono::milliseconds limit) {
  return wait_until(
      [&] {
        auto s = status(n);
        return total(s, "queued") == 0 && total(s, "inflight") == 0;
      },
      limit, 100ms);
}

std::size_t count_spool_records(const std::filesystem::path& spool) {
  if (!std::filesystem::is_directory(spool)) return 0;
  auto n = read_spool(spool, [](const spool_record&) { return true; });
  return n ? static_cast<std::size_t>(*n) : 0;
}

spool_check check_spool(const std::filesystem::path& spool, const sent_map& sent) {
  spool_check c;
  c.expected = sent.size();
  std::map<std::string, int> seen;
  if (std::filesystem::exists(spool))
    (void)read_spool(spool, [&](const spool_record& r) {
      ++seen[r.id];
      ++c.records;
      c.payload_bytes += r.payload.size();
      auto it = sent.find(r.id);
      if (util::checksum(r.payload) != r.checksum || (it != sent.end() && it->second != r.checksum)) ++c.bad_checksum;
      return true;
    });
  for (auto& [id, sum] : sent)
    if (seen.count(id))
      ++c.delivered;
    else
      ++c.missing;
  for (auto& [id, n] : seen) {
    if (n > 1) ++c.duplicated;
    if (!sent.count(id)) ++c.extra;
  }
  return c;
}

spool_check wait_spool(const std::filesystem::path& spool, const sent_map& sent, std::chrono::milliseconds limit) {
  spool_check c;
  wait_until(
      [&] {
        c = check_spool(spool, sent);
        return c.missing == 0;
      },
      limit, 100ms);
  return c;
}

// ------------------------------------------------------------ misc

void sleep_for(std::chrono::milliseconds d) { std::this_thread::sleep_for(d); }

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::uint16_t port_of(const std::string& address) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos) throw scenario_error("not host:port: " + address);
  return static_cast<std::uint16_t>(std::stoul(address.substr(colon + 1)));
}

void check_delivery(telemetry::report& r, const std::string& label, const spool_check& c, std::size_t extra_ok) {
  r.check_equal(label + ": acknowledged segments missing at the sink", 0, c.missing);
  r.check_equal(label + ": segments at the sink more than once", 0, c.duplicated);
  r.check_equal(label + ": bad checksums at the sink", 0, c.bad_checksum);
  if (extra_ok == 0)
    r.check_equal(label + ": segments at the sink nobody sent", 0, c.extra);
  else
    r.check(label + ": committed but unacknowledged segments at the sink (at most one batch per kill)",
            json::object{{"at_most", extra_ok}}, c.extra, c.extra <= extra_ok);
}

json::object to_json(const spool_check& c) {
  return {{"acknowledged", c.expected},
          {"delivered", c.delivered},
          {"missing", c.missing},
          {"duplicated", c.duplicated},
          {"unacknowledged_extra", c.extra},
          {"bad_checksum", c.bad_checksum},
          {"records_at_sink", c.records},
          {"payload_bytes_at_sink", c.payload_bytes}};
}

} // namespace edgerelay::relay::scenarios
