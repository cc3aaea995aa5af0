// Scale: thousands of listeners, hundreds of live generations and long command lines, from the
// soft open-file limit of 1,024 that systemd gives services by default.
#include <sys/resource.h>

#include <fstream>

#include <fmt/format.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

// `prlimit` runs the supervisor with a soft open-file limit of 1,024 (and the hard limit as it is).
std::vector<std::string> soft_limit_1024() {
  rlimit limit{};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  return {"prlimit", fmt::format("--nofile=1024:{}", limit.rlim_max), "--"};
}

rlim_t hard_fd_limit() {
  rlimit limit{};
  ::getrlimit(RLIMIT_NOFILE, &limit);
  return limit.rlim_max;
}

// The soft "Max open files" of process `pid`.
long long soft_fd_limit_of(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/limits", pid));
  for (std::string line; std::getline(in, line);) {
    if (!line.starts_with("Max open files")) continue;
    return std::stoll(line.substr(26));
  }
  return -1;
}

// SIGQUIT (stop at once: its generations would take their whole drain timeout), then checks that
// the supervisor exited and took every process below it along.
void quit(Supervisor& sup) {
  const std::set<pid_t> before = sup.processes();
  REQUIRE(::kill(sup.pid(), SIGQUIT) == 0);
  CHECK(sup.proc().wait_for(60s).has_value());
  for (pid_t p : before)
    CHECK_MESSAGE(wait_until([&] { return !pid_alive(p); }, 10s), "pid " << p << " outlived the supervisor");
}

}  // namespace

TEST_CASE("limits: 4,000 listeners start, upgrade and show in status, from a soft fd limit of 1,024") {
  // The worker briefly holds each listener twice while the supervisor places them.
  if (hard_fd_limit() < 10'000) {
    MESSAGE("the hard open-file limit is " << hard_fd_limit() << ", under the 10,000 this test needs; skipped");
    return;
  }
  std::vector<std::string> args;
  for (int i = 0; i < 4000; ++i) {
    args.push_back("--listen");
    args.push_back(fmt::format("l{}=tcp://127.0.0.1:0", i));
  }
  Supervisor sup(args, hello("v1"), true, {}, soft_limit_1024());
  json s = sup.status_or_fail();
  REQUIRE(s["listeners"].size() == 4000);
  const auto port_of = [&](const json& status, int i) {
    const std::string address = status["listeners"][static_cast<std::size_t>(i)]["address"];
    return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
  };
  CHECK(contains(http_get(port_of(s, 0), "/"), "version=v1"));
  CHECK(contains(http_get(port_of(s, 3999), "/"), "version=v1"));
  // The worker has the limit it would have had, raised only to what it was handed and some more.
  CHECK(soft_fd_limit_of(sup.active_pid()) == 4004 + 256);
  CHECK(soft_fd_limit_of(sup.pid()) == static_cast<long long>(hard_fd_limit()));

  RunResult r = sup.upgrade_to(hello("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(wait_until([&] { return contains(http_get(port_of(s, 3999), "/"), "version=v2"); }, 10s));
  RunResult text = sup.cli({"status"});
  CHECK_MESSAGE(text.exit_code == 0, text.err);
  CHECK(contains(text.out, fmt::format("l3999        127.0.0.1:{}", port_of(s, 3999))));
  sup.stop();
}

TEST_CASE("limits: a worker gets back the soft fd limit the supervisor started with") {
  Supervisor sup({}, hello("v1"), true, {}, soft_limit_1024());
  CHECK(soft_fd_limit_of(sup.active_pid()) == 1024);
  CHECK(soft_fd_limit_of(sup.pid()) == static_cast<long long>(hard_fd_limit()));
  sup.stop();
}

// Each upgrade, and each exit at the end, costs the supervisor work in proportion to the
// generations it has (the guard's table, running.json): the whole test grows with their square.
// Under a sanitizer, which runs the supervisor several times slower, 300 keep it within its bound.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr int kDrainingGenerations = 300;
#else
constexpr int kDrainingGenerations = 500;
#endif

TEST_CASE("limits: status answers with hundreds of draining generations") {
  if (hard_fd_limit() < 4096) {
    MESSAGE("the hard open-file limit is " << hard_fd_limit() << ", under the 4,096 this test needs; skipped");
    return;
  }
  // Each generation is a sleep that takes no notice of its drain signal, so each stays draining; each
  // costs the supervisor descriptors, more than a soft limit of 1,024 holds in all.
  // The drain timeout outlasts the test even where it runs slowest (under a sanitizer, beside
  // other tests): a generation killed at its timeout would be missing from the count below.
  Supervisor sup(
      {"--ready", "delay:1ms", "--drain-signal", "SIGWINCH", "--drain-timeout", "1h", "--max-draining", "1000"},
      {"/bin/sleep", "600"}, true, {}, soft_limit_1024());
  for (int i = 0; i < kDrainingGenerations; ++i) {
    RunResult r = sup.upgrade();
    REQUIRE_MESSAGE(r.exit_code == 0, "upgrade " << i + 1 << ": " << r.out << r.err);
  }
  RunResult json_status = sup.cli({"status", "--json"});
  REQUIRE_MESSAGE(json_status.exit_code == 0, json_status.err);
  const json s = json::parse(json_status.out);
  CHECK(s["generations"].size() == kDrainingGenerations + 1);
  CHECK(json_status.out.size() > 64 * 1024);
  RunResult text = sup.cli({"status"});
  CHECK_MESSAGE(text.exit_code == 0, text.err);
  CHECK(contains(text.out, fmt::format("#{}", kDrainingGenerations + 1)));
  quit(sup);
}

TEST_CASE("limits: status answers with a 100 KB command line while an old generation drains") {
  const std::string long_arg(100'000, 'x');
  Supervisor sup({"--ready", "delay:1ms", "--drain-signal", "SIGWINCH", "--drain-timeout", "5m"},
                 {"/bin/sh", "-c", "exec sleep 600", long_arg});
  RunResult r = sup.upgrade();
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  RunResult json_status = sup.cli({"status", "--json"});
  REQUIRE_MESSAGE(json_status.exit_code == 0, json_status.err);
  const json s = json::parse(json_status.out);
  REQUIRE(s["generations"].size() == 2);
  CHECK(s["generations"][0]["command"][3] == long_arg);
  RunResult text = sup.cli({"status"});
  CHECK_MESSAGE(text.exit_code == 0, text.err);
  CHECK(contains(text.out, long_arg));
  quit(sup);
}
