#include "relay/demo.hpp"

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "relay/node.hpp"
#include "relay/spool.hpp"
#include "transport/pki.hpp"
#include "util/bytes.hpp"
#include "util/checksum.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <thread>
#include <unistd.h>

namespace edgerelay::relay {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;

void bar(const char* what, std::uint64_t done, std::uint64_t total, bool show) {
  if (!show || !::isatty(2)) return;
  int width = 40, filled = total ? static_cast<int>(width * std::min(done, total) / total) : width;
  std::fprintf(stderr, "\r  %-24s [%s%s] %llu/%llu", what, std::string(static_cast<std::size_t>(filled), '#').c_str(),
               std::string(static_cast<std::size_t>(width - filled), '.').c_str(),
               static_cast<unsigned long long>(done), static_cast<unsigned long long>(total));
  if (done >= total) std::fprintf(stderr, "\n");
}

std::string q(const std::filesystem::path& p) { return "\"" + p.string() + "\""; }

boost::system::result<std::unique_ptr<node>, std::string> start_node(const std::string& toml, const std::string& name,
                                                                     const std::filesystem::path& dir) {
  auto cfg = parse_config(toml, name, dir);
  if (!cfg) return to_string(cfg.error());
  auto n = node::create(std::move(*cfg), nullptr, 2);
  if (!n) return n.error().message;
  if (auto r = (*n)->start(); !r) return r.error().message;
  return std::move(*n);
}

void print_status(const char* label, const json::object& s) {
  auto& t = s.at("totals").as_object();
  auto u = [&](const char* k) { return static_cast<unsigned long long>(t.at(k).to_number<std::int64_t>()); };
  std::printf("  %-5s accepted %7llu  delivered %7llu  queued %5llu  deadletter %4llu  evicted %3llu  "
              "duplicates %4llu  loss %lld\n",
              label, u("accepted"), u("delivered"), u("queued"), u("deadletter"), u("evicted"), u("duplicates"),
              static_cast<long long>(t.at("loss").to_number<std::int64_t>()));
  for (auto& pv : s.at("peers").as_array()) {
    auto& p = pv.as_object();
    std::printf("        peer %-6s %-10s routed %6lld  delivered %6lld  wire bytes %lld\n",
                std::string(p.at("name").as_string()).c_str(), std::string(p.at("state").as_string()).c_str(),
                static_cast<long long>(p.at("routed").to_number<std::int64_t>()),
                static_cast<long long>(p.at("delivered").to_number<std::int64_t>()),
                static_cast<long long>(p.at("last_conn_bytes").to_number<std::int64_t>()));
  }
}

} // namespace

namespace {

std::optional<std::string> claim_demo_dir(const std::filesystem::path& dir, const std::string& marker,
                                          std::initializer_list<std::string_view> own) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::exists(fs::symlink_status(dir, ec))) {
    if (!fs::is_directory(fs::symlink_status(dir, ec))) return dir.string() + " exists and is not a directory";
    bool ours = fs::exists(dir / marker, ec), only_own = true;
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
      only_own = only_own && std::find(own.begin(), own.end(), it->path().filename().string()) != own.end();
    if (ec) return "cannot read " + dir.string() + ": " + ec.message();
    if (!ours && !only_own)
      return dir.string() + " is not empty and was not made by this demo (no " + marker +
             " in it): name a new or empty directory; nothing was changed";
    // The marker stays until the rest is gone: a run stopped half-way can
    // still be repeated.
    for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec))
      if (it->path().filename() != marker) fs::remove_all(it->path(), ec);
    if (ec) return "cannot empty " + dir.string() + ": " + ec.message();
  } else if (!fs::create_directories(dir, ec) || ec) {
    return "cannot create " + dir.string() + ": " + (ec ? ec.message() : std::string("unknown error"));
  }
  std::ofstream m(dir / marker);
  m << "made by edgerelay; the next run of the same demo with this --dir empties it\n";
  if (!m.flush()) return "cannot write " + (dir / marker).string();
  return std::nullopt;
}

} // namespace

demo_dir open_demo_dir(const std::optional<std::filesystem::path>& wanted, const std::string& demo,
                       std::initializer_list<std::string_view> own) {
  demo_dir d;
  if (wanted) {
    // Absolute: the configs written into it resolve relative paths against their own directory.
    d.path = std::filesystem::absolute(*wanted).lexically_normal();
    if (auto refused = claim_demo_dir(d.path, ".edgerelay-" + demo, own)) {
      d.error = "--dir: " + *refused;
      d.exit_code = 2;
    }
    return d;
  }
  std::string tmpl = (std::filesystem::temp_directory_path() / ("edgerelay-" + demo + "-XXXXXX")).string();
  if (!::mkdtemp(tmpl.data())) {
    d.error = "cannot create a temporary directory: " + std::string(std::strerror(errno));
    d.exit_code = 1;
    return d;
  }
  d.path = tmpl;
  return d;
}

int run_demo(const demo_options& o) {
  namespace fs = std::filesystem;
  bool temp = !o.dir;
  std::error_code ec;
  auto opened = open_demo_dir(o.dir, "demo", {"pki", "hub", "edge", "hub.toml", "edge.toml"});
  if (!opened.error.empty()) {
    std::cerr << "edgerelay demo: " << opened.error << "\n";
    return opened.exit_code;
  }
  const fs::path dir = opened.path;
  auto cleanup = [&] {
    if (temp) fs::remove_all(dir, ec);
  };
  std::cout << "edgerelay demo: an edge and a hub on loopback over mutual TLS, in " << dir.string() << "\n";

  auto pki = transport::pki_init(dir / "pki");
  if (!pki) {
    std::cerr << "demo: pki init failed: " << pki.error().message << "\n";
    return 1;
  }
  std::cout << "  dev PKI: CA, hub server cert (localhost, 127.0.0.1), edge client cert "
               "(spiffe://edgerelay/edge/demo), CRL\n";

  const std::string hub_toml = "[node]\nid = \"hub\"\ndata_dir = " + q(dir / "hub" / "data") +
                               "\n[listen]\naddress = \"127.0.0.1:0\"\ncert = " + q(pki->server_cert) +
                               "\nkey = " + q(pki->server_key) + "\nca = " + q(pki->ca_cert) +
                               "\ncrl = " + q(pki->crl) +
                               "\nallow = [\"URI:spiffe://edgerelay/edge/*\"]\n[admin]\nlisten = "
                               "\"127.0.0.1:0\"\n[evidence]\ncanary_interval = \"0s\"\n[[peer]]\nname = "
                               "\"spool\"\nurl = \"file://" +
                               (dir / "hub" / "spool").string() + "\"\n";
  std::ofstream(dir / "hub.toml") << hub_toml; // to read, or to start by hand (see README)
  auto hub = start_node(hub_toml, "hub.toml", dir);
  if (!hub) {
    std::cerr << "demo: hub did not start: " << hub.error() << "\n";
    cleanup();
    return 1;
  }
  auto hub_addr = (*hub)->address("listen");
  const std::string edge_toml =
      "[node]\nid = \"edge\"\ndata_dir = " + q(dir / "edge" / "data") +
      "\n[queue]\nmax_retry = 20\nretry_backoff = {initial = \"100ms\", max = \"2s\", multiplier = 2.0, jitter = 0.2}\n"
      "[ingest]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[[peer]]\nname = \"hub\"\nurl = "
      "\"wss://" +
      hub_addr + "/v1/relay\"\nserver_name = \"localhost\"\ncert = " + q(pki->client_cert) +
      "\nkey = " + q(pki->client_key) + "\nca = " + q(pki->ca_cert) + "\ncrl = " + q(pki->crl) +
      "\ncompression = \"zstd\"\nwindow = 8\nbatch_max_bytes = \"1MiB\"\n"
      // The canary soak, one round a second through the hub (which verifies
      // the canaries and keeps them out of its spool): the evidence below.
      "[evidence]\ncanary_interval = \"1s\"\n";
  std::ofstream(dir / "edge.toml") << edge_toml;
  auto edge = start_node(edge_toml, "edge.toml", dir);
  if (!edge) {
    std::cerr << "demo: edge did not start: " << edge.error() << "\n";
    cleanup();
    return 1;
  }
  std::cout << "  hub  relay listener wss://" << hub_addr << "/v1/relay (mTLS), spool "
            << (dir / "hub" / "spool").string() << "\n  edge ingest http://" << (*edge)->address("ingest")
            << " -> peer hub\n";

  // A mixed workload: many small segments in batches, some large ones alone.
  // With a duration, the same mix paced at about 200 segments/s (a batch of
  // up to 20 every 100 ms) until it has passed.
  std::mt19937_64 rng(42);
  const auto start = std::chrono::steady_clock::now();
  const auto until = o.duration ? start + *o.duration : start;
  auto more = [&](unsigned i) { return o.duration ? std::chrono::steady_clock::now() < until : i < o.segments; };
  std::map<std::string, std::uint64_t> sent; // id -> checksum
  const std::string ingest = "http://" + (*edge)->address("ingest");
  const char* streams[] = {"telemetry", "logs.app", "video-meta"};
  std::uint64_t bytes = 0;
  bool failed = false;
  for (unsigned i = 0; more(i) && !failed;) {
    if (o.duration) std::this_thread::sleep_until(start + (i / 20 + 1) * 100ms);
    bool large = rng() % 10 == 0;
    unsigned n = large ? 1 : o.duration ? 20u - i % 20 : std::min(50u, o.segments - i);
    std::string body;
    std::vector<std::string> payloads;
    for (unsigned j = 0; j < n; ++j) {
      std::size_t size = large ? (64u << 10) + rng() % (960u << 10) : 1 + rng() % 2048;
      std::string p(size, '\0');
      for (auto& c : p)
        c = static_cast<char>(rng() % 64 + 32);
      if (!large) {
        util::writer(body).u32(static_cast<std::uint32_t>(p.size()));
        body += p;
      }
      payloads.push_back(std::move(p));
    }
    const char* stream = streams[rng() % 3];
    auto r = large ? http_call("POST", ingest + "/v1/streams/" + stream + "/segments", payloads[0])
                   : http_call("POST", ingest + "/v1/streams/" + stream + "/batch", body);
    if (!r || r->status != 201) {
      std::cerr << "\ndemo: ingest failed: " << (r ? std::to_string(r->status) + " " + r->body : r.error().message)
                << "\n";
      failed = true;
      break;
    }
    auto j = json::parse(r->body).as_object();
    std::vector<std::string> ids;
    if (large)
      ids.emplace_back(j.at("id").as_string());
    else
      for (auto& v : j.at("ids").as_array())
        ids.emplace_back(v.as_string());
    for (std::size_t k = 0; k < ids.size(); ++k) {
      sent[ids[k]] = util::checksum(payloads[k]);
      bytes += payloads[k].size();
    }
    i += n;
    if (o.duration) {
      auto ms = [](auto d) {
        return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(d).count());
      };
      bar("producer -> edge (ms)", std::min(ms(std::chrono::steady_clock::now() - start), ms(*o.duration)),
          ms(*o.duration), o.progress);
    } else {
      bar("producer -> edge", i, o.segments, o.progress);
    }
  }

  // Wait until the hub's spool holds everything, then check each segment.
  std::map<std::string, int> seen;
  std::uint64_t bad = 0;
  auto deadline = std::chrono::steady_clock::now() + o.timeout;
  while (!failed) {
    seen.clear();
    bad = 0;
    read_spool(dir / "hub" / "spool", [&](const spool_record& r) {
      ++seen[r.id];
      auto it = sent.find(r.id);
      if (it == sent.end() || it->second != r.checksum || util::checksum(r.payload) != r.checksum) ++bad;
      return true;
    });
    bar("edge -> hub (mTLS) -> spool", seen.size(), sent.size(), o.progress);
    if (seen.size() >= sent.size() || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(100ms);
  }
  std::uint64_t missing = 0, dup = 0;
  for (auto& [id, c] : sent) {
    auto it = seen.find(id);
    if (it == seen.end())
      ++missing;
    else if (it->second > 1)
      dup += static_cast<std::uint64_t>(it->second - 1);
  }
  // Let the acks settle so the edge's counters show the deliveries, and let
  // the soak close a round (one a second) if none has closed yet.
  std::this_thread::sleep_for(300ms);
  auto soak_at = [&](const char* key) { return (*edge)->soak_report().at(key).to_number<std::int64_t>(); };
  for (int k = 0; k < 30 && !failed && soak_at("rounds") < 1; ++k)
    std::this_thread::sleep_for(100ms);
  auto es = (*edge)->status(), hs = (*hub)->status();
  auto soak = (*edge)->soak_report(), checked = (*hub)->soak_report();
  std::printf("\n  %zu segments, %.1f MB, sent to the edge; at the hub's spool: %zu distinct, %llu missing, "
              "%llu duplicated, %llu bad checksums\n\n",
              sent.size(), static_cast<double>(bytes) / 1e6, seen.size(), static_cast<unsigned long long>(missing),
              static_cast<unsigned long long>(dup), static_cast<unsigned long long>(bad));
  print_status("edge", es);
  print_status("hub", hs);
  auto num = [](const json::object& obj, const char* k) {
    return static_cast<long long>(obj.at(k).to_number<std::int64_t>());
  };
  auto& ver = checked.at("verifier").as_object();
  auto& lat = soak.at("latency_ms").as_object();
  std::printf("\n  evidence (the canary soak, docs/soak.md):\n"
              "    edge  %lld rounds, %lld clean (rate %.3f), canaries sent %lld, delivered %lld, loss %lld, "
              "latency p50 %.1f ms, p99 %.1f ms\n"
              "    hub   verifier received %lld canaries: %lld gaps, %lld duplicates, %lld corrupt\n"
              "    Gate D (RL-SOAK-01) needs 1,440 rounds at a clean rate of 0.990 with no loss on a wall clock:\n"
              "    this is a smoke check of the soak, not the claim (`edgerelay evidence export` takes a live "
              "node's record to the matrix)\n",
              num(soak, "rounds"), num(soak, "clean_rounds"), soak.at("clean_delivery_rate").to_number<double>(),
              num(soak, "segments_sent"), num(soak, "segments_delivered"), num(soak, "loss"),
              lat.at("p50").to_number<double>(), lat.at("p99").to_number<double>(), num(ver, "received"),
              num(ver, "gaps"), num(ver, "duplicates"), num(ver, "corrupt"));
  bool ok = !failed && missing == 0 && dup == 0 && bad == 0 &&
            es.at("totals").at("loss").to_number<std::int64_t>() == 0 &&
            hs.at("totals").at("loss").to_number<std::int64_t>() == 0 && num(soak, "loss") == 0 &&
            num(ver, "duplicates") == 0 && num(ver, "corrupt") == 0;
  std::printf("\n  result: %s\n", ok ? "every segment delivered exactly once, loss = 0" : "FAILED");
  (*edge)->stop();
  (*hub)->stop();
  edge->reset();
  hub->reset();
  cleanup();
  return ok ? 0 : 1;
}

} // namespace edgerelay::relay
