// test-worker: a deliberately misbehaving worker for the hotrestart integration tests.
// Plain POSIX, and nlohmann-json (header-only) for the fd report. Readiness is reported like systemd's sd_notify: the
// datagram "READY=1" to the AF_UNIX SOCK_DGRAM socket named by $NOTIFY_SOCKET (a path,
// or an abstract name when it starts with '@').
//
// Modes (first argument):
//   exit CODE                    exit with CODE at once, without READY
//   no-ready                     never send READY; wait for SIGTERM, then exit 0
//   crash-after-ready DELAY_MS   READY, sleep DELAY_MS, abort() (SIGABRT); never accepts
//   undumpable                   PR_SET_DUMPABLE 0 (nobody without CAP_SYS_PTRACE may read its
//                                descriptors), READY, serve HTTP like ignore-drain; SIGTERM ends it
//   ignore-drain                 ignore SIGTERM/SIGINT, READY, serve HTTP on fds
//                                3..3+LISTEN_FDS-1 (one request per connection,
//                                Connection: close) until SIGKILL
//   fd-report PATH               before opening anything, list /proc/self/fd, then write
//                                a JSON report to PATH (via PATH.tmp + rename), READY,
//                                wait for SIGTERM, exit 0
//   say-and-exit CODE TEXT       write TEXT and a newline to stderr, then exit with CODE,
//                                without READY
//   leave-helper CODE TEXT       start a helper in a session of its own, orphaned, without
//                                HOTRESTART_GENERATION and with stdout and stderr on /dev/null (a
//                                stray to the supervisor), that holds the stderr pipe open on fd 9
//                                for 60 s, then say-and-exit CODE TEXT
//   sleep MS                     sleep, then exit 0
//   escape HOW TEXT              serve TEXT on the listeners, with a child that leaves the process
//                                group (HOW: setsid, orphan, orphan-unmarked, orphan-detached;
//                                see mode_escape)
//                                and serves TEXT-daemon, ignoring SIGTERM
//   flood-stderr MB LINES PATH   READY; on SIGUSR1 write MB megabytes to stderr without a
//                                newline, a newline, LINES short lines one write each, and
//                                "flood done"; then create PATH, wait for SIGTERM, exit 0
//   watchdog PET_FOR_MS          READY, then WATCHDOG=1 every quarter of $WATCHDOG_USEC (at most
//                                100 ms apart) for PET_FOR_MS (negative: for ever), then silent;
//                                SIGTERM exits 0
// Unknown mode or bad arguments: message on stderr, exit 64.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace {

constexpr int kUsage = 64;

void log(const std::string& msg) {
  std::string line = "test-worker[" + std::to_string(::getpid()) + "]: " + msg + "\n";
  ssize_t n = ::write(2, line.data(), line.size());
  (void)n;
}

bool parse_int(std::string_view s, long long& out) {
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && ptr == s.data() + s.size() && !s.empty();
}

std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::string(v) : std::string(fallback);
}

// sd_notify-style "READY=1" (or another message). The receiver learns our pid from
// SCM_CREDENTIALS (SO_PASSCRED), which the kernel attaches for the sending process.
bool notify(std::string_view message) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || *path == '\0') {
    log("NOTIFY_SOCKET not set; not sending READY=1");
    return false;
  }
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  const std::size_t len = std::strlen(path);
  if (len >= sizeof sa.sun_path) {
    log("NOTIFY_SOCKET too long");
    return false;
  }
  std::memcpy(sa.sun_path, path, len);
  const bool abstract = path[0] == '@';
  if (abstract) sa.sun_path[0] = '\0';
  const auto salen = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len + (abstract ? 0 : 1));
  int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    log(std::string("socket: ") + std::strerror(errno));
    return false;
  }
  ssize_t n;
  do {
    n = ::sendto(fd, message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&sa), salen);
  } while (n < 0 && errno == EINTR);
  const int err = errno;
  ::close(fd);
  if (n < 0) {
    log(std::string("sendto NOTIFY_SOCKET ") + path + ": " + std::strerror(err));
    return false;
  }
  return true;
}

bool notify_ready() {
  return notify("READY=1");
}

void sleep_ms(long long ms) {
  timespec ts{static_cast<time_t>(ms / 1000), static_cast<long>((ms % 1000) * 1000000)};
  while (::nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

// Blocks SIGTERM (after resetting an inherited SIG_IGN) so that it stays pending
// until wait_sigterm() collects it.
void block_sigterm() {
  struct sigaction sa {};
  sa.sa_handler = SIG_DFL;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGTERM, &sa, nullptr);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
}

// Writes all of `text` to stderr, blocking as a program's stderr does.
void write_stderr(std::string_view text) {
  while (!text.empty()) {
    const ssize_t n = ::write(2, text.data(), text.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    text.remove_prefix(static_cast<std::size_t>(n));
  }
}

[[noreturn]] void wait_sigterm_and_exit() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  for (;;) {
    int sig = 0;
    if (::sigwait(&set, &sig) == 0 && sig == SIGTERM) {
      log("SIGTERM, exiting 0");
      std::exit(0);
    }
  }
}

// ---------------------------------------------------------------------------------

int mode_fd_report(const std::string& path) {
  // 1. Inventory, before this process opens anything itself.
  struct Fd {
    int fd;
    std::string target;
    bool cloexec;
  };
  std::vector<Fd> fds;
  fds.reserve(64);
  DIR* d = ::opendir("/proc/self/fd");
  if (d == nullptr) {
    log(std::string("opendir /proc/self/fd: ") + std::strerror(errno));
    return 1;
  }
  const int own = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    long long n = 0;
    if (!parse_int(e->d_name, n) || n == own) continue;
    const int fd = static_cast<int>(n);
    char target[4096];
    std::string link = std::string("/proc/self/fd/") + e->d_name;
    ssize_t len = ::readlink(link.c_str(), target, sizeof target - 1);
    if (len < 0) continue;
    const int flags = ::fcntl(fd, F_GETFD);
    fds.push_back(Fd{fd, std::string(target, static_cast<std::size_t>(len)), flags >= 0 && (flags & FD_CLOEXEC) != 0});
  }
  ::closedir(d);

  // Inherited signal state (no fds needed).
  sigset_t blocked;
  sigemptyset(&blocked);
  ::sigprocmask(SIG_BLOCK, nullptr, &blocked);
  std::vector<int> blocked_signals;
  std::vector<int> ignored_signals;
  for (int s = 1; s < NSIG; ++s) {
    if (sigismember(&blocked, s) == 1) blocked_signals.push_back(s);
    struct sigaction sa {};
    if (::sigaction(s, nullptr, &sa) == 0 && sa.sa_handler == SIG_IGN) ignored_signals.push_back(s);
  }

  block_sigterm();

  // 2. Report.
  nlohmann::ordered_json fd_list = nlohmann::ordered_json::array();
  for (const Fd& f : fds)
    fd_list.push_back({{"fd", f.fd}, {"target", f.target}, {"cloexec", f.cloexec}});
  nlohmann::ordered_json env = nlohmann::ordered_json::object();
  for (const char* name : {"LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "NOTIFY_SOCKET", "HOTRESTART_GENERATION",
                           "HOTRESTART_CHANNEL_FD"}) {
    const char* v = std::getenv(name);
    env[name] = v != nullptr ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
  }
  const nlohmann::ordered_json report = {{"pid", ::getpid()},
                                         {"ppid", ::getppid()},
                                         {"fds", fd_list},
                                         {"env", env},
                                         {"blocked_signals", blocked_signals},
                                         {"ignored_signals", ignored_signals}};
  // An fd target that is not UTF-8 is reported with U+FFFD in place of its bad bytes.
  const std::string j = report.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";

  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    log("open " + tmp + ": " + std::strerror(errno));
    return 1;
  }
  std::string_view rest = j;
  while (!rest.empty()) {
    ssize_t n = ::write(fd, rest.data(), rest.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      log("write " + tmp + ": " + std::strerror(errno));
      ::close(fd);
      return 1;
    }
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  if (::close(fd) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
    log("write/rename " + path + ": " + std::strerror(errno));
    return 1;
  }

  notify_ready();
  wait_sigterm_and_exit();
}

// One request per connection; answers with Connection: close.
void serve_connection(int conn, const std::string& response) {
  timeval tv{2, 0};
  ::setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  std::string req;
  char buf[4096];
  while (req.find("\r\n\r\n") == std::string::npos && req.size() < 65536) {
    ssize_t n = ::recv(conn, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // EOF, error or timeout: nothing to answer
    req.append(buf, static_cast<std::size_t>(n));
  }
  std::string_view rest = response;
  while (!rest.empty()) {
    ssize_t n = ::send(conn, rest.data(), rest.size(), MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
  ::shutdown(conn, SHUT_WR);
}

// The listening sockets from LISTEN_FDS, non-blocking: they are shared with other processes, so
// accept must not block when another process took the connection first.
std::vector<pollfd> listening_sockets() {
  long long nfds = 0;
  const std::string listen_fds = env_or("LISTEN_FDS", "");
  if (!parse_int(listen_fds, nfds) || nfds < 0) nfds = 0;
  const std::string listen_pid = env_or("LISTEN_PID", "");
  if (!listen_pid.empty() && listen_pid != std::to_string(::getpid())) {
    log("warning: LISTEN_PID=" + listen_pid + " is not our pid");
  }
  if (nfds == 0) log("warning: no LISTEN_FDS; nothing to serve");
  std::vector<pollfd> pfds;
  for (int fd = 3; fd < 3 + nfds; ++fd) {
    int fl = ::fcntl(fd, F_GETFL);
    if (fl < 0) {
      log("fd " + std::to_string(fd) + " from LISTEN_FDS is not open");
      continue;
    }
    ::fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    pfds.push_back(pollfd{fd, POLLIN, 0});
  }
  return pfds;
}

std::string http_response(const std::string& body) {
  return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

volatile sig_atomic_t g_terminated = 0;

// Serves `response` on every socket of `pfds` until g_terminated is set (never, unless a handler
// sets it).
void serve(std::vector<pollfd>& pfds, const std::string& response) {
  while (g_terminated == 0) {
    int r = ::poll(pfds.data(), pfds.size(), -1);
    if (r < 0) {
      if (errno != EINTR) sleep_ms(100);
      continue;
    }
    for (auto& p : pfds) {
      if ((p.revents & POLLIN) == 0) continue;
      int conn = ::accept4(p.fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn < 0) continue;  // EAGAIN: someone else took it
      serve_connection(conn, response);
      ::close(conn);
    }
  }
}

// A server that no other process may trace (PR_SET_DUMPABLE 0): without CAP_SYS_PTRACE nobody
// can read its descriptors in /proc or copy one with pidfd_getfd. Serves like ignore-drain, but
// SIGTERM ends it.
int mode_undumpable() {
  ::prctl(PR_SET_DUMPABLE, 0);
  ::signal(SIGPIPE, SIG_IGN);
  auto pfds = listening_sockets();
  const std::string body = "version=undumpable pid=" + std::to_string(::getpid()) + "\n";
  notify_ready();
  log("ready; not dumpable, serving " + std::to_string(pfds.size()) + " socket(s)");
  serve(pfds, http_response(body));
  return 0;
}

int mode_ignore_drain() {
  ::signal(SIGTERM, SIG_IGN);
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  auto pfds = listening_sockets();
  const std::string body = "version=ignore-drain pid=" + std::to_string(::getpid()) +
                           " generation=" + env_or("HOTRESTART_GENERATION", "0") + "\n";
  notify_ready();
  log("ready; ignoring SIGTERM/SIGINT and serving " + std::to_string(pfds.size()) + " socket(s)");
  serve(pfds, http_response(body));  // runs until SIGKILL, by design
  return 0;
}

// A server whose child leaves its process group and keeps serving on the inherited sockets: `how`
// is "setsid" (the child stays this process's child) or "orphan" (an intermediate process exits at
// once, so the child is re-parented to the supervisor before anything can see it descend from
// this one), "orphan-unmarked" does the same with HOTRESTART_GENERATION removed from the child's
// environment, and "orphan-detached" also points its stdout and stderr at /dev/null. The child answers TEXT-daemon and
// ignores SIGTERM; this process answers TEXT and exits 0 on SIGTERM. READY is sent once the child has left the group.
int mode_escape(const std::string& how, const std::string& text) {
  ::signal(SIGPIPE, SIG_IGN);
  auto pfds = listening_sockets();
  int left[2];
  if (::pipe2(left, O_CLOEXEC) != 0) {
    log(std::string("pipe2: ") + std::strerror(errno));
    return 1;
  }
  const bool orphan = how != "setsid";
  const pid_t child = ::fork();
  if (child < 0) {
    log(std::string("fork: ") + std::strerror(errno));
    return 1;
  }
  if (child == 0) {
    ::close(left[0]);
    if (orphan && ::fork() != 0) ::_exit(0);
    ::setsid();
    ::signal(SIGTERM, SIG_IGN);
    if (how == "orphan-detached") {
      // Nothing left to say whose it is: stdout and stderr are /dev/null, as a daemon's are.
      const int null_fd = ::open("/dev/null", O_WRONLY);
      ::dup2(null_fd, 1);
      ::dup2(null_fd, 2);
    }
    if (how == "orphan-unmarked" || how == "orphan-detached") {
      ::unsetenv("HOTRESTART_GENERATION");
      // The environment /proc shows is the one a process was started with: start again without it.
      ::execl("/proc/self/exe", "test-worker", "escaped-daemon", text.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    log("escaped: session " + std::to_string(::getsid(0)));
    ::close(left[1]);
    serve(pfds, http_response(text + "-daemon\n"));
    ::_exit(0);
  }
  ::close(left[1]);
  char ignored = 0;
  while (::read(left[0], &ignored, 1) < 0 && errno == EINTR) {
  }
  ::close(left[0]);
  struct sigaction term {};
  term.sa_handler = [](int) { g_terminated = 1; };
  ::sigaction(SIGTERM, &term, nullptr);  // No SA_RESTART: poll returns at once.
  notify_ready();
  log("ready; child " + std::to_string(child) + " left the process group");
  serve(pfds, http_response(text + "\n"));
  log("SIGTERM; exiting");
  return 0;
}

[[noreturn]] void say_and_exit(int code, const std::string& text) {
  write_stderr(text + "\n");
  std::exit(code);
}

int mode_leave_helper(int code, const std::string& text) {
  // The helper says when it has left this process group, so that the SIGKILL to the group that
  // follows this process's exit cannot catch it before.
  int left[2];
  if (::pipe2(left, O_CLOEXEC) != 0) {
    log(std::string("pipe2: ") + std::strerror(errno));
    return 1;
  }
  const pid_t helper = ::fork();
  if (helper < 0) {
    log(std::string("fork: ") + std::strerror(errno));
    return 1;
  }
  if (helper == 0) {
    // Orphaned at once and without its generation mark, so that the supervisor cannot tell whose it
    // is (a stray): it is ended only when the supervisor stops, and holds stderr until then. The
    // exec closes the pipe's end, which tells this process it has left.
    if (::fork() != 0) ::_exit(0);
    ::setsid();
    ::unsetenv("HOTRESTART_GENERATION");
    // The pipe stays open on fd 9 only: stdout and stderr go to /dev/null, as a daemon's do, so
    // that they do not name the generation either.
    ::dup2(2, 9);
    const int null_fd = ::open("/dev/null", O_WRONLY);
    ::dup2(null_fd, 1);
    ::dup2(null_fd, 2);
    ::execl("/proc/self/exe", "test-worker", "sleep", "60000", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(left[1]);
  char ignored = 0;
  while (::read(left[0], &ignored, 1) < 0 && errno == EINTR) {
  }
  say_and_exit(code, text);
}

int mode_flood_stderr(long long megabytes, long long lines, const std::string& done_path) {
  block_sigterm();
  sigset_t go;
  sigemptyset(&go);
  sigaddset(&go, SIGUSR1);
  ::sigprocmask(SIG_BLOCK, &go, nullptr);
  notify_ready();
  int sig = 0;
  while (::sigwait(&go, &sig) != 0 || sig != SIGUSR1) {
  }
  const std::string block(64 * 1024, 'x');
  for (long long left = megabytes * 1024 * 1024; left > 0; left -= static_cast<long long>(block.size())) {
    write_stderr(std::string_view(block).substr(0, static_cast<std::size_t>(std::min<long long>(left, block.size()))));
  }
  write_stderr("\n");
  for (long long i = 0; i < lines; ++i)
    write_stderr("line " + std::to_string(i) + "\n");
  write_stderr("flood done\n");
  const int fd = ::open(done_path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd >= 0) ::close(fd);
  wait_sigterm_and_exit();
}

}  // namespace

// READY, then WATCHDOG=1 every quarter of $WATCHDOG_USEC (at most every 100 ms) for `pet_for_ms`
// (negative: for ever), then nothing more: hung, as far as a watchdog can tell. SIGTERM exits 0.
int mode_watchdog(long long pet_for_ms) {
  block_sigterm();
  long long every_ms = 100;
  long long usec = 0;
  if (parse_int(env_or("WATCHDOG_USEC", ""), usec) && usec > 0) every_ms = std::min(every_ms, usec / 4000);
  if (every_ms < 1) every_ms = 1;
  notify_ready();
  timespec start{};
  ::clock_gettime(CLOCK_MONOTONIC, &start);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  for (;;) {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC, &now);
    const long long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
    if (pet_for_ms < 0 || elapsed < pet_for_ms) notify("WATCHDOG=1");
    const timespec wait{static_cast<time_t>(every_ms / 1000), static_cast<long>((every_ms % 1000) * 1000000)};
    if (::sigtimedwait(&set, nullptr, &wait) == SIGTERM) {
      log("SIGTERM, exiting 0");
      return 0;
    }
  }
}

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: test-worker MODE [ARGS]\n");
    return kUsage;
  }
  const std::string_view mode = argv[1];

  if (mode == "exit") {
    long long code = 0;
    if (argc != 3 || !parse_int(argv[2], code) || code < 0 || code > 255) {
      std::fprintf(stderr, "test-worker: usage: exit CODE (0..255)\n");
      return kUsage;
    }
    return static_cast<int>(code);
  }
  if (mode == "no-ready") {
    block_sigterm();
    log("no-ready: never sending READY=1");
    wait_sigterm_and_exit();
  }
  if (mode == "crash-after-ready") {
    long long delay = 0;
    if (argc != 3 || !parse_int(argv[2], delay) || delay < 0) {
      std::fprintf(stderr, "test-worker: usage: crash-after-ready DELAY_MS\n");
      return kUsage;
    }
    notify_ready();
    log("ready; aborting in " + std::to_string(delay) + " ms");
    sleep_ms(delay);
    std::abort();
  }
  if (mode == "watchdog") {
    long long pet_for = 0;
    if (argc != 3 || !parse_int(argv[2], pet_for)) {
      std::fprintf(stderr, "test-worker: usage: watchdog PET_FOR_MS (negative: for ever)\n");
      return kUsage;
    }
    return mode_watchdog(pet_for);
  }
  if (mode == "escape") {
    const std::string_view how = argc == 4 ? std::string_view(argv[2]) : std::string_view();
    if (how != "setsid" && how != "orphan" && how != "orphan-unmarked" && how != "orphan-detached") {
      std::fprintf(stderr, "test-worker: usage: escape setsid|orphan|orphan-unmarked|orphan-detached TEXT\n");
      return kUsage;
    }
    return mode_escape(argv[2], argv[3]);
  }
  if (mode == "sleep" && argc == 3) {
    long long ms = 0;
    if (!parse_int(argv[2], ms) || ms < 0) return kUsage;
    sleep_ms(ms);
    return 0;
  }
  if (mode == "escaped-daemon" && argc == 3) {
    // escape orphan-unmarked, after its exec: still in its own session, without the mark.
    ::signal(SIGTERM, SIG_IGN);
    ::signal(SIGPIPE, SIG_IGN);
    auto pfds = listening_sockets();
    serve(pfds, http_response(std::string(argv[2]) + "-daemon\n"));
    return 0;
  }
  if (mode == "ignore-drain") {
    return mode_ignore_drain();
  }
  if (mode == "notify" && argc == 3) {
    // Ready, then one datagram of the caller's (its lines separated by real newlines), then serve
    // until SIGTERM.
    block_sigterm();
    notify_ready();
    if (!notify(argv[2])) return 1;
    log("notified");
    wait_sigterm_and_exit();
  }
  if (mode == "undumpable") {
    return mode_undumpable();
  }
  if (mode == "fd-report") {
    if (argc != 3 || argv[2][0] == '\0') {
      std::fprintf(stderr, "test-worker: usage: fd-report PATH\n");
      return kUsage;
    }
    return mode_fd_report(argv[2]);
  }
  if (mode == "say-and-exit" || mode == "leave-helper") {
    long long code = 0;
    if (argc != 4 || !parse_int(argv[2], code) || code < 0 || code > 255) {
      std::fprintf(stderr, "test-worker: usage: %s CODE TEXT\n", argv[1]);
      return kUsage;
    }
    if (mode == "leave-helper") return mode_leave_helper(static_cast<int>(code), argv[3]);
    say_and_exit(static_cast<int>(code), argv[3]);
  }
  if (mode == "flood-stderr") {
    long long megabytes = 0;
    long long lines = 0;
    if (argc != 5 || !parse_int(argv[2], megabytes) || !parse_int(argv[3], lines) || megabytes < 0 || lines < 0) {
      std::fprintf(stderr, "test-worker: usage: flood-stderr MB LINES PATH\n");
      return kUsage;
    }
    return mode_flood_stderr(megabytes, lines, argv[4]);
  }
  std::fprintf(stderr, "test-worker: unknown mode '%s'\n", argv[1]);
  return kUsage;
}
