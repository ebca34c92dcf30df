#pragma once
// OpenSSL helpers shared inside transport/ (tls.cpp, pki.cpp): RAII owners
// for OpenSSL objects and the error-queue drain. Not part of the public face.

#include "transport/tls.hpp"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <string>

namespace edgerelay::transport::detail {

inline error fail(tls_errc c, std::string msg) { return error{make_error_code(c), std::move(msg)}; }

// Drains OpenSSL's error queue into one line.
inline std::string openssl_errors() {
  std::string out;
  char buf[256];
  while (unsigned long e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof buf);
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out.empty() ? std::string("no OpenSSL error recorded") : out;
}

template <auto Fn>
struct openssl_deleter {
  template <class T>
  void operator()(T* p) const noexcept {
    Fn(p);
  }
};
using bio_ptr = std::unique_ptr<BIO, openssl_deleter<BIO_free_all>>;
using x509_ptr = std::unique_ptr<X509, openssl_deleter<X509_free>>;
using crl_ptr = std::unique_ptr<X509_CRL, openssl_deleter<X509_CRL_free>>;
using pkey_ptr = std::unique_ptr<EVP_PKEY, openssl_deleter<EVP_PKEY_free>>;
using bn_ptr = std::unique_ptr<BIGNUM, openssl_deleter<BN_free>>;
using names_ptr = std::unique_ptr<GENERAL_NAMES, openssl_deleter<GENERAL_NAMES_free>>;
using asn1_int_ptr = std::unique_ptr<ASN1_INTEGER, openssl_deleter<ASN1_INTEGER_free>>;
using asn1_time_ptr = std::unique_ptr<ASN1_TIME, openssl_deleter<ASN1_TIME_free>>;
using ext_ptr = std::unique_ptr<X509_EXTENSION, openssl_deleter<X509_EXTENSION_free>>;

} // namespace edgerelay::transport::detail
