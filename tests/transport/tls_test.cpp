#include "tests/support/openssl_pki.hpp"
#include "tests/support/result_printer.hpp"
#include "tests/support/temp_dir.hpp"
#include "transport/pki.hpp"
#include "transport/tls.hpp"

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <catch2/catch.hpp>
#include <openssl/pem.h>
#include <openssl/ssl.h>

#include <array>
#include <fstream>
#include <memory>
#include <sys/stat.h>

using namespace edgerelay;
using test::write_file;
using namespace edgerelay::transport;
using namespace std::chrono_literals;
using Catch::Matchers::Contains;

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

const test::openssl_pki& pki() { return test::openssl_pki::shared(); }

std::shared_ptr<ssl::context> server_ctx(const test::openssl_pki::cert_key& id, const std::filesystem::path& crl,
                                         std::vector<std::string> allow = {}) {
  auto r = make_server_context({id.cert, id.key, pki().root_ca, crl, std::move(allow)});
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r.has_value());
  return *r;
}

std::shared_ptr<ssl::context> client_ctx(const test::openssl_pki::cert_key& id,
                                         const std::string& server_name = "localhost") {
  auto r = make_client_context({id.cert, id.key, pki().root_ca, {}, {}}, server_name);
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r.has_value());
  return *r;
}

// A client context built with plain Asio calls, for certificates our own
// loader would refuse to present (expired, not yet valid).
std::shared_ptr<ssl::context> raw_client_ctx(const test::openssl_pki::cert_key& id) {
  return test::raw_client_context(id, pki().root_ca);
}

// What both ends of one loopback connection saw.
struct outcome {
  bool timed_out = false;
  error_code server_ec, client_ec; // handshake results
  tls_failure server_failure = tls_failure::none, client_failure = tls_failure::none;
  std::string server_detail, client_detail;
  tls_failure authorization = tls_failure::none;
  std::string allow_detail;
  int version = 0;                                   // negotiated, as the server sees it
  bool server_received_data = false;                 // the server accepted the client's "ping"
  bool client_received_reply = false;                // and the client read the "pong"
  tls_failure client_io_failure = tls_failure::none; // after a TLS 1.3 handshake the client learns of refusal here
};

// Runs a TLS server and client over loopback in one io_context. The server
// handshakes, authorizes the peer against `allow`, reads "ping" and answers
// "pong". Everything is bounded by a 5 s deadline that closes both sockets.
outcome connect_pair(const std::shared_ptr<ssl::context>& sctx, ssl::context& cctx, const std::string& server_name,
                     const std::vector<std::string>& allow = {}) {
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  ssl::stream<tcp::socket> server(io, *sctx);
  ssl::stream<tcp::socket> client(io, cctx);
  auto prepared = prepare_client_stream(client, server_name);
  INFO((prepared ? std::string() : prepared.error().message));
  REQUIRE(prepared.has_value());

  outcome out;
  asio::steady_timer deadline(io, 5s);
  int pending = 2;
  auto finish = [&](ssl::stream<tcp::socket>& s) {
    error_code ignored;
    s.next_layer().close(ignored);
    if (--pending == 0) deadline.cancel();
  };
  deadline.async_wait([&](error_code ec) {
    if (ec) return;
    out.timed_out = true;
    error_code ignored;
    server.next_layer().close(ignored);
    client.next_layer().close(ignored);
  });

  std::array<char, 4> sbuf{}, cbuf{};
  acceptor.async_accept(server.next_layer(), [&](error_code ec) {
    if (ec) {
      out.server_ec = ec;
      return finish(server);
    }
    server.async_handshake(ssl::stream_base::server, [&](error_code hec) {
      SSL* s = server.native_handle();
      out.server_ec = hec;
      out.server_failure = classify_handshake(hec, s);
      out.server_detail = describe_handshake_failure(hec, s);
      if (hec) return finish(server);
      out.version = SSL_version(s);
      out.authorization = authorize_peer(s, allow, &out.allow_detail);
      if (out.authorization != tls_failure::none) return finish(server);
      asio::async_read(server, asio::buffer(sbuf), [&](error_code rec, std::size_t) {
        if (rec) return finish(server);
        out.server_received_data = std::string(sbuf.data(), sbuf.size()) == "ping";
        asio::async_write(server, asio::buffer("pong", 4), [&](error_code, std::size_t) { finish(server); });
      });
    });
  });
  client.next_layer().async_connect(acceptor.local_endpoint(), [&](error_code ec) {
    if (ec) {
      out.client_ec = ec;
      return finish(client);
    }
    client.async_handshake(ssl::stream_base::client, [&](error_code hec) {
      out.client_ec = hec;
      out.client_failure = classify_handshake(hec, client.native_handle());
      out.client_detail = describe_handshake_failure(hec, client.native_handle());
      if (hec) return finish(client);
      asio::async_write(client, asio::buffer("ping", 4), [&](error_code wec, std::size_t) {
        if (wec) {
          out.client_io_failure = classify_handshake(wec, client.native_handle());
          return finish(client);
        }
        asio::async_read(client, asio::buffer(cbuf), [&](error_code rec, std::size_t) {
          if (rec)
            out.client_io_failure = classify_handshake(rec, client.native_handle());
          else
            out.client_received_reply = std::string(cbuf.data(), cbuf.size()) == "pong";
          finish(client);
        });
      });
    });
  });
  io.run_for(10s);
  return out;
}

// The refusal a user cares about: no data crossed, and the server names why.
void require_refused(const outcome& o, tls_failure expected) {
  INFO("server: " << o.server_detail << " | client: " << o.client_detail << " | allow: " << o.allow_detail);
  REQUIRE_FALSE(o.timed_out);
  CHECK_FALSE(o.server_received_data);
  CHECK_FALSE(o.client_received_reply);
  if (expected == tls_failure::not_allowed) {
    CHECK_FALSE(o.server_ec);
    CHECK(o.authorization == tls_failure::not_allowed);
  } else {
    CHECK(o.server_ec);
    CHECK(to_string(o.server_failure) == std::string(to_string(expected)));
  }
}

void require_accepted(const outcome& o) {
  INFO("server: " << o.server_detail << " | client: " << o.client_detail << " | allow: " << o.allow_detail);
  REQUIRE_FALSE(o.timed_out);
  CHECK_FALSE(o.server_ec);
  CHECK_FALSE(o.client_ec);
  CHECK(o.authorization == tls_failure::none);
  CHECK(o.server_received_data);
  CHECK(o.client_received_reply);
  CHECK(o.version >= TLS1_2_VERSION);
}

struct x509_deleter {
  void operator()(X509* x) const { X509_free(x); }
};
std::unique_ptr<X509, x509_deleter> load_x509(const std::filesystem::path& p) {
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_file(p.c_str(), "r"), BIO_free);
  REQUIRE(bio);
  std::unique_ptr<X509, x509_deleter> x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  REQUIRE(x);
  return x;
}

} // namespace

// ------------------------------------------------------------------ accepted

TEST_CASE("a client with a certificate from the configured CA completes mTLS at TLS 1.3 and its data is accepted",
          "[tls]") {
  auto cctx = client_ctx(pki().client);
  auto o = connect_pair(server_ctx(pki().server, pki().root_crl), *cctx, "localhost");
  require_accepted(o);
  CHECK(o.version == TLS1_3_VERSION);
  CHECK(o.server_failure == tls_failure::none);
  CHECK(o.allow_detail == "any certificate from the CA (allow list is empty)");
}

TEST_CASE("a TLS 1.2-only client is accepted because TLS 1.2 is the minimum", "[tls]") {
  auto cctx = client_ctx(pki().client);
  SSL_CTX_set_max_proto_version(cctx->native_handle(), TLS1_2_VERSION);
  auto o = connect_pair(server_ctx(pki().server, pki().root_crl), *cctx, "localhost");
  require_accepted(o);
  CHECK(o.version == TLS1_2_VERSION);
}

TEST_CASE("a server certificate naming 127.0.0.1 as an IP SAN is accepted for server_name 127.0.0.1", "[tls]") {
  auto cctx = client_ctx(pki().client, "127.0.0.1");
  require_accepted(connect_pair(server_ctx(pki().server, pki().root_crl), *cctx, "127.0.0.1"));
}

TEST_CASE("a client that sends its intermediate is accepted by a server that trusts only the root", "[tls]") {
  auto cctx = client_ctx(pki().client_from_intermediate_chain);
  require_accepted(connect_pair(server_ctx(pki().server, {}), *cctx, "localhost"));
}

TEST_CASE("a client inside the allow list is accepted and the matching pattern is reported", "[tls]") {
  auto cctx = client_ctx(pki().client);
  auto sctx = server_ctx(pki().server, pki().root_crl, {"CN:nobody", "URI:spiffe://edgerelay/edge/*"});
  auto o = connect_pair(sctx, *cctx, "localhost", {"CN:nobody", "URI:spiffe://edgerelay/edge/*"});
  require_accepted(o);
  CHECK(o.allow_detail == "URI:spiffe://edgerelay/edge/*");
}

// ------------------------------------------------------------------ refused

TEST_CASE("a client without a certificate is refused as no_client_cert", "[tls]") {
  auto r = make_client_context({{}, {}, pki().root_ca, {}, {}}, "localhost");
  REQUIRE(r.has_value());
  auto o = connect_pair(server_ctx(pki().server, pki().root_crl), **r, "localhost");
  require_refused(o, tls_failure::no_client_cert);
  CHECK(o.client_io_failure == tls_failure::no_client_cert); // TLS 1.3 alert certificate_required
}

TEST_CASE("a client certificate from another CA is refused as unknown_ca", "[tls]") {
  auto cctx = client_ctx(pki().client_other_ca);
  auto o = connect_pair(server_ctx(pki().server, pki().root_crl), *cctx, "localhost");
  require_refused(o, tls_failure::unknown_ca);
  CHECK_THAT(o.server_detail, Contains("unable to get local issuer certificate"));
  CHECK(o.client_io_failure == tls_failure::unknown_ca);
}

TEST_CASE("a client whose chain is missing its intermediate is refused as unknown_ca", "[tls]") {
  auto cctx = client_ctx(pki().client_from_intermediate);
  require_refused(connect_pair(server_ctx(pki().server, pki().root_crl), *cctx, "localhost"), tls_failure::unknown_ca);
}

TEST_CASE("an expired client certificate is refused as expired and the log line says when it expired", "[tls]") {
  auto cctx = raw_client_ctx(pki().client_expired);
  auto o = connect_pair(server_ctx(pki().server, pki().root_crl), *cctx, "localhost");
  require_refused(o, tls_failure::expired);
  CHECK_THAT(o.server_detail, Contains("CN=edgerelay-edge-old") && Contains("expired on 2021-01-01T00:00:00Z"));
  CHECK(o.client_io_failure == tls_failure::expired);
}

TEST_CASE("a not-yet-valid client certificate is refused as not_yet_valid", "[tls]") {
  auto cctx = raw_client_ctx(pki().client_not_yet_valid);
  auto o = connect_pair(server_ctx(pki().server, pki().root_crl), *cctx, "localhost");
  require_refused(o, tls_failure::not_yet_valid);
  CHECK_THAT(o.server_detail, Contains("not valid before 2049-01-01T00:00:00Z"));
}

TEST_CASE("a client certificate listed in the CRL is refused as revoked", "[tls]") {
  auto cctx = client_ctx(pki().client_revoked);
  auto o = connect_pair(server_ctx(pki().server, pki().root_crl), *cctx, "localhost");
  require_refused(o, tls_failure::revoked);
  CHECK(o.client_io_failure == tls_failure::revoked);
  SECTION("and is accepted by a server without the CRL") {
    require_accepted(connect_pair(server_ctx(pki().server, {}), *cctx, "localhost"));
  }
}

TEST_CASE("a server whose certificate does not name server_name is refused by the client as name_mismatch", "[tls]") {
  SECTION("DNS name") {
    auto cctx = client_ctx(pki().client);
    auto o = connect_pair(server_ctx(pki().server_wrong_name, pki().root_crl), *cctx, "localhost");
    INFO(o.client_detail);
    REQUIRE_FALSE(o.timed_out);
    CHECK(o.client_ec);
    CHECK(o.client_failure == tls_failure::name_mismatch);
    CHECK_THAT(o.client_detail, Contains("hostname mismatch") && Contains("CN=someone-else"));
    CHECK(o.server_ec);
    CHECK_FALSE(o.server_received_data);
  }
  SECTION("per-stream name overrides the context's") {
    auto cctx = client_ctx(pki().client, "localhost");
    auto o = connect_pair(server_ctx(pki().server, pki().root_crl), *cctx, "hub.example");
    CHECK(o.client_failure == tls_failure::name_mismatch);
  }
  SECTION("IP address") {
    auto cctx = client_ctx(pki().client, "127.0.0.2");
    auto o = connect_pair(server_ctx(pki().server, pki().root_crl), *cctx, "127.0.0.2");
    CHECK(o.client_failure == tls_failure::name_mismatch);
    CHECK_THAT(o.client_detail, Contains("IP address mismatch"));
  }
}

TEST_CASE("a server from a CA the client does not trust is refused by the client as unknown_ca", "[tls]") {
  auto r = make_client_context({pki().client.cert, pki().client.key, pki().other_ca, {}, {}}, "localhost");
  REQUIRE(r.has_value());
  auto o = connect_pair(server_ctx(pki().server, pki().root_crl), **r, "localhost");
  CHECK(o.client_failure == tls_failure::unknown_ca);
  CHECK_FALSE(o.server_received_data);
}

TEST_CASE("a verified client outside the allow list is refused as not_allowed and no data is accepted", "[tls]") {
  const std::vector<std::string> allow = {"URI:spiffe://edgerelay/edge/*", "CN:edgerelay-*"};
  auto cctx = client_ctx(pki().client_outsider);
  auto o = connect_pair(server_ctx(pki().server, pki().root_crl, allow), *cctx, "localhost", allow);
  require_refused(o, tls_failure::not_allowed);
  CHECK(o.allow_detail == "identity [URI:spiffe://elsewhere/edge/x, CN:outsider] matches none of "
                          "[URI:spiffe://edgerelay/edge/*, CN:edgerelay-*]");
}

TEST_CASE("a TLS 1.1-only client is refused as protocol_version", "[tls]") {
  ssl::context old(ssl::context::tls_client);
  SSL_CTX* c = old.native_handle();
  REQUIRE(SSL_CTX_set_min_proto_version(c, TLS1_VERSION) == 1);
  REQUIRE(SSL_CTX_set_max_proto_version(c, TLS1_1_VERSION) == 1);
  REQUIRE(SSL_CTX_set_cipher_list(c, "DEFAULT:@SECLEVEL=0") == 1);
  old.use_certificate_chain_file(pki().client.cert.string());
  old.use_private_key_file(pki().client.key.string(), ssl::context::pem);
  old.set_verify_mode(ssl::verify_none);
  auto o = connect_pair(server_ctx(pki().server, pki().root_crl), old, "localhost");
  require_refused(o, tls_failure::protocol_version);
  CHECK(o.client_failure == tls_failure::protocol_version);
}

// ------------------------------------------------------------------ allow list

TEST_CASE("allow-list globs match SAN URI, SAN DNS without case, and subject CN", "[tls]") {
  auto cert = load_x509(pki().client.cert); // URI:spiffe://edgerelay/edge/one, DNS:edge-1.example, CN edgerelay-edge-1
  auto allowed = [&](std::vector<std::string> allow) {
    std::string why;
    bool ok = identity_allowed(cert.get(), allow, &why);
    INFO(why);
    return ok;
  };
  CHECK(allowed({"URI:spiffe://edgerelay/edge/*"}));
  CHECK(allowed({"URI:spiffe://edgerelay/edge/o?e"}));
  CHECK(allowed({"URI:*"}));
  CHECK_FALSE(allowed({"URI:spiffe://edgerelay/edge/o"}));
  CHECK_FALSE(allowed({"URI:SPIFFE://edgerelay/edge/one"}));
  CHECK(allowed({"DNS:EDGE-?.Example"}));
  CHECK(allowed({"DNS:*.example"}));
  CHECK_FALSE(allowed({"DNS:edge-1.example.org"}));
  CHECK(allowed({"CN:edgerelay-edge-?"}));
  CHECK(allowed({"CN:*edge*"}));
  CHECK_FALSE(allowed({"CN:edgerelay-edge"}));
  CHECK_FALSE(allowed({"DNS:edgerelay-edge-1"})); // a CN is not a DNS name
  CHECK(allowed({}));
  CHECK_FALSE(identity_allowed(nullptr, {}, nullptr));
}

TEST_CASE("a malformed allow-list entry is refused when the context is built", "[tls]") {
  for (const char* bad : {"spiffe://edgerelay/edge/*", "URI:", "uri:x", "IP:127.0.0.1"}) {
    auto r = make_server_context({pki().server.cert, pki().server.key, pki().root_ca, {}, {bad}});
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == tls_errc::bad_allow_pattern);
    CHECK_THAT(r.error().message, Contains(bad) && Contains("URI:<glob>, DNS:<glob> or CN:<glob>"));
  }
}

// ------------------------------------------------------------------ broken material

TEST_CASE("make_server_context names the file and what is wrong with it", "[tls]") {
  test::temp_dir dir("tls-bad");
  const auto& p = pki();
  tls_files f{p.server.cert, p.server.key, p.root_ca, p.root_crl, {}};
  auto refused = [](const tls_files& files, tls_errc code) {
    auto r = make_server_context(files);
    REQUIRE_FALSE(r.has_value());
    INFO(r.error().message);
    CHECK(r.error().code == code);
    return r.error().message;
  };

  SECTION("a key that belongs to another certificate") {
    f.key = p.client.key;
    auto msg = refused(f, tls_errc::key_mismatch);
    CHECK(msg == "private key " + p.client.key.string() + " does not match certificate " + p.server.cert.string() +
                     " (O=edgerelay-test,CN=edgerelay-hub)");
  }
  SECTION("a missing file") {
    f.ca = dir / "nope.pem";
    CHECK(refused(f, tls_errc::file_unreadable) ==
          "CA file " + (dir / "nope.pem").string() + ": cannot read: No such file or directory");
  }
  SECTION("a directory instead of a file") {
    f.crl = dir.path();
    CHECK(refused(f, tls_errc::file_unreadable) == "CRL " + dir.path().string() + ": is not a regular file");
  }
  SECTION("a file that is not PEM") {
    write_file(dir / "junk.pem", "hello\n");
    f.cert = dir / "junk.pem";
    CHECK(refused(f, tls_errc::not_pem) ==
          "certificate " + (dir / "junk.pem").string() + ": is not PEM: no CERTIFICATE block found");
    f = {p.server.cert, dir / "junk.pem", p.root_ca, {}, {}};
    CHECK_THAT(refused(f, tls_errc::not_pem), Contains("no PRIVATE KEY block found"));
  }
  SECTION("a PEM block that does not decode") {
    write_file(dir / "broken.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
    f.cert = dir / "broken.pem";
    CHECK_THAT(refused(f, tls_errc::malformed), Contains("certificate block 1 does not decode"));
  }
  SECTION("an expired certificate") {
    f.cert = p.server_expired.cert;
    f.key = p.server_expired.key;
    CHECK(refused(f, tls_errc::cert_expired) ==
          "certificate " + p.server_expired.cert.string() + " expired on 2021-01-01T00:00:00Z");
  }
  SECTION("a passphrase-protected key") {
    test::run_openssl("pkey -in " + p.server.key.string() + " -aes256 -passout pass:secret -out " +
                          (dir / "enc.key").string(),
                      dir.path());
    f.key = dir / "enc.key";
    CHECK_THAT(refused(f, tls_errc::key_encrypted), Contains("is passphrase-protected"));
  }
  SECTION("a certificate without a key") {
    f.key.clear();
    refused(f, tls_errc::missing_file);
  }
  SECTION("a CRL from a CA that is not in the CA file") {
    // Put in force, it would fail every chain from the real CA as "unable to get certificate CRL".
    auto other = transport::pki_init(dir / "other");
    REQUIRE(other.has_value());
    f.crl = other->crl;
    auto msg = refused(f, tls_errc::crl_invalid);
    CHECK_THAT(msg, Contains("CRL " + other->crl.string() + " is issued by ") &&
                        Contains("which is not a CA in " + p.root_ca.string()));
  }
}

TEST_CASE("make_client_context refuses an empty or malformed server_name and an expired own certificate", "[tls]") {
  const auto& p = pki();
  for (const char* bad : {"", "two words", "a/b"}) {
    auto r = make_client_context({p.client.cert, p.client.key, p.root_ca, {}, {}}, bad);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == tls_errc::bad_server_name);
  }
  auto expired = make_client_context({p.client_expired.cert, p.client_expired.key, p.root_ca, {}, {}}, "localhost");
  REQUIRE_FALSE(expired.has_value());
  CHECK(expired.error().code == tls_errc::cert_expired);
  auto half = make_client_context({p.client.cert, {}, p.root_ca, {}, {}}, "localhost");
  REQUIRE_FALSE(half.has_value());
  CHECK(half.error().code == tls_errc::missing_file);
}

TEST_CASE("read_cert_info reports subject and expiry of a certificate file", "[tls]") {
  auto info = read_cert_info(pki().client_expired.cert);
  REQUIRE(info.has_value());
  CHECK(info->subject == "O=edgerelay-test,CN=edgerelay-edge-old");
  CHECK(info->issuer == "CN=edgerelay test root CA");
  CHECK(info->not_before_unix == 1577836800); // 2020-01-01T00:00:00Z
  CHECK(info->not_after_unix == 1609459200);  // 2021-01-01T00:00:00Z
  CHECK_FALSE(info->serial.empty());
  CHECK_FALSE(read_cert_info(pki().dir / "missing.pem").has_value());
}

TEST_CASE("every tls_failure has a metric label", "[tls]") {
  CHECK(std::string(to_string(tls_failure::none)) == "none");
  CHECK(std::string(to_string(tls_failure::no_client_cert)) == "no_client_cert");
  CHECK(std::string(to_string(tls_failure::unknown_ca)) == "unknown_ca");
  CHECK(std::string(to_string(tls_failure::expired)) == "expired");
  CHECK(std::string(to_string(tls_failure::not_yet_valid)) == "not_yet_valid");
  CHECK(std::string(to_string(tls_failure::revoked)) == "revoked");
  CHECK(std::string(to_string(tls_failure::name_mismatch)) == "name_mismatch");
  CHECK(std::string(to_string(tls_failure::not_allowed)) == "not_allowed");
  CHECK(std::string(to_string(tls_failure::protocol_version)) == "protocol_version");
  CHECK(std::string(to_string(tls_failure::handshake_other)) == "handshake_other");
  CHECK(classify_handshake({}, nullptr) == tls_failure::none);
  CHECK(classify_handshake(asio::error::operation_aborted, nullptr) == tls_failure::handshake_other);
}

// ------------------------------------------------------------------ pki_init and reload

TEST_CASE("pki_init material makes a working mTLS pair and add_revoked makes the client's next handshake fail as "
          "revoked",
          "[tls]") {
  test::temp_dir dir("pki");
  auto made = pki_init(dir / "pki");
  INFO((made ? std::string() : made.error().message));
  REQUIRE(made.has_value());
  const pki_paths& p = *made;

  struct stat st {};
  for (const auto& key : {p.ca_key, p.server_key, p.client_key}) {
    REQUIRE(::stat(key.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
  }
  // An independent verifier agrees with the chain, the names and the CRL.
  CHECK_THAT(test::run_openssl("verify -CAfile ca.pem -crl_check -CRLfile crl.pem -purpose sslclient client.pem",
                               p.ca_cert.parent_path()),
             Contains("client.pem: OK"));
  CHECK_THAT(test::run_openssl("verify -CAfile ca.pem -purpose sslserver -verify_hostname localhost -verify_ip "
                               "127.0.0.1 server.pem",
                               p.ca_cert.parent_path()),
             Contains("server.pem: OK"));
  auto again = pki_init(dir / "pki");
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error().code == tls_errc::file_exists);

  auto server = tls_material::create(tls_role::server, p.server_files());
  REQUIRE(server.has_value());
  auto client = make_client_context(p.client_files(), "localhost");
  REQUIRE(client.has_value());
  const std::vector<std::string> allow = {"URI:spiffe://edgerelay/edge/demo"};
  auto o = connect_pair((*server)->current(), **client, "localhost", allow);
  require_accepted(o);
  CHECK(o.allow_detail == "URI:spiffe://edgerelay/edge/demo");
  auto by_ip = make_client_context(p.client_files(), "127.0.0.1");
  REQUIRE(by_ip.has_value());
  require_accepted(connect_pair((*server)->current(), **by_ip, "127.0.0.1"));
  auto info = read_cert_info(p.server_cert);
  REQUIRE(info.has_value());
  CHECK(info->subject == "CN=edgerelay-hub,O=edgerelay");

  auto revoked = add_revoked(dir / "pki", p.client_cert);
  INFO((revoked ? std::string() : revoked.error().message));
  REQUIRE(revoked.has_value());
  REQUIRE(add_revoked(dir / "pki", p.client_cert).has_value()); // idempotent
  // Number 1 from pki_init, 2 and 3 from the two add_revoked calls; one entry.
  CHECK_THAT(test::run_openssl("crl -in crl.pem -noout -crlnumber", p.ca_cert.parent_path()), Contains("=0x03"));
  auto foreign = add_revoked(dir / "pki", pki().client.cert);
  REQUIRE_FALSE(foreign.has_value());
  CHECK(foreign.error().code == tls_errc::not_issued_by_ca);

  auto before = (*server)->current();
  REQUIRE((*server)->reload().has_value());
  CHECK((*server)->current() != before);
  CHECK((*server)->snapshot().generation == 2);
  auto after = connect_pair((*server)->current(), **client, "localhost", allow);
  require_refused(after, tls_failure::revoked);
  // A session that started before the reload keeps its context.
  require_accepted(connect_pair(before, **client, "localhost", allow));
}

TEST_CASE("tls_material::reload keeps the old context when the new files are broken", "[tls]") {
  test::temp_dir dir("reload");
  const auto& p = pki();
  auto m = tls_material::create(tls_role::server, {p.server.cert, p.server.key, p.root_ca, p.root_crl, {}});
  REQUIRE(m.has_value());
  auto& material = **m;
  const auto old = material.current();

  write_file(dir / "key.pem", "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n");
  auto r = material.reload({p.server.cert, dir / "key.pem", p.root_ca, p.root_crl, {}});
  REQUIRE_FALSE(r.has_value());
  CHECK_THAT(r.error().message, Contains((dir / "key.pem").string()));
  CHECK(material.current() == old);
  CHECK(material.snapshot().generation == 1);
  CHECK(material.snapshot().files->key == p.server.key);

  auto mismatch = material.reload({p.server.cert, p.client.key, p.root_ca, p.root_crl, {}});
  REQUIRE_FALSE(mismatch.has_value());
  CHECK(mismatch.error().code == tls_errc::key_mismatch);
  CHECK(material.current() == old);

  auto cctx = client_ctx(p.client);
  require_accepted(connect_pair(material.current(), *cctx, "localhost"));

  REQUIRE(material.reload({p.server.cert, p.server.key, p.root_ca, p.root_crl, {"CN:nobody"}}).has_value());
  CHECK(material.current() != old);
  auto snap = material.snapshot();
  CHECK(snap.generation == 2);
  REQUIRE(snap.files->allow.size() == 1);
  require_refused(connect_pair(snap.context, *cctx, "localhost", snap.files->allow), tls_failure::not_allowed);
}
