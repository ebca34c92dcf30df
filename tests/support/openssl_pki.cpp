#include "tests/support/openssl_pki.hpp"

#include <boost/asio/ssl.hpp>

#include <cstdio>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <sys/wait.h>

namespace edgerelay::test {
namespace {

namespace fs = std::filesystem;

const char* const config = R"([ req ]
distinguished_name = req_dn
x509_extensions = v3_root
prompt = no
[ req_dn ]
CN = unused

[ ca_root ]
dir = ./root
[ ca_inter ]
dir = ./inter
[ ca_other ]
dir = ./other

[ policy_any ]
commonName = supplied
organizationName = optional

[ v3_root ]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ v3_inter ]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[ server_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid

[ client_ext ]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
)";

// `openssl ca` reads one section; the per-CA sections above only name the
// directory, so each gets the common settings appended.
std::string full_config() {
  std::string out(config);
  const char* common = R"(database = $dir/index.txt
new_certs_dir = $dir/new
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 30
default_crl_days = 30
policy = policy_any
copy_extensions = copy
unique_subject = no
email_in_dn = no
)";
  for (const char* ca : {"root", "inter", "other"}) {
    const std::string header = std::string("[ ca_") + ca + " ]\ndir = ./" + ca + "\n";
    const auto at = out.find(header);
    out.insert(at + header.size(),
               std::string(common) + "certificate = ./" + ca + "_ca.pem\nprivate_key = ./" + ca + "_ca.key\n");
  }
  return out;
}

void write_text(const fs::path& p, const std::string& s) {
  std::ofstream f(p, std::ios::binary);
  f << s;
  if (!f) throw std::runtime_error("cannot write " + p.string());
}

std::string read_text(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

const char* const newkey = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";

struct builder {
  fs::path dir;

  std::string run(const std::string& args) const { return run_openssl(args, dir); }

  void make_ca_dirs(const std::string& ca) const {
    fs::create_directories(dir / ca / "new");
    write_text(dir / ca / "index.txt", "");
    write_text(dir / ca / "serial", ca == "root" ? "1000\n" : (ca == "inter" ? "2000\n" : "3000\n"));
    write_text(dir / ca / "crlnumber", "01\n");
  }

  void self_signed_ca(const std::string& ca, const std::string& cn) const {
    make_ca_dirs(ca);
    run("req -config ca.cnf -x509 " + std::string(newkey) + " -keyout " + ca + "_ca.key -out " + ca +
        "_ca.pem -subj '/CN=" + cn + "' -days 3650");
  }

  // `dates` is either "-days N" or "-startdate A -enddate B".
  openssl_pki::cert_key leaf(const std::string& name, const std::string& ca, const std::string& ext,
                             const std::string& cn, const std::string& san,
                             const std::string& dates = "-days 30") const {
    std::string req = "req -config ca.cnf -new " + std::string(newkey) + " -keyout " + name + ".key -out " + name +
                      ".csr -subj '/O=edgerelay-test/CN=" + cn + "'";
    if (!san.empty()) req += " -addext 'subjectAltName=" + san + "'";
    run(req);
    run("ca -config ca.cnf -name ca_" + ca + " -batch -notext -extensions " + ext + " " + dates + " -in " + name +
        ".csr -out " + name + ".pem");
    return {dir / (name + ".pem"), dir / (name + ".key")};
  }
};

} // namespace

std::string run_openssl(const std::string& args, const std::filesystem::path& cwd) {
  const std::string cmd = "cd '" + cwd.string() + "' && openssl " + args + " 2>&1";
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(cmd.c_str(), "r"), ::pclose);
  if (!pipe) throw std::runtime_error("cannot start: " + cmd);
  std::string out;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, pipe.get()))
    out.append(buf, n);
  int status = ::pclose(pipe.release());
  if (status == -1 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error("openssl failed: " + cmd + "\n" + out);
  return out;
}

openssl_pki::openssl_pki(const std::filesystem::path& d) : dir(d) {
  builder b{dir};
  write_text(dir / "ca.cnf", full_config());

  b.self_signed_ca("root", "edgerelay test root CA");
  b.self_signed_ca("other", "some other CA");
  b.make_ca_dirs("inter");
  b.run("req -config ca.cnf -new " + std::string(newkey) +
        " -keyout inter_ca.key -out inter_ca.csr -subj '/CN=edgerelay test intermediate CA'");
  b.run("ca -config ca.cnf -name ca_root -batch -notext -extensions v3_inter -days 365 -in inter_ca.csr -out "
        "inter_ca.pem");
  root_ca = dir / "root_ca.pem";
  other_ca = dir / "other_ca.pem";
  intermediate_ca = dir / "inter_ca.pem";

  server = b.leaf("server", "root", "server_ext", "edgerelay-hub", "DNS:localhost,IP:127.0.0.1");
  server_wrong_name = b.leaf("server_wrong_name", "root", "server_ext", "someone-else", "DNS:wrong.example");
  server_expired = b.leaf("server_expired", "root", "server_ext", "edgerelay-hub", "DNS:localhost",
                          "-startdate 200101000000Z -enddate 210101000000Z");

  client =
      b.leaf("client", "root", "client_ext", "edgerelay-edge-1", "URI:spiffe://edgerelay/edge/one,DNS:edge-1.example");
  client_other_ca =
      b.leaf("client_other_ca", "other", "client_ext", "edgerelay-edge-1", "URI:spiffe://edgerelay/edge/one");
  client_expired = b.leaf("client_expired", "root", "client_ext", "edgerelay-edge-old",
                          "URI:spiffe://edgerelay/edge/old", "-startdate 200101000000Z -enddate 210101000000Z");
  client_not_yet_valid =
      b.leaf("client_not_yet_valid", "root", "client_ext", "edgerelay-edge-future",
             "URI:spiffe://edgerelay/edge/future", "-startdate 490101000000Z -enddate 491231000000Z");
  client_revoked =
      b.leaf("client_revoked", "root", "client_ext", "edgerelay-edge-revoked", "URI:spiffe://edgerelay/edge/revoked");
  client_outsider = b.leaf("client_outsider", "root", "client_ext", "outsider", "URI:spiffe://elsewhere/edge/x");
  client_from_intermediate =
      b.leaf("client_inter", "inter", "client_ext", "edgerelay-edge-2", "URI:spiffe://edgerelay/edge/two");
  write_text(dir / "client_inter_chain.pem", read_text(client_from_intermediate.cert) + read_text(intermediate_ca));
  client_from_intermediate_chain = {dir / "client_inter_chain.pem", client_from_intermediate.key};

  b.run("ca -config ca.cnf -name ca_root -batch -revoke client_revoked.pem");
  b.run("ca -config ca.cnf -name ca_root -batch -gencrl -crldays 30 -out root_crl.pem");
  root_crl = dir / "root_crl.pem";
}

const openssl_pki& openssl_pki::shared() {
  static temp_dir d{"openssl-pki"};
  static const openssl_pki pki{d.path()};
  return pki;
}

std::shared_ptr<boost::asio::ssl::context> raw_client_context(const openssl_pki::cert_key& id,
                                                              const std::filesystem::path& ca) {
  namespace ssl = boost::asio::ssl;
  auto c = std::make_shared<ssl::context>(ssl::context::tls_client);
  c->use_certificate_chain_file(id.cert.string());
  c->use_private_key_file(id.key.string(), ssl::context::pem);
  c->load_verify_file(ca.string());
  c->set_verify_mode(ssl::verify_peer);
  return c;
}

} // namespace edgerelay::test
