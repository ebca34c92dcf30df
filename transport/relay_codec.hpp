#pragma once
// edgerelay::transport relay codec — the byte layout of the relay protocol
// (docs/protocol.md), one protocol message per WebSocket binary message.
//
// Messages: HELLO (client's offer), HELLO_ACK (server's choice), BATCH
// (segments, optionally zstd-compressed as a whole), ACK (one result per
// segment) and ERROR (a code and a sentence, sent before closing). Every
// message starts with a 1-byte type and the 1-byte protocol version.
//
// Threads. Every function is pure apart from per-thread zstd contexts and
// scratch buffers, so any thread may call any function at the same time.
// Nothing throws except std::bad_alloc and .value() on a failed result.
//
// Lifetimes. Decoded messages hold views: into the decoded input for every
// field, except that the records of a compressed BATCH point into the batch's
// own `decompressed` buffer (a heap block: moving the batch keeps them valid).
// A decoded message is valid while the input buffer (and, for a compressed
// batch, the batch object) lives and is not modified.
//
// Untrusted input. decode() never reads outside its input, refuses a message
// over codec_limits before allocating anything, checks every count against
// the bytes that remain before reserving room for it, and decompresses into a
// buffer of the declared size only (at most max_message_bytes), so a
// decompression bomb costs no more memory than an honest batch. Checksums are not verified by decode():
// that is a per-segment decision of the receiver (`rejected:checksum`), see
// verify().

#include "util/errc.hpp"

#include <boost/assert/source_location.hpp>
#include <boost/system/result.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

namespace edgerelay::transport {

// The protocol version this build writes, and the only one it reads (HELLO
// and ERROR are read from any version, by their frozen version-1 fields).
inline constexpr std::uint8_t relay_protocol_version = 1;
// The WebSocket endpoint path of the relay protocol.
inline constexpr std::string_view relay_path = "/v1/relay";

enum class message_type : std::uint8_t { hello = 0x01, hello_ack = 0x02, batch = 0x03, ack = 0x04, error = 0x05 };
// "HELLO", "HELLO_ACK", "BATCH", "ACK", "ERROR", or "UNKNOWN".
const char* to_string(message_type t) noexcept;

// Protocol maxima that do not depend on configuration (the decoder enforces
// them too; docs/protocol.md lists them).
inline constexpr std::size_t max_versions = 16;          // versions offered in a HELLO
inline constexpr std::size_t max_compression_names = 16; // algorithms offered in a HELLO
inline constexpr std::size_t max_compression_name_bytes = 32;
inline constexpr std::size_t max_reason_bytes = 64;          // ACK rejection reason
inline constexpr std::size_t max_error_message_bytes = 1024; // ERROR sentence

// Sizes that let a sender pack batches exactly (see encoded_size()).
inline constexpr std::size_t batch_header_bytes = 15;    // type, version, flags, number, count
inline constexpr std::size_t record_overhead_bytes = 24; // id, stream and payload lengths, created, checksum

// Names of compression algorithms as they travel in HELLO / HELLO_ACK.
inline constexpr std::string_view compression_zstd = "zstd";
inline constexpr std::string_view compression_none = "none";
enum class compression : std::uint8_t { none, zstd };

// One segment as it travels in a BATCH. The codec never looks inside: an
// empty id, stream or payload round-trips, and the receiver judges it.
struct segment_record {
  std::string_view id;
  std::string_view stream;
  std::int64_t created_ms = 0; // ms since the Unix epoch
  std::uint64_t checksum = 0;  // util::checksum (XXH3-64) of payload
  std::string_view payload;
};

// True when record.checksum is the XXH3-64 of record.payload.
bool verify(const segment_record& record) noexcept;

// Bytes `record` adds to a BATCH before compression:
// record_overhead_bytes + id + stream + payload.
std::size_t encoded_size(const segment_record& record) noexcept;

// What a decoder accepts (and an encoder agrees to produce). The defaults are
// the protocol's; a receiver may lower them. max_message_bytes bounds both the
// WebSocket message and a BATCH's size after decompression.
struct codec_limits {
  std::size_t max_message_bytes = 64 << 20; // whole message, on the wire and decompressed
  std::size_t max_segments = 65536;         // records in a BATCH, results in an ACK
  std::size_t max_segment_bytes = 4 << 20;  // one payload
  std::size_t max_id_bytes = 200;           // a segment id, a stream name, a node id
};

// max_batch_bytes, in HELLO and HELLO_ACK, counts the payload bytes of a
// BATCH (the sum of its records' payload lengths, before compression), like
// the peer option batch_max_bytes; a BATCH of a single record may exceed it
// (a segment is never split). The hard per-message bound is the receiver's
// codec_limits, which the codec enforces; max_batch_bytes is the sender's
// packing rule and is not checked by decode().

// Client -> server, the first message. Its version-1 fields are frozen: every
// later version keeps them as a prefix, so any server can read any HELLO.
struct hello {
  std::vector<std::uint8_t> versions;         // 1..max_versions, each 1..255, any order
  std::string_view node_id;                   // 1..max_id_bytes
  std::vector<std::string_view> compressions; // 0..max_compression_names, client's preference first
  std::uint32_t max_window = 0;               // >= 1 unacknowledged batches the client wants in flight
  std::uint64_t max_batch_bytes = 0;          // >= 1, payload bytes per BATCH it will send (see above)
};

// Server -> client, the answer to HELLO, in the chosen version.
struct hello_ack {
  std::uint8_t version = relay_protocol_version; // chosen; travels as the header's version byte
  std::string_view node_id;                      // 1..max_id_bytes
  std::string_view compression;                  // one the client offered, or "none"
  std::uint32_t window = 0;                      // >= 1 unacknowledged batches the server accepts
  std::uint64_t max_batch_bytes = 0;             // >= 1, payload bytes per BATCH the server accepts
  std::uint64_t dedupe_window_ms = 0;            // hint: how long the server remembers ids
};

// A decoded BATCH. The records are in wire order; a segment's position here
// is its position in the ACK.
struct batch {
  std::uint64_t number = 0;
  bool compressed = false;
  std::vector<segment_record> records;
  std::unique_ptr<char[]> decompressed; // owns what a compressed batch's records view
};

enum class ack_status : std::uint8_t { ok = 0, duplicate = 1, rejected = 2 };
// "ok", "duplicate", "rejected".
const char* to_string(ack_status s) noexcept;

struct segment_result {
  ack_status status = ack_status::ok;
  std::string_view reason; // rejected: 1..max_reason_bytes ("checksum", "too_large", ...); otherwise empty
};

struct ack {
  std::uint64_t batch_number = 0;
  std::vector<segment_result> results; // one per record of the batch, in order
};

// Codes carried by ERROR. Unknown values decode as they are (a newer peer may
// send codes this build does not know) and should be treated as `protocol`.
enum class wire_error : std::uint16_t {
  protocol = 1,            // malformed or unexpected message: a bug on one side; reconnect with backoff
  unsupported_version = 2, // no common protocol version: retrying cannot help until one side upgrades
  too_large = 3,           // a message exceeded the receiver's limits
  unauthorized = 4,        // the peer's identity is not allowed here
  unavailable = 5,         // the receiver cannot commit now (store full or down): retry later
  shutting_down = 6,       // graceful shutdown: reconnect soon
  timeout = 7,             // an expected message (HELLO_ACK, ACK) did not come in time
  internal = 8,            // a fault inside the sender of the ERROR
};
// "protocol", "unsupported_version", ..., or "unknown".
const char* to_string(wire_error e) noexcept;

// ERROR, either direction, right before closing. Its version-1 layout is
// frozen like HELLO's: it may be sent before a version was agreed.
struct error_message {
  wire_error code = wire_error::protocol;
  std::string_view message; // 0..max_error_message_bytes, UTF-8, for humans and logs
};

using message = std::variant<hello, hello_ack, batch, ack, error_message>;

// What went wrong, by kind; `code` classifies it for the errc machinery and
// `message` is one sentence naming the message, the field and the byte
// offset, e.g. "BATCH record 3: payload length 9000000 exceeds
// max_segment_bytes 4194304 (offset 1234)".
enum class codec_fault : std::uint8_t {
  truncated,           // the message ends inside a field
  unknown_type,        // the first byte is not a message type
  unsupported_version, // a version this build does not speak, or no common version
  over_limit,          // a count or length above codec_limits or a protocol maximum
  bad_value,           // a value the protocol forbids (zero window, unknown flag or status, ...)
  trailing_bytes,      // bytes after the last field
  corrupt_compression, // zstd refused the frame
  size_mismatch,       // decompressed size differs from the declared one
};
const char* to_string(codec_fault f) noexcept;

inline constexpr std::size_t no_item = static_cast<std::size_t>(-1);

struct codec_error {
  errc code = errc::malformed; // segment_too_large for a payload over max_segment_bytes, else malformed
  codec_fault fault = codec_fault::bad_value;
  std::string message;
  // The 0-based record (BATCH) or result (ACK) at fault, or no_item when the
  // fault is not inside one. From encode_batch it names the record a sender
  // must set aside (dead-letter) for the rest of the batch to travel.
  std::size_t item = no_item;
};
using decode_error = codec_error;

// The ERROR code a receiver sends after refusing a message for `e`.
wire_error wire_error_for(const codec_error& e) noexcept;

// Found by ADL from .value() on a failed result: throws std::invalid_argument
// with the message.
[[noreturn]] void throw_exception_from_error(const codec_error& e, const boost::source_location& loc);

template <class T>
using codec_result = boost::system::result<T, codec_error>;

// Decodes one WebSocket message. See the lifetime and safety notes above.
codec_result<message> decode(std::string_view msg, const codec_limits& limits = {});

// Encoders replace the contents of `out` with one message (reusing its
// capacity) and return its size. They refuse, with the same error the
// decoder would give, anything the decoder would refuse under `limits`, so a
// sender learns which record cannot travel (e.g. to dead-letter it) instead
// of having every attempt refused by the receiver. On failure `out` is empty.
codec_result<std::size_t> encode_hello(const hello& m, std::string& out, const codec_limits& limits = {});
codec_result<std::size_t> encode_hello_ack(const hello_ack& m, std::string& out, const codec_limits& limits = {});
codec_result<std::size_t> encode_ack(const ack& m, std::string& out, const codec_limits& limits = {});

// `zstd` compresses the records section as one frame, unless that would not
// make the message smaller: then the batch is sent uncompressed (check the
// flags byte, or decode, to see which). zstd_level as in ZSTD_compress.
struct batch_encoding {
  compression algorithm = compression::none;
  int zstd_level = 3;
};
codec_result<std::size_t> encode_batch(std::uint64_t number, std::span<const segment_record> records, std::string& out,
                                       const batch_encoding& encoding = {}, const codec_limits& limits = {});

// Never fails: a text longer than max_error_message_bytes is cut at a
// UTF-8 character boundary.
std::size_t encode_error(wire_error code, std::string_view text, std::string& out);

// ---------------------------------------------------------------- handshake

// What a server is prepared to accept.
struct server_offer {
  std::string_view node_id;
  std::span<const std::uint8_t> versions;         // ones this build speaks; empty: {relay_protocol_version}
  std::span<const std::string_view> compressions; // algorithms the server decodes, e.g. {"zstd"}
  std::uint32_t window = 8;
  std::uint64_t max_batch_bytes = 16 << 20;
  std::uint64_t dedupe_window_ms = 3'600'000;
};

// The server's answer to `client`: the highest common version, the first
// algorithm in the client's preference that the server also has ("none" if
// there is none), and the smaller window and max_batch_bytes of the two.
// Fails with unsupported_version when the two share no version (the server
// then sends ERROR unsupported_version and closes).
codec_result<hello_ack> negotiate(const hello& client, const server_offer& server);

// What the client must honour after the handshake.
struct session_terms {
  std::uint8_t version = relay_protocol_version;
  compression algorithm = compression::none;
  std::uint32_t window = 1;          // min of the client's and the server's
  std::uint64_t max_batch_bytes = 0; // min of the client's and the server's
  std::uint64_t dedupe_window_ms = 0;
};

// The client's check of the server's answer to `sent`: the version and the
// compression must be ones the client offered (and that this build knows).
codec_result<session_terms> accept_hello_ack(const hello& sent, const hello_ack& received);

} // namespace edgerelay::transport
