// A worker's environment, descriptors and exec (see worker_launcher.h).
#include "worker_launcher.h"

#include <sys/socket.h>

#include <algorithm>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include <hotrestart/base/text.h>
#include <hotrestart/wire/channel.h>

#include "../adopt/adopt_page.h"
#include "adopt.h"
#include "worker_environment.h"
#include "worker_output.h"

namespace hotrestart {
WorkerLauncher::WorkerLauncher(const ListenerSet& listeners, std::string notify_path, std::string control_path,
                               std::string adopt_library)
    : listeners_(listeners),
      notify_path_(std::move(notify_path)),
      control_path_(std::move(control_path)),
      adopt_library_(std::move(adopt_library)) {
  // With no flags, reading cannot fail: no file is read and nothing is parsed.
  if (auto env = base_worker_environment({}, own_environment())) base_env_ = std::move(env).value();
}

std::vector<std::string> WorkerLauncher::common_environment() const {
  std::vector<std::string> env = base_env_;
  // As a shell would have it, so that $PWD names where the process is (never the supervisor's).
  if (!workdir_.empty()) env.push_back("PWD=" + workdir_);
  return env;
}

std::vector<std::string> WorkerLauncher::worker_environment(std::uint64_t generation) const {
  std::vector<std::string> env = common_environment();
  env.push_back(fmt::format("LISTEN_FDS={}", listeners_.listeners().size()));
  env.push_back(fmt::format("LISTEN_FDNAMES={}", listeners_.fdnames()));
  env.push_back(fmt::format("NOTIFY_SOCKET={}", notify_path_));
  env.push_back(fmt::format("HOTRESTART_GENERATION={}", generation));
  env.push_back(fmt::format("HOTRESTART_CONTROL={}", control_path_));
  if (!rejoin_path_.empty()) env.push_back("HOTRESTART_REJOIN=" + rejoin_path_);
  // The channel comes right after the listeners (see launch).
  env.push_back(fmt::format("HOTRESTART_CHANNEL_FD={}", 3 + listeners_.listeners().size()));
  // As systemd's WatchdogSec= does, so that sd_watchdog_enabled() and its like find it.
  if (watchdog_.count() > 0) env.push_back(fmt::format("WATCHDOG_USEC={}", watchdog_.count() * 1000));
  if (adopting()) {
    // First in LD_PRELOAD, before whatever the operator preloads as well.
    std::string preload = adopt_library_;
    for (auto& e : env) {
      if (e.starts_with("LD_PRELOAD=") && e.size() > 11) {
        preload += ":" + e.substr(11);
        e.clear();
      }
    }
    std::erase(env, std::string());
    env.push_back("LD_PRELOAD=" + preload);
    // The command page comes right after the channel (see launch).
    env.push_back(fmt::format("{}={}", HR_ADOPT_PAGE_ENV, adopt_page_fd()));
  }
  return env;
}

std::vector<std::string> WorkerLauncher::probe_environment(pid_t pid, std::uint64_t generation) const {
  std::vector<std::string> env = common_environment();
  env.push_back(fmt::format("HOTRESTART_PID={}", pid));
  env.push_back(fmt::format("HOTRESTART_GENERATION={}", generation));
  return env;
}

std::vector<std::string> WorkerLauncher::preflight_environment(const std::vector<std::string>& command,
                                                               const std::string& executable,
                                                               std::uint64_t release) const {
  std::vector<std::string> env = common_environment();
  env.push_back("HOTRESTART_COMMAND=" + shell_words(command));
  env.push_back("HOTRESTART_EXECUTABLE=" + executable);
  env.push_back(fmt::format("HOTRESTART_RELEASE={}", release));
  return env;
}

Result<std::string> WorkerLauncher::resolve(const std::vector<std::string>& command) const {
  std::string path_env = kDefaultWorkerPath;
  for (const auto& e : base_env_) {
    if (e.starts_with("PATH=")) path_env = e.substr(5);
  }
  auto executable = resolve_executable(command.front(), path_env);
  if (!executable) return executable.error().context("cannot start the worker");
  return executable;
}

Result<WorkerLauncher::Launched> WorkerLauncher::launch(std::uint64_t generation,
                                                        const std::vector<std::string>& command,
                                                        const ExecutableImage& image) const {
  const bool from_fd = image.kind() == ExecutableImage::Kind::Program;
  if (adopting()) {
    // The file that will run: the open one for a program (its path may hold another by now).
    const std::string file = from_fd ? fmt::format("/proc/self/fd/{}", image.fd()) : image.path();
    if (auto ok = check_preloadable(file, image.path()); !ok) return ok.error().context("cannot start the worker");
  }
  auto env = worker_environment(generation);
  // Every worker gets a channel; a worker without the SDK never reads it. The supervisor's end
  // stays close-on-exec, so no other worker inherits it.
  auto channel = wire::seqpacket_pair();
  if (!channel) return channel.error().context("cannot start the worker: channel");
  // Each message the worker side sends then carries its sender's pid, set by the kernel: the channel
  // belongs to the main process alone (WorkerChannel). Set before the spawn, so that even the first
  // message carries it.
  const int on = 1;
  if (::setsockopt(channel->first.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof on) != 0)
    return Error::from_errno("cannot start the worker: channel: setsockopt SO_PASSCRED");
  auto output = WorkerOutput::open_pipe();
  if (!output) return output.error().context("cannot start the worker: stderr pipe");
  AdoptPage page;
  if (adopting()) {
    auto made = AdoptPage::create(http_drain_);
    if (!made) return made.error().context("cannot start the worker");
    page = std::move(made).value();
  }
  std::vector<int> fds;
  for (const auto& l : listeners_.listeners())
    fds.push_back(l.fd.get());
  fds.push_back(channel->second.get());
  if (page) fds.push_back(page.fd());
  SpawnRequest request{image.path(), command, std::move(env), std::move(fds), ListenPid::Set};
  request.stderr_fd = output->second.get();
  request.executable_fd = from_fd ? image.fd() : -1;
  request.cwd = workdir_;
  PendingExec exec;
  auto pid = start_process(request, exec);
  if (!pid) return pid.error().context("cannot start the worker");
  // The worker's ends live on in the worker only; the supervisor holding the pipe's write end
  // would keep it from ever reaching end of file.
  channel->second.reset();
  output->second.reset();
  page.close_fd();
  return Launched{ChildProcess(pid.value()), std::move(channel->first), std::move(output->first), std::move(page),
                  std::move(exec)};
}

}  // namespace hotrestart
