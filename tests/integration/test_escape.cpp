// Processes that leave their generation's process group (setsid, a double fork), and what the
// supervisor does with them: shown in `status`, killed with their generation, ended at `stop`. And
// processes a worker starts that inherit its channel: none of them can speak for the generation.
#include <netinet/in.h>
#include <sys/socket.h>

#include <fmt/format.h>

#include <hotrestart/fd.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

// The pids `status --json` shows outside generation `number`'s process group.
std::vector<pid_t> escaped_of(Supervisor& sup, std::uint64_t number) {
  std::vector<pid_t> out;
  if (auto s = sup.status()) {
    for (const auto& g : (*s)["generations"]) {
      if (g["generation"] != number) continue;
      for (const auto& p : g["escaped"])
        out.push_back(p["pid"].get<pid_t>());
    }
  }
  return out;
}

// Whether anything still accepts connections on 127.0.0.1:`port`.
bool port_answers(std::uint16_t port) {
  hotrestart::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0;
}

// Forty requests, each on a new connection: how many the old code ("v1") answered.
int answered_by_v1(std::uint16_t port) {
  int old = 0;
  for (int i = 0; i < 40; ++i) {
    const std::string body = http_get(port, "/");
    if (contains(body, "v1")) ++old;
  }
  return old;
}

// Generation 1 of `sup` has a daemon that the supervisor re-parented: it is shown as the
// generation's (not as a stray), and an upgrade ends it, so that nothing answers "v1" afterwards.
void check_orphan_dies_at_upgrade(Supervisor& sup) {
  const std::uint16_t port = sup.port();
  std::vector<pid_t> escaped;
  REQUIRE(wait_until([&] { return (escaped = escaped_of(sup, 1)).size() == 1; }, 10s));
  CHECK(children_of(sup.pid()).size() == 3);  // The worker, the daemon and the guard.
  CHECK(sup.status_or_fail()["strays"].empty());
  RunResult r = sup.upgrade_to(hello("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(wait_until([&] { return !pid_alive(escaped[0]); }, 10s));
  CHECK(answered_by_v1(port) == 0);
  sup.stop();
}

}  // namespace

TEST_CASE("escape: a child that called setsid is shown, and dies with its generation at an upgrade") {
  Supervisor sup({}, {test_worker_bin(), "escape", "setsid", "v1"});
  const std::uint16_t port = sup.port();
  const std::vector<pid_t> escaped = escaped_of(sup, 1);
  REQUIRE_MESSAGE(escaped.size() == 1, sup.status_or_fail().dump());
  RunResult text = sup.cli({"status"});
  CHECK_MESSAGE(contains(text.out, fmt::format("outside its process group: pid {}", escaped[0])), text.out);

  RunResult r = sup.upgrade_to(hello("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK_MESSAGE(wait_until([&] { return !pid_alive(escaped[0]); }, 10s), "the escaped child outlived generation 1");
  CHECK(answered_by_v1(port) == 0);
  CHECK(contains(sup.proc().err(), fmt::format("pid {} had left its process group", escaped[0])));
  sup.stop();
}

TEST_CASE("escape: an orphan re-parented to the supervisor is placed by its generation mark") {
  // The intermediate process exits at once: the daemon is the supervisor's child before any look
  // could see it descend from the worker.
  Supervisor sup({}, {test_worker_bin(), "escape", "orphan", "v1"});
  check_orphan_dies_at_upgrade(sup);
}

TEST_CASE("escape: stop ends every process of every generation, so the port is free again") {
  Supervisor sup({}, {test_worker_bin(), "escape", "setsid", "v1"});
  const std::uint16_t port = sup.port();
  const std::vector<pid_t> escaped = escaped_of(sup, 1);
  REQUIRE(escaped.size() == 1);
  sup.stop();
  // The supervisor said it stopped only once the daemon was gone: nothing answers on the port.
  CHECK(!pid_alive(escaped[0]));
  CHECK(!port_answers(port));
}

TEST_CASE("escape: an orphan without its mark is placed by the generation's stderr it writes to") {
  Supervisor sup({}, {test_worker_bin(), "escape", "orphan-unmarked", "v1"});
  check_orphan_dies_at_upgrade(sup);
}

TEST_CASE("escape: an orphan with nothing that names its generation is shown as a stray and ended at stop") {
  // Not started the usual way, which asks for `status` until the worker is ready: a look while the
  // daemon still descends from the worker, or before its exec drops the mark, would rightly place
  // it in generation 1 for good. The worker says it is ready once the daemon has exec'd; until
  // then only the supervisor's own sweep looks, first 2 s after it starts.
  Supervisor sup({}, {test_worker_bin(), "escape", "orphan-detached", "v1"}, false);
  REQUIRE_MESSAGE(wait_until([&] { return contains(sup.proc().err(), "left the process group"); }, 15s),
                  sup.proc().describe());
  const std::uint16_t port = sup.port();
  std::vector<pid_t> strays;
  REQUIRE(wait_until(
      [&] {
        strays.clear();
        if (auto s = sup.status())
          for (const auto& p : (*s)["strays"])
            strays.push_back(p.get<pid_t>());
        return strays.size() == 1;
      },
      10s));
  RunResult text = sup.cli({"status"});
  CHECK_MESSAGE(contains(text.out, fmt::format("strays:      pids {}", strays[0])), text.out);
  CHECK(wait_until(
      [&] { return contains(sup.proc().err(), fmt::format("pid {} was left to the supervisor", strays[0])); }, 10s));
  sup.stop();
  CHECK(!pid_alive(strays[0]));
  CHECK(!port_answers(port));
}

namespace {

std::string sdk_worker_bin() {
  return bin_path("sdk-worker");
}

// Waits until only the active generation is left (the one it replaced may take a request or two
// while it drains).
void wait_old_gone(Supervisor& sup) {
  CHECK(wait_until([&] { return sup.status_or_fail()["generations"].size() == 1; }, 15s));
}

}  // namespace

TEST_CASE("channel: a helper built on the SDK that a wrapper starts cannot become the generation") {
  Supervisor sup({}, {sdk_worker_bin(), "--version", "v1"});
  const std::uint16_t port = sup.port();
  // The helper starts first and would say hello on the inherited channel at once; the real server
  // takes 500 ms before its own.
  const std::string wrapper = fmt::format("{} --version helper & exec {} --version real --start-delay-ms 500",
                                          sdk_worker_bin(), sdk_worker_bin());
  const auto start = Clock::now();
  RunResult r = sup.upgrade_to({"/bin/sh", "-c", wrapper});
  const auto took = Clock::now() - start;
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK_MESSAGE(took >= 500ms, "ready before the real server started");
  wait_old_gone(sup);
  for (int i = 0; i < 10; ++i) {
    const std::string body = http_get(port, "/");
    CHECK_MESSAGE(contains(body, "version=real"), body);
  }
  sup.stop();
}

TEST_CASE("channel: a hello from another process on the inherited channel is ignored") {
  Supervisor sup({}, {sdk_worker_bin(), "--version", "v1"});
  const std::uint16_t port = sup.port();
  // (The helper is gone before the real hello: one that went on reading the shared channel would
  // take the supervisor's answers to it.)
  const std::string wrapper =
      fmt::format("timeout -s KILL 0.2 {} --raw-hello 4:4 & exec {} --version real --start-delay-ms 500",
                  sdk_worker_bin(), sdk_worker_bin());
  RunResult r = sup.upgrade_to({"/bin/sh", "-c", wrapper});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(contains(sup.proc().err(), "sent hello on the channel, which belongs to the main process"));
  wait_old_gone(sup);
  CHECK(contains(http_get(port, "/"), "version=real"));
  sup.stop();
}

TEST_CASE("stop: once `hotrestart stop` has said stopped, the port can be bound again at once") {
  for (int round = 0; round < 5; ++round) {
    Supervisor sup({}, hello("v1"));
    const std::uint16_t port = sup.port();
    RunResult r = sup.cli({"stop"}, 30s);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(contains(r.out, "stopped"));
    // As a new `run` would bind it (SO_REUSEADDR, as the supervisor's own listeners).
    hotrestart::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK_MESSAGE(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0,
                  "round " << round << ": port " << port << " still taken: " << std::strerror(errno));
    CHECK(sup.proc().wait_for(10s).has_value());
  }
}
