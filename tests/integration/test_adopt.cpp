// `hotrestart run --adopt-binds`: servers that bind their own port and know nothing of hotrestart,
// upgraded under load. The servers are Debian's own (python3's http.server, node), unchanged.
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

constexpr const char* kPython = "/usr/bin/python3";
constexpr const char* kNode = "/usr/bin/node";
constexpr const char* kNginx = "/usr/sbin/nginx";
constexpr const char* kGunicorn = "/usr/bin/gunicorn";
constexpr const char* kLighttpd = "/usr/sbin/lighttpd";
constexpr const char* kCaddy = "/usr/bin/caddy";

bool have(const char* program) {
  return ::access(program, X_OK) == 0;
}

std::string third_party(const std::string& name) {
  return std::string(HOTRESTART_SOURCE_DIR) + "/tests/third-party/" + name;
}

// The listening TCP sockets on `port`, system-wide, from /proc/net/tcp.
int listening_sockets(std::uint16_t port) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);
  int count = 0;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string sl, local, remote, state;
    if (!(fields >> sl >> local >> remote >> state)) continue;
    if (state == "0A" && std::stoul(local.substr(local.rfind(':') + 1), nullptr, 16) == port) ++count;
  }
  return count;
}

// The signals a process has a handler for (SigCgt in /proc/PID/status).
std::set<int> caught_signals(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  std::set<int> out;
  while (std::getline(in, line)) {
    if (!line.starts_with("SigCgt:")) continue;
    const unsigned long long mask = std::stoull(line.substr(7), nullptr, 16);
    for (int sig = 1; sig <= 64; ++sig)
      if ((mask >> (sig - 1)) & 1ULL) out.insert(sig);
  }
  return out;
}

// The names of a process's threads.
std::multiset<std::string> thread_names(pid_t pid) {
  std::multiset<std::string> out;
  const std::string dir = "/proc/" + std::to_string(pid) + "/task";
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    std::ifstream in(e.path() / "comm");
    std::string name;
    if (std::getline(in, name)) out.insert(name);
  }
  return out;
}

std::string listen_arg(std::uint16_t port) {
  return fmt::format("http=tcp://127.0.0.1:{}", port);
}

// Upgrades `sup` ten times to command(2), command(3), ... under the loads, and checks that no
// request failed and that every response came from the generation that should have served it
// (its version, "vN" for generation N, is in every body): the old one before the upgrade began,
// the new one once the old one had exited. The runs use --no-park, so that each old generation
// exits once drained rather than wait parked through the watch window.
void ten_upgrades(Supervisor& sup, const std::function<std::vector<std::string>(int)>& command,
                  const std::vector<LoadClient*>& loads, bool adopt = true) {
  struct Mark {
    Clock::time_point begin;
    Clock::time_point old_gone;
    int old_generation;
  };
  std::vector<Mark> marks;
  for (LoadClient* load : loads)
    load->start();
  for (LoadClient* load : loads)
    let_load_run(*load, 30);
  for (int k = 0; k < 10; ++k) {
    const pid_t old_pid = sup.active_pid();
    Mark m{Clock::now(), {}, static_cast<int>(sup.active_generation())};
    RunResult r = sup.upgrade_to(command(m.old_generation + 1));
    REQUIRE_MESSAGE(r.exit_code == 0, "upgrade " << k << ": " << r.out << r.err);
    // Past the tests' --drain-timeout of 20 s: a connection the server keeps idle to the end is
    // closed then, and what a client would see of it (a failed request) the load checks below.
    REQUIRE_MESSAGE(wait_until([&] { return !pid_alive(old_pid); }, 30s), "the old generation did not exit");
    m.old_gone = Clock::now();
    CHECK(static_cast<int>(sup.active_generation()) == m.old_generation + 1);
    marks.push_back(m);
    for (LoadClient* load : loads)
      let_load_run(*load, 20);
  }
  std::size_t checked = 0;
  for (LoadClient* load : loads) {
    load->stop();
    require_no_failures(*load, "load");
    for (const auto& r : load->responses()) {
      REQUIRE(r.version.size() > 1);
      const int served_by = std::stoi(r.version.substr(1));
      for (const auto& m : marks) {
        if (r.end < m.begin) REQUIRE(served_by <= m.old_generation);
        if (r.start > m.old_gone) REQUIRE(served_by > m.old_generation);
      }
      ++checked;
    }
  }
  CHECK(checked > 300);
  // Only the last generation is left: every process under the supervisor is in its process group
  // (a master/worker server has several).
  CHECK(wait_until(
      [&] {
        const pid_t active = sup.active_pid();
        for (pid_t p : sup.processes())
          if (::getpgid(p) != active) return false;
        return true;
      },
      10s));
  json s = sup.status_or_fail();
  CHECK(s["adopt_binds"] == adopt);
  CHECK(s["counters"]["upgrades_done"] == 10);
  CHECK(s["counters"]["crashes"] == 0);
}

}  // namespace

TEST_CASE("adopt: python3 -m http.server upgrades 10 times under load with no failed request") {
  if (!have(kPython)) {
    MESSAGE("skipped: " << kPython << " is not installed (scripts/install-deps installs python3)");
    return;
  }
  TempDir www;
  // Generation N serves the directory vN, whose file "v" says which it is.
  auto command = [&](int n) {
    const std::string dir = www.file(fmt::format("v{}", n));
    ::mkdir(dir.c_str(), 0755);
    std::ofstream(dir + "/v") << fmt::format("version=v{}\n", n);
    // HTTP/1.1: it keeps connections alive (ThreadingHTTPServer, one thread per connection).
    return std::vector<std::string>{kPython,  "-m",        "http.server", "-p", "HTTP/1.1",
                                    "--bind", "127.0.0.1", "--directory", dir};
  };
  const std::uint16_t port = free_port();
  auto first = command(1);
  first.insert(first.begin() + 3, std::to_string(port));
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park", "--drain-timeout", "20s"}, first);
  LoadClient keepalive(load_config(port, LoadClient::Mode::KeepAlive, 3, "/v"));
  LoadClient fresh(load_config(port, LoadClient::Mode::NewConnection, 3, "/v"));
  ten_upgrades(sup,
               [&](int n) {
                 auto c = command(n);
                 c.insert(c.begin() + 3, std::to_string(port));
                 return c;
               },
               {&keepalive, &fresh});
  CHECK(listening_sockets(port) == 1);
  CHECK(sup.proc().wait_output("its connections are done; sending SIGTERM", 5s));
  sup.stop();
}

TEST_CASE("adopt: a Node.js server upgrades 10 times under load with no failed request") {
  if (!have(kNode)) {
    MESSAGE("skipped: " << kNode << " is not installed (scripts/install-deps installs nodejs)");
    return;
  }
  const std::uint16_t port = free_port();
  auto command = [&](int n) {
    return std::vector<std::string>{kNode, third_party("node-hello.js"), std::to_string(port), fmt::format("v{}", n)};
  };
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park", "--drain-timeout", "20s"}, command(1));
  // Node keeps connections alive and has no drain of its own: the HTTP drain ends them.
  LoadClient keepalive(load_config(port, LoadClient::Mode::KeepAlive, 3, "/"));
  LoadClient fresh(load_config(port, LoadClient::Mode::NewConnection, 3, "/"));
  ten_upgrades(sup, command, {&keepalive, &fresh});
  const auto versions = fresh.version_counts();
  CHECK(versions.count("v1") == 1);
  CHECK(versions.count("v11") == 1);
  CHECK(keepalive.version_counts().count("v11") == 1);
  sup.stop();
}

namespace {

// Generation N of nginx runs with its own configuration file, nginx-vN.conf, whose answers say vN
// and the worker's pid. In the foreground; with `master`, a master and 2 workers (which run as
// nobody, nginx's default under root, so they can report ready only through the library's socket
// opened before that), else nginx alone in one process.
std::function<std::vector<std::string>(int)> nginx_command(const TempDir& dir, std::uint16_t port, bool master) {
  return [&dir, port, master](int n) {
    const std::string conf = dir.file(fmt::format("nginx-v{}.conf", n));
    std::ofstream(conf) << nginx_config(dir.path(), port, dir.file(fmt::format("nginx-v{}.pid", n)),
                                        fmt::format("version=v{} pid=$pid", n), master);
    return std::vector<std::string>{kNginx, "-e", "stderr", "-c", conf};
  };
}

}  // namespace

TEST_CASE(
    "adopt: nginx, master and workers, upgrades 10 times under keep-alive load with default flags and loses nothing") {
  if (!have(kNginx)) {
    MESSAGE("skipped: " << kNginx << " is not installed (scripts/install-deps installs nginx-light)");
    return;
  }
  TempDir dir;
  const std::uint16_t port = free_port();
  const auto command = nginx_command(dir, port, true);
  // Default flags: on drain the library closes the listeners and makes each connection's next
  // response say "Connection: close", so the keep-alive clients close first; SIGTERM (nginx's fast
  // stop) goes once the connections are done.
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park", "--drain-timeout", "20s"}, command(1));
  LoadClient keepalive(load_config(port, LoadClient::Mode::KeepAlive, 3, "/"));
  LoadClient fresh(load_config(port, LoadClient::Mode::NewConnection, 3, "/"));
  ten_upgrades(sup, command, {&keepalive, &fresh});
  CHECK(sup.proc().wait_output("its connections are done; sending SIGTERM", 5s));
  CHECK(listening_sockets(port) == 1);
  sup.stop();
}

TEST_CASE(
    "adopt: nginx in one process, whose SIGQUIT stops it at once, upgrades 10 times under load and loses nothing") {
  if (!have(kNginx)) {
    MESSAGE("skipped: " << kNginx << " is not installed (scripts/install-deps installs nginx-light)");
    return;
  }
  TempDir dir;
  const std::uint16_t port = free_port();
  const auto command = nginx_command(dir, port, false);
  // A given --drain-signal waits for the connections too: nginx without its master exits at once
  // on SIGQUIT, and would cut the requests in flight.
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park", "--drain-signal", "SIGQUIT",
                  "--drain-timeout", "20s"},
                 command(1));
  LoadClient keepalive(load_config(port, LoadClient::Mode::KeepAlive, 3, "/"));
  LoadClient fresh(load_config(port, LoadClient::Mode::NewConnection, 3, "/"));
  ten_upgrades(sup, command, {&keepalive, &fresh});
  CHECK(sup.proc().wait_output("its connections are done; sending SIGQUIT", 5s));
  sup.stop();
}

TEST_CASE("adopt: gunicorn needs no --adopt-binds: it takes LISTEN_FDS as it is and upgrades 10 times under load") {
  if (!have(kGunicorn)) {
    MESSAGE("skipped: " << kGunicorn << " is not installed (scripts/install-deps installs gunicorn)");
    return;
  }
  // No --adopt-binds: gunicorn reads LISTEN_FDS and LISTEN_PID itself, reports READY=1 itself, and
  // drains on SIGTERM (its sync workers finish the request in hand).
  auto command = [&](int n) {
    return std::vector<std::string>{kGunicorn,
                                    "--workers",
                                    "2",
                                    "--chdir",
                                    std::string(HOTRESTART_SOURCE_DIR) + "/tests/third-party",
                                    "--env",
                                    fmt::format("HELLO_VERSION=v{}", n),
                                    "wsgi_hello:app"};
  };
  Supervisor sup({"--drain-timeout", "20s"}, command(1));
  const std::uint16_t port = sup.port();
  LoadClient keepalive(load_config(port, LoadClient::Mode::KeepAlive, 3, "/"));
  LoadClient fresh(load_config(port, LoadClient::Mode::NewConnection, 3, "/"));
  ten_upgrades(sup, command, {&keepalive, &fresh}, /*adopt=*/false);
  CHECK(contains(sup.status_or_fail()["generations"][0]["status"].get<std::string>(), "Gunicorn arbiter booted"));
  sup.stop();
}

TEST_CASE(
    "adopt: gunicorn with threads, binding its port itself, upgrades 10 times under keep-alive load with default "
    "flags") {
  if (!have(kGunicorn)) {
    MESSAGE("skipped: " << kGunicorn << " is not installed (scripts/install-deps installs gunicorn)");
    return;
  }
  const std::uint16_t port = free_port();
  // Threaded workers keep connections alive. Under --adopt-binds gunicorn still finds LISTEN_FDS
  // and waits on the inherited socket itself: the library closes that one on drain as well.
  auto command = [&](int n) {
    return std::vector<std::string>{kGunicorn,
                                    "--bind",
                                    fmt::format("127.0.0.1:{}", port),
                                    "--workers",
                                    "2",
                                    "--threads",
                                    "4",
                                    "--chdir",
                                    std::string(HOTRESTART_SOURCE_DIR) + "/tests/third-party",
                                    "--env",
                                    fmt::format("HELLO_VERSION=v{}", n),
                                    "wsgi_hello:app"};
  };
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park", "--drain-timeout", "20s"}, command(1));
  LoadClient keepalive(load_config(port, LoadClient::Mode::KeepAlive, 3, "/"));
  LoadClient fresh(load_config(port, LoadClient::Mode::NewConnection, 3, "/"));
  ten_upgrades(sup, command, {&keepalive, &fresh});
  CHECK_FALSE(sup.proc().wait_output("Socket operation on non-socket", 100ms));
  sup.stop();
}

TEST_CASE("adopt: a revert resumes a parked gunicorn that waits on the inherited socket itself, under load") {
  if (!have(kGunicorn) || !have(kPython)) {
    MESSAGE("skipped: " << kGunicorn << " or " << kPython << " is not installed");
    return;
  }
  const std::uint16_t port = free_port();
  const std::vector<std::string> gunicorn = {kGunicorn,
                                             "--bind",
                                             fmt::format("127.0.0.1:{}", port),
                                             "--workers",
                                             "2",
                                             "--threads",
                                             "2",
                                             "--chdir",
                                             std::string(HOTRESTART_SOURCE_DIR) + "/tests/third-party",
                                             "--env",
                                             "HELLO_VERSION=v1",
                                             "wsgi_hello:app"};
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--drain-timeout", "20s"}, gunicorn);
  const pid_t v1_pid = sup.active_pid();
  MixedLoad load(port, 2);
  let_load_run(load.keepalive, 50);
  // Release 2 binds the port, waits on it once, takes no connection and aborts: gunicorn, parked
  // meanwhile with the inherited socket it waits on replaced, is resumed with it put back.
  const std::string crashing = fmt::format(
      "import os, select, socket, time\n"
      "s = socket.socket()\n"
      "s.bind(('127.0.0.1', {}))\n"
      "s.listen(64)\n"
      "select.select([s], [], [], 0)\n"
      "time.sleep(0.5)\n"
      "os.abort()\n",
      port);
  RunResult up = sup.cli({"upgrade", "--wait", "--", kPython, "-c", crashing}, 60s);
  CHECK_MESSAGE(up.exit_code == 1, up.out << up.err);
  CHECK_MESSAGE(contains(up.err, "release 2 reverted"), up.err);
  REQUIRE(sup.proc().wait_output(fmt::format("generation 1 (pid {}) serves again", v1_pid), 15s));
  CHECK(sup.active_pid() == v1_pid);
  for (int i = 0; i < 5; ++i)
    CHECK(contains(http_get(port, "/"), "version=v1"));
  let_load_run(load.fresh, 50);
  let_load_run(load.keepalive, 50);
  CHECK_FALSE(sup.proc().wait_output("Socket operation on non-socket", 100ms));
  load.finish();
  sup.stop();
}

TEST_CASE("adopt: Caddy, a Go program, does not crash and upgrades 10 times under keep-alive load, losing nothing") {
  if (!have(kCaddy)) {
    MESSAGE("skipped: " << kCaddy << " is not installed (scripts/install-deps installs caddy)");
    return;
  }
  TempDir dir;
  const std::uint16_t port = free_port();
  // Go's runtime makes its own system calls: its bind is trapped (seccomp) and answered by the
  // library's thread, and so are its writes once it drains (the HTTP drain); SIGURG, its
  // preemption signal, is left to it.
  auto command = [&](int n) {
    const std::string conf = dir.file(fmt::format("Caddyfile-v{}", n));
    std::ofstream(conf) << fmt::format(R"({{
	admin off
	auto_https off
	storage file_system {0}
}}
http://127.0.0.1:{1} {{
	bind 127.0.0.1
	respond "version=v{2}"
}}
)",
                                       dir.path(), port, n);
    return std::vector<std::string>{kCaddy, "run", "--config", conf, "--adapter", "caddyfile"};
  };
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park", "--drain-timeout", "20s"}, command(1));
  LoadClient keepalive(load_config(port, LoadClient::Mode::KeepAlive, 3, "/"));
  LoadClient fresh(load_config(port, LoadClient::Mode::NewConnection, 3, "/"));
  ten_upgrades(sup, command, {&keepalive, &fresh});
  CHECK(listening_sockets(port) == 1);
  CHECK_FALSE(sup.proc().wait_output("unexpected signal", 100ms));
  CHECK(sup.proc().wait_output("its connections are done; sending SIGTERM", 5s));
  sup.stop();
}

TEST_CASE("adopt: lighttpd upgrades 10 times under keep-alive load with default flags and loses nothing") {
  if (!have(kLighttpd)) {
    MESSAGE("skipped: " << kLighttpd << " is not installed (scripts/install-deps installs lighttpd)");
    return;
  }
  TempDir dir;
  const std::uint16_t port = free_port();
  // Generation N serves the directory vN, whose file "v" says which it is. lighttpd answers
  // HTTP/1.1 keep-alive with no Connection header, and stops at once on SIGTERM.
  auto command = [&](int n) {
    const std::string root = dir.file(fmt::format("v{}", n));
    ::mkdir(root.c_str(), 0755);
    std::ofstream(root + "/v") << fmt::format("version=v{}\n", n);
    const std::string conf = dir.file(fmt::format("lighttpd-v{}.conf", n));
    std::ofstream(conf) << fmt::format(R"(server.document-root = "{0}"
server.port = {1}
server.bind = "127.0.0.1"
server.errorlog = "/dev/stderr"
mimetype.assign = ("" => "text/plain")
)",
                                       root, port);
    return std::vector<std::string>{kLighttpd, "-D", "-f", conf};
  };
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park", "--drain-timeout", "20s"}, command(1));
  LoadClient keepalive(load_config(port, LoadClient::Mode::KeepAlive, 3, "/v"));
  LoadClient fresh(load_config(port, LoadClient::Mode::NewConnection, 3, "/v"));
  ten_upgrades(sup, command, {&keepalive, &fresh});
  CHECK(sup.proc().wait_output("its connections are done; sending SIGTERM", 5s));
  sup.stop();
}

TEST_CASE("adopt: a blocking-accept server and Node.js take turns under load: each keeps its own blocking mode") {
  if (!have(kPython) || !have(kNode)) {
    MESSAGE("skipped: " << kPython << " or " << kNode << " is not installed");
    return;
  }
  // Node makes its socket non-blocking, and the generations share one listening socket; the
  // blocking server's accept() must still wait rather than fail with EAGAIN.
  const std::uint16_t port = free_port();
  auto command = [&](int n) {
    if (n % 2 == 1)
      return std::vector<std::string>{kNode, third_party("node-hello.js"), std::to_string(port), fmt::format("v{}", n)};
    return std::vector<std::string>{kPython, third_party("blocking-server.py"), std::to_string(port),
                                    fmt::format("v{}", n)};
  };
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park", "--drain-timeout", "20s"}, command(1));
  LoadClient fresh(load_config(port, LoadClient::Mode::NewConnection, 3, "/"));
  ten_upgrades(sup, command, {&fresh});
  const auto versions = fresh.version_counts();
  CHECK(versions.count("v2") == 1);
  CHECK(versions.count("v10") == 1);
  sup.stop();
}

TEST_CASE("adopt: a request in flight when the old generation drains completes there, then it stops") {
  if (!have(kNode)) {
    MESSAGE("skipped: " << kNode << " is not installed");
    return;
  }
  const std::uint16_t port = free_port();
  auto command = [&](int n) {
    return std::vector<std::string>{kNode, third_party("node-hello.js"), std::to_string(port), fmt::format("v{}", n)};
  };
  // --no-park: the old generation drains and exits rather than waits parked through the watch window.
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park"}, command(1));
  const pid_t old_pid = sup.active_pid();
  LoadClient::Config slow_config = load_config(port, LoadClient::Mode::NewConnection, 3, "/slow");
  slow_config.threads = 1;
  slow_config.max_requests = 1;
  LoadClient slow(slow_config);
  slow.start();
  // The request is in the old generation's hands (accepted) before the upgrade starts.
  REQUIRE(wait_until([&] { return list_fds(old_pid).size() > 0 && slow.ok_count() == 0; }, 5s));
  std::this_thread::sleep_for(200ms);  // Lets the connection reach the server (a bounded, short delay).
  RunResult r = sup.upgrade_to(command(2));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  REQUIRE(slow.wait_done(10s));
  require_no_failures(slow, "the slow request");
  REQUIRE(slow.responses().size() == 1);
  CHECK(slow.responses()[0].version == "v1");
  REQUIRE(wait_until([&] { return !pid_alive(old_pid); }, 10s));
  CHECK(sup.proc().wait_output(
      "closing its listeners, and each HTTP connection after its next response (replaced by generation 2)", 5s));
  CHECK(sup.proc().wait_output("its connections are done; sending SIGTERM", 5s));
  CHECK(contains(http_get(port, "/"), "version=v2"));
  sup.stop();
}

TEST_CASE("adopt: a server asking for SO_REUSEPORT gets the supervisor's socket, never a second one") {
  if (!have(kPython)) {
    MESSAGE("skipped: " << kPython << " is not installed");
    return;
  }
  const std::uint16_t port = free_port();
  auto command = [&](int n) {
    return std::vector<std::string>{kPython, third_party("reuseport-server.py"), std::to_string(port),
                                    fmt::format("v{}", n)};
  };
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds"}, command(1));
  CHECK(listening_sockets(port) == 1);
  CHECK(contains(http_get(port, "/"), "version=v1"));
  RunResult r = sup.upgrade_to(command(2));
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  // Both generations are up during the upgrade; there is still one listening socket.
  CHECK(listening_sockets(port) == 1);
  CHECK(wait_until([&] { return contains(http_get(port, "/"), "version=v2"); }, 10s));
  sup.stop();
}

TEST_CASE("adopt: the library touches no signal: a server's handlers are its own, and its drain sends none") {
  if (!have(kPython)) {
    MESSAGE("skipped: " << kPython << " is not installed");
    return;
  }
  TempDir dir;
  const std::string urg = dir.file("urg");
  const std::uint16_t port = free_port();
  // Generation 1 handles SIGURG itself (Go's runtime does, for its own use); generation 2 does not.
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park"},
                 {kPython, third_party("reuseport-server.py"), std::to_string(port), "v1", urg});
  const pid_t old_pid = sup.active_pid();
  CHECK(caught_signals(old_pid).count(SIGURG) == 1);
  // The library's thread is there, under its own name.
  CHECK(thread_names(old_pid).count("hotrestart-adop") == 1);
  RunResult r = sup.upgrade_to({kPython, third_party("reuseport-server.py"), std::to_string(port), "v2"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  const pid_t new_pid = sup.active_pid();
  CHECK(caught_signals(new_pid).count(SIGURG) == 0);
  // The library closed its listener through the command page, the drain went on to SIGTERM, and no
  // SIGURG reached the server's handler.
  CHECK(sup.proc().wait_output("generation 1 (pid " + std::to_string(old_pid) + "): its connections are done", 10s));
  CHECK(wait_until([&] { return !pid_alive(old_pid); }, 10s));
  CHECK_FALSE(read_file(urg).has_value());
  CHECK(contains(http_get(port, "/"), "version=v2"));
  sup.stop();
}

TEST_CASE("adopt: --no-http-drain without --adopt-binds is a usage error, and with it the status says so") {
  TempDir d;
  RunResult r = run({hotrestart_bin(), "run", "--control", d.file("c.sock"), "--no-http-drain", "--listen",
                     "http=tcp://127.0.0.1:0", "--", "/bin/true"},
                    {}, 10s);
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(contains(r.err, "--no-http-drain goes with --adopt-binds only"), r.err);
  if (!have(kNode)) return;
  const std::uint16_t port = free_port();
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-http-drain"},
                 {kNode, third_party("node-hello.js"), std::to_string(port), "v1"});
  CHECK(sup.status_or_fail()["http_drain"] == false);
  sup.stop();
}

TEST_CASE("adopt: a statically linked server is refused with a sentence, at run and at upgrade") {
  // Debian's ldconfig is statically linked.
  const char* kStatic = "/sbin/ldconfig";
  if (!have(kStatic)) {
    MESSAGE("skipped: no " << kStatic);
    return;
  }
  TempDir dir;
  RunResult r = run({hotrestart_bin(), "run", "--control", dir.file("ctl.sock"), "--state-dir", dir.file("state"),
                     "--listen", "http=tcp://127.0.0.1:0", "--adopt-binds", "--", kStatic},
                    {}, 20s);
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(contains(r.err, "/sbin/ldconfig is statically linked, so no library can be preloaded into it"), r.err);

  if (!have(kPython)) return;
  const std::uint16_t port = free_port();
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds"},
                 {kPython, third_party("reuseport-server.py"), std::to_string(port), "v1"});
  const pid_t old_pid = sup.active_pid();
  RunResult u = sup.upgrade_to({kStatic});
  CHECK(u.exit_code == 1);
  CHECK_MESSAGE(contains(u.err, "is statically linked"), u.out << u.err);
  CHECK(sup.active_pid() == old_pid);
  CHECK(contains(http_get(port, "/"), "version=v1"));
  sup.stop();
}

TEST_CASE("adopt: a server that binds the IPv6 wildcard adopts an IPv4 listener of its port, unless it is IPv6-only") {
  if (!have(kNode) || !have(kPython)) {
    MESSAGE("skipped: " << kNode << " or " << kPython << " is not installed");
    return;
  }
  const std::uint16_t port = free_port();
  // Node.js given no address binds [::] with dual stack, as Go and many servers do.
  auto node = [&](int n) {
    return std::vector<std::string>{kNode, third_party("node-hello.js"), std::to_string(port), fmt::format("v{}", n),
                                    "any"};
  };
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--no-park", "--ready-timeout", "5s"}, node(1));
  CHECK(contains(http_get(port, "/"), "version=v1"));
  RunResult up = sup.upgrade_to(node(2));
  REQUIRE_MESSAGE(up.exit_code == 0, up.out << up.err);
  CHECK(contains(http_get(port, "/"), "version=v2"));
  CHECK(listening_sockets(port) == 1);
  // A socket made IPv6-only asked for none of the IPv4 listener: it binds its own, and never
  // reports ready.
  const std::string v6only = fmt::format(
      "import socket, time\n"
      "s = socket.socket(socket.AF_INET6)\n"
      "s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\n"
      "s.bind(('::', {}))\n"
      "s.listen()\n"
      "s.accept()\n",
      port);
  RunResult r = sup.upgrade_to({kPython, "-c", v6only});
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(contains(r.err, "it never waited on a listener given with --listen"), r.out << r.err);
  CHECK(contains(http_get(port, "/"), "version=v2"));
  sup.stop();
}

TEST_CASE("adopt: a server that binds another address never reports ready, and the rollback says why") {
  if (!have(kPython)) {
    MESSAGE("skipped: " << kPython << " is not installed");
    return;
  }
  const std::uint16_t port = free_port();
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--ready-timeout", "3s"},
                 {kPython, third_party("reuseport-server.py"), std::to_string(port), "v1"});
  const pid_t old_pid = sup.active_pid();
  const std::uint16_t other = free_port();
  RunResult r = sup.upgrade_to({kPython, third_party("reuseport-server.py"), std::to_string(other), "v2"});
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(contains(r.err, fmt::format("it never waited on a listener given with --listen (does it bind "
                                            "127.0.0.1:{}?)",
                                            port)),
                r.out << r.err);
  CHECK(sup.active_pid() == old_pid);
  CHECK(contains(http_get(port, "/"), "version=v1"));
  sup.stop();
}

TEST_CASE("adopt: a revert resumes the parked old generation: the same Node.js process serves again, under load") {
  if (!have(kNode) || !have(kPython)) {
    MESSAGE("skipped: " << kNode << " or " << kPython << " is not installed");
    return;
  }
  const std::uint16_t port = free_port();
  Supervisor sup({"--listen", listen_arg(port), "--adopt-binds", "--drain-timeout", "20s"},
                 {kNode, third_party("node-hello.js"), std::to_string(port), "v1"});
  const pid_t v1_pid = sup.active_pid();
  MixedLoad load(port, 2);
  let_load_run(load.keepalive, 50);

  // The old generation is parked at the cutover (its listeners closed by the library, the server
  // itself untold), then resumed when release 2 crashes in its watch window.
  // Release 2 binds the port, waits on it once (so the library reports it ready), takes no
  // connection, and aborts half a second later: the connections it left in the shared backlog
  // are the resumed generation's. It is Debian's python3, so that a sanitizer build's runtime does
  // not stand in the preload library's way.
  const std::string crashing = fmt::format(
      "import os, select, socket, time\n"
      "s = socket.socket()\n"
      "s.bind(('127.0.0.1', {}))\n"
      "s.listen(64)\n"
      "select.select([s], [], [], 0)\n"
      "time.sleep(0.5)\n"
      "os.abort()\n",
      port);
  RunResult up = sup.cli({"upgrade", "--wait", "--", kPython, "-c", crashing}, 60s);
  CHECK_MESSAGE(up.exit_code == 1, up.out << up.err);
  CHECK_MESSAGE(contains(up.err, "release 2 reverted"), up.err);
  CHECK(sup.proc().wait_output("then parked for 30s in case it is resumed", 5s));
  REQUIRE_MESSAGE(wait_until(
                      [&] {
                        auto s = sup.status();
                        return s && (*s)["release"] == 1 && sup.active_state() == "ready";
                      },
                      15s, 10ms),
                  sup.status_or_fail().dump());
  CHECK(sup.active_pid() == v1_pid);
  CHECK(sup.proc().wait_output(fmt::format("generation 1 (pid {}) serves again", v1_pid), 5s));
  // Every answer from here on comes from that process, on new connections as on old ones.
  for (int i = 0; i < 5; ++i)
    CHECK(contains(http_get(port, "/"), fmt::format("version=v1 pid={}", v1_pid)));
  let_load_run(load.fresh, 50);
  let_load_run(load.keepalive, 50);
  json h = history(sup);
  CHECK_MESSAGE(h["releases"].size() == 2, h.dump());
  CHECK(release(h, 1)["outcome"] == "serving");
  CHECK(release(h, 2)["outcome"] == "reverted");

  // It upgrades again as usual afterwards: the resumed listeners drain like the first ones did.
  RunResult next = sup.upgrade_to({kNode, third_party("node-hello.js"), std::to_string(port), "v3"});
  REQUIRE_MESSAGE(next.exit_code == 0, next.out << next.err);
  CHECK(contains(http_get(port, "/"), "version=v3"));
  load.finish();
  sup.stop();
}
