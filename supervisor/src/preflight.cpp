// One run of the preflight check: its start, its deadline, its exit and its outcome (see preflight.h).
#include "preflight.h"

#include <fcntl.h>
#include <signal.h>

#include <fmt/format.h>

#include <hotrestart/fd.h>

#include "log.h"
#include "output_lines.h"
#include "signals.h"

namespace hotrestart {
namespace {

// How long the outcome waits, after the check's main process exited, for its output to reach end
// of file: as for a generation (generation.cpp), the last lines are often still in the pipe when
// the exit is seen, and a process that escaped the group's SIGKILL cannot hold the verdict longer.
constexpr Millis kOutputGrace{200};

}  // namespace

std::string preflight_failure(const std::optional<ExitStatus>& status, bool timed_out, Millis timeout,
                              const std::string& start_error, const std::vector<std::string>& last_output) {
  std::string how;
  if (!start_error.empty()) {
    how = "could not start: " + start_error;
  } else if (status && !status->not_started.empty()) {
    how = "could not start: " + status->not_started;
  } else if (timed_out) {
    how =
        fmt::format("timed out after {}, --preflight-timeout; its process group was killed", format_duration(timeout));
  } else if (status && status->signal != 0) {
    how = fmt::format("killed by {}", signal_name(status->signal));
  } else {
    how = fmt::format("exit status {}", status ? status->code : -1);
  }
  const std::string lines = last_lines_text(last_output);
  return fmt::format("preflight failed ({}){}", how, lines.empty() ? std::string(" with no output") : ": " + lines);
}

std::unique_ptr<PreflightCheck> PreflightCheck::start(const Context& context, const std::string& check,
                                                      std::vector<std::string> env, Done done, const std::string& cwd) {
  std::unique_ptr<PreflightCheck> c(new PreflightCheck(context, check, std::move(done)));
  auto pipe = WorkerOutput::open_pipe();
  if (!pipe) {
    c->fail_to_start(pipe.error().text());
    return c;
  }
  const Fd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (!null) {
    c->fail_to_start(Error::from_errno("open /dev/null").text());
    return c;
  }
  SpawnRequest request{"/bin/sh", {"/bin/sh", "-c", check}, std::move(env), {}, ListenPid::Omit};
  request.stdin_fd = null.get();
  request.stdout_fd = pipe->second.get();
  request.stderr_fd = pipe->second.get();
  request.cwd = cwd;
  // Not waited for: an exec that fails (or a working directory that is gone) comes back with the
  // check's exit.
  PendingExec exec;
  auto pid = start_process(request, exec);
  if (!pid) {
    c->fail_to_start(pid.error().text());
    return c;
  }
  // The check's copies are the only write ends left: the pipe ends when it (and whatever it
  // started) has exited or closed them.
  pipe->second.reset();
  c->pid_ = pid.value();
  c->process_ = ChildProcess(pid.value());
  c->output_ = std::make_unique<WorkerOutput>(context.loop, std::move(pipe->first),
                                              fmt::format("{} (pid {})", context.label, c->pid_),
                                              RelaySource{context.label, c->pid_, std::nullopt});
  context.reaper.watch(
      c->pid_,
      [self = c->self_](pid_t, ExitStatus status) {
        if (PreflightCheck* running = *self) running->on_exit(status);
      },
      std::move(exec));
  PreflightCheck* raw = c.get();
  c->deadline_.start(context.timeout, [raw] {
    raw->timed_out_ = true;
    log_warn("{} (pid {}) did not finish within {} ({}); killing its process group", raw->context_.label, raw->pid_,
             format_duration(raw->context_.timeout), raw->context_.timeout_flag);
    raw->process_.signal_group(SIGKILL);
  });
  log_info("{} started: pid {}: {}", context.label, c->pid_, check);
  return c;
}

PreflightCheck::PreflightCheck(const Context& context, std::string check, Done done)
    : context_(context),
      check_(std::move(check)),
      done_(std::move(done)),
      deadline_(context.loop),
      not_started_(context.loop) {}

PreflightCheck::~PreflightCheck() {
  *self_ = nullptr;
  // Still running: it goes with the upgrade it was checking. The reaper collects it.
  if (process_) process_.signal_group(SIGKILL);
}

void PreflightCheck::fail_to_start(std::string error) {
  log_warn("preflight could not start: {}", error);
  not_started_.start(Millis{0}, [this, error = std::move(error)] {
    report({false, preflight_failure(std::nullopt, false, context_.timeout, error, {}), {}, Millis{0}});
  });
}

void PreflightCheck::on_exit(ExitStatus status) {
  // Whatever it left running goes with it. Its main process is not reaped until this returns, so
  // the group is still its own.
  process_.signal_group(SIGKILL);
  process_ = ChildProcess();
  deadline_.stop();
  output_->when_ended(kOutputGrace, [this, status] {
    const auto lines = output_->tail().lines();
    const bool passed = status.success() && !timed_out_;
    report({passed, passed ? std::string() : preflight_failure(status, timed_out_, context_.timeout, {}, lines), lines,
            std::chrono::duration_cast<Millis>(Clock::now() - started_)});
  });
}

void PreflightCheck::report(PreflightOutcome outcome) {
  if (!done_) return;
  const Done done = std::move(done_);
  done_ = nullptr;
  done(std::move(outcome));  // Last: it may destroy this object.
}

}  // namespace hotrestart
