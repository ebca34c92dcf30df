#include "transport/relay_codec.hpp"

#include "util/bytes.hpp"
#include "util/checksum.hpp"

#include <algorithm>
#include <bit>
#include <boost/throw_exception.hpp>
#include <cstdio>
#include <limits>
#include <new>
#include <optional>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <zstd.h>
#include <zstd_errors.h>

namespace edgerelay::transport {
namespace {

constexpr std::uint8_t flag_zstd = 0x01;
constexpr std::size_t compressed_prefix_bytes = 8; // u64 uncompressed length before the zstd frame
constexpr std::size_t max_u16 = std::numeric_limits<std::uint16_t>::max();
constexpr std::size_t max_u32 = std::numeric_limits<std::uint32_t>::max();

// --------------------------------------------------------------- text

void append(std::string& s, std::string_view v) { s.append(v); }
void append(std::string& s, const char* v) { s.append(v); }
void append(std::string& s, const std::string& v) { s.append(v); }
template <class T>
requires std::is_integral_v<T>
void append(std::string& s, T v) {
  if constexpr (std::is_same_v<T, bool>)
    s.append(v ? "true" : "false");
  else if constexpr (std::is_signed_v<T>)
    s.append(std::to_string(static_cast<long long>(v)));
  else
    s.append(std::to_string(static_cast<unsigned long long>(v)));
}

template <class... A>
std::string cat(const A&... a) {
  std::string s;
  (append(s, a), ...);
  return s;
}

std::string hex_byte(std::uint8_t b) {
  char buf[5];
  std::snprintf(buf, sizeof buf, "0x%02x", static_cast<unsigned>(b));
  return buf;
}

// A quoted, printable rendering of a short untrusted string for messages.
std::string quoted(std::string_view s) {
  std::string q = "\"";
  for (char c : s.substr(0, 40)) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '"' && c != '\\')
      q.push_back(c);
    else
      q += "\\x" + hex_byte(u).substr(2);
  }
  if (s.size() > 40) q += "...";
  return q + "\"";
}

codec_error make_error(codec_fault f, std::string message, errc code = errc::malformed) {
  return codec_error{code, f, std::move(message)};
}

// "<what> <n> exceeds <limit_name> <limit>", or nullopt when within.
std::optional<std::string> over(std::string_view what, std::size_t n, std::string_view limit_name, std::size_t limit) {
  if (n <= limit) return std::nullopt;
  return cat(what, " ", n, " exceeds ", limit_name, " ", limit);
}

// The largest length a field can carry under a configured limit.
std::size_t cap(std::size_t configured, std::size_t field_max) { return std::min(configured, field_max); }
std::string_view cap_name(std::size_t configured, std::size_t field_max, std::string_view configured_name,
                          std::string_view field_name) {
  return configured <= field_max ? configured_name : field_name;
}

// --------------------------------------------------------------- zstd contexts

struct cctx_free {
  void operator()(ZSTD_CCtx* c) const noexcept { ZSTD_freeCCtx(c); }
};
struct dctx_free {
  void operator()(ZSTD_DCtx* c) const noexcept { ZSTD_freeDCtx(c); }
};

ZSTD_CCtx* thread_cctx() {
  thread_local std::unique_ptr<ZSTD_CCtx, cctx_free> c(ZSTD_createCCtx());
  if (!c) throw std::bad_alloc();
  return c.get();
}
ZSTD_DCtx* thread_dctx() {
  thread_local std::unique_ptr<ZSTD_DCtx, dctx_free> c(ZSTD_createDCtx());
  if (!c) throw std::bad_alloc();
  return c.get();
}

// --------------------------------------------------------------- parser

// Bounds-checked reads over one region (the message, or a decompressed
// records section) that turn the first failure into a codec_error naming the
// context ("BATCH record 3"), the field and the byte offset.
class parser {
public:
  // `context` names the message ("BATCH"); item() narrows it to one element
  // ("BATCH record 3"). Nothing is formatted unless a read fails, so parsing
  // a valid message allocates nothing here.
  parser(std::string_view in, std::size_t base, std::string_view offset_suffix, std::string_view context)
      : in_(in), r_(in), base_(base), suffix_(offset_suffix), context_(context) {}

  explicit operator bool() const noexcept { return !error_; }
  codec_error take_error() { return std::move(*error_); }
  std::size_t offset() const noexcept { return base_ + (in_.size() - r_.remaining()); }
  std::size_t remaining() const noexcept { return r_.remaining(); }
  void item(std::string_view noun, std::size_t index) noexcept {
    item_noun_ = noun;
    item_index_ = index;
  }
  void whole() noexcept { item_noun_ = {}; }

  std::uint8_t u8(std::string_view field, std::string_view suffix = {}) { return need(1, field, suffix) ? r_.u8() : 0; }
  std::uint16_t u16(std::string_view field, std::string_view suffix = {}) {
    return need(2, field, suffix) ? r_.u16() : 0;
  }
  std::uint32_t u32(std::string_view field, std::string_view suffix = {}) {
    return need(4, field, suffix) ? r_.u32() : 0;
  }
  std::uint64_t u64(std::string_view field, std::string_view suffix = {}) {
    return need(8, field, suffix) ? r_.u64() : 0;
  }
  std::string_view bytes(std::size_t n, std::string_view field) {
    return need(n, field, {}) ? r_.bytes(n) : std::string_view{};
  }
  std::string_view rest() { return r_.rest(); }

  // A length-prefixed string of width 1, 2 or 4 bytes, min_len..max_len long.
  std::string_view text(int width, std::string_view field, std::size_t min_len, std::size_t max_len,
                        std::string_view max_name, errc too_long = errc::malformed) {
    const std::size_t at = offset();
    constexpr std::string_view length = " length";
    const std::size_t len = width == 1   ? std::size_t{u8(field, length)}
                            : width == 2 ? std::size_t{u16(field, length)}
                                         : std::size_t{u32(field, length)};
    if (!*this) return {};
    if (len > max_len) {
      fail(codec_fault::over_limit, cat(field, length, " ", len, " exceeds ", max_name, " ", max_len), at, too_long);
      return {};
    }
    if (len < min_len) {
      fail(codec_fault::bad_value, cat(field, " must not be empty"), at);
      return {};
    }
    return bytes(len, field);
  }

  // Records the first failure; later ones are ignored. Always returns false.
  bool fail(codec_fault f, std::string what, std::size_t at, errc code = errc::malformed) {
    if (error_) return false;
    std::string where(context_);
    if (!item_noun_.empty()) where += cat(" ", item_noun_, " ", item_index_);
    error_ = make_error(f, cat(where, ": ", what, " (offset ", at, suffix_, ")"), code);
    if (!item_noun_.empty()) error_->item = item_index_;
    return false;
  }

  // fail() and take_error() in one, for `return p.error_at(...)`.
  codec_error error_at(codec_fault f, std::string what, std::size_t at, errc code = errc::malformed) {
    fail(f, std::move(what), at, code);
    return take_error();
  }

  // Refuses bytes after the last field.
  bool finish() {
    if (*this && r_.remaining() != 0)
      return fail(codec_fault::trailing_bytes, cat(r_.remaining(), " trailing bytes after the last field"), offset());
    return bool(*this);
  }

private:
  bool need(std::size_t n, std::string_view field, std::string_view suffix) {
    if (error_) return false;
    if (r_.remaining() >= n) return true;
    return fail(codec_fault::truncated,
                cat("truncated in ", field, suffix, ": needs ", n, " bytes, ", r_.remaining(), " remain"), offset());
  }

  std::string_view in_;
  util::reader r_;
  std::size_t base_;
  std::string_view suffix_;
  std::string_view context_;
  std::string_view item_noun_;
  std::size_t item_index_ = 0;
  std::optional<codec_error> error_;
};

// --------------------------------------------------------------- decoders

codec_result<message> decode_hello(parser& p, std::uint8_t header_version, const codec_limits& limits) {
  hello m;
  const std::size_t count_at = p.offset();
  const std::uint8_t n = p.u8("version count");
  if (!p) return p.take_error();
  if (n == 0) return p.error_at(codec_fault::bad_value, "offers no protocol version", count_at);
  if (auto e = over("version count", n, "the protocol maximum", max_versions))
    return p.error_at(codec_fault::over_limit, std::move(*e), count_at);
  const std::size_t list_at = p.offset();
  const std::string_view list = p.bytes(n, "versions");
  if (!p) return p.take_error();
  m.versions.reserve(n);
  for (std::size_t i = 0; i < list.size(); ++i) {
    const auto v = static_cast<std::uint8_t>(list[i]);
    if (v == 0)
      return p.error_at(codec_fault::bad_value, cat("versions[", i, "] is 0, which is not a protocol version"),
                        list_at + i);
    m.versions.push_back(v);
  }
  const std::uint8_t highest = *std::max_element(m.versions.begin(), m.versions.end());
  if (header_version != highest)
    return p.error_at(codec_fault::bad_value,
                      cat("header version ", header_version, " is not the highest offered version ", highest), 1);
  m.node_id = p.text(2, "node id", 1, cap(limits.max_id_bytes, max_u16),
                     cap_name(limits.max_id_bytes, max_u16, "max_id_bytes", "the field maximum"));
  const std::size_t comp_at = p.offset();
  const std::uint8_t nc = p.u8("compression count");
  if (!p) return p.take_error();
  if (auto e = over("compression count", nc, "the protocol maximum", max_compression_names))
    return p.error_at(codec_fault::over_limit, std::move(*e), comp_at);
  m.compressions.reserve(nc);
  for (std::size_t i = 0; i < nc && p; ++i)
    m.compressions.push_back(
        p.text(1, "compression name", 1, max_compression_name_bytes, "max_compression_name_bytes"));
  const std::size_t window_at = p.offset();
  m.max_window = p.u32("max window");
  if (p && m.max_window == 0) p.fail(codec_fault::bad_value, "max window must be at least 1", window_at);
  const std::size_t bytes_at = p.offset();
  m.max_batch_bytes = p.u64("max batch bytes");
  if (p && m.max_batch_bytes == 0) p.fail(codec_fault::bad_value, "max batch bytes must be at least 1", bytes_at);
  // A newer version's HELLO keeps version 1's fields as a prefix and may
  // append more: this build ignores them.
  if (header_version > relay_protocol_version)
    p.rest();
  else
    p.finish();
  if (!p) return p.take_error();
  return message{std::move(m)};
}

codec_result<message> decode_hello_ack(parser& p, std::uint8_t header_version, const codec_limits& limits) {
  hello_ack m;
  m.version = header_version;
  m.node_id = p.text(2, "node id", 1, cap(limits.max_id_bytes, max_u16),
                     cap_name(limits.max_id_bytes, max_u16, "max_id_bytes", "the field maximum"));
  m.compression = p.text(1, "compression", 1, max_compression_name_bytes, "max_compression_name_bytes");
  const std::size_t window_at = p.offset();
  m.window = p.u32("window");
  if (p && m.window == 0) p.fail(codec_fault::bad_value, "window must be at least 1", window_at);
  const std::size_t bytes_at = p.offset();
  m.max_batch_bytes = p.u64("max batch bytes");
  if (p && m.max_batch_bytes == 0) p.fail(codec_fault::bad_value, "max batch bytes must be at least 1", bytes_at);
  m.dedupe_window_ms = p.u64("dedupe window");
  p.finish();
  if (!p) return p.take_error();
  return message{std::move(m)};
}

// Parses `count` records from a records section (the message's tail, or the
// decompressed buffer) into `out`.
bool parse_records(parser& q, std::uint32_t count, const codec_limits& limits, std::vector<segment_record>& out) {
  if (count > q.remaining() / record_overhead_bytes)
    return q.fail(codec_fault::truncated,
                  cat("record count ", count, " needs at least ", std::uint64_t{count} * record_overhead_bytes,
                      " bytes, the records section has ", q.remaining()),
                  q.offset());
  out.reserve(count);
  const std::size_t id_max = cap(limits.max_id_bytes, max_u16);
  const std::string_view id_max_name = cap_name(limits.max_id_bytes, max_u16, "max_id_bytes", "the field maximum");
  const std::size_t payload_max = cap(limits.max_segment_bytes, max_u32);
  const std::string_view payload_max_name =
      cap_name(limits.max_segment_bytes, max_u32, "max_segment_bytes", "the field maximum");
  for (std::uint32_t i = 0; i < count; ++i) {
    q.item("record", i);
    segment_record r;
    r.id = q.text(2, "id", 0, id_max, id_max_name);
    r.stream = q.text(2, "stream", 0, id_max, id_max_name);
    r.created_ms = std::bit_cast<std::int64_t>(q.u64("created time"));
    r.checksum = q.u64("checksum");
    r.payload = q.text(4, "payload", 0, payload_max, payload_max_name, errc::segment_too_large);
    if (!q) return false;
    out.push_back(r);
  }
  q.whole();
  return q.finish();
}

codec_result<message> decode_batch(parser& p, const codec_limits& limits) {
  batch m;
  const std::size_t flags_at = p.offset();
  const std::uint8_t flags = p.u8("flags");
  if (p && (flags & ~flag_zstd) != 0) p.fail(codec_fault::bad_value, cat("unknown flags ", hex_byte(flags)), flags_at);
  m.number = p.u64("batch number");
  const std::size_t count_at = p.offset();
  const std::uint32_t count = p.u32("record count");
  if (!p) return p.take_error();
  if (auto e = over("record count", count, "max_segments", limits.max_segments))
    return p.error_at(codec_fault::over_limit, std::move(*e), count_at);
  m.compressed = (flags & flag_zstd) != 0;

  if (!m.compressed) {
    parser q(p.rest(), batch_header_bytes, "", "BATCH");
    if (!parse_records(q, count, limits, m.records)) return q.take_error();
    return message{std::move(m)};
  }

  const std::size_t declared_at = p.offset();
  const std::uint64_t declared = p.u64("uncompressed length");
  if (!p) return p.take_error();
  const std::size_t section_max =
      limits.max_message_bytes > batch_header_bytes ? limits.max_message_bytes - batch_header_bytes : 0;
  if (declared > section_max)
    return p.error_at(codec_fault::over_limit,
                      cat("uncompressed length ", declared, " exceeds max_message_bytes ", limits.max_message_bytes,
                          " less the ", batch_header_bytes, "-byte header"),
                      declared_at);
  if (count > declared / record_overhead_bytes)
    return p.error_at(codec_fault::truncated,
                      cat("record count ", count, " needs at least ", std::uint64_t{count} * record_overhead_bytes,
                          " bytes, the uncompressed length is ", declared),
                      declared_at);

  const std::size_t frame_at = p.offset();
  const std::string_view frame = p.rest();
  const unsigned long long content = ZSTD_getFrameContentSize(frame.data(), frame.size());
  if (content == ZSTD_CONTENTSIZE_ERROR)
    return p.error_at(codec_fault::corrupt_compression, "records section is not a zstd frame", frame_at);
  if (content != ZSTD_CONTENTSIZE_UNKNOWN && content != declared)
    return p.error_at(codec_fault::size_mismatch,
                      cat("zstd frame declares ", content, " bytes, the uncompressed length is ", declared), frame_at);
  const std::size_t frame_size = ZSTD_findFrameCompressedSize(frame.data(), frame.size());
  if (ZSTD_isError(frame_size))
    return p.error_at(codec_fault::corrupt_compression, cat("corrupt zstd frame: ", ZSTD_getErrorName(frame_size)),
                      frame_at);
  if (frame_size != frame.size())
    return p.error_at(codec_fault::trailing_bytes,
                      cat(frame.size() - frame_size, " trailing bytes after the zstd frame"), frame_at + frame_size);

  // declared <= max_message_bytes: this allocation is what the limit allows.
  m.decompressed = std::make_unique_for_overwrite<char[]>(declared == 0 ? 1 : declared);
  const std::size_t got =
      ZSTD_decompressDCtx(thread_dctx(), m.decompressed.get(), declared, frame.data(), frame.size());
  if (ZSTD_isError(got)) {
    if (ZSTD_getErrorCode(got) == ZSTD_error_dstSize_tooSmall)
      return p.error_at(codec_fault::size_mismatch,
                        cat("zstd frame decompresses to more than the uncompressed length ", declared), frame_at);
    return p.error_at(codec_fault::corrupt_compression, cat("corrupt zstd frame: ", ZSTD_getErrorName(got)), frame_at);
  }
  if (got != declared)
    return p.error_at(codec_fault::size_mismatch,
                      cat("zstd frame decompresses to ", got, " bytes, the uncompressed length is ", declared),
                      frame_at);
  parser q(std::string_view(m.decompressed.get(), got), 0, " of the decompressed records", "BATCH");
  if (!parse_records(q, count, limits, m.records)) return q.take_error();
  return message{std::move(m)};
}

codec_result<message> decode_ack(parser& p, const codec_limits& limits) {
  ack m;
  m.batch_number = p.u64("batch number");
  const std::size_t count_at = p.offset();
  const std::uint32_t count = p.u32("result count");
  if (!p) return p.take_error();
  if (auto e = over("result count", count, "max_segments", limits.max_segments))
    return p.error_at(codec_fault::over_limit, std::move(*e), count_at);
  if (count > p.remaining())
    return p.error_at(codec_fault::truncated,
                      cat("result count ", count, " needs at least ", count, " bytes, ", p.remaining(), " remain"),
                      count_at);
  m.results.reserve(count);
  for (std::uint32_t i = 0; i < count; ++i) {
    p.item("result", i);
    const std::size_t status_at = p.offset();
    const std::uint8_t s = p.u8("status");
    if (!p) return p.take_error();
    segment_result r;
    switch (s) {
    case 0: r.status = ack_status::ok; break;
    case 1: r.status = ack_status::duplicate; break;
    case 2:
      r.status = ack_status::rejected;
      r.reason = p.text(1, "reason", 1, max_reason_bytes, "max_reason_bytes");
      if (!p) return p.take_error();
      break;
    default: return p.error_at(codec_fault::bad_value, cat("unknown status ", s), status_at);
    }
    m.results.push_back(r);
  }
  p.whole();
  if (!p.finish()) return p.take_error();
  return message{std::move(m)};
}

codec_result<message> decode_error_message(parser& p, std::uint8_t header_version) {
  error_message m;
  m.code = static_cast<wire_error>(p.u16("code"));
  m.message = p.text(2, "message", 0, max_error_message_bytes, "max_error_message_bytes");
  // Like HELLO, ERROR's version-1 fields are a frozen prefix.
  if (header_version > relay_protocol_version)
    p.rest();
  else
    p.finish();
  if (!p) return p.take_error();
  return message{std::move(m)};
}

// --------------------------------------------------------------- encoders

codec_error encode_failure(std::string_view context, std::string what, codec_fault f = codec_fault::over_limit,
                           errc code = errc::malformed) {
  return make_error(f, cat(context, ": ", what), code);
}

// Checks a string against the decoder's limit for it.
std::optional<codec_error> check_text(std::string_view context, std::string_view field, std::string_view v,
                                      std::size_t min_len, std::size_t configured, std::string_view configured_name,
                                      std::size_t field_max, errc too_long = errc::malformed) {
  if (auto e = over(cat(field, " length"), v.size(),
                    cap_name(configured, field_max, configured_name, "the field maximum"), cap(configured, field_max)))
    return encode_failure(context, std::move(*e), codec_fault::over_limit, too_long);
  if (v.size() < min_len) return encode_failure(context, cat(field, " must not be empty"), codec_fault::bad_value);
  return std::nullopt;
}

void put_text(util::writer& w, int width, std::string_view v) {
  if (width == 1)
    w.u8(static_cast<std::uint8_t>(v.size()));
  else if (width == 2)
    w.u16(static_cast<std::uint16_t>(v.size()));
  else
    w.u32(static_cast<std::uint32_t>(v.size()));
  w.bytes(v);
}

void put_header(util::writer& w, message_type t, std::uint8_t version) {
  w.u8(static_cast<std::uint8_t>(t));
  w.u8(version);
}

template <class T>
codec_result<T> fail_clear(std::string& out, codec_error e, std::size_t item = no_item) {
  out.clear();
  e.item = item;
  return e;
}

} // namespace

// ------------------------------------------------------------------ public

const char* to_string(message_type t) noexcept {
  switch (t) {
  case message_type::hello: return "HELLO";
  case message_type::hello_ack: return "HELLO_ACK";
  case message_type::batch: return "BATCH";
  case message_type::ack: return "ACK";
  case message_type::error: return "ERROR";
  }
  return "UNKNOWN";
}

const char* to_string(ack_status s) noexcept {
  switch (s) {
  case ack_status::ok: return "ok";
  case ack_status::duplicate: return "duplicate";
  case ack_status::rejected: return "rejected";
  }
  return "unknown";
}

const char* to_string(wire_error e) noexcept {
  switch (e) {
  case wire_error::protocol: return "protocol";
  case wire_error::unsupported_version: return "unsupported_version";
  case wire_error::too_large: return "too_large";
  case wire_error::unauthorized: return "unauthorized";
  case wire_error::unavailable: return "unavailable";
  case wire_error::shutting_down: return "shutting_down";
  case wire_error::timeout: return "timeout";
  case wire_error::internal: return "internal";
  }
  return "unknown";
}

const char* to_string(codec_fault f) noexcept {
  switch (f) {
  case codec_fault::truncated: return "truncated";
  case codec_fault::unknown_type: return "unknown_type";
  case codec_fault::unsupported_version: return "unsupported_version";
  case codec_fault::over_limit: return "over_limit";
  case codec_fault::bad_value: return "bad_value";
  case codec_fault::trailing_bytes: return "trailing_bytes";
  case codec_fault::corrupt_compression: return "corrupt_compression";
  case codec_fault::size_mismatch: return "size_mismatch";
  }
  return "unknown";
}

wire_error wire_error_for(const codec_error& e) noexcept {
  switch (e.fault) {
  case codec_fault::unsupported_version: return wire_error::unsupported_version;
  case codec_fault::over_limit: return wire_error::too_large;
  default: return wire_error::protocol;
  }
}

void throw_exception_from_error(const codec_error& e, const boost::source_location& loc) {
  boost::throw_with_location(std::invalid_argument(e.message), loc);
}

bool verify(const segment_record& record) noexcept { return util::checksum(record.payload) == record.checksum; }

std::size_t encoded_size(const segment_record& record) noexcept {
  return record_overhead_bytes + record.id.size() + record.stream.size() + record.payload.size();
}

codec_result<message> decode(std::string_view msg, const codec_limits& limits) {
  if (msg.size() > limits.max_message_bytes)
    return make_error(codec_fault::over_limit, cat("message: ", msg.size(), " bytes exceed max_message_bytes ",
                                                   limits.max_message_bytes, " (offset 0)"));
  if (msg.empty()) return make_error(codec_fault::truncated, "message: truncated: empty, no message type (offset 0)");
  const auto type_byte = static_cast<std::uint8_t>(msg[0]);
  if (type_byte < static_cast<std::uint8_t>(message_type::hello) ||
      type_byte > static_cast<std::uint8_t>(message_type::error))
    return make_error(codec_fault::unknown_type,
                      cat("message: unknown message type ", hex_byte(type_byte), " (offset 0)"));
  const auto type = static_cast<message_type>(type_byte);
  const char* name = to_string(type);
  if (msg.size() < 2)
    return make_error(codec_fault::truncated, cat(name, ": truncated in version: needs 1 bytes, 0 remain (offset 1)"));
  const auto version = static_cast<std::uint8_t>(msg[1]);
  // HELLO and ERROR may arrive before a version is agreed: their version-1
  // fields are read from any version. Every other message must be ours.
  const bool frozen_layout = type == message_type::hello || type == message_type::error;
  if (frozen_layout ? version == 0 : version != relay_protocol_version)
    return make_error(codec_fault::unsupported_version,
                      cat(name, ": unsupported protocol version ", version, " (this build speaks ",
                          relay_protocol_version, ") (offset 1)"));

  parser p(msg.substr(2), 2, "", name);
  switch (type) {
  case message_type::hello: return decode_hello(p, version, limits);
  case message_type::hello_ack: return decode_hello_ack(p, version, limits);
  case message_type::batch: return decode_batch(p, limits);
  case message_type::ack: return decode_ack(p, limits);
  case message_type::error: return decode_error_message(p, version);
  }
  return make_error(codec_fault::unknown_type, "message: unknown message type (offset 0)");
}

codec_result<std::size_t> encode_hello(const hello& m, std::string& out, const codec_limits& limits) {
  constexpr std::string_view ctx = "HELLO";
  if (m.versions.empty())
    return fail_clear<std::size_t>(out, encode_failure(ctx, "offers no protocol version", codec_fault::bad_value));
  if (auto e = over("version count", m.versions.size(), "the protocol maximum", max_versions))
    return fail_clear<std::size_t>(out, encode_failure(ctx, std::move(*e)));
  for (std::size_t i = 0; i < m.versions.size(); ++i)
    if (m.versions[i] == 0)
      return fail_clear<std::size_t>(
          out,
          encode_failure(ctx, cat("versions[", i, "] is 0, which is not a protocol version"), codec_fault::bad_value));
  if (auto e = check_text(ctx, "node id", m.node_id, 1, limits.max_id_bytes, "max_id_bytes", max_u16))
    return fail_clear<std::size_t>(out, std::move(*e));
  if (auto e = over("compression count", m.compressions.size(), "the protocol maximum", max_compression_names))
    return fail_clear<std::size_t>(out, encode_failure(ctx, std::move(*e)));
  for (std::string_view c : m.compressions)
    if (auto e = check_text(ctx, "compression name", c, 1, max_compression_name_bytes, "max_compression_name_bytes",
                            max_compression_name_bytes))
      return fail_clear<std::size_t>(out, std::move(*e));
  if (m.max_window == 0)
    return fail_clear<std::size_t>(out, encode_failure(ctx, "max window must be at least 1", codec_fault::bad_value));
  if (m.max_batch_bytes == 0)
    return fail_clear<std::size_t>(out,
                                   encode_failure(ctx, "max batch bytes must be at least 1", codec_fault::bad_value));

  out.clear();
  util::writer w(out);
  put_header(w, message_type::hello, *std::max_element(m.versions.begin(), m.versions.end()));
  w.u8(static_cast<std::uint8_t>(m.versions.size()));
  for (std::uint8_t v : m.versions)
    w.u8(v);
  put_text(w, 2, m.node_id);
  w.u8(static_cast<std::uint8_t>(m.compressions.size()));
  for (std::string_view c : m.compressions)
    put_text(w, 1, c);
  w.u32(m.max_window);
  w.u64(m.max_batch_bytes);
  return out.size();
}

codec_result<std::size_t> encode_hello_ack(const hello_ack& m, std::string& out, const codec_limits& limits) {
  constexpr std::string_view ctx = "HELLO_ACK";
  if (m.version != relay_protocol_version)
    return fail_clear<std::size_t>(out, encode_failure(ctx,
                                                       cat("unsupported protocol version ", m.version,
                                                           " (this build speaks ", relay_protocol_version, ")"),
                                                       codec_fault::unsupported_version));
  if (auto e = check_text(ctx, "node id", m.node_id, 1, limits.max_id_bytes, "max_id_bytes", max_u16))
    return fail_clear<std::size_t>(out, std::move(*e));
  if (auto e = check_text(ctx, "compression", m.compression, 1, max_compression_name_bytes,
                          "max_compression_name_bytes", max_compression_name_bytes))
    return fail_clear<std::size_t>(out, std::move(*e));
  if (m.window == 0)
    return fail_clear<std::size_t>(out, encode_failure(ctx, "window must be at least 1", codec_fault::bad_value));
  if (m.max_batch_bytes == 0)
    return fail_clear<std::size_t>(out,
                                   encode_failure(ctx, "max batch bytes must be at least 1", codec_fault::bad_value));

  out.clear();
  util::writer w(out);
  put_header(w, message_type::hello_ack, m.version);
  put_text(w, 2, m.node_id);
  put_text(w, 1, m.compression);
  w.u32(m.window);
  w.u64(m.max_batch_bytes);
  w.u64(m.dedupe_window_ms);
  return out.size();
}

codec_result<std::size_t> encode_ack(const ack& m, std::string& out, const codec_limits& limits) {
  if (auto e = over("result count", m.results.size(), "max_segments", cap(limits.max_segments, max_u32)))
    return fail_clear<std::size_t>(out, encode_failure("ACK", std::move(*e)));
  for (std::size_t i = 0; i < m.results.size(); ++i) {
    const segment_result& r = m.results[i];
    const bool fine = r.status == ack_status::rejected
                          ? !r.reason.empty() && r.reason.size() <= max_reason_bytes
                          : (r.status == ack_status::ok || r.status == ack_status::duplicate) && r.reason.empty();
    if (fine) continue;
    const std::string ctx = cat("ACK result ", i);
    switch (r.status) {
    case ack_status::ok:
    case ack_status::duplicate:
      if (!r.reason.empty())
        return fail_clear<std::size_t>(
            out,
            encode_failure(ctx, cat("a reason is only carried by rejected, not by ", to_string(r.status)),
                           codec_fault::bad_value),
            i);
      break;
    case ack_status::rejected:
      if (auto e = check_text(ctx, "reason", r.reason, 1, max_reason_bytes, "max_reason_bytes", max_reason_bytes))
        return fail_clear<std::size_t>(out, std::move(*e), i);
      break;
    default:
      return fail_clear<std::size_t>(
          out, encode_failure(ctx, cat("unknown status ", static_cast<unsigned>(r.status)), codec_fault::bad_value), i);
    }
  }

  out.clear();
  out.reserve(2 + 8 + 4 + m.results.size());
  util::writer w(out);
  put_header(w, message_type::ack, relay_protocol_version);
  w.u64(m.batch_number);
  w.u32(static_cast<std::uint32_t>(m.results.size()));
  for (const segment_result& r : m.results) {
    w.u8(static_cast<std::uint8_t>(r.status));
    if (r.status == ack_status::rejected) put_text(w, 1, r.reason);
  }
  return out.size();
}

codec_result<std::size_t> encode_batch(std::uint64_t number, std::span<const segment_record> records, std::string& out,
                                       const batch_encoding& encoding, const codec_limits& limits) {
  if (auto e = over("record count", records.size(), "max_segments", cap(limits.max_segments, max_u32)))
    return fail_clear<std::size_t>(out, encode_failure("BATCH", std::move(*e)));
  const std::size_t id_max = cap(limits.max_id_bytes, max_u16);
  const std::size_t payload_max = cap(limits.max_segment_bytes, max_u32);
  std::size_t total = batch_header_bytes;
  for (std::size_t i = 0; i < records.size(); ++i) {
    const segment_record& r = records[i];
    total += encoded_size(r);
    if (r.id.size() <= id_max && r.stream.size() <= id_max && r.payload.size() <= payload_max) continue;
    const std::string ctx = cat("BATCH record ", i);
    if (auto e = check_text(ctx, "id", r.id, 0, limits.max_id_bytes, "max_id_bytes", max_u16))
      return fail_clear<std::size_t>(out, std::move(*e), i);
    if (auto e = check_text(ctx, "stream", r.stream, 0, limits.max_id_bytes, "max_id_bytes", max_u16))
      return fail_clear<std::size_t>(out, std::move(*e), i);
    if (auto e = check_text(ctx, "payload", r.payload, 0, limits.max_segment_bytes, "max_segment_bytes", max_u32,
                            errc::segment_too_large))
      return fail_clear<std::size_t>(out, std::move(*e), i);
  }
  if (auto e = over("size", total, "max_message_bytes", limits.max_message_bytes))
    return fail_clear<std::size_t>(out, encode_failure("BATCH", std::move(*e)));

  out.clear();
  out.reserve(total);
  util::writer w(out);
  put_header(w, message_type::batch, relay_protocol_version);
  w.u8(0); // flags, set below if the records end up compressed
  w.u64(number);
  w.u32(static_cast<std::uint32_t>(records.size()));
  for (const segment_record& r : records) {
    put_text(w, 2, r.id);
    put_text(w, 2, r.stream);
    w.u64(std::bit_cast<std::uint64_t>(r.created_ms));
    w.u64(r.checksum);
    put_text(w, 4, r.payload);
  }
  if (encoding.algorithm != compression::zstd || records.empty()) return out.size();

  // Compress the records section; keep the result only if the message shrinks.
  const std::string_view section = std::string_view(out).substr(batch_header_bytes);
  thread_local std::string scratch;
  scratch.resize(ZSTD_compressBound(section.size()));
  const std::size_t csize = ZSTD_compressCCtx(thread_cctx(), scratch.data(), scratch.size(), section.data(),
                                              section.size(), encoding.zstd_level);
  if (!ZSTD_isError(csize) && csize + compressed_prefix_bytes < section.size()) {
    const std::size_t uncompressed = section.size();
    out.resize(batch_header_bytes);
    out[2] = static_cast<char>(flag_zstd);
    util::writer(out).u64(uncompressed);
    out.append(scratch.data(), csize);
  }
  if (scratch.capacity() > (8u << 20)) std::string().swap(scratch); // don't pin a huge buffer per thread
  return out.size();
}

std::size_t encode_error(wire_error code, std::string_view text, std::string& out) {
  if (text.size() > max_error_message_bytes) {
    std::size_t n = max_error_message_bytes;
    while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80)
      --n; // text[n] continues a character: cut before that character starts
    text = text.substr(0, n);
  }
  out.clear();
  util::writer w(out);
  put_header(w, message_type::error, relay_protocol_version);
  w.u16(static_cast<std::uint16_t>(code));
  put_text(w, 2, text);
  return out.size();
}

codec_result<hello_ack> negotiate(const hello& client, const server_offer& server) {
  static constexpr std::uint8_t ours[] = {relay_protocol_version};
  const std::span<const std::uint8_t> speaks =
      server.versions.empty() ? std::span<const std::uint8_t>(ours) : server.versions;
  std::uint8_t best = 0;
  for (std::uint8_t v : client.versions)
    if (v > best && std::find(speaks.begin(), speaks.end(), v) != speaks.end()) best = v;
  if (best == 0) {
    auto list = [](std::span<const std::uint8_t> vs) {
      std::string s;
      for (std::uint8_t v : vs)
        s += (s.empty() ? "" : ", ") + std::to_string(v);
      return s.empty() ? std::string("none") : s;
    };
    return make_error(codec_fault::unsupported_version,
                      cat("HELLO: no common protocol version: the client offers ", list(client.versions),
                          ", the server speaks ", list(speaks)));
  }

  hello_ack a;
  a.version = best;
  a.node_id = server.node_id;
  a.compression = compression_none;
  for (std::string_view c : client.compressions) {
    if (c == compression_none) break; // the client prefers no compression to what follows
    if (std::find(server.compressions.begin(), server.compressions.end(), c) != server.compressions.end()) {
      a.compression = c;
      break;
    }
  }
  a.window = std::min(client.max_window, server.window);
  a.max_batch_bytes = std::min(client.max_batch_bytes, server.max_batch_bytes);
  a.dedupe_window_ms = server.dedupe_window_ms;
  return a;
}

codec_result<session_terms> accept_hello_ack(const hello& sent, const hello_ack& received) {
  if (std::find(sent.versions.begin(), sent.versions.end(), received.version) == sent.versions.end())
    return make_error(codec_fault::unsupported_version, cat("HELLO_ACK: the server chose protocol version ",
                                                            received.version, ", which the client did not offer"));
  session_terms t;
  t.version = received.version;
  if (received.compression == compression_none) {
    t.algorithm = compression::none;
  } else if (std::find(sent.compressions.begin(), sent.compressions.end(), received.compression) ==
             sent.compressions.end()) {
    return make_error(codec_fault::bad_value, cat("HELLO_ACK: the server chose compression ",
                                                  quoted(received.compression), ", which the client did not offer"));
  } else if (received.compression == compression_zstd) {
    t.algorithm = compression::zstd;
  } else {
    return make_error(codec_fault::bad_value, cat("HELLO_ACK: compression ", quoted(received.compression),
                                                  " is not implemented by this build"));
  }
  t.window = std::min(sent.max_window, received.window);
  t.max_batch_bytes = std::min(sent.max_batch_bytes, received.max_batch_bytes);
  t.dedupe_window_ms = received.dedupe_window_ms;
  return t;
}

} // namespace edgerelay::transport
