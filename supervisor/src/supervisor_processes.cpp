// The coordinator's part in the processes below it: what outlived its generation is ended (see
// supervisor.h; which generation a process belongs to is process_table.h).
#include "supervisor.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "log.h"

namespace hotrestart {

void Supervisor::sweep_processes(bool final) {
  roster_->refresh();
  std::vector<ProcessEntry> killed;
  for (const auto& [number, members] : roster_->by_generation()) {
    const auto it = generations_.find(number);
    // A generation ends with its main process, and everything it started with it (on_main_exit).
    if (it != generations_.end() && it->second->state() != GenerationState::Exited) continue;
    for (const ProcessEntry& p : members) {
      if (signal_process(p, SIGKILL)) {
        log_warn("pid {} of generation {} outlived it (it had left its process group); SIGKILL", p.pid, number);
        killed.push_back(p);
      }
    }
  }
  std::erase_if(strays_logged_, [this](const std::pair<pid_t, std::uint64_t>& logged) {
    return std::none_of(roster_->strays().begin(), roster_->strays().end(),
                        [&](const ProcessEntry& p) { return p.pid == logged.first && p.start == logged.second; });
  });
  for (const ProcessEntry& p : roster_->strays()) {
    if (final) {
      if (signal_process(p, SIGKILL)) {
        log_warn("pid {}, an orphan of no known generation, is still running as the supervisor stops; SIGKILL", p.pid);
        killed.push_back(p);
      }
    } else if (strays_logged_.insert({p.pid, p.start}).second) {
      log_warn(
          "pid {} was left to the supervisor by a process that exited, and does not say which generation it "
          "belongs to; it is ended when the supervisor stops",
          p.pid);
    }
  }
  if (!final) return;
  // What holds the listeners must be gone before the supervisor says it stopped: a new `run` binds
  // them next. A SIGKILLed process is gone within moments; the wait is bounded all the same.
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  for (const ProcessEntry& p : killed) {
    while (Clock::now() < deadline) {
      const auto now = read_process(p.pid);
      if (!now || now->start != p.start || now->state == 'Z') break;
      ::usleep(2000);
    }
  }
}

}  // namespace hotrestart
