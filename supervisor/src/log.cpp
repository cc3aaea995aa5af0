// The supervisor's log lines and its workers' relayed lines on stderr, written without blocking
// (see log.h).
#include "log.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <string>
#include <string_view>

#include <hotrestart/fd.h>

namespace hotrestart {
namespace {

// What each line starts with, before "[PID]: ".
std::string& log_name() {
  static std::string name = "hotrestart";
  return name;
}

// Stderr, written to without blocking. A pipe or a terminal gets an open file description of its
// own, opened through /proc/self/fd/2 with O_NONBLOCK: setting O_NONBLOCK on fd 2 itself would set
// it for every process that shares that description (the shell, the workers' stdout), and
// programs that find their stdout non-blocking fail on EAGAIN. A socket (the journal) is sent to
// with MSG_DONTWAIT. Where neither works, a poll() for room comes before each write, which a
// writer racing for the same room can still defeat; a regular file does not block for long.
class StderrSink {
 public:
  StderrSink() {
    struct stat st {};
    if (::fstat(STDERR_FILENO, &st) != 0) return;  // Closed: every write fails and is dropped.
    if (S_ISSOCK(st.st_mode)) {
      socket_ = true;
    } else if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode)) {
      own_.reset(::open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY));
      if (own_) {
        fd_ = own_.get();
      } else {
        poll_first_ = true;
      }
    }
  }

  // Writes `count` lines in `bytes`, after the note of lines dropped before them, if any: waiting
  // up to `wait` for room unless a line has waited in vain since the last one went through, and
  // dropping and counting them otherwise.
  void put(std::string_view bytes, std::size_t count, std::chrono::milliseconds wait) {
    const bool may_wait = wait.count() > 0 && !stalled_;
    const auto deadline = Clock::now() + (may_wait ? wait : std::chrono::milliseconds(0));
    if (dropped_ > 0) {
      const std::string note =
          fmt::format("{}[{}]: warning: {} line(s) of output were dropped: stderr was full or closed\n", log_name(),
                      ::getpid(), dropped_);
      if (!write_all(note, deadline, may_wait)) {
        dropped_ += count;
        return;
      }
      dropped_ = 0;
    }
    if (!write_all(bytes, deadline, may_wait)) dropped_ += count;
  }

 private:
  using Clock = std::chrono::steady_clock;

  bool write_all(std::string_view bytes, Clock::time_point deadline, bool may_wait) {
    while (!bytes.empty()) {
      const ssize_t n = write_some(bytes);
      if (n > 0) {
        bytes.remove_prefix(static_cast<std::size_t>(n));
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n == 0 || errno != EAGAIN) return false;  // EPIPE: nobody reads stderr any more.
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      if (!may_wait || left.count() <= 0) {
        stalled_ = stalled_ || may_wait;
        return false;
      }
      pollfd p{fd_, POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>(left.count()));
    }
    stalled_ = false;
    return true;
  }

  ssize_t write_some(std::string_view bytes) const {
    if (poll_first_) {
      pollfd p{fd_, POLLOUT, 0};
      if (::poll(&p, 1, 0) != 1) {
        errno = EAGAIN;
        return -1;
      }
    }
    if (socket_) return ::send(fd_, bytes.data(), bytes.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    return ::write(fd_, bytes.data(), bytes.size());
  }

  int fd_ = STDERR_FILENO;
  Fd own_;
  bool socket_ = false;
  bool poll_first_ = false;
  bool stalled_ = false;     // A line waited in vain, and none has gone through since.
  std::size_t dropped_ = 0;  // Lines dropped since the last one that went through.
};

StderrSink& stderr_sink() {
  static StderrSink sink;
  return sink;
}

LogLevel g_level = LogLevel::Info;

#define HOTRESTART_LOG_PREFIX(enumerator, name, prefix) prefix,
#define HOTRESTART_LOG_NAME(enumerator, name, prefix) name,
constexpr std::string_view kPrefixes[] = {HOTRESTART_LOG_LEVELS(HOTRESTART_LOG_PREFIX)};
constexpr std::string_view kNames[] = {HOTRESTART_LOG_LEVELS(HOTRESTART_LOG_NAME)};
#undef HOTRESTART_LOG_PREFIX
#undef HOTRESTART_LOG_NAME

}  // namespace

void set_log_name(std::string name) {
  log_name() = std::move(name);
}

void set_log_level(LogLevel level) {
  g_level = level;
}

std::optional<LogLevel> log_level_named(std::string_view name) {
  for (std::size_t i = 0; i < std::size(kNames); ++i) {
    if (kNames[i] == name) return static_cast<LogLevel>(i);
  }
  return std::nullopt;
}

std::vector<std::string> log_level_names() {
  return {std::begin(kNames), std::end(kNames)};
}

void log_line(LogLevel level, std::string_view text) {
  if (level < g_level) return;
  auto index = static_cast<std::size_t>(level);
  std::string_view prefix = index < std::size(kPrefixes) ? kPrefixes[index] : "";
  // One write per line, so lines from the supervisor and its workers never interleave
  // mid-line on a shared stderr.
  stderr_sink().put(fmt::format("{}[{}]: {}{}\n", log_name(), ::getpid(), prefix, text), 1, kLogLineWait);
}

void write_relayed_lines(std::string_view lines, std::size_t count) {
  stderr_sink().put(lines, count, std::chrono::milliseconds(0));
}

}  // namespace hotrestart
