#pragma once
// A test PKI made by the `openssl` command-line tool (req, ca), not by
// edgerelay's own code, so tests of certificate checking do not grade their
// own homework. Built once per test process in a temporary directory.
//
//   root CA ── intermediate CA ── client_from_intermediate
//           ├─ server (DNS:localhost, IP:127.0.0.1), server_wrong_name, server_expired
//           ├─ client (URI:spiffe://edgerelay/edge/one, DNS:edge-1.example, CN edgerelay-edge-1)
//           ├─ client_expired, client_not_yet_valid, client_revoked (listed in root_crl)
//           └─ client_outsider (URI:spiffe://elsewhere/edge/x, CN outsider)
//   other CA ── client_other_ca
//
// Throws std::runtime_error (with the command and its output) when openssl
// fails: a broken test environment, not a test outcome.

#include "tests/support/temp_dir.hpp"

#include <filesystem>
#include <memory>
#include <string>

namespace boost::asio::ssl {
class context;
}

namespace edgerelay::test {

struct openssl_pki {
  struct cert_key {
    std::filesystem::path cert, key;
  };

  std::filesystem::path dir;
  std::filesystem::path root_ca, other_ca, intermediate_ca; // certificates
  std::filesystem::path root_crl;                           // signed by root, lists client_revoked
  cert_key server, server_wrong_name, server_expired;
  cert_key client, client_other_ca, client_expired, client_not_yet_valid, client_revoked, client_outsider;
  cert_key client_from_intermediate;       // leaf only: the intermediate is not sent
  cert_key client_from_intermediate_chain; // leaf followed by the intermediate

  explicit openssl_pki(const std::filesystem::path& dir);

  // The process-wide instance, built on first use.
  static const openssl_pki& shared();
};

// A TLS client context built with plain Asio calls that presents `id` and
// trusts `ca`: for certificates edgerelay's own loader refuses to present
// (expired, not yet valid).
std::shared_ptr<boost::asio::ssl::context> raw_client_context(const openssl_pki::cert_key& id,
                                                              const std::filesystem::path& ca);

// Runs `openssl <args>` through the shell with `cwd` as working directory and
// returns its combined output; throws when it exits non-zero.
std::string run_openssl(const std::string& args, const std::filesystem::path& cwd);

} // namespace edgerelay::test
