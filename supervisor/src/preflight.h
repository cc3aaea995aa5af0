// PreflightCheck: one run of the operator's check (--preflight) before a release is spawned.
//
// The check is `/bin/sh -c CHECK` in a process group of its own (spawn_process), with the
// supervisor's environment and the release it vouches for (WorkerLauncher::preflight_environment:
// HOTRESTART_COMMAND, HOTRESTART_EXECUTABLE, HOTRESTART_RELEASE), stdin from /dev/null, and stdout
// and stderr into one pipe that a WorkerOutput reads on the loop: each line goes to the
// supervisor's stderr as "preflight[PID]: line", and the last ones are kept for the verdict. Nothing
// here blocks the loop: the reaper reports the exit, a timer bounds the run, and the supervisor
// answers status and serves meanwhile.
//
// The outcome is reported once, from the loop, after the check's main process has exited and its
// output has ended (end of file, or a short grace, since a process it started that left its group
// may hold the pipe): it passed when it exited 0. Whatever it left running in its process group is
// killed at its exit, as a generation's is. Past the timeout the whole group is killed with SIGKILL
// and the check fails with a reason that names the timeout. Destroying the object before the
// outcome (the supervisor stopping) kills the group too, and reports nothing.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "duration.h"
#include "reaper.h"
#include "spawn.h"
#include "uv_handles.h"
#include "worker_output.h"

namespace hotrestart {

struct PreflightOutcome {
  bool passed = false;
  // Why it failed: "preflight failed (exit status 1): <its last lines>"; empty when it passed.
  std::string reason;
  std::vector<std::string> last_output;  // Its output's tail, oldest line first.
  Millis took{0};
};

// The reason of a failed check: how it ended (its exit status or signal, or the timeout, or
// `start_error` when it could not be started at all) and its newest lines (output_lines.h).
std::string preflight_failure(const std::optional<ExitStatus>& status, bool timed_out, Millis timeout,
                              const std::string& start_error, const std::vector<std::string>& last_output);

class PreflightCheck {
 public:
  using Clock = std::chrono::steady_clock;
  using Done = std::function<void(PreflightOutcome)>;

  struct Context {
    uv_loop_t* loop;
    Reaper& reaper;
    Millis timeout;  // --preflight-timeout.
    // What the log calls it ("preflight", or "config-check" for run --config-check), and the flag
    // that bounds it.
    std::string label = "preflight";
    std::string timeout_flag = "--preflight-timeout";
  };

  // Starts `check` with the environment `env`, in the directory `cwd` (empty: the supervisor's). `done` runs once, from
  // the loop (never before this returns), and may destroy this object. A check that cannot even be started (a pipe,
  // fork) fails the same way.
  static std::unique_ptr<PreflightCheck> start(const Context& context, const std::string& check,
                                               std::vector<std::string> env, Done done, const std::string& cwd = {});
  ~PreflightCheck();
  PreflightCheck(const PreflightCheck&) = delete;
  PreflightCheck& operator=(const PreflightCheck&) = delete;

  // The shell's pid (the process group's id), or 0 when it could not be started.
  pid_t pid() const { return pid_; }
  const std::string& check() const { return check_; }

 private:
  PreflightCheck(const Context& context, std::string check, Done done);

  void fail_to_start(std::string error);
  void on_exit(ExitStatus status);
  void report(PreflightOutcome outcome);

  Context context_;
  const std::string check_;
  Done done_;
  Clock::time_point started_ = Clock::now();
  pid_t pid_ = 0;
  ChildProcess process_;  // Empty once its main process has exited: its group is no longer signalled.
  std::unique_ptr<WorkerOutput> output_;
  Timer deadline_;     // --preflight-timeout.
  Timer not_started_;  // Reports a check that could not be started, from the loop.
  bool timed_out_ = false;

  // The reaper's callback can outlive the check (a stop destroys it first); it holds this and finds
  // it null then.
  std::shared_ptr<PreflightCheck*> self_ = std::make_shared<PreflightCheck*>(this);
};

}  // namespace hotrestart
