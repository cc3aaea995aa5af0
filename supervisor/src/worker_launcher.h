// WorkerLauncher: how a worker process is started.
//
// Its environment is the base one (worker_environment.h: the supervisor's own unless --clear-env,
// less every variable that names a worker's resources, then --env-file and --env), plus this
// generation's: PWD (the workers' directory, --chdir, where it starts), LISTEN_FDS and LISTEN_FDNAMES for
// the listeners at fd 3.., NOTIFY_SOCKET, HOTRESTART_GENERATION, HOTRESTART_CONTROL and
// HOTRESTART_CHANNEL_FD (the channel, right after the listeners), and with --adopt-binds the preload
// library first in LD_PRELOAD and the generation's command page right after the channel
// (HOTRESTART_ADOPT_PAGE_FD). spawn_process sets LISTEN_PID to the child's own pid. Its stderr is
// a pipe whose read end the supervisor keeps (worker_output.h); stdin and stdout are the
// supervisor's. The executable is resolved and opened (ExecutableImage) before anything is forked,
// so that a command that cannot run fails with a sentence rather than an exit status, and a
// compiled program runs from the very file that was opened and hashed.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>

#include "adopt.h"
#include "duration.h"
#include "executable.h"
#include "listener_set.h"
#include "spawn.h"

namespace hotrestart {

class WorkerLauncher {
 public:
  // `adopt_library`: the preload library's absolute path with --adopt-binds, else empty.
  // The supervisor's environment is read now, for the base environment until set_environment.
  WorkerLauncher(const ListenerSet& listeners, std::string notify_path, std::string control_path,
                 std::string adopt_library);

  struct Launched {
    ChildProcess process;
    Fd channel;            // The supervisor's end; the worker's end lives on in the worker only.
    Fd output;             // The read end of the worker's stderr, non-blocking.
    AdoptPage adopt_page;  // With --adopt-binds: the generation's command page.
    PendingExec exec;      // Whether it became the program: the launch does not wait for that.
  };
  // The executable `command` names, found as exec would in the workers' PATH.
  Result<std::string> resolve(const std::vector<std::string>& command) const;
  // Starts generation `generation` running `command` from `image` (see ExecutableImage).
  Result<Launched> launch(std::uint64_t generation, const std::vector<std::string>& command,
                          const ExecutableImage& image) const;

  // The environment every process of a generation starts from (base_worker_environment), and the
  // directory it starts in (empty: the supervisor's own).
  void set_environment(std::vector<std::string> base_env) { base_env_ = std::move(base_env); }
  void set_workdir(std::string dir) { workdir_ = std::move(dir); }
  const std::string& workdir() const { return workdir_; }

  // --watchdog: workers get WATCHDOG_USEC (0: none).
  void set_watchdog(Millis every) { watchdog_ = every; }
  // Where an SDK worker whose supervisor died connects again (HOTRESTART_REJOIN): the socket that
  // the supervisor taking over listens on.
  void set_rejoin_path(std::string path) { rejoin_path_ = std::move(path); }

  // The environment of an exec readiness probe aimed at the worker `pid` of `generation`.
  std::vector<std::string> probe_environment(pid_t pid, std::uint64_t generation) const;
  // The environment of the preflight check (preflight.h) of release `release`, which would run
  // `command` from `executable`: HOTRESTART_COMMAND (shell-quoted), HOTRESTART_EXECUTABLE and
  // HOTRESTART_RELEASE beside the supervisor's own, as a probe's.
  std::vector<std::string> preflight_environment(const std::vector<std::string>& command, const std::string& executable,
                                                 std::uint64_t release) const;

  bool adopting() const { return !adopt_library_.empty(); }
  // --no-http-drain turns the preload library's HTTP drain off.
  void set_http_drain(bool on) { http_drain_ = on; }
  bool http_drain() const { return adopting() && http_drain_; }
  // The descriptor a generation holds its command page at, as a worker (for a takeover to find it).
  int adopt_page_fd() const { return 4 + static_cast<int>(listeners_.listeners().size()); }
  const std::string& notify_path() const { return notify_path_; }

 private:
  std::vector<std::string> worker_environment(std::uint64_t generation) const;
  // The base environment with PWD, as every process of a generation has it.
  std::vector<std::string> common_environment() const;

  const ListenerSet& listeners_;
  std::string notify_path_;
  std::string control_path_;
  std::string adopt_library_;
  Millis watchdog_{0};
  bool http_drain_ = true;
  std::string rejoin_path_;
  std::vector<std::string> base_env_;
  std::string workdir_;
};

}  // namespace hotrestart
