// hotrestart test-support library: child processes, bounded waiting, an HTTP load
// client, and Linux /proc inspection helpers for the integration tests.
//
// Conventions:
//  * Every wait takes a deadline; nothing here blocks without a bound.
//  * Every fd the library opens in the test process is O_CLOEXEC.
//  * Child and LoadClient member functions may be called from several threads at
//    once (moving or assigning the objects themselves excepted).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace hotrestart::testsupport {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------------------------
// Locations
// ---------------------------------------------------------------------------------

// Directory holding the project's executables (build/bin). $HOTRESTART_BIN_DIR wins;
// otherwise the HOTRESTART_BIN_DIR compile definition of this library; otherwise
// "<dir of /proc/self/exe>".
std::string bin_dir();
// bin_dir() + "/" + name.
std::string bin_path(std::string_view name);

// ---------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------

// Polls pred every `poll` until it returns true (-> true) or `deadline` has passed
// (-> false). pred is always evaluated at least once, and once more at the deadline.
bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds deadline,
                std::chrono::milliseconds poll = 20ms);

// ---------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------

struct SpawnOptions {
  // Environment: the child starts from this process's environment (or an empty one
  // if clear_env), then unset_env is removed, then set_env is applied.
  // Note: the program itself is looked up in *this* process's PATH (execvpe).
  bool clear_env = false;
  std::vector<std::pair<std::string, std::string>> set_env;
  std::vector<std::string> unset_env;

  // Capture stdout / stderr into buffers (drained by a background thread, so a
  // chatty child never blocks). When not captured the stream is inherited from the
  // test process. stdin is always /dev/null.
  bool capture_stdout = true;
  bool capture_stderr = true;
  // Without capture_stderr: a descriptor of this process that becomes the child's stderr
  // (-1: inherited).
  int stderr_to = -1;

  // Run as this uid/gid (setgroups({gid}) + setgid + setuid in the child). Setting
  // only uid uses the gid of that uid's passwd entry when one exists.
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;

  // Working directory of the child (empty: inherit). chdir happens before the
  // privilege drop.
  std::string cwd;

  // Descriptors to pass: {fd in this process, fd number in the child (>= 3)}.
  // Every other fd >= 3 is closed on exec, whatever its flags in this process.
  std::vector<std::pair<int, int>> pass_fds;

  // PR_SET_PDEATHSIG(SIGKILL): the child is killed if the *thread* that spawned it
  // exits (so a crashed test binary leaves nothing behind). Turn it off when spawning
  // from a short-lived thread.
  bool kill_with_parent = true;

  // Capture buffers stop growing at this size per stream (data is still drained);
  // a marker "\n[... output truncated ...]\n" is appended once.
  std::size_t max_capture_bytes = 64u << 20;
};

enum class Stream { Out, Err, Either };

class Child {
 public:
  // fork + execvp. Throws std::runtime_error("spawn 'prog': exec: No such file or
  // directory") and the like if anything before or at exec fails in the child.
  static Child spawn(std::vector<std::string> argv, SpawnOptions opts = {});

  Child();  // empty; pid() == -1
  Child(Child&&) noexcept;
  Child& operator=(Child&&) noexcept;  // an already running child is killed first
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  // SIGKILLs (this pid only) and reaps a still-running child, then stops capture.
  ~Child();

  pid_t pid() const;
  const std::vector<std::string>& argv() const;

  // Not yet exited (reaps the child if it has exited).
  bool running();
  // Exit code, or 128+signal if killed by a signal; nullopt if still running after
  // `timeout`. Once this returns a value, out()/err() hold everything the child wrote.
  std::optional<int> wait_for(std::chrono::milliseconds timeout);
  // wait_for(timeout); on timeout SIGKILL and reap. Returns the exit code (137 if
  // killed). Throws std::runtime_error if the child is not gone 10 s after SIGKILL.
  int wait_or_kill(std::chrono::milliseconds timeout);
  // Exit status if already exited (non-blocking, reaps).
  std::optional<int> exit_code();
  // kill(pid, sig) if not yet reaped; returns false if the child is already gone.
  bool send_signal(int sig);

  // Thread-safe snapshots of the captured output (empty if not captured).
  std::string out() const;
  std::string err() const;
  // Waits until the captured stream contains needle. Returns false on timeout, or
  // as soon as capture has ended (child exited) without the needle appearing.
  bool wait_output(const std::string& needle, std::chrono::milliseconds timeout, Stream stream = Stream::Either) const;

  // "argv: ...\nstatus: ...\n--- stdout (tail) ---\n...\n--- stderr (tail) ---\n..."
  // for assertion messages.
  std::string describe(std::size_t tail_bytes = 4096) const;

  struct Impl;

 private:
  explicit Child(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct RunResult {
  int exit_code = -1;  // 128+signal if killed by a signal (137 after a timeout)
  std::string out;
  std::string err;
  bool timed_out = false;
};

// spawn (stdout and stderr are always captured), wait up to timeout, SIGKILL on
// timeout, return everything.
RunResult run(std::vector<std::string> argv, SpawnOptions opts = {}, std::chrono::milliseconds timeout = 30s);

// ---------------------------------------------------------------------------------
// HTTP load client
// ---------------------------------------------------------------------------------

class LoadClient {
 public:
  enum class Mode {
    KeepAlive,      // one persistent connection per thread; reconnect only after the
                    // server answered "Connection: close" (or after a failure)
    NewConnection,  // a fresh connection per request, request carries Connection: close
  };

  struct Config {
    std::string host = "127.0.0.1";  // numeric IPv4/IPv6 or a resolvable name
    uint16_t port = 0;
    Mode mode = Mode::KeepAlive;
    int threads = 4;
    std::string path = "/";
    std::chrono::milliseconds request_timeout{5000};  // connect+send+receive, per request
    std::optional<std::size_t> max_requests;          // total across threads
    std::chrono::microseconds think_time{0};          // pause after each request
    std::chrono::milliseconds failure_backoff{5};     // pause after a failed request
    std::size_t max_stored_responses = 2'000'000;     // counters always count everything
    std::size_t max_stored_failures = 100'000;
  };

  struct Response {
    Clock::time_point start;
    Clock::time_point end;
    int status = 0;
    std::string version;         // "version=" field of the body ("" if absent)
    long long pid = -1;          // "pid=" field (-1 if absent)
    long long generation = -1;   // "generation=" field (-1 if absent)
    bool reused = false;         // sent on a connection that had carried a request before
    bool server_closed = false;  // response carried Connection: close (or HTTP/1.0)
    int thread = 0;
    std::uint64_t connection = 0;  // unique per TCP connection
  };

  struct Failure {
    Clock::time_point start;  // request start
    Clock::time_point time;   // when the failure was detected
    std::string reason;       // e.g. "connect: Connection refused", "read: EOF before response"
    bool reused = false;
    int thread = 0;
    std::uint64_t connection = 0;  // 0 if no connection was established
  };

  explicit LoadClient(Config cfg);
  ~LoadClient();  // stop()
  LoadClient(const LoadClient&) = delete;
  LoadClient& operator=(const LoadClient&) = delete;

  // Starts the worker threads. Throws if already started or the host cannot be resolved.
  void start();
  // Asks the threads to stop after their in-flight request and joins them. Bounded
  // by request_timeout (+ a little). Idempotent.
  void stop();
  // True once every thread has finished (max_requests reached or stopped).
  bool done() const;
  // After start(): waits until every thread has finished (max_requests reached or
  // stopped); false on timeout.
  bool wait_done(std::chrono::milliseconds timeout) const;

  const Config& config() const { return cfg_; }
  Clock::time_point start_time() const;

  std::size_t request_count() const;  // attempts that finished (ok + failed)
  std::size_t ok_count() const;       // complete 200 responses
  std::size_t failure_count() const;
  std::vector<Response> responses() const;  // includes non-200 complete responses
  std::vector<Failure> failures() const;
  std::map<std::string, std::size_t> version_counts() const;   // all complete responses
  std::map<std::string, std::size_t> failure_reasons() const;  // reason -> count
  // Counts, failures grouped by reason with first 5 examples each, counts per version.
  std::string summary() const;

 private:
  struct Shared;
  void worker(int index);

  Config cfg_;
  std::shared_ptr<Shared> shared_;
  std::vector<std::thread> threads_;
  Clock::time_point started_at_{};
  bool started_ = false;
  std::mutex lifecycle_mu_;
};

// Parses "version=LABEL pid=PID generation=GEN" (any order, extra fields ignored).
struct BodyFields {
  std::string version;
  long long pid = -1;
  long long generation = -1;
};
BodyFields parse_body_fields(std::string_view body);

// ---------------------------------------------------------------------------------
// /proc inspection
// ---------------------------------------------------------------------------------

struct FdInfo {
  int fd = -1;
  std::string target;    // readlink: "socket:[12345]", "pipe:[9]", "/dev/null", ...
  int flags = -1;        // open flags from /proc/PID/fdinfo (-1 if unreadable)
  bool cloexec = false;  // O_CLOEXEC per fdinfo flags
  // Inode of "socket:[N]" targets.
  std::optional<unsigned long> socket_inode() const;
};

// Open fds of pid, sorted by number (the directory fd itself is excluded when
// pid == getpid()). Throws std::runtime_error if /proc/PID/fd cannot be opened.
std::vector<FdInfo> list_fds(pid_t pid);
// Waits up to timeout for pid to hold exactly count descriptors. Some are open only for an instant
// (a control connection the supervisor has not yet seen close, a record being written in the
// background), so a leak is a count that stays. Empty on success, else the descriptors held.
std::string fds_settle_to(pid_t pid, std::size_t count, std::chrono::milliseconds timeout);
// The fewest descriptors pid held over a short window: its count without those open for an instant.
std::size_t settled_fd_count(pid_t pid);

// Direct children (including zombies), from /proc/*/stat.
std::vector<pid_t> children_of(pid_t pid);
// All descendants, breadth-first (children, grandchildren, ...).
std::vector<pid_t> descendants_of(pid_t pid);
// Opt-in teardown for process trees the test started (e.g. a supervisor's workers):
// sends sig to every current descendant of root (not to root itself), deepest
// first, and returns the pids signalled.
std::vector<pid_t> kill_descendants(pid_t root, int sig = SIGKILL);
// Exists and is not a zombie / dead ('Z' / 'X' in /proc/PID/stat).
bool pid_alive(pid_t pid);
// State letter from /proc/PID/stat, nullopt if the process does not exist.
std::optional<char> process_state(pid_t pid);
std::optional<pid_t> parent_of(pid_t pid);
// Resident memory (VmRSS in /proc/PID/status), in KiB; nullopt if the process is gone.
std::optional<long> rss_kib(pid_t pid);
// /proc/PID/environ: the environment the process was exec'ed with.
std::map<std::string, std::string> environ_of(pid_t pid);
// /proc/PID/cmdline split on NUL (empty if unreadable).
std::vector<std::string> cmdline_of(pid_t pid);

struct TcpSocket {
  unsigned long inode = 0;
  std::string local_addr;  // "127.0.0.1" / "::1"
  uint16_t local_port = 0;
  std::string remote_addr;
  uint16_t remote_port = 0;
  int state = 0;  // kernel TCP state number; 10 == LISTEN
  bool listening() const { return state == 10; }
};
// All TCP sockets of this network namespace (/proc/net/tcp and tcp6).
std::vector<TcpSocket> tcp_sockets();

// ---------------------------------------------------------------------------------
// Files and temporary directories
// ---------------------------------------------------------------------------------

// mkdtemp("/tmp/hrt-XXXXXX"); throws on failure.
std::string free_tmp_dir();

class TempDir {
 public:
  TempDir();  // free_tmp_dir()
  // Removes the tree, unless $HOTRESTART_KEEP_TMP is set to a non-empty value.
  ~TempDir();
  TempDir(TempDir&&) noexcept;
  TempDir& operator=(TempDir&&) noexcept;
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  std::string file(std::string_view name) const;  // path() + "/" + name

 private:
  std::string path_;
};

// Whole file, or nullopt if it cannot be read.
std::optional<std::string> read_file(const std::string& path);
// Writes path.tmp then renames it over path; throws on failure.
void write_file_atomic(const std::string& path, std::string_view content);

}  // namespace hotrestart::testsupport
