#include "relay/config.hpp"

#include "tests/support/temp_dir.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <unistd.h>
#include <vector>

namespace relay = edgerelay::relay;
namespace queue = edgerelay::queue;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using namespace std::chrono_literals;

namespace {

constexpr std::uint64_t KiB = 1024, MiB = KiB * 1024, GiB = MiB * 1024;

// A directory holding the config's TLS files (their content is not read by
// the config parser, only their presence and readability).
struct pki_dir {
  edgerelay::test::temp_dir dir{"config"};
  pki_dir() {
    fs::create_directories(dir.path() / "pki");
    for (const char* f : {"edge.crt", "edge.key", "ca.crt", "ca.crl", "hub.crt", "hub.key"})
      std::ofstream(dir.path() / "pki" / f) << "-----BEGIN TEST-----\n";
  }
  const fs::path& path() const { return dir.path(); }
};

// An edge forwarding to a hub over wss; TLS paths are relative to the config dir.
const std::string edge_base = R"(
[node]
id = "edge-1"
data_dir = "data"

[ingest]
listen = "127.0.0.1:9300"

[[peer]]
name = "hub"
url = "wss://hub.example:9400"
cert = "pki/edge.crt"
key = "pki/edge.key"
ca = "pki/ca.crt"
)";

struct outcome {
  relay::config_result<relay::node_config> result;
  std::vector<std::string> lines; // to_string() of each error
};

outcome parse_in(const fs::path& dir, const std::string& text, relay::parse_options opt = {}) {
  outcome o{relay::parse_config(text, "edge.toml", dir, opt), {}};
  if (o.result.has_error())
    for (const auto& e : o.result.error())
      o.lines.push_back(e.to_string());
  return o;
}

std::string joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines)
    s += l + "\n";
  return s;
}

relay::node_config value_of(const outcome& o) {
  INFO(joined(o.lines));
  REQUIRE(o.result.has_value());
  return *o.result;
}

// The errors of a config that must fail.
std::vector<std::string> errors_of(const outcome& o) {
  REQUIRE(o.result.has_error());
  return o.lines;
}

// Whether some error line starts with "edge.toml: <key>: " and contains text.
bool has_error(const std::vector<std::string>& lines, const std::string& key, const std::string& text) {
  const std::string prefix = "edge.toml: " + key + ": ";
  return std::any_of(lines.begin(), lines.end(), [&](const std::string& l) {
    return l.rfind(prefix, 0) == 0 && l.find(text) != std::string::npos;
  });
}

#define CHECK_ERROR(lines, key, text)                                                                                  \
  do {                                                                                                                 \
    INFO(joined(lines));                                                                                               \
    CHECK(has_error(lines, key, text));                                                                                \
  } while (false)

fs::path examples_dir() { return fs::path(__FILE__).parent_path().parent_path().parent_path() / "deploy" / "examples"; }

} // namespace

// ---------------------------------------------------------------- defaults

TEST_CASE("a minimal edge config loads with the documented defaults", "[config]") {
  pki_dir pki;
  const auto cfg = value_of(parse_in(pki.path(), edge_base));
  const auto base = fs::absolute(pki.path()).lexically_normal();

  CHECK(cfg.source == "edge.toml");
  CHECK(cfg.node.id == "edge-1");
  CHECK(cfg.node.data_dir == base / "data");
  CHECK(cfg.node.sync == queue::sync_mode::full);
  CHECK(cfg.node.audit_log == base / "data" / "audit.log");

  CHECK(cfg.queue.max_bytes == 10 * GiB);
  CHECK(cfg.queue.max_segment_bytes == 4 * MiB);
  CHECK(cfg.queue.overflow == queue::overflow_policy::reject);
  CHECK(cfg.queue.block_timeout == 5s);
  CHECK(cfg.queue.max_retry == 10);
  CHECK(cfg.queue.retry_backoff.initial == 1s);
  CHECK(cfg.queue.retry_backoff.max == 5min);
  CHECK(cfg.queue.retry_backoff.multiplier == 2.0);
  CHECK(cfg.queue.retry_backoff.jitter == 0.2);
  CHECK(cfg.queue.deadletter_retention == 168h);
  CHECK(cfg.queue.deadletter_max_bytes == 1 * GiB);
  CHECK(cfg.queue.dedupe_window == 1h);

  REQUIRE(cfg.ingest);
  CHECK(cfg.ingest->listen == relay::endpoint{"127.0.0.1", 9300});
  CHECK_FALSE(cfg.ingest->tls);
  CHECK_FALSE(cfg.listen);
  CHECK(cfg.admin.listen == relay::endpoint{"127.0.0.1", 9310});
  CHECK_FALSE(cfg.admin.tls);

  REQUIRE(cfg.peers.size() == 1);
  const auto& p = cfg.peers[0];
  CHECK(p.name == "hub");
  CHECK(p.kind == relay::peer_kind::relay);
  CHECK(p.host == "hub.example");
  CHECK(p.port == 9400);
  CHECK(p.target == "/v1/relay");
  CHECK(p.server_name == "hub.example");
  CHECK(p.tls.cert == base / "pki" / "edge.crt");
  CHECK(p.tls.key == base / "pki" / "edge.key");
  CHECK(p.tls.ca == base / "pki" / "ca.crt");
  CHECK(p.tls.crl.empty());
  CHECK(p.streams == std::vector<std::string>{"*"});
  CHECK(p.window == 8);
  CHECK(p.batch_max_bytes == 1 * MiB);
  CHECK(p.dial_timeout == 10s);
  CHECK(p.ack_timeout == 30s);
  CHECK(p.compression == relay::compression_codec::none);
  CHECK(p.bandwidth.get_mode() == relay::bandwidth_section::mode::unlimited);
  CHECK(p.bandwidth.send_windows.empty());

  CHECK(cfg.evidence.canary_interval == 1min);
  CHECK(cfg.evidence.canary_segments == 10);
  CHECK(cfg.evidence.canary_size == 1 * KiB);
  CHECK(cfg.evidence.report_dir == base / "data" / "evidence");
}

TEST_CASE("queue defaults are those of queue::store_options", "[config]") {
  const relay::queue_section q;
  const queue::store_options s;
  CHECK(q.max_bytes == s.max_bytes);
  CHECK(q.max_segment_bytes == s.max_segment_bytes);
  CHECK(q.overflow == s.overflow);
  CHECK(q.block_timeout == s.block_timeout);
  CHECK(q.max_retry == s.max_retry);
  CHECK(q.retry_backoff.initial == s.retry_backoff.initial);
  CHECK(q.retry_backoff.max == s.retry_backoff.max);
  CHECK(q.retry_backoff.multiplier == s.retry_backoff.multiplier);
  CHECK(q.retry_backoff.jitter == s.retry_backoff.jitter);
  CHECK(q.deadletter_retention == s.deadletter_retention);
  CHECK(q.deadletter_max_bytes == s.deadletter_max_bytes);
  CHECK(q.dedupe_window == s.dedupe_window);
  CHECK(relay::node_section{}.sync == s.sync);
}

TEST_CASE("store_options carries the node and every queue setting", "[config]") {
  pki_dir pki;
  const auto cfg = value_of(parse_in(pki.path(), edge_base + R"(
[queue]
max_bytes = "2GiB"
max_segment_bytes = "512KiB"
overflow = "block"
block_timeout = "750ms"
max_retry = 3
retry_backoff = { initial = "250ms", max = "1m", multiplier = 1.5, jitter = 0.1 }
deadletter_retention = "2d"
deadletter_max_bytes = "100MB"
dedupe_window = "6h"
)"));
  const auto o = cfg.store_options();
  CHECK(o.data_dir == fs::absolute(pki.path()).lexically_normal() / "data");
  CHECK(o.node_id == "edge-1");
  CHECK(o.sync == queue::sync_mode::full);
  CHECK(o.max_bytes == 2 * GiB);
  CHECK(o.max_segment_bytes == 512 * KiB);
  CHECK(o.overflow == queue::overflow_policy::block);
  CHECK(o.block_timeout == 750ms);
  CHECK(o.max_retry == 3);
  CHECK(o.retry_backoff.initial == 250ms);
  CHECK(o.retry_backoff.max == 1min);
  CHECK(o.retry_backoff.multiplier == 1.5);
  CHECK(o.retry_backoff.jitter == 0.1);
  CHECK(o.deadletter_retention == 48h);
  CHECK(o.deadletter_max_bytes == 100'000'000);
  CHECK(o.dedupe_window == 6h);
  // What the config does not set keeps the store's defaults.
  CHECK(o.eviction_journal_max == queue::store_options{}.eviction_journal_max);
  CHECK(o.max_map_bytes == 0);
  CHECK(o.clock == nullptr);
}

TEST_CASE("every key of a full config is read into typed fields", "[config]") {
  pki_dir pki;
  const auto cfg = value_of(parse_in(pki.path(), R"(
[node]
id = "hub-1"
data_dir = "/var/lib/edgerelay/queue"
sync = "none"
audit_log = "/var/log/edgerelay/audit.log"

[ingest]
listen = "0.0.0.0:9300"
tls = { cert = "pki/hub.crt", key = "pki/hub.key", ca = "pki/ca.crt", crl = "pki/ca.crl", allow = ["CN:producer-*"] }

[listen]
address = "[::]:9400"
cert = "pki/hub.crt"
key = "pki/hub.key"
ca = "pki/ca.crt"
crl = "pki/ca.crl"
allow = ["URI:spiffe://fleet/edge/*", "DNS:edge-*.example", "CN:edge-7"]

[admin]
listen = "10.0.0.5:9310"
[admin.tls]
cert = "pki/hub.crt"
key = "pki/hub.key"
ca = "pki/ca.crt"

[[peer]]
name = "archive"
url = "https://archive.example/ingest?tenant=a"
streams = ["telemetry.*", "logs"]
server_name = "archive.internal"
cert = "pki/hub.crt"
key = "pki/hub.key"
ca = "pki/ca.crt"
crl = "pki/ca.crl"
window = 32
batch_max_bytes = 4194304
dial_timeout = "3s"
ack_timeout = "1m30s"
compression = "zstd"
bandwidth = { rate = "10Mbit", burst = "2MiB", daily_quota = "20GiB", quota_reset = "03:30Z", send_windows = ["22:00-06:00Z", "12:00-13:00Z"] }

[[peer]]
name = "spool"
url = "file:///var/lib/edgerelay/spool"

[evidence]
canary_interval = "30s"
canary_segments = 5
canary_size = "256B"
report_dir = "reports"
)"));
  const auto base = fs::absolute(pki.path()).lexically_normal();
  CHECK(cfg.node.sync == queue::sync_mode::none);
  CHECK(cfg.node.data_dir == "/var/lib/edgerelay/queue");
  CHECK(cfg.node.audit_log == "/var/log/edgerelay/audit.log");

  REQUIRE(cfg.ingest);
  REQUIRE(cfg.ingest->tls);
  CHECK(cfg.ingest->tls->files.crl == base / "pki" / "ca.crl");
  REQUIRE(cfg.ingest->tls->allow.size() == 1);
  CHECK(cfg.ingest->tls->allow[0].what == relay::allow_rule::field::cn);
  CHECK(cfg.ingest->tls->allow[0].pattern == "producer-*");

  REQUIRE(cfg.listen);
  CHECK(cfg.listen->address == relay::endpoint{"::", 9400});
  CHECK(cfg.listen->address.to_string() == "[::]:9400");
  CHECK(cfg.listen->tls.files.ca == base / "pki" / "ca.crt");
  REQUIRE(cfg.listen->tls.allow.size() == 3);
  CHECK(cfg.listen->tls.allow[0].what == relay::allow_rule::field::uri);
  CHECK(cfg.listen->tls.allow[0].pattern == "spiffe://fleet/edge/*");
  CHECK(cfg.listen->tls.allow[1].to_string() == "DNS:edge-*.example");
  CHECK(cfg.listen->tls.allow[2].what == relay::allow_rule::field::cn);

  CHECK(cfg.admin.listen == relay::endpoint{"10.0.0.5", 9310});
  REQUIRE(cfg.admin.tls);
  CHECK(cfg.admin.tls->files.cert == base / "pki" / "hub.crt");

  REQUIRE(cfg.peers.size() == 2);
  const auto& a = cfg.peers[0];
  CHECK(a.kind == relay::peer_kind::http);
  CHECK(a.url == "https://archive.example/ingest?tenant=a");
  CHECK(a.host == "archive.example");
  CHECK(a.port == 443);
  CHECK(a.target == "/ingest?tenant=a");
  CHECK(a.server_name == "archive.internal");
  CHECK(a.streams == std::vector<std::string>{"telemetry.*", "logs"});
  CHECK(a.routes("telemetry.gps"));
  CHECK(a.routes("logs"));
  CHECK_FALSE(a.routes("logs.debug"));
  CHECK(a.window == 32);
  CHECK(a.batch_max_bytes == 4 * MiB);
  CHECK(a.dial_timeout == 3s);
  CHECK(a.ack_timeout == 90s);
  CHECK(a.compression == relay::compression_codec::zstd);
  CHECK(a.bandwidth.get_mode() == relay::bandwidth_section::mode::both);
  CHECK(a.bandwidth.rate == 1'250'000u);
  CHECK(a.bandwidth.burst == 2 * MiB);
  CHECK(a.bandwidth.daily_quota == 20 * GiB);
  CHECK(a.bandwidth.quota_reset == 210min);
  REQUIRE(a.bandwidth.send_windows.size() == 2);
  CHECK(a.bandwidth.send_windows[0] == relay::send_window{22h, 6h});
  CHECK(a.bandwidth.send_windows[1].to_string() == "12:00-13:00Z");

  const auto* s = cfg.find_peer("spool");
  REQUIRE(s);
  CHECK(s->kind == relay::peer_kind::file);
  CHECK(s->spool_dir == "/var/lib/edgerelay/spool");
  CHECK(s->host.empty());
  CHECK(cfg.find_peer("nope") == nullptr);

  CHECK(cfg.evidence.canary_interval == 30s);
  CHECK(cfg.evidence.canary_segments == 5);
  CHECK(cfg.evidence.canary_size == 256);
  CHECK(cfg.evidence.report_dir == base / "reports");
}

// ---------------------------------------------------------------- error shape

TEST_CASE("an error reads FILE: key.path: problem", "[config]") {
  pki_dir pki;
  const auto o = parse_in(pki.path(), edge_base + "[queue]\nmax_byte = \"1GiB\"\n");
  REQUIRE(o.result.has_error());
  const auto errors = o.result.error(); // result::error() returns a copy
  REQUIRE(errors.size() == 1);
  const auto& e = errors[0];
  CHECK(e.file == "edge.toml");
  CHECK(e.key == "queue.max_byte");
  CHECK(e.problem == "unknown key (did you mean \"max_bytes\"?)");
  CHECK(e.line == 16);
  CHECK(e.to_string() == "edge.toml: queue.max_byte: unknown key (did you mean \"max_bytes\"?)");
  CHECK(relay::to_string(errors) == e.to_string() + "\n");
}

TEST_CASE("a TOML syntax error is reported with its line and column", "[config]") {
  pki_dir pki;
  SECTION("missing value") {
    const auto lines = errors_of(parse_in(pki.path(), "[node]\nid = \"x\"\ndata_dir =\n"));
    REQUIRE(lines.size() == 1);
    CHECK(lines[0] == "edge.toml: line 3, column 11: TOML syntax error: missing value after key-value separator '=' "
                      "(expected value, but got nothing)");
  }
  SECTION("a size without quotes") {
    const auto lines = errors_of(parse_in(pki.path(), edge_base + "[queue]\nmax_bytes = 10GiB\n"));
    REQUIRE(lines.size() == 1);
    CHECK_THAT(lines[0], Contains("edge.toml: line 16, column 15: TOML syntax error"));
  }
  SECTION("a key defined twice") {
    const auto lines = errors_of(parse_in(pki.path(), "[node]\nid = \"a\"\nid = \"b\"\n"));
    REQUIRE(lines.size() == 1);
    CHECK_THAT(lines[0], Contains("edge.toml: line 3, column 6: TOML syntax error"));
    CHECK_THAT(lines[0], Contains("already exists"));
  }
}

TEST_CASE("all errors of a file are collected in one pass", "[config]") {
  pki_dir pki;
  const auto o = parse_in(pki.path(), R"(
colour = "blue"

[node]
id = "edge:1"
data_dir = "data"
sync = "sometimes"

[queue]
max_bytes = "10GB!"
retry_backoff = { initial = "1s", jitter = 1.5 }

[ingest]
listen = "localhost"

[[peer]]
name = "Hub"
url = "ftp://hub.example"

[[peer]]
name = "spool"
url = "file:///srv/spool"
window = 0
bandwidth = { rate = "10Mbt", send_windows = ["25:00-06:00Z"] }

[evidence]
canary_segments = 0
)");
  const auto lines = errors_of(o);
  INFO(joined(lines));
  CHECK(lines.size() == 12);
  CHECK_ERROR(lines, "colour", "unknown key");
  CHECK_ERROR(lines, "node.id", "must not contain ':'");
  CHECK_ERROR(lines, "node.sync", "\"sometimes\" is not one of \"full\" or \"none\"");
  CHECK_ERROR(lines, "queue.max_bytes", "is not a size");
  CHECK_ERROR(lines, "queue.retry_backoff.jitter", "must be between 0 and 1, got 1.5");
  CHECK_ERROR(lines, "ingest.listen", "has no port");
  CHECK_ERROR(lines, "peer[0].name", "is not a valid peer name");
  CHECK_ERROR(lines, "peer[0].url", "unknown scheme \"ftp\"");
  CHECK_ERROR(lines, "peer[1].window", "must be between 1 and 1024, got 0");
  CHECK_ERROR(lines, "peer[1].bandwidth.rate", "is not a rate");
  CHECK_ERROR(lines, "peer[1].bandwidth.send_windows[0]", "is not a send window");
  CHECK_ERROR(lines, "evidence.canary_segments", "must be between 1 and 100000, got 0");
  // Errors come section by section, in the order of the documentation.
  REQUIRE(o.result.error().size() >= 2);
  CHECK(o.result.error()[0].key == "colour");
  CHECK(o.result.error()[1].key == "node.id");
}

TEST_CASE("errors are listed in file order, whole-node problems last", "[config]") {
  pki_dir pki;
  const auto o = parse_in(pki.path(), R"(
[evidence]
canary_size = "big"

[node]
id = "e"
data_dir = "d"
sync = "fast"

[[peer]]
name = "s"
url = "file:///srv/s"
streams = [1, "Bad", "ok"]
)");
  REQUIRE(o.result.has_error());
  const auto errors = o.result.error();
  std::vector<std::string> keys;
  for (const auto& e : errors)
    keys.push_back(e.key);
  CHECK(keys == std::vector<std::string>{"evidence.canary_size", "node.sync", "peer[0].streams[0]",
                                         "peer[0].streams[1]", "ingest"});
  CHECK(errors[0].line == 3);
  CHECK(errors[1].line == 8);
  CHECK(errors[2].line == 13);
  CHECK(errors[4].line == 0);
}

TEST_CASE("value() on a failed result throws with every error", "[config]") {
  pki_dir pki;
  const auto r = relay::parse_config("[node]\nid = 1\n", "bad.toml", pki.path());
  REQUIRE(r.has_error());
  try {
    (void)r.value();
    FAIL("value() did not throw");
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    CHECK_THAT(what, Contains("bad.toml: node.id: expected a string, got integer 1\n"));
    CHECK_THAT(what, Contains("bad.toml: node.data_dir: missing required key\n"));
  }
}

// ---------------------------------------------------------------- unknown keys and types

TEST_CASE("unknown keys are errors at every level, with the closest known key suggested", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), R"(
[node]
id = "edge-1"
data_dri = "data"
data_dir = "data"

[queue]
overflw = "reject"
retry_backoff = { initial = "1s", multipler = 2.0 }

[ingest]
listen = "127.0.0.1:9300"
tls = { cert = "pki/edge.crt", key = "pki/edge.key", cetr = "x" }

[listen]
adress = "0.0.0.0:9400"
address = "0.0.0.0:9400"
cert = "pki/hub.crt"
key = "pki/hub.key"
ca = "pki/ca.crt"

[admin]
lisen = "127.0.0.1:9310"

[[peer]]
name = "hub"
url = "file:///srv/spool"
dial_timout = "5s"
bandwith = { rate = "1Mbit" }
bandwidth = { rate = "1Mbit", qouta_reset = "00:00Z" }

[evidence]
canary_intervall = "1m"

[peers]
x = 1
)"));
  CHECK(lines.size() == 11);
  CHECK_ERROR(lines, "node.data_dri", "unknown key (did you mean \"data_dir\"?)");
  CHECK_ERROR(lines, "queue.overflw", "did you mean \"overflow\"?");
  CHECK_ERROR(lines, "queue.retry_backoff.multipler", "did you mean \"multiplier\"?");
  CHECK_ERROR(lines, "ingest.tls.cetr", "did you mean \"cert\"?");
  CHECK_ERROR(lines, "listen.adress", "did you mean \"address\"?");
  CHECK_ERROR(lines, "admin.lisen", "did you mean \"listen\"?");
  CHECK_ERROR(lines, "peer[0].dial_timout", "did you mean \"dial_timeout\"?");
  CHECK_ERROR(lines, "peer[0].bandwith", "did you mean \"bandwidth\"?");
  CHECK_ERROR(lines, "peer[0].bandwidth.qouta_reset", "did you mean \"quota_reset\"?");
  CHECK_ERROR(lines, "evidence.canary_intervall", "did you mean \"canary_interval\"?");
  CHECK_ERROR(lines, "peers", "did you mean \"peer\"?");
}

TEST_CASE("a known key in the wrong section says where it belongs", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + R"(rate = "1Mbit"
[evidence]
max_bytes = "1GiB"
whatever = 1
)"));
  CHECK_ERROR(lines, "peer[0].rate", "unknown key here (\"rate\" belongs in [[peer]] bandwidth)");
  CHECK_ERROR(lines, "evidence.max_bytes", "(\"max_bytes\" belongs in [queue])");
  CHECK_ERROR(lines, "evidence.whatever",
              "unknown key (known keys here: canary_interval, canary_segments, canary_size, report_dir)");
}

TEST_CASE("a key that needs quoting is shown quoted in the key path", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + "[queue]\n\"max bytes\" = 1\n"));
  CHECK_ERROR(lines, "queue.\"max bytes\"", "unknown key");
}

TEST_CASE("wrong types are reported with what was found", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), R"(
node = "edge-1"
queue = 5

[ingest]
listen = 9300
tls = "yes"

[[peer]]
name = 7
url = "wss://hub:9400"
cert = "pki/edge.crt"
key = "pki/edge.key"
ca = "pki/ca.crt"
window = "8"
dial_timeout = 10
streams = "*"
bandwidth = ["1Mbit"]

[evidence]
canary_size = true
)"));
  CHECK_ERROR(lines, "node", "expected a table, got string \"edge-1\"");
  CHECK_ERROR(lines, "queue", "expected a table, got integer 5");
  CHECK_ERROR(lines, "ingest.listen", "expected a string, got integer 9300");
  CHECK_ERROR(lines, "ingest.tls", "expected a table, got string \"yes\"");
  CHECK_ERROR(lines, "peer[0].name", "expected a string, got integer 7");
  CHECK_ERROR(lines, "peer[0].window", "expected an integer from 1 to 1024, got string \"8\"");
  CHECK_ERROR(lines, "peer[0].dial_timeout", "expected a duration such as \"30s\", got integer 10");
  CHECK_ERROR(lines, "peer[0].streams", "expected an array of strings, got string \"*\"");
  CHECK_ERROR(lines, "peer[0].bandwidth", "expected a table, got array");
  CHECK_ERROR(lines, "evidence.canary_size",
              "expected a size such as \"64MiB\" or an integer number of bytes, got boolean true");
}

TEST_CASE("[peer] written as a single table is an error asking for [[peer]]", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), R"(
[node]
id = "e"
data_dir = "d"
[ingest]
listen = "127.0.0.1:1"
[peer]
name = "hub"
url = "file:///x"
)"));
  CHECK_ERROR(lines, "peer", "expected an array of tables (write each peer as [[peer]]), got table");
}

TEST_CASE("non-string array elements are reported at their index", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + "streams = [\"a\", 2]\n"));
  CHECK_ERROR(lines, "peer[0].streams[1]", "expected a string, got integer 2");
}

// ---------------------------------------------------------------- values

TEST_CASE("bad sizes, durations and rates carry the parser's message", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + R"(batch_max_bytes = "1MB/s"
ack_timeout = "30"
bandwidth = { rate = "2MB", daily_quota = "-1GiB" }
[queue]
max_bytes = "10GiBx"
dedupe_window = "1h30"
deadletter_max_bytes = -5
)"));
  CHECK_ERROR(lines, "queue.max_bytes", "\"10GiBx\" is not a size: unknown unit \"GiBx\"");
  CHECK_ERROR(lines, "queue.dedupe_window", "\"1h30\" is not a duration");
  CHECK_ERROR(lines, "queue.deadletter_max_bytes", "a size cannot be negative, got -5");
  CHECK_ERROR(lines, "peer[0].batch_max_bytes", "\"1MB/s\" is not a size");
  CHECK_ERROR(lines, "peer[0].ack_timeout", "\"30\" is not a duration");
  CHECK_ERROR(lines, "peer[0].bandwidth.rate", "\"2MB\" is not a rate");
  CHECK_ERROR(lines, "peer[0].bandwidth.daily_quota", "\"-1GiB\" is not a size");
}

TEST_CASE("sizes accept an integer number of bytes", "[config]") {
  pki_dir pki;
  const auto cfg =
      value_of(parse_in(pki.path(), edge_base + "[queue]\nmax_bytes = 1048576\nmax_segment_bytes = 4096\n"));
  CHECK(cfg.queue.max_bytes == 1 * MiB);
  CHECK(cfg.queue.max_segment_bytes == 4096);
}

TEST_CASE("enum values must be one of the documented ones", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + R"(compression = "gzip"
[queue]
overflow = "drop"
)"));
  CHECK_ERROR(lines, "queue.overflow", "\"drop\" is not one of \"evict_lru\" or \"reject\" or \"block\"");
  CHECK_ERROR(lines, "peer[0].compression", "\"gzip\" is not one of \"none\" or \"zstd\"");
  const auto ok = value_of(parse_in(pki.path(), edge_base + "[queue]\noverflow = \"evict_lru\"\n"));
  CHECK(ok.queue.overflow == queue::overflow_policy::evict_lru);
}

TEST_CASE("a value of the wrong type says what is accepted, and one bad key does not set off wrong errors about others",
          "[config]") {
  pki_dir pki;
  auto lines = errors_of(parse_in(
      pki.path(), "[node]\nid = \"e\"\ndata_dir = \"/tmp/e\"\nsync = true\n[queue]\nmax_retry = \"10\"\n"
                  "max_bytes = 0\nmax_segment_bytes = \"20GiB\"\n[[peer]]\nname = \"p\"\nurl = \"file:///tmp/p\"\n"));
  CHECK_ERROR(lines, "node.sync", "expected \"full\" or \"none\", got boolean true");
  CHECK_ERROR(lines, "queue.max_retry", "expected an integer from 1 to 65535, got string \"10\"");
  CHECK_ERROR(lines, "queue.max_bytes", "must be at least 1 B, got 0 B");
  // max_segment_bytes is not compared with the default max_bytes the file did not mean.
  for (auto& l : lines)
    CHECK(l.find("queue.max_segment_bytes") == std::string::npos);
  // [listen] requires ca: its absence is the one error, not also "allow has no effect without ca".
  lines = errors_of(
      parse_in(pki.path(),
               "[node]\nid = \"e\"\ndata_dir = \"/tmp/e\"\n[listen]\naddress = "
               "\"127.0.0.1:0\"\ncert = \"pki/hub.crt\"\nkey = \"pki/hub.key\"" +
                   std::string("\nallow = [\"URI:spiffe://x/*\"]\n[[peer]]\nname = \"p\"\nurl = \"file:///tmp/p\"\n")));
  CHECK_ERROR(lines, "listen.ca", "missing required key");
  for (auto& l : lines)
    CHECK(l.find("listen.allow") == std::string::npos);
}

TEST_CASE("numeric ranges are enforced", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + R"(window = 1025
[queue]
max_bytes = "1MiB"
max_segment_bytes = "2MiB"
max_retry = 0
retry_backoff = { initial = "10s", max = "5s", multiplier = 0.5, jitter = -0.1 }
deadletter_retention = "0s"
[evidence]
canary_segments = 0
canary_size = "0B"
)"));
  CHECK_ERROR(lines, "peer[0].window", "must be between 1 and 1024, got 1025");
  CHECK_ERROR(lines, "queue.max_segment_bytes", "2 MiB must not exceed queue.max_bytes (1 MiB)");
  CHECK_ERROR(lines, "queue.max_retry", "must be between 1 and 65535, got 0");
  CHECK_ERROR(lines, "queue.retry_backoff.max", "(5s) must not be shorter than initial (10s)");
  CHECK_ERROR(lines, "queue.retry_backoff.multiplier", "must be between 1 and 1000, got 0.5");
  CHECK_ERROR(lines, "queue.retry_backoff.jitter", "must be between 0 and 1, got -0.1");
  CHECK_ERROR(lines, "queue.deadletter_retention", "must be longer than 0s");
  CHECK_ERROR(lines, "evidence.canary_segments", "must be between 1 and 100000, got 0");
  CHECK_ERROR(lines, "evidence.canary_size", "must be at least 1 B, got 0 B");
}

TEST_CASE("the canary may not be larger than a segment and canary_interval 0s turns the soak off", "[config]") {
  pki_dir pki;
  const auto lines =
      errors_of(parse_in(pki.path(), edge_base + "[queue]\nmax_segment_bytes = \"1KiB\"\n[evidence]\ncanary_size = "
                                                 "\"2KiB\"\n"));
  CHECK_ERROR(lines, "evidence.canary_size", "must not exceed queue.max_segment_bytes");
  const auto cfg = value_of(parse_in(pki.path(), edge_base + "[evidence]\ncanary_interval = \"0s\"\n"));
  CHECK(cfg.evidence.canary_interval == 0ms);
}

TEST_CASE("settings that would have no effect are refused", "[config]") {
  pki_dir pki;
  const auto lines =
      errors_of(parse_in(pki.path(), edge_base + R"(bandwidth = { burst = "1MiB", quota_reset = "01:00Z" }
[queue]
block_timeout = "2s"
)"));
  CHECK_ERROR(lines, "queue.block_timeout", "has no effect unless queue.overflow = \"block\"");
  CHECK_ERROR(lines, "peer[0].bandwidth.burst", "has no effect without rate");
  CHECK_ERROR(lines, "peer[0].bandwidth.quota_reset", "has no effect without daily_quota");
}

// ---------------------------------------------------------------- node

TEST_CASE("node.id and node.data_dir are required", "[config]") {
  pki_dir pki;
  SECTION("missing keys") {
    const auto lines = errors_of(parse_in(pki.path(), "[node]\nsync = \"full\"\n[listen]\naddress = \"0.0.0.0:1\"\n"
                                                      "cert = \"pki/hub.crt\"\nkey = \"pki/hub.key\"\nca = "
                                                      "\"pki/ca.crt\"\n"));
    CHECK(lines.size() == 2);
    CHECK_ERROR(lines, "node.id", "missing required key");
    CHECK_ERROR(lines, "node.data_dir", "missing required key");
  }
  SECTION("missing section") {
    const auto lines = errors_of(parse_in(pki.path(), "[ingest]\nlisten = \"127.0.0.1:1\"\n[[peer]]\nname = "
                                                      "\"s\"\nurl = \"file:///s\"\n"));
    CHECK(lines ==
          std::vector<std::string>{"edge.toml: node: missing required section [node] (it needs id and data_dir)"});
  }
}

TEST_CASE("node.audit_log resolves against the config's directory and must be a non-empty string", "[config]") {
  pki_dir pki;
  const auto base = fs::absolute(pki.path()).lexically_normal();
  auto with = [&](const std::string& line) {
    auto text = edge_base;
    text.replace(text.find("data_dir"), 0, line + "\n");
    return parse_in(pki.path(), text);
  };
  CHECK(value_of(with("audit_log = \"logs/audit.jsonl\"")).node.audit_log == base / "logs" / "audit.jsonl");
  CHECK_ERROR(errors_of(with("audit_log = \"\"")), "node.audit_log", "must not be empty");
  CHECK_ERROR(errors_of(with("audit_log = 3")), "node.audit_log", "");
  CHECK_ERROR(errors_of(with("audit_logs = \"a\"")), "node.audit_logs", "audit_log");
}

TEST_CASE("node.audit_log_max_bytes is 0 or at least 4 KiB, node.audit_log_keep 0 to 100", "[config]") {
  pki_dir pki;
  auto with = [&](const std::string& line) {
    auto text = edge_base;
    text.replace(text.find("data_dir"), 0, line + "\n");
    return parse_in(pki.path(), text);
  };
  auto defaults = value_of(with(""));
  CHECK(defaults.node.audit_log_max_bytes == 64ull << 20);
  CHECK(defaults.node.audit_log_keep == 4);
  CHECK(value_of(with("audit_log_max_bytes = \"1MiB\"")).node.audit_log_max_bytes == 1u << 20);
  CHECK(value_of(with("audit_log_max_bytes = \"0\"")).node.audit_log_max_bytes == 0);
  CHECK(value_of(with("audit_log_keep = 0")).node.audit_log_keep == 0);
  CHECK(value_of(with("audit_log_keep = 100")).node.audit_log_keep == 100);
  CHECK_ERROR(errors_of(with("audit_log_max_bytes = \"2KiB\"")), "node.audit_log_max_bytes",
              "2048 bytes is too small to hold a few events; use at least \"4KiB\", or \"0\"");
  CHECK_ERROR(errors_of(with("audit_log_max_bytes = \"lots\"")), "node.audit_log_max_bytes", "");
  CHECK_ERROR(errors_of(with("audit_log_keep = 101")), "node.audit_log_keep", "100");
  CHECK_ERROR(errors_of(with("audit_log_keep = -1")), "node.audit_log_keep", "");
}

TEST_CASE("node.id is 1 to 64 characters without ':'", "[config]") {
  pki_dir pki;
  auto with_id = [&](const std::string& id) {
    return parse_in(pki.path(), "[node]\nid = \"" + id +
                                    "\"\ndata_dir = \"d\"\n[listen]\naddress = \"0.0.0.0:1\"\n"
                                    "cert = \"pki/hub.crt\"\nkey = \"pki/hub.key\"\nca = "
                                    "\"pki/ca.crt\"\n");
  };
  CHECK(value_of(with_id(std::string(64, 'e'))).node.id == std::string(64, 'e'));
  CHECK(value_of(with_id("Edge_7.eu-west")).node.id == "Edge_7.eu-west");
  CHECK_ERROR(errors_of(with_id("")), "node.id", "must be 1 to 64 bytes long, got 0");
  CHECK_ERROR(errors_of(with_id(std::string(65, 'e'))), "node.id", "must be 1 to 64 bytes long, got 65");
  CHECK_ERROR(errors_of(with_id("edge:1")), "node.id", "must not contain ':'");
  CHECK_ERROR(errors_of(with_id("edge 1")), "node.id", "whitespace");
}

TEST_CASE("a node without peers is valid only with a listen section", "[config]") {
  pki_dir pki;
  const std::string node = "[node]\nid = \"n\"\ndata_dir = \"d\"\n";
  const auto lines = errors_of(parse_in(pki.path(), node + "[ingest]\nlisten = \"127.0.0.1:9300\"\n"));
  REQUIRE(lines.size() == 1);
  CHECK_THAT(lines[0], Contains("edge.toml: peer: no [[peer]] is configured"));
  CHECK_THAT(lines[0], Contains("unless it has a [listen] section"));
  CHECK_THAT(lines[0], Contains("file:///"));

  const auto cfg = value_of(parse_in(pki.path(), node + R"([listen]
address = "0.0.0.0:9400"
cert = "pki/hub.crt"
key = "pki/hub.key"
ca = "pki/ca.crt"
)"));
  CHECK(cfg.peers.empty());
  CHECK(cfg.listen);
}

TEST_CASE("a node needs an input: ingest or listen", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), R"(
[node]
id = "n"
data_dir = "d"
[[peer]]
name = "s"
url = "file:///srv/spool"
)"));
  REQUIRE(lines.size() == 1);
  CHECK_ERROR(lines, "ingest", "the node has no input: add [ingest]");
}

// ---------------------------------------------------------------- peers

TEST_CASE("peer URLs must be wss://, https:// or file:// and parse", "[config]") {
  pki_dir pki;
  auto peer_with = [&](const std::string& url) {
    return parse_in(pki.path(), "[node]\nid = \"e\"\ndata_dir = \"d\"\n[ingest]\nlisten = \"127.0.0.1:1\"\n[[peer]]\n"
                                "name = \"p\"\nurl = \"" +
                                    url + "\"\ncert = \"pki/edge.crt\"\nkey = \"pki/edge.key\"\nca = \"pki/ca.crt\"\n");
  };
  CHECK_ERROR(errors_of(peer_with("http://hub:80")), "peer[0].url",
              "unknown scheme \"http\" (only wss://, https:// and file:// are allowed)");
  CHECK_ERROR(errors_of(peer_with("hub.example:9400")), "peer[0].url", "is not a URL");
  CHECK_ERROR(errors_of(peer_with("wss://")), "peer[0].url", "has no host");
  CHECK_ERROR(errors_of(peer_with("wss://hub:99999")), "peer[0].url", "has an invalid port \"99999\"");
  CHECK_ERROR(errors_of(peer_with("wss://hub:")), "peer[0].url", "has an invalid port \"\"");
  CHECK_ERROR(errors_of(peer_with("wss://user@hub")), "peer[0].url", "user information");
  CHECK_ERROR(errors_of(peer_with("wss://hub example")), "peer[0].url", "space");
  CHECK_ERROR(errors_of(peer_with("wss://[::1/x")), "peer[0].url", "unclosed '['");
  CHECK_ERROR(errors_of(peer_with("")), "peer[0].url", "is empty");

  const auto v6 = value_of(peer_with("WSS://[fd00::7]:9400/relay"));
  CHECK(v6.peers[0].kind == relay::peer_kind::relay);
  CHECK(v6.peers[0].host == "fd00::7");
  CHECK(v6.peers[0].port == 9400);
  CHECK(v6.peers[0].target == "/relay");
  const auto https = value_of(peer_with("https://api.example"));
  CHECK(https.peers[0].kind == relay::peer_kind::http);
  CHECK(https.peers[0].port == 443);
  CHECK(https.peers[0].target == "/");
}

TEST_CASE("file:// peers name an absolute local directory", "[config]") {
  pki_dir pki;
  auto file_peer = [&](const std::string& url) {
    return parse_in(pki.path(), "[node]\nid = \"e\"\ndata_dir = \"d\"\n[listen]\naddress = \"0.0.0.0:1\"\ncert = "
                                "\"pki/hub.crt\"\nkey = \"pki/hub.key\"\nca = \"pki/ca.crt\"\n[[peer]]\nname = "
                                "\"s\"\nurl = \"" +
                                    url + "\"\n");
  };
  CHECK(value_of(file_peer("file:///var/lib/edgerelay/spool/")).peers[0].spool_dir == "/var/lib/edgerelay/spool/");
  CHECK(value_of(file_peer("file://localhost/srv/a%20b")).peers[0].spool_dir == "/srv/a b");
  CHECK(value_of(file_peer("file:///srv/my spool")).peers[0].spool_dir == "/srv/my spool");
  CHECK_ERROR(errors_of(file_peer("file://spool")), "peer[0].url", "three slashes");
  CHECK_ERROR(errors_of(file_peer("file:///")), "peer[0].url", "root directory");
  CHECK_ERROR(errors_of(file_peer("file:///srv/%zz")), "peer[0].url", "percent escape");
}

TEST_CASE("two file peers may not share a spool directory", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + R"(
[[peer]]
name = "a"
url = "file:///srv/spool"
[[peer]]
name = "b"
url = "file:///srv/./spool"
)"));
  CHECK_ERROR(lines, "peer[2].url", "spool directory /srv/spool is already used by peer[1]");
}

TEST_CASE("duplicate peer names are refused", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + R"(
[[peer]]
name = "spool"
url = "file:///srv/a"
[[peer]]
name = "hub"
url = "file:///srv/b"
)"));
  REQUIRE(lines.size() == 1);
  CHECK(lines[0] == "edge.toml: peer[2].name: duplicate peer name \"hub\" (also peer[0])");
}

TEST_CASE("peer names match [a-z0-9._-]{1,64}", "[config]") {
  pki_dir pki;
  auto named = [&](const std::string& name) {
    return parse_in(pki.path(), "[node]\nid = \"e\"\ndata_dir = \"d\"\n[ingest]\nlisten = \"127.0.0.1:1\"\n[[peer]]\n"
                                "name = \"" +
                                    name + "\"\nurl = \"file:///srv/s\"\n");
  };
  CHECK(value_of(named("hub-1.eu_west")).peers[0].name == "hub-1.eu_west");
  CHECK(value_of(named(std::string(64, 'a'))).peers[0].name.size() == 64);
  for (const std::string& bad : std::vector<std::string>{"", "Hub", "hub 1", "hub/1", "hüb", std::string(65, 'a')})
    CHECK_ERROR(errors_of(named(bad)), "peer[0].name", "is not a valid peer name (use 1 to 64 of a-z 0-9 . _ -)");
  CHECK_ERROR(errors_of(parse_in(pki.path(), "[node]\nid = \"e\"\ndata_dir = \"d\"\n[ingest]\nlisten = "
                                             "\"127.0.0.1:1\"\n[[peer]]\nurl = \"file:///srv/s\"\n")),
              "peer[0].name", "missing required key");
}

TEST_CASE("streams are globs over stream characters and '*'", "[config]") {
  pki_dir pki;
  const auto lines =
      errors_of(parse_in(pki.path(), edge_base + "streams = [\"ok.*\", \"Bad\", \"\", \"a/b\", \"x?\"]\n"));
  CHECK(lines.size() == 4);
  CHECK_ERROR(lines, "peer[0].streams[1]", "\"Bad\" is not a stream pattern");
  CHECK_ERROR(lines, "peer[0].streams[2]", "\"\" is not a stream pattern");
  CHECK_ERROR(lines, "peer[0].streams[3]", "is not a stream pattern");
  CHECK_ERROR(lines, "peer[0].streams[4]", "is not a stream pattern");
  CHECK_ERROR(errors_of(parse_in(pki.path(), edge_base + "streams = []\n")), "peer[0].streams", "is empty");

  CHECK(relay::stream_glob_match("*", "anything"));
  CHECK(relay::stream_glob_match("*", "_canary"));
  CHECK(relay::stream_glob_match("telemetry.*", "telemetry.gps"));
  CHECK(relay::stream_glob_match("telemetry.*", "telemetry."));
  CHECK_FALSE(relay::stream_glob_match("telemetry.*", "telemetry"));
  CHECK(relay::stream_glob_match("*.log", "app.debug.log"));
  CHECK(relay::stream_glob_match("a*b*c", "aXbYbZc"));
  CHECK_FALSE(relay::stream_glob_match("a*b*c", "aXbYbZ"));
  CHECK(relay::stream_glob_match("exact", "exact"));
  CHECK_FALSE(relay::stream_glob_match("exact", "exactly"));
}

TEST_CASE("wss and https peers require cert, key and ca, file peers take no TLS keys", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), R"(
[node]
id = "e"
data_dir = "d"
[ingest]
listen = "127.0.0.1:9300"
[[peer]]
name = "hub"
url = "wss://hub:9400"
[[peer]]
name = "api"
url = "https://api.example/v1"
cert = "pki/edge.crt"
[[peer]]
name = "spool"
url = "file:///srv/spool"
cert = "pki/edge.crt"
server_name = "x"
)"));
  CHECK(lines.size() == 7);
  CHECK_ERROR(lines, "peer[0].cert",
              "missing required key (wss:// peers authenticate with mTLS and need cert, key and ca)");
  CHECK_ERROR(lines, "peer[0].key", "missing required key");
  CHECK_ERROR(lines, "peer[0].ca", "missing required key");
  CHECK_ERROR(lines, "peer[1].key", "missing required key (https:// peers");
  CHECK_ERROR(lines, "peer[1].ca", "missing required key");
  CHECK_ERROR(lines, "peer[2].cert", "has no effect on a file:// peer");
  CHECK_ERROR(lines, "peer[2].server_name", "has no effect on a file:// peer");
}

// ---------------------------------------------------------------- files

TEST_CASE("missing or unreadable TLS files are errors, relative to the config's directory", "[config]") {
  pki_dir pki;
  const auto base = fs::absolute(pki.path()).lexically_normal();
  const auto lines = errors_of(parse_in(pki.path(), R"(
[node]
id = "e"
data_dir = "d"
[ingest]
listen = "127.0.0.1:9300"
[[peer]]
name = "hub"
url = "wss://hub:9400"
cert = "pki/nope.crt"
key = "pki"
ca = ""
crl = "/nonexistent/ca.crl"
)"));
  CHECK(lines.size() == 4);
  CHECK_ERROR(lines, "peer[0].cert", "file not found: " + (base / "pki" / "nope.crt").string());
  CHECK_ERROR(lines, "peer[0].key", (base / "pki").string() + " is a directory, not a file");
  CHECK_ERROR(lines, "peer[0].ca", "must not be empty");
  CHECK_ERROR(lines, "peer[0].crl", "file not found: /nonexistent/ca.crl");

  if (::geteuid() != 0) { // root reads anything
    fs::permissions(pki.path() / "pki" / "edge.key", fs::perms::none);
    const auto denied = errors_of(parse_in(pki.path(), edge_base));
    CHECK_ERROR(denied, "peer[0].key", "cannot read " + (base / "pki" / "edge.key").string() + ": Permission denied");
  }
}

TEST_CASE("check_files = false resolves TLS paths without opening them", "[config]") {
  pki_dir pki;
  const std::string text = R"(
[node]
id = "e"
data_dir = "d"
[ingest]
listen = "127.0.0.1:9300"
[[peer]]
name = "hub"
url = "wss://hub:9400"
cert = "elsewhere/edge.crt"
key = "/etc/edgerelay/pki/edge.key"
ca = "ca.crt"
)";
  CHECK(parse_in(pki.path(), text).result.has_error());
  const auto cfg = value_of(parse_in(pki.path(), text, relay::parse_options{.check_files = false}));
  CHECK(cfg.peers[0].tls.cert == fs::absolute(pki.path()).lexically_normal() / "elsewhere" / "edge.crt");
  CHECK(cfg.peers[0].tls.key == "/etc/edgerelay/pki/edge.key");
}

// ---------------------------------------------------------------- listeners

TEST_CASE("listen sections need host:port and their TLS material", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), R"(
[node]
id = "e"
data_dir = "d"
[ingest]
listen = "::1:9300"
tls = { cert = "pki/edge.crt" }
[listen]
address = "0.0.0.0:65536"
cert = "pki/hub.crt"
[admin]
listen = "127.0.0.1:x"
[[peer]]
name = "s"
url = "file:///srv/s"
)"));
  CHECK_ERROR(lines, "ingest.listen", "an IPv6 address goes in brackets");
  CHECK_ERROR(lines, "ingest.tls.key", "missing required key");
  CHECK_ERROR(lines, "listen.address", "has an invalid port \"65536\" (use 0..65535)");
  CHECK_ERROR(lines, "listen.key", "missing required key");
  CHECK_ERROR(lines, "listen.ca", "missing required key");
  CHECK_ERROR(lines, "admin.listen", "has an invalid port \"x\"");
  CHECK_FALSE(has_error(lines, "ingest.tls.ca", "")); // ca is optional on ingest

  auto ingest_at = [&](const std::string& address) {
    return parse_in(pki.path(), "[node]\nid = \"e\"\ndata_dir = \"d\"\n[ingest]\nlisten = \"" + address +
                                    "\"\n[[peer]]\nname = \"s\"\nurl = \"file:///srv/s\"\n");
  };
  CHECK_ERROR(errors_of(ingest_at("")), "ingest.listen", "is empty (use host:port");
  CHECK_ERROR(errors_of(ingest_at(":9300")), "ingest.listen", "has no host");
  CHECK_ERROR(errors_of(ingest_at("host")), "ingest.listen", "has no port");
  CHECK_ERROR(errors_of(ingest_at("ho st:1")), "ingest.listen", "has an invalid host \"ho st\"");
  CHECK_ERROR(errors_of(ingest_at("-bad-.example:1")), "ingest.listen", "has an invalid host");
  CHECK_ERROR(errors_of(ingest_at("[::1]")), "ingest.listen", "has no port");
  CHECK_ERROR(errors_of(ingest_at("[zz::1]:1")), "ingest.listen", "invalid IPv6 address \"zz::1\"");
  CHECK_ERROR(errors_of(ingest_at("host:1x")), "ingest.listen", "has an invalid port \"1x\"");
  for (const std::string good : {"localhost:0", "0.0.0.0:9300", "edge-1.example.net:65535", "[::1]:9300"})
    CHECK(value_of(ingest_at(good)).ingest->listen.to_string() == good);
  for (const std::string loopback : {"localhost:1", "127.0.0.2:9310", "[::1]:9310"})
    CHECK(parse_in(pki.path(), edge_base + "[admin]\nlisten = \"" + loopback + "\"\n").result.has_value());
}

TEST_CASE("allow entries start with URI:, DNS: or CN:", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), R"(
[node]
id = "e"
data_dir = "d"
[listen]
address = "0.0.0.0:9400"
cert = "pki/hub.crt"
key = "pki/hub.key"
ca = "pki/ca.crt"
allow = ["URI:spiffe://fleet/edge/*", "edge-*.example", "uri:x", "CN:", "DNS:ok.example"]
)"));
  CHECK(lines.size() == 3);
  CHECK_ERROR(lines, "listen.allow[1]", "\"edge-*.example\" must start with URI:, DNS: or CN:");
  CHECK_ERROR(lines, "listen.allow[2]", "must start with URI:, DNS: or CN:");
  CHECK_ERROR(lines, "listen.allow[3]", "\"CN:\" has nothing after the prefix");
}

TEST_CASE("crl and allow need a ca on the ingest listener", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + R"(
[ingest.tls]
cert = "pki/edge.crt"
key = "pki/edge.key"
crl = "pki/ca.crl"
allow = ["CN:x"]
)"));
  CHECK_ERROR(lines, "ingest.tls.crl", "has no effect without ca");
  CHECK_ERROR(lines, "ingest.tls.allow", "has no effect without ca");
}

TEST_CASE("the admin API off loopback requires mTLS", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + "[admin]\nlisten = \"0.0.0.0:9310\"\n"));
  CHECK_ERROR(lines, "admin.listen",
              "\"0.0.0.0:9310\" is not a loopback address: off loopback the admin API requires "
              "mTLS");
  const auto no_ca = errors_of(parse_in(
      pki.path(),
      edge_base + "[admin]\nlisten = \"0.0.0.0:9310\"\ntls = { cert = \"pki/edge.crt\", key = \"pki/edge.key\" }\n"));
  CHECK_ERROR(no_ca, "admin.tls.ca", "missing required key");
  const auto cfg = value_of(parse_in(pki.path(), edge_base + "[admin]\nlisten = \"0.0.0.0:9310\"\ntls = { cert = "
                                                             "\"pki/edge.crt\", key = \"pki/edge.key\", ca = "
                                                             "\"pki/ca.crt\" }\n"));
  CHECK_FALSE(cfg.admin.listen.is_loopback());
}

TEST_CASE("two listeners may not use the same port", "[config]") {
  pki_dir pki;
  const auto lines = errors_of(parse_in(pki.path(), edge_base + "[admin]\nlisten = \"127.0.0.1:9300\"\n"));
  CHECK_ERROR(lines, "admin.listen", "\"127.0.0.1:9300\" uses the same port as ingest.listen");
  // Port 0 ("any free port", for tests) never collides.
  CHECK(parse_in(pki.path(),
                 "[node]\nid = \"e\"\ndata_dir = \"d\"\n[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = "
                 "\"127.0.0.1:0\"\n[[peer]]\nname = \"s\"\nurl = \"file:///s\"\n")
            .result.has_value());
}

// ---------------------------------------------------------------- bandwidth

TEST_CASE("bandwidth: rate, burst, quota and UTC send windows", "[config]") {
  pki_dir pki;
  const auto cfg = value_of(parse_in(pki.path(), edge_base + "bandwidth = { rate = \"8Mbit\" }\n"));
  const auto& b = cfg.peers[0].bandwidth;
  CHECK(b.get_mode() == relay::bandwidth_section::mode::rate);
  CHECK(b.rate == 1'000'000u);
  CHECK(b.burst == 1'000'000u); // default: one second of rate

  const auto q = value_of(parse_in(pki.path(), edge_base + "bandwidth = { daily_quota = \"1GB\" }\n"));
  CHECK(q.peers[0].bandwidth.get_mode() == relay::bandwidth_section::mode::quota);
  CHECK(q.peers[0].bandwidth.quota_reset == 0min);

  const auto lines = errors_of(
      parse_in(pki.path(), edge_base + "bandwidth = { daily_quota = \"1GB\", quota_reset = \"24:00Z\", send_windows = "
                                       "[\"22:00-06:00\", \"7:00-08:00Z\", \"10:00-10:00Z\", \"10:00-11:00Z\"] }\n"));
  CHECK(lines.size() == 4);
  CHECK_ERROR(lines, "peer[0].bandwidth.quota_reset", "\"24:00Z\" is not a UTC time of day (use \"HH:MMZ\"");
  CHECK_ERROR(lines, "peer[0].bandwidth.send_windows[0]", "\"22:00-06:00\" is not a send window");
  CHECK_ERROR(lines, "peer[0].bandwidth.send_windows[1]", "is not a send window");
  CHECK_ERROR(lines, "peer[0].bandwidth.send_windows[2]", "is empty: start and end are the same time");
  CHECK_ERROR(errors_of(parse_in(pki.path(), edge_base + "bandwidth = { send_windows = [] }\n")),
              "peer[0].bandwidth.send_windows", "is empty");
}

TEST_CASE("a send window may cross midnight", "[config]") {
  const relay::send_window night{22h, 6h}, noon{12h, 13h};
  CHECK(night.contains(23h));
  CHECK(night.contains(0min));
  CHECK(night.contains(22h));
  CHECK(night.contains(5h + 59min));
  CHECK_FALSE(night.contains(6h));
  CHECK_FALSE(night.contains(12h));
  CHECK(noon.contains(12h + 30min));
  CHECK_FALSE(noon.contains(13h));
  CHECK_FALSE(noon.contains(11h + 59min));
  CHECK(night.to_string() == "22:00-06:00Z");
}

// ---------------------------------------------------------------- files and examples

TEST_CASE("load_config reads the file and resolves paths against its directory", "[config]") {
  pki_dir pki;
  const auto file = pki.path() / "edge.toml";
  std::ofstream(file) << edge_base;
  const auto r = relay::load_config(file);
  INFO((r ? std::string() : relay::to_string(r.error())));
  REQUIRE(r.has_value());
  CHECK(r->source == file.string());
  CHECK(r->node.data_dir == fs::absolute(pki.path()).lexically_normal() / "data");

  std::ofstream(file) << edge_base << "[queue]\nmax_bytes = \"x\"\n";
  const auto bad = relay::load_config(file);
  REQUIRE(bad.has_error());
  CHECK(bad.error()[0].file == file.string());
  CHECK(bad.error()[0].to_string().rfind(file.string() + ": queue.max_bytes: ", 0) == 0);

  const auto missing = relay::load_config(pki.path() / "nope.toml");
  REQUIRE(missing.has_error());
  CHECK(missing.error()[0].to_string() ==
        (pki.path() / "nope.toml").string() + ": cannot read the configuration file: No such file or directory");
  const auto dir = relay::load_config(pki.path());
  REQUIRE(dir.has_error());
  CHECK_THAT(dir.error()[0].problem, Contains("Is a directory"));
}

TEST_CASE("the shipped example configs are valid", "[config]") {
  for (const char* name : {"edge.toml", "hub.toml"}) {
    const auto file = examples_dir() / name;
    INFO(file.string());
    REQUIRE(fs::exists(file));
    const auto r = relay::load_config(file, relay::parse_options{.check_files = false});
    INFO((r ? std::string() : relay::to_string(r.error())));
    REQUIRE(r.has_value());

    // With file checks on, the only possible complaints are the PKI files
    // that exist on a deployed machine, not here.
    const auto checked = relay::load_config(file);
    if (checked.has_error())
      for (const auto& e : checked.error()) {
        INFO(e.to_string());
        CHECK(e.problem.rfind("file not found: /etc/edgerelay/pki/", 0) == 0);
      }
  }
  const auto edge =
      relay::load_config(examples_dir() / "edge.toml", relay::parse_options{.check_files = false}).value();
  REQUIRE(edge.peers.size() == 1);
  CHECK(edge.peers[0].kind == relay::peer_kind::relay);
  CHECK(edge.peers[0].bandwidth.get_mode() == relay::bandwidth_section::mode::both);
  CHECK_FALSE(edge.listen);
  const auto hub = relay::load_config(examples_dir() / "hub.toml", relay::parse_options{.check_files = false}).value();
  REQUIRE(hub.peers.size() == 1);
  CHECK(hub.peers[0].kind == relay::peer_kind::file);
  CHECK(hub.peers[0].spool_dir == "/var/lib/edgerelay/spool");
  REQUIRE(hub.listen);
  CHECK(hub.listen->tls.allow.size() == 2);
}
