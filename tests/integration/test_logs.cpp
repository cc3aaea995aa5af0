// What the supervisor's stderr looks like in each --log-format: a time on every text line, the
// journal's priorities when stderr is the journal, one JSON object per line; and the workers'
// relayed lines marked with their generation in each.
#include <cmath>
#include <ctime>
#include <regex>

#include <fmt/format.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

// A run, a failed upgrade whose worker says `said` before it exits 3, a good upgrade and a stop:
// lines of every kind. Returns the supervisor's whole stderr.
std::string run_through(std::vector<std::string> run_args, std::vector<std::string> prefix, const std::string& said) {
  Supervisor sup(std::move(run_args), hello("v1"), true, {}, std::move(prefix));
  RunResult bad = sup.upgrade_to({test_worker_bin(), "say-and-exit", "3", said});
  CHECK_MESSAGE(bad.exit_code == 1, bad.out << bad.err);
  RunResult good = sup.upgrade_to(hello("v2"));
  CHECK_MESSAGE(good.exit_code == 0, good.out << good.err);
  sup.stop();
  return sup.proc().err();
}

// Runs `hotrestart run` with JOURNAL_STREAM naming its stderr, as systemd does for a service whose
// output goes to the journal.
const std::vector<std::string> kUnderJournal = {"sh", "-c",
                                                "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$@\"", "sh"};

}  // namespace

TEST_CASE("logs: each text line starts with the time in UTC, and a worker's lines name its generation") {
  const std::string err = run_through({}, {}, "cannot open the configuration");
  const std::regex line_shape(R"(^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.\d{3}Z (hotrestart|gen\d+)\[\d+\]: .*$)");
  const std::time_t now = std::time(nullptr);
  int lines = 0;
  for (const std::string& line : lines_of(err)) {
    std::smatch m;
    REQUIRE_MESSAGE(std::regex_match(line, m, line_shape), line);
    std::tm t{};
    t.tm_year = std::stoi(m[1]) - 1900;
    t.tm_mon = std::stoi(m[2]) - 1;
    t.tm_mday = std::stoi(m[3]);
    t.tm_hour = std::stoi(m[4]);
    t.tm_min = std::stoi(m[5]);
    t.tm_sec = std::stoi(m[6]);
    CHECK_MESSAGE(std::abs(std::difftime(now, ::timegm(&t))) < 120, line);
    ++lines;
  }
  CHECK(lines > 5);
  CHECK_MESSAGE(std::regex_search(err, std::regex(R"(Z gen2\[\d+\]: cannot open the configuration\n)")), err);
  CHECK_MESSAGE(std::regex_search(err, std::regex(R"(Z hotrestart\[\d+\]: (warning|error): )")), err);
}

TEST_CASE("logs: under the journal each line carries its priority and no time") {
  const std::string err = run_through({}, kUnderJournal, "<3>cannot open the configuration");
  const std::regex line_shape(R"(^<([0-7])>(hotrestart|gen\d+)\[\d+\]: (.*)$)");
  bool info = false;
  bool failure = false;
  for (const std::string& line : lines_of(err)) {
    std::smatch m;
    REQUIRE_MESSAGE(std::regex_match(line, m, line_shape), line);
    const int priority = std::stoi(m[1]);
    const std::string text = m[3];
    // The supervisor's own levels and the journal's priorities agree.
    if (m[2] == "hotrestart") {
      if (text.starts_with("error: ")) CHECK_MESSAGE(priority == 3, line);
      if (text.starts_with("warning: ")) CHECK_MESSAGE(priority == 4, line);
      if (!text.starts_with("error: ") && !text.starts_with("warning: ")) CHECK_MESSAGE(priority == 6, line);
      info = info || priority == 6;
      failure = failure || priority <= 4;
    }
  }
  CHECK(info);
  CHECK(failure);
  // The worker's own "<3>" is its line's priority, not part of its text; the server's other lines
  // are info.
  CHECK_MESSAGE(std::regex_search(err, std::regex(R"(\n<3>gen2\[\d+\]: cannot open the configuration\n)")), err);
  CHECK_MESSAGE(std::regex_search(err, std::regex(R"(\n<6>gen1\[\d+\]: )")), err);

  // A JOURNAL_STREAM inherited from elsewhere (stderr is not the journal's stream) is not taken
  // for it.
  Supervisor other({}, hello("v1"), true, {}, {"env", "JOURNAL_STREAM=1:1"});
  other.stop();
  for (const std::string& line : lines_of(other.proc().err()))
    CHECK_MESSAGE(std::regex_match(line, std::regex(R"(^\d{4}-\d\d-\d\dT.*Z (hotrestart|gen\d+)\[\d+\]: .*)")), line);
}

TEST_CASE("logs: --log-format json writes one object per line, worker lines with their generation") {
  // Not UTF-8: the line still comes, with the byte replaced.
  const std::string err = run_through({"--log-format", "json"}, {}, "<4>configuration \xff unreadable");
  int own = 0;
  int worker = 0;
  bool warned = false;
  bool said = false;
  for (const std::string& line : lines_of(err)) {
    const json j = json::parse(line, nullptr, false);
    REQUIRE_MESSAGE(j.is_object(), line);
    CHECK_MESSAGE(
        std::regex_match(j["time"].get<std::string>(), std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")), line);
    CHECK(j["pid"].get<int>() > 0);
    CHECK(j["message"].is_string());
    const std::string level = j["level"];
    CHECK_MESSAGE((level == "debug" || level == "info" || level == "warning" || level == "error"), line);
    if (j["source"] == "hotrestart") {
      ++own;
      CHECK(!j.contains("generation"));
      warned = warned || level == "warning" || level == "error";
    } else {
      REQUIRE_MESSAGE(j["source"] == "worker", line);
      ++worker;
      CHECK(j["generation"].get<int>() >= 1);
      if (j["generation"] == 2 && contains(j["message"].get<std::string>(), "configuration")) {
        CHECK(j["message"] == "configuration \xef\xbf\xbd unreadable");
        CHECK(j["level"] == "warning");
        said = true;
      }
    }
  }
  CHECK(own > 3);
  CHECK(worker > 0);
  CHECK(warned);
  CHECK_MESSAGE(said, err);
}

TEST_CASE("logs: an unknown --log-format is a usage error") {
  RunResult r = run(
      {hotrestart_bin(), "run", "--log-format", "xml", "--listen", "tcp://127.0.0.1:0", "--", "/bin/true"}, {}, 10s);
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(contains(r.err, "--log-format"), r.err);
}
