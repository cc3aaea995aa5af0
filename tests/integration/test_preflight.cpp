// The preflight check (--preflight) under a real supervisor: a failing check starts nothing while
// the old generation serves, a passing one sees the new release in its environment, a hanging one
// is killed with its process group at --preflight-timeout, run's check applies to every deployment
// (but crash restarts and reverts) unless one brings its own, and run's first release is checked
// too.
#include <sys/stat.h>
#include <unistd.h>

#include <future>
#include <sstream>

#include <fmt/format.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

bool exists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

// An executable shell script at `path` that creates `marker` when it runs and then becomes
// hello-server `version`: whether the file exists says whether anything of it was started.
void write_marking_server(const std::string& path, const std::string& marker, const std::string& version) {
  write_file_atomic(path, fmt::format("#!/bin/sh\ntouch '{}'\nexec '{}' --version {}\n", marker, hello_bin(), version));
  REQUIRE(::chmod(path.c_str(), 0755) == 0);
}

}  // namespace

TEST_CASE("preflight: a failing check starts nothing, the old generation serves throughout, and history keeps why") {
  TempDir d;
  const std::string marker = d.file("started");
  const std::string server = d.file("server-v2");
  write_marking_server(server, marker, "v2");
  Supervisor sup({"--drain-timeout", "10s"}, hello("v1"));
  const pid_t old_pid = sup.active_pid();
  MixedLoad load(sup.port(), 2);
  let_load_run(load.keepalive, 50);
  let_load_run(load.fresh, 50);

  const std::string check =
      "echo \"checking release $HOTRESTART_RELEASE\"; echo 'nginx: [emerg] unknown directive \"bogus\"' >&2; exit 3";
  RunResult r = sup.upgrade({"--preflight", check, "--", server});
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  const std::string reason =
      "preflight failed (exit status 3): checking release 2 | nginx: [emerg] unknown directive \"bogus\"";
  CHECK_MESSAGE(contains(r.err, reason), r.err);
  CHECK_MESSAGE(contains(r.err, fmt::format("generation 1 (pid {}) still serves", old_pid)), r.err);
  CHECK_MESSAGE(contains(r.out, "preflight"), r.out);
  CHECK_MESSAGE(contains(r.out, "nothing was started"), r.out);
  CHECK_FALSE(contains(r.out, "spawning"));

  // Nothing of the new release ran: no process, no marker; the old generation is the only one.
  let_load_run(load.keepalive, 50);
  let_load_run(load.fresh, 50);
  CHECK_FALSE(exists(marker));
  json s = sup.status_or_fail();
  REQUIRE(s["generations"].size() == 1);
  CHECK(s["generations"][0]["pid"] == old_pid);
  CHECK(s["upgrade"].is_null());
  CHECK(s["counters"]["upgrades_rolled_back"] == 1);
  CHECK(s["last_upgrade"]["reason"] == reason);
  CHECK(s["last_upgrade"]["last_output"] ==
        json::array({"checking release 2", "nginx: [emerg] unknown directive \"bogus\""}));
  CHECK(contains(s["last_error"]["message"].get<std::string>(), reason));
  CHECK(sup.processes() == std::set<pid_t>{old_pid});

  // Its lines reached the supervisor's log with their own prefix.
  CHECK_MESSAGE(sup.proc().wait_output("]: nginx: [emerg] unknown directive \"bogus\"\n", 5s, Stream::Err),
                sup.proc().describe());
  CHECK(contains(sup.proc().err(), "preflight["));

  // The release is in the history as rolled back with that reason, and it never served.
  json h = history(sup);
  const json& two = release(h, 2);
  CHECK(two["outcome"] == "rolled-back");
  CHECK(two["reason"] == reason);
  CHECK(two["serving_ms"] == 0);
  CHECK(h["active_release"] == 1);

  // The failure leaves the supervisor able to upgrade: the same release with no check serves.
  RunResult good = sup.upgrade({"--", server});
  CHECK_MESSAGE(good.exit_code == 0, good.out << good.err);
  CHECK(exists(marker));
  load.finish();
  sup.stop();
}

TEST_CASE("preflight: a passing check sees the new command, executable and release, and the upgrade goes on") {
  TempDir d;
  const std::string seen = d.file("seen");
  Supervisor sup({}, hello("v1"));
  // The command line comes shell-quoted: `eval set --` gives back its words.
  const std::string check = fmt::format(
      "{{ printf '%s\\n' \"$HOTRESTART_COMMAND\" \"$HOTRESTART_EXECUTABLE\" \"$HOTRESTART_RELEASE\"; "
      "eval \"set -- $HOTRESTART_COMMAND\"; printf '%s\\n' \"$#\" \"$3\"; readlink /proc/$$/fd/0; }} > '{}'; "
      "echo config ok",
      seen);
  RunResult r = sup.upgrade({"--json", "--preflight", check, "--", hello_bin(), "--version", "v 2"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  const auto written = read_file(seen);
  REQUIRE(written.has_value());
  const std::vector<std::string> expected = {
      hello_bin() + " --version 'v 2'", hello_bin(), "2", "3", "v 2", "/dev/null"};
  CHECK(lines_of(*written) == expected);

  std::vector<std::string> phases;
  for (const auto& line : json_lines(r.out)) {
    if (line["type"] == "event") phases.push_back(line["phase"]);
    if (line["type"] == "result") CHECK(line["ok"] == true);
  }
  const std::vector<std::string> expected_phases = {"preflight",       "preflight", "spawning",     "handshake",
                                                    "health-checking", "cutover",   "draining-old", "done"};
  CHECK(phases == expected_phases);
  CHECK(sup.active_generation() == 2);
  json g = *sup.active();
  CHECK(g["command"][2] == "v 2");
  json h = history(sup);
  CHECK(h["releases"].back()["outcome"] == "serving");
  sup.stop();
}

TEST_CASE("preflight: a check that hangs is killed with its process group at --preflight-timeout") {
  TempDir d;
  const std::string pids = d.file("pids");
  Supervisor sup({"--preflight-timeout", "1s"}, hello("v1"));
  const pid_t old_pid = sup.active_pid();
  // The shell and a child in its process group, both waiting far longer than the timeout.
  const std::string check =
      fmt::format("echo $$ > '{0}'; sleep 600 & echo $! >> '{0}'; echo still checking; wait", pids);
  auto upgrade = std::async(std::launch::async, [&] { return sup.upgrade({"--preflight", check}); });
  // Meanwhile the supervisor answers status, in phase preflight, with the check's pid.
  pid_t check_pid = 0;
  CHECK(wait_until(
      [&] {
        auto s = sup.status();
        if (!s || (*s)["upgrade"].is_null()) return false;
        check_pid = (*s)["upgrade"].value("preflight_pid", 0);
        return (*s)["upgrade"]["phase"] == "preflight" && check_pid > 0;
      },
      5s));
  RunResult r = upgrade.get();
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK_MESSAGE(
      contains(
          r.err,
          "preflight failed (timed out after 1s, --preflight-timeout; its process group was killed): still checking"),
      r.err);
  const auto written = read_file(pids);
  REQUIRE(written.has_value());
  const auto both = lines_of(*written);
  REQUIRE(both.size() == 2);
  CHECK(std::stoi(both[0]) == check_pid);
  for (const auto& pid : both) {
    CHECK_MESSAGE(wait_until([&] { return !pid_alive(std::stoi(pid)); }, 5s), "pid " << pid << " outlived the timeout");
  }
  CHECK(sup.processes() == std::set<pid_t>{old_pid});
  CHECK(sup.status_or_fail()["generations"].size() == 1);
  sup.stop();
}

TEST_CASE(
    "preflight: run's check applies to every deployment but crash restarts and reverts, and one deployment may "
    "override "
    "it") {
  TempDir d;
  const std::string log = d.file("checks");
  Supervisor sup({"--preflight", fmt::format("echo \"run $HOTRESTART_RELEASE\" >> '{}'", log)}, hello("v1"));
  std::vector<std::string> expected = {"run 1"};  // The first release is checked too.
  const auto checks = [&] { return lines_of(read_file(log).value_or("")); };
  CHECK(checks() == expected);

  REQUIRE(sup.proc().send_signal(SIGUSR2));
  CHECK(wait_until([&] { return sup.active_generation() == 2 && sup.active_state() == "ready"; }, 15s));
  expected.push_back("run 2");
  CHECK(checks() == expected);

  RunResult plain = sup.upgrade();
  CHECK_MESSAGE(plain.exit_code == 0, plain.out << plain.err);
  expected.push_back("run 3");
  CHECK(checks() == expected);

  RunResult own = sup.upgrade({"--preflight", fmt::format("echo \"override $HOTRESTART_RELEASE\" >> '{}'", log)});
  CHECK_MESSAGE(own.exit_code == 0, own.out << own.err);
  expected.push_back("override 4");
  CHECK(checks() == expected);

  RunResult none = sup.upgrade({"--preflight", ""});  // An empty check: none for this upgrade.
  CHECK_MESSAGE(none.exit_code == 0, none.out << none.err);
  CHECK_FALSE(contains(none.out, "before anything is started"));
  CHECK(checks() == expected);

  RunResult failing = sup.upgrade({"--preflight", "exit 7"});
  CHECK(failing.exit_code == 1);
  CHECK_MESSAGE(contains(failing.err, "preflight failed (exit status 7) with no output"), failing.err);

  // A crash restart runs the same release again, unchecked. (The failed upgrade above ended the
  // watch window of release 5, so its crash is restarted rather than reverted.)
  const pid_t crashed = sup.active_pid();
  REQUIRE(::kill(crashed, SIGKILL) == 0);
  CHECK(wait_until(
      [&] {
        const pid_t now = sup.active_pid();
        return now != 0 && now != crashed && sup.active_state() == "ready";
      },
      15s));
  CHECK(checks() == expected);

  // A rollback is checked like an upgrade, by run's check or by its own. (Every release here runs
  // the same command line, which a plain `rollback` skips: each goes to a release by number.)
  RunResult back = sup.cli({"rollback", "--to", "4"});
  CHECK_MESSAGE(back.exit_code == 0, back.out << back.err);
  expected.push_back("run 7");
  CHECK(checks() == expected);
  RunResult back_own = sup.cli(
      {"rollback", "--to", "3", "--preflight", fmt::format("echo \"rollback $HOTRESTART_RELEASE\" >> '{}'", log)});
  CHECK_MESSAGE(back_own.exit_code == 0, back_own.out << back_own.err);
  expected.push_back("rollback 8");
  CHECK(checks() == expected);

  // A release that fails in its watch window is reverted without a check: the release that comes
  // back passed its own and served until then.
  RunResult crashing = sup.cli({"upgrade", "--wait", "--", test_worker_bin(), "crash-after-ready", "200"}, 60s);
  CHECK_MESSAGE(crashing.exit_code == 1, crashing.out << crashing.err);
  CHECK_MESSAGE(contains(crashing.err, "release 9 reverted"), crashing.err);
  expected.push_back("run 9");
  CHECK(wait_until(
      [&] {
        auto s = sup.status();
        return s && (*s)["release"] == 10 && sup.active_state() == "ready";
      },
      15s));
  CHECK(checks() == expected);
  sup.stop();
}

TEST_CASE("preflight: run exits 1 with the check's output when its first release fails it, and starts nothing") {
  TempDir d;
  const std::string marker = d.file("started");
  const std::string server = d.file("server");
  write_marking_server(server, marker, "v1");
  RunResult r =
      run({hotrestart_bin(), "run", "--control", d.file("ctl.sock"), "--state-dir", d.file("state"), "--listen",
           "http=tcp://127.0.0.1:0", "--preflight", "echo 'config error on line 3' >&2; exit 1", "--", server},
          {}, 20s);
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK_MESSAGE(contains(r.err, "]: config error on line 3\n"), r.err);
  CHECK_MESSAGE(contains(r.err, "preflight failed (exit status 1): config error on line 3; nothing was started"),
                r.err);
  CHECK_FALSE(exists(marker));
}
