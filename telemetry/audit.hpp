#pragma once
// telemetry::audit_log — security- and operator-relevant events as JSON
// lines in a file of their own (docs/operations.md, "Audit log").
//
// Each event is one line, one JSON object:
//
//   {"time":"2026-11-23T15:40:01.123Z","event":"auth_denied","node":"hub",
//    "listener":"listen","remote":"10.0.0.7","identity":"","reason":"unknown_ca","detail":"..."}
//
// time (RFC 3339, UTC, milliseconds, from the injected clock), event and node
// come first; the event's fields follow. Strings are escaped as JSON and
// bytes that are not valid UTF-8 become U+FFFD, so every complete line parses.
//
// Writing: the file is opened with O_APPEND and every event is one write(2)
// of the complete line, under a mutex; nothing is buffered in the process,
// so an event is in the file (the page cache) when the call returns and a
// crash of the process never loses or tears it. It is not fsynced: a power
// cut may lose the last events or leave a torn last line. A torn line never
// merges with the next event: open() starts a new line when the file does
// not end in '\n', and read_audit_tail() skips lines that do not parse.
//
// A failed write is logged (once per kind of failure, not once per event)
// and counted in write_failures(); it never throws or stops the caller.
//
// Rotation (audit_rotation): before an event would take the file past
// max_bytes, the file becomes PATH.1 (PATH.1 becomes PATH.2, and so on; the
// one past `keep` is dropped) and a new PATH is started, so the audit log
// takes at most (keep + 1) * max_bytes plus one event of disk, however many
// connections are refused. Rotation happens under the same mutex as the
// writes, so no event is lost or split by it. keep = 0 starts the file over
// instead. A rotation that fails (rename or open) is logged, the events go on
// into the file already open, and the next try is a minute later.
//
// Threads: every member function may be called from any thread.

#include "util/errc.hpp"

#include <boost/json/object.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::util {
class clock;
}

namespace edgerelay::telemetry {

// When the audit log is rotated (node.audit_log_max_bytes, node.audit_log_keep).
struct audit_rotation {
  std::uint64_t max_bytes = 0; // 0: never rotated (an external logrotate with copytruncate may)
  unsigned keep = 0;           // rotated files kept: PATH.1 (newest) .. PATH.<keep>
  friend bool operator==(const audit_rotation&, const audit_rotation&) = default;
};

// Who asked for an operator action: the admin client's address and, over
// mTLS, its certificate identity (empty otherwise).
struct audit_actor {
  std::string remote;
  std::string identity;
};

class audit_log {
public:
  // Opens (creating with mode 0640 if absent) the file for appending. The
  // parent directory must exist. Errors name the path and the OS reason.
  static boost::system::result<std::unique_ptr<audit_log>, error>
  open(const std::filesystem::path& path, std::string node_id, util::clock& clock, audit_rotation rotation = {});
  ~audit_log();
  audit_log(const audit_log&) = delete;
  audit_log& operator=(const audit_log&) = delete;

  const std::filesystem::path& path() const noexcept { return path_; }
  std::uint64_t write_failures() const noexcept { return write_failures_.load(); }
  // Rotations done since open, and rotations that failed.
  std::uint64_t rotations() const noexcept { return rotations_.load(); }
  std::uint64_t rotation_failures() const noexcept { return rotation_failures_.load(); }
  // Takes effect from the next event (a reload).
  void set_rotation(audit_rotation r);
  // PATH.<i>: the i-th newest rotated file.
  static std::filesystem::path rotated(const std::filesystem::path& path, unsigned i);

  // Any event: `fields` follow time, event and node (keys of those names in
  // `fields` are dropped).
  void record(std::string_view event, const boost::json::object& fields);

  // --- node lifecycle
  // node_start: version, pid, and the bound listener addresses ({"admin": "127.0.0.1:9310", ...}).
  void node_started(std::string_view version, const boost::json::object& listeners);
  // node_stop.
  void node_stopped();

  // --- configuration
  // config_reload: source, applied, restart_required, failed (one sentence each).
  void config_reloaded(std::string_view source, const std::vector<std::string>& applied,
                       const std::vector<std::string>& restart_required, const std::vector<std::string>& failed);
  // config_reload_rejected: source, errors (the check-config lines); nothing changed.
  void config_reload_rejected(std::string_view source, const std::vector<std::string>& errors);

  // --- dead-letter operations (op: "retry" or "purge")
  // deadletter_<op>: client, identity, filter (the request's selector), and
  // either count (entries affected) or error.
  void deadletter_op(std::string_view op, const audit_actor& who, const boost::json::object& filter,
                     std::uint64_t count);
  void deadletter_op_failed(std::string_view op, const audit_actor& who, const boost::json::object& filter,
                            std::string_view error);

  // --- authentication and authorisation
  // auth_denied: listener ("listen", "ingest", "admin", or "peer:<name>" when
  // this node refused a server), remote address, identity (the certificate's
  // verified identity when known, else ""), reason (the metric label:
  // "unknown_ca", "not_allowed", ...) and detail (the human explanation).
  void auth_denied(std::string_view listener, std::string_view remote, std::string_view identity,
                   std::string_view reason, std::string_view detail);

  // --- certificates (name: the TLS material's name as in /v1/status tls[].name)
  // cert_rotated: name, old_not_after, new_not_after (RFC 3339 UTC), fingerprint (the new certificate's SHA-256).
  void cert_rotated(std::string_view name, std::chrono::system_clock::time_point old_not_after,
                    std::chrono::system_clock::time_point new_not_after, std::string_view fingerprint);
  // cert_reload_failed: name, path (the file that was refused), reason; the old material stays in use.
  void cert_reload_failed(std::string_view name, std::string_view path, std::string_view reason);
  // crl_reloaded: name, entries (revoked serials in the new CRL).
  void crl_reloaded(std::string_view name, std::uint64_t entries);

private:
  audit_log(int fd, std::filesystem::path path, std::string node_id, util::clock& clock, audit_rotation rotation);
  void write_line(const std::string& line);
  void maybe_rotate(std::size_t next_line); // mu_ held
  bool rotate();                            // mu_ held

  const std::filesystem::path path_;
  const std::string node_id_;
  util::clock& clock_;
  std::mutex mu_; // one write(2) at a time, so lines never interleave; guards what follows
  int fd_;        // PATH as of the last rotation
  audit_rotation rotation_;
  std::chrono::steady_clock::time_point next_try_{}; // after a failed rotation
  std::atomic<std::uint64_t> write_failures_{0}, rotations_{0}, rotation_failures_{0};
  std::atomic<int> last_errno_logged_{0};
};

// The last `max_events` complete events of an audit file, oldest first, each
// parsed. Lines that are not a JSON object (a torn last line after a power
// cut) are skipped and counted in *skipped. Reads at most the last
// `max_bytes` of the file, and when the file holds fewer events (it was
// just rotated), the rest from the end of PATH.1 if there is one. Errors:
// the file cannot be opened or read.
struct audit_tail {
  std::vector<boost::json::object> events;
  std::vector<std::string> lines; // the same events as the lines in the file
  std::uint64_t skipped = 0;
};
boost::system::result<audit_tail, error> read_audit_tail(const std::filesystem::path& path, std::size_t max_events,
                                                         std::uint64_t max_bytes = 16ull << 20);

} // namespace edgerelay::telemetry
