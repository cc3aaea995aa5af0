// examples-http: the text of HTTP messages that both example servers read and write: the request
// target's path and query, header names compared and values trimmed, percent-decoding, the check
// that a repeated value cannot split a response, and the reason phrase of a status line.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace examples::http {

// The parts of a request target the servers look at; each is empty when the target has none.
struct Target {
  std::string_view path;
  std::string_view query;
};
// Splits a request target with http_parser's URL parser; nothing if it does not parse. The views
// point into `url`.
std::optional<Target> parse_target(std::string_view url);

// Header names compare without regard to ASCII case.
bool iequals(std::string_view a, std::string_view b);
// A header value without the spaces and tabs around it.
std::string_view trim(std::string_view s);
// Decodes %XX escapes (any other byte stands for itself). Returns nothing for a bad escape.
std::optional<std::string> percent_decode(std::string_view s);
// A header value a server repeats must be printable ASCII, or it could split the response.
bool printable(std::string_view s);
// The reason phrase of the statuses the example servers answer with; "Error" for any other.
std::string_view reason_phrase(int status);

}  // namespace examples::http
