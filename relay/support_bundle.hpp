#pragma once
// `edgerelay support-bundle`: one .tar.gz with what a support engineer needs
// to look at a node they cannot log in to (docs/operations.md, "Support
// bundle"). What it collects, and the secrets it never collects:
//
//   MANIFEST.txt        every item, collected or not, and why not
//   config/<name>       the config file, re-written with secrets redacted
//   config/check.txt    what check-config says about it
//   status.json, metrics.txt, deadletter.json, soak.json   from the admin API
//   logs/               the journal of edgerelay.service (journalctl), and
//                       the tail of each --log file
//   audit/audit.log     the tail of the audit log (complete events only)
//   evidence/           the reports in evidence.report_dir
//   versions.txt        the binary, its libraries' versions, and every
//                       shared object mapped into the process
//
// Redaction: the config is parsed as TOML and written back without comments.
// The value of any key whose name contains password, passwd, passphrase,
// secret, token or credential is replaced by "<redacted>", whatever its
// type. A key named key or *_key keeps its value only when it is a path
// (one line, no PEM marker, no long run of base64 characters); otherwise it
// is redacted too. Any string holding a PEM block ("-----BEGIN") is redacted
// wherever it is. Key files are never read. A file that is not valid TOML is
// not included at all (it cannot be redacted reliably). Every other text in
// the bundle (logs, status, check-config output, ...) has PEM blocks and the
// redacted string values removed too.
//
// The archive is written by the system's tar (an Essential package on
// Debian), run directly without a shell, from a private staging directory
// that is removed afterwards; the result appears under its final name only
// when complete.

#include "util/errc.hpp"

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace edgerelay::relay {

struct support_bundle_options {
  std::optional<std::filesystem::path> config; // --config; without it no config, audit log or evidence
  std::string admin;                           // --admin URL; empty: the config's admin.listen, else 127.0.0.1:9310
  std::filesystem::path out;                   // --out FILE.tar.gz
  std::vector<std::filesystem::path> logs;     // --log FILE: log files the node's stderr goes to
  bool journal = true;                         // try journalctl -u edgerelay.service
  std::size_t audit_events = 1000;             // newest audit events kept
  std::uint64_t log_tail_bytes = 4ull << 20;   // of each --log file
  std::chrono::milliseconds timeout{std::chrono::seconds(10)}; // per admin request and for journalctl
};

// One line of the MANIFEST.
struct bundle_item {
  std::string name; // the path in the bundle, or what was looked for
  bool ok = false;
  std::string note; // for ok: what it is; otherwise why it is missing
};

struct support_bundle_report {
  std::filesystem::path written;
  std::vector<bundle_item> items;
};

// Collects and writes the bundle. Fails only when the archive itself cannot
// be written; everything that could not be collected is listed in the
// MANIFEST (and in the report) instead.
boost::system::result<support_bundle_report, error> write_support_bundle(const support_bundle_options& o);

// The redacted config text, the TOML paths of what was redacted, and the
// redacted string values (to scrub them from other texts); or why the text
// cannot be redacted (not valid TOML).
struct redacted_config {
  std::string text;
  std::vector<std::string> redacted_keys;
  std::vector<std::string> secrets;
};
boost::system::result<redacted_config, std::string> redact_config(std::string_view toml_text);

// s with every PEM block ("-----BEGIN ...-----" to its "-----END ...-----",
// or to the end when unterminated) and every occurrence of each secret
// (of at least 4 bytes) replaced by a marker.
std::string scrub(std::string_view s, const std::vector<std::string>& secrets = {});

} // namespace edgerelay::relay
