// Upgrading the supervisor in place (self_upgrade.h).
#include "self_upgrade.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <thread>

#include <fmt/core.h>

#include <hotrestart/fd.h>
#include <hotrestart/wire/message.h>

#include "guard_protocol.h"
#include "spawn.h"

extern char** environ;

namespace hotrestart {

namespace {

constexpr std::chrono::milliseconds kCheckTimeout{5'000};

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings)
    out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

// This process's environment without kSelfUpgradeFrom and kSelfUpgradeFailed, plus `extra`.
std::vector<std::string> environment_with(const std::vector<std::string>& extra) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string_view entry(*e);
    if (entry.starts_with(std::string(kSelfUpgradeFrom) + "=") ||
        entry.starts_with(std::string(kSelfUpgradeFailed) + "="))
      continue;
    env.emplace_back(entry);
  }
  env.insert(env.end(), extra.begin(), extra.end());
  return env;
}

}  // namespace

std::string self_check_line(const std::string& version) {
  return fmt::format("hotrestart {} guard-link {} worker-channel {}", version, kGuardProtocolVersion,
                     wire::kProtocolVersion);
}

Result<std::string> check_new_supervisor(const std::string& path) {
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Error::from_errno("pipe");
  Fd read_end(pipe_fds[0]);
  Fd write_end(pipe_fds[1]);
  std::vector<std::string> env = environment_with({});
  SpawnRequest request{path, {path, "__self-check"}, std::move(env), {}, ListenPid::Omit};
  request.stdout_fd = write_end.get();
  auto pid = spawn_process(request);
  write_end.reset();
  if (!pid) return Error::message(fmt::format("{} cannot run: {}", path, pid.error().text()));
  // It is this process's child: waited for here (the loop is not running), bounded.
  const auto deadline = std::chrono::steady_clock::now() + kCheckTimeout;
  int status = 0;
  pid_t done = 0;
  while ((done = ::waitpid(*pid, &status, WNOHANG)) == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  if (done == 0) {
    ::kill(*pid, SIGKILL);
    ::waitpid(*pid, &status, 0);
    return Error::message(
        fmt::format("{} __self-check did not answer within {} s", path, kCheckTimeout.count() / 1000));
  }
  char buffer[256] = {};
  (void)::fcntl(read_end.get(), F_SETFL, O_NONBLOCK);
  const ssize_t n = ::read(read_end.get(), buffer, sizeof buffer - 1);
  std::string line(buffer, n > 0 ? static_cast<std::size_t>(n) : 0);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r'))
    line.pop_back();
  const ExitStatus exit = ExitStatus::from_wait(status);
  if (!exit.success()) return Error::message(fmt::format("{} __self-check {}", path, exit.describe()));
  const std::string want = fmt::format(" guard-link {} ", kGuardProtocolVersion);
  if (!line.starts_with("hotrestart ") || line.find(want) == std::string::npos) {
    return Error::message(fmt::format(
        "{} is not a hotrestart that can take over from this one (it says '{}'; this one speaks guard link {})", path,
        line.substr(0, 120), kGuardProtocolVersion));
  }
  return line;
}

std::string own_executable() {
  char target[4096];
  const ssize_t n = ::readlink("/proc/self/exe", target, sizeof target - 1);
  if (n <= 0) return "/proc/self/exe";
  std::string path(target, static_cast<std::size_t>(n));
  constexpr std::string_view kDeleted = " (deleted)";
  if (path.ends_with(kDeleted)) path.resize(path.size() - kDeleted.size());
  return path;
}

Error exec_supervisor(const std::string& path, const std::vector<std::string>& argv,
                      const std::vector<std::string>& extra) {
  std::vector<std::string> args = argv;
  std::vector<std::string> env = environment_with(extra);
  auto arg_pointers = pointers(args);
  auto env_pointers = pointers(env);
  ::execve(path.c_str(), arg_pointers.data(), env_pointers.data());
  return Error::from_errno(fmt::format("exec {}", path));
}

Error roll_back_to(int old_exe, const std::vector<std::string>& argv, const std::string& why) {
  std::vector<std::string> args = argv;
  std::vector<std::string> env = environment_with({std::string(kSelfUpgradeFailed) + "=" + why});
  auto arg_pointers = pointers(args);
  auto env_pointers = pointers(env);
  ::execveat(old_exe, "", arg_pointers.data(), env_pointers.data(), AT_EMPTY_PATH);
  return Error::from_errno("exec the previous binary");
}

}  // namespace hotrestart
