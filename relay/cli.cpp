#include "relay/cli.hpp"
#include "util/text.hpp"

#include "relay/bench_tiers.hpp"
#include "relay/config.hpp"
#include "relay/demo.hpp"
#include "relay/evidence_cli.hpp"
#include "relay/evidence_run.hpp"
#include "relay/http_client.hpp"
#include "relay/impair_cli.hpp"
#include "relay/node.hpp"
#include "relay/producer.hpp"
#include "relay/spool.hpp"
#include "relay/store_demo.hpp"
#include "relay/support_bundle.hpp"
#include "telemetry/logging.hpp"
#include "transport/pki.hpp"
#include "transport/tls.hpp"
#include "util/bytes.hpp"
#include "util/checksum.hpp"
#include "util/units.hpp"

#include <CLI/CLI.hpp>
#include <boost/json.hpp>
#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>

#include <cctype>
#include <chrono>
#include <csignal>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>

namespace edgerelay::relay {

namespace {

// --log-format and --log-level of `run`, already checked by CLI11.
struct log_options {
  std::string format = "text";
  std::string level = "info";
};

// Applies the log options to spdlog's default logger before any thread starts.
void configure_logging(const log_options& o) {
  telemetry::configure_default_logger(telemetry::parse_log_format(o.format).value_or(telemetry::log_format::text));
  spdlog::set_level(spdlog::level::from_str(o.level == "warning" ? "warn" : o.level));
}

int cmd_run(const std::string& file, const log_options& lo) {
  configure_logging(lo);
  // In json mode every line on stderr is a JSON object (log shippers parse
  // them all); in text mode the start-up lines stay plain as they always were.
  const bool json_logs = lo.format == "json";
  auto cfg = load_config(file);
  if (!cfg) {
    std::cerr << to_string(cfg.error());
    return 2;
  }
  // Block the signals before any thread starts so that only sigwait sees them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // Exit 2 (not restarted by the unit) when what the file names cannot work
  // as it is, whatever the time: TLS material whose contents do not load (not
  // PEM, undecodable, a key that does not match, a bad allow pattern), a
  // data_dir of another node or of something else. 1 for what may pass on a
  // retry: a port in use, a data_dir locked by a process that is stopping,
  // I/O errors, a file missing for a moment during a rotation, and whatever
  // depends on the clock (a certificate or CRL not valid yet or any more: a
  // device without a real-time clock boots with a wrong time until NTP).
  auto fail = [&](const error& e) {
    if (json_logs)
      spdlog::critical("edgerelay: {}", e.message);
    else
      std::cerr << "edgerelay: " << e.message << "\n";
    using transport::tls_errc;
    const bool tls_content =
        e.code.category() == transport::tls_category() &&
        (e.code == tls_errc::not_pem || e.code == tls_errc::malformed || e.code == tls_errc::key_mismatch ||
         e.code == tls_errc::key_encrypted || e.code == tls_errc::bad_allow_pattern ||
         e.code == tls_errc::bad_server_name || e.code == tls_errc::missing_file);
    const bool config_content = tls_content || e.code == errc::store_foreign || e.code == errc::store_corrupt ||
                                e.code == errc::invalid_argument;
    return config_content ? 2 : 1;
  };
  auto n = node::create(std::move(*cfg));
  if (!n) return fail(n.error());
  if (auto r = (*n)->start(); !r) return fail(r.error());
  std::string running = "edgerelay: node running: admin " + (*n)->address("admin");
  for (const char* l : {"ingest", "listen"})
    if (auto a = (*n)->address(l); !a.empty()) running += std::string(", ") + l + " " + a;
  if (json_logs)
    spdlog::info("{}", running);
  else
    std::cerr << running << std::endl;
  // systemd (Type=notify): the listeners are bound and the forwarders run.
  // Without NOTIFY_SOCKET in the environment this does nothing.
  sd_notify(0, "READY=1\nSTATUS=running");
  int sig = 0;
  // SIGHUP re-reads the config (as POST /v1/reload does); SIGINT/SIGTERM stop.
  while (sigwait(&set, &sig) == 0 && sig == SIGHUP)
    (void)(*n)->reload(); // the node logs what it applied, what needs a restart, or why it refused
  if (json_logs)
    spdlog::info("edgerelay: stopping on signal {}", sig);
  else
    std::cerr << "edgerelay: stopping on signal " << sig << "\n";
  sd_notify(0, "STOPPING=1");
  (*n)->stop();
  return 0;
}

int cmd_check(const std::string& file, bool check_files) {
  parse_options po;
  po.check_files = check_files;
  auto cfg = load_config(file, po);
  if (!cfg) {
    std::cerr << to_string(cfg.error());
    return 2;
  }
  const auto n = cfg->peers.size();
  std::cout << file << ": ok (" << n << (n == 1 ? " peer" : " peers")
            << (check_files ? "" : "; certificate, key, CA and CRL files not checked") << ")\n";
  return 0;
}

int cmd_status(const std::string& admin, bool as_json) {
  auto r = http_call("GET", admin + "/v1/status");
  if (!r) {
    std::cerr << "edgerelay status: " << r.error().message << "\n";
    return 1;
  }
  if (r->status != 200) {
    std::cerr << "edgerelay status: HTTP " << r->status << ": " << r->body << "\n";
    return 1;
  }
  if (as_json) {
    std::cout << r->body << "\n";
    return 0;
  }
  auto s = boost::json::parse(r->body).as_object();
  std::cout << "node " << s.at("node").at("id").as_string() << "  " << boost::json::serialize(s.at("totals")) << "\n";
  for (auto& p : s.at("peers").as_array())
    std::cout << "  " << boost::json::serialize(p) << "\n";
  return 0;
}

int cmd_spool_cat(const std::string& dir, bool as_json) {
  // A spool always has a file (the sink opens one when it starts): none
  // means this is not a spool directory (a node's data_dir, a typo).
  bool any = false;
  std::error_code lec;
  for (auto it = std::filesystem::directory_iterator(dir, lec); !lec && it != std::filesystem::directory_iterator();
       it.increment(lec))
    any = any || is_spool_file_name(it->path().filename().string());
  if (!lec && !any) {
    std::cerr << "edgerelay spool cat: " << util::quote(dir)
              << " holds no spool files (spool-<16 hex digits>.ers): not a file:// peer's spool directory\n";
    return 1;
  }
  auto n = read_spool(dir, [&](const spool_record& r) {
    if (as_json) {
      boost::json::object o{{"id", r.id},
                            {"stream", r.stream},
                            {"created_at", r.created_ms},
                            {"checksum", util::checksum_hex(r.checksum)},
                            {"payload_base64", util::base64(r.payload)}};
      std::cout << boost::json::serialize(o) << "\n";
    } else {
      std::cout << r.id << "\t" << r.stream << "\t" << r.payload.size() << " bytes\t" << util::checksum_hex(r.checksum)
                << "\n";
    }
    return true;
  });
  if (!n) {
    std::cerr << "edgerelay spool cat: " << n.error().message << "\n";
    return 1;
  }
  return 0;
}

struct send_options {
  std::string url, stream, file, size = "1KiB";
  unsigned count = 0, batch = 100, window = 8;
  std::string ca, cert, key, server_name; // wss://
  bool zstd = false;
  bool window_set = false; // --window given (it applies to ws:// and wss:// only)
};

// The WebSocket producer path (ws:// or wss://): the relay protocol on the
// ingest listener, `window` batches of `batch` segments in flight.
int send_ws(const send_options& o, const std::vector<std::string>& payloads, std::uint64_t segment_bytes) {
  producer_options po;
  po.url = o.url;
  po.name = "edgerelay-send";
  po.tls = {o.cert, o.key, o.ca, {}, {}};
  po.server_name = o.server_name;
  po.window = o.window;
  po.batch_max_segments = o.batch;
  po.batch_max_bytes = std::max<std::uint64_t>(1, segment_bytes * o.batch);
  po.zstd = o.zstd;
  auto p = ws_producer::connect(po);
  if (!p) {
    std::cerr << "edgerelay send: " << p.error().message << "\n";
    return 1;
  }
  auto t0 = std::chrono::steady_clock::now();
  std::uint64_t total = o.count == 0 ? 1 : o.count;
  for (std::uint64_t i = 0; i < total; ++i)
    if (auto r = (*p)->send(o.stream, payloads[i % payloads.size()]); !r) {
      std::cerr << "edgerelay send: " << r.error().message << "\n";
      return 1;
    }
  if (auto r = (*p)->flush(); !r) {
    std::cerr << "edgerelay send: " << r.error().message << "\n";
    return 1;
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  auto st = (*p)->stats();
  std::cout << "sent " << st.segments_sent << " segments over WebSocket in " << s << " s ("
            << static_cast<std::uint64_t>(static_cast<double>(st.segments_sent) / std::max(s, 1e-9))
            << " segments/s): " << st.segments_ok << " stored, " << st.segments_rejected << " rejected";
  for (auto& [reason, n] : st.rejections)
    std::cout << " (" << reason << ": " << n << ")";
  std::cout << "\n";
  return st.segments_rejected == 0 ? 0 : 1;
}

// Producer client and load generator: one payload from a file or stdin, or
// `count` random payloads of `size` bytes sent in batches.
int cmd_send(const send_options& o) {
  bool ws = o.url.starts_with("ws://") || o.url.starts_with("wss://");
  // Options that would be ignored for this URL are refused, so a user never
  // believes a setting applied that did not.
  const bool wss = o.url.starts_with("wss://");
  for (auto [set, name, needs] :
       {std::tuple{!o.ca.empty(), "--ca", wss}, std::tuple{!o.cert.empty(), "--cert", wss},
        std::tuple{!o.key.empty(), "--key", wss}, std::tuple{!o.server_name.empty(), "--server-name", wss},
        std::tuple{o.zstd, "--zstd", ws}, std::tuple{o.window_set, "--window", ws}})
    if (set && !needs) {
      std::cerr << "edgerelay send: " << name << " applies only to a "
                << (std::string_view(name) == "--zstd" || std::string_view(name) == "--window" ? "ws:// or wss://"
                                                                                               : "wss://")
                << " URL, not to " << util::quote(o.url) << "\n";
      return 2;
    }
  if (std::error_code fec; !o.file.empty() && o.file != "-" && std::filesystem::is_directory(o.file, fec)) {
    std::cerr << "edgerelay send: --file " << util::quote(o.file) << " is a directory, not a file\n";
    return 2;
  }
  std::string base = o.url;
  while (!base.empty() && base.back() == '/')
    base.pop_back();
  auto post = [&](const std::string& what, const std::string& body) -> bool {
    auto r = http_call("POST", base + "/v1/streams/" + o.stream + "/" + what, body, std::chrono::seconds(60));
    if (!r) {
      std::cerr << "edgerelay send: " << r.error().message << "\n";
      return false;
    }
    if (r->status != 201) {
      std::cerr << "edgerelay send: HTTP " << r->status << ": " << r->body << "\n";
      return false;
    }
    if (o.count == 0) std::cout << r->body << "\n";
    return true;
  };
  if (o.count == 0) {
    std::string payload;
    if (o.file.empty() || o.file == "-")
      payload.assign(std::istreambuf_iterator<char>(std::cin), {});
    else {
      std::ifstream in(o.file, std::ios::binary);
      if (!in) {
        std::cerr << "edgerelay send: cannot read " << o.file << "\n";
        return 1;
      }
      payload.assign(std::istreambuf_iterator<char>(in), {});
    }
    if (ws) return send_ws(o, {payload}, payload.size());
    return post("segments", payload) ? 0 : 1;
  }
  auto size = util::parse_size(o.size);
  if (!size || *size == 0) {
    std::cerr << "edgerelay send: --size: " << (size ? std::string("must be at least 1 byte") : size.error().message)
              << "\n";
    return 2;
  }
  std::mt19937_64 rng(std::random_device{}());
  if (ws) {
    // A pool of distinct random payloads, reused round-robin: generating
    // random bytes must not be what limits a fast producer.
    std::vector<std::string> pool(std::min<unsigned>(o.count, 64));
    for (auto& pl : pool)
      for (std::uint64_t b = 0; b < *size; ++b)
        pl.push_back(static_cast<char>(rng()));
    return send_ws(o, pool, *size);
  }
  auto t0 = std::chrono::steady_clock::now();
  for (unsigned sent = 0; sent < o.count;) {
    unsigned n = std::min(o.batch, o.count - sent);
    std::string body;
    for (unsigned i = 0; i < n; ++i) {
      util::writer(body).u32(static_cast<std::uint32_t>(*size));
      for (std::uint64_t b = 0; b < *size; ++b)
        body.push_back(static_cast<char>(rng()));
    }
    if (!post("batch", body)) return 1;
    sent += n;
  }
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "sent " << o.count << " segments of " << *size << " bytes in " << s << " s ("
            << static_cast<std::uint64_t>(o.count / std::max(s, 1e-9)) << " segments/s)\n";
  return 0;
}

struct dl_options {
  std::string admin = "http://127.0.0.1:9310", peer, stream, reason, older_than;
  std::vector<std::string> ids;
  bool all = false;
  unsigned limit = 100;
};

int cmd_deadletter(const std::string& op, const dl_options& o) {
  if (op == "list") {
    std::string q = "?limit=" + std::to_string(o.limit);
    if (!o.peer.empty()) q += "&peer=" + util::percent_encode(o.peer);
    if (!o.stream.empty()) q += "&stream=" + util::percent_encode(o.stream);
    if (!o.reason.empty()) q += "&reason=" + util::percent_encode(o.reason);
    auto r = http_call("GET", o.admin + "/v1/deadletter" + q);
    if (!r) {
      std::cerr << "edgerelay deadletter: " << r.error().message << "\n";
      return 1;
    }
    std::cout << r->body << "\n";
    return r->status == 200 ? 0 : 1;
  }
  boost::json::object body;
  int said = (o.all ? 1 : 0) + (o.ids.empty() ? 0 : 1) + (o.older_than.empty() ? 0 : 1);
  if (said != 1) {
    std::cerr << "edgerelay deadletter " << op << ": say exactly one of --all, --id or --older-than\n";
    return 2;
  }
  if (o.all) body["all"] = true;
  if (!o.ids.empty()) {
    boost::json::array a;
    for (auto& id : o.ids)
      a.push_back(boost::json::value(id));
    body["ids"] = std::move(a);
  }
  if (!o.older_than.empty()) {
    auto d = util::parse_duration(o.older_than);
    if (!d) {
      std::cerr << "edgerelay deadletter " << op << ": --older-than: " << d.error().message << "\n";
      return 2;
    }
    body["older_than_s"] = static_cast<double>(d->count()) / 1000.0;
  }
  if (!o.peer.empty()) body["peer"] = o.peer;
  auto r = http_call("POST", o.admin + "/v1/deadletter/" + op, boost::json::serialize(body));
  if (!r) {
    std::cerr << "edgerelay deadletter: " << r.error().message << "\n";
    return 1;
  }
  std::cout << r->body << "\n";
  return r->status == 200 ? 0 : 1;
}

int cmd_support_bundle(const support_bundle_options& o) {
  auto r = write_support_bundle(o);
  if (!r) {
    std::cerr << "edgerelay support-bundle: " << r.error().message << "\n";
    return 1;
  }
  std::size_t missing = 0;
  for (auto& i : r->items)
    missing += i.ok ? 0 : 1;
  std::cout << "wrote " << r->written.string() << ": " << r->items.size() - missing << " items collected, " << missing
            << " missing (see MANIFEST.txt)\n";
  for (auto& i : r->items)
    if (!i.ok) std::cout << "  missing " << i.name << ": " << i.note << "\n";
  return 0;
}

} // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"edgerelay: a store-and-forward relay node for edge hardware"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("edgerelay ") + EDGERELAY_VERSION);

  std::string config_file;
  auto* run = app.add_subcommand("run", "Run a node in the foreground");
  run->add_option("--config", config_file, "Config file (TOML)")->required();
  log_options logo;
  run->add_option("--log-format", logo.format, "Log lines on stderr: text (default) or json (one object per line)")
      ->check(CLI::IsMember({"text", "json"}));
  run->add_option("--log-level", logo.level, "Least severe level logged (default info)")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "warning", "error", "critical", "off"}));
  auto* check = app.add_subcommand("check-config", "Validate a config file; print every problem");
  check->add_option("--config", config_file, "Config file (TOML)")->required();
  bool check_no_files = false;
  check->add_flag("--no-file-check", check_no_files,
                  "Do not require the certificate, key, CA and CRL files to exist: for a file written for "
                  "another machine (paths that exist only where it is deployed)");

  demo_options demo;
  std::string demo_dir;
  int demo_seconds = 120;
  auto* dm = app.add_subcommand("demo", "A dev PKI, an edge and a hub on loopback over mTLS, traffic, and the result");
  dm->add_option("--dir", demo_dir,
                 "Keep everything in this directory: a new or empty one, or an earlier demo's, which is emptied "
                 "(default: a temporary one, removed after)");
  std::string demo_duration;
  auto* demo_segments =
      dm->add_option("--segments", demo.segments, "How many segments to send")->check(CLI::Range(1u, 10000000u));
  dm->add_option("--duration", demo_duration,
                 "Send paced traffic (about 200 segments/s) for this long instead, e.g. 30s or 10m (at most 1h)")
      ->excludes(demo_segments);
  dm->add_option("--timeout", demo_seconds, "Seconds to wait for delivery")->check(CLI::Range(1, 86400));
  dm->add_flag("!--no-progress", demo.progress, "Do not draw progress bars");

  store_demo_options sdemo;
  std::string sdemo_dir;
  auto* sd = app.add_subcommand("store-demo", "Exercise the durable queue alone and print its accounting");
  sd->add_option("--dir", sdemo_dir,
                 "Keep the store in this directory: a new or empty one, or an earlier store-demo's, which is "
                 "emptied (default: a temporary one, removed after)");
  sd->add_option("--segments", sdemo.segments, "How many segments the producers send")
      ->check(CLI::Range(16u, 10000000u));
  sd->add_option("--producers", sdemo.producers, "Concurrent producer threads")->check(CLI::Range(1u, 256u));
  sd->add_flag("!--no-progress", sdemo.progress, "Do not draw progress bars");

  std::string pki_dir;
  bool pki_force = false;
  auto* pki = app.add_subcommand("pki", "Development certificates");
  pki->require_subcommand(1);
  auto* pki_init_cmd = pki->add_subcommand("init", "Create a development CA, server and client certificates and a CRL");
  pki_init_cmd->add_option("--dir", pki_dir, "Where to write them")->required();
  pki_init_cmd->add_flag("--force", pki_force, "Overwrite existing files");

  std::string admin = "http://127.0.0.1:9310";
  bool as_json = false;
  auto* st = app.add_subcommand("status", "Show a node's status through its admin API");
  st->add_option("--admin", admin, "Admin API URL")->capture_default_str();
  st->add_flag("--json", as_json, "Print the raw JSON");

  std::string spool_dir;
  auto* spool = app.add_subcommand("spool", "Read a file:// sink's spool");
  spool->require_subcommand(1);
  auto* cat = spool->add_subcommand("cat", "Print every segment in a spool directory");
  cat->add_option("dir", spool_dir, "The spool directory")->required();
  cat->add_flag("--json", as_json, "One JSON object per segment (id, stream, created_at, checksum, payload_base64)");

  const CLI::Validator non_empty_text(
      [](std::string& v) { return v.empty() ? std::string("must not be empty") : std::string(); }, "NON-EMPTY");
  send_options so;
  auto* snd = app.add_subcommand("send", "Send segments to a node's ingest API (producer client and load generator)");
  snd->add_option("--url", so.url,
                  "Ingest URL: http://127.0.0.1:9300 (HTTP), or ws://127.0.0.1:9300/v1/relay / wss://... for the "
                  "relay protocol (fast producers)")
      ->required();
  snd->add_option("--stream", so.stream, "Stream name")->required();
  auto* snd_file = snd->add_option("--file", so.file, "Send this file as one segment ('-' or none: standard input)");
  auto* snd_count =
      snd->add_option("--count", so.count, "Send this many generated segments instead")->excludes(snd_file);
  snd->add_option("--size", so.size, "Size of each generated segment, e.g. 1KiB")->needs(snd_count);
  snd->add_option("--batch", so.batch, "Segments per request (per protocol batch over ws://)")
      ->check(CLI::Range(1u, 100000u));
  snd->add_option("--window", so.window, "ws://: batches in flight before waiting for an ACK")
      ->check(CLI::Range(1u, 1024u));
  snd->add_option("--ca", so.ca, "wss://: CA certificate to verify the node with");
  snd->add_option("--cert", so.cert, "wss://: client certificate (when the ingest listener requires one)");
  snd->add_option("--key", so.key, "wss://: client private key");
  snd->add_option("--server-name", so.server_name, "wss://: name the node's certificate must carry");
  snd->add_flag("--zstd", so.zstd, "ws://: offer zstd compression of batches");

  dl_options dlo;
  auto* dl = app.add_subcommand("deadletter", "Dead-letter operations through the admin API");
  dl->require_subcommand(1);
  auto* dl_list = dl->add_subcommand("list", "List dead-lettered segments");
  auto* dl_retry = dl->add_subcommand("retry", "Put dead-lettered segments back in their peer's queue");
  auto* dl_purge = dl->add_subcommand("purge", "Delete dead-lettered segments");
  // An empty value (an unset variable in a script) must not drop the filter
  // and widen the operation to every peer.
  const CLI::Validator& non_empty = non_empty_text;
  for (auto* c : {dl_list, dl_retry, dl_purge}) {
    c->add_option("--admin", dlo.admin, "Admin API URL")->capture_default_str();
    c->add_option("--peer", dlo.peer, "Only this peer's entries")->check(non_empty);
  }
  dl_list->add_option("--stream", dlo.stream, "Only this stream")->check(non_empty);
  dl_list->add_option("--reason", dlo.reason, "Only this reason (max_retry, rejected:...)")->check(non_empty);
  dl_list->add_option("--limit", dlo.limit, "At most this many (the node lists at most 10000 per call)")
      ->check(CLI::Range(1u, std::numeric_limits<unsigned>::max()));
  for (auto* c : {dl_retry, dl_purge}) {
    c->add_flag("--all", dlo.all, "Every entry");
    c->add_option("--id", dlo.ids, "These segment ids")->check(non_empty);
    c->add_option("--older-than", dlo.older_than, "Entries dead-lettered longer ago than this, e.g. 7d");
  }

  support_bundle_options sbo;
  std::string sb_config, sb_out;
  std::vector<std::string> sb_logs;
  bool sb_no_journal = false;
  auto* sb = app.add_subcommand("support-bundle",
                                "Collect config (secrets redacted), status, metrics, logs, audit events, evidence "
                                "and versions into one .tar.gz");
  sb->add_option("--config", sb_config, "The node's config file (TOML)");
  sb->add_option("--admin", sbo.admin, "Admin API URL (default: the config's admin.listen, else 127.0.0.1:9310)");
  sb->add_option("--out", sb_out, "Where to write the bundle, e.g. support.tar.gz")->required();
  sb->add_option("--log", sb_logs, "A log file the node's stderr goes to (repeatable); its tail is included");
  sb->add_flag("--no-journal", sb_no_journal, "Do not read the systemd journal");

  impair_cli_options imo;
  auto* imp = app.add_subcommand("impair", "A TCP impairment proxy for tests: delay, jitter, rate, resets, blackhole");
  imp->add_option("--listen", imo.listen, "Listen on this loopback HOST:PORT (port 0: any free port)")->required();
  imp->add_option("--upstream", imo.upstream, "Forward every connection to HOST:PORT")->required();
  imp->add_option("--delay", imo.delay, "One-way latency added to each direction, e.g. 200ms");
  imp->add_option("--jitter", imo.jitter, "Uniform +/- variation of the delay, e.g. 20ms (never reorders)");
  imp->add_option("--rate", imo.rate, "Bandwidth per connection and direction, e.g. 1Mbit or 125KB/s");
  imp->add_option("--reset-after", imo.reset_after, "Reset each connection after forwarding this much, e.g. 64KiB");
  imp->add_option("--max-queue", imo.max_queue, "Delay queue limit per connection and direction (default 4MiB)");
  imp->add_flag("--blackhole", imo.blackhole, "Keep connections open but drop all data");
  imp->add_flag("--refuse", imo.refuse, "Do not listen: connections are refused");

  std::string evidence_in, evidence_out;
  auto* evidence = app.add_subcommand("evidence", "Validation evidence: reports and the evidence matrix");
  evidence->require_subcommand(1);
  auto* ev_matrix =
      evidence->add_subcommand("matrix", "Aggregate a folder of reports into matrix.md and relay-proof-report.json");
  ev_matrix->add_option("--in", evidence_in, "Folder of <claim>.json reports")->required();
  ev_matrix->add_option("--out", evidence_out, "Where to write the matrix (default: the --in folder)");
  evidence_run_options ero;
  auto* ev_run = evidence->add_subcommand("run", "Run the validation scenarios (real processes on loopback)");
  ev_run->add_option("--out", ero.out, "Folder for the <claim>.json reports")->required();
  ev_run->add_option("--claim", ero.claims, "Run only this claim's scenario (repeatable)");
  ev_run->add_flag("--quick", ero.quick, "CI sizes: the whole run in a few minutes");
  std::string ev_network = "loopback";
  auto* ev_export = evidence->add_subcommand("export", "Write a node's canary soak record as RL-SOAK-01.json");
  ev_export->add_option("--admin", admin, "Admin API URL of the node")->required();
  ev_export->add_option("--out", evidence_out, "RL-SOAK-01.json, or a folder to write it into")->required();
  ev_export->add_option("--network", ev_network, "The network the soak's peers used (default: loopback)")
      ->check(non_empty_text);

  bench_tiers_options bto;
  std::string bench_out, bench_dir, bench_queue = "256MiB";
  auto* bench = app.add_subcommand("bench", "Benchmarks of the whole path");
  bench->require_subcommand(1);
  auto* bench_tiers =
      bench->add_subcommand("tiers", "End-to-end throughput tiers T1-T5 (RL-THRU-01), real nodes on loopback");
  bench_tiers->add_option("--out", bench_out, "Write the results as JSON to this file");
  bench_tiers->add_flag("--quick", bto.quick, "A few seconds per tier (CI)");
  bench_tiers->add_option("--tiers", bto.tiers, "Only these tiers, e.g. T1,T3")->delimiter(',');
  bench_tiers->add_option("--dir", bench_dir,
                          "Work directory on a real disk (default: a temporary one, removed after)");
  bench_tiers->add_flag("--keep", bto.keep, "Keep the work directory (node logs, spools)");
  bench_tiers->add_option("--full-seconds", bto.full_seconds, "Length of the full-load phase (default 15, quick 2)")
      ->check(CLI::Range(0.5, 3600.0));
  bench_tiers->add_option("--half-seconds", bto.half_seconds, "Length of the half-load phase (default 10, quick 2)")
      ->check(CLI::Range(0.5, 3600.0));
  bench_tiers->add_option("--producers", bto.producers, "Producer connections per phase (default 2)")
      ->check(CLI::Range(1u, 64u));
  bench_tiers->add_option("--queue", bench_queue,
                          "Each node's queue capacity; a full queue holds the sender back (overflow = block). "
                          "\"unbounded\": the nodes' defaults, a backlog builds and drains (default 256MiB)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  if (*run) return cmd_run(config_file, logo);
  if (*check) return cmd_check(config_file, !check_no_files);
  if (*dm) {
    if (!demo_dir.empty()) demo.dir = demo_dir;
    demo.timeout = std::chrono::seconds(demo_seconds);
    if (!demo_duration.empty()) {
      auto d = util::parse_duration(demo_duration);
      if (!d || *d < std::chrono::seconds(1) || *d > std::chrono::hours(1)) {
        std::cerr << "edgerelay demo: --duration " << util::quote(demo_duration) << ": "
                  << (d ? "must be between 1s and 1h" : d.error().message) << "\n";
        return 2;
      }
      demo.duration = *d;
    }
    return run_demo(demo);
  }
  if (*sd) {
    if (!sdemo_dir.empty()) sdemo.dir = sdemo_dir;
    return run_store_demo(sdemo);
  }
  if (*pki_init_cmd) {
    transport::pki_options po;
    po.overwrite = pki_force;
    auto r = transport::pki_init(pki_dir, po);
    if (!r) {
      std::cerr << "edgerelay pki init: " << r.error().message << "\n";
      return 1;
    }
    std::cout << "wrote ca.pem, server.pem/key, client.pem/key, crl.pem in " << pki_dir << "\n";
    return 0;
  }
  if (*st) return cmd_status(admin, as_json);
  if (*snd) {
    so.window_set = snd->count("--window") > 0;
    return cmd_send(so);
  }
  if (*dl_list) return cmd_deadletter("list", dlo);
  if (*dl_retry) return cmd_deadletter("retry", dlo);
  if (*dl_purge) return cmd_deadletter("purge", dlo);
  if (*cat) return cmd_spool_cat(spool_dir, as_json);
  if (*imp) return cmd_impair(imo);
  if (*bench_tiers) {
    if (!bench_out.empty()) bto.out = bench_out;
    if (!bench_dir.empty()) bto.dir = bench_dir;
    if (bench_queue == "unbounded") {
      bto.queue_max_bytes = 0;
    } else {
      auto q = util::parse_size(bench_queue);
      if (!q || *q < (1u << 20)) {
        std::cerr << "edgerelay bench tiers: --queue \"" << bench_queue
                  << "\": " << (q ? std::string("must be at least 1MiB (or \"unbounded\")") : q.error().message)
                  << "\n";
        return 2;
      }
      bto.queue_max_bytes = *q;
    }
    return run_bench_tiers(bto);
  }
  if (*sb) {
    if (!sb_config.empty()) sbo.config = sb_config;
    sbo.out = sb_out;
    for (auto& l : sb_logs)
      sbo.logs.emplace_back(l);
    sbo.journal = !sb_no_journal;
    return cmd_support_bundle(sbo);
  }
  if (*ev_matrix) return cmd_evidence_matrix(evidence_in, evidence_out.empty() ? evidence_in : evidence_out);
  if (*ev_run) return cmd_evidence_run(ero);
  if (*ev_export) return cmd_evidence_export(admin, evidence_out, ev_network);
  return 2;
}

} // namespace edgerelay::relay
