#include "util/bytes.hpp"
#include "util/checksum.hpp"
#include "util/clock.hpp"
#include "util/errc.hpp"

#include <catch2/catch.hpp>

using namespace edgerelay;
using namespace std::chrono_literals;

TEST_CASE("manual_clock moves only when told, both time lines together") {
  util::manual_clock c;
  auto s0 = c.steady_now();
  auto w0 = c.system_now();
  CHECK(c.steady_now() == s0);
  c.advance(1500ms);
  CHECK(c.steady_now() - s0 == 1500ms);
  CHECK(c.system_now() - w0 == 1500ms);
  c.set_system(w0 + 10s);
  CHECK(c.system_now() == w0 + 10s);
  CHECK(c.steady_now() - s0 == 10s);
  c.set_system(w0); // wall time may go back; steady time never does
  CHECK(c.system_now() == w0);
  CHECK(c.steady_now() - s0 == 10s);
  CHECK(std::string(c.kind()) == "manual");
  CHECK(std::string(util::system_clock_source::instance().kind()) == "wall");
}

TEST_CASE("big-endian coding sorts like the numbers and round-trips") {
  std::string a, b;
  util::writer(a).u64(255);
  util::writer(b).u64(256);
  CHECK(a < b);
  std::string s;
  util::writer w(s);
  w.u8(7);
  w.u16(0xBEEF);
  w.u32(0xDEADBEEF);
  w.u64(0x0123456789ABCDEFull);
  w.bytes("xyz");
  util::reader r(s);
  CHECK(r.u8() == 7);
  CHECK(r.u16() == 0xBEEF);
  CHECK(r.u32() == 0xDEADBEEF);
  CHECK(r.u64() == 0x0123456789ABCDEFull);
  CHECK(r.bytes(3) == "xyz");
  CHECK(r.ok());
}

TEST_CASE("byte reader refuses to read past the end and stays failed") {
  util::reader r(std::string_view("\x01\x02\x03", 3));
  CHECK(r.u16() == 0x0102);
  CHECK(r.u32() == 0);
  CHECK_FALSE(r.ok());
  CHECK(r.u8() == 0);
  CHECK_FALSE(r.ok());
}

TEST_CASE("checksum is XXH3-64 of the payload") {
  CHECK(util::checksum("") == 0x2D06800538D394C2ull);
  CHECK(util::checksum("a") != util::checksum("b"));
  CHECK(util::checksum_hex(0x2D06800538D394C2ull) == "2d06800538d394c2");
}

TEST_CASE("error codes carry the project's category and a retry class") {
  boost::system::error_code ec = errc::queue_full;
  CHECK(ec.category().name() == std::string("edgerelay"));
  CHECK(ec.message() == "queue capacity reached");
  CHECK(classify(ec) == error_class::retry_later);
  CHECK(classify(errc::segment_too_large) == error_class::give_up);
  CHECK(classify(errc::store_corrupt) == error_class::fix_state);
  CHECK(classify(boost::system::errc::make_error_code(boost::system::errc::resource_unavailable_try_again)) ==
        error_class::retry_now);
}

#include "util/text.hpp"

TEST_CASE("base64 matches the RFC 4648 test vectors") {
  CHECK(util::base64("") == "");
  CHECK(util::base64("f") == "Zg==");
  CHECK(util::base64("fo") == "Zm8=");
  CHECK(util::base64("foo") == "Zm9v");
  CHECK(util::base64("foob") == "Zm9vYg==");
  CHECK(util::base64("fooba") == "Zm9vYmE=");
  CHECK(util::base64("foobar") == "Zm9vYmFy");
  CHECK(util::base64(std::string("\xff\x00\x80", 3)) == "/wCA");
}

TEST_CASE("quote escapes and cuts text for one-line messages") {
  CHECK(util::quote("a\"b\\c\n") == "\"a\\\"b\\\\c\\x0a\"");
  CHECK(util::quote(std::string(100, 'x'), 10) == "\"xxxxxxxxxx\"...");
  CHECK(util::quote("\xc3\xa9\xc3\xa9", 3) == "\"\xc3\xa9\"..."); // never cuts inside a UTF-8 character
}

TEST_CASE("percent_decode refuses bad escapes and %00, percent_encode keeps only the unreserved bytes") {
  CHECK(util::percent_decode("max%5Fretry") == "max_retry");
  CHECK(util::percent_decode("a+b") == "a+b");
  CHECK(util::percent_decode("a+b", true) == "a b");
  CHECK(util::percent_decode("%7e%7E") == "~~");
  CHECK_FALSE(util::percent_decode("%5").has_value());
  CHECK_FALSE(util::percent_decode("%zz").has_value());
  CHECK_FALSE(util::percent_decode("a%00b").has_value());
  CHECK(util::percent_encode("rejected:too large/x~") == "rejected%3Atoo%20large%2Fx~");
  const std::string all_bytes = [] {
    std::string s;
    for (int c = 1; c < 256; ++c)
      s += static_cast<char>(c);
    return s;
  }();
  CHECK(util::percent_decode(util::percent_encode(all_bytes)) == all_bytes);
}
