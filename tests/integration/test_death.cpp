// The supervisor dies (SIGKILL), and what it left behind keeps its promises: a candidate never
// serves on its own authority, a draining generation still ends at its deadline, the active one
// serves on and its output is still read, and the guard that carries this out goes once nothing is
// left (docs/architecture.md, "When the supervisor dies").
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include <hotrestart/fd.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

std::vector<std::string> kv(const std::string& build, std::vector<std::string> args = {}) {
  args.insert(args.begin(), bin_path("kv-cache-" + build));
  return args;
}

// The pid in the supervisor's "generation N started: pid P" line, once it has been logged.
pid_t started_pid(Supervisor& sup, std::uint64_t generation) {
  const std::string needle = fmt::format("generation {} started: pid ", generation);
  REQUIRE_MESSAGE(sup.proc().wait_output(needle, 20s), sup.proc().describe());
  const std::string err = sup.proc().err();
  return static_cast<pid_t>(std::atoi(err.c_str() + err.find(needle) + needle.size()));
}

// An HTTP request on a connection of its own, with curl: the status code and the body.
struct Answer {
  int status = 0;
  std::string body;
};
Answer request(std::uint16_t port, const std::string& method, const std::string& path, const std::string& body = {}) {
  std::vector<std::string> argv = {"curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}", "-X", method};
  if (!body.empty()) argv.insert(argv.end(), {"--data-binary", body});
  argv.push_back(fmt::format("http://127.0.0.1:{}{}", port, path));
  RunResult r = run(argv, {}, 10s);
  const auto cut = r.out.rfind('\n');
  if (r.exit_code != 0 || cut == std::string::npos) return {0, r.err};
  return {std::atoi(r.out.c_str() + cut + 1), r.out.substr(0, cut)};
}

}  // namespace

TEST_CASE(
    "death: the supervisor killed while kv-cache streams its state: the candidate drains, the old one alone serves") {
  // Enough entries that the transfer is under way when the supervisor dies; --min-ready keeps the
  // new generation a candidate for long after it, whenever the kill lands.
  Supervisor sup({"--min-ready", "60s", "--drain-timeout", "5s"}, kv("v1", {"--prefill", "200000", "--stream-state"}));
  Leftovers left;
  const pid_t old_pid = sup.active_pid();
  const pid_t guard = sup.guard();
  left.pids = {old_pid, guard};
  const std::uint16_t port = sup.port();
  for (int i = 0; i < 30; ++i)
    REQUIRE(request(port, "PUT", fmt::format("/kv/before-{}", i), fmt::format("value-{}", i)).status == 204);

  Child upgrade = Child::spawn(
      {hotrestart_bin(), "upgrade", "--control", sup.control(), "--", bin_path("kv-cache-v2"), "--stream-state"});
  const pid_t candidate = started_pid(sup, 2);
  left.pids.insert(candidate);
  std::string when;
  SUBCASE("while the state streams") {
    when = "upgrade: transferring-state";
  }
  SUBCASE("once the candidate has imported it and is ready") {
    when = "upgrade: health-checking";
  }
  REQUIRE_MESSAGE(sup.proc().wait_output(when, 20s), sup.proc().describe());
  kill_supervisor(sup);
  CHECK(upgrade.wait_for(10s).has_value());

  // Writes acknowledged after the death, and before it: each is read back on a connection of its
  // own, so any generation that accepts may answer.
  for (int i = 0; i < 30; ++i)
    CHECK(request(port, "PUT", fmt::format("/kv/after-{}", i), fmt::format("value-{}", i)).status == 204);
  CHECK_MESSAGE(gone_within(candidate, 10s), "the candidate (pid " << candidate << ") serves without a supervisor");
  int missing = 0;
  for (const char* phase : {"before", "after"}) {
    for (int i = 0; i < 30; ++i) {
      const Answer a = request(port, "GET", fmt::format("/kv/{}-{}", phase, i));
      if (a.status != 200 || a.body != fmt::format("value-{}", i)) ++missing;
    }
  }
  CHECK_MESSAGE(missing == 0, missing << " of 60 acknowledged keys were not read back");
  CHECK(pid_alive(old_pid));
  CHECK(contains(request(port, "GET", "/").body, fmt::format("pid={}", old_pid)));

  // With the last generation gone, the guard goes too, and the port with it.
  ::kill(old_pid, SIGKILL);
  CHECK_MESSAGE(gone_within(guard, 10s), "the guard outlived the last generation");
}

TEST_CASE("death: a candidate outlives neither its supervisor nor its drain timeout") {
  SUBCASE("one that never became ready ends on its drain signal") {
    Supervisor sup({"--drain-timeout", "2s"}, hello("v1"));
    Leftovers left;
    left.pids = {sup.active_pid(), sup.guard()};
    const std::uint16_t port = sup.port();
    Child upgrade =
        Child::spawn({hotrestart_bin(), "upgrade", "--control", sup.control(), "--", test_worker_bin(), "no-ready"});
    const pid_t candidate = started_pid(sup, 2);
    left.pids.insert(candidate);
    // Once it has written its line: with nobody left to read its stderr, a later write could end it
    // with SIGPIPE, which is not what this test is about.
    REQUIRE(sup.proc().wait_output("no-ready: never sending READY=1", 10s));
    kill_supervisor(sup);
    CHECK_MESSAGE(gone_within(candidate, 5s), "the candidate outlived its supervisor");
    CHECK(contains(http_get(port, "/"), "version=v1"));
  }
  SUBCASE("one that ignores it is killed at its drain timeout") {
    Supervisor sup({"--drain-timeout", "2s", "--min-ready", "60s"}, hello("v1"));
    Leftovers left;
    left.pids = {sup.active_pid(), sup.guard()};
    Child upgrade = Child::spawn(
        {hotrestart_bin(), "upgrade", "--control", sup.control(), "--", test_worker_bin(), "ignore-drain"});
    const pid_t candidate = started_pid(sup, 2);
    left.pids.insert(candidate);
    REQUIRE(sup.proc().wait_output("upgrade: health-checking", 10s));
    kill_supervisor(sup);
    CHECK_MESSAGE(pid_alive(candidate), "killed before its drain timeout");
    CHECK_MESSAGE(gone_within(candidate, 8s), "the candidate outlived its drain timeout");
  }
}

TEST_CASE("death: a draining generation that ignores its drain is still killed at its deadline") {
  Supervisor sup({"--drain-timeout", "3s", "--no-park"}, {test_worker_bin(), "ignore-drain"});
  Leftovers left;
  const pid_t old_pid = sup.active_pid();
  left.pids = {old_pid, sup.guard()};
  const std::uint16_t port = sup.port();
  RunResult r = sup.upgrade_to(hello("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  left.pids.insert(sup.active_pid());
  kill_supervisor(sup);
  CHECK_MESSAGE(pid_alive(old_pid), "killed before its drain timeout");
  CHECK_MESSAGE(gone_within(old_pid, 10s), "the draining generation outlived its deadline");
  CHECK(contains(http_get(port, "/"), "version=v2"));
}

TEST_CASE("death: the active generation serves on, and what it writes is still read") {
  TempDir dir;
  const std::string done = dir.file("flood-done");
  // The supervisor's stderr (and so the guard's) goes to a file: the test reads it after the
  // supervisor has exited, which a captured pipe does not allow.
  const std::string log = dir.file("stderr.log");
  hotrestart::Fd log_fd(::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600));
  REQUIRE(log_fd);
  SpawnOptions to_file;
  to_file.capture_stderr = false;
  to_file.stderr_to = log_fd.get();
  Supervisor sup({}, {test_worker_bin(), "flood-stderr", "1", "20", done}, true, to_file);
  Leftovers left;
  const pid_t worker = sup.active_pid();
  const pid_t guard = sup.guard();
  left.pids = {worker, guard};
  kill_supervisor(sup);
  // A megabyte is far more than a pipe holds: unread, the worker would block in write(), and with
  // no reader at all it would die of SIGPIPE.
  REQUIRE(::kill(worker, SIGUSR1) == 0);
  CHECK_MESSAGE(wait_until([&] { return read_file(done).has_value(); }, 15s), "the worker never finished writing");
  CHECK(pid_alive(worker));
  CHECK(wait_until([&] { return contains(read_file(log).value_or(""), "flood done"); }, 5s));
  CHECK(contains(read_file(log).value_or(""), "hotrestart guard["));
  ::kill(worker, SIGTERM);
  CHECK(gone_within(worker, 5s));
  CHECK_MESSAGE(gone_within(guard, 10s), "the guard outlived the last generation");
}

TEST_CASE("death: killed at each phase boundary of an upgrade, one generation serves every acknowledged key") {
  // The boundary (a HOTRESTART_TEST_DIE_AT point), and whether the new generation is the one left
  // serving: from the cutover on, it is the active one.
  const std::vector<std::pair<std::string, bool>> boundaries = {
      {"handshake", false},           // spawned
      {"fds-sent", false},            // its listeners handed to it
      {"transferring-state", false},  // the state on its way
      {"health-checking", false},     // ready
      {"cutover", true},              // promoted; the old one not yet asked to drain
      {"draining-old", true},         // the old one about to be asked to drain
  };
  for (std::size_t index = 0; index < boundaries.size(); ++index) {
    const auto& [point, new_serves] = boundaries[index];
    CAPTURE(index);
    CAPTURE(point);
    SpawnOptions env;
    env.set_env = {{"HOTRESTART_TEST_DIE_AT", point}};
    Supervisor sup({"--drain-timeout", "3s", "--min-ready", "200ms", "--no-park"}, kv("v1", {"--prefill", "20000"}),
                   true, env);
    Leftovers left;
    const pid_t old_pid = sup.active_pid();
    const pid_t guard = sup.guard();
    left.pids = {old_pid, guard};
    const std::uint16_t port = sup.port();
    for (int i = 0; i < 20; ++i)
      REQUIRE(request(port, "PUT", fmt::format("/kv/before-{}", i), "v").status == 204);
    // Clients throughout: the death, the restart and the takeover cost none of them a request.
    MixedLoad load(port, 1);
    let_load_run(load.keepalive, 50);

    Child upgrade =
        Child::spawn({hotrestart_bin(), "upgrade", "--control", sup.control(), "--", bin_path("kv-cache-v2")});
    const pid_t new_pid = started_pid(sup, 2);
    left.pids.insert(new_pid);
    REQUIRE_MESSAGE(sup.proc().wait_for(20s) == std::optional<int>(128 + SIGKILL), sup.proc().describe());
    CHECK(upgrade.wait_for(10s).has_value());

    const pid_t serving = new_serves ? new_pid : old_pid;
    const pid_t ending = new_serves ? old_pid : new_pid;
    // The one that does not serve is gone within its drain timeout (3 s), with some slack.
    CHECK_MESSAGE(gone_within(ending, 8s), "pid " << ending << " outlived its deadline");
    CHECK(pid_alive(serving));
    int missing = 0;
    for (int i = 0; i < 20; ++i)
      if (request(port, "GET", fmt::format("/kv/before-{}", i)).status != 200) ++missing;
    for (int i = 0; i < 10; ++i) {
      if (request(port, "PUT", fmt::format("/kv/after-{}", i), "v").status != 204) ++missing;
      if (request(port, "GET", fmt::format("/kv/after-{}", i)).status != 200) ++missing;
    }
    CHECK_MESSAGE(missing == 0, missing << " of 40 answers were not the acknowledged data");
    CHECK(contains(request(port, "GET", "/").body, fmt::format("pid={}", serving)));

    // A supervisor started in its place takes the serving generation over, and its guard goes.
    Supervisor second(sup.place(), {"--listen", fmt::format("http=tcp://127.0.0.1:{}", port), "--no-park"}, kv("v1"));
    left.pids.insert(second.guard());
    CHECK(second.active_pid() == serving);
    CHECK_MESSAGE(gone_within(guard, 10s), "the dead supervisor's guard outlived the takeover");
    let_load_run(load.fresh, 50);
    load.finish();
    second.stop();
  }
}
