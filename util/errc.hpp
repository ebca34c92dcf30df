#pragma once
// The project's error codes, registered with boost::system so they travel in
// error_code and boost::system::result<T>. Each code belongs to a class that
// tells the caller what to do (retry now, retry later, fix state, give up).

#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>
#include <string>

namespace edgerelay {

enum class errc {
  ok = 0,
  // give up: the input is wrong and retrying cannot help
  invalid_argument = 1,
  segment_too_large,
  bad_stream_name,
  checksum_mismatch,
  malformed,
  // retry later: a resource is exhausted for now
  queue_full,
  store_full,
  timeout,
  // fix state first: the environment is not usable as it is
  store_corrupt,
  store_foreign,
  store_io,
  store_closed,
  not_found,
  unknown_peer,
};

enum class error_class { retry_now, retry_later, fix_state, give_up };

const boost::system::error_category& error_category() noexcept;
error_class classify(const boost::system::error_code& ec) noexcept;
const char* to_string(error_class c) noexcept;

inline boost::system::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), error_category()}; }

template <class T>
using result = boost::system::result<T>;

// An error code plus the human sentence that explains it (what, where, why).
struct error {
  boost::system::error_code code;
  std::string message;
};

} // namespace edgerelay

template <>
struct boost::system::is_error_code_enum<edgerelay::errc> : std::true_type {};
