// --env, --env-file and --clear-env: the layers of a generation's environment (worker_environment.h).
#include "worker_environment.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <map>

#include <fmt/format.h>

#include <hotrestart/fd.h>

extern char** environ;

namespace hotrestart {
namespace {

bool is_blank(char c) {
  return c == ' ' || c == '\t';
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_blank(s.front()))
    s.remove_prefix(1);
  while (!s.empty() && is_blank(s.back()))
    s.remove_suffix(1);
  return s;
}

// Why `name` cannot be set by an operator, or "" when it can.
std::string name_problem(std::string_view name) {
  if (!valid_variable_name(name))
    return fmt::format("'{}' is not a valid variable name (letters, digits and '_', not starting with a digit)", name);
  if (is_reserved_variable(name))
    return fmt::format("{} is set by the supervisor for every worker and cannot be overridden", name);
  return {};
}

// The value of a line after its '=' (already trimmed), or why it cannot be read.
Result<std::string> parse_value(std::string_view raw) {
  if (raw.empty()) return std::string();
  const char quote = raw.front();
  if (quote != '\'' && quote != '"') {
    if (raw.back() == '\\')
      return Error::message("a line ending with '\\' would continue on the next one, which is not supported");
    return std::string(raw);
  }
  std::string value;
  std::size_t i = 1;
  bool closed = false;
  for (; i < raw.size(); ++i) {
    const char c = raw[i];
    if (c == quote) {
      closed = true;
      ++i;
      break;
    }
    if (quote == '"' && c == '\\') {
      if (i + 1 == raw.size()) break;
      value.push_back(raw[++i]);
      continue;
    }
    value.push_back(c);
  }
  if (!closed) return Error::message(fmt::format("the quote {} is not closed on this line", quote));
  if (!trim(raw.substr(i)).empty())
    return Error::message(fmt::format("'{}' follows the closing quote", trim(raw.substr(i))));
  return value;
}

}  // namespace

bool valid_variable_name(std::string_view name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    const bool digit = c >= '0' && c <= '9';
    if (!letter && !(digit && i > 0)) return false;
  }
  return true;
}

bool is_reserved_variable(std::string_view name) {
  for (std::string_view exact : {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                                 "WATCHDOG_PID", "FDSTORE", "PWD"}) {
    if (name == exact) return true;
  }
  return name.starts_with("HOTRESTART_");
}

Result<EnvAssignment> parse_env_flag(std::string_view text) {
  const auto eq = text.find('=');
  if (eq == std::string_view::npos) return Error::message(fmt::format("invalid --env '{}': expected NAME=VALUE", text));
  EnvAssignment a{std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)), "--env"};
  if (a.value.find('\0') != std::string::npos)
    return Error::message(fmt::format("invalid --env '{}': the value contains a NUL byte", text));
  if (const std::string why = name_problem(a.name); !why.empty())
    return Error::message(fmt::format("invalid --env '{}': {}", text, why));
  return a;
}

Result<std::vector<EnvAssignment>> parse_env_file(std::string_view text, const std::string& file) {
  std::vector<EnvAssignment> out;
  std::size_t number = 0;
  while (!text.empty()) {
    ++number;
    const auto end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text.remove_prefix(end == std::string_view::npos ? text.size() : end + 1);
    const auto bad = [&](std::string_view why) { return Error::message(fmt::format("{}:{}: {}", file, number, why)); };
    if (line.ends_with('\r')) line.remove_suffix(1);
    if (line.find('\0') != std::string_view::npos) return bad("the line contains a NUL byte");
    line = trim(line);
    if (line.empty() || line.front() == '#' || line.front() == ';') continue;
    const auto eq = line.find('=');
    if (eq == std::string_view::npos) return bad(fmt::format("expected NAME=VALUE, not '{}'", line));
    const std::string_view name = trim(line.substr(0, eq));
    if (const std::string why = name_problem(name); !why.empty()) return bad(why);
    auto value = parse_value(trim(line.substr(eq + 1)));
    if (!value) return bad(value.error().text());
    out.push_back({std::string(name), std::move(value).value(), fmt::format("{}:{}", file, number)});
  }
  return out;
}

Result<std::vector<EnvAssignment>> read_env_file(const std::string& path) {
  const Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return Error::from_errno(fmt::format("--env-file {}", path));
  std::string text;
  char buffer[65536];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno(fmt::format("--env-file {}: read", path));
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
    if (text.size() > kMaxEnvFileBytes)
      return Error::message(fmt::format("--env-file {}: larger than {} bytes", path, kMaxEnvFileBytes));
  }
  return parse_env_file(text, path);
}

Result<std::vector<std::string>> base_worker_environment(const EnvironmentFlags& flags,
                                                         const std::vector<std::string>& inherited) {
  // Name -> position in `order`, so that a variable keeps the place it was first set in.
  std::vector<std::pair<std::string, std::string>> order;
  std::map<std::string, std::size_t, std::less<>> where;
  const auto set = [&](std::string name, std::string value) {
    if (auto it = where.find(name); it != where.end()) {
      order[it->second].second = std::move(value);
      return;
    }
    where.emplace(name, order.size());
    order.emplace_back(std::move(name), std::move(value));
  };
  if (!flags.clear) {
    for (const std::string& entry : inherited) {
      const auto eq = entry.find('=');
      if (eq == std::string::npos || eq == 0) continue;
      const std::string_view name(entry.data(), eq);
      // The supervisor's own LISTEN_*, NOTIFY_SOCKET, WATCHDOG_*, HOTRESTART_* describe its own
      // resources (or its tests' hooks), not a worker's.
      if (is_reserved_variable(name)) continue;
      set(std::string(name), entry.substr(eq + 1));
    }
  }
  // Every file is read and checked before anything is applied: one bad line fails them all.
  std::vector<EnvAssignment> assignments;
  for (const std::string& file : flags.files) {
    auto lines = read_env_file(file);
    if (!lines) return lines.error();
    for (auto& a : lines.value())
      assignments.push_back(std::move(a));
  }
  for (const std::string& text : flags.assignments) {
    auto a = parse_env_flag(text);
    if (!a) return a.error();
    assignments.push_back(std::move(a).value());
  }
  for (auto& a : assignments)
    set(std::move(a.name), std::move(a.value));
  if (!where.contains("PATH")) set("PATH", kDefaultWorkerPath);
  std::vector<std::string> env;
  env.reserve(order.size());
  for (auto& [name, value] : order)
    env.push_back(name + "=" + value);
  return env;
}

std::vector<std::string> own_environment() {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e)
    env.emplace_back(*e);
  return env;
}

}  // namespace hotrestart
