#pragma once
// Text helpers shared by error messages and wire formats.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace edgerelay::util {

// Quotes text for a message: escapes quotes, backslashes and control bytes,
// and cuts text longer than `limit` bytes (on a UTF-8 boundary, marked "...")
// so the message stays one readable line.
std::string quote(std::string_view s, std::size_t limit = 64);

// Standard base64 with padding (RFC 4648 §4).
std::string base64(std::string_view in);

// %XX escapes decoded (and "+" as a space when `plus_is_space`: a query
// string). Nothing when an escape is not two hex digits or is %00.
std::optional<std::string> percent_decode(std::string_view in, bool plus_is_space = false);
// Every byte but RFC 3986's unreserved ones (A-Z a-z 0-9 - . _ ~) as %XX.
std::string percent_encode(std::string_view in);

} // namespace edgerelay::util
