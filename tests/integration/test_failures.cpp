// Bad new binaries roll back by themselves: the old generation never stops serving, no
// process is left behind, and the next good upgrade succeeds.
#include <filesystem>

#include <fmt/format.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

void check_rollback(const std::vector<std::string>& upgrade_args, const std::string& expected_reason) {
  Supervisor sup({"--ready-timeout", "2s", "--min-ready", "500ms", "--drain-timeout", "5s"}, hello("v1"));
  LoadClient fresh(load_config(sup.port(), LoadClient::Mode::NewConnection, 2));
  LoadClient keepalive(load_config(sup.port(), LoadClient::Mode::KeepAlive, 2));
  fresh.start();
  keepalive.start();
  REQUIRE(wait_until([&] { return fresh.ok_count() > 20 && keepalive.ok_count() > 20; }, 10s));
  const pid_t old_pid = sup.active_pid();

  RunResult r = sup.upgrade(upgrade_args);
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK_MESSAGE(contains(r.err, expected_reason), "reason missing from: " << r.err);
  CHECK(contains(r.err, "still serves"));
  CHECK(contains(r.out, "rolling-back"));
  CHECK(sup.active_pid() == old_pid);
  // The rolled-back generation and everything it started are gone.
  CHECK_MESSAGE(wait_until([&] { return sup.processes() == std::set<pid_t>{old_pid}; }, 10s),
                "left behind: " << sup.processes().size() << " processes");

  // The old generation kept serving throughout and still does.
  const std::size_t served = fresh.ok_count();
  CHECK(wait_until([&] { return fresh.ok_count() > served + 20; }, 10s));
  fresh.stop();
  keepalive.stop();
  require_no_failures(fresh, "new-connection clients");
  require_no_failures(keepalive, "keep-alive clients");
  CHECK(fresh.version_counts() == std::map<std::string, std::size_t>{{"v1", fresh.ok_count()}});

  json s = sup.status_or_fail();
  CHECK(s["counters"]["upgrades_rolled_back"] == 1);
  CHECK(contains(s["last_error"]["message"].get<std::string>(), expected_reason));
  CHECK(s["last_upgrade"]["outcome"] == "rolled-back");

  // A failed upgrade leaves the supervisor able to upgrade again.
  RunResult good = sup.upgrade_to(hello("v2"));
  CHECK_MESSAGE(good.exit_code == 0, good.out << good.err);
  CHECK(wait_until([&] { return !pid_alive(old_pid); }, 10s));
  CHECK(sup.status_or_fail()["counters"]["upgrades_done"] == 1);
  sup.stop();
}

}  // namespace

TEST_CASE("rollback: the new binary does not exist") {
  check_rollback({"--exec", "/nonexistent/hello-server"}, "/nonexistent/hello-server: No such file or directory");
}

TEST_CASE("rollback: the new binary is no program the kernel can run, and the verdict says so") {
  // Executable, but neither ELF nor "#!": the exec fails in the new process (ENOEXEC), after the
  // supervisor has moved on without waiting for it.
  TempDir bin;
  const std::string junk = bin.file("not-a-program");
  write_file_atomic(junk, "this is text, not a program\n");
  std::filesystem::permissions(junk, std::filesystem::perms::owner_all);
  check_rollback({"--exec", junk},
                 fmt::format("failed to start (exec {}: Exec format error) before it was ready", junk));
}

TEST_CASE("rollback: the new binary exits at once") {
  check_rollback({"--", test_worker_bin(), "exit", "3"}, "exited with status 3 before it was ready");
}

TEST_CASE("rollback: the new binary never sends READY") {
  check_rollback({"--", test_worker_bin(), "no-ready"}, "was not ready within 2s");
}

TEST_CASE("rollback: an SDK worker that calls ready() only in on_active is told what it never did") {
  // on_active comes at the cutover, which waits for ready(): the generation waits for ever.
  check_rollback({"--", bin_path("sdk-worker"), "--ready-in-active"},
                 "its Worker::start() finished, but it never called Worker::ready() (call it after start(), not in "
                 "on_active)");
}

TEST_CASE("rollback: the new binary crashes after READY but before cutover") {
  check_rollback({"--", test_worker_bin(), "crash-after-ready", "100"}, "was killed by SIGABRT before cutover");
}

TEST_CASE("a worker that ignores the drain signal is SIGKILLed after the drain timeout") {
  Supervisor sup({"--drain-timeout", "1s"}, {test_worker_bin(), "ignore-drain"});
  const pid_t old_pid = sup.active_pid();
  RunResult r = sup.upgrade_to(hello("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  const auto told = Clock::now();
  REQUIRE(wait_until([&] { return !pid_alive(old_pid); }, 10s));
  // It ignores SIGTERM, so only the SIGKILL at the end of the drain timeout can end it.
  CHECK(Clock::now() - told >= 800ms);
  CHECK(sup.proc().wait_output("did not exit within the drain timeout of 1s; sending SIGKILL", 5s));
  CHECK(sup.proc().wait_output(fmt::format("pid {}) was killed by SIGKILL", old_pid), 5s));
  sup.stop();
}

TEST_CASE("a crashed worker is restarted and no connect is refused meanwhile") {
  Supervisor sup({}, hello("v1"));
  LoadClient::Config c = load_config(sup.port(), LoadClient::Mode::NewConnection, 2);
  c.threads = 3;
  LoadClient load(c);
  load.start();
  REQUIRE(wait_until([&] { return load.ok_count() > 50; }, 10s));
  const pid_t old_pid = sup.active_pid();
  REQUIRE(::kill(old_pid, SIGKILL) == 0);
  REQUIRE(wait_until(
      [&] {
        const pid_t now = sup.active_pid();
        return now != 0 && now != old_pid && sup.active_state() == "ready";
      },
      10s));
  const std::size_t served = load.ok_count();
  CHECK(wait_until([&] { return load.ok_count() > served + 50; }, 10s));
  load.stop();
  // Only requests the killed worker had already accepted can fail (at most one per client
  // thread); a connect is never refused, because the listening socket never closed.
  for (const auto& [reason, count] : load.failure_reasons()) {
    CHECK_MESSAGE(!contains(reason, "connect"), reason << " x" << count);
  }
  CHECK(load.failure_count() <= static_cast<std::size_t>(c.threads));
  json s = sup.status_or_fail();
  CHECK(s["counters"]["crashes"] == 1);
  CHECK(s["counters"]["restarts"] == 1);
  CHECK(contains(s["last_error"]["message"].get<std::string>(), "was killed by SIGKILL"));
  sup.stop();
}

TEST_CASE("a worker that keeps crashing is restarted with growing backoff and not in a tight loop") {
  Supervisor sup({"--ready", "delay:5s"}, {"/bin/sh", "-c", "exit 1"}, /*wait_ready=*/false);
  REQUIRE(wait_until([&] { return sup.status().has_value(); }, 10s));
  const auto t0 = Clock::now();
  // Backoff 100ms, 200ms, 400ms, 800ms, 1.6s...: within ~1.6s only 4-5 crashes fit.
  REQUIRE(wait_until([&] { return Clock::now() - t0 > 1600ms; }, 5s, 100ms));
  const auto crashes = sup.status_or_fail()["counters"]["crashes"].get<int>();
  CHECK(crashes >= 2);
  CHECK(crashes <= 8);
  CHECK(sup.proc().wait_output("restarting the worker in 400ms", 5s));
  sup.stop();
}
