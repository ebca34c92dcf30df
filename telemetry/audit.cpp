#include "telemetry/audit.hpp"

#include "telemetry/logging.hpp"
#include "util/clock.hpp"
#include "util/units.hpp"

#include <boost/json.hpp>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <deque>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace edgerelay::telemetry {

namespace json = boost::json;

namespace {

// JSON text for v in which every string went through append_json_string, so
// that invalid UTF-8 in a field (an OpenSSL subject, a peer's address) cannot
// make the line unparseable.
void append_value(std::string& out, const json::value& v) {
  switch (v.kind()) {
  case json::kind::string: append_json_string(out, v.get_string()); return;
  case json::kind::array: {
    out.push_back('[');
    bool first = true;
    for (auto& e : v.get_array()) {
      if (!first) out.push_back(',');
      first = false;
      append_value(out, e);
    }
    out.push_back(']');
    return;
  }
  case json::kind::object: {
    out.push_back('{');
    bool first = true;
    for (auto& kv : v.get_object()) {
      if (!first) out.push_back(',');
      first = false;
      append_json_string(out, kv.key());
      out.push_back(':');
      append_value(out, kv.value());
    }
    out.push_back('}');
    return;
  }
  default: out += json::serialize(v); return;
  }
}

json::array to_array(const std::vector<std::string>& v) {
  json::array a;
  for (auto& s : v)
    a.emplace_back(s);
  return a;
}

std::string os_error(int e) { return std::strerror(e); }

} // namespace

boost::system::result<std::unique_ptr<audit_log>, error>
audit_log::open(const std::filesystem::path& path, std::string node_id, util::clock& clock, audit_rotation rotation) {
  int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    int e = errno;
    return error{boost::system::error_code(e, boost::system::system_category()),
                 "audit log " + path.string() + ": cannot open for appending: " + os_error(e)};
  }
  // A torn last line (power cut mid-write) must not swallow the next event:
  // start on a fresh line.
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) {
    char last = '\n';
    int rfd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (rfd >= 0) {
      if (::pread(rfd, &last, 1, st.st_size - 1) != 1) last = '\n';
      ::close(rfd);
    }
    if (last != '\n' && ::write(fd, "\n", 1) != 1) {
      int e = errno;
      ::close(fd);
      return error{boost::system::error_code(e, boost::system::system_category()),
                   "audit log " + path.string() + ": cannot write: " + os_error(e)};
    }
  }
  return std::unique_ptr<audit_log>(new audit_log(fd, path, std::move(node_id), clock, rotation));
}

audit_log::audit_log(int fd, std::filesystem::path path, std::string node_id, util::clock& clock,
                     audit_rotation rotation)
    : path_(std::move(path)), node_id_(std::move(node_id)), clock_(clock), fd_(fd), rotation_(rotation) {}

audit_log::~audit_log() { ::close(fd_); }

std::filesystem::path audit_log::rotated(const std::filesystem::path& path, unsigned i) {
  return path.string() + "." + std::to_string(i);
}

void audit_log::set_rotation(audit_rotation r) {
  std::lock_guard lk(mu_);
  rotation_ = r;
  next_try_ = {};
}

void audit_log::maybe_rotate(std::size_t next_line) {
  if (rotation_.max_bytes == 0) return;
  struct stat st {};
  // The size of the open file, not a count of our own writes: an external
  // `logrotate copytruncate` may have emptied it meanwhile.
  if (::fstat(fd_, &st) != 0 || st.st_size == 0) return;
  if (static_cast<std::uint64_t>(st.st_size) + next_line <= rotation_.max_bytes) return;
  const auto now = clock_.steady_now();
  if (now < next_try_) return;
  if (rotate()) {
    ++rotations_;
    next_try_ = {};
  } else {
    ++rotation_failures_;
    next_try_ = now + std::chrono::minutes(1);
  }
}

bool audit_log::rotate() {
  auto fail = [&](const std::string& what, int e) {
    spdlog::error("audit log {}: rotation failed, {}: {}; events go on into the open file, next try in a minute",
                  path_.string(), what, os_error(e));
    return false;
  };
  if (rotation_.keep == 0) {
    if (::ftruncate(fd_, 0) != 0) {
      int e = errno;
      return fail("cannot truncate it", e);
    }
    return true;
  }
  // Oldest first, so that nothing is overwritten but the one past `keep`.
  for (unsigned i = rotation_.keep; i > 1; --i) {
    auto from = rotated(path_, i - 1), to = rotated(path_, i);
    if (::rename(from.c_str(), to.c_str()) != 0 && errno != ENOENT) {
      int e = errno;
      return fail("cannot rename " + from.string() + " to " + to.string(), e);
    }
  }
  // ENOENT: an earlier try renamed PATH and then failed to open the new one;
  // the open descriptor follows the file to PATH.2 above.
  auto first = rotated(path_, 1);
  if (::rename(path_.c_str(), first.c_str()) != 0 && errno != ENOENT) {
    int e = errno;
    return fail("cannot rename it to " + first.string(), e);
  }
  int fd = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    int e = errno;
    return fail("cannot open a new " + path_.string(), e);
  }
  ::close(fd_);
  fd_ = fd;
  return true;
}

void audit_log::record(std::string_view event, const json::object& fields) {
  std::string line = "{\"time\":\"" + util::format_utc(clock_.system_now()) + "\",\"event\":";
  append_json_string(line, event);
  line += ",\"node\":";
  append_json_string(line, node_id_);
  for (auto& kv : fields) {
    if (kv.key() == "time" || kv.key() == "event" || kv.key() == "node") continue;
    line.push_back(',');
    append_json_string(line, kv.key());
    line.push_back(':');
    append_value(line, kv.value());
  }
  line += "}\n";
  write_line(line);
}

void audit_log::write_line(const std::string& line) {
  std::lock_guard lk(mu_);
  maybe_rotate(line.size());
  const char* p = line.data();
  std::size_t left = line.size();
  while (left > 0) {
    ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = n < 0 ? errno : EIO;
      ++write_failures_;
      if (last_errno_logged_.exchange(e) != e)
        spdlog::error("audit log {}: write failed, event lost: {}", path_.string(), os_error(e));
      return;
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  last_errno_logged_ = 0;
}

void audit_log::node_started(std::string_view version, const json::object& listeners) {
  record("node_start",
         json::object{{"version", version}, {"pid", static_cast<std::int64_t>(::getpid())}, {"listeners", listeners}});
}

void audit_log::node_stopped() { record("node_stop", json::object{{"pid", static_cast<std::int64_t>(::getpid())}}); }

void audit_log::config_reloaded(std::string_view source, const std::vector<std::string>& applied,
                                const std::vector<std::string>& restart_required,
                                const std::vector<std::string>& failed) {
  record("config_reload", json::object{{"source", source},
                                       {"applied", to_array(applied)},
                                       {"restart_required", to_array(restart_required)},
                                       {"failed", to_array(failed)}});
}

void audit_log::config_reload_rejected(std::string_view source, const std::vector<std::string>& errors) {
  record("config_reload_rejected", json::object{{"source", source}, {"errors", to_array(errors)}});
}

void audit_log::deadletter_op(std::string_view op, const audit_actor& who, const json::object& filter,
                              std::uint64_t count) {
  record("deadletter_" + std::string(op),
         json::object{{"client", who.remote}, {"identity", who.identity}, {"filter", filter}, {"count", count}});
}

void audit_log::deadletter_op_failed(std::string_view op, const audit_actor& who, const json::object& filter,
                                     std::string_view err) {
  record("deadletter_" + std::string(op),
         json::object{{"client", who.remote}, {"identity", who.identity}, {"filter", filter}, {"error", err}});
}

void audit_log::auth_denied(std::string_view listener, std::string_view remote, std::string_view identity,
                            std::string_view reason, std::string_view detail) {
  record(
      "auth_denied",
      json::object{
          {"listener", listener}, {"remote", remote}, {"identity", identity}, {"reason", reason}, {"detail", detail}});
}

void audit_log::cert_rotated(std::string_view name, std::chrono::system_clock::time_point old_not_after,
                             std::chrono::system_clock::time_point new_not_after, std::string_view fingerprint) {
  record("cert_rotated", json::object{{"name", name},
                                      {"old_not_after", util::format_utc(old_not_after)},
                                      {"new_not_after", util::format_utc(new_not_after)},
                                      {"fingerprint", fingerprint}});
}

void audit_log::cert_reload_failed(std::string_view name, std::string_view path, std::string_view reason) {
  record("cert_reload_failed", json::object{{"name", name}, {"path", path}, {"reason", reason}});
}

void audit_log::crl_reloaded(std::string_view name, std::uint64_t entries) {
  record("crl_reloaded", json::object{{"name", name}, {"entries", entries}});
}

namespace {

boost::system::result<audit_tail, error> read_one_tail(const std::filesystem::path& path, std::size_t max_events,
                                                       std::uint64_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    return error{boost::system::error_code(e, boost::system::system_category()),
                 "audit log " + path.string() + ": cannot open: " + os_error(e)};
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int e = errno;
    ::close(fd);
    return error{boost::system::error_code(e, boost::system::system_category()),
                 "audit log " + path.string() + ": cannot stat: " + os_error(e)};
  }
  auto size = static_cast<std::uint64_t>(st.st_size);
  std::uint64_t from = size > max_bytes ? size - max_bytes : 0;
  std::string text(size - from, '\0');
  std::size_t got = 0;
  while (got < text.size()) {
    ssize_t n = ::pread(fd, text.data() + got, text.size() - got, static_cast<off_t>(from + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return error{boost::system::error_code(e, boost::system::system_category()),
                   "audit log " + path.string() + ": cannot read: " + os_error(e)};
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  text.resize(got);
  std::string_view rest(text);
  // Starting mid-file: the first (partial) line is not an event of its own.
  if (from > 0) {
    auto nl = rest.find('\n');
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
  }
  std::deque<std::pair<json::object, std::string>> kept;
  audit_tail out;
  while (!rest.empty()) {
    auto nl = rest.find('\n');
    auto line = rest.substr(0, nl);
    rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
    if (line.empty()) continue;
    boost::system::error_code ec;
    auto v = json::parse(line, ec);
    if (ec || !v.is_object()) {
      ++out.skipped;
      continue;
    }
    kept.emplace_back(std::move(v.as_object()), std::string(line));
    if (kept.size() > max_events) kept.pop_front();
  }
  for (auto& [o, l] : kept) {
    out.events.push_back(std::move(o));
    out.lines.push_back(std::move(l));
  }
  return out;
}

} // namespace

boost::system::result<audit_tail, error> read_audit_tail(const std::filesystem::path& path, std::size_t max_events,
                                                         std::uint64_t max_bytes) {
  auto out = read_one_tail(path, max_events, max_bytes);
  std::error_code ec;
  auto older = audit_log::rotated(path, 1);
  // PATH missing while PATH.1 exists: read between a rotation's rename and
  // its new file (microseconds), or before the first event after it.
  if (!out && out.error().code == boost::system::errc::no_such_file_or_directory && std::filesystem::exists(older, ec))
    return read_one_tail(older, max_events, max_bytes);
  if (!out || out->events.size() >= max_events) return out;
  if (!std::filesystem::exists(older, ec)) return out;
  auto before = read_one_tail(older, max_events - out->events.size(), max_bytes);
  if (!before) return out; // rotated away meanwhile: the current file's events stand
  before->skipped += out->skipped;
  for (std::size_t i = 0; i < out->events.size(); ++i) {
    before->events.push_back(std::move(out->events[i]));
    before->lines.push_back(std::move(out->lines[i]));
  }
  return before;
}

} // namespace edgerelay::telemetry
