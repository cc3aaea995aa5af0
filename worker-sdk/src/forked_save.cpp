// A section's `save` in a forked child (see forked_save.h).
#include "forked_save.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>

#include <hotrestart/wire/channel.h>
#include "arena_access.h"
#include "worker_common.h"

namespace hotrestart {

// The state of one freeze: whether SnapshotFork was called, and what it did.
class SnapshotFork::Impl {
 public:
  enum class Mode { Fork, Wait };
  explicit Impl(Mode how) : mode(how) {}

  const Mode mode;
  bool called = false;
  bool in_child = false;  // This is the child (after fork() returned 0 here).
  pid_t child = 0;
  std::string why_not;                          // Why it did not fork, when called.
  std::vector<Arena::Snapshot> snapshots;       // The arenas frozen for the child, until it is gone.
  std::chrono::microseconds took{0};            // How long the call took, under the writers' lock.
  std::function<void()> wait;                   // Mode::Wait: what to wait for.
  std::function<std::uint64_t()> sequence_now;  // Read at the fork.
  std::uint64_t sequence_at_fork = 0;
};

void SnapshotFork::operator()(std::initializer_list<Arena*> arenas) const {
  Impl& s = impl_;
  if (s.called) return;
  s.called = true;
  const auto t0 = std::chrono::steady_clock::now();
  if (s.mode == Impl::Mode::Wait) {
    if (s.wait) s.wait();
    s.took = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
    return;
  }
  // The arenas' memory is shared, not copied, by fork(): freeze it first, so that this process's
  // writes go to copies of their own while the child reads.
  for (Arena* arena : arenas) {
    if (arena == nullptr || !*arena) continue;
    Arena::Snapshot snapshot = arena->snapshot();
    if (!snapshot) {
      s.why_not = "an arena of the section is still shared with another generation";
      break;
    }
    s.snapshots.push_back(std::move(snapshot));
  }
  if (s.why_not.empty()) {
    if (s.sequence_now) s.sequence_at_fork = s.sequence_now();
    const pid_t pid = ::fork();
    if (pid == 0) {
      s.in_child = true;
      return;
    }
    if (pid < 0) {
      s.why_not = std::string("fork: ") + std::strerror(errno);
    } else {
      s.child = pid;
    }
  }
  s.took = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);
}

namespace sdk {
namespace {

// The "Name:   N kB" figures of a /proc file, in bytes, for the names asked (absent: nullopt).
std::vector<std::optional<std::uint64_t>> proc_bytes(const char* path, std::initializer_list<const char*> names) {
  std::vector<std::optional<std::uint64_t>> out(names.size());
  Fd fd(::open(path, O_RDONLY | O_CLOEXEC));
  if (!fd) return out;
  char buffer[4096];
  std::string text = "\n";
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
    if (text.size() > 65536) break;
  }
  std::size_t i = 0;
  for (const char* name : names) {
    const std::string key = std::string("\n") + name + ":";
    if (const std::size_t at = text.find(key); at != std::string::npos)
      out[i] = std::strtoull(text.c_str() + at + key.size(), nullptr, 10) * 1024;
    ++i;
  }
  return out;
}

// The child: closes what it must not hold, writes, reports, and exits. Never returns.
[[noreturn]] void child_main(pid_t parent, int result_sock, std::vector<int> keep,
                             const std::function<ChildResult()>& write) {
  // A child that outlives the SDK thread (the worker was killed) must not go on writing.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(70);
  ::prctl(PR_SET_NAME, "hr-snapshot", 0, 0, 0);
  lower_priority_for_transfer();
  // The child must not hold the worker's connections, listeners and channel open: a connection the
  // parent closes must end now, not when the save does, and the supervisor must see the channel
  // close when the worker exits.
  keep.push_back(result_sock);
  std::sort(keep.begin(), keep.end());
  unsigned from = 3;
  for (int fd : keep) {
    if (fd < 3) continue;
    if (static_cast<unsigned>(fd) > from) ::close_range(from, static_cast<unsigned>(fd) - 1, 0);
    from = std::max(from, static_cast<unsigned>(fd) + 1);
  }
  ::close_range(from, ~0U, 0);

  ChildResult result = write();
  const int memfd = result.memfd.get();
  const std::span<const int> fds = memfd >= 0 ? std::span<const int>(&memfd, 1) : std::span<const int>();
  const bool sent = static_cast<bool>(wire::send_message(result_sock, result.message, fds, wire::Blocking::Yes));
  ::_exit(sent ? 0 : 71);
}

std::string exit_text(int status) {
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  if (WIFEXITED(status)) return "exit status " + std::to_string(WEXITSTATUS(status));
  return "status " + std::to_string(status);
}

// Reaps the child. The application may reap it first (a handler of its own for SIGCHLD), or the
// system may (SIGCHLD ignored): then how it ended is unknown.
std::string reap(pid_t child) {
  int status = 0;
  for (;;) {
    const pid_t r = ::waitpid(child, &status, 0);
    if (r == child) return exit_text(status);
    if (r < 0 && errno == EINTR) continue;
    return "ended (its status was collected elsewhere)";
  }
}

}  // namespace

std::uint64_t own_anonymous_bytes() {
  return proc_bytes("/proc/self/status", {"RssAnon"})[0].value_or(0);
}

std::uint64_t snapshot_copy_bytes(pid_t child, std::uint64_t anon_at_fork) {
  // The child's anonymous pages that this process no longer maps are the copies' originals: with
  // each page shared by at most the two processes, Pss_Anon = private + shared / 2 and Anonymous
  // = private + shared. (Its private file pages are not copies: the arenas' pages it reads.)
  const std::string path = "/proc/" + std::to_string(child) + "/smaps_rollup";
  const auto figures = proc_bytes(path.c_str(), {"Pss_Anon", "Anonymous", "Private_Dirty"});
  std::uint64_t child_private = 0;
  if (figures[0] && figures[1]) {
    child_private = 2 * *figures[0] > *figures[1] ? 2 * *figures[0] - *figures[1] : 0;
  } else {
    child_private = figures[2].value_or(0);  // A kernel before 5.10 has no Pss_Anon.
  }
  const std::uint64_t anon = own_anonymous_bytes();
  return child_private + (anon > anon_at_fork ? anon - anon_at_fork : 0);
}

ForkedSave save_in_child(const Section& section, std::uint64_t max_copy_bytes, const std::vector<Fd*>& give,
                         const std::function<std::uint64_t()>& sequence_now,
                         const std::function<ChildResult()>& write) {
  ForkedSave out;
  auto pair = wire::seqpacket_pair();
  if (!pair) {
    out.why_not = pair.error().text();
    return out;
  }
  Fd mine = std::move(pair->first);
  Fd theirs = std::move(pair->second);
  const pid_t parent = ::getpid();

  SnapshotFork::Impl impl(SnapshotFork::Impl::Mode::Fork);
  impl.sequence_now = sequence_now;
  // Read before the freeze, not under the application's lock: what the process allocates in
  // between is counted as copies, which only errs on the safe side.
  const std::uint64_t anon_before = own_anonymous_bytes();
  {
    SnapshotFork fork(impl);
    try {
      section.freeze(fork);
    } catch (...) {
      // In the child the exception is not reported (no logging there): the parent saw the same.
      if (impl.in_child) ::_exit(72);
      if (!impl.called || impl.child == 0) out.why_not = "freeze threw an exception";
    }
  }
  if (impl.in_child) {
    std::vector<int> keep;
    for (const Fd* fd : give)
      keep.push_back(fd->get());
    child_main(parent, theirs.get(), std::move(keep), write);
  }
  theirs.reset();
  out.pause = impl.took;
  // From here on the child has its copy of the arenas' snapshots; this process lets them go once
  // the child is gone.
  auto release_arenas = [&impl] {
    for (const auto& snapshot : impl.snapshots)
      detail::ArenaAccess::shared_with(snapshot)->store(false);
  };
  if (impl.child == 0) {
    release_arenas();
    if (out.why_not.empty()) out.why_not = impl.called ? impl.why_not : "freeze did not call fork()";
    return out;
  }
  out.forked = true;
  out.child = impl.child;
  out.sequence_at_fork = impl.sequence_at_fork;
  for (Fd* fd : give)
    fd->reset();

  // The wait: the child's message, or the end of its socket. The snapshot's copies are sampled
  // meanwhile, every 20 ms, or less often where a sample would take more than 5% of that time:
  // reading the child's smaps_rollup walks its page tables, 20-30 ms for a child that maps a GiB
  // (which, every 20 ms, kept a CPU busy beside the server for the whole save).
  bool held_back = false;
  auto wait_readable = [&mine](int timeout_ms) {
    pollfd p{mine.get(), POLLIN, 0};
    for (;;) {
      const int r = ::poll(&p, 1, timeout_ms);
      if (r < 0 && errno == EINTR) continue;
      return r > 0;
    }
  };
  int interval_ms = kFirstSampleMs;
  while (!wait_readable(interval_ms)) {
    if (max_copy_bytes == 0 || held_back) continue;
    const auto sample_start = std::chrono::steady_clock::now();
    const std::uint64_t copies = snapshot_copy_bytes(impl.child, anon_before);
    const auto took =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - sample_start).count();
    interval_ms = static_cast<int>(std::clamp<long long>(took * 19, kFirstSampleMs, kMaxSampleIntervalMs));
    out.peak_copy_bytes = std::max(out.peak_copy_bytes, copies);
    out.sampled = true;
    if (copies <= max_copy_bytes) continue;
    // Past the bound: the writers wait, under their lock, for the child.
    held_back = true;
    say("section '%s': the snapshot's copies reached %llu MiB (bound %llu MiB): writes wait for the save",
        section.name.c_str(), static_cast<unsigned long long>(copies >> 20),
        static_cast<unsigned long long>(max_copy_bytes >> 20));
    SnapshotFork::Impl hold(SnapshotFork::Impl::Mode::Wait);
    hold.wait = [&] { wait_readable(-1); };
    SnapshotFork fork(hold);
    try {
      section.freeze(fork);
    } catch (...) {
      say("section '%s': freeze threw while the writers were to wait", section.name.c_str());
    }
    out.waited = hold.took;
  }
  auto received = wire::receive_message(mine.get(), wire::Blocking::Yes);
  if (received) {
    ChildResult r;
    r.message = std::move(received->message);
    if (!received->fds.empty()) r.memfd = std::move(received->fds[0]);
    out.result = std::move(r);
  }
  out.child_end = reap(impl.child);
  release_arenas();
  return out;
}

}  // namespace sdk
}  // namespace hotrestart
