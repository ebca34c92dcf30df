#include "util/errc.hpp"

#include <cerrno>

namespace edgerelay {
namespace {

class category final : public boost::system::error_category {
public:
  const char* name() const noexcept override { return "edgerelay"; }
  std::string message(int ev) const override {
    switch (static_cast<errc>(ev)) {
    case errc::ok: return "ok";
    case errc::invalid_argument: return "invalid argument";
    case errc::segment_too_large: return "segment larger than max_segment_bytes";
    case errc::bad_stream_name: return "stream name must match [a-z0-9._-]{1,64}";
    case errc::checksum_mismatch: return "checksum mismatch";
    case errc::malformed: return "malformed input";
    case errc::queue_full: return "queue capacity reached";
    case errc::store_full: return "store map or disk full";
    case errc::timeout: return "timed out";
    case errc::store_corrupt: return "data directory is corrupt";
    case errc::store_foreign: return "data directory belongs to something else";
    case errc::store_io: return "store I/O error";
    case errc::store_closed: return "store is closed";
    case errc::not_found: return "not found";
    case errc::unknown_peer: return "unknown peer";
    }
    return "unknown edgerelay error";
  }
};

} // namespace

const boost::system::error_category& error_category() noexcept {
  static const category c;
  return c;
}

error_class classify(const boost::system::error_code& ec) noexcept {
  if (ec.category() == error_category()) {
    switch (static_cast<errc>(ec.value())) {
    case errc::queue_full:
    case errc::store_full:
    case errc::timeout: return error_class::retry_later;
    case errc::store_corrupt:
    case errc::store_foreign:
    case errc::store_io:
    case errc::store_closed: return error_class::fix_state;
    default: return error_class::give_up;
    }
  }
  if (ec == boost::system::errc::resource_unavailable_try_again || ec == boost::system::errc::interrupted)
    return error_class::retry_now;
  if (ec == boost::system::errc::no_space_on_device || ec == boost::system::errc::file_too_large)
    return error_class::retry_later;
  return error_class::retry_later;
}

const char* to_string(error_class c) noexcept {
  switch (c) {
  case error_class::retry_now: return "retry_now";
  case error_class::retry_later: return "retry_later";
  case error_class::fix_state: return "fix_state";
  case error_class::give_up: return "give_up";
  }
  return "unknown";
}

} // namespace edgerelay
