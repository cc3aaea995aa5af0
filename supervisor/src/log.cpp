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
#include <ctime>
#include <iterator>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include <hotrestart/fd.h>

namespace hotrestart {
namespace {

// What each line starts with, before "[PID]: ".
std::string& log_name() {
  static std::string name = "hotrestart";
  return name;
}

LogLevel g_level = LogLevel::Info;
LogFormat g_format = LogFormat::Text;

#define HOTRESTART_LOG_PREFIX(enumerator, name, prefix) prefix,
#define HOTRESTART_LOG_NAME(enumerator, name, prefix) name,
constexpr std::string_view kPrefixes[] = {HOTRESTART_LOG_LEVELS(HOTRESTART_LOG_PREFIX)};
constexpr std::string_view kNames[] = {HOTRESTART_LOG_LEVELS(HOTRESTART_LOG_NAME)};
#undef HOTRESTART_LOG_PREFIX
#undef HOTRESTART_LOG_NAME
constexpr std::string_view kFormatNames[] = {"text", "journal", "json"};

std::string_view level_name(LogLevel level) {
  const auto index = static_cast<std::size_t>(level);
  return index < std::size(kNames) ? kNames[index] : "info";
}

// The journal's priorities (syslog's): err, warning, info, debug.
int journal_priority(LogLevel level) {
  switch (level) {
    case LogLevel::Debug:
      return 7;
    case LogLevel::Info:
      return 6;
    case LogLevel::Warning:
      return 4;
    case LogLevel::Error:
      return 3;
  }
  return 6;
}

LogLevel level_of_priority(int priority) {
  if (priority <= 3) return LogLevel::Error;
  if (priority == 4) return LogLevel::Warning;
  if (priority == 7) return LogLevel::Debug;
  return LogLevel::Info;
}

// Appends utc_timestamp() to `out`: a relayed line costs no allocation of its own.
void append_utc_timestamp(std::string& out) {
  timespec now{};
  ::clock_gettime(CLOCK_REALTIME, &now);
  static thread_local time_t cached_second = -1;
  static thread_local char cached[32] = {};
  if (now.tv_sec != cached_second) {
    tm utc{};
    ::gmtime_r(&now.tv_sec, &utc);
    if (::strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &utc) == 0) cached[0] = '\0';
    cached_second = now.tv_sec;
  }
  out += cached;
  fmt::format_to(std::back_inserter(out), ".{:03}Z", now.tv_nsec / 1'000'000);
}

}  // namespace

std::string utc_timestamp() {
  std::string out;
  append_utc_timestamp(out);
  return out;
}

namespace {

std::string json_line(nlohmann::json object) {
  // Worker output need not be UTF-8: what is not is replaced, never a reason to lose the line.
  return object.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

// One of the supervisor's own lines, in the log format, with its "\n".
std::string format_own_line(LogLevel level, std::string_view text) {
  switch (g_format) {
    case LogFormat::Json:
      return json_line({{"time", utc_timestamp()},
                        {"level", level_name(level)},
                        {"source", log_name()},
                        {"pid", ::getpid()},
                        {"message", text}});
    case LogFormat::Journal:
      return fmt::format("<{}>{}[{}]: {}{}\n", journal_priority(level), log_name(), ::getpid(),
                         kPrefixes[static_cast<std::size_t>(level)], text);
    case LogFormat::Text:
      break;
  }
  return fmt::format("{} {}[{}]: {}{}\n", utc_timestamp(), log_name(), ::getpid(),
                     kPrefixes[static_cast<std::size_t>(level)], text);
}

// The priority a relayed line gives itself with a leading "<N>" (sd-daemon(3)), if it does.
std::optional<int> own_priority(std::string_view line) {
  if (line.size() >= 3 && line[0] == '<' && line[1] >= '0' && line[1] <= '7' && line[2] == '>') return line[1] - '0';
  return std::nullopt;
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
      const std::string note = format_own_line(
          LogLevel::Warning, fmt::format("{} line(s) of output were dropped: stderr was full or closed", dropped_));
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

std::optional<LogFormat> log_format_named(std::string_view name) {
  for (std::size_t i = 0; i < std::size(kFormatNames); ++i) {
    if (kFormatNames[i] == name) return static_cast<LogFormat>(i);
  }
  return std::nullopt;
}

std::string_view log_format_name(LogFormat format) {
  const auto index = static_cast<std::size_t>(format);
  return index < std::size(kFormatNames) ? kFormatNames[index] : "text";
}

LogFormat detect_log_format(const char* journal_stream, int stderr_fd) {
  if (journal_stream == nullptr) return LogFormat::Text;
  struct stat st {};
  if (::fstat(stderr_fd, &st) != 0) return LogFormat::Text;
  // systemd sets it for a service whose stderr is the journal; a process that has redirected its
  // stderr since (a pipe to a log shipper) still inherits the variable, so the file must match.
  return fmt::format("{}:{}", st.st_dev, st.st_ino) == journal_stream ? LogFormat::Journal : LogFormat::Text;
}

void set_log_format(LogFormat format) {
  g_format = format;
}

LogFormat log_format() {
  return g_format;
}

void log_line(LogLevel level, std::string_view text) {
  if (level < g_level) return;
  // One write per line, so lines from the supervisor and its workers never interleave
  // mid-line on a shared stderr.
  stderr_sink().put(format_own_line(level, text), 1, kLogLineWait);
}

void append_relayed_line(std::string& out, const RelaySource& source, std::string_view line) {
  switch (g_format) {
    case LogFormat::Json: {
      const auto priority = own_priority(line);
      nlohmann::json object = {{"time", utc_timestamp()},
                               {"level", level_name(priority ? level_of_priority(*priority) : LogLevel::Info)},
                               {"source", source.generation ? "worker" : source.name},
                               {"pid", source.pid}};
      if (source.generation) object["generation"] = *source.generation;
      object["message"] = priority ? line.substr(3) : line;
      out += json_line(std::move(object));
      return;
    }
    case LogFormat::Journal: {
      const auto priority = own_priority(line);
      if (priority) line.remove_prefix(3);
      fmt::format_to(std::back_inserter(out), "<{}>{}[{}]: ", priority.value_or(6), source.name, source.pid);
      break;
    }
    case LogFormat::Text:
      append_utc_timestamp(out);
      fmt::format_to(std::back_inserter(out), " {}[{}]: ", source.name, source.pid);
      break;
  }
  out += line;
  out += '\n';
}

void write_relayed_lines(std::string_view lines, std::size_t count) {
  stderr_sink().put(lines, count, std::chrono::milliseconds(0));
}

}  // namespace hotrestart
