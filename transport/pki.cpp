#include "transport/pki.hpp"

#include "transport/detail/openssl.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <sys/stat.h>
#include <unistd.h>
#include <utility>

namespace edgerelay::transport {
namespace {

namespace fs = std::filesystem;

using namespace detail;

// Certificates are backdated by this much so peers whose clocks run a little
// behind accept them at once.
constexpr long backdate_seconds = 3600;

// ------------------------------------------------------------------ keys and certificates

tls_result<pkey_ptr> generate_key() {
  pkey_ptr k(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!k) return fail(tls_errc::openssl_failure, "cannot generate an EC P-256 key: " + openssl_errors());
  return k;
}

struct ext_spec {
  int nid;
  std::string value;
};

struct cert_spec {
  std::string common_name;
  int days = 365;
  std::vector<ext_spec> extensions;
};

tls_result<x509_ptr> issue(const cert_spec& spec, EVP_PKEY* subject_key, X509* issuer, EVP_PKEY* issuer_key) {
  x509_ptr x(X509_new());
  bn_ptr serial(BN_new());
  if (!x || !serial) return fail(tls_errc::openssl_failure, "out of memory: " + openssl_errors());
  // 159 random bits: positive, unique in practice, within RFC 5280's 20 octets.
  if (X509_set_version(x.get(), 2) != 1 || BN_rand(serial.get(), 159, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY) != 1 ||
      !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(x.get())) ||
      !X509_gmtime_adj(X509_getm_notBefore(x.get()), -backdate_seconds) ||
      !X509_time_adj_ex(X509_getm_notAfter(x.get()), spec.days, 0, nullptr))
    return fail(tls_errc::openssl_failure, "cannot fill certificate for " + spec.common_name + ": " + openssl_errors());
  X509_NAME* name = X509_get_subject_name(x.get());
  if (X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, reinterpret_cast<const unsigned char*>("edgerelay"), -1, -1,
                                 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(spec.common_name.c_str()), -1, -1, 0) != 1)
    return fail(tls_errc::openssl_failure, "cannot set subject CN=" + spec.common_name + ": " + openssl_errors());
  X509* signer = issuer ? issuer : x.get();
  if (X509_set_issuer_name(x.get(), X509_get_subject_name(signer)) != 1 || X509_set_pubkey(x.get(), subject_key) != 1)
    return fail(tls_errc::openssl_failure, "cannot set issuer or key of " + spec.common_name + ": " + openssl_errors());
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, signer, x.get(), nullptr, nullptr, 0);
  for (const auto& e : spec.extensions) {
    ext_ptr ext(X509V3_EXT_conf_nid(nullptr, &v3, e.nid, e.value.c_str()));
    if (!ext || X509_add_ext(x.get(), ext.get(), -1) != 1)
      return fail(tls_errc::openssl_failure, std::string("cannot add extension ") + OBJ_nid2sn(e.nid) + "=" + e.value +
                                                 " to " + spec.common_name + ": " + openssl_errors());
  }
  if (X509_sign(x.get(), issuer_key, EVP_sha256()) <= 0)
    return fail(tls_errc::openssl_failure, "cannot sign certificate " + spec.common_name + ": " + openssl_errors());
  return x;
}

tls_result<std::string> subject_alt_names(const std::vector<std::string>& dns, const std::vector<std::string>& ips,
                                          const std::vector<std::string>& uris) {
  std::string out;
  auto add = [&](const char* prefix, const std::vector<std::string>& v) -> bool {
    for (const auto& s : v) {
      if (s.empty() || s.find_first_of(",\n") != std::string::npos) return false;
      out += (out.empty() ? "" : ",") + std::string(prefix) + s;
    }
    return true;
  };
  if (!add("DNS:", dns) || !add("IP:", ips) || !add("URI:", uris))
    return error{make_error_code(errc::invalid_argument), "a certificate name is empty or contains ',' or a newline"};
  return out;
}

// ------------------------------------------------------------------ CRL

struct revoked_entry {
  asn1_int_ptr serial;
  asn1_time_ptr date;
};

tls_result<crl_ptr> make_crl(X509* ca, EVP_PKEY* ca_key, const std::vector<revoked_entry>& revoked, long number,
                             int days) {
  crl_ptr crl(X509_CRL_new());
  asn1_time_ptr last(X509_gmtime_adj(nullptr, -backdate_seconds));
  asn1_time_ptr next(X509_time_adj_ex(nullptr, days, 0, nullptr));
  asn1_int_ptr num(ASN1_INTEGER_new());
  if (!crl || !last || !next || !num || X509_CRL_set_version(crl.get(), 1) != 1 ||
      X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca)) != 1 ||
      X509_CRL_set1_lastUpdate(crl.get(), last.get()) != 1 || X509_CRL_set1_nextUpdate(crl.get(), next.get()) != 1 ||
      ASN1_INTEGER_set(num.get(), number) != 1 ||
      X509_CRL_add1_ext_i2d(crl.get(), NID_crl_number, num.get(), 0, X509V3_ADD_DEFAULT) != 1)
    return fail(tls_errc::openssl_failure, "cannot build the CRL: " + openssl_errors());
  for (const auto& r : revoked) {
    X509_REVOKED* entry = X509_REVOKED_new();
    if (!entry || X509_REVOKED_set_serialNumber(entry, r.serial.get()) != 1 ||
        X509_REVOKED_set_revocationDate(entry, r.date.get()) != 1 || X509_CRL_add0_revoked(crl.get(), entry) != 1) {
      X509_REVOKED_free(entry);
      return fail(tls_errc::openssl_failure, "cannot add a revoked entry to the CRL: " + openssl_errors());
    }
  }
  X509V3_CTX v3;
  X509V3_set_ctx(&v3, ca, nullptr, nullptr, crl.get(), 0);
  ext_ptr aki(X509V3_EXT_conf_nid(nullptr, &v3, NID_authority_key_identifier, "keyid:always"));
  if (!aki || X509_CRL_add_ext(crl.get(), aki.get(), -1) != 1 || X509_CRL_sort(crl.get()) != 1 ||
      X509_CRL_sign(crl.get(), ca_key, EVP_sha256()) <= 0)
    return fail(tls_errc::openssl_failure, "cannot sign the CRL: " + openssl_errors());
  return crl;
}

// ------------------------------------------------------------------ files

template <class F>
tls_result<std::string> to_pem(F&& write, const char* what) {
  bio_ptr bio(BIO_new(BIO_s_mem()));
  if (!bio || write(bio.get()) != 1)
    return fail(tls_errc::openssl_failure, std::string("cannot encode ") + what + ": " + openssl_errors());
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<std::size_t>(n));
}

tls_result<std::string> pem_of(X509* x) {
  return to_pem([x](BIO* b) { return PEM_write_bio_X509(b, x); }, "certificate");
}
tls_result<std::string> pem_of(EVP_PKEY* k) {
  return to_pem([k](BIO* b) { return PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr); },
                "private key");
}
tls_result<std::string> pem_of(X509_CRL* c) {
  return to_pem([c](BIO* b) { return PEM_write_bio_X509_CRL(b, c); }, "CRL");
}

// Writes `data` to a temporary file with `mode`, fsyncs it and renames it
// over `path`.
tls_result<void> write_atomically(const fs::path& path, const std::string& data, mode_t mode) {
  const fs::path tmp = path.string() + ".tmp-" + std::to_string(::getpid());
  auto failed = [&](const char* op) {
    int e = errno;
    ::unlink(tmp.c_str());
    return fail(tls_errc::write_failed, "cannot write " + path.string() + ": " + op + ": " + std::strerror(e));
  };
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return failed("open");
  if (::fchmod(fd, mode) != 0) {
    ::close(fd);
    return failed("fchmod");
  }
  std::size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      ::close(fd);
      return failed("write");
    }
    off += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    ::close(fd);
    return failed("fsync");
  }
  if (::close(fd) != 0) return failed("close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return failed("rename");
  return {};
}

template <class T>
tls_result<void> write_pem(const fs::path& path, T* obj, mode_t mode) {
  auto pem = pem_of(obj);
  if (!pem) return pem.error();
  return write_atomically(path, *pem, mode);
}

bio_ptr open_for_read(const fs::path& p) { return bio_ptr(BIO_new_file(p.c_str(), "r")); }

tls_result<x509_ptr> read_cert(const fs::path& p, const char* what) {
  bio_ptr bio = open_for_read(p);
  if (!bio) {
    ERR_clear_error();
    return fail(tls_errc::file_unreadable,
                std::string(what) + " " + p.string() + ": cannot read: " + std::strerror(errno));
  }
  x509_ptr x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!x)
    return fail(tls_errc::not_pem, std::string(what) + " " + p.string() + ": no certificate: " + openssl_errors());
  return x;
}

int no_passphrase(char*, int, int, void*) { return -1; }

tls_result<pkey_ptr> read_key(const fs::path& p) {
  bio_ptr bio = open_for_read(p);
  if (!bio) {
    ERR_clear_error();
    return fail(tls_errc::file_unreadable, "CA key " + p.string() + ": cannot read: " + std::strerror(errno));
  }
  pkey_ptr k(PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr));
  if (!k) return fail(tls_errc::not_pem, "CA key " + p.string() + ": no usable private key: " + openssl_errors());
  return k;
}

} // namespace

namespace {
cert_spec leaf_cert_spec(const std::string& cn, const char* eku, const std::string& san, int days) {
  cert_spec s{cn,
              days,
              {{NID_basic_constraints, "critical,CA:FALSE"},
               {NID_key_usage, "critical,digitalSignature"},
               {NID_ext_key_usage, eku},
               {NID_subject_key_identifier, "hash"},
               {NID_authority_key_identifier, "keyid"}}};
  if (!san.empty()) s.extensions.push_back({NID_subject_alt_name, san});
  return s;
}
} // namespace

pki_paths pki_layout(const std::filesystem::path& dir) {
  return {dir / "ca.pem",     dir / "ca.key",     dir / "server.pem", dir / "server.key",
          dir / "client.pem", dir / "client.key", dir / "crl.pem"};
}

tls_result<pki_paths> pki_init(const std::filesystem::path& dir, const pki_options& o) {
  const pki_paths p = pki_layout(dir);
  const fs::path all[] = {p.ca_cert, p.ca_key, p.server_cert, p.server_key, p.client_cert, p.client_key, p.crl};
  if (!o.overwrite)
    for (const auto& f : all) {
      std::error_code ec;
      if (fs::exists(f, ec))
        return fail(tls_errc::file_exists, f.string() + " already exists; remove it or ask for overwrite");
    }
  if (o.ca_validity_days <= 0 || o.validity_days <= 0 || o.crl_validity_days <= 0)
    return error{make_error_code(errc::invalid_argument), "validity periods must be at least one day"};
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return fail(tls_errc::write_failed, "cannot create " + dir.string() + ": " + ec.message());

  auto server_san = subject_alt_names(o.server_dns, o.server_ips, {});
  if (!server_san) return server_san.error();
  auto client_san = subject_alt_names(o.client_dns, {}, o.client_uris);
  if (!client_san) return client_san.error();

  auto ca_key = generate_key();
  auto server_key = generate_key();
  auto client_key = generate_key();
  if (!ca_key) return ca_key.error();
  if (!server_key) return server_key.error();
  if (!client_key) return client_key.error();

  const cert_spec ca_spec{o.ca_common_name,
                          o.ca_validity_days,
                          {{NID_basic_constraints, "critical,CA:TRUE"},
                           {NID_key_usage, "critical,keyCertSign,cRLSign"},
                           {NID_subject_key_identifier, "hash"},
                           {NID_authority_key_identifier, "keyid:always"}}};
  auto ca = issue(ca_spec, ca_key->get(), nullptr, ca_key->get());
  if (!ca) return ca.error();

  auto leaf_spec = [&](const std::string& cn, const char* eku, const std::string& san) {
    return leaf_cert_spec(cn, eku, san, o.validity_days);
  };
  auto server =
      issue(leaf_spec(o.server_common_name, "serverAuth", *server_san), server_key->get(), ca->get(), ca_key->get());
  if (!server) return server.error();
  auto client =
      issue(leaf_spec(o.client_common_name, "clientAuth", *client_san), client_key->get(), ca->get(), ca_key->get());
  if (!client) return client.error();
  auto crl = make_crl(ca->get(), ca_key->get(), {}, 1, o.crl_validity_days);
  if (!crl) return crl.error();

  if (auto r = write_pem(p.ca_key, ca_key->get(), 0600); !r) return r.error();
  if (auto r = write_pem(p.server_key, server_key->get(), 0600); !r) return r.error();
  if (auto r = write_pem(p.client_key, client_key->get(), 0600); !r) return r.error();
  if (auto r = write_pem(p.ca_cert, ca->get(), 0644); !r) return r.error();
  if (auto r = write_pem(p.server_cert, server->get(), 0644); !r) return r.error();
  if (auto r = write_pem(p.client_cert, client->get(), 0644); !r) return r.error();
  if (auto r = write_pem(p.crl, crl->get(), 0644); !r) return r.error();
  return p;
}

tls_result<void> add_revoked(const std::filesystem::path& dir, const std::filesystem::path& cert_path,
                             const pki_options& o) {
  const pki_paths p = pki_layout(dir);
  auto ca = read_cert(p.ca_cert, "CA certificate");
  if (!ca) return ca.error();
  auto ca_key = read_key(p.ca_key);
  if (!ca_key) return ca_key.error();
  auto cert = read_cert(cert_path, "certificate");
  if (!cert) return cert.error();
  if (X509_check_issued(ca->get(), cert->get()) != X509_V_OK ||
      X509_verify(cert->get(), X509_get0_pubkey(ca->get())) != 1) {
    ERR_clear_error();
    return fail(tls_errc::not_issued_by_ca,
                "certificate " + cert_path.string() + " was not issued by the CA in " + p.ca_cert.string());
  }

  std::vector<revoked_entry> revoked;
  long number = 1;
  std::error_code ec;
  if (fs::exists(p.crl, ec)) {
    bio_ptr bio = open_for_read(p.crl);
    crl_ptr old(bio ? PEM_read_bio_X509_CRL(bio.get(), nullptr, nullptr, nullptr) : nullptr);
    if (!old) return fail(tls_errc::not_pem, "CRL " + p.crl.string() + " cannot be read: " + openssl_errors());
    if (X509_CRL_verify(old.get(), X509_get0_pubkey(ca->get())) != 1) {
      ERR_clear_error();
      return fail(tls_errc::crl_invalid, "CRL " + p.crl.string() + " is not signed by " + p.ca_cert.string());
    }
    STACK_OF(X509_REVOKED)* entries = X509_CRL_get_REVOKED(old.get());
    for (int i = 0; i < sk_X509_REVOKED_num(entries); ++i) {
      const X509_REVOKED* r = sk_X509_REVOKED_value(entries, i);
      revoked.push_back({asn1_int_ptr(ASN1_INTEGER_dup(X509_REVOKED_get0_serialNumber(r))),
                         asn1_time_ptr(ASN1_STRING_dup(X509_REVOKED_get0_revocationDate(r)))});
    }
    if (auto* n = static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(old.get(), NID_crl_number, nullptr, nullptr))) {
      number = ASN1_INTEGER_get(n) + 1;
      ASN1_INTEGER_free(n);
    }
  }
  const ASN1_INTEGER* serial = X509_get0_serialNumber(cert->get());
  bool listed = false;
  for (const auto& r : revoked)
    listed = listed || ASN1_INTEGER_cmp(r.serial.get(), serial) == 0;
  if (!listed) revoked.push_back({asn1_int_ptr(ASN1_INTEGER_dup(serial)), asn1_time_ptr(X509_gmtime_adj(nullptr, 0))});
  for (const auto& r : revoked)
    if (!r.serial || !r.date) return fail(tls_errc::openssl_failure, "out of memory copying CRL entries");

  auto crl = make_crl(ca->get(), ca_key->get(), revoked, number, o.crl_validity_days);
  if (!crl) return crl.error();
  return write_pem(p.crl, crl->get(), 0644);
}

tls_result<void> pki_reissue(const std::filesystem::path& dir, pki_leaf which, const pki_options& o) {
  const pki_paths p = pki_layout(dir);
  if (o.validity_days <= 0) return error{make_error_code(errc::invalid_argument), "validity must be at least one day"};
  auto ca = read_cert(p.ca_cert, "CA certificate");
  if (!ca) return ca.error();
  auto ca_key = read_key(p.ca_key);
  if (!ca_key) return ca_key.error();
  const bool server = which == pki_leaf::server;
  auto san =
      server ? subject_alt_names(o.server_dns, o.server_ips, {}) : subject_alt_names(o.client_dns, {}, o.client_uris);
  if (!san) return san.error();
  auto key = generate_key();
  if (!key) return key.error();
  auto cert = issue(leaf_cert_spec(server ? o.server_common_name : o.client_common_name,
                                   server ? "serverAuth" : "clientAuth", *san, o.validity_days),
                    key->get(), ca->get(), ca_key->get());
  if (!cert) return cert.error();
  // The key first: a reader that sees the new certificate finds its key.
  if (auto r = write_pem(server ? p.server_key : p.client_key, key->get(), 0600); !r) return r.error();
  return write_pem(server ? p.server_cert : p.client_cert, cert->get(), 0644);
}

} // namespace edgerelay::transport
