// The canary hold (`upgrade --hold D|manual`): both generations serve side by side once the new one
// is healthy; `promote` ends the hold with the cutover, `abort` with a rollback in which the old
// generation never drained, and a timed hold promotes by itself. Clients see no failed request
// whichever way the hold ends.
#include <fmt/format.h>
#include <unistd.h>

#include <future>
#include <map>
#include <set>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

// Waits until the upgrade in progress holds, and returns the status then.
json wait_for_hold(Supervisor& sup) {
  json held;
  const bool holding = wait_until(
      [&] {
        auto s = sup.status();
        if (!s || (*s)["upgrade"].is_null() || (*s)["upgrade"]["phase"] != "holding") return false;
        held = *s;
        return true;
      },
      20s);
  REQUIRE_MESSAGE(holding, "the upgrade never reached the hold\n" << sup.proc().describe());
  return held;
}

const json& generation_in(const json& status, const std::string& role) {
  for (const auto& g : status["generations"]) {
    if (g["role"] == role) return g;
  }
  FAIL("no " << role << " generation in " << status.dump());
  static json none;
  return none;
}

// The versions that answered the requests `load` began after `since`.
std::set<std::string> versions_since(const LoadClient& load, Clock::time_point since) {
  std::set<std::string> out;
  for (const auto& r : load.responses()) {
    if (r.start > since) out.insert(r.version);
  }
  return out;
}

// Did hello-server `version` (pid `pid`) hear the drain signal? Its stderr comes through the
// supervisor's, each line prefixed with its generation.
bool drained(Supervisor& sup, const std::string& version, pid_t pid) {
  return contains(sup.proc().err(), fmt::format("hello-server {} pid {}: draining", version, pid));
}

// A supervisor serving hello-server v1 under keep-alive and new-connection load, and an upgrade to
// v2 with a manual hold, held: both generations have answered requests on new connections.
struct HeldUnderLoad {
  HeldUnderLoad()
      : sup({"--drain-timeout", "10s"}, hello("v1")),
        keepalive(load_config(sup.port(), LoadClient::Mode::KeepAlive, 2)),
        fresh(load_config(sup.port(), LoadClient::Mode::NewConnection, 3)),
        old_pid(sup.active_pid()) {
    keepalive.start();
    fresh.start();
    let_load_run(keepalive, 50);
    let_load_run(fresh, 50);
    upgrade = std::async(std::launch::async, [this] {
      return sup.upgrade({"--hold", "manual", "--", hello_bin(), "--version", "v2"});
    });
    held = wait_for_hold(sup);
    const auto began = Clock::now();
    new_pid = generation_in(held, "candidate")["pid"].get<pid_t>();
    // The kernel hands each new connection to whichever generation's accept takes it first.
    const bool both = wait_until(
        [&] {
          return versions_since(fresh, began) == std::set<std::string>{"v1", "v2"};
        },
        20s);
    CHECK_MESSAGE(both, "during the hold, not both generations answered: " << fresh.summary());
  }

  // Lets the load run on after the hold ended, stops it, and checks that no request failed.
  void finish_load() {
    let_load_run(keepalive, 50);
    let_load_run(fresh, 50);
    keepalive.stop();
    fresh.stop();
    require_no_failures(keepalive, "keep-alive clients");
    require_no_failures(fresh, "new-connection clients");
  }

  // First, so that it is destroyed last: a failed check leaves the hold to the supervisor's stop,
  // which ends the upgrade this waits for.
  std::future<RunResult> upgrade;
  Supervisor sup;
  LoadClient keepalive;
  LoadClient fresh;
  pid_t old_pid = 0;
  pid_t new_pid = 0;
  json held;
};

}  // namespace

TEST_CASE("hold: both generations serve during a manual hold, and after promote only the new one, under load") {
  HeldUnderLoad h;
  Supervisor& sup = h.sup;
  CHECK(h.held["upgrade"]["hold"]["mode"] == "manual");
  CHECK(h.held["upgrade"]["hold"]["holding"] == true);
  CHECK(h.held["generations"].size() == 2);
  const json& old = generation_in(h.held, "active");
  CHECK(old["pid"] == h.old_pid);
  CHECK(old["state"] == "ready");  // Serving, not draining.
  // The held release has not served alone yet: it is still starting.
  CHECK(release(history(sup), 2)["outcome"] == "starting");
  RunResult human = sup.cli({"status"}, 10s);
  CHECK_MESSAGE(contains(human.out, "both generations serve until `hotrestart promote`"), human.out);
  // The hold is an upgrade in progress: a second one is refused, and told how to end the hold.
  RunResult second = sup.upgrade_to(hello("v3"));
  CHECK(second.exit_code == 3);
  CHECK_MESSAGE(contains(second.err, "upgrade in progress"), second.err);
  CHECK_MESSAGE(contains(second.err, "hotrestart promote"), second.err);
  CHECK_FALSE(drained(sup, "v1", h.old_pid));

  RunResult promoted = sup.cli({"promote"}, 30s);
  CHECK_MESSAGE(promoted.exit_code == 0, promoted.out << promoted.err);
  CHECK_MESSAGE(contains(promoted.out, fmt::format("promoted: generation 2 (pid {}) serves", h.new_pid)), promoted.out);
  RunResult result = h.upgrade.get();
  CHECK_MESSAGE(result.exit_code == 0, result.out << result.err);
  CHECK(contains(result.out, "holding"));
  CHECK(contains(result.out, "promoted by `hotrestart promote` (uid"));
  CHECK(contains(result.out, "upgrade succeeded"));

  REQUIRE_MESSAGE(wait_until([&] { return !pid_alive(h.old_pid); }, 15s), "the old generation did not exit");
  const auto old_gone = Clock::now();
  CHECK(drained(sup, "v1", h.old_pid));
  CHECK(sup.active_pid() == h.new_pid);
  h.finish_load();
  CHECK(versions_since(h.fresh, old_gone) == std::set<std::string>{"v2"});
  CHECK(versions_since(h.keepalive, old_gone) == std::set<std::string>{"v2"});
  const json releases = history(sup);
  CHECK(release(releases, 2)["outcome"] == "serving");
  CHECK(release(releases, 1)["outcome"] == "retired");
  CHECK(sup.status_or_fail()["counters"]["upgrades_done"] == 1);
  sup.stop();
}

TEST_CASE("hold: abort rolls back to the old generation, which never drained, under load") {
  HeldUnderLoad h;
  Supervisor& sup = h.sup;
  RunResult aborted = sup.cli({"abort"}, 30s);
  CHECK_MESSAGE(aborted.exit_code == 0, aborted.out << aborted.err);
  CHECK_MESSAGE(
      contains(aborted.out, fmt::format("rolled back: aborted by `hotrestart abort` (uid {}, pid ", ::getuid())),
      aborted.out);
  CHECK_MESSAGE(contains(aborted.out, fmt::format("generation 1 (pid {}) still serves", h.old_pid)), aborted.out);
  RunResult result = h.upgrade.get();
  CHECK_MESSAGE(result.exit_code == 1, result.out << result.err);
  CHECK_MESSAGE(contains(result.err, "upgrade failed"), result.err);
  CHECK_MESSAGE(contains(result.err, "aborted by `hotrestart abort`"), result.err);
  // `abort` answers once the new generation is gone.
  CHECK_FALSE(pid_alive(h.new_pid));
  const auto new_gone = Clock::now();

  // The old generation is the one that served all along: same process, never told to drain.
  CHECK(sup.active_pid() == h.old_pid);
  CHECK(sup.active_state() == "ready");
  CHECK_FALSE(contains(result.out, "draining generation 1"));
  CHECK_FALSE(drained(sup, "v1", h.old_pid));
  CHECK(drained(sup, "v2", h.new_pid));
  h.finish_load();
  CHECK(versions_since(h.fresh, new_gone) == std::set<std::string>{"v1"});
  CHECK(versions_since(h.keepalive, new_gone) == std::set<std::string>{"v1"});

  const json releases = history(sup);
  CHECK(release(releases, 2)["outcome"] == "rolled-back");
  const std::string reason = release(releases, 2)["reason"];
  CHECK_MESSAGE(contains(reason, fmt::format("aborted by `hotrestart abort` (uid {}, pid ", ::getuid())), reason);
  CHECK(release(releases, 1)["outcome"] == "serving");
  json status = sup.status_or_fail();
  CHECK(status["counters"]["upgrades_rolled_back"] == 1);
  CHECK(status["last_upgrade"]["outcome"] == "rolled-back");

  // An aborted hold leaves the supervisor ready for the next upgrade.
  RunResult next = sup.upgrade_to(hello("v3"));
  CHECK_MESSAGE(next.exit_code == 0, next.out << next.err);
  sup.stop();
}

TEST_CASE("hold: the new generation exiting during the hold rolls back and leaves only the old one") {
  Supervisor sup({"--drain-timeout", "10s"}, hello("v1"));
  const pid_t old_pid = sup.active_pid();
  auto upgrade = std::async(std::launch::async, [&] {
    return sup.upgrade({"--hold", "manual", "--", hello_bin(), "--version", "v2"});
  });
  const json held = wait_for_hold(sup);
  const pid_t new_pid = generation_in(held, "candidate")["pid"].get<pid_t>();
  REQUIRE(::kill(new_pid, SIGKILL) == 0);

  RunResult result = upgrade.get();
  CHECK_MESSAGE(result.exit_code == 1, result.out << result.err);
  CHECK_MESSAGE(
      contains(result.err, fmt::format("generation 2 (pid {}) was killed by SIGKILL during the hold", new_pid)),
      result.err);
  CHECK(sup.active_pid() == old_pid);
  CHECK_FALSE(drained(sup, "v1", old_pid));
  CHECK(wait_until([&] { return sup.processes() == std::set<pid_t>{old_pid}; }, 10s));
  for (int i = 0; i < 5; ++i)
    CHECK(contains(http_get(sup.port(), "/"), "version=v1"));
  // The hold ended with the upgrade: there is nothing left to promote.
  RunResult late = sup.cli({"promote"}, 10s);
  CHECK(late.exit_code == 3);
  CHECK(release(history(sup), 2)["outcome"] == "rolled-back");
  sup.stop();
}

TEST_CASE("hold: a timed hold promotes by itself once its time has passed") {
  Supervisor sup({"--drain-timeout", "10s"}, hello("v1"));
  const pid_t old_pid = sup.active_pid();
  RunResult r = sup.upgrade({"--json", "--hold", "1s", "--", hello_bin(), "--version", "v2"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  const std::vector<json> lines = json_lines(r.out);
  std::vector<std::string> phases;
  json hold_event;
  for (const auto& l : lines) {
    if (l["type"] != "event") continue;
    if (phases.empty() || phases.back() != l["phase"]) phases.push_back(l["phase"]);
    if (l["phase"] == "holding" && hold_event.is_null()) hold_event = l;
  }
  const std::vector<std::string> expected = {"spawning",     "handshake", "health-checking", "holding", "cutover",
                                             "draining-old", "done"};
  CHECK(phases == expected);
  REQUIRE(hold_event.is_object());
  CHECK(hold_event["hold"]["mode"] == "timed");
  CHECK(hold_event["hold"]["duration_ms"] == 1000);
  CHECK(hold_event["hold"]["ends_at_ms"].is_number());
  CHECK(contains(hold_event["message"], "both serve for 1s, until "));
  CHECK(contains(hold_event["message"], "`hotrestart abort`"));
  const json& result = lines.back();
  CHECK(result["ok"] == true);
  std::map<std::string, std::int64_t> at;
  for (const auto& p : result["timeline"])
    at[p["phase"]] = p["at_ms"];
  // The timer runs on the loop's clock, which may lag the machine's by a few milliseconds.
  CHECK(at["cutover"] - at["holding"] >= 950);
  CHECK(wait_until([&] { return !pid_alive(old_pid); }, 15s));
  CHECK(contains(http_get(sup.port(), "/"), "version=v2"));
  sup.stop();
}

TEST_CASE("hold: promote and abort with no hold in progress exit 3 and say why") {
  Supervisor sup({"--min-ready", "2s"}, hello("v1"));
  for (const char* command : {"promote", "abort"}) {
    RunResult r = sup.cli({command}, 10s);
    CHECK(r.exit_code == 3);
    CHECK_MESSAGE(contains(r.err, fmt::format("no upgrade is in progress, so there is no hold to {}", command)), r.err);
  }
  // An upgrade without --hold never holds: abort does not cut it short.
  auto upgrade = std::async(std::launch::async, [&] { return sup.upgrade_to(hello("v2")); });
  REQUIRE(wait_until(
      [&] {
        auto s = sup.status();
        return s && !(*s)["upgrade"].is_null() && (*s)["upgrade"]["phase"] == "health-checking";
      },
      15s));
  RunResult r = sup.cli({"abort"}, 10s);
  CHECK(r.exit_code == 3);
  CHECK_MESSAGE(contains(r.err, "is in phase health-checking, not holding"), r.err);
  CHECK_MESSAGE(contains(r.err, "without --hold"), r.err);
  RunResult done = upgrade.get();
  CHECK_MESSAGE(done.exit_code == 0, done.out << done.err);
  // And a bad --hold is a usage error that says how to write one.
  RunResult bad = sup.upgrade({"--hold", "soon"});
  CHECK(bad.exit_code == 2);
  CHECK_MESSAGE(contains(bad.err, "manual"), bad.err);
  sup.stop();
}
