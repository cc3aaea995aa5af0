// The supervisor's part in its own death and replacement: taking over what a supervisor that
// died left (takeover.h), the SDK workers that connect again, `upgrade --self` (self_upgrade.h),
// and the pids named when a port is taken (port_holders.h).
#include "supervisor.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <fmt/format.h>

#include <hotrestart/base/text.h>

#include "log.h"
#include "port_holders.h"
#include "self_upgrade.h"
#include "signals.h"
#include "takeover.h"

namespace hotrestart {

using json = nlohmann::json;

void Supervisor::on_self_upgrade(ClientId client, const ControlRequest& request) {
  const auto refuse = [&](std::string_view code, const std::string& why) {
    log_warn("upgrade --self refused: {}", why);
    control_->send(client, control_error(code, why), AfterSend::Close);
  };
  if (stopping_) return refuse("stopping", "the supervisor is stopping");
  if (upgrade_->in_progress()) return refuse("busy", upgrade_->busy_reason());
  if (resuming_ != 0 || reverting_) return refuse("busy", "a revert is under way; try again once it is done");
  // The new image reads the environment files again (they are in its command line): one that no
  // longer reads would stop it at its start, so the old one refuses now, with the reason.
  if (options_.worker_env) {
    if (auto env = base_worker_environment(options_.environment, own_environment()); !env)
      return refuse("failed", fmt::format("the new supervisor was not started: {}", env.error().text()));
  }
  const std::string path = request.exec.value_or(own_executable_);
  auto checked = check_new_supervisor(path);
  if (!checked) return refuse("failed", fmt::format("the new supervisor was not started: {}", checked.error().text()));
  // The descriptor of this binary, kept open across the exec (no close-on-exec), to come back to.
  Fd old_exe(::open("/proc/self/exe", O_PATH));
  if (!old_exe)
    return refuse("failed", fmt::format("cannot keep this binary to come back to: {}", std::strerror(errno)));
  log_info("upgrade --self: {} ({}) replaces this supervisor in place, pid {}; the guard holds everything meanwhile",
           path, checked.value(), ::getpid());
  // Sent before the exec: a small answer goes straight into the socket's buffer.
  control_->send(client,
                 json{{"v", kControlProtocolVersion},
                      {"type", "self-upgrade"},
                      {"pid", ::getpid()},
                      {"exec", path},
                      {"checked", checked.value()}},
                 AfterSend::KeepOpen);
  systemd_.notify(fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=upgrading the supervisor", uv_hrtime() / 1000));
  std::vector<std::string> extra = {fmt::format("{}={}", kSelfUpgradeFrom, old_exe.get())};
  for (std::string& e : systemd_.environment())
    extra.push_back(std::move(e));
  const Error failed = exec_supervisor(path, options_.argv, extra);
  // Still here: nothing was closed, and this supervisor goes on.
  systemd_.notify("READY=1\nSTATUS=serving");
  last_error_.note(fmt::format("upgrade --self: {}", failed.text()));
  log_error("upgrade --self: {}; this supervisor goes on", failed.text());
}

void Supervisor::on_rejoin() {
  for (;;) {
    Fd conn(::accept4(rejoin_listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn) return;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) continue;
    // Only the main process of a generation taken over, whose channel died with its supervisor.
    Generation* g = nullptr;
    for (auto& [n, gen] : generations_)
      if (gen->adopted() && gen->pid() == cred.pid && !gen->channel().open() && gen->state() != GenerationState::Exited)
        g = gen.get();
    if (g == nullptr) {
      log_warn("pid {} connected to the rejoin socket, but it is the main process of no generation taken over; closed",
               cred.pid);
      continue;
    }
    log_info("generation {} (pid {}) connected its channel again", g->number(), g->pid());
    g->attach_channel(std::move(conn));
  }
}

Status Supervisor::take_over(Inheritance& in) {
  std::uint64_t highest = 0;
  bool active_seen = false;
  for (auto& inherited : in.generations) {
    const GuardGeneration& f = inherited.facts;
    if (generations_.count(f.number) != 0) {
      log_warn("generation {} is listed twice by what supervisor pid {} left; the second is ignored", f.number,
               in.supervisor);
      continue;
    }
    highest = std::max(highest, f.number);
    Generation::Plan plan = plan_to_take_over(f.release);
    // One active generation at most; any other that says it is one is drained like a candidate.
    const bool serving = f.role == GuardRole::Active && !active_seen;
    // A deadline no later than a drain timeout from now, whatever the table says.
    const auto latest = Clock::now() + options_.drain_timeout;
    const auto said = Clock::time_point(std::chrono::nanoseconds(f.kill_at_ns));
    const auto kill_at = f.kill_at_ns > 0 && said < latest ? said : latest;
    auto g = Generation::adopt(*context_, *this, f.number, plan, f.pid, f.start, std::move(inherited.output), serving,
                               kill_at);
    // Not taken over, and the guard not told so: it guards on, and this `run` says why.
    if (!g) return g.error().context(fmt::format("cannot take over generation {} (pid {})", f.number, f.pid));
    if (!g.value()) {
      log_info("generation {} (pid {}) has exited; nothing to take over of it", f.number, f.pid);
      continue;
    }
    log_info("took over generation {} (pid {}, release {}) from {}: {}", f.number, f.pid, f.release,
             in.supervisor == ::getpid() ? std::string("this supervisor's previous image")
                                         : fmt::format("supervisor pid {}, which died", in.supervisor),
             serving ? std::string("it serves")
                     : fmt::format("it drains, SIGKILL in {}",
                                   format_duration(std::chrono::duration_cast<Millis>(kill_at - Clock::now()))));
    if (serving) {
      active_seen = true;
      active_ = f.number;
      current_ = plan;
    } else {
      // Asked again: whether the drain request of the supervisor that died arrived is unknown, and a
      // candidate its guard could not drain must not serve on its own authority.
      signal_process({f.pid, 0, f.pid, 0, '?', f.start}, f.drain_signal);
    }
    generations_.emplace(f.number, std::move(g).value());
  }
  next_generation_ = std::max(next_generation_, highest + 1);
  for (const Release& r : releases_->history().releases())
    next_generation_ = std::max(next_generation_, r.generation + 1);
  // This supervisor's own guard knows everything before the old one lets go.
  sync_guard();
  if (auto ok = confirm_takeover(in); !ok) log_warn("could not tell the old guard: {}", ok.error().text());
  if (active_ == 0) return {};
  if (current_.release != 0 && releases_->history().serving_again(current_.release)) {
    last_proven_release_ = current_.release;
    releases_->save();
  }
  if (current_.command != options_.command && !options_.command.empty()) {
    log_info("this run's command ({}) is not what generation {} runs ({}): `hotrestart upgrade -- COMMAND` deploys it",
             shell_words(options_.command), active_, shell_words(current_.command));
  }
  systemd_.ready_once(fmt::format("READY=1\nSTATUS=generation {} serving (taken over)", active_));
  return {};
}

Generation::Plan Supervisor::plan_to_take_over(std::uint64_t release) {
  const Release* r = releases_->history().find(release);
  if (r == nullptr) {
    log_warn("release {} is not in the history of {}; a crash restart runs this run's command", release,
             releases_->dir());
    auto plan = plan_for(record_release({options_.command, ReleaseOrigin::Run, -1, -1, 0, nullptr, {}}));
    return plan ? std::move(plan).value() : Generation::Plan{release, options_.command, nullptr};
  }
  if (auto image = image_to_run_again(*r, releases_->pinned(release)))
    return {release, r->command, releases_->pin(release, std::move(image).value())};
  if (auto plan = plan_for(release)) return std::move(plan).value();
  log_warn("release {}'s executable cannot be opened again: a crash restart of it fails until an upgrade", release);
  return {release, r->command, nullptr};
}

Error Supervisor::with_port_holders(const Error& error) const {
  if (error.code() != EADDRINUSE) return error;
  std::string held;
  for (const ListenSpec& spec : options_.listen) {
    if (spec.kind != ListenSpec::Kind::Tcp || spec.port == 0) continue;
    const auto holders = port_holders(spec.port);
    if (!holders.empty())
      held += fmt::format("{}port {} is held by {}", held.empty() ? "" : "; ", spec.port, describe(holders));
  }
  if (held.empty()) return error;
  return Error::message(fmt::format("{}: {}", error.text(), held));
}

}  // namespace hotrestart
