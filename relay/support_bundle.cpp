#include "relay/support_bundle.hpp"

#include "relay/config.hpp"
#include "relay/http_client.hpp"
#include "telemetry/audit.hpp"
#include "util/units.hpp"

#include <CLI/Version.hpp>
#include <boost/json.hpp>
#include <boost/version.hpp>
#include <lmdb.h>
#include <openssl/crypto.h>
#include <openssl/opensslv.h>
#include <spdlog/version.h>
#include <toml.hpp>
#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <fcntl.h>
#include <fstream>
#include <link.h>
#include <map>
#include <random>
#include <set>
#include <spawn.h>
#include <sstream>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

extern char** environ;

namespace edgerelay::relay {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

// ------------------------------------------------------------ redaction

using ovalue = toml::basic_value<toml::discard_comments, std::map, std::vector>;

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool is_secret_name(std::string_view key) {
  auto k = lower(key);
  for (const char* w : {"password", "passwd", "passphrase", "secret", "token", "credential"})
    if (k.find(w) != std::string::npos) return true;
  return false;
}

bool is_key_name(std::string_view key) {
  auto k = lower(key);
  return k == "key" || k.ends_with("_key") || k.ends_with("-key") || k.ends_with("keyfile") || k.ends_with("key_file");
}

bool has_pem(std::string_view s) { return s.find("-----BEGIN") != std::string_view::npos; }

// A path, not key material: one line, no PEM marker, no run of 48 or more
// base64 characters (path components are short; encoded keys are not).
bool looks_like_path(std::string_view s) {
  if (s.empty() || s.size() > 4096 || has_pem(s) || s.find_first_of("\r\n") != std::string_view::npos) return false;
  std::size_t run = 0;
  for (char c : s) {
    bool b64 = std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '=';
    run = b64 ? run + 1 : 0;
    if (run >= 48) return false;
  }
  return true;
}

void collect_strings(const ovalue& v, std::vector<std::string>& out) {
  if (v.is_string())
    out.push_back(v.as_string().str);
  else if (v.is_array())
    for (auto& e : v.as_array())
      collect_strings(e, out);
  else if (v.is_table())
    for (auto& [k, e] : v.as_table())
      collect_strings(e, out);
}

void redact_walk(ovalue& v, const std::string& path, redacted_config& r) {
  auto redact = [&](ovalue& x, const std::string& at, const char* marker) {
    collect_strings(x, r.secrets);
    x = ovalue(std::string(marker));
    r.redacted_keys.push_back(at);
  };
  if (v.is_table()) {
    for (auto& [k, child] : v.as_table()) {
      std::string at = path.empty() ? k : path + "." + k;
      if (is_secret_name(k))
        redact(child, at, "<redacted>");
      else if (is_key_name(k) && !(child.is_string() && looks_like_path(child.as_string().str)) &&
               !(child.is_array() || child.is_table()))
        redact(child, at, "<redacted: not a path>");
      else
        redact_walk(child, at, r);
    }
  } else if (v.is_array()) {
    auto& a = v.as_array();
    for (std::size_t i = 0; i < a.size(); ++i)
      redact_walk(a[i], path + "[" + std::to_string(i) + "]", r);
  } else if (v.is_string() && has_pem(v.as_string().str)) {
    redact(v, path, "<redacted: PEM block>");
  }
}

// ------------------------------------------------------------ files and processes

std::string read_file_text(const fs::path& p, std::uint64_t max_tail, std::string* err) {
  if (std::error_code dec; fs::is_directory(p, dec)) {
    *err = "cannot read " + p.string() + ": it is a directory, not a file";
    return {};
  }
  std::ifstream in(p, std::ios::binary);
  if (!in) {
    *err = "cannot read " + p.string() + ": " + std::strerror(errno);
    return {};
  }
  in.seekg(0, std::ios::end);
  auto size = static_cast<std::uint64_t>(in.tellg());
  auto from = size > max_tail ? size - max_tail : 0;
  in.seekg(static_cast<std::streamoff>(from));
  std::string s((std::istreambuf_iterator<char>(in)), {});
  if (from > 0) {
    auto nl = s.find('\n');
    s = nl == std::string::npos ? std::string() : s.substr(nl + 1);
  }
  return s;
}

bool write_text(const fs::path& p, std::string_view s, std::string* err) {
  std::error_code ec;
  fs::create_directories(p.parent_path(), ec);
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(s.data(), static_cast<std::streamsize>(s.size()));
  out.close();
  if (!out) {
    *err = "cannot write " + p.string();
    return false;
  }
  return true;
}

struct run_result {
  int code = -1;   // exit status; -1 not started or killed
  std::string why; // why it could not run or was killed
  std::string err; // its stderr (first 4 KiB)
};

// Runs argv[0] (looked up in PATH, no shell) with stdout into out_file,
// killed after `limit`.
run_result run_program(const std::vector<std::string>& argv, const fs::path& out_file, const fs::path& err_file,
                       std::chrono::milliseconds limit) {
  run_result r;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&fa, 2, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  std::vector<char*> args;
  for (auto& a : argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    r.why = argv[0] + ": cannot run: " + std::strerror(rc);
    return r;
  }
  int status = 0;
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    pid_t w = ::waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) {
      r.why = argv[0] + ": waitpid: " + std::strerror(errno);
      return r;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      r.why = argv[0] + ": still running after " + std::to_string(limit.count()) + " ms: killed";
      return r;
    }
    std::this_thread::sleep_for(20ms);
  }
  std::string ignored;
  r.err = read_file_text(err_file, 4096, &ignored);
  if (WIFEXITED(status))
    r.code = WEXITSTATUS(status);
  else
    r.why = argv[0] + ": ended by signal " + std::to_string(WTERMSIG(status));
  return r;
}

std::string first_line(std::string_view s) {
  auto nl = s.find('\n');
  return std::string(s.substr(0, nl));
}

// ------------------------------------------------------------ versions

int on_object(struct dl_phdr_info* info, size_t, void* data) {
  auto* out = static_cast<std::vector<std::string>*>(data);
  if (info->dlpi_name && *info->dlpi_name) {
    std::string name = info->dlpi_name;
    std::error_code ec;
    auto real = fs::canonical(name, ec);
    out->push_back(ec || real == name ? name : name + " -> " + real.string());
  }
  return 0;
}

std::string versions_text() {
  std::ostringstream o;
  o << "edgerelay " << EDGERELAY_VERSION << "\n";
  o << "compiler " << __VERSION__ << " (C++ " << __cplusplus << ")\n";
  o << "openssl " << OpenSSL_version(OPENSSL_VERSION) << " (built with " << OPENSSL_VERSION_TEXT << ")\n";
  int maj = 0, min = 0, patch = 0;
  o << "lmdb " << mdb_version(&maj, &min, &patch) << "\n";
  o << "boost " << BOOST_VERSION / 100000 << "." << BOOST_VERSION / 100 % 1000 << "." << BOOST_VERSION % 100 << "\n";
  o << "zstd " << ZSTD_versionString() << " (built with " << ZSTD_VERSION_STRING << ")\n";
  o << "xxhash " << XXH_versionNumber() / 10000 << "." << XXH_versionNumber() / 100 % 100 << "."
    << XXH_versionNumber() % 100 << "\n";
  o << "spdlog " << SPDLOG_VER_MAJOR << "." << SPDLOG_VER_MINOR << "." << SPDLOG_VER_PATCH << "\n";
  o << "cli11 " << CLI11_VERSION << "\n";
  o << "toml11 " << TOML11_VERSION_MAJOR << "." << TOML11_VERSION_MINOR << "." << TOML11_VERSION_PATCH << "\n";
  struct utsname u {};
  if (::uname(&u) == 0) o << "kernel " << u.sysname << " " << u.release << " " << u.version << " " << u.machine << "\n";
  std::error_code ec;
  auto self = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) o << "binary " << self.string() << "\n";
  o << "\n# shared objects mapped into this process (dl_iterate_phdr), in load order\n";
  std::vector<std::string> objs;
  dl_iterate_phdr(on_object, &objs);
  for (auto& s : objs)
    o << s << "\n";
  return o.str();
}

std::string utc_stamp() {
  auto s = util::format_utc(std::chrono::system_clock::now()); // 2026-11-23T15:40:01.123Z
  std::string out;
  for (char c : s.substr(0, 19))
    if (c != '-' && c != ':') out.push_back(c);
  return out + "Z";
}

bool safe_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'; }

} // namespace

boost::system::result<redacted_config, std::string> redact_config(std::string_view toml_text) {
  ovalue root;
  try {
    std::istringstream in{std::string(toml_text)};
    root = toml::parse<toml::discard_comments, std::map, std::vector>(in, "config");
  } catch (const std::exception&) {
    // toml11's message quotes the offending line, which may hold a secret.
    return boost::system::result<redacted_config, std::string>(boost::system::in_place_error,
                                                               "not valid TOML (check-config names the problem)");
  }
  redacted_config r;
  redact_walk(root, "", r);
  r.text = toml::format(root);
  std::sort(r.secrets.begin(), r.secrets.end());
  r.secrets.erase(std::unique(r.secrets.begin(), r.secrets.end()), r.secrets.end());
  return r;
}

std::string scrub(std::string_view s, const std::vector<std::string>& secrets) {
  std::string out;
  out.reserve(s.size());
  for (;;) {
    auto b = s.find("-----BEGIN");
    if (b == std::string_view::npos) {
      out.append(s);
      break;
    }
    out.append(s.substr(0, b));
    out.append("<redacted: PEM block>");
    auto e = s.find("-----END", b);
    if (e == std::string_view::npos) break;
    auto close = s.find("-----", e + 8);
    s.remove_prefix(close == std::string_view::npos ? s.size() : close + 5);
  }
  for (auto& sec : secrets) {
    if (sec.size() < 4) continue;
    for (auto at = out.find(sec); at != std::string::npos; at = out.find(sec, at + 10))
      out.replace(at, sec.size(), "<redacted>");
  }
  return out;
}

boost::system::result<support_bundle_report, error> write_support_bundle(const support_bundle_options& o) {
  if (o.out.empty()) return error{make_error_code(errc::invalid_argument), "--out: an output file is required"};
  support_bundle_report rep;
  auto item = [&](std::string name, bool ok, std::string note) {
    rep.items.push_back({std::move(name), ok, std::move(note)});
  };

  // Staging: a private directory next to the output (same file system, so
  // the final rename is atomic), removed at the end whatever happens.
  auto out_abs = fs::absolute(o.out).lexically_normal();
  // Never replace a file: --out naming the config (or anything else) would
  // destroy it.
  auto exists_error = [&] {
    std::error_code xec;
    return error{make_error_code(errc::invalid_argument),
                 "--out " + out_abs.string() + " already exists (a " +
                     (fs::is_directory(fs::symlink_status(out_abs, xec)) ? "directory" : "file") +
                     "): the bundle never replaces anything; remove it or name another"};
  };
  if (std::error_code xec; fs::exists(fs::symlink_status(out_abs, xec))) return exists_error();
  std::random_device rd;
  auto staging = out_abs.parent_path() / (".edgerelay-bundle-" + std::to_string(rd()) + std::to_string(rd()));
  std::error_code ec;
  if (!fs::create_directory(staging, ec) || ec)
    return error{ec ? boost::system::error_code(ec) : make_error_code(errc::invalid_argument),
                 "cannot create a staging directory in " + out_abs.parent_path().string() + ": " +
                     (ec ? ec.message() : std::string("it exists"))};
  fs::permissions(staging, fs::perms::owner_all, ec);
  struct cleanup {
    fs::path p;
    ~cleanup() {
      std::error_code e;
      fs::remove_all(p, e);
    }
  } cleaner{staging};

  // The config first: it names the node, the admin API, the audit log and the evidence directory.
  std::optional<node_config> cfg;
  bool config_read = false; // the --config file could be read (whether or not it loads)
  std::vector<std::string> secrets;
  std::string node_id;
  std::string werr;
  std::vector<std::pair<std::string, std::string>> files; // bundle path -> content (scrubbed at the end)
  if (o.config) {
    std::string err;
    auto text = read_file_text(*o.config, 16ull << 20, &err);
    config_read = err.empty();
    if (!err.empty()) {
      item("config/", false, err);
    } else {
      auto red = redact_config(text);
      auto name = "config/" + o.config->filename().string();
      if (!red) {
        item(name, false, o.config->string() + ": " + red.error() + "; not included because it cannot be redacted");
      } else {
        secrets = red->secrets;
        std::string head = "# " + o.config->string() + ", redacted by edgerelay support-bundle: comments dropped";
        for (auto& k : red->redacted_keys)
          head += "\n# redacted: " + k;
        files.emplace_back(name, head + "\n\n" + red->text);
        item(name, true,
             "the config file, " + std::to_string(red->redacted_keys.size()) + " value(s) redacted, paths kept");
      }
      auto loaded = load_config(*o.config);
      if (loaded) {
        cfg = *loaded;
        node_id = cfg->node.id;
        files.emplace_back("config/check.txt",
                           o.config->string() + ": ok (" + std::to_string(cfg->peers.size()) + " peers)\n");
      } else {
        files.emplace_back("config/check.txt", to_string(loaded.error()));
      }
      item("config/check.txt", true, "what check-config says about the file");
    }
  } else {
    item("config/", false, "no --config given: no config, audit log or evidence reports collected");
  }

  // The admin API.
  std::string admin = o.admin;
  if (admin.empty() && cfg) {
    auto ep = cfg->admin.listen;
    if (ep.host == "0.0.0.0") ep.host = "127.0.0.1";
    if (ep.host == "::") ep.host = "::1";
    admin = (cfg->admin.tls ? "https://" : "http://") + ep.to_string();
  }
  // A config was given but cannot be read: its node's admin address is
  // unknown, and the default one may be another node's on this host, whose
  // status would then be bundled as this node's. Ask for --admin instead.
  const bool admin_unknown = admin.empty() && o.config && !cfg;
  if (admin.empty()) admin = "http://127.0.0.1:9310";
  while (!admin.empty() && admin.back() == '/')
    admin.pop_back();
  bool admin_up = true;
  auto fetch = [&](const std::string& target, const std::string& name, const std::string& what) {
    if (admin.starts_with("https://")) {
      item(name, false,
           "the admin API at " + admin +
               " requires mTLS, which support-bundle does not speak; use curl with a client "
               "certificate");
      return;
    }
    if (admin_unknown) {
      item(name, false,
           "not collected: the config does not load (" +
               std::string(config_read ? "config/check.txt says why" : "the file cannot be read") +
               "), so this node's admin address is unknown; run again with --admin URL");
      return;
    }
    if (!admin_up) {
      item(name, false, "admin API " + admin + " unreachable (see above)");
      return;
    }
    auto r = http_call("GET", admin + target, {}, o.timeout);
    if (!r) {
      admin_up = false;
      item(name, false, "admin API " + admin + " unreachable: " + r.error().message);
      return;
    }
    if (r->status != 200) {
      item(name, false, "GET " + admin + target + " answered HTTP " + std::to_string(r->status));
      return;
    }
    if (name == "status.json" && node_id.empty()) {
      boost::system::error_code jec;
      auto v = boost::json::parse(r->body, jec);
      if (!jec && v.is_object())
        if (auto* n = v.as_object().if_contains("node"); n && n->is_object())
          if (auto* id = n->as_object().if_contains("id"); id && id->is_string()) node_id = id->as_string().c_str();
    }
    files.emplace_back(name, r->body);
    item(name, true, what + " (GET " + admin + target + ")");
  };
  fetch("/v1/status", "status.json", "the node's status");
  fetch("/metrics", "metrics.txt", "the Prometheus metrics");
  fetch("/v1/deadletter?limit=1000", "deadletter.json", "the first 1000 dead-letter entries (no payloads)");
  fetch("/v1/evidence/soak", "soak.json", "the soak report");

  // Logs.
  if (o.journal) {
    auto out = staging / "journal.out", errf = staging / "journal.err";
    auto r = run_program(
        {"journalctl", "--no-pager", "--quiet", "--output=short-iso", "--lines=5000", "--unit", "edgerelay.service"},
        out, errf, o.timeout);
    std::string rerr;
    auto text = r.why.empty() ? read_file_text(out, 32ull << 20, &rerr) : std::string();
    std::error_code rmec;
    fs::remove(out, rmec);
    fs::remove(errf, rmec);
    if (!r.why.empty())
      item("logs/journal.txt", false, r.why);
    else if (r.code != 0)
      item("logs/journal.txt", false,
           "journalctl exited " + std::to_string(r.code) + ": " + first_line(scrub(r.err, secrets)));
    else if (text.find_first_not_of(" \n") == std::string::npos)
      item("logs/journal.txt", false, "the journal holds no entries of edgerelay.service (not run by systemd here?)");
    else {
      files.emplace_back("logs/journal.txt", text);
      item("logs/journal.txt", true, "the last 5000 journal lines of edgerelay.service");
    }
  } else {
    item("logs/journal.txt", false, "journal not read (--no-journal)");
  }
  std::set<std::string> used;
  for (auto& l : o.logs) {
    std::string base = l.filename().string(), name;
    for (char c : base)
      name.push_back(safe_name_char(c) ? c : '_');
    while (!used.insert(name).second)
      name = "_" + name;
    std::string err;
    auto text = read_file_text(l, o.log_tail_bytes, &err);
    if (!err.empty()) {
      item("logs/" + name, false, err);
      continue;
    }
    files.emplace_back("logs/" + name, text);
    item("logs/" + name, true, "the last " + util::format_size(o.log_tail_bytes) + " of " + l.string());
  }
  if (o.logs.empty() && !o.journal)
    item("logs/", false, "no log source: the node logs to stderr; pass --log FILE where it is kept");

  // Audit log and evidence reports.
  if (cfg) {
    auto tail = telemetry::read_audit_tail(cfg->node.audit_log, o.audit_events);
    if (!tail) {
      item("audit/audit.log", false, tail.error().message);
    } else {
      std::string text;
      for (auto& l : tail->lines)
        text += l + "\n";
      files.emplace_back("audit/audit.log", text);
      item("audit/audit.log", true,
           "the newest " + std::to_string(tail->lines.size()) + " events of " + cfg->node.audit_log.string() +
               (tail->skipped ? " (" + std::to_string(tail->skipped) + " torn or unparseable line(s) skipped)" : ""));
    }
    const auto& dir = cfg->evidence.report_dir;
    std::error_code dec;
    if (!fs::is_directory(dir, dec)) {
      item("evidence/", false, "no report directory " + dir.string() + (dec ? ": " + dec.message() : ""));
    } else {
      std::size_t n = 0, skipped = 0;
      for (auto it = fs::directory_iterator(dir, dec); !dec && it != fs::directory_iterator(); it.increment(dec)) {
        auto ext = it->path().extension();
        if (!it->is_regular_file() || (ext != ".json" && ext != ".md")) continue;
        if (n >= 256 || it->file_size() > (8ull << 20)) {
          ++skipped;
          continue;
        }
        std::string err;
        auto text = read_file_text(it->path(), 8ull << 20, &err);
        if (!err.empty()) {
          item("evidence/" + it->path().filename().string(), false, err);
          continue;
        }
        files.emplace_back("evidence/" + it->path().filename().string(), text);
        ++n;
      }
      item("evidence/", !dec,
           std::to_string(n) + " report(s) from " + dir.string() +
               (skipped ? ", " + std::to_string(skipped) + " skipped (over 256 files or 8 MiB)" : "") +
               (dec ? ": " + dec.message() : ""));
    }
  }

  files.emplace_back("versions.txt", versions_text());
  item("versions.txt", true, "versions of edgerelay and its libraries, and the shared objects it loaded");

  // Everything goes through scrub(), then the MANIFEST, then tar.
  std::string id;
  for (char c : node_id.empty() ? std::string("unknown") : node_id)
    id.push_back(safe_name_char(c) ? c : '_');
  const std::string top = "edgerelay-support-" + id + "-" + utc_stamp();
  const auto root = staging / top;
  for (auto& [name, content] : files)
    if (!write_text(root / name, scrub(content, secrets), &werr)) return error{make_error_code(errc::store_io), werr};
  std::string manifest = "edgerelay support bundle\ncreated " + util::format_utc(std::chrono::system_clock::now()) +
                         "\nconfig " + (o.config ? o.config->string() : std::string("(none)")) + "\nadmin " + admin +
                         "\n\n";
  for (auto& i : rep.items)
    manifest += std::string(i.ok ? "collected  " : "MISSING    ") + i.name + "  " + i.note + "\n";
  if (!write_text(root / "MANIFEST.txt", scrub(manifest, secrets), &werr))
    return error{make_error_code(errc::store_io), werr};

  auto partial = staging / "bundle.tar.gz";
  auto r = run_program({"tar", "--create", "--gzip", "--owner=0", "--group=0", "--numeric-owner", "--file",
                        partial.string(), "--directory", staging.string(), top},
                       staging / "tar.out", staging / "tar.err", std::chrono::minutes(5));
  if (!r.why.empty()) return error{make_error_code(errc::store_io), r.why};
  if (r.code != 0)
    return error{make_error_code(errc::store_io), "tar exited " + std::to_string(r.code) + ": " + first_line(r.err)};
  // The bundle names identities and addresses: readable by its owner only.
  fs::permissions(partial, fs::perms::owner_read | fs::perms::owner_write, ec);
  // Not replacing what appeared at --out while the bundle was collected.
  if (::renameat2(AT_FDCWD, partial.c_str(), AT_FDCWD, out_abs.c_str(), RENAME_NOREPLACE) != 0) {
    if (errno == EEXIST) return exists_error();
    return error{boost::system::error_code(errno, boost::system::system_category()),
                 "cannot write " + out_abs.string() + ": " + std::strerror(errno)};
  }
  rep.written = out_abs;
  return rep;
}

} // namespace edgerelay::relay
