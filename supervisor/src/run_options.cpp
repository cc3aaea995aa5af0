// `hotrestart run`'s options: --ready and the control socket's default place (see run_options.h).
#include "run_options.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>

#include <fmt/format.h>

namespace hotrestart {

std::string ReadyMode::describe() const {
  switch (kind) {
    case Kind::Notify:
      return "notify";
    case Kind::Exec:
      return "exec:" + command;
    case Kind::Delay:
      return "delay:" + format_duration(delay);
  }
  return "?";
}

Result<ReadyMode> parse_ready_mode(std::string_view text) {
  ReadyMode mode;
  if (text == "notify") return mode;
  if (text.starts_with("exec:")) {
    mode.kind = ReadyMode::Kind::Exec;
    mode.command = std::string(text.substr(5));
    if (mode.command.empty()) return Error::message("--ready exec: needs a command, like exec:'curl -fs http://...'");
    return mode;
  }
  if (text.starts_with("delay:")) {
    auto d = parse_duration(text.substr(6));
    if (!d) return d.error().context("--ready delay");
    mode.kind = ReadyMode::Kind::Delay;
    mode.delay = d.value();
    return mode;
  }
  return Error::message(fmt::format("invalid --ready '{}' (expected notify, exec:COMMAND or delay:DURATION)", text));
}

Result<std::string> parse_health_command(std::string_view text) {
  if (!text.starts_with("exec:")) {
    return Error::message(fmt::format("invalid --health '{}' (expected exec:COMMAND)", text));
  }
  std::string command(text.substr(5));
  if (command.empty()) return Error::message("--health exec: needs a command, like exec:'curl -fs http://...'");
  return command;
}

std::string HealthCheck::describe() const {
  if (command.empty()) return "none";
  return fmt::format("exec:{} every {}, {} failures in a row", command, format_duration(interval), failures);
}

namespace {

// True when `command` names `port` after a colon, not followed by another digit: ":8080" in
// "curl http://127.0.0.1:8080/health", but not in ":80801".
bool names_port(std::string_view command, std::uint16_t port) {
  const std::string needle = fmt::format(":{}", port);
  for (auto at = command.find(needle); at != std::string_view::npos; at = command.find(needle, at + 1)) {
    const auto end = at + needle.size();
    if (end == command.size() || command[end] < '0' || command[end] > '9') return true;
  }
  return false;
}

}  // namespace

std::vector<std::string> shared_port_probe_warnings(const RunOptions& options) {
  std::vector<std::string> warnings;
  const auto check = [&](std::string_view flag, const std::string& command) {
    for (const auto& l : options.listen) {
      const bool shared = l.kind == ListenSpec::Kind::Tcp
                              ? l.port != 0 && names_port(command, l.port)
                              : !l.path.empty() && command.find(l.path) != std::string::npos;
      if (!shared) continue;
      warnings.push_back(fmt::format(
          "{} exec:{} looks aimed at {}, which the supervisor shares between generations: it may reach the old "
          "generation and pass while the new one does not serve. Aim it at the worker itself (a port or path of "
          "its own, or $HOTRESTART_PID); see `--ready` in docs/operations.md",
          flag, command, l.text));
      return;
    }
  };
  if (options.ready.kind == ReadyMode::Kind::Exec) check("--ready", options.ready.command);
  if (!options.health.command.empty()) check("--health", options.health.command);
  return warnings;
}

std::string absolute_path(const std::string& base, const std::string& path) {
  if (path.empty() || path.front() == '/') return path;
  std::string_view rest(path);
  while (rest.starts_with("./")) {
    rest.remove_prefix(2);
    while (rest.starts_with('/'))
      rest.remove_prefix(1);
  }
  if (rest.empty() || rest == ".") return base;
  return base.ends_with('/') ? base + std::string(rest) : base + "/" + std::string(rest);
}

std::string run_directory(bool after_self_upgrade) {
  if (after_self_upgrade) {
    const char* dir = std::getenv(kRunDirectoryVariable);
    if (dir != nullptr && dir[0] == '/') return dir;
  }
  char cwd[4096];
  if (::getcwd(cwd, sizeof cwd) == nullptr || cwd[0] != '/') return {};
  return cwd;
}

namespace {

// $RUNTIME_DIRECTORY's first directory (systemd's RuntimeDirectory=; it separates several with
// ':'), or "".
std::string systemd_runtime_dir() {
  const char* dirs = std::getenv("RUNTIME_DIRECTORY");
  if (dirs == nullptr || dirs[0] != '/') return {};
  const std::string_view all(dirs);
  return std::string(all.substr(0, all.find(':')));
}

std::string user_control_path(const std::string& name) {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && xdg[0] == '/') return fmt::format("{}/hotrestart/{}.sock", xdg, name);
  return fmt::format("/tmp/hotrestart-{}/{}.sock", ::geteuid(), name);
}

bool is_socket(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

}  // namespace

std::string default_control_path(const std::string& name) {
  if (const std::string dir = systemd_runtime_dir(); !dir.empty()) return fmt::format("{}/{}.sock", dir, name);
  if (::geteuid() == 0) return fmt::format("{}/{}.sock", kSystemRuntimeDir, name);
  return user_control_path(name);
}

std::string find_control_path(const std::string& name) {
  std::vector<std::string> places;
  if (const std::string dir = systemd_runtime_dir(); !dir.empty())
    places.push_back(fmt::format("{}/{}.sock", dir, name));
  const std::string system = fmt::format("{}/{}.sock", kSystemRuntimeDir, name);
  // Root looks where a supervisor run by root (or by a service with RuntimeDirectory=hotrestart)
  // puts it first; another user looks at its own places first.
  if (::geteuid() == 0) places.push_back(system);
  places.push_back(user_control_path(name));
  if (::geteuid() != 0) places.push_back(system);
  for (const std::string& p : places)
    if (is_socket(p)) return p;
  return default_control_path(name);
}

Status prepare_runtime_dir(const std::string& socket_path) {
  const auto slash = socket_path.rfind('/');
  if (slash == std::string::npos || slash == 0) return {};
  const std::string dir = socket_path.substr(0, slash);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return Error::from_errno(fmt::format("mkdir {}", dir));
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return Error::from_errno(fmt::format("stat {}", dir));
  if (!S_ISDIR(st.st_mode)) return Error::message(fmt::format("{} is not a directory", dir));
  return {};
}

}  // namespace hotrestart
