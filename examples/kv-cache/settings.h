// kv-cache's configuration (`hotrestart run --config kv-cache=PATH`, or --config-file by hand): what
// clients may reach, swapped whole by a reload while requests read it without a lock.
//
//   # Keys under a blocked prefix are refused (403) for reads and writes alike.
//   block private/
//   block tmp-
//   # The largest value a PUT may store (at most 1 MiB, the request limit).
//   max-value-bytes 65536
//
// Blank lines and lines starting with '#' are ignored; anything else is refused with its line.
#pragma once

#include <hotrestart/config.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kv {

struct Settings {
  std::vector<std::string> blocked;  // Key prefixes.
  std::uint64_t max_value_bytes = 1024 * 1024;
};

inline constexpr std::string_view kConfigName = "kv-cache";

hotrestart::Parsed<Settings> parse_settings(std::string_view text);
// The blocked prefix `key` starts with, or "".
std::string_view blocked_by(const Settings& settings, std::string_view key);

}  // namespace kv
