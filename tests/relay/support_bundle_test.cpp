#include "relay/support_bundle.hpp"

#include <catch2/catch.hpp>

#include <algorithm>

using namespace edgerelay;
using Catch::Matchers::Contains;

namespace {

const std::string pem_key = "-----BEGIN PRIVATE KEY-----\n"
                            "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVhJ0c0tqb3RLZXlNYXRlcmlhbA\n"
                            "-----END PRIVATE KEY-----\n";

} // namespace

TEST_CASE("redact_config removes passwords, secrets and tokens of any type and keeps paths", "[support]") {
  auto r = relay::redact_config(R"(
# a comment with the password hunter2 in it
[node]
id = "edge-1"
data_dir = "/var/lib/edgerelay"
[listen]
cert = "/etc/edgerelay/pki/server.crt"
key = "/etc/edgerelay/pki/server.key"
key_password = "pa55-word-1"
[[peer]]
name = "hub"
key = "pki/edge.key"
tls = { client_key = "keys/c.key", passphrase = "open-sesame-2" }
api_token = 123456789
[vault]
Secret_ID = ["s3cr3t-a", "s3cr3t-b"]
credentials = { user = "svc", pass = "xyzzy-3" }
)");
  INFO((r ? std::string() : r.error()));
  REQUIRE(r.has_value());
  for (const char* gone : {"hunter2", "pa55-word-1", "open-sesame-2", "123456789", "s3cr3t-a", "s3cr3t-b", "xyzzy-3"})
    CHECK_THAT(r->text, !Contains(gone));
  for (const char* kept : {"/etc/edgerelay/pki/server.key", "pki/edge.key", "keys/c.key",
                           "/etc/edgerelay/pki/server.crt", "edge-1", "/var/lib/edgerelay"})
    CHECK_THAT(r->text, Contains(kept));
  CHECK_THAT(r->text, Contains("<redacted>"));
  std::vector<std::string> keys = r->redacted_keys;
  std::sort(keys.begin(), keys.end());
  CHECK(keys == std::vector<std::string>{"listen.key_password", "peer[0].api_token", "peer[0].tls.passphrase",
                                         "vault.Secret_ID", "vault.credentials"});
  // string secrets are handed back for scrubbing other texts; numbers are not strings
  CHECK(std::find(r->secrets.begin(), r->secrets.end(), "pa55-word-1") != r->secrets.end());
  CHECK(std::find(r->secrets.begin(), r->secrets.end(), "xyzzy-3") != r->secrets.end());
}

TEST_CASE("redact_config redacts inline key material and PEM blocks wherever they are", "[support]") {
  auto r = relay::redact_config(
      "[listen]\nkey = \"\"\"\n" + pem_key + "\"\"\"\n" +
      "cert = \"/etc/pki/s.crt\"\n"
      "[[peer]]\nname = \"a\"\nkey = \"MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVhJ0c0tqb3\"\n"
      "note = [\"" +
      std::string("-----BEGIN CERTIFICATE-----\\nMIIBxx\\n-----END CERTIFICATE-----") + "\"]\n");
  INFO((r ? std::string() : r.error()));
  REQUIRE(r.has_value());
  CHECK_THAT(r->text, !Contains("BEGIN"));
  CHECK_THAT(r->text, !Contains("MIGHAgEAMBMGByqGSM49"));
  CHECK_THAT(r->text, !Contains("MIIBxx"));
  CHECK_THAT(r->text, Contains("/etc/pki/s.crt"));
  std::vector<std::string> keys = r->redacted_keys;
  std::sort(keys.begin(), keys.end());
  CHECK(keys == std::vector<std::string>{"listen.key", "peer[0].key", "peer[0].note[0]"});
}

TEST_CASE("a config that is not valid TOML is refused for redaction without quoting it", "[support]") {
  auto r = relay::redact_config("[node]\npassword = \"hunter2\nid = 3\n");
  REQUIRE(r.has_error());
  CHECK_THAT(r.error(), !Contains("hunter2"));
  CHECK_THAT(r.error(), Contains("not valid TOML"));
}

TEST_CASE("scrub removes PEM blocks, unterminated ones, and the given secrets", "[support]") {
  CHECK(relay::scrub("a " + pem_key + "b") == "a <redacted: PEM block>\nb");
  CHECK(relay::scrub("x -----BEGIN RSA PRIVATE KEY-----\nMIIE") == "x <redacted: PEM block>");
  CHECK(relay::scrub("login hunter22 and hunter22 again", {"hunter22", "abc"}) ==
        "login <redacted> and <redacted> again");
  CHECK(relay::scrub("short abc stays", {"abc"}) == "short abc stays");
}
