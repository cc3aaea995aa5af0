// The process table and the roster of the supervisor's processes (see process_table.h).
#include "process_table.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <charconv>
#include <cstdlib>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <hotrestart/fd.h>

namespace hotrestart {
namespace {

// The whole of a small /proc file; empty when it cannot be read.
std::string read_small_file(const std::string& path, std::size_t limit) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return {};
  std::string text;
  char buf[4096];
  while (text.size() < limit) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  return text;
}

template <typename T>
bool parse_number(std::string_view text, T& out) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc() && end == text.data() + text.size();
}

}  // namespace

std::optional<ProcessEntry> parse_process_stat(std::string_view text) {
  // "pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime
  // cutime cstime priority nice num_threads itrealvalue starttime ...": comm may hold spaces and
  // parentheses, so the last ')' ends it.
  const auto open = text.find(' ');
  const auto close = text.rfind(')');
  if (open == std::string_view::npos || close == std::string_view::npos || close < open) return std::nullopt;
  ProcessEntry e;
  if (!parse_number(text.substr(0, open), e.pid)) return std::nullopt;
  std::vector<std::string_view> fields;
  std::string_view rest = text.substr(close + 1);
  while (!rest.empty() && fields.size() < 20) {
    const auto start = rest.find_first_not_of(" \n");
    if (start == std::string_view::npos) break;
    rest.remove_prefix(start);
    const auto end = rest.find_first_of(" \n");
    fields.push_back(rest.substr(0, end));
    rest.remove_prefix(end == std::string_view::npos ? rest.size() : end);
  }
  // fields[0] is field 3 (state), so field N is fields[N - 3].
  if (fields.size() < 20 || fields[0].size() != 1) return std::nullopt;
  e.state = fields[0][0];
  if (!parse_number(fields[1], e.ppid) || !parse_number(fields[2], e.pgid) || !parse_number(fields[3], e.sid) ||
      !parse_number(fields[19], e.start))
    return std::nullopt;
  return e;
}

std::optional<ProcessEntry> read_process(pid_t pid) {
  const std::string text = read_small_file(fmt::format("/proc/{}/stat", pid), 4096);
  if (text.empty()) return std::nullopt;
  return parse_process_stat(text);
}

bool still_running(pid_t pid, std::uint64_t start) {
  const auto p = read_process(pid);
  return p && p->start == start && p->state != 'Z';
}

std::map<pid_t, ProcessEntry> read_process_table() {
  std::map<pid_t, ProcessEntry> table;
  DIR* d = ::opendir("/proc");
  if (d == nullptr) return table;
  while (dirent* e = ::readdir(d)) {
    pid_t pid = 0;
    if (!parse_number(std::string_view(e->d_name), pid) || pid <= 0) continue;
    if (auto entry = read_process(pid)) table.emplace(pid, *entry);
  }
  ::closedir(d);
  return table;
}

std::optional<std::map<pid_t, ProcessEntry>> read_descendants(const std::vector<pid_t>& roots) {
  static const bool listed = ::access(fmt::format("/proc/self/task/{}/children", ::gettid()).c_str(), R_OK) == 0;
  if (!listed) return std::nullopt;
  std::map<pid_t, ProcessEntry> table;
  std::vector<pid_t> todo(roots.rbegin(), roots.rend());
  while (!todo.empty()) {
    const pid_t pid = todo.back();
    todo.pop_back();
    if (pid <= 0 || table.count(pid) != 0) continue;
    auto entry = read_process(pid);
    if (!entry) continue;  // Gone, or never was.
    table.emplace(pid, *entry);
    // Every thread's list: a child belongs to the thread that forked it.
    DIR* tasks = ::opendir(fmt::format("/proc/{}/task", pid).c_str());
    if (tasks == nullptr) continue;
    while (dirent* t = ::readdir(tasks)) {
      pid_t tid = 0;
      if (!parse_number(std::string_view(t->d_name), tid)) continue;
      const std::string children = read_small_file(fmt::format("/proc/{}/task/{}/children", pid, tid), 1 << 20);
      std::string_view rest(children);
      while (!rest.empty()) {
        const auto end = rest.find(' ');
        pid_t child = 0;
        if (parse_number(rest.substr(0, end), child)) todo.push_back(child);
        rest.remove_prefix(end == std::string_view::npos ? rest.size() : end + 1);
      }
    }
    ::closedir(tasks);
  }
  return table;
}

std::optional<std::uint64_t> read_generation_mark(pid_t pid) {
  // The environment as it was at exec: NUL-separated; a process cannot hide the mark by unsetting
  // it later, only by starting without it.
  const std::string env = read_small_file(fmt::format("/proc/{}/environ", pid), 1 << 20);
  constexpr std::string_view kMark = "HOTRESTART_GENERATION=";
  std::size_t at = 0;
  while (at < env.size()) {
    std::size_t end = env.find('\0', at);
    if (end == std::string::npos) end = env.size();
    const std::string_view entry(env.data() + at, end - at);
    if (entry.starts_with(kMark)) {
      std::uint64_t number = 0;
      if (parse_number(entry.substr(kMark.size()), number)) return number;
      return std::nullopt;
    }
    at = end + 1;
  }
  return std::nullopt;
}

namespace {

// Sends `signo` (with `info`, if given) to the process `entry` names if it is still that process and
// has not exited.
bool send_to(const ProcessEntry& entry, int signo, siginfo_t* info) {
  // glibc 2.36 has no wrappers for pidfd_open or pidfd_send_signal.
  const long raw = ::syscall(SYS_pidfd_open, entry.pid, 0);
  if (raw < 0 && errno != ENOSYS) return false;
  Fd pidfd(raw < 0 ? -1 : static_cast<int>(raw));
  // The pidfd names whatever process has the pid now: only if that is still the one seen (same
  // start time) and it has not exited is the signal sent, through the pidfd, to it alone.
  const auto now = read_process(entry.pid);
  if (!now || now->start != entry.start || now->state == 'Z') return false;
  if (pidfd) return ::syscall(SYS_pidfd_send_signal, pidfd.get(), signo, info, 0) == 0;
  // A kernel before 5.3 has no pidfd: the start time was checked just now, which leaves a window of
  // a few microseconds for the pid to be reused.
  if (info != nullptr) return ::syscall(SYS_rt_sigqueueinfo, entry.pid, signo, info) == 0;
  return ::kill(entry.pid, signo) == 0;
}

}  // namespace

bool signal_process(const ProcessEntry& entry, int signo) {
  return send_to(entry, signo, nullptr);
}

bool queue_signal_process(const ProcessEntry& entry, int signo, int value) {
  // What sigqueue() would send: SI_QUEUE, this process as the sender, and the value.
  siginfo_t info{};
  info.si_signo = signo;
  info.si_code = SI_QUEUE;
  info.si_pid = ::getpid();
  info.si_uid = ::getuid();
  info.si_value.sival_int = value;
  return send_to(entry, signo, &info);
}

std::optional<std::uint64_t> ProcessRoster::generation_by_output(pid_t pid) const {
  if (!hooks_.generation_of_pipe) return std::nullopt;
  for (int fd : {2, 1}) {
    char target[64];
    const ssize_t n = ::readlink(fmt::format("/proc/{}/fd/{}", pid, fd).c_str(), target, sizeof target - 1);
    if (n <= 0) continue;
    const std::string_view link(target, static_cast<std::size_t>(n));
    // "pipe:[12345]"
    if (!link.starts_with("pipe:[") || !link.ends_with("]")) continue;
    std::uint64_t inode = 0;
    if (!parse_number(link.substr(6, link.size() - 7), inode)) continue;
    if (auto number = hooks_.generation_of_pipe(inode)) return number;
  }
  return std::nullopt;
}

void ProcessRoster::refresh(std::chrono::milliseconds max_age) {
  const auto now = std::chrono::steady_clock::now();
  if (max_age.count() > 0 && now - refreshed_ < max_age) return;
  std::vector<pid_t> roots{hooks_.self};
  if (hooks_.mains) {
    for (pid_t pid : hooks_.mains())
      roots.push_back(pid);
  }
  for (const auto& [process, generation] : known_)
    roots.push_back(process.first);
  auto descendants = read_descendants(roots);
  const auto table = descendants ? std::move(*descendants) : read_process_table();
  if (table.empty()) return;  // /proc unreadable: keep what was known.
  // From the end of the reading: on a host where one takes longer than `max_age`, a burst of
  // refreshes still reads it once.
  refreshed_ = std::chrono::steady_clock::now();

  enum class Kind { Outside, Own, Generation, Stray };
  struct Placement {
    Kind kind = Kind::Outside;
    std::uint64_t generation = 0;
  };
  std::map<pid_t, Placement> placed;
  std::vector<pid_t> chain;
  for (const auto& [first, ignored] : table) {
    // Walks up from `first` to the first process whose place is known or can be decided, then
    // gives every process on the way that place.
    chain.clear();
    Placement where;
    pid_t pid = first;
    while (true) {
      if (auto it = placed.find(pid); it != placed.end()) {
        where = it->second;
        break;
      }
      const auto entry = table.find(pid);
      if (pid <= 1 || pid == hooks_.self || entry == table.end()) break;  // Outside.
      chain.push_back(pid);
      if (auto number = hooks_.main_of(pid)) {
        where = {Kind::Generation, *number};
        break;
      }
      if (auto it = known_.find({pid, entry->second.start}); it != known_.end()) {
        where = {Kind::Generation, it->second};
        break;
      }
      if (entry->second.ppid == hooks_.self) {
        if (hooks_.own_child(pid)) {
          where = {Kind::Own, 0};
        } else if (auto mark = read_generation_mark(pid)) {
          where = {Kind::Generation, *mark};
        } else if (auto by_output = generation_by_output(pid)) {
          where = {Kind::Generation, *by_output};
        } else {
          where = {Kind::Stray, 0};
        }
        break;
      }
      pid = entry->second.ppid;
    }
    for (pid_t p : chain)
      placed[p] = where;
  }

  known_.clear();
  members_.clear();
  strays_.clear();
  for (const auto& [pid, where] : placed) {
    const ProcessEntry& entry = table.at(pid);
    if (where.kind == Kind::Generation) {
      known_[{pid, entry.start}] = where.generation;
      if (entry.state != 'Z' && !hooks_.main_of(pid)) members_[where.generation].push_back(entry);
    } else if (where.kind == Kind::Stray && entry.state != 'Z') {
      strays_.push_back(entry);
    }
  }
}

std::vector<ProcessEntry> ProcessRoster::members(std::uint64_t number) const {
  const auto it = members_.find(number);
  return it == members_.end() ? std::vector<ProcessEntry>{} : it->second;
}

}  // namespace hotrestart
