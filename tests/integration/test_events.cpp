// The event log: each upgrade phase, each generation's life and each request with who sent it,
// kept in the state directory across restarts, bounded, and followed as it happens.
#include <sys/stat.h>
#include <unistd.h>

#include <regex>

#include <fmt/format.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

std::vector<json> events_of(Supervisor& sup) {
  RunResult r = sup.cli({"events", "--json", "--last", "100000"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  std::vector<json> out;
  for (const std::string& line : lines_of(r.out)) {
    json j = json::parse(line, nullptr, false);
    REQUIRE_MESSAGE(j.is_object(), line);
    out.push_back(std::move(j));
  }
  return out;
}

// The first event of `type` (and generation `generation`, unless 0), or null.
json find_event(const std::vector<json>& events, const std::string& type, std::uint64_t generation = 0) {
  for (const json& e : events)
    if (e.value("type", "") == type && (generation == 0 || e.value("generation", std::uint64_t{0}) == generation))
      return e;
  return nullptr;
}

void check_numbered_in_order(const std::vector<json>& events) {
  for (std::size_t i = 1; i < events.size(); ++i)
    CHECK_MESSAGE(events[i]["seq"].get<std::uint64_t>() == events[i - 1]["seq"].get<std::uint64_t>() + 1,
                  events[i - 1].dump() << "\n"
                                       << events[i].dump());
}

std::size_t file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<std::size_t>(st.st_size) : 0;
}

}  // namespace

TEST_CASE("events: an upgrade's phases, each generation and who asked are recorded, and outlive the supervisor") {
  Supervisor sup({}, hello("v1"));
  std::uint64_t last_seq = 0;
  {
    RunResult r = sup.upgrade_to(hello("v2"));
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
    std::vector<json> events;
    REQUIRE(wait_until(
        [&] {
          events = events_of(sup);
          return !find_event(events, "generation.exited", 1).is_null();
        },
        15s));
    check_numbered_in_order(events);
    CHECK(find_event(events, "supervisor.started")["took_over"] == false);
    CHECK(find_event(events, "generation.started", 1)["command"] == json(hello("v1")));
    CHECK(!find_event(events, "generation.ready", 1).is_null());
    CHECK(!find_event(events, "generation.draining", 1).is_null());
    CHECK(!find_event(events, "generation.ready", 2).is_null());

    // Who asked: this process's uid, and the pid of the `hotrestart upgrade` that sent it.
    const json request = find_event(events, "request");
    CHECK(request["command"] == "upgrade");
    CHECK(request["uid"] == ::getuid());
    const json phase = find_event(events, "upgrade.phase");
    CHECK(phase["uid"] == ::getuid());
    CHECK(phase["pid"] == request["pid"]);
    const json result = find_event(events, "upgrade.result");
    CHECK(result["ok"] == true);
    CHECK(result["generation"] == 2);
    CHECK(result["release"] == 2);
    CHECK(result["timeline"].size() >= 3);
    for (const json& e : events)
      CHECK_MESSAGE(std::regex_match(e["time"].get<std::string>(), std::regex(R"(\d{4}-\d\d-\d\dT[0-9:.]{12}Z)")),
                    e.dump());

    // The same, for people.
    RunResult text = sup.cli({"events", "--last", "100"});
    CHECK(text.exit_code == 0);
    CHECK_MESSAGE(contains(text.out, "upgrade.result generation 2 release 2: generation 2 (pid "), text.out);
    CHECK_MESSAGE(contains(text.out, fmt::format("request upgrade (uid {}, pid ", ::getuid())), text.out);
    CHECK(lines_of(sup.cli({"events", "-n", "3"}).out).size() == 3);
    last_seq = events.back()["seq"];
    sup.stop();
  }
  // A supervisor started again with the same state directory has them, and numbers on.
  Supervisor again(sup.place(), {}, hello("v3"));
  const std::vector<json> events = events_of(again);
  check_numbered_in_order(events);
  CHECK(!find_event(events, "upgrade.result").is_null());
  CHECK(!find_event(events, "supervisor.stopped").is_null());
  bool found = false;
  for (const json& e : events) {
    if (e["type"] == "supervisor.started" && e["seq"].get<std::uint64_t>() > last_seq) found = true;
  }
  CHECK(found);
  again.stop();
}

TEST_CASE("events: --follow shows each event as it happens, until the supervisor stops") {
  Supervisor sup({}, hello("v1"));
  Child follower =
      Child::spawn({hotrestart_bin(), "events", "--control", sup.control(), "--follow", "--json", "-n", "1"});
  // Once it has printed the newest event it follows: the upgrade below is what it must see next.
  REQUIRE_MESSAGE(follower.wait_output("\"seq\"", 10s, Stream::Out), follower.describe());
  CHECK(lines_of(follower.out()).size() == 1);
  RunResult r = sup.upgrade_to(hello("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK_MESSAGE(follower.wait_output("\"type\":\"upgrade.result\"", 10s, Stream::Out), follower.describe());
  sup.stop();
  CHECK(follower.wait_for(10s) == std::optional<int>(0));
  for (const std::string& line : lines_of(follower.out()))
    CHECK_MESSAGE(json::parse(line, nullptr, false).is_object(), line);
  CHECK(contains(follower.out(), "\"type\":\"supervisor.stopped\""));
}

TEST_CASE("events: the log turns over at --event-log-size and keeps the newest") {
  Supervisor sup({"--event-log-size", "4KiB"}, hello("v1"));
  for (int i = 0; i < 8; ++i) {
    RunResult r = sup.upgrade_to(hello(fmt::format("v{}", i + 2)));
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  }
  const std::string file = sup.place().state_dir + "/events.jsonl";
  CHECK(file_size(file) > 0);
  CHECK(file_size(file) <= 4096);
  CHECK(file_size(file + ".1") > 0);
  CHECK(file_size(file + ".1") <= 4096);
  const std::vector<json> events = events_of(sup);
  check_numbered_in_order(events);
  // What is kept ends with the newest, and the oldest went with the turnover.
  CHECK(events.back()["seq"].get<std::uint64_t>() > events.size());
  CHECK(find_event(events, "supervisor.started").is_null());
  sup.stop();
}

TEST_CASE("events: a bad --event-log-size or --last is a usage error") {
  RunResult small = run(
      {hotrestart_bin(), "run", "--event-log-size", "12", "--listen", "tcp://127.0.0.1:0", "--", "/bin/true"}, {}, 10s);
  CHECK(small.exit_code == 2);
  CHECK_MESSAGE(contains(small.err, "--event-log-size"), small.err);
  RunResult last = run({hotrestart_bin(), "events", "--control", "/nonexistent/ctl.sock", "--last", "many"}, {}, 10s);
  CHECK(last.exit_code == 2);
  CHECK_MESSAGE(contains(last.err, "--last"), last.err);
}
