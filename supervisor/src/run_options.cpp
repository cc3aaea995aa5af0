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

std::string default_control_path(const std::string& name) {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && xdg[0] == '/') return fmt::format("{}/hotrestart/{}.sock", xdg, name);
  return fmt::format("/tmp/hotrestart-{}/{}.sock", ::geteuid(), name);
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
