// `hotrestart run` started while the generations of a supervisor of the same name that died still
// serve: it takes them over (their listeners from the dead supervisor's guard, an SDK worker's
// channel connected again), and status, upgrade, state transfer and stop work as before. Where
// nothing can be taken over, the error names the pids that hold the port.
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <cstdio>
#include <filesystem>
#include <thread>

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

// The listen flag that asks for the same port again.
std::vector<std::string> same_port(std::uint16_t port, std::vector<std::string> more = {}) {
  more.insert(more.begin(), {"--listen", fmt::format("http=tcp://127.0.0.1:{}", port)});
  return more;
}

// PUT http://127.0.0.1:PORT/kv/KEY with `value`; true when it was acknowledged.
bool put(std::uint16_t port, const std::string& key, const std::string& value) {
  RunResult r = run(
      {"curl", "-sS", "-f", "-X", "PUT", "--data-binary", value, fmt::format("http://127.0.0.1:{}/kv/{}", port, key)},
      {}, 10s);
  return r.exit_code == 0;
}

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
  for (int i = 0; i < 20; ++i)
    REQUIRE(put(port, fmt::format("key-{}", i), fmt::format("value-{}", i)));
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

TEST_CASE("takeover: without the rights to take a worker's sockets, run says so and names its pid") {
  Supervisor first({}, {test_worker_bin(), "undumpable"});
  Leftovers left;
  const pid_t worker = first.active_pid();
  const pid_t guard = first.guard();
  left.pids = {worker, guard};
  const std::uint16_t port = first.port();
  REQUIRE(::kill(guard, SIGKILL) == 0);
  kill_supervisor(first);
  CHECK(wait_until([&] { return !pid_alive(guard); }, 5s));
  // The same user, without CAP_SYS_PTRACE: a process that is not dumpable is out of its reach.
  RunResult r = run({"setpriv", "--bounding-set", "-sys_ptrace", "--", hotrestart_bin(), "run", "--control",
                     first.place().control, "--state-dir", first.place().state_dir, "--listen",
                     fmt::format("http=tcp://127.0.0.1:{}", port), "--", hello_bin()},
                    {}, 20s);
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(
      contains(r.err, fmt::format("cannot take listener 'http' (127.0.0.1:{}) from the generations left (pids {})",
                                  port, worker)),
      r.err);
  CHECK_MESSAGE(contains(r.err, "(taking a descriptor needs the right to trace its process)"), r.err);
  CHECK(contains(http_get(port, "/"), "version=undumpable"));
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
  REQUIRE(put(port, "k", "kept"));
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

TEST_CASE("takeover: what a supervisor finds left behind is untrusted") {
  TempDir dir;
  const std::string control = dir.file("ctl.sock");
  const std::string state = dir.file("state");

  SUBCASE("a guard socket that answers garbage: run refuses to start, and says why") {
    // Something listens where a guard would, and answers a takeover with what is not JSON.
    hotrestart::Fd listener(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = dir.file("ctl.guard");
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    REQUIRE(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(listener.get(), 1) == 0);
    std::thread fake([&] {
      hotrestart::Fd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
      char buffer[512];
      if (conn && ::recv(conn.get(), buffer, sizeof buffer, 0) > 0) {
        const std::string garbage = "{not json";
        (void)::send(conn.get(), garbage.data(), garbage.size(), MSG_NOSIGNAL);
      }
    });
    RunResult r = run({hotrestart_bin(), "run", "--control", control, "--state-dir", state, "--listen",
                       "http=tcp://127.0.0.1:0", "--", hello_bin()},
                      {}, 20s);
    fake.join();
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(contains(r.err, "takeover: guard link: a message is not a JSON object"), r.err);
  }
  SUBCASE("a running.json that is not one: run warns and starts as usual") {
    std::filesystem::create_directories(state);
    write_file_atomic(state + "/running.json", "{\"format\": 1, \"supervisor\": [");
    Supervisor sup(Supervisor::Place{control, state}, {}, hello("v1"));
    CHECK(contains(sup.proc().err(), "running.json is unreadable; nothing is taken over from it"));
    sup.stop();
  }
  SUBCASE("a running.json of the wrong shape: the same") {
    std::filesystem::create_directories(state);
    const char* shapes[] = {
        R"({"format": 1, "supervisor": {"pid": "x"}, "generations": [], "listeners": []})",
        R"({"format": 1, "supervisor": {"pid": 1, "start": 0}, "generations": 7, "listeners": null})",
        R"({"format": 1, "supervisor": {"pid": 1, "start": 0}, "generations": [{"pid": -4}], "listeners": []})",
        R"({"format": 9})",
        R"({"format": 1})",
    };
    for (const char* shape : shapes) {
      CAPTURE(shape);
      write_file_atomic(state + "/running.json", shape);
      Supervisor sup(Supervisor::Place{control, state}, {}, hello("v1"));
      CHECK(contains(sup.proc().err(), "running.json is malformed"));
      sup.stop();
    }
  }
  SUBCASE("a process that is no generation taken over cannot take a channel") {
    Supervisor sup(Supervisor::Place{control, state}, {}, hello("v1"));
    hotrestart::Fd conn(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", dir.file("ctl.workers").c_str());
    REQUIRE(::connect(conn.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    CHECK(sup.proc().wait_output(
        fmt::format("pid {} connected to the rejoin socket, but it is the main process of no generation taken over",
                    ::getpid()),
        10s));
    char byte = 0;
    CHECK(::recv(conn.get(), &byte, 1, 0) == 0);  // Closed on it.
    CHECK(contains(http_get(sup.port(), "/"), "version=v1"));
    sup.stop();
  }
}

TEST_CASE("self-upgrade: ten times under load, same pid, no failed request, and the state moves after") {
  Supervisor sup({"--no-park"}, kv("v1"));
  const pid_t supervisor = sup.pid();
  const pid_t worker = sup.active_pid();
  const std::uint16_t port = sup.port();
  for (int i = 0; i < 10; ++i)
    REQUIRE(put(port, fmt::format("key-{}", i), fmt::format("value-{}", i)));
  MixedLoad load(port, 2);
  let_load_run(load.keepalive, 100);
  for (int i = 0; i < 10; ++i) {
    CAPTURE(i);
    const std::int64_t started = sup.status_or_fail().value("started_ms", std::int64_t{0});
    RunResult r = sup.cli({"upgrade", "--self"}, 60s);
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
    CHECK(contains(r.out, fmt::format("upgrade succeeded: supervisor pid {} runs", supervisor)));
    const json s = sup.status_or_fail();
    CHECK(s.value("pid", 0) == supervisor);
    CHECK(s.value("started_ms", std::int64_t{0}) >= started);
    CHECK(sup.active_pid() == worker);
    CHECK(sup.proc().running());
    let_load_run(load.fresh, 50);
  }
  CHECK(sup.proc().wait_output(fmt::format("generation 1 (pid {}) connected its channel again", worker), 10s));
  // The worker's channel is back: the next upgrade moves its state.
  RunResult r = sup.upgrade_to(kv("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(contains(r.out + r.err, "moving 1 section(s) from generation 1 to generation 2"));
  for (int i = 0; i < 10; ++i)
    CHECK(http_get(port, fmt::format("/kv/key-{}", i)) == fmt::format("value-{}", i));
  let_load_run(load.fresh, 50);
  load.finish();
  sup.stop();
}

TEST_CASE("self-upgrade: a broken new binary is refused, or gives way to the old one, and nothing stops serving") {
  TempDir dir;
  SpawnOptions env;
  env.set_env = {{"HOTRESTART_TEST_FAIL_AT", "self-upgrade-start"}};
  Supervisor sup({}, hello("v1"), true, env);
  const pid_t supervisor = sup.pid();
  const pid_t worker = sup.active_pid();
  MixedLoad load(sup.port(), 1);
  let_load_run(load.keepalive, 50);

  SUBCASE("not a program") {
    RunResult r = sup.cli({"upgrade", "--self", "--exec", "/etc/hostname"}, 30s);
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(contains(r.err, "the new supervisor was not started: /etc/hostname cannot run"), r.err);
  }
  SUBCASE("a program that is not hotrestart") {
    const std::string fake = dir.file("fake-hotrestart");
    write_file_atomic(fake, "#!/bin/sh\necho something else\n");
    REQUIRE(::chmod(fake.c_str(), 0755) == 0);
    RunResult r = sup.cli({"upgrade", "--self", "--exec", fake}, 30s);
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(contains(r.err, "is not a hotrestart that can take over from this one (it says 'something else'"),
                  r.err);
  }
  SUBCASE("a new image that cannot start") {
    RunResult r = sup.cli({"upgrade", "--self"}, 60s);
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(contains(r.err, "the new supervisor could not start: HOTRESTART_TEST_FAIL_AT=self-upgrade-start"),
                  r.err);
    CHECK(contains(r.err, "runs " + hotrestart_bin() + " again"));
    CHECK(sup.proc().wait_output("this is the previous binary again, taking over", 10s));
  }
  CHECK(sup.proc().running());
  CHECK(sup.status_or_fail().value("pid", 0) == supervisor);
  CHECK(sup.active_pid() == worker);
  let_load_run(load.fresh, 50);
  load.finish();
  sup.stop();
}
