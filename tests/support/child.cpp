// Child processes for the integration tests: fork + execvpe with captured output.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "testsupport.h"

extern char** environ;

namespace hotrestart::testsupport {
namespace {

constexpr const char* kTruncatedMarker = "\n[... output truncated ...]\n";

std::string errno_text(int err) {
  return std::strerror(err);
}

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// What the child reports through the CLOEXEC error pipe when it cannot exec.
enum class Stage : int { Signals, Stdio, Fds, Chdir, Setgroups, Setgid, Setuid, Prctl, Exec };

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::Signals:
      return "signals";
    case Stage::Stdio:
      return "stdio";
    case Stage::Fds:
      return "pass_fds";
    case Stage::Chdir:
      return "chdir";
    case Stage::Setgroups:
      return "setgroups";
    case Stage::Setgid:
      return "setgid";
    case Stage::Setuid:
      return "setuid";
    case Stage::Prctl:
      return "prctl";
    case Stage::Exec:
      return "exec";
  }
  return "?";
}

struct ExecError {
  Stage stage;
  int err;
};

// Only async-signal-safe calls from here on (the test process is multi-threaded).
[[noreturn]] void child_fail(int errfd, Stage stage) {
  ExecError e{stage, errno};
  ssize_t n;
  do {
    n = ::write(errfd, &e, sizeof e);
  } while (n < 0 && errno == EINTR);
  ::_exit(127);
}

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

}  // namespace

// ---------------------------------------------------------------------------------

struct Child::Impl {
  pid_t pid = -1;
  std::vector<std::string> argv;
  std::size_t max_capture = 0;

  // Process state: pid may be signalled only while !reaped (guarded by state_mu).
  mutable std::mutex state_mu;
  bool reaped = false;
  int status = -1;

  // Captured output (guarded by out_mu).
  mutable std::mutex out_mu;
  mutable std::condition_variable out_cv;
  std::string out, err;
  bool out_truncated = false, err_truncated = false;
  bool capture_done = true;

  UniqueFd out_fd, err_fd, wake_fd;
  std::thread drain;

  ~Impl() {
    if (pid > 0) {
      bool need_kill;
      {
        std::lock_guard lk(state_mu);
        need_kill = !reaped;
        if (need_kill) ::kill(pid, SIGKILL);
      }
      if (need_kill && !reap_for(10s)) {
        // Cannot throw from here; leave the zombie rather than hang.
        std::fprintf(stderr, "testsupport: pid %d did not die after SIGKILL\n", static_cast<int>(pid));
      }
    }
    stop_capture(2s);
    if (drain.joinable()) drain.join();
  }

  // Non-blocking reap. Returns true if the child is (now) reaped.
  bool try_reap() {
    bool just_reaped = false;
    {
      std::lock_guard lk(state_mu);
      if (reaped) return true;
      int st = 0;
      pid_t r;
      do {
        r = ::waitpid(pid, &st, WNOHANG);
      } while (r < 0 && errno == EINTR);
      if (r == pid) {
        reaped = true;
        status = decode_status(st);
        just_reaped = true;
      } else if (r < 0 && errno == ECHILD) {
        // Someone else reaped it; we can no longer know the status.
        reaped = true;
        status = -1;
        just_reaped = true;
      } else {
        return false;
      }
    }
    if (just_reaped) {
      // Everything the child wrote is in the pipes now: drain what is there and stop
      // (grandchildren may keep the pipes open forever).
      stop_capture(5s);
    }
    return true;
  }

  bool reap_for(std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    auto pause = 1ms;
    for (;;) {
      if (try_reap()) return true;
      auto now = Clock::now();
      if (now >= deadline) return false;
      std::this_thread::sleep_for(std::min<Clock::duration>(pause, deadline - now));
      pause = std::min(pause * 2, std::chrono::milliseconds(10));
    }
  }

  // Ask the drain thread to read what is buffered and exit; wait for it (bounded).
  void stop_capture(std::chrono::milliseconds timeout) {
    if (wake_fd.get() < 0) return;
    uint64_t one = 1;
    ssize_t n = ::write(wake_fd.get(), &one, sizeof one);
    (void)n;
    std::unique_lock lk(out_mu);
    out_cv.wait_for(lk, timeout, [&] { return capture_done; });
  }

  void append(bool is_err, const char* data, std::size_t n) {
    std::lock_guard lk(out_mu);
    std::string& buf = is_err ? err : out;
    bool& trunc = is_err ? err_truncated : out_truncated;
    if (trunc) return;
    if (buf.size() + n > max_capture) {
      buf.append(data, max_capture > buf.size() ? max_capture - buf.size() : 0);
      buf += kTruncatedMarker;
      trunc = true;
    } else {
      buf.append(data, n);
    }
    out_cv.notify_all();
  }

  void drain_loop() {
    char buf[65536];
    bool open[2] = {out_fd.get() >= 0, err_fd.get() >= 0};
    const int fds[2] = {out_fd.get(), err_fd.get()};
    bool stopping = false;
    Clock::time_point stop_deadline{};
    while (open[0] || open[1]) {
      // Grandchildren may hold the pipes and keep writing: bound the final drain.
      if (stopping && Clock::now() > stop_deadline) break;
      pollfd p[3];
      int np = 0;
      int idx[2] = {-1, -1};
      for (int i = 0; i < 2; ++i) {
        if (open[i]) {
          idx[i] = np;
          p[np++] = pollfd{fds[i], POLLIN, 0};
        }
      }
      int wake_idx = -1;
      if (!stopping) {
        wake_idx = np;
        p[np++] = pollfd{wake_fd.get(), POLLIN, 0};
      }
      // When stopping, only take what is immediately available.
      int r = ::poll(p, static_cast<nfds_t>(np), stopping ? 0 : 1000);
      if (r < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (r == 0) {
        if (stopping) break;
        continue;
      }
      if (wake_idx >= 0 && (p[wake_idx].revents & POLLIN) != 0) {
        stopping = true;
        stop_deadline = Clock::now() + 500ms;
      }
      for (int i = 0; i < 2; ++i) {
        if (idx[i] < 0 || p[idx[i]].revents == 0) continue;
        ssize_t n = ::read(fds[i], buf, sizeof buf);
        if (n > 0) {
          append(i == 1, buf, static_cast<std::size_t>(n));
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
          open[i] = false;
        }
      }
    }
    std::lock_guard lk(out_mu);
    capture_done = true;
    out_cv.notify_all();
  }

  bool contains_from(Stream s, const std::string& needle, std::size_t& from_out, std::size_t& from_err) const {
    auto check = [&](const std::string& buf, std::size_t& from) {
      if (buf.find(needle, from) != std::string::npos) return true;
      from = buf.size() >= needle.size() ? buf.size() - needle.size() + 1 : 0;
      return false;
    };
    bool found = false;
    if (s == Stream::Out || s == Stream::Either) found = check(out, from_out);
    if (!found && (s == Stream::Err || s == Stream::Either)) found = check(err, from_err);
    return found;
  }
};

// ---------------------------------------------------------------------------------

Child::Child(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Child::Child() = default;
Child::Child(Child&&) noexcept = default;
Child& Child::operator=(Child&& o) noexcept {
  if (this != &o) impl_ = std::move(o.impl_);
  return *this;
}
Child::~Child() = default;

Child Child::spawn(std::vector<std::string> argv, SpawnOptions opts) {
  if (argv.empty()) throw std::invalid_argument("Child::spawn: empty argv");
  for (auto& [from, to] : opts.pass_fds) {
    if (to < 3 || from < 0) throw std::invalid_argument("Child::spawn: pass_fds targets must be >= 3");
  }
  const std::string& prog = argv[0];

  // Everything the child needs is prepared before fork (no allocation after fork).
  std::vector<char*> cargv;
  cargv.reserve(argv.size() + 1);
  for (auto& a : argv)
    cargv.push_back(a.data());
  cargv.push_back(nullptr);

  std::vector<std::string> env;
  if (!opts.clear_env) {
    for (char** e = environ; e != nullptr && *e != nullptr; ++e)
      env.emplace_back(*e);
  }
  auto remove_var = [&env](const std::string& name) {
    std::erase_if(env, [&](const std::string& kv) {
      return kv.size() > name.size() && kv.compare(0, name.size(), name) == 0 && kv[name.size()] == '=';
    });
  };
  for (auto& name : opts.unset_env)
    remove_var(name);
  for (auto& [name, value] : opts.set_env) {
    remove_var(name);
    env.push_back(name + "=" + value);
  }
  std::vector<char*> cenv;
  cenv.reserve(env.size() + 1);
  for (auto& kv : env)
    cenv.push_back(kv.data());
  cenv.push_back(nullptr);

  std::optional<gid_t> gid = opts.gid;
  if (opts.uid && !gid) {
    passwd pw{};
    passwd* res = nullptr;
    std::vector<char> pwbuf(16384);
    if (::getpwuid_r(*opts.uid, &pw, pwbuf.data(), pwbuf.size(), &res) == 0 && res != nullptr) {
      gid = pw.pw_gid;
    }
  }

  int max_target = 2;
  for (auto& [from, to] : opts.pass_fds)
    max_target = std::max(max_target, to);

  UniqueFd devnull(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (devnull.get() < 0) throw std::runtime_error("open /dev/null: " + errno_text(errno));

  auto make_pipe = [](UniqueFd& r, UniqueFd& w) {
    int p[2];
    if (::pipe2(p, O_CLOEXEC) != 0) throw std::runtime_error("pipe2: " + errno_text(errno));
    r = UniqueFd(p[0]);
    w = UniqueFd(p[1]);
  };
  UniqueFd err_r, err_w, out_r, out_w, serr_r, serr_w;
  make_pipe(err_r, err_w);
  if (opts.capture_stdout) make_pipe(out_r, out_w);
  if (opts.capture_stderr) make_pipe(serr_r, serr_w);

  auto impl = std::make_unique<Impl>();
  impl->argv = argv;
  impl->max_capture = opts.max_capture_bytes;
  if (opts.capture_stdout || opts.capture_stderr) {
    impl->wake_fd = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (impl->wake_fd.get() < 0) throw std::runtime_error("eventfd: " + errno_text(errno));
  }

  const pid_t parent = ::getpid();
  const char* cwd = opts.cwd.empty() ? nullptr : opts.cwd.c_str();
  const int stdout_fd = opts.capture_stdout ? out_w.get() : -1;
  const int stderr_fd = opts.capture_stderr ? serr_w.get() : opts.stderr_to;

  pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error("fork: " + errno_text(errno));
  if (pid == 0) {
    // ---- child: async-signal-safe only ----
    int errfd = err_w.get();
    // Keep the error pipe clear of the pass_fds targets.
    if (errfd <= max_target) {
      int moved = ::fcntl(errfd, F_DUPFD_CLOEXEC, max_target + 1);
      if (moved < 0) ::_exit(127);
      errfd = moved;
    }
    // Default signal dispositions and an empty mask (ignored signals survive exec).
    {
      struct sigaction sa {};
      sa.sa_handler = SIG_DFL;
      sigemptyset(&sa.sa_mask);
      for (int s = 1; s < NSIG; ++s) {
        if (s == SIGKILL || s == SIGSTOP) continue;
        ::sigaction(s, &sa, nullptr);  // fails harmlessly for reserved signals
      }
      sigset_t none;
      sigemptyset(&none);
      if (::sigprocmask(SIG_SETMASK, &none, nullptr) != 0) child_fail(errfd, Stage::Signals);
    }
    if (::dup2(devnull.get(), 0) < 0) child_fail(errfd, Stage::Stdio);
    if (stdout_fd >= 0 && ::dup2(stdout_fd, 1) < 0) child_fail(errfd, Stage::Stdio);
    if (stderr_fd >= 0 && ::dup2(stderr_fd, 2) < 0) child_fail(errfd, Stage::Stdio);
    // Every other inherited fd closes at exec, even ones other code forgot to mark.
    ::syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */);
    // pass_fds: first to fresh numbers above all targets, then onto the targets
    // (dup2 clears FD_CLOEXEC on the target).
    {
      int tmp[64];
      const std::size_t n = std::min<std::size_t>(opts.pass_fds.size(), 64);
      if (opts.pass_fds.size() > 64) {
        errno = EMFILE;
        child_fail(errfd, Stage::Fds);
      }
      for (std::size_t i = 0; i < n; ++i) {
        tmp[i] = ::fcntl(opts.pass_fds[i].first, F_DUPFD_CLOEXEC, std::max(max_target, errfd) + 1);
        if (tmp[i] < 0) child_fail(errfd, Stage::Fds);
      }
      for (std::size_t i = 0; i < n; ++i) {
        if (::dup2(tmp[i], opts.pass_fds[i].second) < 0) child_fail(errfd, Stage::Fds);
      }
    }
    if (cwd != nullptr && ::chdir(cwd) != 0) child_fail(errfd, Stage::Chdir);
    if (gid) {
      gid_t g = *gid;
      if (::setgroups(1, &g) != 0) child_fail(errfd, Stage::Setgroups);
      if (::setgid(g) != 0) child_fail(errfd, Stage::Setgid);
    }
    if (opts.uid && ::setuid(*opts.uid) != 0) child_fail(errfd, Stage::Setuid);
    // After the credential change, which would reset it.
    if (opts.kill_with_parent) {
      if (::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) child_fail(errfd, Stage::Prctl);
      if (::getppid() != parent) ::_exit(127);
    }
    ::execvpe(cargv[0], cargv.data(), cenv.data());
    child_fail(errfd, Stage::Exec);
  }

  // ---- parent ----
  impl->pid = pid;
  err_w.reset();
  out_w.reset();
  serr_w.reset();

  // Wait for exec (EOF on the CLOEXEC pipe) or an error report. Bounded.
  ExecError report{};
  std::size_t got = 0;
  auto deadline = Clock::now() + 30s;
  bool timed_out = false;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{err_r.get(), POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(left.count()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    ssize_t n = ::read(err_r.get(), reinterpret_cast<char*>(&report) + got, sizeof report - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
    if (got == sizeof report) break;
  }
  if (timed_out || got > 0) {
    // Let the Impl destructor kill (if needed) and reap the child.
    impl->capture_done = true;
    impl->wake_fd.reset();
    impl.reset();
    if (timed_out) throw std::runtime_error("spawn '" + prog + "': child did not exec within 30s");
    throw std::runtime_error("spawn '" + prog + "': " + stage_name(report.stage) + ": " + errno_text(report.err));
  }

  if (opts.capture_stdout || opts.capture_stderr) {
    impl->out_fd = std::move(out_r);
    impl->err_fd = std::move(serr_r);
    impl->capture_done = false;
    Impl* raw = impl.get();
    impl->drain = std::thread([raw] { raw->drain_loop(); });
  }
  return Child(std::move(impl));
}

pid_t Child::pid() const {
  return impl_ ? impl_->pid : -1;
}

const std::vector<std::string>& Child::argv() const {
  static const std::vector<std::string> empty;
  return impl_ ? impl_->argv : empty;
}

bool Child::running() {
  if (!impl_) return false;
  return !impl_->try_reap();
}

std::optional<int> Child::exit_code() {
  if (!impl_) return std::nullopt;
  if (!impl_->try_reap()) return std::nullopt;
  std::lock_guard lk(impl_->state_mu);
  return impl_->status;
}

std::optional<int> Child::wait_for(std::chrono::milliseconds timeout) {
  if (!impl_) return std::nullopt;
  if (!impl_->reap_for(timeout)) return std::nullopt;
  std::lock_guard lk(impl_->state_mu);
  return impl_->status;
}

int Child::wait_or_kill(std::chrono::milliseconds timeout) {
  if (!impl_) throw std::logic_error("Child::wait_or_kill on an empty Child");
  if (auto st = wait_for(timeout)) return *st;
  send_signal(SIGKILL);
  if (auto st = wait_for(10s)) return *st;
  throw std::runtime_error("pid " + std::to_string(impl_->pid) + " did not die within 10s of SIGKILL");
}

bool Child::send_signal(int sig) {
  if (!impl_) return false;
  std::lock_guard lk(impl_->state_mu);
  if (impl_->reaped) return false;
  return ::kill(impl_->pid, sig) == 0;
}

std::string Child::out() const {
  if (!impl_) return {};
  std::lock_guard lk(impl_->out_mu);
  return impl_->out;
}

std::string Child::err() const {
  if (!impl_) return {};
  std::lock_guard lk(impl_->out_mu);
  return impl_->err;
}

bool Child::wait_output(const std::string& needle, std::chrono::milliseconds timeout, Stream stream) const {
  if (!impl_) return false;
  std::size_t from_out = 0, from_err = 0;
  std::unique_lock lk(impl_->out_mu);
  auto deadline = Clock::now() + timeout;
  for (;;) {
    if (impl_->contains_from(stream, needle, from_out, from_err)) return true;
    if (impl_->capture_done) return false;
    if (impl_->out_cv.wait_until(lk, deadline) == std::cv_status::timeout) {
      return impl_->contains_from(stream, needle, from_out, from_err);
    }
  }
}

std::string Child::describe(std::size_t tail_bytes) const {
  if (!impl_) return "(empty Child)";
  std::string s = "argv:";
  for (auto& a : impl_->argv)
    s += " " + a;
  s += "\npid: " + std::to_string(impl_->pid) + "\nstatus: ";
  {
    std::lock_guard lk(impl_->state_mu);
    s += impl_->reaped ? "exited " + std::to_string(impl_->status) : std::string("running");
  }
  auto tail = [tail_bytes](const std::string& b) {
    return b.size() > tail_bytes ? "..." + b.substr(b.size() - tail_bytes) : b;
  };
  std::lock_guard lk(impl_->out_mu);
  s += "\n--- stdout (tail) ---\n" + tail(impl_->out);
  s += "\n--- stderr (tail) ---\n" + tail(impl_->err);
  s += "\n---\n";
  return s;
}

RunResult run(std::vector<std::string> argv, SpawnOptions opts, std::chrono::milliseconds timeout) {
  opts.capture_stdout = true;
  opts.capture_stderr = true;
  Child c = Child::spawn(std::move(argv), std::move(opts));
  RunResult r;
  if (auto st = c.wait_for(timeout)) {
    r.exit_code = *st;
  } else {
    r.timed_out = true;
    r.exit_code = c.wait_or_kill(0ms);
  }
  r.out = c.out();
  r.err = c.err();
  return r;
}

}  // namespace hotrestart::testsupport
