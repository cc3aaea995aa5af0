// The supervisor's rooms, each on its own: a generation's lifecycle table, the state broker's
// planning, crash restart backoff, notify senders, and the upgrade driver's input queue.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "control_server.h"
#include "crash_restarts.h"
#include "generation.h"
#include "notify_socket.h"
#include "preflight.h"
#include "state_broker.h"
#include "upgrade_driver.h"

using namespace hotrestart;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

constexpr GenerationState kStates[] = {GenerationState::Starting, GenerationState::Ready, GenerationState::Draining,
                                       GenerationState::Exited};

GenerationFacts facts(std::uint64_t n, bool sdk, GenerationState state, bool channel_open = true) {
  return {n, sdk, channel_open, state};
}

}  // namespace

TEST_CASE("generation lifecycle: the table allows exactly the documented transitions") {
  using S = GenerationState;
  const std::vector<std::pair<S, S>> allowed = {
      {S::Starting, S::Ready}, {S::Starting, S::Draining}, {S::Starting, S::Exited}, {S::Ready, S::Draining},
      {S::Ready, S::Exited},   {S::Draining, S::Exited},   {S::Draining, S::Ready}};
  for (S from : kStates) {
    for (S to : kStates) {
      const bool expected = std::find(allowed.begin(), allowed.end(), std::pair{from, to}) != allowed.end();
      INFO(generation_state_name(from), " -> ", generation_state_name(to));
      CHECK(transition_allowed(from, to) == expected);
    }
  }
  // Nothing leaves exited, and nothing goes back to starting.
  CHECK(generation_state_name(GenerationState::Draining) == "draining");
  CHECK(transition_allowed(SdkState::None, SdkState::Importing));
  CHECK(transition_allowed(SdkState::Importing, SdkState::Serving));
  CHECK_FALSE(transition_allowed(SdkState::None, SdkState::Serving));
  CHECK_FALSE(transition_allowed(SdkState::Serving, SdkState::Importing));
  CHECK_FALSE(transition_allowed(SdkState::Importing, SdkState::Importing));
}

TEST_CASE("state broker plan: from the previous generation when it speaks the SDK and serves") {
  const std::vector<GenerationFacts> gens = {facts(1, true, GenerationState::Ready),
                                             facts(2, true, GenerationState::Starting)};
  const TransferPlan plan = plan_transfer(gens, 1, 2);
  CHECK(plan.kind == TransferPlan::Kind::FromSource);
  CHECK(plan.generation == 1);
}

TEST_CASE("state broker plan: the new generation starts cold, and the note says why") {
  SUBCASE("no previous generation") {
    const std::vector<GenerationFacts> gens = {facts(2, true, GenerationState::Starting)};
    const TransferPlan plan = plan_transfer(gens, 0, 2);
    CHECK(plan.kind == TransferPlan::Kind::Cold);
    CHECK(plan.note == "no previous generation is running");
  }
  SUBCASE("the previous generation has exited meanwhile") {
    const std::vector<GenerationFacts> gens = {facts(2, true, GenerationState::Starting)};
    CHECK(plan_transfer(gens, 1, 2).note == "no previous generation is running");
  }
  SUBCASE("the previous generation does not use the SDK, or closed its channel") {
    std::vector<GenerationFacts> gens = {facts(1, false, GenerationState::Ready),
                                         facts(2, true, GenerationState::Starting)};
    CHECK(plan_transfer(gens, 1, 2).note == "generation 1 does not use the SDK");
    gens[0] = facts(1, true, GenerationState::Ready, false);
    CHECK(plan_transfer(gens, 1, 2).note == "generation 1 does not use the SDK");
  }
  SUBCASE("the previous generation is not serving yet") {
    const std::vector<GenerationFacts> gens = {facts(1, true, GenerationState::Starting),
                                               facts(2, true, GenerationState::Starting)};
    const TransferPlan plan = plan_transfer(gens, 1, 2);
    CHECK(plan.kind == TransferPlan::Kind::Cold);
    CHECK(plan.note == "generation 1 is not serving");
  }
  SUBCASE("a draining source (a revert's) still holds its state") {
    const std::vector<GenerationFacts> gens = {facts(1, true, GenerationState::Draining),
                                               facts(3, true, GenerationState::Starting)};
    const TransferPlan plan = plan_transfer(gens, 1, 3);
    CHECK(plan.kind == TransferPlan::Kind::FromSource);
    CHECK(plan.generation == 1);
  }
}

TEST_CASE("state broker plan: waits for an older SDK generation that still drains into the source") {
  std::vector<GenerationFacts> gens = {facts(1, true, GenerationState::Draining),
                                       facts(2, true, GenerationState::Ready),
                                       facts(3, true, GenerationState::Starting)};
  TransferPlan plan = plan_transfer(gens, 2, 3);
  CHECK(plan.kind == TransferPlan::Kind::WaitForDrain);
  CHECK(plan.generation == 1);
  // A draining generation without the SDK streams nothing; one newer than the source is not its
  // predecessor; and a source without the SDK has nothing to wait for.
  gens[0].sdk = false;
  CHECK(plan_transfer(gens, 2, 3).kind == TransferPlan::Kind::FromSource);
  gens[0] = facts(4, true, GenerationState::Draining);
  CHECK(plan_transfer(gens, 2, 3).kind == TransferPlan::Kind::FromSource);
  gens = {facts(1, true, GenerationState::Draining), facts(2, false, GenerationState::Ready),
          facts(3, true, GenerationState::Starting)};
  plan = plan_transfer(gens, 2, 3);
  CHECK(plan.kind == TransferPlan::Kind::Cold);
  CHECK(plan.note == "generation 2 does not use the SDK");
}

TEST_CASE("--state-required: the first required section that was not imported, and why") {
  Transfer t;
  t.to = 5;
  t.plan = {{"cache", {1}, false}, {"sessions", {1}, false}};
  t.imported = {{"cache", true, 1, 10, 1, ""}, {"sessions", false, 0, 0, 1, "no common schema version"}};
  CHECK_FALSE(missing_required_section({}, t).has_value());
  CHECK_FALSE(missing_required_section({"cache"}, t).has_value());
  CHECK(missing_required_section({"cache", "sessions"}, t) ==
        "required section 'sessions' was not imported: no common schema version");
  CHECK(missing_required_section({"tokens"}, t) ==
        "required section 'tokens' was not imported: generation 5 does "
        "not import it");
  t.imported.pop_back();
  CHECK(missing_required_section({"sessions"}, t) == "required section 'sessions' was not imported: it was not sent");
  t.note = "generation 4 is not serving";
  CHECK(missing_required_section({"sessions"}, t) ==
        "required section 'sessions' was not imported: generation 4 is not serving");
}

TEST_CASE("a hello outside an upgrade gets a begin-import whose note says why no state comes") {
  ReadyMode ready;
  CHECK(cold_start_note(facts(1, true, GenerationState::Starting), 1, ready) == "first generation");
  CHECK(cold_start_note(facts(4, true, GenerationState::Starting), 1, ready) == "no previous generation is running");
  CHECK(cold_start_note(facts(4, true, GenerationState::Starting), 2, ready) ==
        "started outside an upgrade (after a crash): no state is moved");
  CHECK(cold_start_note(facts(4, true, GenerationState::Ready), 2, ready)
            .starts_with("generation 4 reported ready (--ready notify) before it said hello"));
}

TEST_CASE("crash restarts back off from 100 ms to 10 s, and start over after a healthy run") {
  RestartBackoff backoff;
  CHECK(backoff.next(0s) == 100ms);
  CHECK(backoff.next(1s) == 200ms);
  CHECK(backoff.next(0s) == 400ms);
  for (int i = 0; i < 10; ++i)
    backoff.next(0s);
  CHECK(backoff.next(0s) == 10'000ms);
  CHECK(backoff.next(10s) == 100ms);  // It served 10 s: healthy.
  CHECK(backoff.next(0s) == 200ms);
  backoff.reset();
  CHECK(backoff.next(0s) == 100ms);
}

TEST_CASE("notify senders: a generation's main process, its descendants, and its process group") {
  const pid_t self = ::getpid();
  const pid_t parent = ::getppid();
  // This process stands for a helper started by generation 7's main process (our parent).
  auto parent_is_7 = [&](pid_t pid) -> std::uint64_t { return pid == parent ? 7 : 0; };
  CHECK(find_sender_generation(self, false, parent_is_7) == 7);
  CHECK(parent_of(self) == parent);
  auto self_is_3 = [&](pid_t pid) -> std::uint64_t { return pid == self ? 3 : 0; };
  CHECK(find_sender_generation(self, false, self_is_3) == 3);
  auto nobody = [](pid_t) -> std::uint64_t { return 0; };
  CHECK(find_sender_generation(self, true, nobody) == 0);
  CHECK(find_sender_generation(0, true, self_is_3) == 0);

  // A child in a process group of its own, led by a process that is not its ancestor: found by
  // group only when the group counts.
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t leader = ::fork();
  if (leader == 0) {
    ::setpgid(0, 0);
    const pid_t member = ::fork();
    if (member == 0) {
      ::pause();
      ::_exit(0);
    }
    // The member joins the group, then both report and wait to be killed.
    const pid_t ids[2] = {::getpid(), member};
    [[maybe_unused]] auto n = ::write(ready[1], ids, sizeof ids);
    ::pause();
    ::_exit(0);
  }
  pid_t ids[2] = {0, 0};
  REQUIRE(::read(ready[0], ids, sizeof ids) == sizeof ids);
  auto leader_is_9 = [&](pid_t pid) -> std::uint64_t { return pid == ids[0] ? 9 : 0; };
  CHECK(find_sender_generation(ids[1], true, leader_is_9) == 9);  // Its parent is the leader too.
  ::kill(-ids[0], SIGKILL);
  ::waitpid(leader, nullptr, 0);
  ::close(ready[0]);
  ::close(ready[1]);
}

namespace {

// A supervisor with no sockets: real generations (short-lived /bin/sleep processes), a loop of its
// own, and an upgrade driver fed by hand.
class DriverBench final : public Generation::Events, public UpgradeDriver::Host {
 public:
  DriverBench() {
    uv_loop_init(&loop_);
    options_.ready_timeout = 30s;
    reaper_ = std::make_unique<Reaper>(&loop_);
    control_ = std::make_unique<ControlServer>(
        &loop_, [](ClientId, const ControlRequest&) {}, [](ClientId) {});
    launcher_ = std::make_unique<WorkerLauncher>(listeners_, "/nonexistent/notify", "/nonexistent/control", "");
    context_ = std::make_unique<Generation::Context>(
        Generation::Context{&loop_, *reaper_, options_, listeners_, *launcher_, roster_, nullptr, nullptr});
    driver_ = std::make_unique<UpgradeDriver>(&loop_, options_, *control_, *this);
  }
  ~DriverBench() override {
    driver_.reset();
    for (auto& [n, g] : generations_) {
      const pid_t pid = g->pid();
      g->kill_all();
      ::waitpid(pid, nullptr, 0);  // The loop does not run here, so the reaper never would.
    }
    generations_.clear();
    control_.reset();
    reaper_.reset();
    // Every handle's close callback runs, so that nothing is left allocated.
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }

  UpgradeDriver& driver() { return *driver_; }
  RunOptions& options() { return options_; }

  // Runs the loop until `done` holds, for `deadline` at most; false when it never did.
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds deadline) {
    bool expired = false;
    Timer guard(&loop_);
    guard.start(deadline, [&] { expired = true; });
    // Some conditions (a process reaped by another parent) come with no event on this loop.
    Timer poll(&loop_);
    poll.start_repeating(10ms, [] {});
    while (!done() && !expired)
      uv_run(&loop_, UV_RUN_ONCE);
    return done();
  }

  // Generation::Events
  void on_ready(Generation&) override {}
  void on_ready_timeout(Generation&, const std::string&) override {}
  void on_exit(Generation& g, GenerationState, ExitStatus) override { generations_.erase(g.number()); }
  void on_channel_message(Generation&, wire::Message&, std::vector<Fd>&) override {}
  void on_channel_closed(Generation&) override {}
  void on_channel_broken(Generation&, const std::string&) override {}
  void on_unhealthy(Generation&, HealthFailure, const std::string&) override {}

  // UpgradeDriver::Host
  Generation* generation(std::uint64_t n) override {
    auto it = generations_.find(n);
    return it == generations_.end() ? nullptr : it->second.get();
  }
  std::vector<GenerationFacts> generation_facts() const override { return {}; }
  std::uint64_t active_generation() const override { return active_; }
  std::uint64_t next_generation_number() const override { return next_; }
  std::uint64_t record_release(const UpgradeRequest& request) override {
    commands_.push_back(request.command);
    return commands_.size();
  }
  Result<Generation*> spawn_generation(std::uint64_t release) override {
    ++spawns;
    if (fail_spawn) return Error::message("exec /nonexistent: No such file or directory");
    const auto& command = commands_.at(release - 1);
    auto image = ExecutableImage::open(command.front());
    if (!image) return image.error();
    auto g = Generation::start(*context_, *this, next_,
                               {release, command, std::make_shared<const ExecutableImage>(std::move(image).value())});
    if (!g) return g.error();
    Generation* raw = g.value().get();
    generations_.emplace(next_++, std::move(g).value());
    return raw;
  }
  Result<std::unique_ptr<PreflightCheck>> start_preflight(std::uint64_t release, const std::string& check,
                                                          PreflightCheck::Done done) override {
    const auto& command = commands_.at(release - 1);
    return PreflightCheck::start({&loop_, *reaper_, options_.preflight_timeout}, check,
                                 launcher_->preflight_environment(command, command.front(), release), std::move(done));
  }
  void promote(std::uint64_t generation) override {
    active_ = generation;
    if (feed_inside_promote) {
      // An input produced while an action runs: it must wait for the action to finish.
      driver_->feed(Input::Promoted);
      phase_after_nested_feed = driver_->status_json().value("phase", "");
    }
  }
  StateBroker& broker() override { return broker_; }
  void upgrade_started(std::uint64_t) override {}
  Millis park_for(const Generation&) override { return Millis{0}; }
  bool upgrade_finished(std::uint64_t, bool ok, const std::string& failure) override {
    verdicts.emplace_back(ok, failure);
    return false;
  }
  void wait_for_watch(ClientId) override {}
  void upgrade_reported() override { ++reports; }
  void record_event(nlohmann::json event) override { events.push_back(std::move(event)); }

  bool fail_spawn = false;
  int spawns = 0;
  bool feed_inside_promote = false;
  std::string phase_after_nested_feed;
  std::vector<std::pair<bool, std::string>> verdicts;
  int reports = 0;
  std::vector<nlohmann::json> events;

 private:
  uv_loop_t loop_{};
  RunOptions options_;
  ListenerSet listeners_;
  std::unique_ptr<Reaper> reaper_;
  ProcessRoster roster_{{::getpid(),
                         [](pid_t) { return std::optional<std::uint64_t>(); },
                         [](pid_t) { return false; },
                         [](std::uint64_t) { return std::optional<std::uint64_t>(); },
                         {}}};
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<WorkerLauncher> launcher_;
  std::unique_ptr<Generation::Context> context_;
  StateBroker broker_;
  std::map<std::uint64_t, std::unique_ptr<Generation>> generations_;
  std::uint64_t active_ = 0;
  std::uint64_t next_ = 1;
  std::vector<std::vector<std::string>> commands_;  // Release N's command is commands_[N - 1].
  std::unique_ptr<UpgradeDriver> driver_;
};

UpgradeRequest request_for(std::vector<std::string> command, std::optional<std::string> preflight = std::nullopt) {
  UpgradeRequest request;
  request.command = std::move(command);
  request.preflight = std::move(preflight);
  return request;
}

// True once `pid` is gone and reaped (a zombie still answers kill()).
bool reaped(pid_t pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

}  // namespace

TEST_CASE("upgrade driver: an exec failure rolls back at once with the reason, and the next upgrade can start") {
  DriverBench bench;
  bench.fail_spawn = true;
  bench.driver().begin(request_for({"/nonexistent"}), std::nullopt);
  CHECK_FALSE(bench.driver().in_progress());
  REQUIRE(bench.verdicts.size() == 1);
  CHECK_FALSE(bench.verdicts[0].first);
  CHECK(bench.verdicts[0].second == "exec /nonexistent: No such file or directory");
  CHECK(bench.driver().last_verdict().value("outcome", "") == "rolled-back");
  CHECK(bench.reports == 1);
  // Each phase is an event, and the verdict last, with the reason.
  REQUIRE(bench.events.size() >= 2);
  CHECK(bench.events.front()["type"] == "upgrade.phase");
  CHECK(bench.events.back()["type"] == "upgrade.result");
  CHECK(bench.events.back()["ok"] == false);
  CHECK(bench.events.back()["reason"] == "exec /nonexistent: No such file or directory");
  bench.fail_spawn = false;
  bench.driver().begin(request_for({"/bin/sleep", "30"}), std::nullopt);
  CHECK(bench.driver().in_progress());
  CHECK(bench.driver().status_json().value("phase", "") == "handshake");
}

TEST_CASE("upgrade driver: an input fed while an action runs waits for it, and nothing re-enters the machine") {
  DriverBench bench;
  bench.feed_inside_promote = true;
  bench.driver().begin(request_for({"/bin/sleep", "30"}), std::nullopt);
  REQUIRE(bench.driver().candidate() == 1);
  bench.driver().feed(Input::Ready);  // No SDK: straight to health-checking, then (no --min-ready) cutover.
  // Inside promote() the nested "promoted" was only queued: the machine was still at cutover.
  CHECK(bench.phase_after_nested_feed == "cutover");
  CHECK_FALSE(bench.driver().in_progress());
  REQUIRE(bench.verdicts.size() == 1);
  CHECK(bench.verdicts[0].first);
  CHECK(bench.driver().last_verdict().value("outcome", "") == "done");
  CHECK(bench.active_generation() == 1);
}

TEST_CASE("upgrade driver: a failed preflight ends the upgrade with its output, and nothing is spawned") {
  DriverBench bench;
  bench.driver().begin(request_for({"/bin/sleep", "30"}, "echo checking; echo 'bad directive' >&2; exit 3"),
                       std::nullopt);
  // The check runs on the loop: the upgrade waits in its first phase meanwhile.
  REQUIRE(bench.driver().in_progress());
  const json status = bench.driver().status_json();
  CHECK(status.value("phase", "") == "preflight");
  CHECK(status.value("generation", -1) == 0);
  const pid_t pid = status.value("preflight_pid", 0);
  CHECK(pid > 0);
  REQUIRE(bench.run_until([&] { return !bench.driver().in_progress(); }, 10s));
  CHECK(bench.spawns == 0);
  REQUIRE(bench.verdicts.size() == 1);
  CHECK_FALSE(bench.verdicts[0].first);
  CHECK(bench.verdicts[0].second == "preflight failed (exit status 3): checking | bad directive");
  const json& verdict = bench.driver().last_verdict();
  CHECK(verdict.value("outcome", "") == "rolled-back");
  CHECK(verdict["last_output"] == json::array({"checking", "bad directive"}));
  std::vector<std::string> phases;
  for (const auto& record : verdict["timeline"])
    phases.push_back(record.value("phase", ""));
  CHECK(phases == std::vector<std::string>{"preflight", "rolled-back"});
  CHECK(bench.run_until([&] { return reaped(pid); }, 5s));
  // The next upgrade, with a check that passes, goes on to spawn.
  bench.driver().begin(request_for({"/bin/sleep", "30"}, "test \"$HOTRESTART_RELEASE\" = 2"), std::nullopt);
  REQUIRE(bench.run_until([&] { return bench.driver().status_json().value("phase", "") == "handshake"; }, 10s));
  CHECK(bench.spawns == 1);
  CHECK(bench.driver().candidate() == 1);
}

TEST_CASE("upgrade driver: a preflight past its timeout is killed with its process group and fails naming it") {
  DriverBench bench;
  bench.options().preflight_timeout = 300ms;
  // The shell's child (the sleep) is in its group and must go with it.
  bench.driver().begin(request_for({"/bin/sleep", "30"}, "sleep 30 & wait"), std::nullopt);
  const pid_t pid = bench.driver().status_json().value("preflight_pid", 0);
  REQUIRE(pid > 0);
  REQUIRE(bench.run_until([&] { return !bench.driver().in_progress(); }, 10s));
  REQUIRE(bench.verdicts.size() == 1);
  CHECK(bench.verdicts[0].second ==
        "preflight failed (timed out after 300ms, --preflight-timeout; its process group was killed) with no output");
  CHECK(bench.spawns == 0);
  CHECK(bench.run_until([&] { return ::kill(-pid, 0) != 0; }, 5s));  // Nothing is left in its group.
}

TEST_CASE("upgrade driver: a stop during the preflight ends the upgrade at once and kills the check") {
  DriverBench bench;
  // A run's check applies when the request brings none.
  bench.options().preflight = "sleep 30";
  bench.driver().begin(request_for({"/bin/sleep", "30"}), std::nullopt);
  const pid_t pid = bench.driver().status_json().value("preflight_pid", 0);
  REQUIRE(pid > 0);
  bench.driver().feed(Input::Cancel, "the supervisor is stopping");
  CHECK_FALSE(bench.driver().in_progress());
  REQUIRE(bench.verdicts.size() == 1);
  CHECK(bench.verdicts[0].second == "the supervisor is stopping");
  CHECK(bench.run_until([&] { return reaped(pid); }, 5s));
  CHECK(bench.spawns == 0);
  // An empty check in the request means none, whatever the run's is.
  bench.driver().begin(request_for({"/bin/sleep", "30"}, ""), std::nullopt);
  CHECK(bench.driver().status_json().value("phase", "") == "handshake");
  CHECK(bench.spawns == 1);
}
