// The coordinator's part in releases: the requests that deploy one (upgrade, rollback), the revert
// of one that failed in its watch window, the history's records of what each generation runs, and
// what `status --check` reports (see supervisor.h; the history itself is releases.h and
// release_store.h).
#include "supervisor.h"

#include <fmt/format.h>

#include <hotrestart/base/text.h>

#include "log.h"

namespace hotrestart {
namespace {

using nlohmann::json;

// An upgrade (or rollback) as the control request `request` asks for it: who asked, --wait, --hold,
// --preflight.
UpgradeRequest requested_by(const ControlRequest& request, ReleaseOrigin origin) {
  UpgradeRequest upgrade;
  upgrade.origin = origin;
  upgrade.uid = request.peer_uid;
  upgrade.pid = request.peer_pid;
  upgrade.wait = request.wait;
  upgrade.hold = request.hold;
  upgrade.preflight = request.preflight;
  return upgrade;
}

// Records in `r` what `image` is: its path and hash, and a script's interpreter.
void describe_executable(Release& r, const ExecutableImage& image) {
  r.executable = image.path();
  r.sha256 = image.sha256();
  r.interpreter = image.interpreter();
  r.interpreter_sha256 = image.interpreter_sha256();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Deploying: upgrade and rollback requests, and the revert

void Supervisor::on_upgrade_request(ClientId client, const ControlRequest& request) {
  std::vector<std::string> command = current_.command;
  if (request.exec) command.front() = *request.exec;
  if (request.argv) command = *request.argv;
  UpgradeRequest upgrade = requested_by(request, ReleaseOrigin::Upgrade);
  upgrade.command = std::move(command);
  auto path = launcher_->resolve(upgrade.command);
  if (!path) {
    // A command that cannot be found fails at spawn, with the upgrade's usual verdict.
    upgrade_->begin(std::move(upgrade), client);
    return;
  }
  // The executable is opened (and hashed) before the spawn, to compare it with the releases that
  // were reverted; the spawn then runs this very file.
  const bool force = request.force;
  read_then_begin(
      path.value(), client, [file = path.value()]() -> ImageResult { return ExecutableImage::open_shared(file); },
      [this, client, force, upgrade](ImageResult image) mutable {
        if (!image) {
          upgrade_->begin(std::move(upgrade), client);  // Fails at spawn, as above.
          return;
        }
        if (!force) {
          // What the upgrade would run, as a release: the same command line from the same bytes as
          // a reverted one is refused, unless that is what serves now (a revert brought it back).
          Release wanted;
          wanted.command = upgrade.command;
          describe_executable(wanted, **image);
          const Release* active = releases_->history().find(current_.release);
          const auto& all = releases_->history().releases();
          for (auto r = all.rbegin(); r != all.rend(); ++r) {
            if (r->outcome != ReleaseOutcome::Reverted || !r->runs_the_same_as(wanted)) continue;
            if (active != nullptr && active->runs_the_same_as(wanted)) break;
            control_->send(
                client,
                control_error("reverted",
                              fmt::format("release {} ran this command line from the same executable "
                                          "({}, sha256 {}) and was reverted: {}; upgrade with --force to "
                                          "run it again",
                                          r->number, (*image)->path(), (*image)->sha256().substr(0, 12), r->reason)),
                AfterSend::Close);
            return;
          }
        }
        upgrade.image = std::move(image).value();
        upgrade_->begin(std::move(upgrade), client);
      });
}

void Supervisor::read_then_begin(std::string path, std::optional<ClientId> client, std::function<ImageResult()> read,
                                 std::function<void(ImageResult)> begin) {
  auto result = std::make_shared<ImageResult>(Error::message("not read"));
  reading_path_ = std::move(path);
  reading_since_ = Clock::now();
  auto finish = [this, client, result, begin] {
    reading_path_.clear();
    std::string why_not;
    if (stopping_) {
      why_not = "the supervisor began to stop; the upgrade did not start";
    } else if (auto busy = upgrade_busy_reason(); !busy.empty()) {
      why_not = busy;  // A revert began meanwhile.
    }
    if (why_not.empty()) {
      begin(std::move(*result));
    } else if (client) {
      control_->send(*client, control_error(stopping_ ? "stopping" : "busy", why_not), AfterSend::Close);
    } else {
      log_warn("the upgrade did not start: {}", why_not);
    }
  };
  if (const int rc = reading_image_->start([result, read] { *result = read(); }, finish); rc != 0) {
    log_warn("cannot read {} off the loop ({}); reading it here", reading_path_, uv_strerror(rc));
    *result = read();
    finish();
  }
}

void Supervisor::on_rollback_request(ClientId client, const ControlRequest& request) {
  const ReleaseHistory& history = releases_->history();
  const Release* target = nullptr;
  if (request.to) {
    target = history.find(*request.to);
    std::string why;
    if (target == nullptr) {
      why = fmt::format("release {} is not in the history (see `hotrestart history`)", *request.to);
    } else if (!target->served()) {
      // Back is where things worked: a release that never served, or failed in its watch window, is
      // deployed again deliberately, as an upgrade.
      why = fmt::format(
          "release {} {}: roll back only to a release that served; to run it again, use "
          "`hotrestart upgrade --force -- {}`",
          target->number,
          target->outcome == ReleaseOutcome::Reverted ? "was reverted (" + target->reason + ")"
                                                      : std::string("never served"),
          shell_words(target->command));
    }
    if (!why.empty()) {
      control_->send(client, control_error("unavailable", why), AfterSend::Close);
      return;
    }
  } else {
    target = history.last_good_before(current_.release);
    if (target == nullptr) {
      control_->send(client,
                     control_error("unavailable", fmt::format("no release before release {} served: there is nothing "
                                                              "to roll back to (see `hotrestart history`)",
                                                              current_.release)),
                     AfterSend::Close);
      return;
    }
  }
  UpgradeRequest rollback = requested_by(request, ReleaseOrigin::Rollback);
  rollback.command = target->command;
  rollback.rollback_of = target->number;
  read_then_begin(
      target->executable, client,
      [release = *target, pinned = releases_->pinned(target->number)] { return image_to_run_again(release, pinned); },
      [this, client, rollback](ImageResult image) mutable {
        if (!image) {
          control_->send(client,
                         control_error("unavailable", fmt::format("release {} cannot be run again: {}",
                                                                  rollback.rollback_of, image.error().text())),
                         AfterSend::Close);
          return;
        }
        rollback.image = std::move(image).value();
        upgrade_->begin(std::move(rollback), client);
      });
}

void Supervisor::revert(const std::string& reason) {
  const ReleaseWatch::Watched w = watch_->watched();
  ++counters_.reverts;
  last_revert_ = Clock::now();
  revert_reason_ = fmt::format("release {} was reverted: {}", w.release, reason);
  reverting_ = true;
  end_release(w.release, ReleaseOutcome::Reverted, reason);
  last_error_.note(fmt::format("release {} reverted in its watch window: {}", w.release, reason));
  watch_->end(ReleaseWatch::Ending::Reverted, reason);
  if (!resume_parked(w)) revert_cold(w);
}

bool Supervisor::resume_parked(const ReleaseWatch::Watched& w) {
  Generation* back = find(w.previous_generation);
  if (back == nullptr || !back->parked() || back->release() != w.previous_release) return false;
  // Resuming loses what the reverted generation was told since the cutover; it is taken only when
  // that generation is gone (a crash, a missed watchdog) or holds no state of the SDK's. Otherwise a
  // new generation of the previous release imports the state from it (revert_cold).
  if (const Generation* failing = find(w.generation);
      failing != nullptr && failing->state() != GenerationState::Exited && failing->sdk() != SdkState::None &&
      !failing->hello().exports.empty()) {
    log_info(
        "release {} comes back as a new generation rather than by resuming generation {}: generation {} is "
        "still running and holds state written since the cutover",
        w.previous_release, back->number(), w.generation);
    return false;
  }
  if (!back->resume()) return false;
  resuming_ = back->number();
  resume_of_ = w;
  return true;
}

void Supervisor::finish_resume(Generation& g) {
  const ReleaseWatch::Watched w = resume_of_;
  resuming_ = 0;
  reverting_ = false;
  active_ = g.number();
  g.tell_active();
  sync_guard();
  current_ = {g.release(), g.command(), g.image()};
  restart_timer_->stop();
  const auto since = std::chrono::duration_cast<Millis>(Clock::now() - last_revert_);
  releases_->history().set_outcome(
      g.release(), ReleaseOutcome::Serving,
      fmt::format("serves again: its generation {} was resumed after release {} was reverted", g.number(), w.release),
      wall_clock_ms());
  releases_->save();
  log_info("revert: generation {} (pid {}) of release {} serves again, {} after the revert began", g.number(), g.pid(),
           g.release(), format_duration(since));
  watch_->revert_done(fmt::format("release {} serves again (generation {} resumed)", g.release(), g.number()));
  if (Generation* failing = find(w.generation); failing != nullptr) failing->stop("reverted", Ending::Drain);
  systemd_.notify(
      fmt::format("READY=1\nSTATUS=generation {} serving again (release {} reverted)", g.number(), w.release));
}

void Supervisor::resume_failed(Generation* g, const std::string& why) {
  const ReleaseWatch::Watched w = resume_of_;
  resuming_ = 0;
  last_error_.note(fmt::format("generation {} could not be resumed: {}; release {} starts again instead",
                               w.previous_generation, why, w.previous_release));
  // A resume it takes late must not leave it serving unseen: it drains again (and can still export
  // its state to the new generation meanwhile).
  if (g != nullptr) g->abandon_resume("its resume did not complete in time");
  if (stopping_) return;
  revert_cold(w);
}

void Supervisor::unpark_all(std::string_view why, std::uint64_t keep) {
  for (auto& [n, g] : generations_) {
    if (n != keep && n != resuming_ && g->parked()) g->unpark(why);
  }
}

Millis Supervisor::park_for(const Generation& old) {
  // Parked whenever the new release will be watched, so that a revert has it: when it runs the
  // release a revert goes back to, the revert resumes it; when the revert goes back further (the
  // window of its own release was cut short by this upgrade), it is where the revert's new
  // generation takes the state from, which would otherwise be gone with it.
  const std::uint64_t back_to = revert_target();
  if (!options_.park || options_.watch_window <= Millis{0} || reverting_ || !old.resumable() || back_to == 0 ||
      back_to == current_.release) {
    return Millis{0};
  }
  return options_.watch_window;
}

void Supervisor::revert_cold(const ReleaseWatch::Watched& w) {
  const Release* previous = releases_->history().find(w.previous_release);
  // Read on the loop: a revert must not wait behind anything, and is rare.
  auto image =
      previous != nullptr
          ? image_to_run_again(*previous, releases_->pinned(previous->number))
          : ImageResult(Error::message(fmt::format("release {} is not in the history any more", w.previous_release)));
  if (!image) {
    last_error_.note(fmt::format("release {} cannot come back: {}; release {} is restarted instead", w.previous_release,
                                 image.error().text(), w.release));
    reverting_ = false;
    watch_->revert_done(
        fmt::format("it cannot come back ({}); release {} is restarted instead", image.error().text(), w.release));
    if (active_ == 0) schedule_restart(Clock::duration::zero());
    return;
  }
  // The state comes from whoever still holds it: the reverted generation if it still runs (a failed
  // health check), else the previous one if it is still draining (it may still hold what it had).
  const std::uint64_t state_from = active_ != 0 ? active_ : find(w.previous_generation) ? w.previous_generation : 0;
  UpgradeRequest request;
  request.command = previous->command;
  request.origin = ReleaseOrigin::Revert;
  request.rollback_of = previous->number;
  request.image = std::move(image).value();
  request.state_from = state_from;
  // No preflight check: the release coming back passed its own and served until now, and a revert
  // must not wait on (or be stopped by) a check.
  request.preflight = "";
  upgrade_->begin(std::move(request), std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// The history's records, and what status --check reports

std::uint64_t Supervisor::record_release(const UpgradeRequest& request) {
  Release r;
  r.command = request.command;
  r.origin = request.origin;
  r.uid = request.uid;
  r.pid = request.pid;
  r.rollback_of = request.rollback_of;
  r.started_ms = wall_clock_ms();
  if (request.image) describe_executable(r, *request.image);
  const std::uint64_t number = releases_->history().add(std::move(r)).number;
  if (request.image) releases_->pin(number, request.image);
  releases_->save();
  return number;
}

Result<Generation::Plan> Supervisor::plan_for(std::uint64_t number) {
  Release* r = releases_->history().find(number);
  if (r == nullptr) return Error::message(fmt::format("release {} is not in the history", number));
  std::shared_ptr<const ExecutableImage> image = releases_->pinned(number);
  if (!image) {
    auto path = launcher_->resolve(r->command);
    if (!path) return path.error();
    auto opened = ExecutableImage::open_shared(path.value());
    if (!opened) return opened.error().context("cannot start the worker");
    image = releases_->pin(number, std::move(opened).value());
    describe_executable(*r, *image);
    releases_->save();
  }
  return Generation::Plan{number, r->command, std::move(image)};
}

Supervisor::ImageResult Supervisor::image_to_run_again(const Release& r,
                                                       std::shared_ptr<const ExecutableImage> pinned) {
  if (pinned) {
    if (auto same = pinned->unchanged(); !same) return same.error();
    return pinned;
  }
  if (r.executable.empty()) return Error::message("it never started, so its executable is unknown");
  auto opened = ExecutableImage::open_shared(r.executable);
  if (!opened) {
    return opened.error().context(fmt::format(
        "the supervisor keeps the executables of the last {} releases that served (and of those it ran since it "
        "started) only, and this one's cannot be opened",
        ReleaseStore::kPinned));
  }
  if ((*opened)->sha256() != r.sha256) {
    return Error::message(
        fmt::format("{} has changed since it ran (sha256 {} then, {} now), and this supervisor "
                    "holds no copy of the file that ran",
                    r.executable, r.sha256.substr(0, 12), (*opened)->sha256().substr(0, 12)));
  }
  return opened;
}

void Supervisor::end_release(std::uint64_t number, ReleaseOutcome outcome, std::string reason) {
  if (releases_ && releases_->history().set_outcome(number, outcome, std::move(reason), wall_clock_ms())) {
    releases_->save();
  }
}

json Supervisor::history_json() const {
  json list = json::array();
  for (const auto& r : releases_->history().releases())
    list.push_back(r.to_json());
  return {{"v", kControlProtocolVersion},
          {"type", "history"},
          {"active_release", current_.release},
          {"state", releases_->status_json()},
          {"releases", list}};
}

json Supervisor::health_json() const {
  // In the order `status --check` reports them: the first that applies wins.
  const auto verdict = [](const char* state, std::string reason) {
    return json{{"state", state}, {"ok", std::string_view(state) == "serving"}, {"reason", std::move(reason)}};
  };
  if (stopping_) return verdict("not-serving", "the supervisor is stopping");
  const Generation* active = active_ != 0 ? generations_.at(active_).get() : nullptr;
  // A crash restart is still recovering until it has served as long as the backoff calls healthy.
  const bool restarting =
      active != nullptr && active->number() == restarted_generation_ &&
      (active->state() == GenerationState::Starting || active->served_for() < RestartBackoff::kHealthy);
  if (restart_timer_->active() || restarting) {
    return verdict("crash-looping", fmt::format("the worker crashed and is being restarted ({} crash(es) so far): {}",
                                                counters_.crashes, crash_reason_));
  }
  // A revert is news for a while after it began (at least 10 s, so that a probe sees it), and for
  // as long as the previous release takes to come back.
  const auto news_for = std::max<Clock::duration>(options_.watch_window, std::chrono::seconds(10));
  if (!revert_reason_.empty() && (reverting_ || Clock::now() - last_revert_ < news_for)) {
    return verdict("reverted", revert_reason_);
  }
  if (active == nullptr || active->state() != GenerationState::Ready) {
    return verdict("not-serving",
                   active == nullptr ? "no generation is running" : "the active generation is not ready yet");
  }
  if (!active->health().healthy()) return verdict("unhealthy", active->health().problem());
  return verdict("serving", "");
}

}  // namespace hotrestart
