// The process table, read from /proc, and which generation each process the supervisor is
// responsible for belongs to.
//
// A generation is first of all a process group, but a process group is easy to leave: a worker's
// child that calls setsid() or setpgid() is out of reach of every signal to the group, and keeps
// the listening sockets it inherited. Without a cgroup to hold them (the supervisor cannot count
// on one being delegated to it; see docs/architecture.md, "Every process of a generation"), the
// supervisor tracks membership by descent:
//
// - it is a child subreaper, so a process whose parent exits is re-parented to the supervisor
//   rather than to init, and stays under it;
// - a process descends from a generation's main process, or was once seen doing so (the roster
//   remembers each process by pid and start time, so that a reused pid is never mistaken for it);
// - an orphan re-parented to the supervisor before it was seen is placed by the
//   HOTRESTART_GENERATION its environment started with, or else by the generation's stderr pipe it
//   still writes to (its fd 1 or 2); one with neither is a *stray*.
//
// Signals to a process of the roster go through a pidfd, opened and then checked against the start
// time seen, so that they never reach a process that took over a freed pid.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

namespace hotrestart {

// One process, from /proc/PID/stat.
struct ProcessEntry {
  pid_t pid = 0;
  pid_t ppid = 0;
  pid_t pgid = 0;
  pid_t sid = 0;
  char state = '?';         // 'Z' for a zombie: it has exited and holds nothing any more.
  std::uint64_t start = 0;  // Start time, in clock ticks after boot: with the pid, names the process.
  bool operator==(const ProcessEntry&) const = default;
};

// Every process visible in /proc; an empty map when /proc cannot be read.
std::map<pid_t, ProcessEntry> read_process_table();
// The processes `roots` name and all their descendants, found through each task's
// /proc/PID/task/TID/children: the cost grows with those processes, not with the host's. Nullopt
// when the kernel has no such files (built without CONFIG_PROC_CHILDREN).
std::optional<std::map<pid_t, ProcessEntry>> read_descendants(const std::vector<pid_t>& roots);
std::optional<ProcessEntry> read_process(pid_t pid);
// Whether `pid` is still the process that started at `start` (the same pid and start time), and has
// not exited (a zombie has).
bool still_running(pid_t pid, std::uint64_t start);
// Parses one /proc/PID/stat line.
std::optional<ProcessEntry> parse_process_stat(std::string_view text);
// The HOTRESTART_GENERATION in the environment `pid` started with, if it can be read.
std::optional<std::uint64_t> read_generation_mark(pid_t pid);
// Sends `signo` to the process `entry` names if it is still that process and has not exited.
// True when it was sent.
bool signal_process(const ProcessEntry& entry, int signo);
// The same as a queued signal (sigqueue) carrying `value`.
bool queue_signal_process(const ProcessEntry& entry, int signo, int value);

class ProcessRoster {
 public:
  struct Hooks {
    pid_t self;
    // The generation whose main process `pid` is.
    std::function<std::optional<std::uint64_t>(pid_t)> main_of;
    // The supervisor's own children that belong to no generation as processes (readiness and
    // health probes, preflight commands): they and what they start are not members.
    std::function<bool(pid_t)> own_child;
    // The generation whose output pipe (its stderr) has inode `inode`.
    std::function<std::optional<std::uint64_t>(std::uint64_t inode)> generation_of_pipe;
    // The generations' main processes. Those of generations taken over are not the supervisor's
    // descendants; the table is read from them too (and from the processes known so far).
    std::function<std::vector<pid_t>()> mains;
  };
  explicit ProcessRoster(Hooks hooks) : hooks_(std::move(hooks)) {}

  // Reads the process table again (the supervisor's descendants, the generations' main processes and
  // theirs, and the processes known so far, or where the kernel cannot list a process's children,
  // every process) and places every process under the supervisor, unless it was
  // read less than `max_age` ago (a stop that kills hundreds of generations reads it once).
  void refresh(std::chrono::milliseconds max_age = std::chrono::milliseconds(0));
  // The processes of generation `number` other than its main process, as of the last refresh,
  // zombies left out.
  std::vector<ProcessEntry> members(std::uint64_t number) const;
  // Every placed process that is not a zombie, by generation.
  const std::map<std::uint64_t, std::vector<ProcessEntry>>& by_generation() const { return members_; }
  // Orphans re-parented to the supervisor that say nothing of their generation, zombies left out.
  const std::vector<ProcessEntry>& strays() const { return strays_; }

 private:
  // The generation whose stderr pipe `pid` writes to on its fd 2 or 1, if any.
  std::optional<std::uint64_t> generation_by_output(pid_t pid) const;

  Hooks hooks_;
  std::chrono::steady_clock::time_point refreshed_{};
  // (pid, start time) → generation, for every process placed so far and still alive.
  std::map<std::pair<pid_t, std::uint64_t>, std::uint64_t> known_;
  std::map<std::uint64_t, std::vector<ProcessEntry>> members_;
  std::vector<ProcessEntry> strays_;
};

}  // namespace hotrestart
