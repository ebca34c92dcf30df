#pragma once
// Lets Catch2 print boost::system::result in assertions: "value" or the error.

#include <boost/system/result.hpp>
#include <catch2/catch.hpp>

namespace Catch {
template <class T, class E>
struct StringMaker<boost::system::result<T, E>> {
  static std::string convert(const boost::system::result<T, E>& r) {
    if (r) return "result(value)";
    if constexpr (std::is_same_v<E, boost::system::error_code>)
      return "result(error: " + r.error().message() + ")";
    else
      return "result(error)";
  }
};
} // namespace Catch
