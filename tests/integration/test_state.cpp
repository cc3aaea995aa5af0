// SDK workers: the channel handshake, the state broker, and every way a transfer can fail.
// Each upgrade ends with the old generation's data either in the new one or, after a rollback,
// still served by the old one.
#include <fmt/format.h>

#include <iterator>
#include <map>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

std::string sdk_bin() {
  return bin_path("sdk-worker");
}

std::vector<std::string> sdk(std::vector<std::string> args) {
  args.insert(args.begin(), sdk_bin());
  return args;
}

// The "key=value" fields of a /state answer.
std::map<std::string, std::string> state_of(std::uint16_t port) {
  std::map<std::string, std::string> out;
  std::string body = http_get(port, "/state");
  std::size_t at = 0;
  while (at < body.size()) {
    const auto space = body.find(' ', at);
    const std::string field = body.substr(at, space == std::string::npos ? std::string::npos : space - at);
    if (const auto eq = field.find('='); eq != std::string::npos) {
      std::string value = field.substr(eq + 1);
      while (!value.empty() && value.back() == '\n')
        value.pop_back();
      // "reason=" runs to the end of the line.
      if (field.substr(0, eq) == "reason") {
        value = body.substr(at + eq + 1);
        while (!value.empty() && value.back() == '\n')
          value.pop_back();
        out["reason"] = value;
        break;
      }
      out[field.substr(0, eq)] = value;
    }
    if (space == std::string::npos) break;
    at = space + 1;
  }
  return out;
}

// After a rollback: the old generation still serves, with all of its data.
void check_old_serves(Supervisor& sup, pid_t old_pid, std::uint16_t port, int entries) {
  CHECK(sup.active_pid() == old_pid);
  CHECK(wait_until([&] { return sup.processes() == std::set<pid_t>{old_pid}; }, 10s));
  CHECK(state_of(port)["entries"] == std::to_string(entries));
  CHECK(http_get(port, "/data/key-7") == "value-7");
}

// Upgrades, requires success, and waits until the old generation has exited, so that no request
// after this can be answered by it.
RunResult upgrade_ok(Supervisor& sup, const std::vector<std::string>& command) {
  const pid_t old_pid = sup.active_pid();
  RunResult r = sup.upgrade_to(command);
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  REQUIRE_MESSAGE(wait_until([&] { return !pid_alive(old_pid); }, 15s), "the old generation did not exit");
  return r;
}

}  // namespace

TEST_CASE("state: an SDK worker says hello and the first generation starts cold") {
  Supervisor sup({}, sdk({"--fill", "10"}));
  json s = sup.status_or_fail();
  CHECK(s["generations"][0]["sdk"] == true);
  auto st = state_of(sup.port());
  CHECK(st["entries"] == "10");
  CHECK(st["imported"] == "0");
  CHECK(st["reason"] == "first generation");
  CHECK(sup.proc().wait_output("uses the SDK", 5s));
  sup.stop();
}

TEST_CASE("state: upgrades in both directions keep every entry, in the newest schema both sides know") {
  Supervisor sup({"--state-required", "data"}, sdk({"--version", "v1", "--schemas", "1", "--fill", "1000"}));
  const std::uint16_t port = sup.port();

  // v1 -> v2: v2 reads 1 and 2, v1 writes only 1.
  RunResult r = upgrade_ok(sup, sdk({"--version", "v2", "--schemas", "1,2"}));
  CHECK(contains(r.out, "handshake"));
  CHECK(contains(r.out, "transferring-state"));
  CHECK(contains(r.out, "moving 1 section(s) from generation 1 to generation 2: data"));
  CHECK(contains(r.out, "data: schema 1,"));
  CHECK(contains(r.out, "1 of 1 section(s) imported"));
  auto st = state_of(port);
  CHECK(st["entries"] == "1000");
  CHECK(st["imported"] == "1");
  CHECK(st["schema"] == "1");
  CHECK(http_get(port, "/data/key-999") == "value-999");
  CHECK(contains(http_get(port, "/"), "version=v2"));
  // The old generation was asked over its channel, and its on_drain callback ran.
  CHECK(sup.proc().wait_output("asked to drain over its channel (replaced by generation 2)", 5s));
  CHECK(sup.proc().wait_output("sdk-worker v1: drained", 5s));

  // v2 -> v2: both write 2.
  upgrade_ok(sup, sdk({"--version", "v2b", "--schemas", "1,2"}));
  st = state_of(port);
  CHECK(st["entries"] == "1000");
  CHECK(st["schema"] == "2");

  // v2 -> v1, the way back: v1 reads only 1, and v2 can still write it.
  upgrade_ok(sup, sdk({"--version", "v1b", "--schemas", "1"}));
  st = state_of(port);
  CHECK(st["entries"] == "1000");
  CHECK(st["schema"] == "1");
  CHECK(http_get(port, "/data/key-0") == "value-0");

  json s = sup.status_or_fail();
  const json& t = s["last_transfer"];
  CHECK(t["from_generation"] == 3);
  CHECK(t["to_generation"] == 4);
  CHECK(t["outcome"] == "done");
  REQUIRE(t["imported"].size() == 1);
  CHECK(t["imported"][0]["section"] == "data");
  CHECK(t["imported"][0]["ok"] == true);
  CHECK(t["imported"][0]["bytes"].get<std::uint64_t>() > 1000 * 10);
  CHECK(t["exported"][0]["ok"] == true);
  RunResult human = sup.cli({"status"});
  CHECK(contains(human.out, "last state transfer: generation 3 -> 4: 1 of 1 section(s)"));
  sup.stop();
}

TEST_CASE("state: upgrade --json reports each section as a state event") {
  Supervisor sup({}, sdk({"--fill", "300"}));
  const pid_t old_pid = sup.active_pid();
  RunResult r = sup.upgrade({"--json", "--", sdk_bin(), "--version", "v2"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  REQUIRE(wait_until([&] { return !pid_alive(old_pid); }, 15s));
  std::vector<json> states;
  std::vector<std::string> phases;
  std::size_t start = 0;
  while (start < r.out.size()) {
    const auto end = r.out.find('\n', start);
    json line = json::parse(r.out.substr(start, end - start));
    if (line["type"] == "state") states.push_back(line);
    if (line["type"] == "event") phases.push_back(line["phase"]);
    start = end + 1;
  }
  const std::vector<std::string> expected = {
      "spawning",     "handshake", "transferring-state", "transferring-state", "warming", "health-checking", "cutover",
      "draining-old", "done"};
  CHECK(phases == expected);
  REQUIRE(states.size() == 1);
  CHECK(states[0]["section"] == "data");
  CHECK(states[0]["ok"] == true);
  CHECK(states[0]["version"] == 1);
  CHECK(states[0]["bytes"].get<std::uint64_t>() > 300 * 10);
  CHECK(states[0]["sections_done"] == 1);
  CHECK(states[0]["sections_total"] == 1);
  CHECK(states[0]["from_generation"] == 1);
  CHECK(state_of(sup.port())["entries"] == "300");
  sup.stop();
}

TEST_CASE("state: a section with no common schema version starts cold, or rolls back when required") {
  SUBCASE("not required: the new generation starts cold and serves") {
    Supervisor sup({}, sdk({"--schemas", "1", "--fill", "50"}));
    RunResult r = upgrade_ok(sup, sdk({"--version", "v3", "--schemas", "3"}));
    CHECK(contains(r.out,
                   "data: starts cold: no common schema version: the importer reads [3], the exporter writes [1]"));
    auto st = state_of(sup.port());
    CHECK(st["entries"] == "0");
    CHECK(st["imported"] == "0");
    sup.stop();
  }
  SUBCASE("required: the upgrade rolls back and the old generation keeps serving its data") {
    Supervisor sup({"--state-required", "data"}, sdk({"--schemas", "1", "--fill", "50"}));
    const pid_t old_pid = sup.active_pid();
    RunResult r = sup.upgrade_to(sdk({"--version", "v3", "--schemas", "3"}));
    CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
    CHECK(contains(r.err, "required section 'data' was not imported: no common schema version"));
    CHECK(contains(r.err, "still serves"));
    // The new generation never served, so it is asked to stop, not to drain.
    CHECK(sup.proc().wait_output("asked to stop over its channel (rolled back)", 5s));
    check_old_serves(sup, old_pid, sup.port(), 50);
    // And the next good upgrade goes through.
    upgrade_ok(sup, sdk({"--version", "v2", "--schemas", "1,2"}));
    CHECK(state_of(sup.port())["entries"] == "50");
    sup.stop();
  }
}

TEST_CASE("state: an exporter that fails half-way leaves the section cold, or rolls back when required") {
  Supervisor sup({"--state-required", "data"}, sdk({"--export-fail", "--fill", "20"}));
  const pid_t old_pid = sup.active_pid();
  RunResult r = sup.upgrade_to(sdk({"--version", "v2"}));
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK(contains(r.err, "required section 'data' was not imported"));
  CHECK(contains(r.err, "the exporter failed on purpose"));
  check_old_serves(sup, old_pid, sup.port(), 20);
  sup.stop();
}

TEST_CASE("state: an importer that throws leaves the section cold, or rolls back when required") {
  SUBCASE("not required") {
    Supervisor sup({}, sdk({"--fill", "20"}));
    RunResult r = upgrade_ok(sup, sdk({"--version", "v2", "--import-fail"}));
    CHECK(contains(r.out, "data: starts cold: its load function failed: the importer failed on purpose"));
    CHECK(state_of(sup.port())["entries"] == "0");
    sup.stop();
  }
  SUBCASE("required") {
    Supervisor sup({"--state-required", "data"}, sdk({"--fill", "20"}));
    const pid_t old_pid = sup.active_pid();
    RunResult r = sup.upgrade_to(sdk({"--version", "v2", "--import-fail"}));
    CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
    CHECK(contains(r.err, "its load function failed: the importer failed on purpose"));
    check_old_serves(sup, old_pid, sup.port(), 20);
    sup.stop();
  }
}

TEST_CASE("state: an importer that crashes mid-import rolls back and the old generation keeps its data") {
  Supervisor sup({}, sdk({"--fill", "20"}));
  const pid_t old_pid = sup.active_pid();
  RunResult r = sup.upgrade_to(sdk({"--version", "v2", "--import-crash"}));
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK(contains(r.err, "was killed by SIGABRT"));
  check_old_serves(sup, old_pid, sup.port(), 20);
  upgrade_ok(sup, sdk({"--version", "v2"}));
  CHECK(state_of(sup.port())["entries"] == "20");
  sup.stop();
}

TEST_CASE("state: a streamed section keeps every entry in both directions, and a large one arrives whole") {
  constexpr const char* kBlob = "67108864";  // 64 MiB: 64 chunks, read straight into the worker's memory.
  Supervisor sup({"--state-required", "data", "--state-required", "blob"},
                 sdk({"--version", "v1", "--schemas", "1", "--fill", "100000", "--stream", "--blob", kBlob}));
  const std::uint16_t port = sup.port();
  upgrade_ok(sup, sdk({"--version", "v2", "--schemas", "1,2", "--stream", "--blob", kBlob}));
  auto st = state_of(port);
  CHECK(st["entries"] == "100000");
  CHECK(st["blob"] == kBlob);
  CHECK(st["schema"] == "1");
  CHECK(http_get(port, "/data/key-99999") == "value-99999");
  upgrade_ok(sup, sdk({"--version", "v2b", "--schemas", "1,2", "--stream", "--blob", kBlob}));
  CHECK(state_of(port)["schema"] == "2");
  // Back to schema 1, and from a streamed export to a memfd one.
  upgrade_ok(sup, sdk({"--version", "v1b", "--schemas", "1", "--blob", kBlob}));
  upgrade_ok(sup, sdk({"--version", "v1c", "--schemas", "1", "--blob", kBlob}));
  st = state_of(port);
  CHECK(st["entries"] == "100000");
  CHECK(st["blob"] == kBlob);
  CHECK(st["schema"] == "1");
  CHECK(http_get(port, "/data/key-0") == "value-0");
  json s = sup.status_or_fail();
  const json& t = s["last_transfer"];
  CHECK(t["outcome"] == "done");
  REQUIRE(t["imported"].size() == 2);
  for (const json& section : t["imported"])
    CHECK_MESSAGE(section["ok"] == true, section.dump());
  sup.stop();
}

TEST_CASE("state: a streamed section that fails on either side leaves the old generation serving its data") {
  SUBCASE("the exporter throws half-way: the importer hears why, and a required section rolls back") {
    Supervisor sup({"--state-required", "data"}, sdk({"--export-fail", "--stream", "--fill", "20"}));
    const pid_t old_pid = sup.active_pid();
    RunResult r = sup.upgrade_to(sdk({"--version", "v2", "--stream"}));
    CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
    CHECK(contains(r.err,
                   "required section 'data' was not imported: the stream failed: the previous generation's "
                   "save failed: 'the exporter failed on purpose'"));
    check_old_serves(sup, old_pid, sup.port(), 20);
    sup.stop();
  }
  SUBCASE("the importer throws: the section starts cold, and the exporter's save ends") {
    // About 22 MiB: more than the stream's socket buffers hold, so the exporter is still writing
    // when the importer gives up.
    Supervisor sup({}, sdk({"--stream", "--fill", "600000"}));
    RunResult r = upgrade_ok(sup, sdk({"--version", "v2", "--stream", "--import-fail"}));
    CHECK(contains(r.out, "data: starts cold: its load function failed: the importer failed on purpose"));
    CHECK(state_of(sup.port())["entries"] == "0");
    json s = sup.status_or_fail();
    CHECK(s["last_transfer"]["exported"][0]["ok"] == false);
    CHECK(contains(s["last_transfer"]["exported"][0]["reason"].get<std::string>(),
                   "section 'data': the next generation closed the stream"));
    sup.stop();
  }
  SUBCASE("the importer crashes mid-stream: rolled back; the old generation serves and streams again") {
    Supervisor sup({}, sdk({"--stream", "--fill", "200000"}));
    const pid_t old_pid = sup.active_pid();
    RunResult r = sup.upgrade_to(sdk({"--version", "v2", "--stream", "--import-crash"}));
    CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
    CHECK(contains(r.err, "was killed by SIGABRT"));
    check_old_serves(sup, old_pid, sup.port(), 200000);
    upgrade_ok(sup, sdk({"--version", "v2", "--stream"}));
    CHECK(state_of(sup.port())["entries"] == "200000");
    sup.stop();
  }
  SUBCASE("the exporter crashes mid-stream: the importer sees the stream cut short and starts cold") {
    Supervisor sup({}, sdk({"--stream", "--export-crash", "--fill", "20"}));
    RunResult r = sup.upgrade_to(sdk({"--version", "v2", "--stream"}));
    CHECK_MESSAGE(contains(r.out + r.err, "data: starts cold: the stream failed: truncated: the stream ended"),
                  r.out << r.err);
    sup.stop();
  }
}

TEST_CASE("state: a worker speaking another channel protocol version is refused with a sentence") {
  Supervisor sup({}, sdk({"--fill", "8"}));
  const pid_t old_pid = sup.active_pid();
  RunResult r = sup.upgrade_to(sdk({"--raw-hello", "8:9"}));
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK(contains(r.err, "speaks worker channel protocol 8 to 9, and this supervisor speaks version 7"));
  CHECK(sup.proc().wait_output("sdk-worker: refused: generation 2 speaks worker channel protocol 8 to 9", 5s));
  check_old_serves(sup, old_pid, sup.port(), 8);
  sup.stop();
}

TEST_CASE("state: a worker that sends garbage on its channel is refused, and the supervisor carries on") {
  Supervisor sup({}, sdk({"--fill", "8"}));
  const pid_t old_pid = sup.active_pid();
  RunResult r = sup.upgrade_to(sdk({"--raw-garbage"}));
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK(contains(r.err, "generation 2 sent a bad channel message: channel frame: bad magic"));
  CHECK(sup.proc().wait_output("sdk-worker: refused: generation 2 sent a bad channel message", 5s));
  check_old_serves(sup, old_pid, sup.port(), 8);
  upgrade_ok(sup, sdk({"--version", "v2"}));
  CHECK(state_of(sup.port())["entries"] == "8");
  sup.stop();
}

TEST_CASE("state: SDK upgrades leave no descriptor, process or generation behind") {
  Supervisor sup({}, sdk({"--fill", "100", "--pass-fds", "3"}));
  upgrade_ok(sup, sdk({"--version", "v2", "--pass-fds", "3"}));
  // The old generation drains after upgrade_ok returns, and the supervisor holds its channel until
  // it has exited: descriptors are counted once the active generation is the only one left.
  auto only_active = [&] {
    return wait_until(
        [&] {
          auto s = sup.status();
          return s && (*s)["generations"].size() == 1;
        },
        10s);
  };
  REQUIRE(only_active());
  const std::size_t fds_before = settled_fd_count(sup.pid());
  for (int i = 3; i <= 7; ++i)
    upgrade_ok(sup, sdk({"--version", fmt::format("v{}", i), "--pass-fds", "3"}));
  REQUIRE(only_active());
  const std::string held = fds_settle_to(sup.pid(), fds_before, 5s);
  CHECK_MESSAGE(held.empty(), held);
  CHECK(sup.processes().size() == 1);
  json s = sup.status_or_fail();
  CHECK(s["generations"].size() == 1);
  CHECK(s["counters"]["upgrades_done"] == 6);
  CHECK(state_of(sup.port())["entries"] == "100");
  // The worker holds its listener, its channel, the peer link's end while the old generation
  // drains, and the 3 passed descriptors: not one more per upgrade.
  const auto worker_fds = list_fds(sup.active_pid());
  CHECK(worker_fds.size() <= 3 + 1 + 1 + 1 + 3 + 2);
  sup.stop();
}

TEST_CASE("state: a transfer waits until the generation before its source has drained") {
  // Generation 1 keeps serving (and could keep streaming changes to 2) for 1.5 s after its drain
  // request; 2's state goes to 3 only once 1 is gone, so that nothing 1 acknowledged is lost.
  Supervisor sup({"--drain-timeout", "10s"}, sdk({"--fill", "20", "--drain-delay-ms", "1500"}));
  const pid_t first = sup.active_pid();
  RunResult r = sup.upgrade_to(sdk({"--version", "v2"}));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  REQUIRE(pid_alive(first));
  const auto t0 = Clock::now();
  r = sup.upgrade_to(sdk({"--version", "v3"}));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(contains(r.out,
                 "waiting for generation 1 to finish draining, so that the changes it still streams to "
                 "generation 2 reach generation 3 too"));
  CHECK_FALSE(pid_alive(first));
  CHECK(Clock::now() - t0 >= 500ms);
  sup.stop();
}

TEST_CASE("state: a worker reported ready before its hello is told why it got no state") {
  // With --ready delay, a worker that is slow to call Worker::start() is "ready" before it says
  // hello: the upgrade goes on without a transfer, and the worker learns why instead of waiting.
  Supervisor sup({"--ready", "delay:100ms"}, sdk({"--fill", "20"}));
  RunResult r = upgrade_ok(sup, sdk({"--version", "v2", "--start-delay-ms", "600"}));
  REQUIRE(wait_until([&] { return contains(http_get(sup.port(), "/state"), "reason="); }, 10s));
  auto st = state_of(sup.port());
  CHECK(st["entries"] == "0");
  CHECK(contains(st["reason"], "reported ready (--ready delay:100ms) before it said hello, so no state was moved"));
  sup.stop();
}

TEST_CASE("state: a transfer over its --state-timeout rolls back at once, and the old generation serves on") {
  Supervisor sup({"--state-timeout", "500ms", "--drain-timeout", "30s"},
                 sdk({"--fill", "9", "--export-delay-ms", "3000"}));
  const pid_t old_pid = sup.active_pid();
  const auto t0 = Clock::now();
  RunResult r = sup.upgrade_to(sdk({"--version", "v2"}));
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK(contains(r.err, "the state transfer did not finish within 500ms (--state-timeout)"));
  // The new generation never finished its import, so it is killed at once rather than left to
  // the 30 s drain timeout.
  CHECK(Clock::now() - t0 < 10s);
  CHECK(sup.proc().wait_output("stopping it at once with SIGKILL", 5s));
  check_old_serves(sup, old_pid, sup.port(), 9);
  sup.stop();
}

TEST_CASE("state: more than 253 descriptors reach the next generation, close-on-exec") {
  Supervisor sup({}, sdk({"--pass-fds", "300"}));
  RunResult r = sup.upgrade_to(sdk({"--version", "v2"}));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(sup.proc().wait_output("sdk-worker v2: generation 2, received 300 descriptor(s), cloexec=1", 5s));
  // The drained generation took its copies with it; the supervisor holds none of them.
  const auto fds = list_fds(sup.pid());
  std::size_t memfds = 0;
  for (const auto& fd : fds)
    memfds += contains(fd.target, "sdk-worker-extra") ? 1 : 0;
  CHECK(memfds == 0);
  sup.stop();
}

TEST_CASE("state: a resumable SDK worker parks after its drain and serves again when a revert resumes it") {
  // The parking and the resume on the SDK's two threads, with a worker that uses plain system
  // calls (this test also runs under ThreadSanitizer).
  Supervisor sup({"--drain-timeout", "10s"}, sdk({"--resumable", "--fill", "12"}));
  const std::uint16_t port = sup.port();
  const pid_t v1_pid = sup.active_pid();
  RunResult up = sup.cli({"upgrade", "--wait", "--", test_worker_bin(), "crash-after-ready", "200"}, 60s);
  CHECK_MESSAGE(up.exit_code == 1, up.out << up.err);
  CHECK(sup.proc().wait_output("sdk-worker v1: drained", 10s));
  CHECK(sup.proc().wait_output("sdk-worker v1: resumed", 10s));
  REQUIRE_MESSAGE(wait_until([&] { return sup.active_pid() == v1_pid && sup.active_state() == "ready"; }, 15s),
                  sup.status_or_fail().dump());
  check_old_serves(sup, v1_pid, port, 12);
  CHECK(contains(http_get(port, "/"), fmt::format("pid={}", v1_pid)));

  // Resumed, it drains and exports like any generation: the next upgrade takes its state, and the
  // parking that follows ends with the supervisor (a stop ends it at once).
  RunResult next = sup.upgrade_to(sdk({"--version", "v2"}));
  REQUIRE_MESSAGE(next.exit_code == 0, next.out << next.err);
  CHECK(state_of(port)["entries"] == "12");
  sup.stop();
  CHECK_FALSE(pid_alive(v1_pid));
}

namespace {

// The snapshot process (Section::freeze) among the supervisor's descendants, or 0.
pid_t snapshot_process(Supervisor& sup) {
  for (pid_t p : descendants_of(sup.pid())) {
    auto comm = read_file("/proc/" + std::to_string(p) + "/comm");
    if (comm && comm->starts_with("hr-snapshot")) return p;
  }
  return 0;
}

}  // namespace

TEST_CASE("state: a save in a forked process serves on meanwhile, and its death leaves the old generation whole") {
  SUBCASE("killed from outside while it saves: rolled back, and the next upgrade carries everything") {
    Supervisor sup({"--state-required", "data"}, sdk({"--fork-save", "--fill", "5000", "--export-delay-ms", "4000"}));
    const pid_t old_pid = sup.active_pid();
    const std::uint16_t port = sup.port();
    RunResult r;
    std::thread upgrade([&] { r = sup.upgrade_to(sdk({"--version", "v2"})); });
    pid_t child = 0;
    CHECK(wait_until([&] { return (child = snapshot_process(sup)) != 0; }, 10s));
    // The old generation answers while its snapshot is being written (the save is in the child),
    // and the child runs at the transfer's priority (Options::transfer_nice, 10 by default).
    CHECK(state_of(port)["entries"] == "5000");
    if (child != 0) {
      auto stat = read_file("/proc/" + std::to_string(child) + "/stat");
      REQUIRE(stat.has_value());
      std::istringstream fields(stat->substr(stat->rfind(')') + 2));
      std::vector<std::string> f{std::istream_iterator<std::string>(fields), std::istream_iterator<std::string>()};
      REQUIRE(f.size() > 16);
      CHECK(f[16] == "10");  // Field 19 of /proc/PID/stat, the 17th after the name.
      ::kill(child, SIGKILL);
    }
    upgrade.join();
    CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
    CHECK_MESSAGE(contains(r.err, "the process saving it ended without a result (killed by signal 9)"), r.err);
    check_old_serves(sup, old_pid, port, 5000);
    CHECK(sup.proc().wait_output("section 'data': saved by a forked process", 5s));
    upgrade_ok(sup, sdk({"--version", "v2", "--fork-save"}));
    const auto state = state_of(port);
    CHECK(state.at("entries") == "5000");
    // The import ran on a thread of the SDK's, at the transfer's priority.
    CHECK(state.at("load_nice") == "10");
    CHECK(state.at("load_on_main") == "0");
    CHECK(http_get(port, "/data/key-4999") == "value-4999");
    sup.stop();
  }
  SUBCASE("the save aborts in the child: the old generation, which a locked save would have taken down, serves on") {
    for (const bool stream : {false, true}) {
      CAPTURE(stream);
      std::vector<std::string> args = {"--fork-save", "--export-crash", "--fill", "300"};
      if (stream) args.push_back("--stream");
      Supervisor sup({"--state-required", "data"}, sdk(args));
      const pid_t old_pid = sup.active_pid();
      RunResult r = sup.upgrade_to(sdk({"--version", "v2"}));
      CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
      CHECK(contains(r.err, "required section 'data' was not imported"));
      check_old_serves(sup, old_pid, sup.port(), 300);
      sup.stop();
    }
  }
}
