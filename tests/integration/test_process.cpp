// What a worker inherits, socket activation, systemd notifications, and stopping.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include <fmt/format.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

std::set<unsigned long> socket_inodes(pid_t pid) {
  std::set<unsigned long> out;
  for (const auto& f : list_fds(pid)) {
    if (auto inode = f.socket_inode()) out.insert(*inode);
  }
  return out;
}

json wait_report(const std::string& path) {
  std::optional<std::string> text;
  REQUIRE(wait_until([&] { return (text = read_file(path)).has_value(); }, 10s));
  return json::parse(*text);
}

// A datagram socket standing in for systemd's NOTIFY_SOCKET.
class FakeSystemd {
 public:
  explicit FakeSystemd(std::string path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  }
  ~FakeSystemd() { ::close(fd_); }
  // Collects datagrams until one contains `needle`.
  bool wait_for(const std::string& needle, std::chrono::milliseconds timeout) {
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      for (const auto& m : received_) {
        if (contains(m, needle)) return true;
      }
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) == 1) {
        char buf[4096];
        const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
        if (n > 0) received_.emplace_back(buf, static_cast<std::size_t>(n));
      }
    }
    return false;
  }
  const std::vector<std::string>& received() const { return received_; }
  void clear() { received_.clear(); }

 private:
  std::string path_;
  int fd_ = -1;
  std::vector<std::string> received_;
};

}  // namespace

TEST_CASE("a worker inherits exactly stdio, its listeners and its channel, with systemd variables") {
  TempDir reports;
  const std::string unix_path = reports.file("admin.sock");
  Supervisor sup(
      {"--listen", "http=tcp://127.0.0.1:0", "--listen", "admin=unix:" + unix_path, "--listen", "v6=tcp://[::1]:0"},
      {test_worker_bin(), "fd-report", reports.file("gen1.json")});
  json report = wait_report(reports.file("gen1.json"));
  const pid_t worker = report["pid"];
  std::vector<int> fds;
  for (const auto& f : report["fds"]) {
    fds.push_back(f["fd"]);
    if (f["fd"].get<int>() >= 3) CHECK_MESSAGE(f["cloexec"] == false, "fd " << f["fd"] << " is close-on-exec");
  }
  // 3, 4, 5: the listeners; 6: the worker channel (which a worker without the SDK ignores).
  CHECK(fds == std::vector<int>{0, 1, 2, 3, 4, 5, 6});
  // 2: its stderr, a pipe whose read end the supervisor holds, close-on-exec.
  const std::string stderr_pipe = report["fds"][2]["target"];
  CHECK(stderr_pipe.starts_with("pipe:["));
  const auto supervisor_fds_now = list_fds(sup.pid());
  CHECK(std::any_of(supervisor_fds_now.begin(), supervisor_fds_now.end(),
                    [&](const FdInfo& f) { return f.target == stderr_pipe && f.cloexec; }));
  CHECK(report["env"]["LISTEN_FDS"] == "3");
  CHECK(report["env"]["LISTEN_FDNAMES"] == "http:admin:v6");
  CHECK(report["env"]["LISTEN_PID"] == std::to_string(worker));
  CHECK(report["env"]["HOTRESTART_GENERATION"] == "1");
  CHECK(report["env"]["HOTRESTART_CHANNEL_FD"] == "6");
  CHECK(!report["env"]["NOTIFY_SOCKET"].get<std::string>().empty());

  // fds 3-5 are exactly the supervisor's listeners: the same open files. fd 6 is the worker's
  // own end of its channel, which the supervisor does not hold. None of the supervisor's other
  // sockets (control, notify, other channels) is there.
  const auto supervisor_sockets = socket_inodes(sup.pid());
  std::set<unsigned long> listener_inodes;
  // The worker may still hold the datagram socket it sent READY=1 from for a moment.
  CHECK(wait_until([&] { return list_fds(worker).size() == 7; }, 5s));
  for (const auto& f : list_fds(worker)) {
    if (f.fd < 3) continue;
    REQUIRE_MESSAGE(f.socket_inode().has_value(), "unexpected fd " << f.fd << " -> " << f.target);
    if (f.fd <= 5) {
      CHECK(supervisor_sockets.count(*f.socket_inode()) == 1);
      listener_inodes.insert(*f.socket_inode());
    } else {
      CHECK(f.fd == 6);
      CHECK(supervisor_sockets.count(*f.socket_inode()) == 0);
    }
  }
  CHECK(listener_inodes.size() == 3);

  // Status reports the chosen ports and the unix path.
  json s = sup.status_or_fail();
  REQUIRE(s["listeners"].size() == 3);
  CHECK(s["listeners"][0]["address"].get<std::string>().starts_with("127.0.0.1:"));
  CHECK(s["listeners"][1]["address"] == "unix:" + unix_path);
  CHECK(s["listeners"][2]["address"].get<std::string>().starts_with("[::1]:"));

  // The next generation sees the same, and the supervisor holds no extra fd afterwards.
  const std::size_t supervisor_fds = list_fds(sup.pid()).size();
  RunResult r = sup.upgrade({"--", test_worker_bin(), "fd-report", reports.file("gen2.json")});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  json second = wait_report(reports.file("gen2.json"));
  CHECK(second["fds"].size() == 7);
  CHECK(second["env"]["HOTRESTART_GENERATION"] == "2");
  std::set<unsigned long> second_listeners;
  for (const auto& f : list_fds(second["pid"].get<pid_t>())) {
    if (f.fd >= 3 && f.fd <= 5 && f.socket_inode()) second_listeners.insert(*f.socket_inode());
  }
  CHECK(second_listeners == listener_inodes);
  CHECK(wait_until([&] { return !pid_alive(worker); }, 10s));
  // The supervisor lets go of a generation's channel and stderr pipe once its exit is handled,
  // which may come a moment after the process is gone.
  CHECK(wait_until([&] { return list_fds(sup.pid()).size() == supervisor_fds; }, 5s));
  sup.stop();
  // The unix listener's file goes away with the supervisor.
  CHECK_FALSE(read_file(unix_path).has_value());
}

TEST_CASE("the example serves on IPv6 and unix listeners too") {
  TempDir d;
  const std::string unix_path = d.file("web.sock");
  Supervisor sup({"--listen", "v6=tcp://[::1]:0", "--listen", "local=unix:" + unix_path}, hello("v1"));
  LoadClient::Config c;
  c.host = "::1";
  c.port = sup.port("v6");
  c.threads = 1;
  c.max_requests = 5;
  LoadClient v6(c);
  v6.start();
  REQUIRE(v6.wait_done(10s));
  require_no_failures(v6, "IPv6");
  RunResult curl = run({"curl", "-fsS", "--unix-socket", unix_path, "http://localhost/"}, {}, 10s);
  CHECK_MESSAGE(curl.exit_code == 0, curl.err);
  CHECK(contains(curl.out, "version=v1"));
  sup.stop();
}

TEST_CASE("socket activation: the supervisor adopts LISTEN_FDS instead of binding") {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  REQUIRE(::listen(listener, 128) == 0);
  socklen_t len = sizeof addr;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  const int port = ntohs(addr.sin_port);

  TempDir d;
  const std::string control = d.file("ctl.sock");
  SpawnOptions options;
  options.pass_fds = {{listener, 3}};
  // LISTEN_PID must be the supervisor's own pid: the shell sets it to $$ and then execs.
  Child sup = Child::spawn({"/bin/sh", "-c",
                            fmt::format("LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec {} run --control {} -- {} "
                                        "--version activated",
                                        hotrestart_bin(), control, hello_bin())},
                           options);
  ::close(listener);
  std::optional<json> status;
  REQUIRE(wait_until(
      [&] {
        RunResult r = run({hotrestart_bin(), "status", "--json", "--control", control}, {}, 5s);
        if (r.exit_code != 0) return false;
        status = json::parse(r.out);
        return !(*status)["generations"].empty() && (*status)["generations"][0]["state"] == "ready";
      },
      10s));
  REQUIRE((*status)["listeners"].size() == 1);
  CHECK((*status)["listeners"][0]["name"] == "web");
  CHECK((*status)["listeners"][0]["adopted"] == true);
  CHECK((*status)["listeners"][0]["address"] == fmt::format("127.0.0.1:{}", port));
  // The worker does not see the supervisor's LISTEN_PID, only its own.
  const pid_t worker = (*status)["generations"][0]["pid"];
  CHECK(environ_of(worker)["LISTEN_PID"] == std::to_string(worker));
  RunResult curl = run({"curl", "-fsS", fmt::format("http://127.0.0.1:{}/", port)}, {}, 10s);
  CHECK(contains(curl.out, "version=activated"));
  // The supervisor upgrades itself: its new image has no --listen and no LISTEN_* (the first image
  // used them up), and takes the socket from its guard.
  RunResult self = run({hotrestart_bin(), "upgrade", "--self", "--control", control}, {}, 30s);
  CHECK_MESSAGE(self.exit_code == 0, self.out << self.err);
  REQUIRE(wait_until(
      [&] {
        RunResult r = run({hotrestart_bin(), "status", "--json", "--control", control}, {}, 5s);
        if (r.exit_code != 0) return false;
        const json after = json::parse(r.out);
        return after["started_ms"] != (*status)["started_ms"] && after["pid"] == (*status)["pid"] &&
               after["listeners"].size() == 1 && after["listeners"][0]["name"] == "web";
      },
      15s));
  CHECK(contains(run({"curl", "-fsS", fmt::format("http://127.0.0.1:{}/", port)}, {}, 10s).out, "version=activated"));
  CHECK(run({hotrestart_bin(), "stop", "--control", control}, {}, 30s).exit_code == 0);
  CHECK(sup.wait_for(10s) == std::optional<int>(0));
}

TEST_CASE(
    "under systemd the supervisor reports READY then RELOADING around upgrades, each verdict in STATUS, then "
    "STOPPING") {
  TempDir d;
  FakeSystemd systemd(d.file("notify"));
  SpawnOptions options;
  options.set_env = {{"NOTIFY_SOCKET", d.file("notify")}};
  Supervisor sup({}, hello("v1"), true, options);
  CHECK(systemd.wait_for("READY=1", 5s));
  // The worker talks to the supervisor's own notify socket, never to systemd's.
  CHECK(environ_of(sup.active_pid())["NOTIFY_SOCKET"] != d.file("notify"));
  systemd.clear();
  RunResult r = sup.upgrade_to(hello("v2"));
  REQUIRE(r.exit_code == 0);
  CHECK(systemd.wait_for("READY=1", 5s));
  REQUIRE(systemd.received().size() >= 2);
  CHECK(contains(systemd.received()[0], "RELOADING=1"));
  CHECK(contains(systemd.received()[0], "MONOTONIC_USEC="));
  CHECK(contains(systemd.received().back(), "STATUS=generation 2 serving"));

  // A rollback is seen in STATUS= too (`systemctl status`), with its reason.
  systemd.clear();
  RunResult bad = sup.upgrade_to({test_worker_bin(), "say-and-exit", "3", "cannot open the configuration"});
  REQUIRE(bad.exit_code == 1);
  CHECK(systemd.wait_for("READY=1", 5s));
  CHECK_MESSAGE(
      contains(systemd.received().back(), "STATUS=generation 2 serving; release 3 rolled back: generation 3 (pid "),
      systemd.received().back());
  CHECK_MESSAGE(contains(systemd.received().back(), "cannot open the configuration"), systemd.received().back());
  sup.stop();
  CHECK(systemd.wait_for("STOPPING=1", 5s));
}

TEST_CASE("under systemd with WatchdogSec= the supervisor sends WATCHDOG=1 twice per interval") {
  TempDir d;
  FakeSystemd systemd(d.file("notify"));
  SpawnOptions options;
  options.set_env = {{"NOTIFY_SOCKET", d.file("notify")}, {"WATCHDOG_USEC", "400000"}};
  Supervisor sup({}, hello("v1"), true, options);
  CHECK(systemd.wait_for("READY=1", 5s));
  const auto pings = [&] {
    return std::count_if(systemd.received().begin(), systemd.received().end(),
                         [](const std::string& m) { return m == "WATCHDOG=1"; });
  };
  // 0.4 s: one every 0.2 s. Waiting for the fourth bounds the test, not the rate.
  CHECK(wait_until(
      [&] {
        systemd.wait_for("never sent", 50ms);
        return pings() >= 4;
      },
      10s));
  // The worker gets neither variable: the watchdog is the supervisor's.
  const auto env = environ_of(sup.active_pid());
  CHECK(env.count("WATCHDOG_USEC") == 0);
  CHECK(env.count("WATCHDOG_PID") == 0);
  sup.stop();

  // WATCHDOG_PID naming another process: not for this one.
  TempDir other_dir;
  FakeSystemd other(other_dir.file("notify"));
  SpawnOptions inherited;
  inherited.set_env = {{"NOTIFY_SOCKET", other_dir.file("notify")}, {"WATCHDOG_USEC", "100000"}, {"WATCHDOG_PID", "1"}};
  Supervisor not_ours({}, hello("v1"), true, inherited);
  CHECK(other.wait_for("READY=1", 5s));
  other.wait_for("WATCHDOG=1", 500ms);
  CHECK(std::none_of(other.received().begin(), other.received().end(),
                     [](const std::string& m) { return m == "WATCHDOG=1"; }));
  not_ours.stop();
}

TEST_CASE("SIGTERM stops gracefully and SIGQUIT stops at once") {
  for (int signo : {SIGTERM, SIGQUIT}) {
    CAPTURE(signo);
    Supervisor sup({"--drain-timeout", "20s"}, hello("v1"));
    const pid_t worker = sup.active_pid();
    REQUIRE(sup.proc().send_signal(signo));
    CHECK(sup.proc().wait_for(10s) == std::optional<int>(0));
    CHECK(wait_until([&] { return !pid_alive(worker); }, 5s));
  }
}

TEST_CASE("run refuses bad flags and unusable addresses with a clear message") {
  RunResult bad_listen = run({hotrestart_bin(), "run", "--listen", "http://x", "--", hello_bin()}, {}, 10s);
  CHECK(bad_listen.exit_code == 2);
  CHECK(contains(bad_listen.err, "invalid --listen 'http://x'"));
  RunResult bad_duration = run(
      {hotrestart_bin(), "run", "--listen", "tcp://127.0.0.1:0", "--drain-timeout", "30", "--", hello_bin()}, {}, 10s);
  CHECK(bad_duration.exit_code == 2);
  CHECK(contains(bad_duration.err, "unit is missing"));
  RunResult no_command = run({hotrestart_bin(), "run", "--listen", "tcp://127.0.0.1:0"}, {}, 10s);
  CHECK(no_command.exit_code == 2);

  // A port already taken: exit 1 naming the listener and the address.
  Supervisor first({}, hello("v1"));
  TempDir d;
  RunResult taken = run({hotrestart_bin(), "run", "--control", d.file("c.sock"), "--state-dir", d.file("c.state"),
                         "--listen", fmt::format("web=tcp://127.0.0.1:{}", first.port()), "--", hello_bin()},
                        {}, 10s);
  CHECK(taken.exit_code == 1);
  CHECK(
      contains(taken.err, fmt::format("listener web: bind tcp://127.0.0.1:{}: Address already in use", first.port())));
  // A second supervisor on the same control socket is refused before it binds anything.
  RunResult twin = run({hotrestart_bin(), "run", "--control", first.control(), "--state-dir", d.file("t.state"),
                        "--listen", "tcp://127.0.0.1:0", "--", hello_bin()},
                       {}, 10s);
  CHECK(twin.exit_code == 1);
  CHECK(contains(twin.err, "another supervisor is already running"));
  // The first command that cannot start at all is an error at `run`.
  RunResult missing = run({hotrestart_bin(), "run", "--control", d.file("m.sock"), "--state-dir", d.file("m.state"),
                           "--listen", "tcp://127.0.0.1:0", "--", "/nonexistent/server"},
                          {}, 10s);
  CHECK(missing.exit_code == 1);
  CHECK(contains(missing.err, "/nonexistent/server: No such file or directory"));
  first.stop();
}

TEST_CASE("--ready exec: the probe runs with the new worker's pid until it exits 0") {
  TempDir flags;
  // The probe passes only once a file named after the worker's pid exists: readiness comes
  // from a check aimed at that one worker, never from the shared port.
  Supervisor sup({"--ready", "exec:test -f " + flags.file("ready-") + "$HOTRESTART_PID"}, hello("v1"),
                 /*wait_ready=*/false);
  REQUIRE(wait_until([&] { return sup.active_pid() != 0; }, 10s));
  const pid_t first = sup.active_pid();
  CHECK(sup.active_state() == "starting");
  write_file_atomic(flags.file(fmt::format("ready-{}", first)), "");
  CHECK(wait_until([&] { return sup.active_state() == "ready"; }, 10s));

  // An upgrade waits for its own worker's probe; the old worker's file does not count.
  std::optional<RunResult> result;
  std::thread upgrade([&] { result = sup.upgrade_to(hello("v2")); });
  pid_t candidate = 0;
  REQUIRE(wait_until(
      [&] {
        auto s = sup.status();
        if (!s) return false;
        for (const auto& g : (*s)["generations"]) {
          if (g["role"] == "candidate") candidate = g["pid"];
        }
        return candidate != 0;
      },
      10s));
  CHECK(sup.active_pid() == first);
  write_file_atomic(flags.file(fmt::format("ready-{}", candidate)), "");
  upgrade.join();
  REQUIRE(result.has_value());
  CHECK_MESSAGE(result->exit_code == 0, result->out << result->err);
  CHECK(sup.active_pid() == candidate);
  sup.stop();
}

TEST_CASE("processes a worker leaves behind are killed and reaped with its generation") {
  // The shell starts a long sleep in the background and then becomes the server: the sleep
  // is the server's child, orphaned when the server exits.
  const std::string script = fmt::format("sleep 300 & exec {} --version v1", hello_bin());
  Supervisor sup({}, {"/bin/sh", "-c", script});
  const pid_t worker = sup.active_pid();
  std::vector<pid_t> helpers = children_of(worker);
  REQUIRE(helpers.size() == 1);
  RunResult r = sup.upgrade_to(hello("v2"));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(wait_until([&] { return !pid_alive(worker) && !pid_alive(helpers[0]); }, 10s));
  // Nothing is left: no zombie, no stray sleep; only the new worker remains.
  CHECK(wait_until([&] { return sup.processes() == std::set<pid_t>{sup.active_pid()}; }, 10s));
  sup.stop();
}

TEST_CASE("upgrade with no arguments restarts the same command line") {
  Supervisor sup({}, hello("v5"));
  const pid_t old_pid = sup.active_pid();
  RunResult r = sup.upgrade();
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  json g = *sup.active();
  CHECK(g["generation"] == 2);
  CHECK(g["command"] == json::array({hello_bin(), "--version", "v5"}));
  CHECK(wait_until([&] { return !pid_alive(old_pid); }, 10s));
  sup.stop();
}

namespace {

// `hotrestart run --name NAME` with `env` (nothing else chooses its control socket), serving
// hello-server; waits until `status --name NAME` under `client_env` answers. The supervisor's
// stderr is in the returned Child.
Child run_named(const std::string& name, const TempDir& d, SpawnOptions env, const SpawnOptions& client_env) {
  Child sup = Child::spawn({hotrestart_bin(), "run", "--name", name, "--state-dir", d.file("state"), "--listen",
                            "http=tcp://127.0.0.1:0", "--", hello_bin(), "--version", "v1"},
                           std::move(env));
  std::vector<std::string> status = {hotrestart_bin(), "status", "--name", name};
  CHECK_MESSAGE(wait_until([&] { return run(status, client_env, 10s).exit_code == 0; }, 15s), sup.describe());
  return sup;
}

}  // namespace

TEST_CASE("the control socket is under $RUNTIME_DIRECTORY, and clients find it there") {
  TempDir d;
  const std::string name = fmt::format("rt-{}", ::getpid());
  const std::string runtime = d.file("runtime");
  REQUIRE(::mkdir(runtime.c_str(), 0755) == 0);
  SpawnOptions service;
  // As systemd gives it for RuntimeDirectory=hotrestart other (the first is used).
  service.set_env = {{"RUNTIME_DIRECTORY", runtime + ":" + d.file("other")}, {"XDG_RUNTIME_DIR", d.file("xdg")}};
  Child sup = run_named(name, d, service, service);
  CHECK(::access(fmt::format("{}/{}.sock", runtime, name).c_str(), F_OK) == 0);
  CHECK(run({hotrestart_bin(), "stop", "--name", name}, service, 30s).exit_code == 0);
  CHECK(sup.wait_for(10s) == std::optional<int>(0));
}

TEST_CASE("root's supervisor keeps its control socket in /run/hotrestart, where every root shell finds it") {
  if (::geteuid() != 0) {
    MESSAGE("not root: /run/hotrestart is root's; skipped");
    return;
  }
  TempDir d;
  const std::string name = fmt::format("hr-test-{}", ::getpid());
  SpawnOptions service;  // A system service: no XDG_RUNTIME_DIR, no RUNTIME_DIRECTORY.
  service.unset_env = {"XDG_RUNTIME_DIR", "RUNTIME_DIRECTORY"};
  SpawnOptions admin;  // An admin shell that has an XDG_RUNTIME_DIR of its own.
  admin.set_env = {{"XDG_RUNTIME_DIR", d.file("xdg")}};
  admin.unset_env = {"RUNTIME_DIRECTORY"};
  Child sup = run_named(name, d, service, admin);
  const std::string socket = fmt::format("/run/hotrestart/{}.sock", name);
  CHECK(::access(socket.c_str(), F_OK) == 0);
  RunResult upgrade = run({hotrestart_bin(), "upgrade", "--name", name}, admin, 60s);
  CHECK_MESSAGE(upgrade.exit_code == 0, upgrade.out << upgrade.err);
  CHECK(run({hotrestart_bin(), "stop", "--name", name}, admin, 30s).exit_code == 0);
  CHECK(sup.wait_for(10s) == std::optional<int>(0));
  CHECK(::access(socket.c_str(), F_OK) != 0);
}
