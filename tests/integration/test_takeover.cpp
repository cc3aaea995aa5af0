// `hotrestart run` started while the generations of a supervisor of the same name that died still
// serve: it takes them over (their listeners from the dead supervisor's guard, an SDK worker's
// channel connected again), and status, upgrade, state transfer and stop work as before. Where
// nothing can be taken over, the error names the pids that hold the port.
#include <signal.h>

#include <set>
#include <string>
#include <vector>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

std::vector<std::string> kv(const std::string& build, std::vector<std::string> args = {}) {
  args.insert(args.begin(), bin_path("kv-cache-" + build));
  return args;
}

void kill_supervisor(Supervisor& sup) {
  REQUIRE(sup.proc().send_signal(SIGKILL));
  REQUIRE(sup.proc().wait_for(10s) == std::optional<int>(128 + SIGKILL));
}

// The listen flag that asks for the same port again.
std::vector<std::string> same_port(std::uint16_t port, std::vector<std::string> more = {}) {
  more.insert(more.begin(), {"--listen", fmt::format("http=tcp://127.0.0.1:{}", port)});
  return more;
}

// Processes killed by pid at the end, should a check fail before they went.
struct Leftovers {
  std::set<pid_t> pids;
  ~Leftovers() {
    for (pid_t p : pids)
      if (pid_alive(p)) ::kill(p, SIGKILL);
  }
};

}  // namespace

TEST_CASE("takeover: a supervisor started after one was killed takes its generation over, and no request fails") {
  Supervisor first({"--drain-timeout", "5s", "--no-park"}, hello("v1"));
  Leftovers left;
  const pid_t worker = first.active_pid();
  left.pids = {worker, first.guard()};
  const std::uint16_t port = first.port();
  MixedLoad load(port, 2);
  let_load_run(load.keepalive, 200);

  kill_supervisor(first);
  let_load_run(load.fresh, 200);  // Served on, with no supervisor at all.
  Supervisor second(first.place(), same_port(port, {"--drain-timeout", "5s", "--no-park"}), hello("v1"));
  CHECK(second.proc().wait_output(fmt::format("took over generation 1 (pid {}, release 1)", worker), 10s));
  CHECK(second.active_pid() == worker);
  CHECK(second.active_generation() == 1);
  CHECK(second.port() == port);
  left.pids.insert(second.guard());
  let_load_run(load.fresh, 200);

  // It is this supervisor's now: an upgrade drains it, and the new generation is number 2.
  RunResult r = second.upgrade_to(hello("v2"));
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(second.active_generation() == 2);
  CHECK(wait_until([&] { return !pid_alive(worker); }, 10s));
  CHECK(contains(http_get(port, "/"), "version=v2"));
  let_load_run(load.fresh, 200);
  load.finish();
  second.stop();
}

TEST_CASE("takeover: an SDK worker connects its channel again, and its state moves at the next upgrade") {
  Supervisor first({"--no-park"}, kv("v1"));
  Leftovers left;
  const pid_t worker = first.active_pid();
  left.pids = {worker, first.guard()};
  const std::uint16_t port = first.port();
  for (int i = 0; i < 20; ++i) {
    RunResult put = run({"curl", "-sS", "-X", "PUT", "--data-binary", fmt::format("value-{}", i),
                         fmt::format("http://127.0.0.1:{}/kv/key-{}", port, i)},
                        {}, 10s);
    REQUIRE(put.exit_code == 0);
  }
  kill_supervisor(first);
  Supervisor second(first.place(), same_port(port, {"--no-park"}), kv("v1"));
  left.pids.insert(second.guard());
  CHECK(second.proc().wait_output(fmt::format("generation 1 (pid {}) connected its channel again", worker), 10s));
  CHECK(second.proc().wait_output("uses the SDK ('hotrestart-worker", 10s));

  RunResult r = second.upgrade_to(kv("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(contains(r.out + r.err, "moving 1 section(s) from generation 1 to generation 2"));
  for (int i = 0; i < 20; ++i)
    CHECK(http_get(port, fmt::format("/kv/key-{}", i)) == fmt::format("value-{}", i));
  CHECK(contains(http_get(port, "/"), "version=v2"));
  second.stop();
}

TEST_CASE("takeover: with other listeners it is refused with the reason, and the generation serves on") {
  Supervisor first({}, hello("v1"));
  Leftovers left;
  const pid_t worker = first.active_pid();
  const pid_t guard = first.guard();
  left.pids = {worker, guard};
  const std::uint16_t port = first.port();
  kill_supervisor(first);
  RunResult r =
      run({hotrestart_bin(), "run", "--control", first.place().control, "--state-dir", first.place().state_dir,
           "--listen", "http=tcp://127.0.0.1:0", "--listen", "admin=tcp://127.0.0.1:0", "--", hello_bin()},
          {}, 20s);
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(contains(r.err, "have no listener 'admin'"), r.err);
  CHECK(pid_alive(worker));
  CHECK(pid_alive(guard));
  CHECK(contains(http_get(port, "/"), "version=v1"));
  // Asked again with the same listeners, it takes over after all.
  Supervisor second(first.place(), same_port(port), hello("v1"));
  CHECK(second.active_pid() == worker);
  left.pids.insert(second.guard());
  second.stop();
}

TEST_CASE("takeover: a port held by a process it cannot take over is named in the error") {
  TempDir dir;
  // A server of its own, outside any supervisor, on a port the kernel picked.
  Child server = Child::spawn({hello_bin(), "--listen", "127.0.0.1:0"});
  REQUIRE(server.wait_output("serving on", 10s));
  std::uint16_t port = 0;
  for (const auto& s : tcp_sockets()) {
    if (s.listening() && s.local_addr == "127.0.0.1") {
      for (const auto& f : list_fds(server.pid()))
        if (f.target == fmt::format("socket:[{}]", s.inode)) port = s.local_port;
    }
  }
  REQUIRE(port != 0);
  RunResult r = run({hotrestart_bin(), "run", "--control", dir.file("ctl.sock"), "--state-dir", dir.file("state"),
                     "--listen", fmt::format("http=tcp://127.0.0.1:{}", port), "--", hello_bin()},
                    {}, 20s);
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(contains(r.err, "Address already in use"), r.err);
  CHECK_MESSAGE(contains(r.err, fmt::format("port {} is held by pid {} (hello-server", port, server.pid())), r.err);
}

TEST_CASE("takeover: with the guard killed too, the listeners are taken from the generation itself") {
  Supervisor first({"--no-park"}, kv("v1"));
  Leftovers left;
  const pid_t worker = first.active_pid();
  const pid_t guard = first.guard();
  left.pids = {worker, guard};
  const std::uint16_t port = first.port();
  RunResult put = run(
      {"curl", "-sS", "-X", "PUT", "--data-binary", "kept", fmt::format("http://127.0.0.1:{}/kv/k", port)}, {}, 10s);
  REQUIRE(put.exit_code == 0);
  REQUIRE(::kill(guard, SIGKILL) == 0);
  kill_supervisor(first);
  CHECK(wait_until([&] { return !pid_alive(guard); }, 5s));
  CHECK(contains(http_get(port, "/"), fmt::format("pid={}", worker)));  // The worker alone holds the port.

  Supervisor second(first.place(), same_port(port, {"--no-park"}), kv("v1"));
  left.pids.insert(second.guard());
  CHECK(second.active_pid() == worker);
  CHECK(second.proc().wait_output(fmt::format("generation 1 (pid {}) connected its channel again", worker), 10s));
  RunResult r = second.upgrade_to(kv("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(http_get(port, "/kv/k") == "kept");
  // What the old worker says as it drains is read through its pipe, reopened.
  CHECK(second.proc().wait_output(fmt::format("gen1[{}]: kv-cache v1 pid {}: draining", worker, worker), 10s));
  second.stop();
}
