// The core promise: upgrades under load refuse no connection and fail no request.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <filesystem>
#include <future>
#include <set>

#include <fmt/format.h>

#include <hotrestart/fd.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {}  // namespace

TEST_CASE("20 upgrades under keep-alive and new-connection load: no failed request - old before and new after") {
  Supervisor sup({"--drain-timeout", "10s"}, hello("v1"));
  LoadClient keepalive(load_config(sup.port(), LoadClient::Mode::KeepAlive, 3));
  LoadClient fresh(load_config(sup.port(), LoadClient::Mode::NewConnection, 3));
  keepalive.start();
  fresh.start();
  let_load_run(keepalive, 50);
  let_load_run(fresh, 50);
  const std::size_t fds_before = settled_fd_count(sup.pid());

  struct Mark {
    Clock::time_point begin;
    Clock::time_point old_gone;
    std::uint64_t old_generation;
    std::uint64_t new_generation;
  };
  std::vector<Mark> marks;
  for (int k = 0; k < 20; ++k) {
    Mark m;
    const pid_t old_pid = sup.active_pid();
    m.old_generation = sup.active_generation();
    m.begin = Clock::now();
    RunResult r = sup.upgrade_to(hello(fmt::format("v{}", m.old_generation + 1)));
    REQUIRE_MESSAGE(r.exit_code == 0, "upgrade " << k << ": " << r.out << r.err);
    CHECK(contains(r.out, "cutover"));
    CHECK(contains(r.out, "draining generation"));
    CHECK(contains(r.out, "upgrade succeeded"));
    REQUIRE_MESSAGE(wait_until([&] { return !pid_alive(old_pid); }, 15s), "old generation did not exit");
    m.old_gone = Clock::now();
    m.new_generation = sup.active_generation();
    CHECK(m.new_generation == m.old_generation + 1);
    marks.push_back(m);
    let_load_run(keepalive, 20);
    let_load_run(fresh, 20);
  }
  keepalive.stop();
  fresh.stop();
  require_no_failures(keepalive, "keep-alive clients");
  require_no_failures(fresh, "new-connection clients");

  // Every response came from the generation that should have served it: the old one
  // before the upgrade began, the new one once the old had exited.
  std::size_t checked = 0;
  for (const LoadClient* load : {&keepalive, &fresh}) {
    for (const auto& r : load->responses()) {
      REQUIRE(r.generation > 0);
      CHECK(r.version == fmt::format("v{}", r.generation));
      for (const auto& m : marks) {
        if (r.end < m.begin) REQUIRE(static_cast<std::uint64_t>(r.generation) <= m.old_generation);
        if (r.start > m.old_gone) REQUIRE(static_cast<std::uint64_t>(r.generation) >= m.new_generation);
      }
      ++checked;
    }
  }
  CHECK(checked > 1000);
  const auto versions = fresh.version_counts();
  CHECK(versions.count("v1") == 1);
  CHECK(versions.count("v21") == 1);

  // Process plumbing must not regress across upgrades: same fd count, one worker left.
  const std::string held = fds_settle_to(sup.pid(), fds_before, 5s);
  CHECK_MESSAGE(held.empty(), held);
  CHECK(wait_until([&] { return sup.processes() == std::set<pid_t>{sup.active_pid()}; }, 10s));
  json s = sup.status_or_fail();
  CHECK(s["counters"]["upgrades_done"] == 20);
  CHECK(s["counters"]["upgrades_rolled_back"] == 0);
  CHECK(s["counters"]["crashes"] == 0);
  CHECK(s["last_upgrade"]["outcome"] == "done");
  sup.stop();
}

TEST_CASE("a request in flight when the upgrade begins completes on the old generation") {
  Supervisor sup({"--drain-timeout", "10s"}, hello("v1"));
  LoadClient::Config slow = load_config(sup.port(), LoadClient::Mode::KeepAlive, 1);
  slow.path = "/slow?ms=1500";
  slow.max_requests = 1;
  const pid_t old_pid = sup.active_pid();
  const std::size_t fds_idle = list_fds(old_pid).size();
  LoadClient inflight(slow);
  inflight.start();
  // The old worker has accepted the connection once it holds one more fd: from then on the
  // request is its own, whatever the upgrade does.
  REQUIRE(wait_until([&] { return list_fds(old_pid).size() > fds_idle; }, 5s));
  RunResult r = sup.upgrade_to(hello("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  REQUIRE(inflight.wait_done(10s));
  require_no_failures(inflight, "slow request across an upgrade");
  const auto responses = inflight.responses();
  REQUIRE(responses.size() == 1);
  CHECK(responses[0].version == "v1");
  CHECK(responses[0].pid == old_pid);
  CHECK(responses[0].server_closed);  // the draining server said Connection: close
  CHECK(wait_until([&] { return !pid_alive(old_pid); }, 10s));
  sup.stop();
}

TEST_CASE("SIGUSR2 upgrades with the same command line") {
  Supervisor sup({}, hello("v1"));
  const pid_t old_pid = sup.active_pid();
  REQUIRE(sup.proc().send_signal(SIGUSR2));
  CHECK(wait_until([&] { return sup.active_generation() == 2 && sup.active_state() == "ready"; }, 15s));
  CHECK(wait_until([&] { return !pid_alive(old_pid); }, 15s));
  CHECK(sup.status_or_fail()["counters"]["upgrades_done"] == 1);
  sup.stop();
}

TEST_CASE("--exec swaps the executable and keeps the arguments") {
  TempDir bin;
  const std::string copy = bin.file("hello-copy");
  REQUIRE(run({"cp", hello_bin(), copy}).exit_code == 0);
  Supervisor sup({}, hello("v7"));
  RunResult r = sup.upgrade({"--exec", copy});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  json g = *sup.active();
  CHECK(g["command"][0] == copy);
  CHECK(g["command"][2] == "v7");
  CHECK(cmdline_of(g["pid"].get<pid_t>()).at(0) == copy);
  sup.stop();
}

TEST_CASE("a second concurrent upgrade is refused and the next one succeeds") {
  Supervisor sup({"--min-ready", "1500ms"}, hello("v1"));
  auto first = std::async(std::launch::async, [&] { return sup.upgrade_to(hello("v2")); });
  REQUIRE(wait_until(
      [&] {
        auto s = sup.status();
        return s && !(*s)["upgrade"].is_null();
      },
      10s));
  RunResult second = sup.upgrade_to(hello("v3"));
  CHECK(second.exit_code == 3);
  CHECK(contains(second.err, "upgrade in progress"));
  RunResult first_result = first.get();
  CHECK_MESSAGE(first_result.exit_code == 0, first_result.out << first_result.err);
  RunResult third = sup.upgrade_to(hello("v3"));
  CHECK_MESSAGE(third.exit_code == 0, third.out << third.err);
  CHECK(sup.status_or_fail()["counters"]["upgrades_done"] == 2);
  sup.stop();
}

TEST_CASE("an upgrade's executable is read off the loop: status answers and upgrades are refused while it is hashed") {
  // A script of 2 GiB, almost all of it a hole that `sh` never reaches (it execs the real worker
  // first): the supervisor hashes every byte, which takes seconds.
  TempDir bin;
  const std::string big = bin.file("big-hello");
  write_file_atomic(big, fmt::format("#!/bin/sh\nexec {} \"$@\"\n", hello_bin()));
  std::filesystem::permissions(big, std::filesystem::perms::owner_all);
  std::filesystem::resize_file(big, std::uintmax_t{2} << 30);

  Supervisor sup({}, hello("v1"));
  auto first = std::async(std::launch::async, [&] { return sup.upgrade({"--exec", big}); });
  json reading;
  REQUIRE(wait_until(
      [&] {
        auto s = sup.status();
        if (!s || (*s)["upgrade"].is_null()) return false;
        reading = (*s)["upgrade"];
        return true;
      },
      30s));
  // The first status that saw the upgrade saw it before its start: while its executable was read.
  CHECK(reading["phase"] == "reading-executable");
  CHECK(reading["executable"] == big);
  RunResult second = sup.upgrade_to(hello("v3"));
  CHECK(second.exit_code == 3);
  CHECK_MESSAGE(contains(second.err, "its executable " + big + " is being read"), second.err);
  RunResult text = sup.cli({"status"});
  CHECK_MESSAGE(contains(text.out, "upgrade:     starting: reading its executable " + big), text.out);

  RunResult first_result = first.get();
  CHECK_MESSAGE(first_result.exit_code == 0, first_result.out << first_result.err);
  CHECK(sup.status_or_fail()["active_generation"] == 2);
  CHECK((*sup.active())["command"][0] == big);
  sup.stop();
}

TEST_CASE("upgrade --json prints one JSON event per line ending with the verdict") {
  Supervisor sup({}, hello("v1"));
  RunResult r = sup.upgrade({"--json", "--", hello_bin(), "--version", "v2"});
  REQUIRE(r.exit_code == 0);
  const std::vector<json> lines = json_lines(r.out);
  REQUIRE(lines.size() >= 6);
  std::vector<std::string> phases;
  for (const auto& l : lines) {
    if (l["type"] == "event") phases.push_back(l["phase"]);
  }
  // hello-server does not use the SDK: its READY=1 ends the handshake.
  const std::vector<std::string> expected = {"spawning", "handshake",    "health-checking",
                                             "cutover",  "draining-old", "done"};
  CHECK(phases == expected);
  CHECK(lines.back()["type"] == "result");
  CHECK(lines.back()["ok"] == true);
  CHECK(lines.back()["serving_generation"] == 2);
  sup.stop();
}

namespace {

// A keep-alive connection that has had one answer and stays open, idle: a draining hello-server
// keeps it (and so stays alive) for its --idle-grace.
class IdleKeepAlive {
 public:
  explicit IdleKeepAlive(std::uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    const std::string request = "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    REQUIRE(::send(fd_.get(), request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size()));
    pollfd p{fd_.get(), POLLIN, 0};
    REQUIRE(::poll(&p, 1, 5000) == 1);
    char buf[4096];
    REQUIRE(::recv(fd_.get(), buf, sizeof buf, 0) > 0);
  }

 private:
  hotrestart::Fd fd_;
};

// hello-server that keeps an idle connection for a minute into its drain.
std::vector<std::string> idle_hello(const std::string& version) {
  std::vector<std::string> command = hello(version);
  command.insert(command.end(), {"--idle-grace", "60000"});
  return command;
}

}  // namespace

TEST_CASE("upgrade: --max-draining bounds the generations left draining by upgrades in quick succession") {
  Supervisor sup({"--max-draining", "2", "--drain-timeout", "60s"}, idle_hello("v1"));
  std::vector<std::unique_ptr<IdleKeepAlive>> idle;
  for (int n = 2; n <= 6; ++n) {
    // Each generation keeps an idle client through its drain.
    idle.push_back(std::make_unique<IdleKeepAlive>(sup.port()));
    RunResult r = sup.upgrade_to(idle_hello(fmt::format("v{}", n)));
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  }
  // Generations 1 to 3 were killed as 4 and 5 began to drain; 4 and 5 drain on.
  CHECK(wait_until([&] { return sup.status_or_fail()["generations"].size() == 3; }, 10s));
  json s = sup.status_or_fail();
  CHECK(s["counters"]["draining_stopped"] == 3);
  std::set<std::uint64_t> alive;
  for (const auto& g : s["generations"])
    alive.insert(g["generation"].get<std::uint64_t>());
  CHECK(alive == std::set<std::uint64_t>{4, 5, 6});
  CHECK(
      sup.proc().wait_output("killed before the end of its drain: 3 generations are draining, more than "
                             "--max-draining 2",
                             5s));
  CHECK(contains(http_get(sup.port(), "/"), "version=v6"));
  idle.clear();  // Their connections closed, the draining generations finish at once.
  sup.stop();
}
