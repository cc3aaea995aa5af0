// A worker's stderr through the supervisor: relayed with its generation's prefix, its last lines
// in the verdict of a failed upgrade, in status and in a crash note; a flood that costs the
// supervisor neither its answers nor its memory; and a supervisor whose own stderr is full or gone.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include <fmt/format.h>

#include <hotrestart/fd.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

// The number after `marker` in `text` ("generation 2 (pid " -> 4301), or 0.
pid_t number_after(const std::string& text, const std::string& marker) {
  const auto at = text.find(marker);
  return at == std::string::npos ? 0 : static_cast<pid_t>(std::atol(text.c_str() + at + marker.size()));
}

bool exists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

}  // namespace

TEST_CASE("worker output: what a worker said before it exited unready is in the verdict, the log and status") {
  Supervisor sup({}, hello("v1"));
  const pid_t old_pid = sup.active_pid();
  const std::string cause = "error while loading shared libraries: libfmt.so.9: cannot open shared object file";
  RunResult r = sup.upgrade_to({test_worker_bin(), "say-and-exit", "127", cause});
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK_MESSAGE(
      contains(r.err, fmt::format("exited with status 127 before it was ready; its last output: \"{}\"", cause)),
      r.err);
  CHECK(contains(r.err, "still serves"));
  CHECK(sup.active_pid() == old_pid);

  // The supervisor's own stderr has the worker's line, prefixed with its generation and pid.
  const pid_t pid = number_after(r.out, "generation 2 (pid ");
  REQUIRE_MESSAGE(pid > 0, r.out);
  CHECK_MESSAGE(sup.proc().wait_output(fmt::format("gen2[{}]: {}\n", pid, cause), 5s, Stream::Err),
                sup.proc().describe());

  json s = sup.status_or_fail();
  CHECK(s["last_upgrade"]["last_output"] == json::array({cause}));
  CHECK(contains(s["last_upgrade"]["reason"].get<std::string>(), cause));
  CHECK(contains(s["last_error"]["message"].get<std::string>(), cause));
  REQUIRE(s["generations"].size() == 1);
  CHECK(s["generations"][0]["last_output"].is_array());

  // --json: the rollback's events and the result carry its last lines as a list, and the reason
  // quotes them on one line.
  RunResult j = sup.upgrade({"--json", "--", test_worker_bin(), "say-and-exit", "2", "line one\nline two"});
  CHECK_MESSAGE(j.exit_code == 1, j.out << j.err);
  const json lines = json::array({"line one", "line two"});
  int rollback_events = 0;
  bool result_seen = false;
  for (const json& line : json_lines(j.out)) {
    if (line["type"] == "event" && (line["phase"] == "rolling-back" || line["phase"] == "rolled-back")) {
      ++rollback_events;
      CHECK(line["last_output"] == lines);
    }
    if (line["type"] == "result") {
      result_seen = true;
      CHECK(line["last_output"] == lines);
      CHECK(contains(line["reason"].get<std::string>(), "its last output: \"line one | line two\""));
    }
  }
  CHECK_MESSAGE(rollback_events == 2, j.out);
  CHECK(result_seen);

  // A failed upgrade leaves the supervisor able to upgrade again, and a success shows no output.
  RunResult good = sup.upgrade({"--json", "--", hello_bin(), "--version", "v2"});
  CHECK_MESSAGE(good.exit_code == 0, good.out << good.err);
  const auto verdict = json_lines(good.out).back();
  CHECK(verdict["ok"] == true);
  CHECK(verdict["last_output"] == json::array());
  sup.stop();
}

TEST_CASE("worker output: a crash of the active generation is noted with its last output") {
  Supervisor sup({}, {test_worker_bin(), "crash-after-ready", "50"}, /*wait_ready=*/false);
  std::string note;
  CHECK_MESSAGE(wait_until(
                    [&] {
                      auto s = sup.status();
                      note = s && s->value("last_error", json()).is_object() ? (*s)["last_error"].value("message", "")
                                                                             : "";
                      return contains(note, "its last output");
                    },
                    10s),
                note);
  CHECK_MESSAGE(contains(note, "was killed by SIGABRT; its last output: \"test-worker["), note);
  CHECK_MESSAGE(contains(note, "]: ready; aborting in 50 ms\""), note);
  sup.stop();
}

TEST_CASE("worker output: a flood of stderr neither blocks the supervisor nor grows its memory") {
  TempDir d;
  SpawnOptions options;
  options.max_capture_bytes = 1 << 20;  // The test keeps 1 MiB of the relayed flood, not all of it.
  Supervisor sup({}, {test_worker_bin(), "flood-stderr", "50", "200000", d.file("done")}, true, options);
  const pid_t worker = sup.active_pid();
  const auto baseline = rss_kib(sup.pid());
  REQUIRE(baseline.has_value());
  REQUIRE(::kill(worker, SIGUSR1) == 0);

  // While 50 MB without a newline and 200,000 short lines pass through, status answers at once
  // every time it is asked.
  long most = *baseline;
  int asked = 0;
  int answered = 0;
  auto slowest = Clock::duration::zero();
  const bool done = wait_until(
      [&] {
        const auto start = Clock::now();
        const bool ok = sup.status().has_value();
        slowest = std::max(slowest, Clock::now() - start);
        ++asked;
        answered += ok ? 1 : 0;
        if (auto rss = rss_kib(sup.pid())) most = std::max(most, *rss);
        return exists(d.file("done"));
      },
      180s, 50ms);
  REQUIRE_MESSAGE(done, "the worker did not finish its flood\n" << sup.proc().describe(2000));
  CHECK(answered == asked);
  CHECK_MESSAGE(slowest < 2s, std::chrono::duration_cast<std::chrono::milliseconds>(slowest).count() << " ms");
  // The supervisor holds one partial line and a bounded tail, never the flood.
  CHECK_MESSAGE(most - *baseline < 16 * 1024, "RSS grew from " << *baseline << " KiB to " << most << " KiB");

  // Its tail ends with its last line, and its long line came in prefixed pieces of 4000 bytes.
  std::optional<json> active;
  CHECK(wait_until(
      [&] {
        active = sup.active();
        return active && !(*active)["last_output"].empty() && (*active)["last_output"].back() == "flood done";
      },
      10s));
  CHECK((*active)["last_output"].size() == 20);
  CHECK(contains(sup.proc().err(), fmt::format("gen1[{}]: {}\n", worker, std::string(4000, 'x'))));
  sup.stop();
}

TEST_CASE("worker output: a helper that holds stderr open delays a verdict by the grace only") {
  Supervisor sup({}, hello("v1"));
  const auto start = Clock::now();
  RunResult r = sup.upgrade_to({test_worker_bin(), "leave-helper", "1", "the config is wrong"});
  const auto took = Clock::now() - start;
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK_MESSAGE(contains(r.err, "exited with status 1 before it was ready; its last output: \"the config is wrong\""),
                r.err);
  // The helper holds the pipe for 60 s; the verdict came after the grace, not at end of file.
  CHECK_MESSAGE(took < 10s, std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  CHECK(sup.proc().wait_output("still holds its stderr 200ms after it exited; its output is no longer read", 5s));

  // The helper says nothing of its generation: it is a stray, which the supervisor ends when it
  // stops (the fixture's stop checks that every process below the supervisor is gone).
  CHECK(wait_until([&] { return sup.status_or_fail()["strays"].size() == 1; }, 10s));
  RunResult good = sup.upgrade_to(hello("v2"));
  CHECK_MESSAGE(good.exit_code == 0, good.out << good.err);
  sup.stop();
}

TEST_CASE("worker output: a supervisor whose stderr is full, then gone, still answers, upgrades and stops") {
  int ends[2];
  REQUIRE(::pipe2(ends, O_CLOEXEC) == 0);
  hotrestart::Fd read_end(ends[0]);
  hotrestart::Fd write_end(ends[1]);
  TempDir d;
  SpawnOptions options;
  options.capture_stderr = false;
  options.stderr_to = write_end.get();
  Supervisor sup({}, {test_worker_bin(), "flood-stderr", "1", "1000", d.file("done")}, true, options);
  write_end.reset();
  // The worker fills the supervisor's stderr, which nobody reads.
  REQUIRE(::kill(sup.active_pid(), SIGUSR1) == 0);
  REQUIRE(wait_until([&] { return exists(d.file("done")); }, 60s));

  const auto upgrade_in_time = [&](const std::string& version) {
    const auto start = Clock::now();
    CHECK(sup.status().has_value());
    RunResult r = sup.upgrade_to(hello(version));
    CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
    // A log line waits for room once, for at most a second; after that none waits until one goes.
    const auto took = Clock::now() - start;
    CHECK_MESSAGE(took < 10s, std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");
  };
  upgrade_in_time("v2");
  // Nobody holds the read end any more: every write fails with EPIPE.
  read_end.reset();
  upgrade_in_time("v3");
  sup.stop();
}
