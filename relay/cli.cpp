#include "relay/cli.hpp"

#include "relay/config.hpp"
#include "relay/demo.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "relay/spool.hpp"
#include "relay/store_demo.hpp"
#include "transport/pki.hpp"
#include "util/checksum.hpp"

#include <CLI/CLI.hpp>
#include <boost/json.hpp>

#include <csignal>
#include <iostream>

namespace edgerelay::relay {

namespace {

std::string base64(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8) |
                 static_cast<unsigned char>(in[i + 2]);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
  }
  if (i + 1 == in.size()) {
    unsigned v = static_cast<unsigned char>(in[i]) << 16;
    out += {t[v >> 18], t[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    unsigned v = (static_cast<unsigned char>(in[i]) << 16) | (static_cast<unsigned char>(in[i + 1]) << 8);
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], '='};
  }
  return out;
}

int cmd_run(const std::string& file) {
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
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  auto n = node::create(std::move(*cfg));
  if (!n) {
    std::cerr << "edgerelay: " << n.error().message << "\n";
    return 1;
  }
  if (auto r = (*n)->start(); !r) {
    std::cerr << "edgerelay: " << r.error().message << "\n";
    return 1;
  }
  std::cerr << "edgerelay: node running: admin " << (*n)->address("admin");
  for (const char* l : {"ingest", "listen"})
    if (auto a = (*n)->address(l); !a.empty()) std::cerr << ", " << l << " " << a;
  std::cerr << std::endl;
  int sig = 0;
  sigwait(&set, &sig);
  std::cerr << "edgerelay: stopping on signal " << sig << "\n";
  (*n)->stop();
  return 0;
}

int cmd_check(const std::string& file) {
  auto cfg = load_config(file);
  if (!cfg) {
    std::cerr << to_string(cfg.error());
    return 2;
  }
  std::cout << file << ": ok (" << cfg->peers.size() << " peers)\n";
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
  auto n = read_spool(dir, [&](const spool_record& r) {
    if (as_json) {
      boost::json::object o{{"id", r.id},
                            {"stream", r.stream},
                            {"created_at", r.created_ms},
                            {"checksum", util::checksum_hex(r.checksum)},
                            {"payload_base64", base64(r.payload)}};
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

} // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{"edgerelay: a store-and-forward relay node for edge hardware"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("edgerelay ") + EDGERELAY_VERSION);

  std::string config_file;
  auto* run = app.add_subcommand("run", "Run a node in the foreground");
  run->add_option("--config", config_file, "Config file (TOML)")->required();
  auto* check = app.add_subcommand("check-config", "Validate a config file; print every problem");
  check->add_option("--config", config_file, "Config file (TOML)")->required();

  demo_options demo;
  std::string demo_dir;
  int demo_seconds = 120;
  auto* dm = app.add_subcommand("demo", "A dev PKI, an edge and a hub on loopback over mTLS, traffic, and the result");
  dm->add_option("--dir", demo_dir, "Keep everything in this directory (default: a temporary one, removed after)");
  dm->add_option("--segments", demo.segments, "How many segments to send")->check(CLI::Range(1u, 10000000u));
  dm->add_option("--timeout", demo_seconds, "Seconds to wait for delivery")->check(CLI::Range(1, 86400));
  dm->add_flag("!--no-progress", demo.progress, "Do not draw progress bars");

  store_demo_options sdemo;
  std::string sdemo_dir;
  auto* sd = app.add_subcommand("store-demo", "Exercise the durable queue alone and print its accounting");
  sd->add_option("--dir", sdemo_dir, "Keep the store in this directory (default: a temporary one, removed after)");
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
  st->add_option("--admin", admin, "Admin API URL");
  st->add_flag("--json", as_json, "Print the raw JSON");

  std::string spool_dir;
  auto* spool = app.add_subcommand("spool", "Read a file:// sink's spool");
  spool->require_subcommand(1);
  auto* cat = spool->add_subcommand("cat", "Print every segment in a spool directory");
  cat->add_option("dir", spool_dir, "The spool directory")->required();
  cat->add_flag("--json", as_json, "One JSON object per segment (id, stream, created_at, checksum, payload_base64)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  if (*run) return cmd_run(config_file);
  if (*check) return cmd_check(config_file);
  if (*dm) {
    if (!demo_dir.empty()) demo.dir = demo_dir;
    demo.timeout = std::chrono::seconds(demo_seconds);
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
  if (*cat) return cmd_spool_cat(spool_dir, as_json);
  return 2;
}

} // namespace edgerelay::relay
