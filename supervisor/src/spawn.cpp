// Starting processes (fork and exec, the exec-error pipe) and signalling them (see spawn.h).
#include "spawn.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include <hotrestart/fd.h>
#include "log.h"
#include "signals.h"

namespace hotrestart {

// What the child was doing when it failed, so that the error names the step (an fd limit hit while
// placing descriptors is not an exec failure).
enum class ChildStep : int { ProcessGroup = 1, Descriptors = 2, Exec = 3, Directory = 4 };
struct ChildFailure {
  int step;
  int err;
};

namespace {

// Writes `value` in decimal into `out`, which has room for 24 characters; only
// async-signal-safe work, because it runs between fork and exec.
void write_decimal(char* out, long value) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + value % 10);
    value /= 10;
  } while (value > 0 && n < 23);
  for (int i = 0; i < n; ++i)
    out[i] = digits[n - 1 - i];
  out[n] = '\0';
}

// The soft RLIMIT_NOFILE the supervisor started with (raise_fd_limit), which its children get
// back; zero until it is raised.
rlim_t g_original_fd_limit = 0;

[[noreturn]] void child_fail(int error_fd, ChildStep step, int err) {
  const ChildFailure failure{static_cast<int>(step), err};
  const ssize_t ignored = ::write(error_fd, &failure, sizeof failure);
  (void)ignored;
  ::_exit(127);
}

// The child's side of spawn_process, between fork and exec: async-signal-safe calls only.
// `lifted` has room for one descriptor per passed one: it is allocated before the fork, as nothing
// may be allocated after it.
[[noreturn]] void exec_in_child(const SpawnRequest& request, int first_free, int error_fd, char* const* argv,
                                char* const* envp, char* listen_pid, int* lifted) {
  // Signal dispositions: handlers vanish at exec anyway, but ignored signals (SIGPIPE)
  // would stay ignored in the worker.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig != SIGKILL && sig != SIGSTOP) ::sigaction(sig, &dfl, nullptr);
  }
  if (::setpgid(0, 0) != 0) child_fail(error_fd, ChildStep::ProcessGroup, errno);
  if (!request.cwd.empty() && ::chdir(request.cwd.c_str()) != 0) child_fail(error_fd, ChildStep::Directory, errno);
  // Two passes, so that a source fd inside 0..first_free-1 is never overwritten before
  // it is copied: first lift every source (the standard streams' too) above the range, then place
  // each one.
  const std::size_t n = request.pass_fds.size();
  for (std::size_t i = 0; i < n; ++i) {
    lifted[i] = ::fcntl(request.pass_fds[i], F_DUPFD_CLOEXEC, first_free);
    if (lifted[i] < 0) child_fail(error_fd, ChildStep::Descriptors, errno);
  }
  const int stdio[3] = {request.stdin_fd, request.stdout_fd, request.stderr_fd};
  int lifted_stdio[3] = {-1, -1, -1};
  for (int i = 0; i < 3; ++i) {
    if (stdio[i] < 0) continue;
    lifted_stdio[i] = ::fcntl(stdio[i], F_DUPFD_CLOEXEC, first_free);
    if (lifted_stdio[i] < 0) child_fail(error_fd, ChildStep::Descriptors, errno);
  }
  for (int i = 0; i < 3; ++i) {
    if (lifted_stdio[i] >= 0 && ::dup2(lifted_stdio[i], i) < 0) child_fail(error_fd, ChildStep::Descriptors, errno);
  }
  // The executable's descriptor, likewise out of the way of the placed ones (and still
  // close-on-exec: execveat runs a compiled program from it all the same).
  const int exec_fd = request.executable_fd >= 0 ? ::fcntl(request.executable_fd, F_DUPFD_CLOEXEC, first_free) : -1;
  if (request.executable_fd >= 0 && exec_fd < 0) child_fail(error_fd, ChildStep::Descriptors, errno);
  for (std::size_t i = 0; i < n; ++i) {
    // dup2 clears FD_CLOEXEC on the target: exactly these fds survive exec.
    if (::dup2(lifted[i], 3 + static_cast<int>(i)) < 0) child_fail(error_fd, ChildStep::Descriptors, errno);
  }
  // Fds the supervisor itself inherited without close-on-exec (from a shell or a test
  // harness) must not reach the worker either: mark everything above the passed range.
  if (::close_range(static_cast<unsigned>(first_free), ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
    // (Kernels before 5.11 lack CLOSE_RANGE_CLOEXEC.) Up to the fd limit, and no further than
    // 65,536: the raised limit may be a million, and the supervisor waits for this child.
    rlimit limit{};
    const int top =
        ::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < 65536 ? static_cast<int>(limit.rlim_cur) : 65536;
    for (int fd = first_free; fd < top; ++fd)
      ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  }
  if (g_original_fd_limit != 0) {
    // The program gets the soft fd limit it would have had without the supervisor, or enough for
    // the descriptors it was given and some of its own when that is more.
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
      limit.rlim_cur = std::min(limit.rlim_max, std::max<rlim_t>(g_original_fd_limit, first_free + 256));
      ::setrlimit(RLIMIT_NOFILE, &limit);
    }
  }
  if (request.listen_pid == ListenPid::Set) write_decimal(listen_pid + 11, ::getpid());
  sigset_t none;
  ::sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  if (exec_fd >= 0) {
    ::execveat(exec_fd, "", argv, envp, AT_EMPTY_PATH);
  } else {
    ::execve(request.executable.c_str(), argv, envp);
  }
  child_fail(error_fd, ChildStep::Exec, errno);
}

}  // namespace

ChildProcess::ChildProcess(pid_t pid) : pid_(pid) {
  // glibc 2.36 has no wrapper for pidfd_open; PIDFD_NONBLOCK is not needed, nothing waits on it.
  // Its descriptors are close-on-exec (the kernel sets O_CLOEXEC).
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  if (fd >= 0) pidfd_.reset(static_cast<int>(fd));
}

void ChildProcess::signal(int signo) const {
  if (pid_ <= 0) return;
  if (pidfd_) {
    if (::syscall(SYS_pidfd_send_signal, pidfd_.get(), signo, nullptr, 0) == 0) return;
    if (errno == ESRCH) return;  // It has exited already: there is nothing to signal.
    // Any other failure (a sandbox that refuses pidfd_send_signal, say) falls back to kill(), which
    // is safe for as long as the child is unreaped (see spawn.h).
  }
  if (::kill(pid_, signo) != 0 && errno != ESRCH) {
    log_warn("cannot send {} to pid {}: {}", signal_name(signo), pid_, std::strerror(errno));
  }
}

void ChildProcess::signal_group(int signo) const {
  if (pid_ > 0) ::kill(-pid_, signo);
}

ExitStatus ExitStatus::from_siginfo(const siginfo_t& info) {
  ExitStatus s;
  if (info.si_code == CLD_EXITED) {
    s.code = info.si_status;
  } else {
    s.signal = info.si_status;  // CLD_KILLED or CLD_DUMPED.
  }
  return s;
}

ExitStatus ExitStatus::from_wait(int wstatus) {
  ExitStatus s;
  if (WIFEXITED(wstatus)) s.code = WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) s.signal = WTERMSIG(wstatus);
  return s;
}

std::string ExitStatus::describe() const {
  if (!not_started.empty()) return fmt::format("failed to start ({})", not_started);
  if (!known) return "exited (its exit status went to its parent, not to this supervisor)";
  if (signal != 0) return fmt::format("was killed by {}", signal_name(signal));
  return fmt::format("exited with status {}", code);
}

Result<std::string> resolve_executable(const std::string& name, const std::string& path_env) {
  const auto usable = [](const std::string& path) -> Status {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return Error::from_errno(path);
    if (!S_ISREG(st.st_mode)) return Error::message(fmt::format("{}: not a regular file", path));
    if (::access(path.c_str(), X_OK) != 0) return Error::from_errno(path);
    return {};
  };
  if (name.empty()) return Error::message("the command is empty");
  if (name.find('/') != std::string::npos) {
    if (auto ok = usable(name); !ok) return ok.error();
    return name;
  }
  std::size_t start = 0;
  while (start <= path_env.size()) {
    auto end = path_env.find(':', start);
    if (end == std::string::npos) end = path_env.size();
    const std::string_view dir = std::string_view(path_env).substr(start, end - start);
    const std::string candidate = fmt::format("{}/{}", dir.empty() ? "." : dir, name);
    if (usable(candidate)) return candidate;
    start = end + 1;
  }
  return Error::message(fmt::format("{}: command not found in PATH", name));
}

rlim_t raise_fd_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (g_original_fd_limit == 0) g_original_fd_limit = limit.rlim_cur;
  if (limit.rlim_cur < limit.rlim_max) {
    const rlim_t was = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) {
      log_warn("cannot raise the open-file limit from {} to {}: {}", static_cast<unsigned long long>(was),
               static_cast<unsigned long long>(limit.rlim_max), std::strerror(errno));
      return was;
    }
  }
  return limit.rlim_cur;
}

Result<pid_t> start_process(const SpawnRequest& request, PendingExec& exec) {
  if (request.argv.empty()) return Error::message("spawn: empty argument list");
  const int first_free = 3 + static_cast<int>(request.pass_fds.size());

  // Everything the child needs is built before fork: after fork only async-signal-safe
  // calls are allowed (the supervisor's allocator lock may be held by no one, but glibc
  // does not promise that).
  std::vector<char*> argv;
  argv.reserve(request.argv.size() + 1);
  for (const auto& a : request.argv)
    argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);

  std::string listen_pid(std::string_view("LISTEN_PID=").size() + 24, '\0');
  std::memcpy(listen_pid.data(), "LISTEN_PID=", 11);
  std::vector<char*> envp;
  envp.reserve(request.env.size() + 2);
  for (const auto& e : request.env)
    envp.push_back(const_cast<char*>(e.c_str()));
  if (request.listen_pid == ListenPid::Set) envp.push_back(listen_pid.data());
  envp.push_back(nullptr);

  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Error::from_errno("pipe2");
  Fd read_end(pipe_fds[0]);
  Fd write_end(pipe_fds[1]);
  // The error pipe must sit above the range 3..first_free-1 that the child fills.
  if (write_end.get() < first_free) {
    Fd high(::fcntl(write_end.get(), F_DUPFD_CLOEXEC, first_free));
    if (!high) return Error::from_errno("fcntl F_DUPFD_CLOEXEC");
    write_end = std::move(high);
  }
  if (::fcntl(read_end.get(), F_SETFL, O_NONBLOCK) != 0) return Error::from_errno("fcntl O_NONBLOCK");

  // Block every signal across fork so that no handler runs in the child before exec: a
  // libuv handler there would write into the supervisor's own signal pipe.
  sigset_t all;
  sigset_t saved;
  ::sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &saved);
  std::vector<int> lifted(request.pass_fds.size() + 1);
  const pid_t pid = ::fork();
  if (pid == 0)
    exec_in_child(request, first_free, write_end.get(), argv.data(), envp.data(), listen_pid.data(), lifted.data());
  const int fork_errno = errno;
  ::pthread_sigmask(SIG_SETMASK, &saved, nullptr);
  if (pid < 0) return Error::from_errno("fork", fork_errno);
  // The child makes itself a group leader too, but it may not have run yet: from here on a signal
  // to its group must reach it. (Fails harmlessly once it has exec'd or exited.)
  (void)::setpgid(pid, pid);

  exec.pipe_ = std::move(read_end);
  exec.executable_ = request.executable;
  exec.cwd_ = request.cwd;
  exec.passed_ = request.pass_fds.size();
  return pid;
}

std::optional<Status> PendingExec::outcome() {
  if (answer_ || !pipe_) return answer_;
  ChildFailure failure{};
  ssize_t got = 0;
  do {
    got = ::read(pipe_.get(), &failure, sizeof failure);
  } while (got < 0 && errno == EINTR);
  if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return std::nullopt;
  // End of file: the exec closed the write end (so did a death before it).
  answer_ = got == sizeof failure ? Status(failure_error(failure)) : Status{};
  return answer_;
}

Error PendingExec::failure_error(const ChildFailure& failure) const {
  switch (static_cast<ChildStep>(failure.step)) {
    case ChildStep::ProcessGroup:
      return Error::from_errno("setpgid in the new process", failure.err);
    case ChildStep::Descriptors: {
      rlimit limit{};
      ::getrlimit(RLIMIT_NOFILE, &limit);
      // Each descriptor is copied once out of the way before it is put in place, so that about
      // twice as many are open for a moment.
      return Error::from_errno(
          fmt::format("handing {} descriptors to {}, which needs about {} open files for a moment (the open-file "
                      "limit is {}; raise the hard limit: `ulimit -Hn`, LimitNOFILE=)",
                      passed_ + 3, executable_, 2 * passed_ + 16, static_cast<unsigned long long>(limit.rlim_cur)),
          failure.err);
    }
    case ChildStep::Directory:
      return Error::from_errno(fmt::format("cannot enter working directory {}", cwd_), failure.err);
    case ChildStep::Exec:
      break;
  }
  return Error::from_errno(fmt::format("exec {}", executable_), failure.err);
}

Result<pid_t> spawn_process(const SpawnRequest& request) {
  PendingExec exec;
  auto pid = start_process(request, exec);
  if (!pid) return pid;
  for (;;) {
    pollfd wait{exec.fd(), POLLIN, 0};
    if (::poll(&wait, 1, -1) < 0 && errno != EINTR) break;
    auto outcome = exec.outcome();
    if (!outcome) continue;
    if (*outcome) return pid;
    // The child never became the program; reap it here so it is not mistaken for a crash.
    int wstatus = 0;
    while (::waitpid(pid.value(), &wstatus, 0) < 0 && errno == EINTR) {
    }
    return outcome->error();
  }
  return pid;
}

}  // namespace hotrestart
