// A real `hotrestart run` in a private temp dir, and the checks every integration test
// shares. Nothing here sleeps without a deadline; every wait names what it waited for.
#pragma once

#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/types.h>

#include <chrono>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "testsupport.h"

namespace hotrestart::it {

using namespace std::chrono_literals;
using namespace hotrestart::testsupport;
using nlohmann::json;

inline std::string hotrestart_bin() {
  return bin_path("hotrestart");
}
inline std::string hello_bin() {
  return bin_path("hello-server");
}
inline std::string test_worker_bin() {
  return bin_path("test-worker");
}

inline std::vector<std::string> hello(const std::string& version) {
  return {hello_bin(), "--version", version};
}

class Supervisor {
 public:
  // Starts `hotrestart run --control DIR/ctl.sock RUN_ARGS -- COMMAND` and waits until a
  // generation is ready (unless `wait_ready` is false).
  // `prefix` goes before `hotrestart run` (a program that execs the rest, such as `unshare -m`).
  Supervisor(std::vector<std::string> run_args, std::vector<std::string> command, bool wait_ready = true,
             SpawnOptions options = {}, std::vector<std::string> prefix = {})
      : Supervisor(Place{}, std::move(run_args), std::move(command), wait_ready, std::move(options),
                   std::move(prefix)) {}

  // Where a supervisor keeps its control socket and state: its own temp dir, or (to start one in
  // the place of another that died) that one's.
  struct Place {
    std::string control;
    std::string state_dir;
  };
  Place place() const { return {control_, dir_.file("state")}; }

  Supervisor(const Place& place, std::vector<std::string> run_args, std::vector<std::string> command,
             bool wait_ready = true, SpawnOptions options = {}, std::vector<std::string> prefix = {})
      : control_(place.control.empty() ? dir_.file("ctl.sock") : place.control) {
    if (!place.state_dir.empty() && std::find(run_args.begin(), run_args.end(), "--state-dir") == run_args.end()) {
      run_args.insert(run_args.begin(), {"--state-dir", place.state_dir});
    }
    std::vector<std::string> argv = std::move(prefix);
    argv.insert(argv.end(), {hotrestart_bin(), "run", "--control", control_});
    if (run_args.empty() || std::find(run_args.begin(), run_args.end(), "--listen") == run_args.end()) {
      argv.insert(argv.end(), {"--listen", "http=tcp://127.0.0.1:0"});
    }
    // Each supervisor keeps its release history in its own directory, never in the user's.
    if (std::find(run_args.begin(), run_args.end(), "--state-dir") == run_args.end()) {
      argv.insert(argv.end(), {"--state-dir", dir_.file("state")});
    }
    argv.insert(argv.end(), run_args.begin(), run_args.end());
    argv.push_back("--");
    argv.insert(argv.end(), command.begin(), command.end());
    proc_ = Child::spawn(argv, std::move(options));
    if (wait_ready) {
      const bool ready = wait_until([&] { return active_state() == "ready"; }, 15s, 20ms);
      REQUIRE_MESSAGE(ready, "the first generation never became ready\n" << proc_.describe());
    }
  }

  ~Supervisor() {
    if (proc_.running()) stop();
  }

  Child& proc() { return proc_; }
  pid_t pid() const { return proc_.pid(); }
  const std::string& control() const { return control_; }
  const TempDir& dir() const { return dir_; }

  RunResult cli(std::vector<std::string> args, std::chrono::milliseconds timeout = 60s, SpawnOptions options = {}) {
    std::vector<std::string> argv = {hotrestart_bin()};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.begin() + 2, {"--control", control_});
    return run(argv, std::move(options), timeout);
  }

  std::optional<json> status() {
    RunResult r = cli({"status", "--json"}, 10s);
    if (r.exit_code != 0) return std::nullopt;
    json j = json::parse(r.out, nullptr, false);
    if (j.is_discarded()) return std::nullopt;
    return j;
  }

  json status_or_fail() {
    auto s = status();
    REQUIRE_MESSAGE(s.has_value(), "hotrestart status failed\n" << proc_.describe());
    return *s;
  }

  std::optional<json> active() {
    auto s = status();
    if (!s) return std::nullopt;
    for (const auto& g : (*s)["generations"]) {
      if (g["role"] == "active") return g;
    }
    return std::nullopt;
  }
  std::string active_state() {
    auto g = active();
    return g ? g->value("state", "") : "";
  }
  pid_t active_pid() {
    auto g = active();
    return g ? g->value("pid", 0) : 0;
  }
  std::uint64_t active_generation() {
    auto g = active();
    return g ? g->value("generation", std::uint64_t{0}) : 0;
  }

  std::uint16_t port(const std::string& name = "http") {
    json s = status_or_fail();
    for (const auto& l : s["listeners"]) {
      if (l["name"] == name) {
        const std::string address = l["address"];
        return static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
      }
    }
    FAIL("no listener named " << name);
    return 0;
  }

  RunResult upgrade(std::vector<std::string> args = {}, std::chrono::milliseconds timeout = 60s) {
    args.insert(args.begin(), "upgrade");
    return cli(args, timeout);
  }
  RunResult upgrade_to(const std::vector<std::string>& command) {
    std::vector<std::string> args = {"--"};
    args.insert(args.end(), command.begin(), command.end());
    return upgrade(args);
  }

  // Every process below the supervisor (workers, their children, probes).
  // The processes below the supervisor but its guard: the workers and what they started.
  std::set<pid_t> processes() {
    std::set<pid_t> out;
    for (pid_t p : descendants_of(proc_.pid())) {
      if (pid_alive(p) && !is_guard(p)) out.insert(p);
    }
    return out;
  }
  // The supervisor's guard (`hotrestart __guard`), or 0.
  pid_t guard() {
    for (pid_t p : children_of(proc_.pid()))
      if (pid_alive(p) && is_guard(p)) return p;
    return 0;
  }
  static bool is_guard(pid_t p) {
    const auto args = cmdline_of(p);
    return args.size() >= 2 && args[1] == "__guard";
  }

  // Graceful stop through the CLI; checks that the supervisor and all its workers exit.
  void stop() {
    std::set<pid_t> workers = processes();
    if (const pid_t g = guard()) workers.insert(g);
    RunResult r = cli({"stop"}, 60s);
    CHECK_MESSAGE(r.exit_code == 0, "hotrestart stop: " << r.err);
    auto code = proc_.wait_for(30s);
    CHECK_MESSAGE(code == std::optional<int>(0), "supervisor exit: " << proc_.describe());
    for (pid_t p : workers) {
      CHECK_MESSAGE(wait_until([&] { return !pid_alive(p); }, 10s), "worker " << p << " outlived the supervisor");
    }
  }

 private:
  TempDir dir_;
  std::string control_;
  Child proc_;
};

inline void require_no_failures(const LoadClient& load, const std::string& what) {
  CHECK_MESSAGE(load.failure_count() == 0, what << ": " << load.summary());
  CHECK_MESSAGE(load.ok_count() > 0, what << ": no request was served: " << load.summary());
}

inline LoadClient::Config load_config(std::uint16_t port, LoadClient::Mode mode, int threads,
                                      const std::string& path = "/") {
  LoadClient::Config c;
  c.port = port;
  c.mode = mode;
  c.threads = threads;
  c.path = path;
  return c;
}

// Keep-alive and new-connection clients together, as most tests that count failed requests use
// them: started at once, and checked together at the end.
struct MixedLoad {
  LoadClient keepalive;
  LoadClient fresh;
  MixedLoad(std::uint16_t port, int threads_each)
      : keepalive(load_config(port, LoadClient::Mode::KeepAlive, threads_each)),
        fresh(load_config(port, LoadClient::Mode::NewConnection, threads_each)) {
    keepalive.start();
    fresh.start();
  }
  // Stops both, and checks that each served requests and none failed.
  void finish() {
    keepalive.stop();
    fresh.stop();
    require_no_failures(keepalive, "keep-alive clients");
    require_no_failures(fresh, "new-connection clients");
  }
};

// Waits until `load` has served `more` further requests.
inline void let_load_run(const LoadClient& load, std::size_t more) {
  const std::size_t target = load.ok_count() + more;
  CHECK_MESSAGE(wait_until([&] { return load.ok_count() >= target; }, 15s), "load stalled: " << load.summary());
}

// GET http://127.0.0.1:PORT/PATH with curl: the body, or "curl failed: " and the error.
// An nginx configuration in the foreground on 127.0.0.1:PORT, its pid file `pid` and its temporary
// files in `dir`, that answers every request with `answer` (nginx's `return` text: `$pid` is the
// worker's pid). With `master`, a master and two workers; else nginx alone in one process.
inline std::string nginx_config(const std::string& dir, std::uint16_t port, const std::string& pid,
                                const std::string& answer, bool master) {
  return fmt::format(R"(daemon off;
master_process {3};
worker_processes 2;
pid {2};
error_log stderr warn;
events {{ worker_connections 512; }}
http {{
  access_log off;
  client_body_temp_path {0}/body;
  proxy_temp_path {0}/proxy;
  fastcgi_temp_path {0}/fastcgi;
  uwsgi_temp_path {0}/uwsgi;
  scgi_temp_path {0}/scgi;
  server {{
    listen 127.0.0.1:{1};
    location / {{ return 200 "{4}\n"; }}
  }}
}}
)",
                     dir, port, pid, master ? "on" : "off", answer);
}

// A port nobody listens on right now (the kernel's pick, released again): servers that bind their
// own port must be told it on their command line, before the supervisor binds it.
inline std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  ::close(fd);
  return ntohs(a.sin_port);
}

inline std::string http_get(std::uint16_t port, const std::string& path) {
  RunResult r = run({"curl", "-sS", "--max-time", "5", fmt::format("http://127.0.0.1:{}{}", port, path)}, {}, 10s);
  return r.exit_code == 0 ? r.out : "curl failed: " + r.err;
}

inline bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// The lines of `text`, without their "\n".
inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    out.push_back(line);
  return out;
}

// The JSON objects of `--json` output, one a line (a line that is not JSON is passed over).
inline std::vector<json> json_lines(const std::string& text) {
  std::vector<json> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded()) out.push_back(std::move(j));
  }
  return out;
}

// SIGKILL to the supervisor, and its exit seen (for the tests of its death).
inline void kill_supervisor(Supervisor& sup) {
  REQUIRE(sup.proc().send_signal(SIGKILL));
  REQUIRE(sup.proc().wait_for(10s) == std::optional<int>(128 + SIGKILL));
}

// Processes a test started through a supervisor that it killed, killed by pid at the end of the test
// in case a check failed before they went.
struct Leftovers {
  std::set<pid_t> pids;
  ~Leftovers() {
    for (pid_t p : pids)
      if (pid_alive(p)) ::kill(p, SIGKILL);
  }
};

inline bool gone_within(pid_t pid, std::chrono::milliseconds deadline) {
  return wait_until([&] { return !pid_alive(pid); }, deadline);
}

// `hotrestart history --json`.
inline json history(Supervisor& sup) {
  RunResult r = sup.cli({"history", "--json"}, 10s);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  return json::parse(r.out);
}

// Release `number` of a history.
inline const json& release(const json& h, std::uint64_t number) {
  for (const auto& r : h["releases"]) {
    if (r["number"] == number) return r;
  }
  FAIL("release " << number << " is not in the history: " << h.dump());
  static json none;
  return none;
}

}  // namespace hotrestart::it
