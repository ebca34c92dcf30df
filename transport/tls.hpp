#pragma once
// edgerelay::transport TLS material: building OpenSSL contexts for the relay
// listener (mTLS server) and for dialling peers (mTLS client), checking a
// peer's identity against an allow list, naming why a handshake failed, and
// holding the current context so it can be replaced while sessions run.
//
// Policy (DESIGN §5). Both roles: TLS 1.2 minimum, TLS 1.3 preferred (the
// highest version both sides support wins), forward-secret AEAD ciphers for
// TLS 1.2, the peer's chain must end at a certificate from `ca`, and when `crl`
// is set the peer's leaf certificate is checked against it. The server always
// requires a client certificate. The client always checks the server's name.
//
// Errors. Building a context reads files the operator wrote; every failure is
// an `error` whose code is a tls_errc and whose message names the file and what
// is wrong with it ("certificate /etc/er/hub.pem expired on
// 2021-01-01T00:00:00Z"). Nothing here throws.
//
// Threads. The free functions are safe to call from any thread. A built
// ssl::context is not modified afterwards, so any number of sessions may
// create streams from it concurrently. tls_material is safe to use from any
// thread.

#include "util/errc.hpp"

#include <openssl/types.h>

struct stack_st_X509; // STACK_OF(X509), without <openssl/x509.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace boost::asio::ssl {
class context;
template <typename Stream>
class stream;
} // namespace boost::asio::ssl

namespace edgerelay::transport {

namespace ssl = boost::asio::ssl;

template <class T>
using tls_result = boost::system::result<T, edgerelay::error>;

// What went wrong with TLS material. Every code is "fix state first": the
// operator must correct a file or a setting; retrying unchanged cannot help.
enum class tls_errc {
  ok = 0,
  file_unreadable = 1, // missing, not a regular file, permission, too large
  not_pem,             // no PEM block of the expected kind
  malformed,           // a PEM block that does not decode
  key_mismatch,        // the private key does not belong to the certificate
  key_encrypted,       // passphrase-protected keys are not supported
  cert_expired,        // notAfter is in the past
  cert_not_yet_valid,  // notBefore is in the future
  crl_invalid,         // CRL not signed by a CA in `ca`, or past its nextUpdate
  bad_allow_pattern,   // an allow-list entry that is not URI:/DNS:/CN:<glob>
  bad_server_name,     // empty or unusable server_name on a client
  missing_file,        // a required path (cert, key, ca) is empty
  file_exists,         // pki_init would overwrite existing material
  write_failed,        // writing generated material failed
  not_issued_by_ca,    // add_revoked: the certificate is not from this CA
  openssl_failure,     // the library refused an operation (out of memory, ...)
  crl_not_yet_valid,   // a CRL's lastUpdate is in the future
};

const boost::system::error_category& tls_category() noexcept;
inline boost::system::error_code make_error_code(tls_errc e) noexcept { return {static_cast<int>(e), tls_category()}; }

// A refusal that only a time not reached yet causes (a certificate's
// notBefore, a CRL's lastUpdate): the same files may load later.
inline bool refused_until_later(const boost::system::error_code& ec) noexcept {
  return ec == make_error_code(tls_errc::cert_not_yet_valid) || ec == make_error_code(tls_errc::crl_not_yet_valid);
}

// The files that make up one side's TLS material. Paths are read when a
// context is built; nothing keeps them open.
struct tls_files {
  std::filesystem::path cert; // PEM: leaf certificate first, then any intermediates to send
  std::filesystem::path key;  // PEM: unencrypted private key matching `cert`
  std::filesystem::path ca;   // PEM: one or more trusted CA certificates
  std::filesystem::path crl;  // PEM: zero or more CRLs; empty path = no revocation check
  // Peer identities accepted after the handshake: "URI:<glob>", "DNS:<glob>",
  // "CN:<glob>" ('*' any run of characters, '?' one; DNS compares without
  // case). Empty = any certificate that chains to `ca`.
  std::vector<std::string> allow;
};

// A context for the relay listener. Requires and verifies a client
// certificate. Fails if any file is unreadable or not PEM, the key does not
// match the certificate, the certificate is expired or not yet valid, the CRL
// is not signed by a CA in `ca` or is past its nextUpdate, or an allow-list
// pattern is malformed.
tls_result<std::shared_ptr<ssl::context>> make_server_context(const tls_files& files);

// A context for dialling a peer. Presents `cert`/`key` when set (both or
// neither), verifies the server chain against `ca` (and `crl`), and verifies
// the server's certificate names `server_name` (a DNS name matched against SAN
// DNS entries, or an IPv4/IPv6 literal matched against SAN IP entries). Every
// stream made from this context checks that name; prepare_client_stream()
// additionally sets SNI and may name a different server per stream.
tls_result<std::shared_ptr<ssl::context>> make_client_context(const tls_files& files, std::string server_name);

// Sets SNI (DNS names only) and the name the server's certificate must carry
// on one SSL object before its handshake.
tls_result<void> prepare_client_ssl(SSL* ssl, std::string_view server_name);

template <class NextLayer>
tls_result<void> prepare_client_stream(ssl::stream<NextLayer>& stream, std::string_view server_name) {
  return prepare_client_ssl(stream.native_handle(), server_name);
}

// Checks that every allow-list entry is well formed.
tls_result<void> validate_allow_list(const std::vector<std::string>& allow);

// True when `cert` matches one of `allow` (or `allow` is empty and `cert` is
// not null). When `matched_or_reason` is given it receives the matching
// pattern, or a sentence naming the certificate's identities and why none
// matched. Does not verify the chain: call it on a certificate the handshake
// already verified.
bool identity_allowed(X509* cert, const std::vector<std::string>& allow, std::string* matched_or_reason);

// Why a connection was refused, for the metric label and the log line.
enum class tls_failure {
  none,
  no_client_cert,   // the client sent no certificate
  unknown_ca,       // the chain does not end at a configured CA (incl. a missing intermediate)
  expired,          // a certificate in the chain is past notAfter
  not_yet_valid,    // a certificate in the chain is before notBefore
  revoked,          // the leaf is listed in the CRL
  name_mismatch,    // the server's certificate does not name server_name
  not_allowed,      // verified, but the identity is not in the allow list
  protocol_version, // no common TLS version (peer below TLS 1.2)
  handshake_other,  // anything else: I/O, timeout, bad CRL, malformed messages, ...
};

const char* to_string(tls_failure f) noexcept;

// Names the reason a handshake failed, from the error the handshake returned
// and the SSL object it ran on (its verify result and, for failures the peer
// reported, the alert it sent). Works on either side: the server classifies
// a rejected client, the client classifies a rejected server or the alert a
// server sent it. `ssl` may be null. A successful handshake is `none`.
tls_failure classify_handshake(const boost::system::error_code& ec, SSL* ssl);

// One sentence for the log line: the classification, OpenSSL's verify
// message, and the subject of the certificate that failed when known.
std::string describe_handshake_failure(const boost::system::error_code& ec, SSL* ssl);

// After a successful handshake: `none` when the peer's certificate passed
// verification and matches `allow`, else `not_allowed` (or the verify
// failure). `detail` receives the matched pattern or the reason.
tls_failure authorize_peer(SSL* ssl, const std::vector<std::string>& allow, std::string* detail);

// A certificate as the status endpoint shows it.
struct cert_info {
  std::string subject;              // RFC 2253, e.g. "CN=edgerelay-hub"
  std::string issuer;               // RFC 2253
  std::string serial;               // upper-case hex
  std::string sha256;               // fingerprint of the DER certificate, lower-case hex
  std::int64_t not_before_unix = 0; // seconds since the epoch, UTC
  std::int64_t not_after_unix = 0;
};

tls_result<cert_info> read_cert_info(const std::filesystem::path& cert_file);
cert_info get_cert_info(X509* cert);

// The certificate chain a TLS peer presented at a handshake that succeeded,
// kept for the life of the connection so that the connection can be checked
// again when this side's trust material changes (a new CRL, a new CA file).
class peer_certificates {
public:
  // Copies the peer's leaf and the chain it sent; null when it sent none.
  static std::shared_ptr<const peer_certificates> capture(SSL* ssl);
  ~peer_certificates();
  peer_certificates(const peer_certificates&) = delete;
  peer_certificates& operator=(const peer_certificates&) = delete;

  cert_info leaf() const;
  // Verifies the chain again, now, against `ctx`'s CA store, CRLs and
  // verification flags (not the host name: that cannot change). On failure
  // the reason class (revoked, unknown_ca, expired, ...) and a sentence.
  tls_failure reverify(const ssl::context& ctx, std::string* detail = nullptr) const;

private:
  peer_certificates() = default;
  X509* leaf_ = nullptr;
  stack_st_X509* chain_ = nullptr; // STACK_OF(X509)
};

// The certificate a context presents (its own leaf), as loaded: what is in
// force, which may differ from the file on disk after a failed reload.
// nullopt for a context without a certificate.
std::optional<cert_info> context_cert_info(const ssl::context& ctx);
// The earliest nextUpdate (Unix seconds) of the CRLs a context checks peers
// against: once it passes, OpenSSL refuses every chain those CRLs cover
// ("CRL has expired"). nullopt without CRLs, or when none has a nextUpdate.
std::optional<std::int64_t> context_crl_next_update(const ssl::context& ctx);

enum class tls_role { server, client };

// The TLS context one listener or one dialer currently uses. Owns the
// context and the files it was built from. current()/snapshot() copy the
// pointers under a mutex, so a session keeps the material it started with
// for its whole life; reload() builds a new context completely before
// swapping it in and keeps the old one when the build fails. Reloads are
// serialized; all members may be called from any thread.
class tls_material {
public:
  struct snapshot_t {
    std::shared_ptr<ssl::context> context;
    std::shared_ptr<const tls_files> files; // allow list that belongs to `context`
    std::uint64_t generation = 0;           // 1 after create(), +1 per successful reload
  };

  static tls_result<std::unique_ptr<tls_material>> create(tls_role role, tls_files files, std::string server_name = {});

  std::shared_ptr<ssl::context> current() const;
  snapshot_t snapshot() const;

  // Re-reads the same paths (their contents changed).
  tls_result<void> reload();
  // Switches to other paths.
  tls_result<void> reload(tls_files next);

  tls_material(const tls_material&) = delete;
  tls_material& operator=(const tls_material&) = delete;

private:
  tls_material(tls_role role, std::string server_name) : role_(role), server_name_(std::move(server_name)) {}
  tls_result<std::shared_ptr<ssl::context>> build(const tls_files& files) const;

  const tls_role role_;
  const std::string server_name_;
  std::mutex reload_mu_;  // serializes reloads; held while building
  mutable std::mutex mu_; // guards snap_; held only to copy or swap
  snapshot_t snap_;
};

} // namespace edgerelay::transport

template <>
struct boost::system::is_error_code_enum<edgerelay::transport::tls_errc> : std::true_type {};
