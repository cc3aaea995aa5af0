// The supervisor's side of the guard link (guard_link.h).
#include "guard_link.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>

#include <chrono>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <hotrestart/wire/channel.h>

#include "duration.h"
#include "guard.h"
#include "log.h"
#include "spawn.h"

extern char** environ;

namespace hotrestart {

namespace {

// A guard that died is started again after this long (a guard that cannot live is not restarted
// in a tight loop).
constexpr Millis kRestartDelay{1'000};
constexpr Millis kReleaseWait{2'000};

}  // namespace

GuardLink::GuardLink(uv_loop_t* loop, Reaper& reaper, const ListenerSet& listeners, std::string name,
                     std::string takeover_path)
    : loop_(loop),
      reaper_(reaper),
      listeners_(listeners),
      name_(std::move(name)),
      takeover_path_(std::move(takeover_path)),
      restart_timer_(loop),
      release_timer_(loop) {}

GuardLink::~GuardLink() {
  if (pid_ <= 0) return;
  reaper_.forget(pid_);
  if (!told_.empty()) {
    // Generations are left (the supervisor fails): the guard sees the link close, and acts as if the
    // supervisor had died, which for them is the truth.
    return;
  }
  // Nothing to guard (a start that failed): it goes now, so that its copies of the listeners do
  // not outlive the supervisor.
  (void)send_guard_message(link_.get(), {{"op", "release"}}, {}, wire::Blocking::No);
  link_.reset();
  for (int i = 0; i < 100; ++i) {
    if (::waitpid(pid_, nullptr, WNOHANG) == pid_) return;
    ::usleep(10'000);
  }
  ::kill(pid_, SIGKILL);
  (void)::waitpid(pid_, nullptr, 0);
}

Status GuardLink::start() {
  auto pair = wire::seqpacket_pair();
  if (!pair) return pair.error().context("guard");
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (!std::string_view(*e).starts_with(kGuardLogFormat)) env.emplace_back(*e);
  }
  // Its lines go to the same stderr, in the same format.
  env.push_back(fmt::format("{}={}", kGuardLogFormat, log_format_name(log_format())));
  // The same binary as the supervisor, as it is now (even if its file was replaced since).
  SpawnRequest request{"/proc/self/exe",
                       {"hotrestart", "__guard", name_, takeover_path_},
                       std::move(env),
                       {pair->second.get()},
                       ListenPid::Omit};
  auto pid = spawn_process(request);
  if (!pid) return pid.error().context("guard");
  pid_ = pid.value();
  link_ = std::move(pair->first);
  told_.clear();
  reaper_.watch(pid_, [this](pid_t p, ExitStatus status) { on_exit(p, status); });
  if (auto ok = send({{"op", "hello"}, {"supervisor", ::getpid()}}); !ok) return ok;
  // The listeners, as many to a message as one datagram carries.
  const auto& all = listeners_.listeners();
  for (std::size_t at = 0; at < all.size(); at += kGuardMaxFds) {
    std::vector<int> fds;
    nlohmann::json names = nlohmann::json::array();
    for (std::size_t i = at; i < all.size() && i < at + kGuardMaxFds; ++i) {
      fds.push_back(all[i].fd.get());
      names.push_back(all[i].spec.name);
    }
    if (auto ok = send({{"op", "listeners"}, {"names", names}}, fds); !ok) return ok;
  }
  log_debug("guard started (pid {})", pid_);
  if (started_) started_();
  return {};
}

Status GuardLink::send(nlohmann::json body, std::span<const int> fds) {
  if (!link_) return Error::message("no guard");
  // Never blocks the loop: a guard that does not read (stopped, stuck) is replaced.
  auto ok = send_guard_message(link_.get(), std::move(body), fds, wire::Blocking::No);
  if (!ok) {
    log_warn("{}{}", ok.error().text(),
             ok.error().code() == EAGAIN ? "; the guard does not read its link, so it is replaced" : "");
    if (ok.error().code() == EAGAIN && pid_ > 0) ::kill(pid_, SIGKILL);  // Our unreaped child.
  }
  return ok;
}

bool GuardLink::sync(const std::vector<Entry>& table) {
  if (!link_ || releasing_) return true;
  std::map<std::uint64_t, bool> present;
  for (const Entry& e : table) {
    present[e.generation.number] = true;
    auto it = told_.find(e.generation.number);
    if (it != told_.end() && it->second == e.generation) continue;
    const bool fresh = it == told_.end();
    std::vector<int> fds;
    if (fresh && e.output_fd >= 0) fds.push_back(e.output_fd);
    if (!send({{"op", "generation"}, {"generation", to_json(e.generation)}}, fds)) return false;
    told_[e.generation.number] = e.generation;
  }
  for (auto it = told_.begin(); it != told_.end();) {
    if (present.count(it->first) != 0) {
      ++it;
      continue;
    }
    if (!send({{"op", "gone"}, {"number", it->first}})) return false;
    it = told_.erase(it);
  }
  return true;
}

void GuardLink::release(std::function<void()> done) {
  restart_timer_.stop();
  if (pid_ <= 0) {
    done();
    return;
  }
  releasing_ = true;
  released_ = std::move(done);
  (void)send({{"op", "release"}});
  link_.reset();
  release_timer_.start(kReleaseWait, [this] {
    log_warn("the guard (pid {}) did not exit within {} of its release", pid_, format_duration(kReleaseWait));
    if (auto then = std::move(released_)) then();
  });
}

void GuardLink::on_exit(pid_t pid, ExitStatus status) {
  if (pid != pid_) return;
  pid_ = 0;
  link_.reset();
  told_.clear();
  if (releasing_) {
    release_timer_.stop();
    if (auto then = std::move(released_)) then();
    return;
  }
  log_warn("the guard (pid {}) {}; starting another in {}", pid, status.describe(), format_duration(kRestartDelay));
  restart_timer_.start(kRestartDelay, [this] {
    if (auto ok = start(); !ok) log_error("{}; the supervisor serves on without one", ok.error().text());
  });
}

}  // namespace hotrestart
