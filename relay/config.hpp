#pragma once
// edgerelay::relay::node_config — the node's configuration file (TOML, see
// docs/config.md for every key), parsed and validated in one pass.
//
// Parsing never stops at the first problem: every error in the file is
// collected (except a TOML syntax error, after which nothing can be read) and
// each names the file, the key path and the problem:
//
//   edge.toml: queue.max_byte: unknown key (did you mean "max_bytes"?)
//   edge.toml: peer[1].bandwidth.rate: "10Mbt" is not a rate: ...
//
// Errors come in file order (by line); problems of the node as a whole (no
// [node], no peer, no input, two listeners on one port) come last. Array
// indices in key paths are 0-based (peer[0] is the first [[peer]]).
// Relative paths in the file (data_dir, audit_log, report_dir, cert, key, ca, crl)
// resolve against the directory of the config file; every path in a
// node_config is absolute and lexically normal.
//
// All functions are thread-safe (no shared state) and do not throw, except
// .value() on a failed result (see throw_exception_from_error below). A
// node_config is a plain value: copy it, compare it, hand it to a reload.

#include "queue/store.hpp"

#include <boost/assert/source_location.hpp>
#include <boost/system/result.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::relay {

// One problem in a configuration file.
struct config_error {
  std::string file;       // the file name as given to load_config / parse_config
  std::string key;        // "queue.max_bytes", "peer[1].bandwidth.rate"; empty when about the whole file
  std::string problem;    // one sentence, no trailing period
  std::uint32_t line = 0; // 1-based line of the offending value (or of its table when a key is missing); 0: none
  // "FILE: key.path: problem", or "FILE: problem" when key is empty. The line
  // is not part of it (the key path is the stable address).
  std::string to_string() const;
};

using config_errors = std::vector<config_error>;

// One to_string() per line, each ending in '\n' (what `check-config` prints).
std::string to_string(const config_errors& errors);

// Found by ADL from config_result<T>::value(): throws std::invalid_argument
// whose what() is to_string(errors).
[[noreturn]] void throw_exception_from_error(const config_errors& errors, const boost::source_location& loc);

template <class T>
using config_result = boost::system::result<T, config_errors>;

// host:port. host is a name, an IPv4 address or an IPv6 address (written in
// brackets in the file, stored without them). Port 0 means "any free port".
struct endpoint {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const; // "host:port", "[::1]:9310"
  bool is_loopback() const;      // localhost, 127.0.0.0/8, ::1
  friend bool operator==(const endpoint&, const endpoint&) = default;
};

// A TLS identity and trust anchor. Empty paths are "not configured".
struct tls_files {
  std::filesystem::path cert; // PEM certificate chain presented to the other side
  std::filesystem::path key;  // PEM private key of cert
  std::filesystem::path ca;   // PEM CA bundle the other side's certificate must chain to
  std::filesystem::path crl;  // PEM CRL checked against the other side's chain; empty: no revocation check
  friend bool operator==(const tls_files&, const tls_files&) = default;
};

// One entry of an `allow` list: a glob ('*' matches any run of characters)
// over one identity field of the client certificate.
struct allow_rule {
  enum class field { uri, dns, cn }; // SAN URI, SAN DNS name, subject common name
  field what = field::uri;
  std::string pattern;
  std::string to_string() const; // as written: "URI:spiffe://fleet/edge/*"
  friend bool operator==(const allow_rule&, const allow_rule&) = default;
};

// A TLS server: files plus the client identities it admits. With files.ca
// set, every client must present a certificate chained to it (mTLS); an empty
// allow list then admits any such certificate.
struct server_tls {
  tls_files files;
  std::vector<allow_rule> allow;
  friend bool operator==(const server_tls&, const server_tls&) = default;
};

// A UTC time of day, in minutes since 00:00Z (0 .. 1439).
using minute_of_day = std::chrono::minutes;

// "HH:MM-HH:MMZ": sending is allowed from start (inclusive) to end
// (exclusive); end < start crosses midnight ("22:00-06:00Z").
struct send_window {
  minute_of_day start{0};
  minute_of_day end{0};
  bool contains(minute_of_day t) const noexcept;
  std::string to_string() const; // "22:00-06:00Z"
  friend bool operator==(const send_window&, const send_window&) = default;
};

// [node]
struct node_section {
  std::string id;                 // required; 1..64 bytes, no ':', no whitespace or control characters
  std::filesystem::path data_dir; // required; the LMDB environment
  queue::sync_mode sync = queue::sync_mode::full;
  // GET /readyz answers 503 from this long before one of the node's own
  // certificates (listener or peer client certificate) expires; 0: never.
  std::chrono::milliseconds unready_before_cert_expiry{std::chrono::hours{24}};
  std::filesystem::path audit_log; // the audit log (JSON lines); default: <data_dir>/audit.log
  // Rotated before an event would take it past this many bytes (0: never),
  // keeping this many older files (audit.log.1 ..).
  std::uint64_t audit_log_max_bytes = 64ull << 20;
  unsigned audit_log_keep = 4;
  friend bool operator==(const node_section&, const node_section&) = default;
};

// [queue]. The defaults are those of queue::store_options.
struct queue_section {
  std::uint64_t max_bytes = 10ull << 30;
  std::uint64_t max_segment_bytes = 4ull << 20;
  queue::overflow_policy overflow = queue::overflow_policy::reject;
  std::chrono::milliseconds block_timeout{std::chrono::seconds{5}};
  std::uint32_t max_retry = 10;
  queue::backoff_policy retry_backoff;
  std::chrono::milliseconds deadletter_retention{std::chrono::hours{24 * 7}};
  std::uint64_t deadletter_max_bytes = 1ull << 30;
  std::chrono::milliseconds dedupe_window{std::chrono::hours{1}};
  friend bool operator==(const queue_section& a, const queue_section& b) noexcept;
};

// [ingest]: the producers' HTTP listener. Plain HTTP unless tls is set.
struct ingest_section {
  endpoint listen;
  std::optional<server_tls> tls; // files.cert and files.key set; files.ca optional (then clients need a cert)
  friend bool operator==(const ingest_section&, const ingest_section&) = default;
};

// [listen]: the relay listener; always mTLS (files.cert, files.key, files.ca set).
struct listen_section {
  endpoint address;
  server_tls tls;
  friend bool operator==(const listen_section&, const listen_section&) = default;
};

// [admin]: the admin API. Off loopback it has tls with files.ca (mTLS).
struct admin_section {
  endpoint listen{"127.0.0.1", 9310};
  std::optional<server_tls> tls;
  friend bool operator==(const admin_section&, const admin_section&) = default;
};

// [[peer]] bandwidth = {...}. Nothing set: unlimited, any time.
struct bandwidth_section {
  enum class mode { unlimited, rate, quota, both };
  std::optional<std::uint64_t> rate;        // bytes per second (token bucket refill)
  std::uint64_t burst = 0;                  // bucket size in bytes; with rate set, default 1 s of rate
  std::optional<std::uint64_t> daily_quota; // bytes per day, counted on the wire
  minute_of_day quota_reset{0};             // when the daily quota refills; default 00:00Z
  std::vector<send_window> send_windows;    // empty: sending allowed at any time
  mode get_mode() const noexcept;
  friend bool operator==(const bandwidth_section&, const bandwidth_section&) = default;
};

enum class peer_kind {
  relay, // wss://  another edgerelay, relay protocol over mTLS
  http,  // https:// any HTTP endpoint, batches POSTed over mTLS
  file   // file:///dir  a local durable spool (terminal node)
};
enum class compression_codec { none, zstd };

// One [[peer]].
struct peer_section {
  std::string name; // [a-z0-9._-]{1,64}, unique
  std::string url;  // as written
  peer_kind kind = peer_kind::relay;
  // relay and http peers: from the URL. target is path and query; without a
  // path it is "/v1/relay" for wss:// and "/" for https://.
  std::string host;
  std::uint16_t port = 443;
  std::string target;
  std::string server_name; // name the server's certificate must match; default: host
  tls_files tls;           // relay and http peers: cert, key and ca set
  // file peers: the spool directory (absolute).
  std::filesystem::path spool_dir;

  std::vector<std::string> streams{"*"}; // globs over stream names; '*' matches any run
  std::uint32_t window = 8;              // unacknowledged batches in flight
  std::uint64_t batch_max_bytes = 1ull << 20;
  std::chrono::milliseconds dial_timeout{std::chrono::seconds{10}};
  std::chrono::milliseconds ack_timeout{std::chrono::seconds{30}};
  compression_codec compression = compression_codec::none;
  bandwidth_section bandwidth;

  // Whether any of streams matches the stream name.
  bool routes(std::string_view stream) const noexcept;
  friend bool operator==(const peer_section&, const peer_section&) = default;
};

// [evidence]: the canary soak and where evidence reports go.
struct evidence_section {
  std::chrono::milliseconds canary_interval{std::chrono::minutes{1}}; // 0: canary soak off
  std::uint32_t canary_segments = 10;                                 // per round
  std::uint64_t canary_size = 1024;                                   // payload bytes per canary segment
  std::filesystem::path report_dir;                                   // default: <data_dir>/evidence
  friend bool operator==(const evidence_section&, const evidence_section&) = default;
};

struct node_config {
  std::string source; // the file name the config was read from (as given)
  node_section node;
  queue_section queue;
  std::optional<ingest_section> ingest;
  std::optional<listen_section> listen;
  admin_section admin;
  std::vector<peer_section> peers;
  evidence_section evidence;

  // The store's options: data_dir, node id, sync and every [queue] key; the
  // rest (eviction_journal_max, max_map_bytes, clock) keep their defaults.
  edgerelay::queue::store_options store_options() const;
  const peer_section* find_peer(std::string_view name) const noexcept;
  friend bool operator==(const node_config&, const node_config&) = default;
};

struct parse_options {
  // false: cert/key/ca/crl paths are resolved but not opened, for checking a
  // config written for another machine (and for the shipped examples).
  bool check_files = true;
};

// Reads and validates the file. Errors name the file as `file.string()`.
config_result<node_config> load_config(const std::filesystem::path& file, const parse_options& options = {});

// Validates TOML text. file_name_for_messages goes into every error and into
// node_config::source; relative paths resolve against base_dir.
config_result<node_config> parse_config(std::string_view toml_text, const std::string& file_name_for_messages,
                                        const std::filesystem::path& base_dir, const parse_options& options = {});

// Glob over stream names: '*' matches any run of characters (also none),
// everything else matches itself.
bool stream_glob_match(std::string_view pattern, std::string_view stream) noexcept;

const char* to_string(peer_kind k) noexcept;               // "relay", "http", "file"
const char* to_string(compression_codec c) noexcept;       // "none", "zstd"
const char* to_string(bandwidth_section::mode m) noexcept; // "unlimited", "rate", "quota", "both"

} // namespace edgerelay::relay
