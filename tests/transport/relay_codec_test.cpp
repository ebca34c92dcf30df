#include "transport/relay_codec.hpp"

#include "util/bytes.hpp"
#include "util/checksum.hpp"

#include <catch2/catch.hpp>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>
#include <zstd.h>

using namespace edgerelay;
using namespace edgerelay::transport;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

segment_record record_of(std::string_view id, std::string_view stream, std::string_view payload,
                         std::int64_t created_ms = 1'700'000'000'123) {
  return segment_record{id, stream, created_ms, util::checksum(payload), payload};
}

void check_same(const segment_record& got, const segment_record& want) {
  CHECK(got.id == want.id);
  CHECK(got.stream == want.stream);
  CHECK(got.created_ms == want.created_ms);
  CHECK(got.checksum == want.checksum);
  CHECK(got.payload.size() == want.payload.size());
  CHECK(got.payload == want.payload);
}

template <class T>
T decoded_as(std::string_view wire, const codec_limits& limits = {}) {
  auto r = decode(wire, limits);
  INFO((r ? std::string("ok") : r.error().message));
  REQUIRE(r.has_value());
  REQUIRE(std::holds_alternative<T>(*r));
  return std::get<T>(std::move(*r));
}

codec_error decode_error_of(std::string_view wire, const codec_limits& limits = {}) {
  auto r = decode(wire, limits);
  REQUIRE(r.has_error());
  return r.error();
}

std::string encoded_batch(std::uint64_t number, const std::vector<segment_record>& records,
                          compression algorithm = compression::none, const codec_limits& limits = {}) {
  std::string out;
  auto n = encode_batch(number, records, out, {algorithm, 3}, limits);
  INFO((n ? std::string("ok") : n.error().message));
  REQUIRE(n.has_value());
  CHECK(*n == out.size());
  return out;
}

std::string compressible_text(std::size_t n) {
  std::string s;
  for (std::size_t i = 0; s.size() < n; ++i)
    s += "sensor=" + std::to_string(i % 7) + " temp=21." + std::to_string(i % 10) + " status=nominal\n";
  s.resize(n);
  return s;
}

std::string random_bytes(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (char& c : s)
    c = static_cast<char>(rng() & 0xff);
  return s;
}

hello sample_hello() {
  hello h;
  h.versions = {1};
  h.node_id = "edge-17";
  h.compressions = {"zstd", "none"};
  h.max_window = 16;
  h.max_batch_bytes = 8 << 20;
  return h;
}

// A compressed BATCH message assembled by hand: header, declared length, frame.
std::string compressed_batch_by_hand(std::uint32_t count, std::uint64_t declared, std::string_view frame) {
  std::string m;
  util::writer w(m);
  w.u8(0x03);
  w.u8(1);
  w.u8(0x01);
  w.u64(9);
  w.u32(count);
  w.u64(declared);
  w.bytes(frame);
  return m;
}

// zstd-compresses `size` zero bytes by streaming, so the test never holds the
// uncompressed data; `with_content_size` writes the size into the frame header.
std::string zero_bomb(std::size_t size, bool with_content_size) {
  std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), ZSTD_freeCCtx);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, 1);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_contentSizeFlag, with_content_size ? 1 : 0);
  if (with_content_size) ZSTD_CCtx_setPledgedSrcSize(cctx.get(), size);
  const std::string zeros(1 << 20, '\0');
  std::string frame;
  std::string buf(ZSTD_CStreamOutSize(), '\0');
  for (std::size_t done = 0; done < size;) {
    const std::size_t n = std::min(zeros.size(), size - done);
    done += n;
    ZSTD_inBuffer in{zeros.data(), n, 0};
    const auto mode = done == size ? ZSTD_e_end : ZSTD_e_continue;
    for (;;) {
      ZSTD_outBuffer out{buf.data(), buf.size(), 0};
      const std::size_t left = ZSTD_compressStream2(cctx.get(), &out, &in, mode);
      REQUIRE_FALSE(ZSTD_isError(left));
      frame.append(buf.data(), out.pos);
      if (mode == ZSTD_e_end ? left == 0 : in.pos == in.size) break;
    }
  }
  return frame;
}

// A copy of `s` in a heap block of exactly its size, so that AddressSanitizer
// sees any read past the end (a std::string may have spare capacity).
struct exact_buffer {
  explicit exact_buffer(std::string_view s) : size(s.size()), data(new char[s.size() == 0 ? 1 : s.size()]) {
    std::copy(s.begin(), s.end(), data.get());
  }
  std::string_view view() const { return {data.get(), size}; }
  std::size_t size;
  std::unique_ptr<char[]> data;
};

bool inside(std::string_view part, const char* begin, std::size_t size) {
  return part.empty() || (part.data() >= begin && part.data() + part.size() <= begin + size);
}

} // namespace

// ------------------------------------------------------------------ round trips

TEST_CASE("HELLO round-trips versions, node id, compressions, window and batch size") {
  hello h = sample_hello();
  h.versions = {1, 3, 2};
  std::string wire;
  auto n = encode_hello(h, wire);
  REQUIRE(n.has_value());
  CHECK(static_cast<std::uint8_t>(wire[0]) == 0x01);
  CHECK(static_cast<std::uint8_t>(wire[1]) == 3); // the header carries the highest version offered
  CHECK(*n == 2 + 1 + 3 + 2 + 7 + 1 + (1 + 4) + (1 + 4) + 4 + 8);

  const auto got = decoded_as<hello>(wire);
  CHECK(got.versions == std::vector<std::uint8_t>{1, 3, 2});
  CHECK(got.node_id == "edge-17");
  REQUIRE(got.compressions.size() == 2);
  CHECK(got.compressions[0] == "zstd");
  CHECK(got.compressions[1] == "none");
  CHECK(got.max_window == 16);
  CHECK(got.max_batch_bytes == 8u << 20);
}

TEST_CASE("HELLO with no compression offered round-trips") {
  hello h = sample_hello();
  h.compressions.clear();
  std::string wire;
  REQUIRE(encode_hello(h, wire).has_value());
  CHECK(decoded_as<hello>(wire).compressions.empty());
}

TEST_CASE("HELLO_ACK round-trips the chosen version, compression, window, batch size and dedupe hint") {
  hello_ack a;
  a.node_id = "hub-1";
  a.compression = "zstd";
  a.window = 4;
  a.max_batch_bytes = 1 << 20;
  a.dedupe_window_ms = 3'600'000;
  std::string wire;
  auto n = encode_hello_ack(a, wire);
  REQUIRE(n.has_value());
  CHECK(*n == 2 + 2 + 5 + 1 + 4 + 4 + 8 + 8);
  const auto got = decoded_as<hello_ack>(wire);
  CHECK(got.version == 1);
  CHECK(got.node_id == "hub-1");
  CHECK(got.compression == "zstd");
  CHECK(got.window == 4);
  CHECK(got.max_batch_bytes == 1u << 20);
  CHECK(got.dedupe_window_ms == 3'600'000);
}

TEST_CASE("BATCH round-trips every record field uncompressed, including empty id, stream and payload") {
  const std::string big = random_bytes(5000, 1);
  const std::vector<segment_record> records = {
      record_of("edge-1:1", "metrics", "hello"),
      record_of("", "", ""), // the codec carries what it is given; the receiver judges it
      segment_record{"edge-1:3", "logs.app", -42, 0xFFFFFFFFFFFFFFFFull, big},
      record_of("edge-1:4", "x", std::string_view("\0\x01\xff", 3), INT64_MIN),
  };
  const std::string wire = encoded_batch(77, records);
  CHECK(wire.size() == batch_header_bytes + encoded_size(records[0]) + encoded_size(records[1]) +
                           encoded_size(records[2]) + encoded_size(records[3]));
  CHECK(static_cast<std::uint8_t>(wire[2]) == 0); // flags: not compressed

  const auto got = decoded_as<batch>(wire);
  CHECK(got.number == 77);
  CHECK_FALSE(got.compressed);
  REQUIRE(got.records.size() == records.size());
  for (std::size_t i = 0; i < records.size(); ++i) {
    INFO("record " << i);
    check_same(got.records[i], records[i]);
  }
  // Uncompressed records are views into the message itself.
  CHECK(inside(got.records[2].payload, wire.data(), wire.size()));
}

TEST_CASE("BATCH round-trips with zstd, and compressible data travels smaller") {
  const std::string text = compressible_text(64 * 1024);
  std::vector<segment_record> records;
  std::vector<std::string> ids;
  for (int i = 0; i < 16; ++i)
    ids.push_back("edge-1:" + std::to_string(i));
  for (int i = 0; i < 16; ++i)
    records.push_back(record_of(ids[i], i % 2 ? "metrics" : "", std::string_view(text).substr(i * 100, 4000)));
  records.push_back(record_of("edge-1:empty", "metrics", ""));

  const std::string plain = encoded_batch(5, records, compression::none);
  const std::string packed = encoded_batch(5, records, compression::zstd);
  CHECK(static_cast<std::uint8_t>(packed[2]) == 0x01);
  CHECK(packed.size() * 4 < plain.size());

  const auto got = decoded_as<batch>(packed);
  CHECK(got.number == 5);
  CHECK(got.compressed);
  REQUIRE(got.records.size() == records.size());
  for (std::size_t i = 0; i < records.size(); ++i) {
    INFO("record " << i);
    check_same(got.records[i], records[i]);
    CHECK(verify(got.records[i]));
  }
}

TEST_CASE("a compressed batch's records stay valid when the decoded batch is moved") {
  const std::string text = compressible_text(10000);
  const std::vector<segment_record> records = {record_of("a:1", "s", text), record_of("a:2", "s", "tiny")};
  std::string wire = encoded_batch(1, records, compression::zstd);
  REQUIRE(static_cast<std::uint8_t>(wire[2]) == 0x01);
  auto decoded = decode(wire);
  REQUIRE(decoded.has_value());
  wire.assign(wire.size(), 'X'); // the records do not point into the message
  std::vector<message> moved;
  moved.push_back(std::move(*decoded));
  moved.emplace_back(ack{});
  moved.emplace_back(ack{}); // reallocation moves the batch again
  const auto& b = std::get<batch>(moved[0]);
  REQUIRE(b.records.size() == 2);
  CHECK(b.records[0].payload == text);
  CHECK(b.records[1].payload == "tiny");
  CHECK(b.records[1].id == "a:2");
}

TEST_CASE("zstd is not used when it would not make the batch smaller") {
  const std::string noise = random_bytes(4096, 7);
  const std::vector<segment_record> records = {record_of("n:1", "noise", noise)};
  const std::string wire = encoded_batch(3, records, compression::zstd);
  CHECK(static_cast<std::uint8_t>(wire[2]) == 0); // sent uncompressed
  CHECK(wire.size() == batch_header_bytes + encoded_size(records[0]));
  const auto got = decoded_as<batch>(wire);
  CHECK_FALSE(got.compressed);
  check_same(got.records[0], records[0]);

  const std::string empty = encoded_batch(4, {}, compression::zstd);
  CHECK(empty.size() == batch_header_bytes);
  CHECK(decoded_as<batch>(empty).records.empty());
}

TEST_CASE("BATCH at the default limits round-trips: longest id and stream, largest payload, most records") {
  const codec_limits limits;
  const std::string id(limits.max_id_bytes, 'i');
  const std::string stream(limits.max_id_bytes, 's');
  const std::string payload = compressible_text(limits.max_segment_bytes);
  const std::vector<segment_record> one = {record_of(id, stream, payload)};
  for (auto algorithm : {compression::none, compression::zstd}) {
    const std::string wire = encoded_batch(1, one, algorithm); // the records are views into it
    CHECK((static_cast<std::uint8_t>(wire[2]) == 0x01) == (algorithm == compression::zstd));
    const auto got = decoded_as<batch>(wire);
    REQUIRE(got.records.size() == 1);
    check_same(got.records[0], one[0]);
  }

  const std::vector<segment_record> many(limits.max_segments, record_of("e:1", "s", ""));
  for (auto algorithm : {compression::none, compression::zstd}) {
    const std::string wire = encoded_batch(2, many, algorithm);
    CHECK((static_cast<std::uint8_t>(wire[2]) == 0x01) == (algorithm == compression::zstd));
    const auto got = decoded_as<batch>(wire);
    REQUIRE(got.records.size() == limits.max_segments);
    check_same(got.records.back(), many.back());
  }
}

TEST_CASE("a BATCH of exactly max_message_bytes is accepted and one byte more is refused") {
  codec_limits limits;
  limits.max_message_bytes = 1000;
  const std::string payload(1000 - batch_header_bytes - record_overhead_bytes - 3 - 1, 'p');
  const std::vector<segment_record> fits = {record_of("a:1", "s", payload)};
  const std::string wire = encoded_batch(1, fits, compression::none, limits);
  CHECK(wire.size() == 1000);
  CHECK(decoded_as<batch>(wire, limits).records.size() == 1);

  const std::string longer = payload + "p";
  const std::vector<segment_record> too_big = {record_of("a:1", "s", longer)};
  std::string out = "stale";
  auto n = encode_batch(1, too_big, out, {}, limits);
  REQUIRE(n.has_error());
  CHECK(n.error().fault == codec_fault::over_limit);
  CHECK_THAT(n.error().message, Contains("BATCH: size 1001 exceeds max_message_bytes 1000"));
  CHECK(out.empty());

  const auto e = decode_error_of(encoded_batch(1, too_big), limits);
  CHECK(e.fault == codec_fault::over_limit);
  CHECK_THAT(e.message, Contains("message: 1001 bytes exceed max_message_bytes 1000 (offset 0)"));
}

TEST_CASE("ACK round-trips ok, duplicate and rejected with its reason, in order") {
  ack a;
  a.batch_number = 0xFEEDFACECAFEBEEFull;
  a.results = {{ack_status::ok, {}},
               {ack_status::duplicate, {}},
               {ack_status::rejected, "checksum"},
               {ack_status::rejected, "too_large"},
               {ack_status::rejected, "bad_stream"},
               {ack_status::ok, {}}};
  std::string wire;
  auto n = encode_ack(a, wire);
  REQUIRE(n.has_value());
  CHECK(*n == 2 + 8 + 4 + 6 + (1 + 8) + (1 + 9) + (1 + 10));
  const auto got = decoded_as<ack>(wire);
  CHECK(got.batch_number == a.batch_number);
  REQUIRE(got.results.size() == a.results.size());
  for (std::size_t i = 0; i < a.results.size(); ++i) {
    INFO("result " << i);
    CHECK(got.results[i].status == a.results[i].status);
    CHECK(got.results[i].reason == a.results[i].reason);
  }

  ack empty;
  empty.batch_number = 1;
  REQUIRE(encode_ack(empty, wire).has_value());
  CHECK(decoded_as<ack>(wire).results.empty());
}

TEST_CASE("ACK carries max_segments results") {
  ack a;
  a.batch_number = 2;
  a.results.assign(codec_limits{}.max_segments, {ack_status::duplicate, {}});
  const std::string longest_reason(max_reason_bytes, 'r');
  a.results.back() = {ack_status::rejected, longest_reason};
  std::string wire;
  REQUIRE(encode_ack(a, wire).has_value());
  const auto got = decoded_as<ack>(wire);
  REQUIRE(got.results.size() == a.results.size());
  CHECK(got.results.back().reason == longest_reason);
}

TEST_CASE("ERROR round-trips its code and message, unknown codes pass through") {
  std::string wire;
  encode_error(wire_error::unavailable, "store full, retry later", wire);
  auto got = decoded_as<error_message>(wire);
  CHECK(got.code == wire_error::unavailable);
  CHECK(got.message == "store full, retry later");
  CHECK(std::string(to_string(got.code)) == "unavailable");

  encode_error(static_cast<wire_error>(999), "", wire);
  got = decoded_as<error_message>(wire);
  CHECK(static_cast<int>(got.code) == 999);
  CHECK(std::string(to_string(got.code)) == "unknown");
  CHECK(got.message.empty());
}

TEST_CASE("ERROR text over max_error_message_bytes is cut before a split UTF-8 character") {
  std::string text(max_error_message_bytes - 1, 'a');
  text += "\xc3\xa9\xc3\xa9"; // "éé": the first é straddles the limit
  std::string wire;
  encode_error(wire_error::protocol, text, wire);
  const auto got = decoded_as<error_message>(wire);
  CHECK(got.message == std::string(max_error_message_bytes - 1, 'a'));
}

TEST_CASE("verify accepts the payload's XXH3-64 and nothing else") {
  segment_record r = record_of("a:1", "s", "payload");
  CHECK(verify(r));
  r.checksum ^= 1;
  CHECK_FALSE(verify(r));
  CHECK(verify(record_of("a:2", "s", "")));
}

// ------------------------------------------------------------------ decode errors

TEST_CASE("decode refuses an empty message and an unknown message type") {
  auto e = decode_error_of("");
  CHECK(e.fault == codec_fault::truncated);
  CHECK_THAT(e.message, Contains("empty"));

  e = decode_error_of("GET / HTTP/1.1\r\n");
  CHECK(e.fault == codec_fault::unknown_type);
  CHECK(e.code == errc::malformed);
  CHECK(e.message == "message: unknown message type 0x47 (offset 0)");
  CHECK(wire_error_for(e) == wire_error::protocol);

  CHECK(decode_error_of(std::string_view("\x00\x01", 2)).fault == codec_fault::unknown_type);
  CHECK(decode_error_of("\x06\x01").fault == codec_fault::unknown_type);
}

TEST_CASE("decode refuses a protocol version this build does not speak") {
  std::string wire = encoded_batch(1, {record_of("a:1", "s", "x")});
  wire[1] = 2;
  auto e = decode_error_of(wire);
  CHECK(e.fault == codec_fault::unsupported_version);
  CHECK(e.message == "BATCH: unsupported protocol version 2 (this build speaks 1) (offset 1)");
  CHECK(wire_error_for(e) == wire_error::unsupported_version);

  hello_ack a{1, "hub", "none", 1, 1, 0};
  REQUIRE(encode_hello_ack(a, wire).has_value());
  wire[1] = 0;
  CHECK_THAT(decode_error_of(wire).message, StartsWith("HELLO_ACK: unsupported protocol version 0"));

  REQUIRE(encode_hello(sample_hello(), wire).has_value());
  wire[1] = 0;
  CHECK(decode_error_of(wire).fault == codec_fault::unsupported_version);

  CHECK(decode_error_of(std::string_view("\x04", 1)).message ==
        "ACK: truncated in version: needs 1 bytes, 0 remain (offset 1)");
}

TEST_CASE("HELLO from a newer version is read by its version-1 prefix, extensions ignored") {
  hello h = sample_hello();
  h.versions = {1, 2};
  std::string wire;
  REQUIRE(encode_hello(h, wire).has_value());
  CHECK(static_cast<std::uint8_t>(wire[1]) == 2);
  wire += "future fields";
  const auto got = decoded_as<hello>(wire);
  CHECK(got.versions == std::vector<std::uint8_t>{1, 2});
  CHECK(got.max_batch_bytes == h.max_batch_bytes);

  // A version-1 HELLO has no room for extensions.
  REQUIRE(encode_hello(sample_hello(), wire).has_value());
  wire += 'x';
  const auto e = decode_error_of(wire);
  CHECK(e.fault == codec_fault::trailing_bytes);
  CHECK_THAT(e.message,
             Contains("HELLO: 1 trailing bytes after the last field (offset " + std::to_string(wire.size() - 1) + ")"));
}

TEST_CASE("every truncation of a valid message is reported as truncated") {
  std::vector<std::string> wires;
  std::string w;
  REQUIRE(encode_hello(sample_hello(), w).has_value());
  wires.push_back(w);
  REQUIRE(encode_hello_ack(hello_ack{1, "hub", "zstd", 8, 1 << 20, 60000}, w).has_value());
  wires.push_back(w);
  wires.push_back(encoded_batch(3, {record_of("a:1", "s", "payload"), record_of("a:2", "", "")}));
  wires.push_back(encoded_batch(4, {record_of("a:1", "s", compressible_text(3000))}, compression::zstd));
  REQUIRE(encode_ack(ack{5, {{ack_status::ok, {}}, {ack_status::rejected, "checksum"}}}, w).has_value());
  wires.push_back(w);
  encode_error(wire_error::shutting_down, "bye", w);
  wires.push_back(w);

  for (const std::string& full : wires) {
    for (std::size_t len = 0; len < full.size(); ++len) {
      const exact_buffer cut(std::string_view(full).substr(0, len));
      auto r = decode(cut.view());
      INFO("type " << int(full[0]) << " cut to " << len << " of " << full.size());
      REQUIRE(r.has_error());
      if (full[0] == 0x03 && full[2] == 0x01 && len >= batch_header_bytes + 8) {
        // inside the zstd frame: zstd itself notices
        CHECK(r.error().fault == codec_fault::corrupt_compression);
      } else {
        CHECK(r.error().fault == codec_fault::truncated);
        CHECK_THAT(r.error().message, Contains("truncated") || Contains("needs at least"));
      }
    }
  }
}

TEST_CASE("a truncated payload names the record, the field and the offset") {
  const std::vector<segment_record> records = {record_of("a:1", "s", "0123456789")};
  const std::string wire = encoded_batch(1, records);
  const auto e = decode_error_of(std::string_view(wire).substr(0, wire.size() - 4));
  CHECK(e.message == "BATCH record 0: truncated in payload: needs 10 bytes, 6 remain (offset " +
                         std::to_string(wire.size() - 10) + ")");
}

TEST_CASE("a payload over max_segment_bytes is refused with the record, the length and the offset") {
  codec_limits generous;
  generous.max_segment_bytes = 16 << 20;
  generous.max_message_bytes = 32 << 20;
  const std::string huge(9'000'000, 'z');
  const std::vector<segment_record> records = {record_of("edge-1:1", "m", "a"), record_of("edge-1:2", "m", "b"),
                                               record_of("edge-1:3", "m", "c"), record_of("edge-1:4", "m", huge)};
  const std::string wire = encoded_batch(1, records, compression::none, generous);
  const std::size_t offset = batch_header_bytes + 3 * encoded_size(records[0]) + 2 + 8 + 2 + 1 + 8 + 8;

  const auto e = decode_error_of(wire);
  CHECK(e.code == errc::segment_too_large);
  CHECK(e.fault == codec_fault::over_limit);
  CHECK(e.message == "BATCH record 3: payload length 9000000 exceeds max_segment_bytes 4194304 (offset " +
                         std::to_string(offset) + ")");
  CHECK(wire_error_for(e) == wire_error::too_large);
  CHECK(e.item == 3);

  // The sender learns the same before sending, and which record to set aside.
  std::string out;
  auto n = encode_batch(1, records, out);
  REQUIRE(n.has_error());
  CHECK(n.error().code == errc::segment_too_large);
  CHECK(n.error().message == "BATCH record 3: payload length 9000000 exceeds max_segment_bytes 4194304");
  CHECK(n.error().item == 3);
  CHECK(out.empty());
}

TEST_CASE("ids and streams over max_id_bytes are refused by the encoder and the decoder") {
  codec_limits generous;
  generous.max_id_bytes = 1000;
  const std::string id(201, 'i');
  const std::vector<segment_record> records = {record_of("a:1", "s", "x"), record_of(id, "s", "y")};
  auto e = decode_error_of(encoded_batch(1, records, compression::none, generous));
  CHECK(e.fault == codec_fault::over_limit);
  CHECK(e.message == "BATCH record 1: id length 201 exceeds max_id_bytes 200 (offset " +
                         std::to_string(batch_header_bytes + encoded_size(records[0])) + ")");

  const std::string long_stream(300, 's');
  const std::vector<segment_record> bad_stream = {record_of("a:1", long_stream, "x")};
  e = decode_error_of(encoded_batch(1, bad_stream, compression::zstd, generous));
  CHECK_THAT(e.message, Contains("BATCH record 0: stream length 300 exceeds max_id_bytes 200 (offset 5"));
  CHECK_THAT(e.message, Contains(" of the decompressed records)"));

  std::string out;
  auto n = encode_batch(1, records, out);
  REQUIRE(n.has_error());
  CHECK(n.error().message == "BATCH record 1: id length 201 exceeds max_id_bytes 200");
  CHECK(n.error().item == 1);

  hello h = sample_hello();
  const std::string long_node(201, 'n');
  h.node_id = long_node;
  auto hn = encode_hello(h, out);
  REQUIRE(hn.has_error());
  CHECK(hn.error().message == "HELLO: node id length 201 exceeds max_id_bytes 200");
  REQUIRE(encode_hello(h, out, generous).has_value());
  CHECK(decode_error_of(out).message == "HELLO: node id length 201 exceeds max_id_bytes 200 (offset 4)");
}

TEST_CASE("record and result counts over max_segments are refused") {
  codec_limits small;
  small.max_segments = 2;
  const std::vector<segment_record> three(3, record_of("a:1", "s", "x"));
  auto e = decode_error_of(encoded_batch(1, three), small);
  CHECK(e.fault == codec_fault::over_limit);
  CHECK(e.message == "BATCH: record count 3 exceeds max_segments 2 (offset 11)");
  CHECK(e.item == no_item);

  std::string out;
  CHECK(encode_batch(1, three, out, {}, small).error().message == "BATCH: record count 3 exceeds max_segments 2");

  ack a{1, std::vector<segment_result>(3, segment_result{})};
  REQUIRE(encode_ack(a, out).has_value());
  CHECK(decode_error_of(out, small).message == "ACK: result count 3 exceeds max_segments 2 (offset 10)");
}

TEST_CASE("counts are checked against the bytes present before anything is reserved") {
  codec_limits unlimited;
  unlimited.max_segments = SIZE_MAX;
  std::string wire;
  util::writer w(wire);
  w.u8(0x03);
  w.u8(1);
  w.u8(0);
  w.u64(1);
  w.u32(0xFFFFFFFF);
  w.bytes("short");
  auto e = decode_error_of(wire, unlimited);
  CHECK(e.fault == codec_fault::truncated);
  CHECK(e.message == "BATCH: record count 4294967295 needs at least 103079215080 bytes, the records section has 5 "
                     "(offset 15)");

  std::string a;
  util::writer aw(a);
  aw.u8(0x04);
  aw.u8(1);
  aw.u64(1);
  aw.u32(0xFFFFFFFF);
  aw.u8(0);
  e = decode_error_of(a, unlimited);
  CHECK(e.message == "ACK: result count 4294967295 needs at least 4294967295 bytes, 1 remain (offset 10)");
}

TEST_CASE("trailing bytes after a message are refused") {
  std::string wire = encoded_batch(1, {record_of("a:1", "s", "x")});
  const std::size_t end = wire.size();
  wire.append(2, '\0');
  auto e = decode_error_of(wire);
  CHECK(e.fault == codec_fault::trailing_bytes);
  CHECK(e.message == "BATCH: 2 trailing bytes after the last field (offset " + std::to_string(end) + ")");

  REQUIRE(encode_ack(ack{1, {segment_result{}}}, wire).has_value());
  wire += 'x';
  CHECK(decode_error_of(wire).message == "ACK: 1 trailing bytes after the last field (offset 15)");

  REQUIRE(encode_hello_ack(hello_ack{1, "hub", "none", 1, 1, 0}, wire).has_value());
  wire += 'x';
  CHECK(decode_error_of(wire).fault == codec_fault::trailing_bytes);

  encode_error(wire_error::internal, "oops", wire);
  wire += 'x';
  CHECK(decode_error_of(wire).fault == codec_fault::trailing_bytes);

  const std::string text = compressible_text(2000);
  wire = encoded_batch(1, {record_of("a:1", "s", text)}, compression::zstd);
  REQUIRE(static_cast<std::uint8_t>(wire[2]) == 0x01);
  wire += "junk";
  e = decode_error_of(wire);
  CHECK(e.fault == codec_fault::trailing_bytes);
  CHECK_THAT(e.message, Contains("4 trailing bytes after the zstd frame"));
}

TEST_CASE("forbidden values are refused: unknown flags, unknown status, empty reason, zero window") {
  std::string wire = encoded_batch(1, {record_of("a:1", "s", "x")});
  wire[2] = 0x06;
  CHECK(decode_error_of(wire).message == "BATCH: unknown flags 0x06 (offset 2)");

  REQUIRE(encode_ack(ack{1, {segment_result{}, segment_result{}}}, wire).has_value());
  wire[15] = 9;
  auto e = decode_error_of(wire);
  CHECK(e.fault == codec_fault::bad_value);
  CHECK(e.message == "ACK result 1: unknown status 9 (offset 15)");
  CHECK(e.item == 1);

  wire[15] = 2; // rejected, then a reason length of... nothing left
  CHECK(decode_error_of(wire).message ==
        "ACK result 1: truncated in reason length: needs 1 bytes, 0 remain (offset 16)");
  wire += '\0';
  CHECK(decode_error_of(wire).message == "ACK result 1: reason must not be empty (offset 16)");

  std::string out;
  auto n = encode_ack(ack{1, {segment_result{ack_status::rejected, ""}}}, out);
  CHECK(n.error().message == "ACK result 0: reason must not be empty");
  n = encode_ack(ack{1, {segment_result{ack_status::ok, "why"}}}, out);
  CHECK_THAT(n.error().message, Contains("a reason is only carried by rejected"));
  const std::string long_reason(max_reason_bytes + 1, 'r');
  n = encode_ack(ack{1, {segment_result{ack_status::rejected, long_reason}}}, out);
  CHECK(n.error().message == "ACK result 0: reason length 65 exceeds max_reason_bytes 64");
  CHECK(n.error().item == 0);

  hello h = sample_hello();
  REQUIRE(encode_hello(h, wire).has_value());
  const std::size_t window_at = wire.size() - 12;
  wire.replace(window_at, 4, std::string(4, '\0'));
  CHECK(decode_error_of(wire).message ==
        "HELLO: max window must be at least 1 (offset " + std::to_string(window_at) + ")");
  h.max_window = 0;
  CHECK(encode_hello(h, out).error().message == "HELLO: max window must be at least 1");

  CHECK(decode_error_of(std::string_view("\x01\x01\x00", 3)).message == "HELLO: offers no protocol version (offset 2)");
  CHECK(decode_error_of(std::string_view("\x01\x01\x01\x00", 4)).message ==
        "HELLO: versions[0] is 0, which is not a protocol version (offset 3)");
  CHECK(decode_error_of(std::string_view("\x01\x02\x01\x01", 4)).message ==
        "HELLO: header version 2 is not the highest offered version 1 (offset 1)");
}

// ------------------------------------------------------------------ compression errors

TEST_CASE("a corrupt zstd frame is refused") {
  const std::string text = compressible_text(20000);
  const std::string good = encoded_batch(1, {record_of("a:1", "s", text)}, compression::zstd);
  REQUIRE(static_cast<std::uint8_t>(good[2]) == 0x01);
  const std::size_t frame_at = batch_header_bytes + 8;

  std::string bad = good;
  bad[frame_at] ^= 0x55; // the zstd magic number
  auto e = decode_error_of(bad);
  CHECK(e.fault == codec_fault::corrupt_compression);
  CHECK(e.message == "BATCH: records section is not a zstd frame (offset 23)");
  CHECK(wire_error_for(e) == wire_error::protocol);

  bad = good.substr(0, good.size() - 3);
  e = decode_error_of(bad);
  CHECK(e.fault == codec_fault::corrupt_compression);
  CHECK_THAT(e.message, StartsWith("BATCH: corrupt zstd frame: "));

  bad = compressed_batch_by_hand(1, 100, "");
  CHECK(decode_error_of(bad).fault == codec_fault::corrupt_compression);
}

TEST_CASE("a decompressed size that differs from the declared one is refused") {
  const std::string text = compressible_text(20000);
  std::string wire = encoded_batch(1, {record_of("a:1", "s", text)}, compression::zstd);
  REQUIRE(static_cast<std::uint8_t>(wire[2]) == 0x01);
  const std::uint64_t real = util::get_be64(reinterpret_cast<const unsigned char*>(wire.data() + 15));
  util::put_be64(reinterpret_cast<unsigned char*>(wire.data() + 15), real - 1);
  auto e = decode_error_of(wire);
  CHECK(e.fault == codec_fault::size_mismatch);
  CHECK(e.message == "BATCH: zstd frame declares " + std::to_string(real) + " bytes, the uncompressed length is " +
                         std::to_string(real - 1) + " (offset 23)");

  // Frames without a content size are caught while decompressing.
  const std::string frame = zero_bomb(1000, false);
  e = decode_error_of(compressed_batch_by_hand(1, 999, frame));
  CHECK(e.fault == codec_fault::size_mismatch);
  CHECK(e.message == "BATCH: zstd frame decompresses to more than the uncompressed length 999 (offset 23)");
  e = decode_error_of(compressed_batch_by_hand(1, 1001, frame));
  CHECK(e.fault == codec_fault::size_mismatch);
  CHECK(e.message == "BATCH: zstd frame decompresses to 1000 bytes, the uncompressed length is 1001 (offset 23)");

  // A record count the declared length cannot hold is refused before decompressing.
  e = decode_error_of(compressed_batch_by_hand(100, 1000, frame));
  CHECK(e.fault == codec_fault::truncated);
  CHECK_THAT(e.message, Contains("record count 100 needs at least 2400 bytes, the uncompressed length is 1000"));
}

TEST_CASE("a decompression bomb is refused by the limit without inflating it") {
  const std::size_t size = 128u << 20; // twice the default max_message_bytes
  const std::string honest = zero_bomb(size, true);
  CHECK(honest.size() < 64 * 1024);

  // Declared truthfully: over the limit before any allocation.
  auto e = decode_error_of(compressed_batch_by_hand(1, size, honest));
  CHECK(e.fault == codec_fault::over_limit);
  CHECK(e.message == "BATCH: uncompressed length 134217728 exceeds max_message_bytes 67108864 less the 15-byte "
                     "header (offset 15)");
  CHECK(wire_error_for(e) == wire_error::too_large);

  // Declared small, but the frame header says otherwise: refused before allocating.
  e = decode_error_of(compressed_batch_by_hand(1, 4096, honest));
  CHECK(e.fault == codec_fault::size_mismatch);
  CHECK_THAT(e.message, Contains("zstd frame declares 134217728 bytes, the uncompressed length is 4096"));

  // Declared small and the frame hides its size: decompression stops at the declared size.
  const std::string sneaky = zero_bomb(size, false);
  e = decode_error_of(compressed_batch_by_hand(1, 4096, sneaky));
  CHECK(e.fault == codec_fault::size_mismatch);
  CHECK(e.message == "BATCH: zstd frame decompresses to more than the uncompressed length 4096 (offset 23)");

  // A receiver with a smaller limit refuses an ordinary batch over it.
  codec_limits tight;
  tight.max_message_bytes = 10000;
  const std::string text = compressible_text(50000);
  const std::string wire = encoded_batch(1, {record_of("a:1", "s", text)}, compression::zstd);
  REQUIRE(wire.size() < tight.max_message_bytes);
  e = decode_error_of(wire, tight);
  CHECK(e.fault == codec_fault::over_limit);
  CHECK_THAT(e.message, Contains("exceeds max_message_bytes 10000"));
}

// ------------------------------------------------------------------ handshake

TEST_CASE("negotiate picks the highest common version, the client's first shared compression, the smaller sizes") {
  hello h = sample_hello();
  h.versions = {1, 2, 5};
  h.compressions = {"lz4", "zstd", "none"};
  h.max_window = 16;
  h.max_batch_bytes = 1 << 20;
  const std::uint8_t server_versions[] = {1, 2, 3};
  const std::string_view server_comp[] = {"zstd"};
  server_offer s{"hub-1", server_versions, server_comp, 8, 4 << 20, 120'000};
  auto a = negotiate(h, s);
  REQUIRE(a.has_value());
  CHECK(a->version == 2);
  CHECK(a->node_id == "hub-1");
  CHECK(a->compression == "zstd");
  CHECK(a->window == 8);
  CHECK(a->max_batch_bytes == 1u << 20);
  CHECK(a->dedupe_window_ms == 120'000);

  h.compressions = {"lz4"};
  CHECK(negotiate(h, s)->compression == "none");
  h.compressions = {"none", "zstd"}; // the client prefers no compression
  CHECK(negotiate(h, s)->compression == "none");
  h.compressions.clear();
  CHECK(negotiate(h, s)->compression == "none");
}

TEST_CASE("negotiate without a common version fails with unsupported_version") {
  hello h = sample_hello();
  h.versions = {2, 3};
  auto a = negotiate(h, server_offer{"hub", {}, {}, 8, 1 << 20, 0});
  REQUIRE(a.has_error());
  CHECK(a.error().fault == codec_fault::unsupported_version);
  CHECK(a.error().message == "HELLO: no common protocol version: the client offers 2, 3, the server speaks 1");
  CHECK(wire_error_for(a.error()) == wire_error::unsupported_version);
}

TEST_CASE("the client accepts only a version and a compression it offered, and honours the smaller sizes") {
  const hello h = sample_hello();
  auto t = accept_hello_ack(h, hello_ack{1, "hub", "zstd", 64, 1 << 30, 5000});
  REQUIRE(t.has_value());
  CHECK(t->version == 1);
  CHECK(t->algorithm == compression::zstd);
  CHECK(t->window == 16);
  CHECK(t->max_batch_bytes == 8u << 20);
  CHECK(t->dedupe_window_ms == 5000);

  t = accept_hello_ack(h, hello_ack{1, "hub", "none", 2, 1000, 0});
  REQUIRE(t.has_value());
  CHECK(t->algorithm == compression::none);
  CHECK(t->window == 2);
  CHECK(t->max_batch_bytes == 1000);

  t = accept_hello_ack(h, hello_ack{1, "hub", "lz4", 2, 1000, 0});
  REQUIRE(t.has_error());
  CHECK(t.error().message == "HELLO_ACK: the server chose compression \"lz4\", which the client did not offer");

  t = accept_hello_ack(h, hello_ack{3, "hub", "none", 2, 1000, 0});
  REQUIRE(t.has_error());
  CHECK(t.error().fault == codec_fault::unsupported_version);

  // A client may offer a name this build has no codec for (a newer peer's
  // HELLO relayed, a hand-built one); the server choosing it is refused.
  hello offers_lz4 = h;
  offers_lz4.compressions = {"lz4", "none"};
  t = accept_hello_ack(offers_lz4, hello_ack{1, "hub", "lz4", 2, 1000, 0});
  REQUIRE(t.has_error());
  CHECK(t.error().fault == codec_fault::bad_value);
  CHECK(t.error().message == "HELLO_ACK: compression \"lz4\" is not implemented by this build");
}

TEST_CASE("a full handshake over the wire agrees on the same terms on both sides") {
  const hello h = sample_hello();
  std::string wire;
  REQUIRE(encode_hello(h, wire).has_value());
  const auto received_hello = decoded_as<hello>(wire);
  const std::string_view comp[] = {"zstd"};
  auto answer = negotiate(received_hello, server_offer{"hub-1", {}, comp, 4, 16 << 20, 60'000});
  REQUIRE(answer.has_value());
  std::string ack_wire;
  REQUIRE(encode_hello_ack(*answer, ack_wire).has_value());
  auto terms = accept_hello_ack(h, decoded_as<hello_ack>(ack_wire));
  REQUIRE(terms.has_value());
  CHECK(terms->algorithm == compression::zstd);
  CHECK(terms->window == 4);
  CHECK(terms->max_batch_bytes == 8u << 20);
}

// ------------------------------------------------------------------ robustness

TEST_CASE("random truncations, byte flips and insertions never crash or read outside the input") {
  std::vector<std::string> corpus;
  std::string w;
  REQUIRE(encode_hello(sample_hello(), w).has_value());
  corpus.push_back(w);
  REQUIRE(encode_hello_ack(hello_ack{1, "hub-1", "zstd", 8, 1 << 20, 60000}, w).has_value());
  corpus.push_back(w);
  const std::string text = compressible_text(3000);
  const std::string noise = random_bytes(300, 11);
  const std::vector<segment_record> records = {record_of("edge:1", "metrics", text), record_of("", "", ""),
                                               record_of("edge:3", "logs", noise), record_of("edge:4", "m", "p")};
  corpus.push_back(encoded_batch(10, records));
  corpus.push_back(encoded_batch(11, records, compression::zstd));
  REQUIRE(static_cast<std::uint8_t>(corpus.back()[2]) == 0x01);
  REQUIRE(encode_ack(ack{5, {{ack_status::ok, {}}, {ack_status::duplicate, {}}, {ack_status::rejected, "checksum"}}}, w)
              .has_value());
  corpus.push_back(w);
  encode_error(wire_error::protocol, "bad message", w);
  corpus.push_back(w);

  codec_limits small;
  small.max_message_bytes = 2000;
  small.max_segments = 3;
  small.max_segment_bytes = 500;
  small.max_id_bytes = 8;

  std::mt19937_64 rng(0xED6E7E1A4ull);
  std::size_t decoded_ok = 0;
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::string m = corpus[rng() % corpus.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits && !m.empty(); ++k) {
      switch (rng() % 5) {
      case 0: m.resize(rng() % m.size()); break;                                  // truncate
      case 1: m[rng() % m.size()] ^= static_cast<char>(1u << (rng() % 8)); break; // flip a bit
      case 2: m[rng() % m.size()] = static_cast<char>(rng() & 0xff); break;       // overwrite a byte
      case 3: m.insert(rng() % (m.size() + 1), 1, static_cast<char>(rng() & 0xff)); break;
      case 4: { // a length or count field set to something huge
        const std::size_t at = rng() % m.size();
        for (std::size_t b = at; b < std::min(m.size(), at + 4); ++b)
          m[b] = static_cast<char>(0xff);
        break;
      }
      }
    }
    const exact_buffer input(m);
    const codec_limits& limits = (iteration % 2) ? small : codec_limits{};
    auto r = decode(input.view(), limits);
    if (!r) {
      INFO(r.error().message);
      CHECK_FALSE(r.error().message.empty());
      CHECK_THAT(r.error().message, Contains("offset"));
      continue;
    }
    ++decoded_ok;
    if (const auto* b = std::get_if<batch>(&*r)) {
      CHECK(b->records.size() <= limits.max_segments);
      for (const segment_record& rec : b->records) {
        const bool in_input = inside(rec.id, input.data.get(), input.size) &&
                              inside(rec.stream, input.data.get(), input.size) &&
                              inside(rec.payload, input.data.get(), input.size);
        const bool in_own = b->decompressed && inside(rec.payload, b->decompressed.get(), limits.max_message_bytes);
        CHECK((in_input || in_own));
        CHECK(rec.payload.size() <= limits.max_segment_bytes);
        CHECK(rec.id.size() <= limits.max_id_bytes);
        volatile char sink = 0;
        for (char c : rec.payload)
          sink = static_cast<char>(sink ^ c); // touch every byte: ASan checks the views
      }
    }
  }
  CHECK(decoded_ok > 0); // some mutations (e.g. a flipped payload byte) are still valid messages
}
