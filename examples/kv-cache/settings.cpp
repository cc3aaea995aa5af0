// kv-cache's configuration (see settings.h).
#include "settings.h"

#include <charconv>

namespace kv {
namespace {

hotrestart::ConfigError at(int line, const std::string& what) {
  return {"line " + std::to_string(line) + ": " + what};
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

}  // namespace

hotrestart::Parsed<Settings> parse_settings(std::string_view text) {
  Settings settings;
  int number = 0;
  while (!text.empty()) {
    ++number;
    const auto end = text.find('\n');
    const std::string_view raw = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view{} : text.substr(end + 1);
    for (char c : raw)
      if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\r') return at(number, "not text");
    const std::string_view line = trim(raw);
    if (line.empty() || line.front() == '#') continue;
    const auto space = line.find_first_of(" \t");
    const std::string_view name = line.substr(0, space);
    const std::string_view value = space == std::string_view::npos ? std::string_view{} : trim(line.substr(space));
    if (name == "block") {
      if (value.empty()) return at(number, "block: give a key prefix");
      if (value.find_first_of(" \t") != std::string_view::npos)
        return at(number, "block: a key prefix has no spaces; give one per line");
      settings.blocked.emplace_back(value);
    } else if (name == "max-value-bytes") {
      std::uint64_t n = 0;
      const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (value.empty() || ec != std::errc() || ptr != value.data() + value.size())
        return at(number, "max-value-bytes: '" + std::string(value) + "' is not a number of bytes");
      if (n > 1024 * 1024) return at(number, "max-value-bytes: at most 1048576 (the request limit)");
      settings.max_value_bytes = n;
    } else {
      return at(number, "unknown setting '" + std::string(name) + "' (expected block or max-value-bytes)");
    }
  }
  return settings;
}

std::string_view blocked_by(const Settings& settings, std::string_view key) {
  for (const auto& prefix : settings.blocked)
    if (key.starts_with(prefix)) return prefix;
  return {};
}

}  // namespace kv
