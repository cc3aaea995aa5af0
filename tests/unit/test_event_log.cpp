// The event log on its own: its sequence across restarts, a line a crash cut short, the turnover of
// its file, and where `recent` reads from.
#include <doctest/doctest.h>

#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "event_log.h"
#include "testsupport.h"

using namespace hotrestart;
using nlohmann::json;

namespace {

std::vector<json> lines_of_file(const std::string& path) {
  std::vector<json> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);)
    out.push_back(json::parse(line, nullptr, false));
  return out;
}

std::vector<std::uint64_t> seqs(const std::vector<json>& events) {
  std::vector<std::uint64_t> out;
  for (const auto& e : events)
    out.push_back(e.value("seq", std::uint64_t{0}));
  return out;
}

}  // namespace

TEST_CASE("event log: the sequence goes on from the last file after a restart") {
  testsupport::TempDir dir;
  {
    EventLog log(dir.path(), EventLog::kDefaultMaxBytes);
    for (int i = 0; i < 5; ++i)
      log.record({{"type", "test"}, {"i", i}});
    CHECK(log.last_seq() == 5);
  }
  EventLog again(dir.path(), EventLog::kDefaultMaxBytes);
  CHECK(again.last_seq() == 5);
  again.record({{"type", "test"}});
  const auto events = lines_of_file(again.path());
  REQUIRE(events.size() == 6);
  CHECK(seqs(events) == std::vector<std::uint64_t>{1, 2, 3, 4, 5, 6});
  // Nothing in memory yet beyond the one event: the rest comes from the file.
  CHECK(seqs(again.recent(3)) == std::vector<std::uint64_t>{4, 5, 6});
  CHECK(seqs(again.recent(100)).size() == 6);
}

TEST_CASE("event log: a line cut short by a crash does not swallow the next one") {
  testsupport::TempDir dir;
  {
    EventLog log(dir.path(), EventLog::kDefaultMaxBytes);
    log.record({{"type", "first"}});
  }
  {
    std::ofstream out(dir.file(EventLog::kFileName), std::ios::app);
    out << R"({"time":"2026-01-01T00:00:00.000Z","seq":2,"ty)";
  }
  EventLog log(dir.path(), EventLog::kDefaultMaxBytes);
  CHECK(log.last_seq() == 1);  // The broken line is passed over.
  log.record({{"type", "after"}});
  log.record({{"type", "later"}});
  const auto events = lines_of_file(log.path());
  REQUIRE(events.size() == 4);
  CHECK(events[1].is_discarded());
  CHECK(events[2]["type"] == "after");
  CHECK(events[2]["seq"] == 2);
  CHECK(events[3]["type"] == "later");
  CHECK(log.error().empty());
}

TEST_CASE("event log: the file turns over at its bound and recent reads across both") {
  testsupport::TempDir dir;
  constexpr std::size_t kBound = 4096;
  EventLog log(dir.path(), kBound);
  const std::string padding(200, 'x');
  for (int i = 0; i < 60; ++i)
    log.record({{"type", "test"}, {"padding", padding}});
  const auto current = lines_of_file(log.path());
  const auto previous = lines_of_file(log.path() + ".1");
  REQUIRE_FALSE(current.empty());
  REQUIRE_FALSE(previous.empty());
  CHECK(testsupport::read_file(log.path())->size() <= kBound);
  CHECK(testsupport::read_file(log.path() + ".1")->size() <= kBound);
  // The two files hold the newest events, in order, with nothing missing between them.
  CHECK(previous.back()["seq"].get<std::uint64_t>() + 1 == current.front()["seq"].get<std::uint64_t>());
  CHECK(current.back()["seq"] == 60);

  // A new supervisor, with nothing in memory, reads the newest events from the ends of both files.
  EventLog again(dir.path(), kBound);
  CHECK(again.last_seq() == 60);
  const std::size_t both = current.size() + previous.size();
  const auto all = again.recent(both);
  REQUIRE(all.size() == both);
  CHECK(all.front()["seq"] == previous.front()["seq"]);
  CHECK(all.back()["seq"] == 60);
  const auto some = again.recent(current.size() + 1);
  REQUIRE(some.size() == current.size() + 1);
  CHECK(some.front()["seq"] == previous.back()["seq"]);
  // Asking for more than there is gives what there is.
  CHECK(again.recent(100000).size() == both);
}

TEST_CASE("event log: a state directory that cannot be written keeps events in memory") {
  EventLog log("/proc/hotrestart-no-such-dir", EventLog::kDefaultMaxBytes);
  log.record({{"type", "one"}});
  log.record({{"type", "two"}});
  CHECK_FALSE(log.error().empty());
  CHECK(log.error().find("cannot open /proc/hotrestart-no-such-dir/events.jsonl") != std::string::npos);
  const auto events = log.recent(10);
  REQUIRE(events.size() == 2);
  CHECK(events[1]["type"] == "two");
  CHECK(events[1]["seq"] == 2);
}
