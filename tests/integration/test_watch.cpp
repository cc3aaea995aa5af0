// The watch window after a cutover, under a real supervisor: a release that crashes, fails its
// health check or stops sending WATCHDOG=1 soon after it took over is reverted to the previous
// release automatically, under load and without a failed request; `upgrade --wait` reports it;
// the reverted release is never restarted and is refused without --force; and `status --check`
// says in its exit code whether the service is up.
#include <fmt/format.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "fixture.h"
#include "releases_support.h"

using namespace hotrestart::it;

namespace {

using Clock = std::chrono::steady_clock;

// Waits until release `number` is the active one and its generation is ready; returns how long
// that took.
Clock::duration wait_for_active_release(Supervisor& sup, std::uint64_t number, std::chrono::milliseconds limit) {
  const auto start = Clock::now();
  const bool back = wait_until(
      [&] {
        auto s = sup.status();
        return s && (*s)["release"] == number && sup.active_state() == "ready";
      },
      limit, 10ms);
  REQUIRE_MESSAGE(back, "release " << number << " never became the active one: " << sup.status_or_fail().dump());
  return Clock::now() - start;
}

int check_exit(Supervisor& sup, std::string* out = nullptr) {
  RunResult r = sup.cli({"status", "--check"}, 10s);
  if (out != nullptr) *out = r.out + r.err;
  return r.exit_code;
}

}  // namespace

TEST_CASE("watch window: with default flags a release that crashes 200 ms after READY is reverted, not restarted") {
  TempDir bins;
  const std::string srv = bins.file("srv");
  install_hello(srv, "one");
  const std::string sha_one = sha256_of(srv);
  Supervisor sup({}, {srv, "--version", "v1"});
  const std::uint16_t port = sup.port();
  MixedLoad load(port, 2);
  LoadClient& keepalive = load.keepalive;
  LoadClient& fresh = load.fresh;
  let_load_run(keepalive, 50);

  // The cutover succeeds (the verdict says so); then the crash, and --wait's exit says what became
  // of the release.
  RunResult up = sup.cli({"upgrade", "--wait", "--", test_worker_bin(), "crash-after-ready", "200"}, 60s);
  CHECK_MESSAGE(up.exit_code == 1, up.out << up.err);
  CHECK_MESSAGE(contains(up.out, "upgrade succeeded"), up.out);
  CHECK_MESSAGE(contains(up.out, "watching release 2"), up.out);
  CHECK_MESSAGE(contains(up.err, "release 2 reverted"), up.err);
  CHECK_MESSAGE(contains(up.err, "SIGABRT"), up.err);
  // --wait returns once the previous release serves again, and says so.
  CHECK_MESSAGE(contains(up.err, "release 1 comes back; release 3 serves again"), up.err);

  // Release 1 came back as release 3, from its own bytes.
  const json back = sup.status_or_fail();
  CHECK(back["release"] == 3);
  CHECK(sup.active_state() == "ready");
  CHECK(running_sha256(sup.active_pid()) == sha_one);
  CHECK(contains(http_get(port, "/"), "version=v1"));
  let_load_run(fresh, 50);
  let_load_run(keepalive, 50);

  json h = history(sup);
  CHECK(release(h, 2)["outcome"] == "reverted");
  CHECK_MESSAGE(contains(release(h, 2)["reason"].get<std::string>(), "SIGABRT"), h.dump());
  CHECK(release(h, 2)["restarts"] == 0);
  CHECK(release(h, 3)["origin"] == "revert");
  CHECK(release(h, 3)["rollback_of"] == 1);
  CHECK(release(h, 3)["outcome"] == "serving");
  CHECK(release(h, 3)["sha256"] == sha_one);
  RunResult human = sup.cli({"history"}, 10s);
  CHECK(contains(human.out, "reverted"));

  // The revert is news for `status --check`, and the bad release never ran again by itself.
  std::string said;
  CHECK(check_exit(sup, &said) == 6);
  CHECK_MESSAGE(contains(said, "reverted"), said);
  json s = sup.status_or_fail();
  CHECK(s["counters"]["restarts"] == 0);
  CHECK(s["counters"]["reverts"] == 1);

  // The same executable again is refused without --force.
  RunResult again = sup.cli({"upgrade", "--", test_worker_bin(), "crash-after-ready", "200"}, 30s);
  CHECK(again.exit_code == 3);
  CHECK_MESSAGE(contains(again.err, "was reverted"), again.err);
  CHECK_MESSAGE(contains(again.err, "--force"), again.err);
  CHECK(sup.status_or_fail()["release"] == 3);
  load.finish();
  sup.stop();
}

TEST_CASE("watch window: a health check that starts failing after cutover reverts, under load") {
  TempDir bins;
  const std::string srv = bins.file("srv");
  install_hello(srv, "one");
  const std::string flag = bins.file("unhealthy");
  // The probe fails for generation N once the file flag.N exists.
  Supervisor sup({"--health", fmt::format("exec:! test -e {}.$HOTRESTART_GENERATION", flag), "--health-interval",
                  "100ms", "--health-failures", "3"},
                 {srv, "--version", "v1"});
  const std::uint16_t port = sup.port();
  MixedLoad load(port, 2);
  LoadClient& keepalive = load.keepalive;
  LoadClient& fresh = load.fresh;
  let_load_run(keepalive, 50);

  RunResult up = sup.upgrade_to({srv, "--version", "v2"});
  REQUIRE_MESSAGE(up.exit_code == 0, up.out << up.err);
  CHECK(contains(http_get(port, "/"), "version=v2"));
  CHECK(check_exit(sup) == 0);
  let_load_run(fresh, 50);

  std::ofstream(flag + ".2") << "sick\n";
  wait_for_active_release(sup, 3, 15s);
  CHECK(contains(http_get(port, "/"), "version=v1"));
  json h = history(sup);
  CHECK(release(h, 2)["outcome"] == "reverted");
  const std::string reason = release(h, 2)["reason"].get<std::string>();
  CHECK_MESSAGE(contains(reason, "failed 3 times in a row"), reason);
  CHECK(release(h, 3)["origin"] == "revert");
  let_load_run(keepalive, 50);
  let_load_run(fresh, 50);
  load.finish();
  sup.stop();
}

TEST_CASE("watch window: a worker that stops sending WATCHDOG=1 is killed and reverted") {
  Supervisor sup({"--watchdog", "300ms"}, {test_worker_bin(), "watchdog", "-1"});
  const pid_t first = sup.active_pid();
  // It pets for 400 ms after READY, then falls silent: a hang, as far as its watchdog can tell.
  RunResult up = sup.cli({"upgrade", "--wait", "--", test_worker_bin(), "watchdog", "400"}, 60s);
  CHECK_MESSAGE(up.exit_code == 1, up.out << up.err);
  CHECK_MESSAGE(contains(up.err, "no WATCHDOG=1"), up.err);
  wait_for_active_release(sup, 3, 15s);
  CHECK(sup.active_pid() != first);  // Started again: the first generation drained at the cutover.
  json h = history(sup);
  CHECK(release(h, 2)["outcome"] == "reverted");
  CHECK(contains(release(h, 2)["reason"].get<std::string>(), "--watchdog 300ms"));
  // The reverted generation was killed, and the one that came back keeps its watchdog fed.
  const json s = sup.status_or_fail();
  CHECK(s["generations"].size() == 1);
  CHECK(s["generations"][0]["health"]["healthy"] == true);

  // The same executable with the command line that serves is no reverted release: upgraded to
  // without --force. Going back to the reverted one is refused: that is a deliberate upgrade.
  RunResult same = sup.upgrade();
  CHECK_MESSAGE(same.exit_code == 0, same.out << same.err);
  RunResult back = sup.cli({"rollback", "--to", "2"}, 10s);
  CHECK(back.exit_code == 3);
  CHECK_MESSAGE(contains(back.err, "release 2 was reverted"), back.err);
  CHECK_MESSAGE(contains(back.err, "hotrestart upgrade --force --"), back.err);
  sup.stop();
}

TEST_CASE("status --check: 0 serving, 4 nothing serves, 5 crash-looping, 7 unhealthy, 8 no supervisor") {
  TempDir bins;
  SUBCASE("serving, then unhealthy after the watch window, then serving again") {
    const std::string flag = bins.file("sick");
    Supervisor sup({"--watch-window", "0s", "--health", fmt::format("exec:! test -e {}", flag), "--health-interval",
                    "100ms", "--health-failures", "2"},
                   hello("v1"));
    CHECK(check_exit(sup) == 0);
    std::ofstream(flag) << "sick\n";
    std::string said;
    CHECK(wait_until([&] { return check_exit(sup, &said) == 7; }, 10s));
    CHECK_MESSAGE(contains(said, "unhealthy"), said);
    CHECK(sup.status_or_fail()["release"] == 1);  // Outside a watch window nothing is reverted.
    std::filesystem::remove(flag);
    CHECK(wait_until([&] { return check_exit(sup) == 0; }, 10s));
    sup.stop();
  }
  SUBCASE("nothing serves while the first generation is not ready") {
    Supervisor sup({"--ready-timeout", "60s"}, {test_worker_bin(), "no-ready"}, false);
    REQUIRE(wait_until([&] { return sup.status().has_value(); }, 10s));
    std::string said;
    CHECK(check_exit(sup, &said) == 4);
    CHECK_MESSAGE(contains(said, "not-serving"), said);
    sup.stop();
  }
  SUBCASE("crash-looping") {
    Supervisor sup({}, {test_worker_bin(), "crash-after-ready", "50"}, false);
    std::string said;
    CHECK(wait_until([&] { return check_exit(sup, &said) == 5; }, 10s));
    CHECK_MESSAGE(contains(said, "crash-looping"), said);
    sup.stop();
  }
  SUBCASE("no supervisor") {
    RunResult r = run({hotrestart_bin(), "status", "--check", "--control", bins.file("nobody.sock")}, {}, 10s);
    CHECK(r.exit_code == 8);
  }
}

TEST_CASE("watch window: a revert goes back to the last release that served through its window") {
  Supervisor sup({}, hello("v1"));
  // v2 takes over, and before its window ends v3 does: v2 never proved itself.
  REQUIRE(sup.upgrade_to(hello("v2")).exit_code == 0);
  RunResult up = sup.cli({"upgrade", "--wait", "--", test_worker_bin(), "crash-after-ready", "200"}, 60s);
  CHECK_MESSAGE(up.exit_code == 1, up.out << up.err);
  CHECK_MESSAGE(contains(up.err, "release 1 comes back"), up.err);
  wait_for_active_release(sup, 4, 15s);
  CHECK(contains(http_get(sup.port(), "/"), "version=v1"));
  json h = history(sup);
  CHECK(release(h, 4)["origin"] == "revert");
  CHECK(release(h, 4)["rollback_of"] == 1);
  sup.stop();
}

namespace {

std::vector<std::string> kv(const std::string& build) {
  return {bin_path("kv-cache-" + build)};
}

// PUT /kv/KEY with curl: the HTTP status.
std::string put(std::uint16_t port, const std::string& key, const std::string& value) {
  RunResult r = run({"curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT",
                     "--data-binary", value, fmt::format("http://127.0.0.1:{}/kv/{}", port, key)},
                    {}, 10s);
  return r.out;
}

}  // namespace

TEST_CASE("watch window: a crash after cutover resumes the previous generation itself, its cache and pid intact") {
  Supervisor sup({"--drain-timeout", "10s"}, kv("v1"));
  const std::uint16_t port = sup.port();
  for (int i = 0; i < 40; ++i)
    REQUIRE(put(port, fmt::format("k{}", i), fmt::format("v1-{}", i)) == "204");
  const pid_t v1_pid = sup.active_pid();
  MixedLoad load(port, 2);
  LoadClient& keepalive = load.keepalive;
  LoadClient& fresh = load.fresh;
  let_load_run(keepalive, 50);

  // Generation 1 drains at the cutover, then waits parked through release 2's watch window.
  RunResult up = sup.cli({"upgrade", "--wait", "--", test_worker_bin(), "crash-after-ready", "200"}, 60s);
  CHECK_MESSAGE(up.exit_code == 1, up.out << up.err);
  CHECK_MESSAGE(contains(up.out, "then keeping it parked for 30s"), up.out);
  CHECK_MESSAGE(contains(up.err, "release 2 reverted"), up.err);

  // Release 1 serves again from the very process that served it: no new release, no new start. And
  // --wait returned only once it did.
  CHECK_MESSAGE(contains(up.err, "release 1 serves again (generation 1 resumed)"), up.err);
  CHECK(sup.status_or_fail()["release"] == 1);
  CHECK(sup.active_state() == "ready");
  json s = sup.status_or_fail();
  CHECK(s["active_generation"] == 1);
  CHECK(sup.active_pid() == v1_pid);
  CHECK(s["counters"]["reverts"] == 1);
  CHECK(s["counters"]["restarts"] == 0);
  for (int i = 0; i < 40; ++i)
    CHECK(http_get(port, fmt::format("/kv/k{}", i)) == fmt::format("v1-{}", i));
  CHECK(put(port, "after", "resumed") == "204");
  CHECK(http_get(port, "/kv/after") == "resumed");
  let_load_run(fresh, 50);
  let_load_run(keepalive, 50);

  json h = history(sup);
  CHECK_MESSAGE(h["releases"].size() == 2, h.dump());
  CHECK(release(h, 2)["outcome"] == "reverted");
  CHECK(release(h, 1)["outcome"] == "serving");
  CHECK_MESSAGE(contains(release(h, 1)["reason"].get<std::string>(), "resumed"), h.dump());
  CHECK(sup.proc().wait_output("generation 1 (pid " + std::to_string(v1_pid) + ") serves again", 5s));

  // The resumed generation upgrades like any other: its state goes to the next one.
  RunResult next = sup.upgrade_to(kv("v2"));
  REQUIRE_MESSAGE(next.exit_code == 0, next.out << next.err);
  CHECK(contains(next.out, "state transfer finished: 1 of 1 section(s) imported"));
  CHECK(http_get(port, "/kv/k7") == "v1-7");
  CHECK(http_get(port, "/kv/after") == "resumed");
  // A release that deployed after the revert serves: the revert is no longer news for probes.
  std::string said;
  CHECK_MESSAGE(check_exit(sup, &said) == 0, said);
  load.finish();
  sup.stop();
}

TEST_CASE("watch window: a failing release that holds newer state is not undone by a resume") {
  // kv-cache v2 takes writes after the cutover, then fails its health check: resuming generation 1
  // would lose them, so release 1 starts again and imports the state from generation 2.
  TempDir dir;
  const std::string flag = dir.file("unhealthy");
  Supervisor sup({"--health", fmt::format("exec:! test -e {}.$HOTRESTART_GENERATION", flag), "--health-interval",
                  "100ms", "--health-failures", "3", "--drain-timeout", "10s"},
                 kv("v1"));
  const std::uint16_t port = sup.port();
  for (int i = 0; i < 20; ++i)
    REQUIRE(put(port, fmt::format("k{}", i), fmt::format("v1-{}", i)) == "204");
  RunResult up = sup.upgrade_to(kv("v2"));
  REQUIRE_MESSAGE(up.exit_code == 0, up.out << up.err);
  for (int i = 20; i < 30; ++i)
    REQUIRE(put(port, fmt::format("k{}", i), fmt::format("v2-{}", i)) == "204");
  json parked = sup.status_or_fail();
  bool one_parked = false;
  for (const auto& g : parked["generations"])
    one_parked = one_parked || (g["generation"] == 1 && g["parked"] == true);
  CHECK_MESSAGE(one_parked, parked.dump());
  RunResult text = sup.cli({"status"}, 10s);
  CHECK_MESSAGE(contains(text.out, "parked"), text.out);

  std::ofstream(flag + ".2") << "sick\n";
  wait_for_active_release(sup, 3, 20s);
  CHECK(sup.status_or_fail()["active_generation"] == 3);
  for (int i = 0; i < 30; ++i)
    CHECK(http_get(port, fmt::format("/kv/k{}", i)) == fmt::format("{}-{}", i < 20 ? "v1" : "v2", i));
  CHECK(sup.proc().wait_output("still running and holds state written since the cutover", 5s));
  json h = history(sup);
  CHECK(release(h, 3)["origin"] == "revert");
  CHECK(release(h, 3)["rollback_of"] == 1);
  sup.stop();
}

TEST_CASE("watch window: a revert past the replaced release takes the cache from its parked generation") {
  // Release 1 proves itself; release 2 replaces it, and release 3 (which crashes) replaces release 2
  // before release 2's own window ends. The revert goes back to release 1, as a new generation; the
  // cache it starts with is release 2's, parked for that, not an empty one.
  Supervisor sup({"--drain-timeout", "10s", "--watch-window", "1s"}, kv("v1"));
  const std::uint16_t port = sup.port();
  for (int i = 0; i < 40; ++i)
    REQUIRE(put(port, fmt::format("k{}", i), fmt::format("v-{}", i)) == "204");
  REQUIRE(wait_until([&] { return sup.status_or_fail()["watch"].is_null(); }, 10s));
  REQUIRE(sup.upgrade_to(kv("v2")).exit_code == 0);
  CHECK(put(port, "written-by-2", "yes") == "204");
  RunResult up = sup.cli({"upgrade", "--wait", "--", test_worker_bin(), "crash-after-ready", "200"}, 60s);
  CHECK_MESSAGE(up.exit_code == 1, up.out << up.err);
  CHECK_MESSAGE(contains(up.out, "then keeping it parked"), up.out);
  CHECK_MESSAGE(contains(up.err, "release 1 comes back; release 4 serves again"), up.err);
  CHECK(sup.status_or_fail()["release"] == 4);
  for (int i = 0; i < 40; ++i)
    CHECK(http_get(port, fmt::format("/kv/k{}", i)) == fmt::format("v-{}", i));
  CHECK(http_get(port, "/kv/written-by-2") == "yes");
  sup.stop();
}
