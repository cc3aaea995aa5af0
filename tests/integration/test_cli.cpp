// The command line as an operator meets it: the help of every command, durations, suggestions for
// a mistyped word, and the exit codes of usage errors.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include <hotrestart/fd.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

const std::vector<std::string> kCommands = {"run",     "upgrade", "rollback", "promote", "abort",
                                            "history", "events",  "status",   "stop",    "version"};

RunResult cli(std::vector<std::string> args) {
  args.insert(args.begin(), hotrestart_bin());
  return run(std::move(args), {}, 10s);
}

}  // namespace

TEST_CASE("cli: every command's help shows placeholders, defaults and a usage line without CLI11's type names") {
  for (const std::string& command : kCommands) {
    CAPTURE(command);
    const RunResult r = cli({command, "--help"});
    CHECK(r.exit_code == 0);
    CHECK_MESSAGE(contains(r.out, fmt::format("Usage: hotrestart {}", command)), r.out);
    // CLI11's own type names and its "=DEFAULT" after them are gone, and so is the binary's path.
    CHECK_MESSAGE(!std::regex_search(r.out, std::regex("\\b(TEXT|U?INT|FLOAT)\\b")), r.out);
    // The placeholder of an option that was given none (NAME=VALUE, a placeholder of its own, stays).
    CHECK_MESSAGE(!std::regex_search(r.out, std::regex("(^|\\s)VALUE(\\s|$)")), r.out);
    for (const std::string& noise :
         {std::string(":{"), std::string("=30s"), std::string("[0 - "), std::string("REQUIRED"), hotrestart_bin()}) {
      CHECK_MESSAGE(!contains(r.out, noise), noise << " in:\n" << r.out);
    }
    // No line is wider than a terminal, or ends in a space.
    std::istringstream lines(r.out);
    for (std::string line; std::getline(lines, line);) {
      CHECK_MESSAGE(line.size() <= 100, line);
      CHECK_MESSAGE((line.empty() || line.back() != ' '), "[" << line << "]");
    }
  }
  const RunResult run_help = cli({"run", "--help"});
  CHECK(contains(run_help.out, "Usage: hotrestart run [OPTIONS] --listen SPEC... -- COMMAND [ARGS...]"));
  CHECK(contains(run_help.out, "--drain-timeout DURATION"));
  CHECK(contains(run_help.out, "--listen SPEC"));
  CHECK(contains(run_help.out, "(default: 30s)"));
  CHECK(contains(run_help.out, "(default: 1MiB)"));
  CHECK(contains(run_help.out, "--adopt-binds "));
  CHECK(contains(cli({"upgrade", "--help"}).out, "Usage: hotrestart upgrade [OPTIONS] [-- COMMAND [ARGS...]]"));
  CHECK(contains(cli({"upgrade", "--help"}).out, "--hold DURATION|manual"));
  CHECK(contains(cli({"events", "--help"}).out, "-n,--last N"));
  const RunResult top = cli({"--help"});
  CHECK(top.exit_code == 0);
  CHECK(contains(top.out, "Usage: hotrestart COMMAND [OPTIONS]"));
  for (const std::string& command : kCommands)
    CHECK_MESSAGE(contains(top.out, "\n  " + command + " "), command);
  CHECK(contains(top.out, "8 no supervisor runs"));
}

TEST_CASE("cli: --version and version print the version and the commit") {
  const RunResult flag = cli({"--version"});
  CHECK(flag.exit_code == 0);
  CHECK_MESSAGE(std::regex_match(flag.out, std::regex("hotrestart [0-9]+\\.[0-9]+\\.[0-9]+ \\(commit "
                                                      "([0-9a-f]{12}(-dirty)?|unknown)\\)\n")),
                flag.out);
  const RunResult command = cli({"version"});
  CHECK(command.exit_code == 0);
  CHECK(command.out == flag.out);
}

TEST_CASE("cli: a mistyped flag or command gets the nearest one and exit 2") {
  const RunResult flag = cli({"upgrade", "--drian-timeout", "5s"});
  CHECK(flag.exit_code == 2);
  CHECK_MESSAGE(contains(flag.err, "unknown option --drian-timeout; did you mean --drain-timeout?"), flag.err);
  const RunResult run_flag = cli({"run", "--drian-timeout", "5s", "--listen", "tcp://127.0.0.1:0", "--", "/bin/true"});
  CHECK(run_flag.exit_code == 2);
  CHECK_MESSAGE(contains(run_flag.err, "unknown option --drian-timeout; did you mean --drain-timeout?"), run_flag.err);
  const RunResult with_value = cli({"upgrade", "--exec=/bin/true", "--jsno"});
  CHECK(with_value.exit_code == 2);
  CHECK_MESSAGE(contains(with_value.err, "unknown option --jsno; did you mean --json?"), with_value.err);
  const RunResult command = cli({"upgarde"});
  CHECK(command.exit_code == 2);
  CHECK_MESSAGE(contains(command.err, "unknown command 'upgarde'; did you mean upgrade?"), command.err);
  const RunResult far = cli({"status", "--everything"});
  CHECK(far.exit_code == 2);
  CHECK_MESSAGE(contains(far.err, "unknown option --everything for status (see `hotrestart status --help`)"), far.err);
  const RunResult none = cli({});
  CHECK(none.exit_code == 2);
  // The commands of a command.
  const RunResult nested = cli({"config", "histroy"});
  CHECK(nested.exit_code == 2);
  CHECK_MESSAGE(contains(nested.err, "unknown command 'config histroy'; did you mean history?"), nested.err);
  const RunResult nested_flag = cli({"config", "history", "--jsno"});
  CHECK_MESSAGE(contains(nested_flag.err, "unknown option --jsno; did you mean --json?"), nested_flag.err);
  const RunResult version = cli({"config", "show", "abc"});
  CHECK(version.exit_code == 2);
  CHECK_MESSAGE(
      contains(version.err, "must be a version number (1, 2, ...; see `hotrestart config history`), not 'abc'"),
      version.err);
}

TEST_CASE("cli: the help of a command of a command names it whole") {
  CHECK(contains(cli({"config", "history", "--help"}).out, "Usage: hotrestart config history [OPTIONS]"));
  CHECK(contains(cli({"config", "show", "--help"}).out, "Usage: hotrestart config show [V] [OPTIONS]"));
  CHECK(contains(cli({"reload", "--help"}).out, "Usage: hotrestart reload [NAME] [OPTIONS]"));
}

TEST_CASE("cli: usage errors of run exit 2, --listen included") {
  const RunResult no_listen = cli({"run", "--", hello_bin()});
  CHECK(no_listen.exit_code == 2);
  CHECK_MESSAGE(contains(no_listen.err, "run needs at least one --listen SPEC"), no_listen.err);
  const RunResult no_command = cli({"run", "--listen", "tcp://127.0.0.1:0"});
  CHECK(no_command.exit_code == 2);
  const RunResult bad_size =
      cli({"run", "--event-log-size", "lots", "--listen", "tcp://127.0.0.1:0", "--", "/bin/true"});
  CHECK(bad_size.exit_code == 2);
}

TEST_CASE("cli: malformed durations are refused naming the flag, and infinity only where it means something") {
  struct Case {
    std::vector<std::string> flag;
    const char* says;
  };
  const std::vector<Case> cases = {
      {{"--drain-timeout", "1m30"}, "the last number has no unit"},
      {{"--drain-timeout", "-1s"}, "cannot be negative"},
      {{"--ready-timeout", "1.5.3s"}, "one decimal point"},
      {{"--min-ready", "99999999999999999999999s"}, "longer than a week"},
      {{"--watch-window", "30"}, "unit is missing"},
      {{"--ready-timeout", "infinity"}, "not allowed here"},
      {{"--health-interval", "infinity"}, "not allowed here"},
      {{"--state-timeout", "0.0001s"}, "finer than a millisecond"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"run"};
    args.insert(args.end(), c.flag.begin(), c.flag.end());
    for (const char* rest : {"--listen", "tcp://127.0.0.1:0", "--", "/bin/true"})
      args.emplace_back(rest);
    const RunResult r = cli(args);
    CAPTURE(c.flag[1]);
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(contains(r.err, c.flag[0]), r.err);
    CHECK_MESSAGE(contains(r.err, c.says), r.err);
  }
  const RunResult hold = cli({"upgrade", "--hold", "1m30", "--control", "/nonexistent/c.sock"});
  CHECK(hold.exit_code == 2);
  CHECK_MESSAGE(contains(hold.err, "--hold"), hold.err);
}

TEST_CASE("cli: run takes 1m30s, 1.5s and --drain-timeout infinity, and status shows them") {
  Supervisor sup({"--drain-timeout", "infinity", "--ready-timeout", "1m30s", "--min-ready", "0.25s"}, hello("v1"));
  const json s = sup.status_or_fail();
  CHECK_MESSAGE(s.dump().find("\"timeout_ms\":315360000000") != std::string::npos, s.dump());
  CHECK_MESSAGE(s.dump().find("\"timeout_ms\":90000") != std::string::npos, s.dump());
  // A worker that is never killed for draining still drains and exits on the stop: it is not
  // left waiting for the deadline.
  const RunResult stop = sup.cli({"stop"}, 30s);
  CHECK_MESSAGE(stop.exit_code == 0, stop.err);
}

TEST_CASE("cli: a supervisor that closes the connection without answering counts as none running: exit 8") {
  // What a client meets when the supervisor exits as its question arrives: a socket that accepts
  // and closes, here played by this test.
  TempDir dir;
  const std::string path = dir.file("control.sock");
  hotrestart::Fd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  REQUIRE(listener);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof addr.sun_path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener.get(), 8) == 0);
  std::thread closer([&] {
    // Each client in turn, for 10 s at most.
    for (int i = 0; i < 2; ++i) {
      pollfd p{listener.get(), POLLIN, 0};
      if (::poll(&p, 1, 10'000) != 1) return;
      hotrestart::Fd peer(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    }
  });
  const RunResult status = cli({"status", "--control", path});
  const RunResult check = cli({"status", "--check", "--control", path});
  closer.join();
  CHECK(status.exit_code == 8);
  CHECK_MESSAGE(contains(status.err, "the supervisor closed the connection without an answer"), status.err);
  CHECK(check.exit_code == 8);
}
