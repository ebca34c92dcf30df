#include "relay/config.hpp"
#include "util/text.hpp"

#include "util/units.hpp"

#include <algorithm>
#include <boost/throw_exception.hpp>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <locale>
#include <span>
#include <sstream>
#include <stdexcept>
#include <toml.hpp>
#include <utility>

namespace edgerelay::relay {
namespace {

std::string quote80(std::string_view s) { return util::quote(s, 80); }

namespace fs = std::filesystem;
using namespace std::string_view_literals;
using std::chrono::milliseconds;

// ------------------------------------------------------------ text helpers

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
bool is_lower_alnum(char c) noexcept { return (c >= 'a' && c <= 'z') || is_digit(c); }
char ascii_lower(char c) noexcept { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out)
    c = ascii_lower(c);
  return out;
}

std::string format_number(double d) {
  std::ostringstream os;
  os.imbue(std::locale::classic());
  os << d;
  return os.str();
}

std::string two_digits(long v) { return std::string{static_cast<char>('0' + v / 10), static_cast<char>('0' + v % 10)}; }
std::string format_minute(minute_of_day m) { return two_digits(m.count() / 60) + ":" + two_digits(m.count() % 60); }

std::string join(std::span<const std::string_view> items, std::string_view sep) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

// Edit distance counting a swap of two neighbours as one edit ("cetr" ->
// "cert" is 1), for "did you mean" suggestions.
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i)
    d[i][0] = i;
  for (std::size_t j = 0; j <= b.size(); ++j)
    d[0][j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i)
    for (std::size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

// A key as it appears in a key path: bare when TOML allows it, else quoted.
std::string key_segment(std::string_view k) {
  const bool bare = !k.empty() && std::all_of(k.begin(), k.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' || c == '-';
  });
  return bare ? std::string(k) : quote80(k);
}

const char* type_name(toml::value_t t) noexcept {
  switch (t) {
  case toml::value_t::boolean: return "boolean";
  case toml::value_t::integer: return "integer";
  case toml::value_t::floating: return "float";
  case toml::value_t::string: return "string";
  case toml::value_t::offset_datetime: return "date-time";
  case toml::value_t::local_datetime: return "local date-time";
  case toml::value_t::local_date: return "date";
  case toml::value_t::local_time: return "time";
  case toml::value_t::array: return "array";
  case toml::value_t::table: return "table";
  case toml::value_t::empty: break;
  }
  return "nothing";
}

// "integer 1000", "boolean true", "table": what was found, for type errors.
std::string describe(const toml::value& v) {
  std::string out = type_name(v.type());
  if (v.is_integer()) out += " " + std::to_string(v.as_integer());
  if (v.is_boolean()) out += v.as_boolean() ? " true" : " false";
  if (v.is_floating()) out += " " + format_number(v.as_floating());
  if (v.is_string()) out += " " + quote80(v.as_string().str);
  return out;
}

std::uint32_t line_of(const toml::value& v) { return static_cast<std::uint32_t>(v.location().line()); }

// ------------------------------------------------------------ small parsers

using util::parse_error;
using util::parsed;

parsed<std::string> refuse(std::string m) { return parse_error{std::move(m)}; }

bool valid_hostname(std::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  std::size_t label = 0;
  for (std::size_t i = 0; i < h.size(); ++i) {
    const char c = h[i];
    if (c == '.') {
      if (label == 0) return false;
      label = 0;
      continue;
    }
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '-' || c == '_';
    const bool edge = label == 0 || i + 1 == h.size() || h[i + 1] == '.';
    if (!ok || ++label > 63 || (c == '-' && edge)) return false;
  }
  return label > 0;
}

bool valid_ipv6(std::string_view h) {
  if (h.size() < 2 || h.find(':') == std::string_view::npos) return false;
  return std::all_of(h.begin(), h.end(), [](char c) {
    return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == ':' || c == '.';
  });
}

// A port after ':' in host:port: 0..65535, digits only.
std::optional<std::uint16_t> parse_port(std::string_view p) {
  if (p.empty() || p.size() > 5 || !std::all_of(p.begin(), p.end(), is_digit)) return std::nullopt;
  unsigned v = 0;
  for (char c : p)
    v = v * 10 + static_cast<unsigned>(c - '0');
  if (v > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(v);
}

// "host" or "[v6]" at the front of s; the rest (":port...", "/path") is left in s.
parsed<std::string> take_host(std::string_view& s, std::string_view what) {
  if (!s.empty() && s.front() == '[') {
    const auto close = s.find(']');
    if (close == std::string_view::npos) return refuse(quote80(what) + " has an unclosed '[' in its IPv6 address");
    const auto h = s.substr(1, close - 1);
    if (!valid_ipv6(h)) return refuse(quote80(what) + " has an invalid IPv6 address " + quote80(h));
    s.remove_prefix(close + 1);
    return parsed<std::string>(boost::system::in_place_value, std::string(h));
  }
  const auto end = s.find_first_of(":/?#");
  const auto h = s.substr(0, end);
  s.remove_prefix(h.size());
  if (h.empty()) return refuse(quote80(what) + " has no host");
  if (!valid_hostname(h)) return refuse(quote80(what) + " has an invalid host " + quote80(h));
  return parsed<std::string>(boost::system::in_place_value, std::string(h));
}

parsed<endpoint> parse_endpoint(std::string_view text) {
  const std::string hint = " (use host:port, e.g. \"0.0.0.0:9400\" or \"[::1]:9310\")";
  std::string_view s = text;
  if (s.empty()) return parse_error{"is empty" + hint};
  if (s.front() != '[' && std::count(s.begin(), s.end(), ':') > 1)
    return parse_error{quote80(text) + " is not host:port: an IPv6 address goes in brackets, e.g. \"[::1]:9310\""};
  auto host = take_host(s, text);
  if (!host) return parse_error{host.error().message + hint};
  if (s.empty() || s.front() != ':') return parse_error{quote80(text) + " has no port" + hint};
  s.remove_prefix(1);
  auto port = parse_port(s);
  if (!port) return parse_error{quote80(text) + " has an invalid port " + quote80(s) + " (use 0..65535)"};
  return endpoint{*host, *port};
}

struct url_parts {
  peer_kind kind = peer_kind::relay;
  std::string host;
  std::uint16_t port = 443;
  std::string target;
  fs::path dir;
};

parsed<url_parts> parse_peer_url(std::string_view text) {
  const std::string accepted = "use wss://host[:port][/path], https://host[:port]/path or file:///absolute/dir";
  if (text.empty()) return parse_error{"is empty (" + accepted + ")"};
  for (char c : text)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f)
      return parse_error{quote80(text) + " is not a URL: it contains a control character"};
  const auto sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0) return parse_error{quote80(text) + " is not a URL (" + accepted + ")"};
  const std::string scheme = lower(text.substr(0, sep));
  std::string_view rest = text.substr(sep + 3);
  url_parts u;
  if (scheme == "file") {
    if (rest.starts_with("localhost/")) rest.remove_prefix(9);
    if (rest.empty() || rest.front() != '/')
      return parse_error{quote80(text) + " is not a file:// URL of a local directory: write file:///absolute/dir " +
                         "(three slashes; the host part must be empty)"};
    if (rest.find_first_of("?#") != std::string_view::npos)
      return parse_error{quote80(text) + " is not a file:// URL of a directory: it has a query or fragment"};
    auto path = util::percent_decode(rest);
    if (!path)
      return parse_error{quote80(text) + " has an invalid percent escape (use %XX with two hex digits, not %00)"};
    u.kind = peer_kind::file;
    u.dir = fs::path(*path).lexically_normal();
    if (u.dir == "/") return parse_error{quote80(text) + " names the root directory; give a spool directory"};
    return u;
  }
  if (scheme == "wss")
    u.kind = peer_kind::relay;
  else if (scheme == "https")
    u.kind = peer_kind::http;
  else
    return parse_error{"unknown scheme " + quote80(scheme) + " (only wss://, https:// and file:// are allowed)"};
  if (rest.find(' ') != std::string_view::npos)
    return parse_error{quote80(text) + " is not a URL: it contains a space (write it as %20)"};
  const auto authority_end = rest.find_first_of("/?#");
  if (rest.substr(0, authority_end).find('@') != std::string_view::npos)
    return parse_error{quote80(text) + " has user information before the host; authentication is by certificate"};
  if (rest.find('#') != std::string_view::npos) return parse_error{quote80(text) + " has a fragment (#...)"};
  auto host = take_host(rest, text);
  if (!host) return host.error();
  u.host = *host;
  if (!rest.empty() && rest.front() == ':') {
    rest.remove_prefix(1);
    const auto p = rest.substr(0, rest.find_first_of("/?"));
    auto port = parse_port(p);
    if (!port || *port == 0)
      return parse_error{quote80(text) + " has an invalid port " + quote80(p) + " (use 1..65535)"};
    u.port = *port;
    rest.remove_prefix(p.size());
  }
  u.target = std::string(rest);
  if (u.target.empty())
    u.target = u.kind == peer_kind::relay ? "/v1/relay" : "/";
  else if (u.target.front() == '?')
    u.target.insert(0, "/");
  return u;
}

// "HH:MM" at the front of s (consumed).
std::optional<minute_of_day> take_hh_mm(std::string_view& s) {
  if (s.size() < 5 || !is_digit(s[0]) || !is_digit(s[1]) || s[2] != ':' || !is_digit(s[3]) || !is_digit(s[4]))
    return std::nullopt;
  const int h = (s[0] - '0') * 10 + (s[1] - '0');
  const int m = (s[3] - '0') * 10 + (s[4] - '0');
  if (h > 23 || m > 59) return std::nullopt;
  s.remove_prefix(5);
  return minute_of_day{h * 60 + m};
}

parsed<minute_of_day> parse_time_of_day(std::string_view text) {
  std::string_view s = text;
  auto t = take_hh_mm(s);
  if (!t || s != "Z")
    return parse_error{quote80(text) + " is not a UTC time of day (use \"HH:MMZ\" with HH 00-23, e.g. \"00:00Z\")"};
  return *t;
}

parsed<send_window> parse_send_window(std::string_view text) {
  const std::string bad =
      quote80(text) +
      " is not a send window (use \"HH:MM-HH:MMZ\" in UTC, e.g. \"22:00-06:00Z\"; it may cross midnight)";
  std::string_view s = text;
  auto a = take_hh_mm(s);
  if (!a) return parse_error{bad};
  if (s.starts_with('Z')) s.remove_prefix(1);
  if (!s.starts_with('-')) return parse_error{bad};
  s.remove_prefix(1);
  auto b = take_hh_mm(s);
  if (!b || s != "Z") return parse_error{bad};
  if (*a == *b) return parse_error{quote80(text) + " is empty: start and end are the same time"};
  return send_window{*a, *b};
}

// ------------------------------------------------------------ key registry

using key_list = std::span<const std::string_view>;

constexpr std::string_view k_root[] = {"node", "queue", "ingest", "listen", "admin", "peer", "evidence"};
constexpr std::string_view k_node[] = {
    "id", "data_dir", "sync", "unready_before_cert_expiry", "audit_log", "audit_log_max_bytes", "audit_log_keep"};
constexpr std::string_view k_queue[] = {"max_bytes",
                                        "max_segment_bytes",
                                        "overflow",
                                        "block_timeout",
                                        "max_retry",
                                        "retry_backoff",
                                        "deadletter_retention",
                                        "deadletter_max_bytes",
                                        "dedupe_window"};
constexpr std::string_view k_backoff[] = {"initial", "max", "multiplier", "jitter"};
constexpr std::string_view k_ingest[] = {"listen", "tls"};
constexpr std::string_view k_tls[] = {"cert", "key", "ca", "crl", "allow"};
constexpr std::string_view k_listen[] = {"address", "cert", "key", "ca", "crl", "allow"};
constexpr std::string_view k_admin[] = {"listen", "tls"};
constexpr std::string_view k_peer[] = {"name",         "url",         "streams",     "server_name", "cert",
                                       "key",          "ca",          "crl",         "window",      "batch_max_bytes",
                                       "dial_timeout", "ack_timeout", "compression", "bandwidth"};
constexpr std::string_view k_bandwidth[] = {"rate", "burst", "daily_quota", "quota_reset", "send_windows"};
constexpr std::string_view k_evidence[] = {"canary_interval", "canary_segments", "canary_size", "report_dir"};

struct section_keys {
  std::string_view where;
  key_list keys;
};
constexpr section_keys k_sections[] = {{"[node]", k_node},
                                       {"[queue]", k_queue},
                                       {"queue.retry_backoff", k_backoff},
                                       {"[ingest]", k_ingest},
                                       {"ingest.tls", k_tls},
                                       {"[listen]", k_listen},
                                       {"[admin]", k_admin},
                                       {"admin.tls", k_tls},
                                       {"[[peer]]", k_peer},
                                       {"[[peer]] bandwidth", k_bandwidth},
                                       {"[evidence]", k_evidence}};

// "unknown key (did you mean "max_bytes"?)", or where the key belongs, or
// the keys that are known here.
std::string unknown_key_problem(std::string_view key, key_list known) {
  const std::string k = lower(key);
  std::string_view best;
  std::size_t best_d = std::numeric_limits<std::size_t>::max();
  for (auto cand : known) {
    const auto d = edit_distance(k, cand);
    if (d < best_d) best_d = d, best = cand;
  }
  // A near miss of a key of this table wins over the same key elsewhere,
  // and that over a looser match here.
  const std::size_t limit = best.size() <= 4 ? 1 : best.size() <= 8 ? 2 : 3;
  const bool close = !best.empty() && best_d < k.size();
  if (close && best_d <= 1) return "unknown key (did you mean " + quote80(best) + "?)";
  std::vector<std::string_view> homes;
  for (const auto& s : k_sections)
    if (s.keys.data() != known.data() && std::find(s.keys.begin(), s.keys.end(), k) != s.keys.end())
      homes.push_back(s.where);
  if (!homes.empty()) return "unknown key here (" + quote80(key) + " belongs in " + join(homes, " or ") + ")";
  if (close && best_d <= limit) return "unknown key (did you mean " + quote80(best) + "?)";
  return "unknown key (known keys here: " + join(known, ", ") + ")";
}

// ------------------------------------------------------------ the checker

class checker;

// One string of an array, with its key path ("listen.allow[2]") and line.
struct array_item {
  std::string path;
  std::string value;
  std::uint32_t line = 0;
};

// A TOML table at a key path, with the keys it may hold. Reading a key
// checks its type and value and records an error for each problem.
class table_reader {
public:
  table_reader(checker& c, const toml::value& tbl, std::string path, key_list known);

  const std::string& path() const noexcept { return path_; }
  const toml::value* find(std::string_view key) const;
  bool has(std::string_view key) const { return find(key) != nullptr; }
  std::string path_of(std::string_view key) const {
    return path_.empty() ? key_segment(key) : path_ + "." + key_segment(key);
  }
  std::uint32_t line() const { return path_.empty() ? 0 : line_of(*tbl_); }
  // An error at key (at the value's line if present, else at the table's).
  void fail(std::string_view key, std::string problem) const;
  void missing(std::string_view key, std::string_view why = {}) const;

  std::optional<std::string> string(std::string_view key, bool required = false) const;
  std::optional<std::uint64_t> size(std::string_view key, std::uint64_t min = 1) const;
  std::optional<milliseconds> duration(std::string_view key, bool allow_zero = false) const;
  std::optional<std::uint64_t> rate(std::string_view key) const;
  std::optional<std::int64_t> integer(std::string_view key, std::int64_t min, std::int64_t max) const;
  std::optional<double> number(std::string_view key, double min, double max) const;
  template <class E>
  std::optional<E> choice(std::string_view key, std::initializer_list<std::pair<std::string_view, E>> options) const;
  // The elements that are strings; each one that is not is an error.
  std::optional<std::vector<array_item>> string_array(std::string_view key) const;
  std::optional<table_reader> table(std::string_view key, key_list known) const;
  // A path (relative to the config directory), resolved; checked as a
  // readable file when check_file is set and the checker checks files.
  std::optional<fs::path> path_value(std::string_view key, bool required, bool check_file) const;

private:
  template <class T>
  std::optional<T> parsed_value(std::string_view key, parsed<T> (*parse)(std::string_view), const char* noun,
                                const char* example, bool allow_integer) const;

  checker* c_;
  const toml::value* tbl_;
  std::string path_;
};

class checker {
public:
  checker(std::string file, fs::path base_dir, parse_options opt)
      : file_(std::move(file)), base_dir_(std::move(base_dir)), opt_(opt) {
    if (base_dir_.empty()) base_dir_ = ".";
    std::error_code ec;
    auto abs = fs::absolute(base_dir_, ec);
    if (!ec) base_dir_ = abs;
    base_dir_ = base_dir_.lexically_normal();
  }

  void fail(std::string key, std::string problem, std::uint32_t line) {
    errors_.push_back(config_error{file_, std::move(key), std::move(problem), line});
  }
  config_errors take_errors() { return std::move(errors_); }
  bool ok() const noexcept { return errors_.empty(); }
  const parse_options& options() const noexcept { return opt_; }
  const std::string& file() const noexcept { return file_; }

  fs::path resolve(const fs::path& p) const { return (p.is_absolute() ? p : base_dir_ / p).lexically_normal(); }

  // Why a file cannot be used, or empty when it can.
  std::string file_problem(const fs::path& p) const {
    std::error_code ec;
    const auto st = fs::status(p, ec);
    if (ec || !fs::exists(st)) {
      if (ec && ec != std::errc::no_such_file_or_directory) return "cannot access " + p.string() + ": " + ec.message();
      return "file not found: " + p.string();
    }
    if (fs::is_directory(st)) return p.string() + " is a directory, not a file";
    std::ifstream in(p, std::ios::binary);
    if (!in) return "cannot read " + p.string() + ": " + std::strerror(errno);
    return {};
  }

  node_config build(const toml::value& root);

private:
  void read_node(const table_reader& root, node_config& cfg);
  void read_queue(const table_reader& root, node_config& cfg);
  std::optional<endpoint> read_endpoint(const table_reader& t, std::string_view key, bool required);
  std::vector<allow_rule> read_allow(const table_reader& t);
  std::optional<server_tls> read_server_tls(const table_reader& t, bool ca_required);
  void read_ingest(const table_reader& root, node_config& cfg);
  void read_listen(const table_reader& root, node_config& cfg);
  void read_admin(const table_reader& root, node_config& cfg);
  void read_peers(const table_reader& root, node_config& cfg);
  std::optional<peer_section> read_peer(const table_reader& t);
  void read_bandwidth(const table_reader& peer, peer_section& p);
  void read_evidence(const table_reader& root, node_config& cfg);
  void cross_checks(const table_reader& root, const node_config& cfg);

  std::string file_;
  fs::path base_dir_;
  parse_options opt_;
  config_errors errors_;
};

table_reader::table_reader(checker& c, const toml::value& tbl, std::string path, key_list known)
    : c_(&c), tbl_(&tbl), path_(std::move(path)) {
  struct unknown {
    std::uint32_t line, column;
    std::string key;
    const toml::value* v;
  };
  std::vector<unknown> found;
  for (const auto& [k, v] : tbl.as_table())
    if (std::find(known.begin(), known.end(), k) == known.end())
      found.push_back({line_of(v), static_cast<std::uint32_t>(v.location().column()), k, &v});
  std::sort(found.begin(), found.end(), [](const unknown& a, const unknown& b) {
    return std::tie(a.line, a.column, a.key) < std::tie(b.line, b.column, b.key);
  });
  for (const auto& u : found)
    c_->fail(path_of(u.key), unknown_key_problem(u.key, known), u.line);
}

const toml::value* table_reader::find(std::string_view key) const {
  const auto& t = tbl_->as_table();
  const auto it = t.find(std::string(key));
  return it == t.end() ? nullptr : &it->second;
}

void table_reader::fail(std::string_view key, std::string problem) const {
  const auto* v = find(key);
  c_->fail(path_of(key), std::move(problem), v ? line_of(*v) : line());
}

void table_reader::missing(std::string_view key, std::string_view why) const {
  c_->fail(path_of(key),
           why.empty() ? std::string("missing required key") : "missing required key (" + std::string(why) + ")",
           line());
}

std::optional<std::string> table_reader::string(std::string_view key, bool required) const {
  const auto* v = find(key);
  if (!v) {
    if (required) missing(key);
    return std::nullopt;
  }
  if (!v->is_string()) {
    fail(key, "expected a string, got " + describe(*v));
    return std::nullopt;
  }
  return v->as_string().str;
}

template <class T>
std::optional<T> table_reader::parsed_value(std::string_view key, parsed<T> (*parse)(std::string_view),
                                            const char* noun, const char* example, bool allow_integer) const {
  const auto* v = find(key);
  if (!v) return std::nullopt;
  if (allow_integer && v->is_integer()) {
    if (v->as_integer() < 0) {
      fail(key, std::string("a ") + noun + " cannot be negative, got " + std::to_string(v->as_integer()));
      return std::nullopt;
    }
    return static_cast<T>(v->as_integer());
  }
  if (!v->is_string()) {
    fail(key, std::string("expected a ") + noun + " such as " + quote80(example) +
                  (allow_integer ? " or an integer number of bytes" : "") + ", got " + describe(*v));
    return std::nullopt;
  }
  auto r = parse(v->as_string().str);
  if (!r) {
    fail(key, r.error().message);
    return std::nullopt;
  }
  return *r;
}

std::optional<std::uint64_t> table_reader::size(std::string_view key, std::uint64_t min) const {
  auto r = parsed_value<std::uint64_t>(key, &util::parse_size, "size", "64MiB", true);
  if (r && *r < min) {
    fail(key, "must be at least " + util::format_size(min) + ", got " + util::format_size(*r));
    return std::nullopt;
  }
  return r;
}

std::optional<milliseconds> table_reader::duration(std::string_view key, bool allow_zero) const {
  auto r = parsed_value<milliseconds>(key, &util::parse_duration, "duration", "30s", false);
  if (r && !allow_zero && r->count() == 0) {
    fail(key, "must be longer than 0s");
    return std::nullopt;
  }
  return r;
}

std::optional<std::uint64_t> table_reader::rate(std::string_view key) const {
  return parsed_value<std::uint64_t>(key, &util::parse_rate, "rate", "10Mbit", false);
}

std::optional<std::int64_t> table_reader::integer(std::string_view key, std::int64_t min, std::int64_t max) const {
  const auto* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_integer()) {
    fail(key, "expected an integer " +
                  (max == std::numeric_limits<std::int64_t>::max()
                       ? "of at least " + std::to_string(min)
                       : "from " + std::to_string(min) + " to " + std::to_string(max)) +
                  ", got " + describe(*v));
    return std::nullopt;
  }
  const auto i = v->as_integer();
  if (i < min || i > max) {
    fail(key, "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " + std::to_string(i));
    return std::nullopt;
  }
  return i;
}

std::optional<double> table_reader::number(std::string_view key, double min, double max) const {
  const auto* v = find(key);
  if (!v) return std::nullopt;
  double d = 0;
  if (v->is_floating())
    d = v->as_floating();
  else if (v->is_integer())
    d = static_cast<double>(v->as_integer());
  else {
    fail(key, "expected a number, got " + describe(*v));
    return std::nullopt;
  }
  if (!std::isfinite(d) || d < min || d > max) {
    const std::string range = max == std::numeric_limits<double>::max()
                                  ? "at least " + format_number(min)
                                  : "between " + format_number(min) + " and " + format_number(max);
    fail(key, "must be " + range + ", got " + format_number(d));
    return std::nullopt;
  }
  return d;
}

template <class E>
std::optional<E> table_reader::choice(std::string_view key,
                                      std::initializer_list<std::pair<std::string_view, E>> options) const {
  std::string names;
  for (const auto& [name, value] : options) {
    names += names.empty() ? "" : " or ";
    names += quote80(name);
  }
  const auto* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_string()) {
    fail(key, "expected " + names + ", got " + describe(*v));
    return std::nullopt;
  }
  const auto& s = v->as_string().str;
  for (const auto& [name, value] : options)
    if (s == name) return value;
  fail(key, quote80(s) + " is not one of " + names);
  return std::nullopt;
}

std::optional<std::vector<array_item>> table_reader::string_array(std::string_view key) const {
  const auto* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_array()) {
    fail(key, "expected an array of strings, got " + describe(*v));
    return std::nullopt;
  }
  std::vector<array_item> out;
  std::size_t i = 0;
  for (const auto& e : v->as_array()) {
    auto p = path_of(key) + "[" + std::to_string(i++) + "]";
    if (!e.is_string())
      c_->fail(p, "expected a string, got " + describe(e), line_of(e));
    else
      out.push_back({std::move(p), e.as_string().str, line_of(e)});
  }
  return out;
}

std::optional<table_reader> table_reader::table(std::string_view key, key_list known) const {
  const auto* v = find(key);
  if (!v) return std::nullopt;
  if (!v->is_table()) {
    fail(key, "expected a table, got " + describe(*v));
    return std::nullopt;
  }
  return table_reader(*c_, *v, path_of(key), known);
}

std::optional<fs::path> table_reader::path_value(std::string_view key, bool required, bool check_file) const {
  auto s = string(key, required);
  if (!s) return std::nullopt;
  if (s->empty()) {
    fail(key, "must not be empty");
    return std::nullopt;
  }
  if (s->find('\0') != std::string::npos) {
    fail(key, "must not contain a NUL character");
    return std::nullopt;
  }
  auto p = c_->resolve(*s);
  if (check_file && c_->options().check_files) {
    auto problem = c_->file_problem(p);
    if (!problem.empty()) {
      fail(key, std::move(problem));
      return std::nullopt;
    }
  }
  return p;
}

// ------------------------------------------------------------ sections

void checker::read_node(const table_reader& root, node_config& cfg) {
  auto t = root.table("node", k_node);
  if (!t) {
    if (!root.has("node")) fail("node", "missing required section [node] (it needs id and data_dir)", 0);
    return;
  }
  if (auto id = t->string("id", true)) {
    const auto bad = std::find_if(id->begin(), id->end(), [](char c) {
      const auto u = static_cast<unsigned char>(c);
      return c == ':' || u <= 0x20 || u == 0x7f;
    });
    if (id->empty() || id->size() > 64)
      t->fail("id", "must be 1 to 64 bytes long, got " + std::to_string(id->size()));
    else if (bad != id->end())
      t->fail("id", quote80(*id) + " must not contain ':', whitespace or control characters (segment ids are "
                                   "\"<node id>:<seq>\")");
    else
      cfg.node.id = *id;
  }
  if (auto d = t->path_value("data_dir", true, false)) cfg.node.data_dir = *d;
  if (auto s =
          t->choice<queue::sync_mode>("sync", {{"full", queue::sync_mode::full}, {"none", queue::sync_mode::none}}))
    cfg.node.sync = *s;
  if (auto v = t->duration("unready_before_cert_expiry", true)) cfg.node.unready_before_cert_expiry = *v;
  if (auto a = t->path_value("audit_log", false, false)) cfg.node.audit_log = *a;
  if (cfg.node.audit_log.empty() && !cfg.node.data_dir.empty()) cfg.node.audit_log = cfg.node.data_dir / "audit.log";
  if (auto v = t->size("audit_log_max_bytes", 0)) {
    if (*v != 0 && *v < (4u << 10))
      t->fail("audit_log_max_bytes", std::to_string(*v) +
                                         " bytes is too small to hold a few events; use at least \"4KiB\", or \"0\" "
                                         "to never rotate the audit log");
    else
      cfg.node.audit_log_max_bytes = *v;
  }
  if (auto v = t->integer("audit_log_keep", 0, 100)) cfg.node.audit_log_keep = static_cast<unsigned>(*v);
}

void checker::read_queue(const table_reader& root, node_config& cfg) {
  auto t = root.table("queue", k_queue);
  if (!t) return;
  auto& q = cfg.queue;
  const auto max_bytes = t->size("max_bytes");
  if (max_bytes) q.max_bytes = *max_bytes;
  if (auto v = t->size("max_segment_bytes")) {
    // Compared only with a max_bytes that is valid (the file's, or the default when it has none).
    if (*v > q.max_bytes && (max_bytes || !t->has("max_bytes")))
      t->fail("max_segment_bytes",
              util::format_size(*v) + " must not exceed queue.max_bytes (" + util::format_size(q.max_bytes) + ")");
    else
      q.max_segment_bytes = *v;
  }
  const auto overflow = t->choice<queue::overflow_policy>("overflow", {{"evict_lru", queue::overflow_policy::evict_lru},
                                                                       {"reject", queue::overflow_policy::reject},
                                                                       {"block", queue::overflow_policy::block}});
  if (overflow) q.overflow = *overflow;
  if (auto v = t->duration("block_timeout")) {
    if (q.overflow != queue::overflow_policy::block && (overflow || !t->has("overflow")))
      t->fail("block_timeout", "has no effect unless queue.overflow = \"block\"");
    else
      q.block_timeout = *v;
  }
  if (auto v = t->integer("max_retry", 1, 65535)) q.max_retry = static_cast<std::uint32_t>(*v);
  if (auto b = t->table("retry_backoff", k_backoff)) {
    auto& p = q.retry_backoff;
    if (auto v = b->duration("initial")) p.initial = *v;
    if (auto v = b->duration("max")) {
      if (*v < p.initial)
        b->fail("max", "(" + util::format_duration(*v) + ") must not be shorter than initial (" +
                           util::format_duration(p.initial) + ")");
      else
        p.max = *v;
    } else if (!b->has("max") && p.max < p.initial) {
      b->fail("initial", "(" + util::format_duration(p.initial) + ") is longer than the default max (" +
                             util::format_duration(p.max) + "); set max too");
    }
    if (auto v = b->number("multiplier", 1.0, 1000.0)) p.multiplier = *v;
    if (auto v = b->number("jitter", 0.0, 1.0)) p.jitter = *v;
  }
  if (auto v = t->duration("deadletter_retention")) q.deadletter_retention = *v;
  if (auto v = t->size("deadletter_max_bytes")) q.deadletter_max_bytes = *v;
  if (auto v = t->duration("dedupe_window")) q.dedupe_window = *v;
}

std::optional<endpoint> checker::read_endpoint(const table_reader& t, std::string_view key, bool required) {
  auto s = t.string(key, required);
  if (!s) return std::nullopt;
  auto e = parse_endpoint(*s);
  if (!e) {
    t.fail(key, e.error().message);
    return std::nullopt;
  }
  return *e;
}

std::vector<allow_rule> checker::read_allow(const table_reader& t) {
  std::vector<allow_rule> out;
  auto list = t.string_array("allow");
  if (!list) return out;
  for (const auto& [path, s, line] : *list) {
    allow_rule r;
    std::string_view rest = s;
    if (rest.starts_with("URI:"))
      r.what = allow_rule::field::uri, rest.remove_prefix(4);
    else if (rest.starts_with("DNS:"))
      r.what = allow_rule::field::dns, rest.remove_prefix(4);
    else if (rest.starts_with("CN:"))
      r.what = allow_rule::field::cn, rest.remove_prefix(3);
    else {
      fail(path, quote80(s) + " must start with URI:, DNS: or CN: (e.g. \"URI:spiffe://fleet/edge/*\")", line);
      continue;
    }
    if (rest.empty()) {
      fail(path, quote80(s) + " has nothing after the prefix", line);
      continue;
    }
    r.pattern = std::string(rest);
    out.push_back(std::move(r));
  }
  return out;
}

// cert and key are required; ca when ca_required; crl and allow need ca.
std::optional<server_tls> checker::read_server_tls(const table_reader& t, bool ca_required) {
  server_tls tls;
  bool ok = true;
  if (auto p = t.path_value("cert", true, true))
    tls.files.cert = *p;
  else
    ok = false;
  if (auto p = t.path_value("key", true, true))
    tls.files.key = *p;
  else
    ok = false;
  if (auto p = t.path_value("ca", ca_required, true))
    tls.files.ca = *p;
  else if (t.has("ca") || ca_required)
    ok = false;
  if (auto p = t.path_value("crl", false, true)) tls.files.crl = *p;
  const auto errors_before = errors_.size();
  tls.allow = read_allow(t);
  if (errors_.size() != errors_before) ok = false;
  if (!t.has("ca") && !ca_required) { // a required ca that is missing is reported as such, above
    if (t.has("crl")) t.fail("crl", "has no effect without ca (client certificates are only checked against a ca)");
    if (t.has("allow")) t.fail("allow", "has no effect without ca (client certificates are only checked against a ca)");
  }
  if (!ok) return std::nullopt;
  return tls;
}

void checker::read_ingest(const table_reader& root, node_config& cfg) {
  auto t = root.table("ingest", k_ingest);
  if (!t) return;
  ingest_section in;
  auto ep = read_endpoint(*t, "listen", true);
  if (ep) in.listen = *ep;
  if (auto tt = t->table("tls", k_tls)) in.tls = read_server_tls(*tt, false);
  cfg.ingest = std::move(in);
}

void checker::read_listen(const table_reader& root, node_config& cfg) {
  auto t = root.table("listen", k_listen);
  if (!t) return;
  listen_section l;
  if (auto ep = read_endpoint(*t, "address", true)) l.address = *ep;
  if (auto tls = read_server_tls(*t, true)) l.tls = std::move(*tls);
  cfg.listen = std::move(l);
}

void checker::read_admin(const table_reader& root, node_config& cfg) {
  auto t = root.table("admin", k_admin);
  if (!t) return;
  const auto ep = read_endpoint(*t, "listen", false);
  if (ep) cfg.admin.listen = *ep;
  if (auto tt = t->table("tls", k_tls)) cfg.admin.tls = read_server_tls(*tt, true);
  if (ep && !ep->is_loopback() && !t->has("tls"))
    t->fail("listen", quote80(ep->to_string()) +
                          " is not a loopback address: off loopback the admin API requires mTLS (add admin.tls with "
                          "cert, key and ca)");
}

void checker::read_bandwidth(const table_reader& peer, peer_section& p) {
  auto t = peer.table("bandwidth", k_bandwidth);
  if (!t) return;
  auto& b = p.bandwidth;
  b.rate = t->rate("rate");
  if (auto v = t->size("burst")) {
    if (!t->has("rate"))
      t->fail("burst", "has no effect without rate");
    else
      b.burst = *v;
  } else if (b.rate) {
    b.burst = *b.rate;
  }
  b.daily_quota = t->size("daily_quota");
  if (auto s = t->string("quota_reset")) {
    auto r = parse_time_of_day(*s);
    if (!r)
      t->fail("quota_reset", r.error().message);
    else if (!t->has("daily_quota"))
      t->fail("quota_reset", "has no effect without daily_quota");
    else
      b.quota_reset = *r;
  }
  if (auto list = t->string_array("send_windows")) {
    if (t->find("send_windows")->as_array().empty())
      t->fail("send_windows", "is empty, so the peer could never send (remove the key to send at any time)");
    for (const auto& [path, s, line] : *list) {
      auto w = parse_send_window(s);
      if (!w)
        fail(path, w.error().message, line);
      else
        b.send_windows.push_back(*w);
    }
  }
}

std::optional<peer_section> checker::read_peer(const table_reader& t) {
  const auto before = errors_.size();
  peer_section p;
  if (auto name = t.string("name", true)) {
    const bool ok = !name->empty() && name->size() <= 64 && std::all_of(name->begin(), name->end(), [](char c) {
      return is_lower_alnum(c) || c == '.' || c == '_' || c == '-';
    });
    if (!ok)
      t.fail("name", quote80(*name) + " is not a valid peer name (use 1 to 64 of a-z 0-9 . _ -)");
    else
      p.name = *name;
  }
  bool network = false, file = false;
  if (auto url = t.string("url", true)) {
    auto u = parse_peer_url(*url);
    if (!u) {
      t.fail("url", u.error().message);
    } else {
      p.url = *url;
      p.kind = u->kind;
      network = u->kind != peer_kind::file;
      file = !network;
      if (network) {
        p.host = u->host;
        p.port = u->port;
        p.target = u->target;
      } else {
        p.spool_dir = u->dir;
        p.port = 0;
      }
    }
  }
  if (!file) {
    // Network peers need their TLS material; with a bad or missing url the
    // paths given are still checked, so every problem shows in one pass.
    if (auto v = t.path_value("cert", false, true)) p.tls.cert = *v;
    if (auto v = t.path_value("key", false, true)) p.tls.key = *v;
    if (auto v = t.path_value("ca", false, true)) p.tls.ca = *v;
    if (auto v = t.path_value("crl", false, true)) p.tls.crl = *v;
    if (network) {
      const std::string why = std::string(p.kind == peer_kind::relay ? "wss://" : "https://") +
                              " peers authenticate with mTLS and need cert, key and ca";
      for (auto k : {"cert"sv, "key"sv, "ca"sv})
        if (!t.has(k)) t.missing(k, why);
      p.server_name = p.host;
    }
    if (auto s = t.string("server_name")) {
      if (!valid_hostname(*s) && !valid_ipv6(*s))
        t.fail("server_name", quote80(*s) + " is not a host name");
      else
        p.server_name = *s;
    }
  } else {
    for (auto k : {"cert"sv, "key"sv, "ca"sv, "crl"sv, "server_name"sv})
      if (t.has(k)) t.fail(k, "has no effect on a file:// peer (only wss:// and https:// peers use TLS)");
  }
  if (auto list = t.string_array("streams")) {
    if (t.find("streams")->as_array().empty())
      t.fail("streams", "is empty, so no stream would be routed (remove it for [\"*\"])");
    std::vector<std::string> streams;
    for (const auto& [path, s, line] : *list) {
      const bool ok = !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
        return is_lower_alnum(c) || c == '.' || c == '_' || c == '-' || c == '*';
      });
      if (!ok)
        fail(path, quote80(s) + " is not a stream pattern (1 to 64 of a-z 0-9 . _ - and * for any run)", line);
      else
        streams.push_back(s);
    }
    p.streams = std::move(streams);
  }
  if (auto v = t.integer("window", 1, 1024)) p.window = static_cast<std::uint32_t>(*v);
  if (auto v = t.size("batch_max_bytes")) p.batch_max_bytes = *v;
  if (auto v = t.duration("dial_timeout")) p.dial_timeout = *v;
  if (auto v = t.duration("ack_timeout")) p.ack_timeout = *v;
  if (auto c = t.choice<compression_codec>("compression",
                                           {{"none", compression_codec::none}, {"zstd", compression_codec::zstd}}))
    p.compression = *c;
  read_bandwidth(t, p);
  if (errors_.size() != before) return std::nullopt;
  return p;
}

void checker::read_peers(const table_reader& root, node_config& cfg) {
  const auto* v = root.find("peer");
  if (!v) return;
  if (!v->is_array()) {
    root.fail("peer", "expected an array of tables (write each peer as [[peer]]), got " + describe(*v));
    return;
  }
  struct seen {
    std::string name;
    std::size_t index;
  };
  std::vector<seen> names;
  std::vector<std::pair<fs::path, std::size_t>> spools;
  std::size_t i = 0;
  for (const auto& e : v->as_array()) {
    const std::string path = "peer[" + std::to_string(i) + "]";
    if (!e.is_table()) {
      fail(path, "expected a table (write each peer as [[peer]]), got " + describe(e), line_of(e));
      ++i;
      continue;
    }
    table_reader t(*this, e, path, k_peer);
    const auto* name = t.find("name");
    if (name && name->is_string()) {
      const auto& n = name->as_string().str;
      auto it = std::find_if(names.begin(), names.end(), [&](const seen& s) { return s.name == n; });
      if (it != names.end())
        t.fail("name", "duplicate peer name " + quote80(n) + " (also peer[" + std::to_string(it->index) + "])");
      else
        names.push_back({n, i});
    }
    if (auto p = read_peer(t)) {
      if (p->kind == peer_kind::file) {
        auto it = std::find_if(spools.begin(), spools.end(), [&](const auto& s) { return s.first == p->spool_dir; });
        if (it != spools.end())
          t.fail("url", "spool directory " + p->spool_dir.string() + " is already used by peer[" +
                            std::to_string(it->second) + "]");
        else
          spools.emplace_back(p->spool_dir, i);
      }
      cfg.peers.push_back(std::move(*p));
    }
    ++i;
  }
}

void checker::read_evidence(const table_reader& root, node_config& cfg) {
  auto& ev = cfg.evidence;
  if (auto t = root.table("evidence", k_evidence)) {
    if (auto v = t->duration("canary_interval", true)) ev.canary_interval = *v;
    if (auto v = t->integer("canary_segments", 1, 100000)) ev.canary_segments = static_cast<std::uint32_t>(*v);
    if (auto v = t->size("canary_size")) {
      if (*v > cfg.queue.max_segment_bytes)
        t->fail("canary_size", "(" + util::format_size(*v) + ") must not exceed queue.max_segment_bytes (" +
                                   util::format_size(cfg.queue.max_segment_bytes) + ")");
      else
        ev.canary_size = *v;
    }
    if (auto v = t->path_value("report_dir", false, false)) ev.report_dir = *v;
  }
  if (ev.report_dir.empty() && !cfg.node.data_dir.empty()) ev.report_dir = cfg.node.data_dir / "evidence";
}

bool same_socket(const endpoint& a, const endpoint& b) {
  if (a.port == 0 || a.port != b.port) return false;
  auto wildcard = [](const std::string& h) { return h == "0.0.0.0" || h == "::"; };
  return a.host == b.host || wildcard(a.host) || wildcard(b.host);
}

void checker::cross_checks(const table_reader& root, const node_config& cfg) {
  const bool has_listen = root.has("listen"), has_ingest = root.has("ingest"), has_peers = root.has("peer");
  const auto* peers = root.find("peer");
  const bool no_peers = !has_peers || (peers->is_array() && peers->as_array().empty());
  if (no_peers && !has_listen)
    fail("peer",
         "no [[peer]] is configured: a node needs at least one peer to forward to (a terminal hub uses "
         "url = \"file:///dir\"), unless it has a [listen] section",
         0);
  if (!has_ingest && !has_listen)
    fail("ingest", "the node has no input: add [ingest] (producers over HTTP) or [listen] (relays over mTLS)", 0);

  struct named {
    const char* key;
    const endpoint* ep;
  };
  std::vector<named> eps;
  if (cfg.ingest) eps.push_back({"ingest.listen", &cfg.ingest->listen});
  if (cfg.listen) eps.push_back({"listen.address", &cfg.listen->address});
  eps.push_back({"admin.listen", &cfg.admin.listen});
  for (std::size_t i = 0; i < eps.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (same_socket(*eps[i].ep, *eps[j].ep)) {
        fail(eps[i].key, quote80(eps[i].ep->to_string()) + " uses the same port as " + eps[j].key, 0);
        break;
      }
}

node_config checker::build(const toml::value& root_value) {
  node_config cfg;
  cfg.source = file_;
  table_reader root(*this, root_value, "", k_root);
  read_node(root, cfg);
  read_queue(root, cfg);
  read_ingest(root, cfg);
  read_listen(root, cfg);
  read_admin(root, cfg);
  read_peers(root, cfg);
  read_evidence(root, cfg);
  cross_checks(root, cfg);
  return cfg;
}

// "[error] toml::parse_key_value_pair: missing value after key-value
// separator '='\n --> f\n   |\n 3 | data_dir =\n   |            ^--- expected
// value" -> the sentence, the annotation and the last marked line/column.
config_error syntax_error_of(const std::string& file, const toml::syntax_error& e) {
  const std::string what = e.what();
  std::istringstream in(what);
  std::string line, headline, note;
  std::uint32_t err_line = static_cast<std::uint32_t>(e.location().line());
  std::uint32_t err_col = static_cast<std::uint32_t>(e.location().column());
  std::uint32_t numbered = 0;
  std::size_t bar = std::string::npos;
  bool first = true;
  while (std::getline(in, line)) {
    if (first) {
      headline = line;
      first = false;
      continue;
    }
    const auto p = line.find(" | ");
    const auto lead = line.find_first_not_of(' ');
    if (p != std::string::npos && lead != std::string::npos && lead < p && is_digit(line[lead])) {
      numbered = static_cast<std::uint32_t>(std::stoul(line.substr(lead, p - lead)));
      bar = p;
      continue;
    }
    if (numbered != 0 && bar != std::string::npos && line.size() > bar + 3 && line.compare(bar, 3, " | ") == 0) {
      const auto mark = line.find_first_of("^~", bar + 3);
      if (mark != std::string::npos) {
        err_line = numbered;
        err_col = static_cast<std::uint32_t>(mark - (bar + 3) + 1);
        auto rest = line.substr(mark);
        const auto text = rest.find_first_not_of("^~- ");
        note = text == std::string::npos ? "" : rest.substr(text);
      }
    }
  }
  if (headline.starts_with("[error] ")) headline.erase(0, 8);
  if (headline.starts_with("toml::")) {
    const auto colon = headline.find(": ");
    if (colon != std::string::npos) headline.erase(0, colon + 2);
  }
  while (!headline.empty() && (headline.back() == '.' || headline.back() == ' '))
    headline.pop_back();
  std::string problem =
      "line " + std::to_string(err_line) + ", column " + std::to_string(err_col) + ": TOML syntax error: " + headline;
  if (!note.empty()) problem += " (" + note + ")";
  return config_error{file, "", std::move(problem), err_line};
}

} // namespace

// ------------------------------------------------------------ public

std::string config_error::to_string() const {
  return key.empty() ? file + ": " + problem : file + ": " + key + ": " + problem;
}

std::string to_string(const config_errors& errors) {
  std::string out;
  for (const auto& e : errors)
    out += e.to_string() + "\n";
  return out;
}

void throw_exception_from_error(const config_errors& errors, const boost::source_location& loc) {
  boost::throw_with_location(std::invalid_argument(to_string(errors)), loc);
}

bool operator==(const queue_section& a, const queue_section& b) noexcept {
  const auto& x = a.retry_backoff;
  const auto& y = b.retry_backoff;
  return a.max_bytes == b.max_bytes && a.max_segment_bytes == b.max_segment_bytes && a.overflow == b.overflow &&
         a.block_timeout == b.block_timeout && a.max_retry == b.max_retry && x.initial == y.initial && x.max == y.max &&
         x.multiplier == y.multiplier && x.jitter == y.jitter && a.deadletter_retention == b.deadletter_retention &&
         a.deadletter_max_bytes == b.deadletter_max_bytes && a.dedupe_window == b.dedupe_window;
}

std::string endpoint::to_string() const {
  const bool v6 = host.find(':') != std::string::npos;
  return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

bool endpoint::is_loopback() const {
  if (host == "localhost" || host == "::1") return true;
  if (!host.starts_with("127.")) return false;
  int dots = 0;
  for (char c : host) {
    if (c == '.')
      ++dots;
    else if (!is_digit(c))
      return false;
  }
  return dots == 3;
}

std::string allow_rule::to_string() const {
  switch (what) {
  case field::uri: return "URI:" + pattern;
  case field::dns: return "DNS:" + pattern;
  case field::cn: return "CN:" + pattern;
  }
  return pattern;
}

bool send_window::contains(minute_of_day t) const noexcept {
  if (start < end) return t >= start && t < end;
  return t >= start || t < end;
}

std::string send_window::to_string() const { return format_minute(start) + "-" + format_minute(end) + "Z"; }

bandwidth_section::mode bandwidth_section::get_mode() const noexcept {
  if (rate && daily_quota) return mode::both;
  if (rate) return mode::rate;
  if (daily_quota) return mode::quota;
  return mode::unlimited;
}

bool peer_section::routes(std::string_view stream) const noexcept {
  return std::any_of(streams.begin(), streams.end(),
                     [&](const std::string& p) { return stream_glob_match(p, stream); });
}

queue::store_options node_config::store_options() const {
  queue::store_options o;
  o.data_dir = node.data_dir;
  o.node_id = node.id;
  o.sync = node.sync;
  o.max_bytes = queue.max_bytes;
  o.max_segment_bytes = queue.max_segment_bytes;
  o.overflow = queue.overflow;
  o.block_timeout = queue.block_timeout;
  o.max_retry = queue.max_retry;
  o.retry_backoff = queue.retry_backoff;
  o.deadletter_retention = queue.deadletter_retention;
  o.deadletter_max_bytes = queue.deadletter_max_bytes;
  o.dedupe_window = queue.dedupe_window;
  return o;
}

const peer_section* node_config::find_peer(std::string_view name) const noexcept {
  for (const auto& p : peers)
    if (p.name == name) return &p;
  return nullptr;
}

config_result<node_config> parse_config(std::string_view toml_text, const std::string& file_name_for_messages,
                                        const std::filesystem::path& base_dir, const parse_options& options) {
  toml::value root;
  try {
    std::istringstream in{std::string(toml_text)};
    root = toml::parse(in, file_name_for_messages);
  } catch (const toml::syntax_error& e) {
    return config_result<node_config>(boost::system::in_place_error,
                                      config_errors{syntax_error_of(file_name_for_messages, e)});
  } catch (const std::exception& e) {
    return config_result<node_config>(
        boost::system::in_place_error,
        config_errors{config_error{file_name_for_messages, "", std::string("cannot parse as TOML: ") + e.what()}});
  }
  checker c(file_name_for_messages, base_dir, options);
  node_config cfg = c.build(root);
  if (!c.ok()) {
    // File order; errors without a line (missing sections, whole-node rules) last.
    auto errors = c.take_errors();
    std::stable_sort(errors.begin(), errors.end(), [](const config_error& a, const config_error& b) {
      const auto none = std::numeric_limits<std::uint32_t>::max();
      return (a.line == 0 ? none : a.line) < (b.line == 0 ? none : b.line);
    });
    return config_result<node_config>(boost::system::in_place_error, std::move(errors));
  }
  return cfg;
}

config_result<node_config> load_config(const std::filesystem::path& file, const parse_options& options) {
  const std::string name = file.string();
  auto cannot_read = [&](int err) {
    return config_result<node_config>(
        boost::system::in_place_error,
        config_errors{
            config_error{name, "", std::string("cannot read the configuration file: ") + std::strerror(err)}});
  };
  std::error_code ec;
  if (fs::is_directory(file, ec)) return cannot_read(EISDIR);
  std::ifstream in(file, std::ios::binary);
  if (!in) return cannot_read(errno);
  std::ostringstream text;
  text << in.rdbuf();
  auto base = fs::absolute(file, ec).parent_path();
  if (ec) base = file.parent_path();
  return parse_config(text.str(), name, base, options);
}

bool stream_glob_match(std::string_view pattern, std::string_view stream) noexcept {
  std::size_t p = 0, s = 0, star = std::string_view::npos, mark = 0;
  while (s < stream.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = s;
    } else if (p < pattern.size() && pattern[p] == stream[s]) {
      ++p, ++s;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      s = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*')
    ++p;
  return p == pattern.size();
}

const char* to_string(peer_kind k) noexcept {
  switch (k) {
  case peer_kind::relay: return "relay";
  case peer_kind::http: return "http";
  case peer_kind::file: return "file";
  }
  return "?";
}

const char* to_string(compression_codec c) noexcept {
  switch (c) {
  case compression_codec::none: return "none";
  case compression_codec::zstd: return "zstd";
  }
  return "?";
}

const char* to_string(bandwidth_section::mode m) noexcept {
  switch (m) {
  case bandwidth_section::mode::unlimited: return "unlimited";
  case bandwidth_section::mode::rate: return "rate";
  case bandwidth_section::mode::quota: return "quota";
  case bandwidth_section::mode::both: return "both";
  }
  return "?";
}

} // namespace edgerelay::relay
