#include "transport/tls.hpp"

#include "transport/detail/openssl.hpp"

#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fcntl.h>
#include <optional>
#include <sys/stat.h>
#include <unistd.h>

namespace edgerelay::transport {
namespace {

using namespace detail;

// ------------------------------------------------------------------ errors

class category final : public boost::system::error_category {
public:
  const char* name() const noexcept override { return "edgerelay.tls"; }
  std::string message(int ev) const override {
    switch (static_cast<tls_errc>(ev)) {
    case tls_errc::ok: return "ok";
    case tls_errc::file_unreadable: return "TLS file cannot be read";
    case tls_errc::not_pem: return "TLS file is not PEM";
    case tls_errc::malformed: return "TLS file does not decode";
    case tls_errc::key_mismatch: return "private key does not match certificate";
    case tls_errc::key_encrypted: return "private key is passphrase-protected";
    case tls_errc::cert_expired: return "certificate expired";
    case tls_errc::cert_not_yet_valid: return "certificate not yet valid";
    case tls_errc::crl_invalid: return "CRL is not usable";
    case tls_errc::bad_allow_pattern: return "malformed allow-list entry";
    case tls_errc::bad_server_name: return "unusable server name";
    case tls_errc::missing_file: return "required TLS file not configured";
    case tls_errc::file_exists: return "file already exists";
    case tls_errc::write_failed: return "cannot write TLS file";
    case tls_errc::not_issued_by_ca: return "certificate not issued by this CA";
    case tls_errc::openssl_failure: return "OpenSSL operation failed";
    case tls_errc::crl_not_yet_valid: return "CRL not yet valid";
    }
    return "unknown TLS error";
  }
};

// ------------------------------------------------------------------ files

constexpr off_t max_tls_file_bytes = 1 << 20;

tls_result<std::string> read_small_file(const std::filesystem::path& p, const char* what) {
  const std::string where = std::string(what) + " " + p.string();
  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return fail(tls_errc::file_unreadable, where + ": cannot read: " + std::strerror(errno));
  struct closer {
    int fd;
    ~closer() { ::close(fd); }
  } guard{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) return fail(tls_errc::file_unreadable, where + ": cannot stat: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return fail(tls_errc::file_unreadable, where + ": is not a regular file");
  if (st.st_size > max_tls_file_bytes) return fail(tls_errc::file_unreadable, where + ": is larger than 1 MiB");
  std::string data;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(tls_errc::file_unreadable, where + ": cannot read: " + std::strerror(errno));
    if (n == 0) break;
    data.append(buf, static_cast<std::size_t>(n));
    if (data.size() > static_cast<std::size_t>(max_tls_file_bytes))
      return fail(tls_errc::file_unreadable, where + ": is larger than 1 MiB");
  }
  if (data.empty()) return fail(tls_errc::not_pem, where + ": is empty");
  return data;
}

bio_ptr mem_bio(const std::string& text) {
  return bio_ptr(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

// True when the last read stopped because no further PEM block of the kind
// exists (the normal end of a file), rather than a block failing to decode.
bool pem_at_end() {
  unsigned long e = ERR_peek_last_error();
  return ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
}

tls_result<std::vector<x509_ptr>> parse_certs(const std::string& text, const std::string& where) {
  bio_ptr bio = mem_bio(text);
  if (!bio) return fail(tls_errc::openssl_failure, where + ": " + openssl_errors());
  std::vector<x509_ptr> out;
  ERR_clear_error();
  for (;;) {
    X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr);
    if (!x) {
      if (pem_at_end()) break;
      return fail(tls_errc::malformed, where + ": certificate block " + std::to_string(out.size() + 1) +
                                           " does not decode: " + openssl_errors());
    }
    out.emplace_back(x);
  }
  ERR_clear_error();
  if (out.empty()) return fail(tls_errc::not_pem, where + ": is not PEM: no CERTIFICATE block found");
  return out;
}

tls_result<std::vector<x509_ptr>> load_certs(const std::filesystem::path& p, const char* what) {
  auto text = read_small_file(p, what);
  if (!text) return text.error();
  return parse_certs(*text, std::string(what) + " " + p.string());
}

int no_passphrase(char*, int, int, void*) { return -1; }

tls_result<pkey_ptr> load_key(const std::filesystem::path& p) {
  const std::string where = "private key " + p.string();
  auto text = read_small_file(p, "private key");
  if (!text) return text.error();
  if (text->find("-----BEGIN ENCRYPTED PRIVATE KEY-----") != std::string::npos ||
      text->find("Proc-Type: 4,ENCRYPTED") != std::string::npos)
    return fail(tls_errc::key_encrypted, where + ": is passphrase-protected; store the key unencrypted (mode 0600)");
  bio_ptr bio = mem_bio(*text);
  if (!bio) return fail(tls_errc::openssl_failure, where + ": " + openssl_errors());
  ERR_clear_error();
  EVP_PKEY* k = PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr);
  if (!k) {
    if (pem_at_end() || text->find("-----BEGIN") == std::string::npos) {
      ERR_clear_error();
      return fail(tls_errc::not_pem, where + ": is not PEM: no PRIVATE KEY block found");
    }
    return fail(tls_errc::malformed, where + ": does not decode: " + openssl_errors());
  }
  return pkey_ptr(k);
}

tls_result<std::vector<crl_ptr>> load_crls(const std::filesystem::path& p) {
  const std::string where = "CRL " + p.string();
  auto text = read_small_file(p, "CRL");
  if (!text) return text.error();
  bio_ptr bio = mem_bio(*text);
  if (!bio) return fail(tls_errc::openssl_failure, where + ": " + openssl_errors());
  std::vector<crl_ptr> out;
  ERR_clear_error();
  for (;;) {
    X509_CRL* c = PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr);
    if (!c) {
      if (pem_at_end()) break;
      return fail(tls_errc::malformed,
                  where + ": CRL block " + std::to_string(out.size() + 1) + " does not decode: " + openssl_errors());
    }
    out.emplace_back(c);
  }
  ERR_clear_error();
  if (out.empty()) return fail(tls_errc::not_pem, where + ": is not PEM: no X509 CRL block found");
  return out;
}

// ------------------------------------------------------------------ names and times

std::string name_string(const X509_NAME* name) {
  if (!name) return {};
  bio_ptr bio(BIO_new(BIO_s_mem()));
  if (!bio || X509_NAME_print_ex(bio.get(), name, 0, XN_FLAG_RFC2253) < 0) return {};
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return n > 0 ? std::string(data, static_cast<std::size_t>(n)) : std::string();
}

std::int64_t asn1_unix(const ASN1_TIME* t) {
  struct tm tm {};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return static_cast<std::int64_t>(timegm(&tm));
}

std::string asn1_text(const ASN1_TIME* t) {
  struct tm tm {};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return "an unreadable date";
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

tls_result<void> check_validity(X509* x, const std::string& where) {
  if (X509_cmp_current_time(X509_get0_notAfter(x)) <= 0)
    return fail(tls_errc::cert_expired, where + " expired on " + asn1_text(X509_get0_notAfter(x)));
  if (X509_cmp_current_time(X509_get0_notBefore(x)) >= 0)
    return fail(tls_errc::cert_not_yet_valid, where + " is not valid before " + asn1_text(X509_get0_notBefore(x)));
  return {};
}

// ------------------------------------------------------------------ verify detail

// What the verify callback saw about the first certificate that failed, kept
// on the SSL object so the log line can name it after the handshake failed.
struct verify_detail {
  int error = X509_V_OK;
  int depth = 0;
  std::string subject;
  std::string not_before, not_after;
};

void free_verify_detail(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) {
  delete static_cast<verify_detail*>(ptr);
}

int verify_detail_index() {
  static const int idx = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, free_verify_detail);
  return idx;
}

int record_verify_failure(int preverify_ok, X509_STORE_CTX* sctx) {
  if (preverify_ok) return preverify_ok;
  auto* s = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  const int idx = verify_detail_index();
  if (s && idx >= 0 && !SSL_get_ex_data(s, idx)) {
    auto d = std::make_unique<verify_detail>();
    d->error = X509_STORE_CTX_get_error(sctx);
    d->depth = X509_STORE_CTX_get_error_depth(sctx);
    if (X509* x = X509_STORE_CTX_get_current_cert(sctx)) {
      d->subject = name_string(X509_get_subject_name(x));
      d->not_before = asn1_text(X509_get0_notBefore(x));
      d->not_after = asn1_text(X509_get0_notAfter(x));
    }
    if (SSL_set_ex_data(s, idx, d.get()) == 1) d.release();
  }
  return 0;
}

tls_failure from_verify_result(long v) {
  switch (v) {
  case X509_V_OK: return tls_failure::none;
  case X509_V_ERR_CERT_HAS_EXPIRED: return tls_failure::expired;
  case X509_V_ERR_CERT_NOT_YET_VALID: return tls_failure::not_yet_valid;
  case X509_V_ERR_CERT_REVOKED: return tls_failure::revoked;
  case X509_V_ERR_HOSTNAME_MISMATCH:
  case X509_V_ERR_IP_ADDRESS_MISMATCH:
  case X509_V_ERR_EMAIL_MISMATCH: return tls_failure::name_mismatch;
  case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
  case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
  case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
  case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
  case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
  case X509_V_ERR_CERT_UNTRUSTED:
  case X509_V_ERR_CERT_REJECTED:
  case X509_V_ERR_INVALID_CA:
  case X509_V_ERR_CERT_SIGNATURE_FAILURE:
  case X509_V_ERR_PATH_LENGTH_EXCEEDED:
  case X509_V_ERR_CERT_CHAIN_TOO_LONG:
  case X509_V_ERR_SUBJECT_ISSUER_MISMATCH:
  case X509_V_ERR_AKID_SKID_MISMATCH: return tls_failure::unknown_ca;
  default: return tls_failure::handshake_other;
  }
}

tls_failure from_alert(int alert) {
  switch (alert) {
  case SSL_AD_UNKNOWN_CA: return tls_failure::unknown_ca;
  case SSL_AD_CERTIFICATE_EXPIRED: return tls_failure::expired;
  case SSL_AD_CERTIFICATE_REVOKED: return tls_failure::revoked;
  case SSL_AD_CERTIFICATE_REQUIRED: return tls_failure::no_client_cert;
  case SSL_AD_PROTOCOL_VERSION: return tls_failure::protocol_version;
  default: return tls_failure::handshake_other;
  }
}

// ------------------------------------------------------------------ allow list

enum class id_kind { uri, dns, cn };

struct pattern {
  id_kind kind;
  std::string_view glob;
};

std::optional<pattern> parse_pattern(std::string_view s) {
  auto take = [&](std::string_view prefix, id_kind k) -> std::optional<pattern> {
    if (s.size() > prefix.size() && s.substr(0, prefix.size()) == prefix) return pattern{k, s.substr(prefix.size())};
    return std::nullopt;
  };
  if (auto p = take("URI:", id_kind::uri)) return p;
  if (auto p = take("DNS:", id_kind::dns)) return p;
  if (auto p = take("CN:", id_kind::cn)) return p;
  return std::nullopt;
}

bool glob_match(std::string_view pat, std::string_view s, bool icase) {
  auto eq = [icase](char a, char b) {
    if (!icase) return a == b;
    return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
  };
  std::size_t p = 0, i = 0, star = std::string_view::npos, mark = 0;
  while (i < s.size()) {
    if (p < pat.size() && pat[p] == '*') {
      star = p++;
      mark = i;
    } else if (p < pat.size() && (pat[p] == '?' || eq(pat[p], s[i]))) {
      ++p;
      ++i;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      i = ++mark;
    } else {
      return false;
    }
  }
  while (p < pat.size() && pat[p] == '*')
    ++p;
  return p == pat.size();
}

struct identities {
  std::vector<std::string> uri, dns, cn;
};

std::string asn1_string(const ASN1_STRING* s) {
  const auto* d = reinterpret_cast<const char*>(ASN1_STRING_get0_data(s));
  std::string out(d, static_cast<std::size_t>(ASN1_STRING_length(s)));
  if (out.find('\0') != std::string::npos) return {}; // embedded NUL: never match
  return out;
}

identities identities_of(X509* cert) {
  identities out;
  names_ptr sans(static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (sans) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans.get()); ++i) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(sans.get(), i);
      if (g->type == GEN_URI) {
        if (auto v = asn1_string(g->d.uniformResourceIdentifier); !v.empty()) out.uri.push_back(std::move(v));
      } else if (g->type == GEN_DNS) {
        if (auto v = asn1_string(g->d.dNSName); !v.empty()) out.dns.push_back(std::move(v));
      }
    }
  }
  const X509_NAME* subject = X509_get_subject_name(cert);
  for (int i = -1; (i = X509_NAME_get_index_by_NID(subject, NID_commonName, i)) >= 0;) {
    const ASN1_STRING* data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i));
    unsigned char* utf8 = nullptr;
    int n = ASN1_STRING_to_UTF8(&utf8, data);
    if (n > 0) {
      std::string v(reinterpret_cast<char*>(utf8), static_cast<std::size_t>(n));
      if (v.find('\0') == std::string::npos) out.cn.push_back(std::move(v));
    }
    OPENSSL_free(utf8);
  }
  ERR_clear_error();
  return out;
}

// ------------------------------------------------------------------ contexts

constexpr const char* tls12_ciphers = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL";

tls_result<void> load_identity(SSL_CTX* c, const tls_files& f) {
  auto certs = load_certs(f.cert, "certificate");
  if (!certs) return certs.error();
  X509* leaf = (*certs)[0].get();
  const std::string cert_where = "certificate " + f.cert.string();
  if (auto v = check_validity(leaf, cert_where); !v) return v.error();
  auto key = load_key(f.key);
  if (!key) return key.error();
  if (X509_check_private_key(leaf, key->get()) != 1) {
    ERR_clear_error();
    return fail(tls_errc::key_mismatch, "private key " + f.key.string() + " does not match certificate " +
                                            f.cert.string() + " (" + name_string(X509_get_subject_name(leaf)) + ")");
  }
  if (SSL_CTX_use_certificate(c, leaf) != 1)
    return fail(tls_errc::openssl_failure, cert_where + " is refused by OpenSSL: " + openssl_errors());
  for (std::size_t i = 1; i < certs->size(); ++i)
    if (SSL_CTX_add1_chain_cert(c, (*certs)[i].get()) != 1)
      return fail(tls_errc::openssl_failure,
                  cert_where + ": chain certificate " + std::to_string(i + 1) + " is refused: " + openssl_errors());
  if (SSL_CTX_use_PrivateKey(c, key->get()) != 1 || SSL_CTX_check_private_key(c) != 1)
    return fail(tls_errc::key_mismatch, "private key " + f.key.string() + " is refused with certificate " +
                                            f.cert.string() + ": " + openssl_errors());
  return {};
}

tls_result<void> load_trust(SSL_CTX* c, const tls_files& f) {
  if (f.ca.empty()) return fail(tls_errc::missing_file, "no CA file configured: peers cannot be verified");
  auto cas = load_certs(f.ca, "CA file");
  if (!cas) return cas.error();
  X509_STORE* store = SSL_CTX_get_cert_store(c);
  for (auto& ca : *cas)
    if (X509_STORE_add_cert(store, ca.get()) != 1) {
      unsigned long e = ERR_peek_last_error();
      if (ERR_GET_REASON(e) == X509_R_CERT_ALREADY_IN_HASH_TABLE) {
        ERR_clear_error();
        continue;
      }
      return fail(tls_errc::openssl_failure, "CA file " + f.ca.string() + ": " + openssl_errors());
    }
  if (f.crl.empty()) return {};

  auto crls = load_crls(f.crl);
  if (!crls) return crls.error();
  const std::string where = "CRL " + f.crl.string();
  for (auto& crl : *crls) {
    const X509_NAME* issuer = X509_CRL_get_issuer(crl.get());
    // Every CRL must come from a CA in `ca` and verify with it. One from
    // another issuer (a wrong file) would otherwise be put in force, and
    // with CRL checking on, every chain whose issuer has no CRL here fails
    // ("unable to get certificate CRL"): all sessions closed, every
    // handshake refused. An intermediate's CRL needs that intermediate in
    // the `ca` bundle.
    // (Two CAs may share a name, as in a rollover that keeps the subject:
    // the CRL must verify with one of them.)
    bool issuer_known = false, verified = false;
    for (auto& ca : *cas) {
      if (X509_NAME_cmp(issuer, X509_get_subject_name(ca.get())) != 0) continue;
      issuer_known = true;
      if (X509_CRL_verify(crl.get(), X509_get0_pubkey(ca.get())) == 1) verified = true;
      ERR_clear_error();
    }
    if (issuer_known && !verified)
      return fail(tls_errc::crl_invalid, where + ": signature does not verify with CA " + name_string(issuer));
    if (!issuer_known)
      return fail(tls_errc::crl_invalid, where + " is issued by " + name_string(issuer) + ", which is not a CA in " +
                                             f.ca.string() +
                                             "; use the CRL of a CA in that file (for an intermediate's CRL, add "
                                             "the intermediate to the CA file)");
    const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl.get());
    if (next && X509_cmp_current_time(next) <= 0)
      return fail(tls_errc::crl_invalid, where + " (issuer " + name_string(issuer) + ") expired on " + asn1_text(next) +
                                             " (nextUpdate); issue a new CRL");
    const ASN1_TIME* last = X509_CRL_get0_lastUpdate(crl.get());
    if (last && X509_cmp_current_time(last) >= 0)
      return fail(tls_errc::crl_not_yet_valid, where + " is not valid before " + asn1_text(last) + " (lastUpdate)");
    if (X509_STORE_add_crl(store, crl.get()) != 1) {
      unsigned long e = ERR_peek_last_error();
      if (ERR_GET_REASON(e) == X509_R_CERT_ALREADY_IN_HASH_TABLE) {
        ERR_clear_error();
        continue;
      }
      return fail(tls_errc::openssl_failure, where + ": " + openssl_errors());
    }
  }
  X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  return {};
}

bool is_ip_literal(const std::string& name) {
  ASN1_OCTET_STRING* ip = a2i_IPADDRESS(name.c_str());
  ERR_clear_error();
  if (!ip) return false;
  ASN1_OCTET_STRING_free(ip);
  return true;
}

tls_result<void> check_server_name(std::string_view name) {
  if (name.empty())
    return fail(tls_errc::bad_server_name, "server_name is empty: the server's certificate could not be checked");
  if (name.size() > 253 || std::any_of(name.begin(), name.end(), [](char ch) {
        return ch == '\0' || std::isspace(static_cast<unsigned char>(ch)) || ch == '/';
      }))
    return fail(tls_errc::bad_server_name, "server_name \"" + std::string(name) + "\" is not a DNS name or IP address");
  return {};
}

// Makes `param` require the peer certificate to carry `name`.
tls_result<void> set_expected_name(X509_VERIFY_PARAM* param, const std::string& name) {
  X509_VERIFY_PARAM_set1_host(param, nullptr, 0);
  X509_VERIFY_PARAM_set1_ip(param, nullptr, 0);
  X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
  int ok = is_ip_literal(name) ? X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str())
                               : X509_VERIFY_PARAM_set1_host(param, name.c_str(), name.size());
  if (ok != 1) return fail(tls_errc::bad_server_name, "server_name \"" + name + "\" is refused: " + openssl_errors());
  return {};
}

tls_result<std::shared_ptr<ssl::context>> build_context(tls_role role, const tls_files& f,
                                                        const std::string& server_name) {
  if (role == tls_role::server && (f.cert.empty() || f.key.empty()))
    return fail(tls_errc::missing_file, "the server needs both a certificate and a private key file");
  if (role == tls_role::client && f.cert.empty() != f.key.empty())
    return fail(tls_errc::missing_file, "a client certificate and its private key must be configured together");
  if (role == tls_role::client)
    if (auto v = check_server_name(server_name); !v) return v.error();
  if (auto v = validate_allow_list(f.allow); !v) return v.error();

  std::shared_ptr<ssl::context> ctx;
  try {
    ctx =
        std::make_shared<ssl::context>(role == tls_role::server ? ssl::context::tls_server : ssl::context::tls_client);
  } catch (const std::exception& e) {
    return fail(tls_errc::openssl_failure, std::string("cannot create a TLS context: ") + e.what());
  }
  SSL_CTX* c = ctx->native_handle();
  ERR_clear_error();
  if (SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION) != 1 || SSL_CTX_set_max_proto_version(c, 0) != 1 ||
      SSL_CTX_set_cipher_list(c, tls12_ciphers) != 1)
    return fail(tls_errc::openssl_failure, "cannot set the TLS protocol policy: " + openssl_errors());
  SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                             (role == tls_role::server ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));

  if (!f.cert.empty())
    if (auto v = load_identity(c, f); !v) return v.error();
  if (auto v = load_trust(c, f); !v) return v.error();

  if (role == tls_role::server) {
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, record_verify_failure);
    static const unsigned char sid_ctx[] = "edgerelay";
    SSL_CTX_set_session_id_context(c, sid_ctx, sizeof sid_ctx - 1);
  } else {
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, record_verify_failure);
    if (auto v = set_expected_name(SSL_CTX_get0_param(c), server_name); !v) return v.error();
  }
  return ctx;
}

} // namespace

// ------------------------------------------------------------------ public

const boost::system::error_category& tls_category() noexcept {
  static const category c;
  return c;
}

tls_result<std::shared_ptr<ssl::context>> make_server_context(const tls_files& files) {
  return build_context(tls_role::server, files, {});
}

tls_result<std::shared_ptr<ssl::context>> make_client_context(const tls_files& files, std::string server_name) {
  return build_context(tls_role::client, files, server_name);
}

tls_result<void> prepare_client_ssl(SSL* s, std::string_view server_name) {
  if (!s) return fail(tls_errc::openssl_failure, "no SSL object to configure");
  if (auto v = check_server_name(server_name); !v) return v.error();
  const std::string name(server_name);
  if (auto v = set_expected_name(SSL_get0_param(s), name); !v) return v.error();
  if (!is_ip_literal(name) &&
      SSL_ctrl(s, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, const_cast<char*>(name.c_str())) != 1)
    return fail(tls_errc::bad_server_name, "cannot send server_name \"" + name + "\" as SNI: " + openssl_errors());
  return {};
}

tls_result<void> validate_allow_list(const std::vector<std::string>& allow) {
  for (const auto& entry : allow)
    if (!parse_pattern(entry))
      return fail(tls_errc::bad_allow_pattern,
                  "allow entry \"" + entry + "\" must be URI:<glob>, DNS:<glob> or CN:<glob> with a non-empty glob");
  return {};
}

bool identity_allowed(X509* cert, const std::vector<std::string>& allow, std::string* matched_or_reason) {
  auto say = [&](std::string s) {
    if (matched_or_reason) *matched_or_reason = std::move(s);
  };
  if (!cert) {
    say("no peer certificate");
    return false;
  }
  if (allow.empty()) {
    say("any certificate from the CA (allow list is empty)");
    return true;
  }
  const identities ids = identities_of(cert);
  for (const auto& entry : allow) {
    auto p = parse_pattern(entry);
    if (!p) continue;
    const std::vector<std::string>& candidates =
        p->kind == id_kind::uri ? ids.uri : (p->kind == id_kind::dns ? ids.dns : ids.cn);
    for (const auto& c : candidates)
      if (glob_match(p->glob, c, p->kind == id_kind::dns)) {
        say(entry);
        return true;
      }
  }
  if (matched_or_reason) {
    std::string have;
    auto add = [&](const char* prefix, const std::vector<std::string>& v) {
      for (const auto& s : v)
        have += (have.empty() ? "" : ", ") + std::string(prefix) + s;
    };
    add("URI:", ids.uri);
    add("DNS:", ids.dns);
    add("CN:", ids.cn);
    std::string want;
    for (const auto& a : allow)
      want += (want.empty() ? "" : ", ") + a;
    say("identity [" + have + "] matches none of [" + want + "]");
  }
  return false;
}

const char* to_string(tls_failure f) noexcept {
  switch (f) {
  case tls_failure::none: return "none";
  case tls_failure::no_client_cert: return "no_client_cert";
  case tls_failure::unknown_ca: return "unknown_ca";
  case tls_failure::expired: return "expired";
  case tls_failure::not_yet_valid: return "not_yet_valid";
  case tls_failure::revoked: return "revoked";
  case tls_failure::name_mismatch: return "name_mismatch";
  case tls_failure::not_allowed: return "not_allowed";
  case tls_failure::protocol_version: return "protocol_version";
  case tls_failure::handshake_other: return "handshake_other";
  }
  return "handshake_other";
}

tls_failure classify_handshake(const boost::system::error_code& ec, SSL* ssl) {
  if (!ec) return tls_failure::none;
  if (ssl) {
    if (long v = SSL_get_verify_result(ssl); v != X509_V_OK) return from_verify_result(v);
  }
  if (ec.category() != boost::asio::error::get_ssl_category()) return tls_failure::handshake_other;
  const auto e = static_cast<unsigned long>(static_cast<unsigned int>(ec.value()));
  if (ERR_GET_LIB(e) != ERR_LIB_SSL) return tls_failure::handshake_other;
  const int reason = ERR_GET_REASON(e);
  switch (reason) {
  case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE: return tls_failure::no_client_cert;
  case SSL_R_UNSUPPORTED_PROTOCOL:
  case SSL_R_NO_PROTOCOLS_AVAILABLE:
  case SSL_R_WRONG_VERSION_NUMBER:
  case SSL_R_UNSUPPORTED_SSL_VERSION:
  case SSL_R_VERSION_TOO_LOW:
  case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION: return tls_failure::protocol_version;
  default: break;
  }
  if (reason > SSL_AD_REASON_OFFSET) return from_alert(reason - SSL_AD_REASON_OFFSET);
  return tls_failure::handshake_other;
}

std::string describe_handshake_failure(const boost::system::error_code& ec, SSL* ssl) {
  const tls_failure f = classify_handshake(ec, ssl);
  std::string out = to_string(f);
  const long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
  if (v != X509_V_OK) {
    out += ": ";
    out += X509_verify_cert_error_string(v);
    const int idx = verify_detail_index();
    if (const auto* d = idx >= 0 ? static_cast<const verify_detail*>(SSL_get_ex_data(ssl, idx)) : nullptr) {
      out += " (depth " + std::to_string(d->depth) + ", subject \"" + d->subject + "\"";
      if (f == tls_failure::expired) out += ", expired on " + d->not_after;
      if (f == tls_failure::not_yet_valid) out += ", not valid before " + d->not_before;
      out += ")";
    }
  } else if (ec) {
    out += ": " + ec.message();
  }
  return out;
}

tls_failure authorize_peer(SSL* ssl, const std::vector<std::string>& allow, std::string* detail) {
  X509* peer = ssl ? SSL_get0_peer_certificate(ssl) : nullptr;
  if (!peer) {
    if (detail) *detail = "the peer presented no certificate";
    return tls_failure::no_client_cert;
  }
  if (long v = SSL_get_verify_result(ssl); v != X509_V_OK) {
    if (detail) *detail = X509_verify_cert_error_string(v);
    return from_verify_result(v);
  }
  return identity_allowed(peer, allow, detail) ? tls_failure::none : tls_failure::not_allowed;
}

cert_info get_cert_info(X509* cert) {
  cert_info info;
  if (!cert) return info;
  info.subject = name_string(X509_get_subject_name(cert));
  info.issuer = name_string(X509_get_issuer_name(cert));
  info.not_before_unix = asn1_unix(X509_get0_notBefore(cert));
  info.not_after_unix = asn1_unix(X509_get0_notAfter(cert));
  if (bn_ptr bn{ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr)}) {
    if (char* hex = BN_bn2hex(bn.get())) {
      info.serial = hex;
      OPENSSL_free(hex);
    }
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (X509_digest(cert, EVP_sha256(), md, &len) == 1) {
    static constexpr char digits[] = "0123456789abcdef";
    for (unsigned i = 0; i < len; ++i) {
      info.sha256.push_back(digits[md[i] >> 4]);
      info.sha256.push_back(digits[md[i] & 15]);
    }
  }
  ERR_clear_error();
  return info;
}

tls_result<cert_info> read_cert_info(const std::filesystem::path& cert_file) {
  auto certs = load_certs(cert_file, "certificate");
  if (!certs) return certs.error();
  return get_cert_info((*certs)[0].get());
}

// ------------------------------------------------------------------ peer_certificates

std::shared_ptr<const peer_certificates> peer_certificates::capture(SSL* ssl) {
  X509* leaf = ssl ? SSL_get0_peer_certificate(ssl) : nullptr;
  if (!leaf) return nullptr;
  std::shared_ptr<peer_certificates> p(new peer_certificates());
  X509_up_ref(leaf);
  p->leaf_ = leaf;
  if (STACK_OF(X509)* chain = SSL_get_peer_cert_chain(ssl)) p->chain_ = X509_chain_up_ref(chain);
  return p;
}

peer_certificates::~peer_certificates() {
  if (chain_) sk_X509_pop_free(chain_, X509_free);
  if (leaf_) X509_free(leaf_);
}

cert_info peer_certificates::leaf() const { return get_cert_info(leaf_); }

tls_failure peer_certificates::reverify(const ssl::context& ctx, std::string* detail) const {
  SSL_CTX* c = const_cast<ssl::context&>(ctx).native_handle();
  X509_STORE* store = SSL_CTX_get_cert_store(c);
  std::unique_ptr<X509_STORE_CTX, decltype(&X509_STORE_CTX_free)> sc(X509_STORE_CTX_new(), &X509_STORE_CTX_free);
  if (!sc || X509_STORE_CTX_init(sc.get(), store, leaf_, chain_) != 1) {
    if (detail) *detail = "cannot set up verification: " + openssl_errors();
    return tls_failure::handshake_other;
  }
  // The context's own parameters (CRL checking, depth), not the host name.
  X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(sc.get());
  X509_VERIFY_PARAM_inherit(param, SSL_CTX_get0_param(c));
  X509_VERIFY_PARAM_set1_host(param, nullptr, 0);
  X509_VERIFY_PARAM_set1_ip(param, nullptr, 0);
  int ok = X509_verify_cert(sc.get());
  ERR_clear_error();
  if (ok == 1) return tls_failure::none;
  long v = X509_STORE_CTX_get_error(sc.get());
  if (detail) *detail = std::string(X509_verify_cert_error_string(v)) + " (" + get_cert_info(leaf_).subject + ")";
  auto f = from_verify_result(v);
  return f == tls_failure::none ? tls_failure::handshake_other : f;
}

std::optional<cert_info> context_cert_info(const ssl::context& ctx) {
  X509* x = SSL_CTX_get0_certificate(const_cast<ssl::context&>(ctx).native_handle());
  if (!x) return std::nullopt;
  return get_cert_info(x);
}

std::optional<std::int64_t> context_crl_next_update(const ssl::context& ctx) {
  X509_STORE* store = SSL_CTX_get_cert_store(const_cast<ssl::context&>(ctx).native_handle());
  if (!store) return std::nullopt;
  std::optional<std::int64_t> earliest;
  X509_STORE_lock(store); // handshakes look CRLs up in the same store
  STACK_OF(X509_OBJECT)* objs = X509_STORE_get0_objects(store);
  for (int i = 0; i < sk_X509_OBJECT_num(objs); ++i) {
    X509_CRL* crl = X509_OBJECT_get0_X509_CRL(sk_X509_OBJECT_value(objs, i));
    if (!crl) continue;
    const ASN1_TIME* next = X509_CRL_get0_nextUpdate(crl);
    if (!next) continue;
    const auto at = asn1_unix(next);
    if (!earliest || at < *earliest) earliest = at;
  }
  X509_STORE_unlock(store);
  return earliest;
}

// ------------------------------------------------------------------ tls_material

tls_result<std::unique_ptr<tls_material>> tls_material::create(tls_role role, tls_files files,
                                                               std::string server_name) {
  std::unique_ptr<tls_material> m(new tls_material(role, std::move(server_name)));
  auto ctx = m->build(files);
  if (!ctx) return ctx.error();
  m->snap_ = {std::move(*ctx), std::make_shared<const tls_files>(std::move(files)), 1};
  return m;
}

tls_result<std::shared_ptr<ssl::context>> tls_material::build(const tls_files& files) const {
  return build_context(role_, files, server_name_);
}

std::shared_ptr<ssl::context> tls_material::current() const {
  std::lock_guard lk(mu_);
  return snap_.context;
}

tls_material::snapshot_t tls_material::snapshot() const {
  std::lock_guard lk(mu_);
  return snap_;
}

tls_result<void> tls_material::reload() {
  std::lock_guard rl(reload_mu_);
  std::shared_ptr<const tls_files> files;
  {
    std::lock_guard lk(mu_);
    files = snap_.files;
  }
  auto ctx = build(*files);
  if (!ctx) return ctx.error();
  std::lock_guard lk(mu_);
  snap_.context = std::move(*ctx);
  ++snap_.generation;
  return {};
}

tls_result<void> tls_material::reload(tls_files next) {
  std::lock_guard rl(reload_mu_);
  auto ctx = build(next);
  if (!ctx) return ctx.error();
  auto files = std::make_shared<const tls_files>(std::move(next));
  std::lock_guard lk(mu_);
  snap_.context = std::move(*ctx);
  snap_.files = std::move(files);
  ++snap_.generation;
  return {};
}

} // namespace edgerelay::transport
