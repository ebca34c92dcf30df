#pragma once
// The machinery `edgerelay evidence run` builds its scenarios from (see
// docs/evidence.md, "Validation scenarios"): child processes of the edgerelay
// binary itself (`run --config` with generated configs), their admin API,
// producers over the ingest API, and exactly-once checks against a terminal
// node's file:// spool.
//
// Threads: a scenario runs on the thread that called run_evidence (the main
// thread). Child processes must be started from that thread: each child is
// killed by the kernel when its parent thread ends (PR_SET_PDEATHSIG), so no
// edgerelay process outlives an evidence run, however it ends. Producers may
// run on helper threads (they only make HTTP calls).
//
// Failure: helpers throw scenario_error for an environment failure (a node
// that does not start, an admin API that does not answer); the runner turns
// it into a failed check "scenario ran to completion" with the message.
// Outcomes a claim is about (missing segments, loss) are never thrown: they
// are returned for the scenario to check.

#include "telemetry/evidence.hpp"
#include "transport/pki.hpp"
#include "util/clock.hpp"

#include <boost/json/object.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <sys/types.h>
#include <thread>
#include <vector>

namespace edgerelay::relay::scenarios {

struct scenario_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Everything a scenario gets from the runner.
struct context {
  std::filesystem::path work; // this claim's own folder (configs, data, logs); removed after a PASS
  std::string exe;            // absolute path of the running edgerelay binary
  bool quick = false;
  util::clock* clock = nullptr; // the wall clock (reports' timestamps)
  transport::pki_paths pki;     // the dev PKI of this run (pki_init), shared by the scenarios
};

// ------------------------------------------------------------ child processes

// One child process: output appended to a log file, killed (SIGKILL) and
// reaped by the destructor. Move-only.
class child {
public:
  child() = default;
  // Starts args[0] with args; throws scenario_error when it cannot be started.
  child(const std::vector<std::string>& args, const std::filesystem::path& log);
  child(child&& o) noexcept;
  child& operator=(child&& o) noexcept;
  ~child();
  child(const child&) = delete;
  child& operator=(const child&) = delete;

  pid_t pid() const { return pid_; }
  bool running();
  // Sends sig and reaps the child (SIGKILL after `grace`); returns its wait status.
  int stop(int sig = SIGTERM, std::chrono::milliseconds grace = std::chrono::seconds(10));
  // Waits for the child to end; its exit code, or -1 when it was killed by a
  // signal or still ran after `limit` (then it is killed).
  int wait(std::chrono::milliseconds limit);
  std::string log_text() const;

private:
  pid_t pid_ = -1;
  std::filesystem::path log_;
};

// ------------------------------------------------------------ nodes

// One `edgerelay run --config FILE` process with the addresses it bound
// (read from its "node running:" log line; configs use port 0).
struct node_proc {
  std::string name;
  child proc;
  std::filesystem::path config;
  std::string admin, ingest, listen; // "127.0.0.1:port"; empty when not configured

  std::string admin_url() const { return "http://" + admin; }
  std::string ingest_url() const { return "http://" + ingest; }
};

// Writes ctx.work/<name>.toml and starts it; waits (20 s) for the node to
// serve /healthz. Each start logs to its own file <name>-<n>.log. Throws
// scenario_error with the log's tail when the node does not come up.
node_proc start_node(const context& ctx, const std::string& name, const std::string& toml);
// Starts the config file as it is now (after a kill or for a restart).
node_proc restart_node(const context& ctx, const std::string& name, const std::filesystem::path& config);

// TOML fragments. Paths are quoted; every node turns the canary soak off.
std::string q(const std::filesystem::path& p);
// A terminal hub: the relay listener (mTLS, dev PKI with CRL) at `listen`,
// the admin API, and one file:// peer "spool" at `spool`. A hub that is
// restarted while an edge dials it needs a fixed address: pinned_address().
std::string hub_toml(const context& ctx, const std::string& id, const std::filesystem::path& spool,
                     const std::string& listen_extra = "", const std::string& listen = "127.0.0.1:0");
// "127.0.0.1:<port>" with a port below the kernel's ephemeral range
// (util::pick_local_port): no connection of another program takes it
// between a kill and the restart.
std::string pinned_address();
// An edge: HTTP ingest on port 0, the admin API, [queue] with `queue_lines`,
// then `peers` (each a complete [[peer]] table).
std::string edge_toml(const context& ctx, const std::string& id, const std::string& queue_lines,
                      const std::vector<std::string>& peers);
// A relay peer "wss://<address>/v1/relay" with the dev client identity;
// `extra` adds lines (dial_timeout, bandwidth, ...).
std::string relay_peer(const context& ctx, const std::string& name, const std::string& address,
                       const std::string& extra = "");
std::string file_peer(const std::string& name, const std::filesystem::path& spool, const std::string& extra = "");

// ------------------------------------------------------------ admin API

boost::json::object status(const node_proc& n);
std::int64_t total(const boost::json::object& status, const char* key);
boost::json::object peer(const boost::json::object& status, const std::string& name);
std::int64_t num(const boost::json::object& o, const char* key);
// The value of one exposition line "name{labels} value" of GET /metrics; nullopt when absent.
std::optional<double> metric(const node_proc& n, const std::string& series);
// routed - (delivered + queued + deadletter + evicted + purged), summed over
// every peer, computed here from the per-peer counters (not the node's loss).
std::int64_t identity_gap(const boost::json::object& status);

// ------------------------------------------------------------ producers

// id -> checksum of every segment a node acknowledged (HTTP 201).
using sent_map = std::map<std::string, std::uint64_t>;

// POSTs `count` random segments, `size(rng)` bytes each, in batches of up to
// `per_request` to ingest_url/v1/streams/<stream>/batch. Throws scenario_error
// on a failed request. Returns the acknowledged ids in order.
std::vector<std::string> send_segments(const std::string& ingest_url, const std::string& stream, std::size_t count,
                                       const std::function<std::size_t(std::mt19937_64&)>& size, std::mt19937_64& rng,
                                       sent_map& sent, std::size_t per_request = 100);

// A producer thread that POSTs requests of `per_request` segments to an
// edge's ingest until stop() (or until a request fails: the edge is gone),
// pausing `pause` between requests. Every segment of a 201 goes into
// sent(); the error that ended it, if any, is in error().
class background_producer {
public:
  background_producer(std::string ingest_url, std::string stream, std::size_t per_request,
                      std::function<std::size_t(std::mt19937_64&)> size, std::uint64_t seed,
                      std::chrono::milliseconds pause = std::chrono::milliseconds{0});
  ~background_producer() { stop(); }
  background_producer(const background_producer&) = delete;
  background_producer& operator=(const background_producer&) = delete;
  void stop();
  std::size_t acknowledged() const; // segments acknowledged since the start
  sent_map take_sent();             // what was acknowledged so far (moved out)
  std::string error() const;

private:
  mutable std::mutex mu_;
  sent_map sent_;
  std::size_t acked_ = 0;
  std::string error_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// Waits until the node's queue holds nothing (queued and inflight 0).
bool wait_settled(const node_proc& n, std::chrono::milliseconds limit);

// ------------------------------------------------------------ the spool

struct spool_check {
  std::size_t expected = 0;   // ids acknowledged to the producer
  std::size_t delivered = 0;  // of those, seen at the sink
  std::size_t missing = 0;    // of those, not seen
  std::size_t duplicated = 0; // ids seen more than once (any id)
  std::size_t extra = 0;      // distinct ids at the sink the producer never got acknowledged
  std::size_t bad_checksum = 0;
  std::size_t records = 0;
  std::uint64_t payload_bytes = 0;
};
spool_check check_spool(const std::filesystem::path& spool, const sent_map& sent);
// Records in the spool now (0 while it does not exist yet).
std::size_t count_spool_records(const std::filesystem::path& spool);
// check_spool until every expected id is there or `limit` passes.
spool_check wait_spool(const std::filesystem::path& spool, const sent_map& sent, std::chrono::milliseconds limit);

// ------------------------------------------------------------ misc

void sleep_for(std::chrono::milliseconds d);

template <class Pred>
bool wait_until(Pred pred, std::chrono::milliseconds limit,
                std::chrono::milliseconds step = std::chrono::milliseconds(50)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    sleep_for(step);
  }
  return true;
}
double seconds_since(std::chrono::steady_clock::time_point t0);
std::uint16_t port_of(const std::string& address);

// Adds the usual checks of a delivery: nothing missing, nothing twice, no
// bad checksum, and `extra_ok` as the most unacknowledged extras allowed.
void check_delivery(telemetry::report& r, const std::string& label, const spool_check& c, std::size_t extra_ok = 0);
boost::json::object to_json(const spool_check& c);

} // namespace edgerelay::relay::scenarios
