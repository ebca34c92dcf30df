#pragma once
// edgerelay::transport development PKI: creates a CA, a hub (server)
// certificate, an edge (client) certificate and an empty CRL with OpenSSL's
// library (EC P-256 keys, SHA-256 signatures), so a fresh install can run
// mTLS without an external tool. Not a production CA: the CA key sits next to
// the certificates it signs.
//
// Files (all PEM): ca.pem ca.key server.pem server.key client.pem client.key
// crl.pem. Private keys are written with mode 0600, everything else 0644.
// Every file is written to a temporary name, fsynced and renamed, so a reader
// (the reload watcher) never sees a half-written file.
//
// Threads: the functions may be called from any thread, but two calls on the
// same directory must not overlap.

#include "transport/tls.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace edgerelay::transport {

struct pki_options {
  int ca_validity_days = 3650; // the CA certificate
  int validity_days = 365;     // server and client certificates
  int crl_validity_days = 365; // nextUpdate of crl.pem, also when add_revoked re-issues it
  std::string ca_common_name = "edgerelay development CA";
  std::string server_common_name = "edgerelay-hub";
  std::vector<std::string> server_dns = {"localhost"};
  std::vector<std::string> server_ips = {"127.0.0.1"};
  std::string client_common_name = "edgerelay-edge";
  std::vector<std::string> client_uris = {"spiffe://edgerelay/edge/demo"};
  std::vector<std::string> client_dns = {};
  bool overwrite = false; // false: refuse when any of the files already exists
};

// Where pki_init put things, with the tls_files each side would use.
struct pki_paths {
  std::filesystem::path ca_cert, ca_key, server_cert, server_key, client_cert, client_key, crl;

  tls_files server_files() const { return {server_cert, server_key, ca_cert, crl, {}}; }
  tls_files client_files() const { return {client_cert, client_key, ca_cert, crl, {}}; }
};

pki_paths pki_layout(const std::filesystem::path& dir);

// Creates `dir` if needed and writes the whole set. Fails with file_exists
// (naming the file) when overwrite is false and a file is already there.
tls_result<pki_paths> pki_init(const std::filesystem::path& dir, const pki_options& options = {});

// Re-issues dir/crl.pem, signed by dir/ca.key, with the serial of
// `cert_path` added to the revoked entries already listed (idempotent) and
// the CRL number incremented. Fails with not_issued_by_ca when the
// certificate was not signed by dir/ca.pem.
enum class pki_leaf { server, client };

// Replaces dir/server.{pem,key} or dir/client.{pem,key} with a new key and a
// new certificate (new serial, names and validity from `options`) signed by
// dir/ca.key: a certificate rotation. The key is written before the
// certificate, each atomically.
tls_result<void> pki_reissue(const std::filesystem::path& dir, pki_leaf which, const pki_options& options = {});

tls_result<void> add_revoked(const std::filesystem::path& dir, const std::filesystem::path& cert_path,
                             const pki_options& options = {});

} // namespace edgerelay::transport
