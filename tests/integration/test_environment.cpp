// The workers' process environment under a real supervisor: exactly the variables asked for
// (--clear-env, --env-file, --env) in the worker, its probes and its preflight check; bad files and
// reserved names refused at start; --chdir, and a working directory deleted under a running
// supervisor; the supervisor's own directory; relative paths of `run` and of `upgrade`; the mode,
// owner and group of unix listeners; and `upgrade --self` with all of it.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

std::string cwd_of(pid_t pid) {
  char target[4096];
  const ssize_t n = ::readlink(fmt::format("/proc/{}/cwd", pid).c_str(), target, sizeof target - 1);
  return n > 0 ? std::string(target, static_cast<std::size_t>(n)) : std::string("(unreadable)");
}

std::set<std::string> names_of(const std::map<std::string, std::string>& env) {
  std::set<std::string> names;
  for (const auto& [name, value] : env)
    names.insert(name);
  return names;
}

// `hotrestart run` that is expected to stop at once: its result.
RunResult run_refused(const TempDir& d, std::vector<std::string> args) {
  std::vector<std::string> argv = {hotrestart_bin(), "run",         "--control",
                                   d.file("c.sock"), "--state-dir", d.file("state")};
  argv.insert(argv.end(), args.begin(), args.end());
  return run(argv, {}, 20s);
}

}  // namespace

TEST_CASE("environment: with --clear-env a worker sees exactly --env-file, --env, PATH and what the supervisor sets") {
  TempDir d;
  const std::string file = d.file("app.env");
  write_file_atomic(file,
                    "# the application's settings\n"
                    "GREETING='hello world'\n"
                    "QUOTED=\"say \\\"hi\\\"\"\n"
                    "; a comment\n"
                    "LAYER=file\n");
  SpawnOptions secret;
  secret.set_env = {{"SUPERVISOR_SECRET", "hunter2"}, {"LAYER", "inherited"}};
  Supervisor sup({"--clear-env", "--env-file", file, "--env", "LAYER=flag", "--env", "EMPTY="}, hello("v1"), true,
                 secret);
  const auto env = environ_of(sup.active_pid());
  const std::set<std::string> expected = {"GREETING",
                                          "QUOTED",
                                          "LAYER",
                                          "EMPTY",
                                          "PATH",
                                          "PWD",
                                          "LISTEN_FDS",
                                          "LISTEN_FDNAMES",
                                          "LISTEN_PID",
                                          "NOTIFY_SOCKET",
                                          "HOTRESTART_GENERATION",
                                          "HOTRESTART_CONTROL",
                                          "HOTRESTART_CHANNEL_FD",
                                          "HOTRESTART_REJOIN"};
  CHECK(names_of(env) == expected);
  CHECK(env.at("GREETING") == "hello world");
  CHECK(env.at("QUOTED") == "say \"hi\"");
  CHECK(env.at("LAYER") == "flag");
  CHECK(env.at("EMPTY").empty());
  CHECK(env.at("PATH") == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  CHECK(env.at("LISTEN_PID") == std::to_string(sup.active_pid()));
  CHECK(env.at("LISTEN_FDNAMES") == "http");
  // The supervisor itself has the secret, and passes it to nothing.
  CHECK(environ_of(sup.pid()).at("SUPERVISOR_SECRET") == "hunter2");
  sup.stop();
}

TEST_CASE("environment: without --clear-env the supervisor's environment is inherited, below the files and --env") {
  TempDir d;
  write_file_atomic(d.file("one.env"), "LAYER=one\nFROM_ONE=1\nTWICE=one\n");
  write_file_atomic(d.file("two.env"), "TWICE=two\n");
  SpawnOptions options;
  options.set_env = {{"SUPERVISOR_SECRET", "hunter2"}, {"LAYER", "inherited"}, {"KEPT", "yes"}};
  Supervisor sup({"--env-file", d.file("one.env"), "--env-file", d.file("two.env"), "--env", "LAYER=flag"}, hello("v1"),
                 true, options);
  const auto env = environ_of(sup.active_pid());
  CHECK(env.at("SUPERVISOR_SECRET") == "hunter2");
  CHECK(env.at("KEPT") == "yes");
  CHECK(env.at("LAYER") == "flag");
  CHECK(env.at("FROM_ONE") == "1");
  CHECK(env.at("TWICE") == "two");
  // The supervisor's own HOTRESTART_* never reach a worker.
  CHECK(env.count("HOTRESTART_RUN_DIRECTORY") == 0);
  sup.stop();
}

TEST_CASE("environment: --clear-env keeps a secret of the supervisor from the probes and the preflight check too") {
  TempDir d;
  SpawnOptions secret;
  secret.set_env = {{"SUPERVISOR_SECRET", "hunter2"}};
  // The worker is ready only if its readiness probe sees APP_MODE and no secret; the preflight
  // check writes what it sees.
  const std::string seen = d.file("preflight.env");
  Supervisor sup(
      {"--clear-env", "--env", "APP_MODE=prod", "--ready",
       "exec:test \"$APP_MODE\" = prod && test -z \"${SUPERVISOR_SECRET+set}\" && test -n \"$HOTRESTART_PID\"",
       "--preflight", fmt::format("env > '{}'", seen)},
      hello("v1"), true, secret);
  const auto text = read_file(seen);
  REQUIRE(text.has_value());
  CHECK(contains(*text, "APP_MODE=prod\n"));
  CHECK(contains(*text, "HOTRESTART_RELEASE=1\n"));
  CHECK_FALSE(contains(*text, "SUPERVISOR_SECRET"));
  CHECK(environ_of(sup.active_pid()).count("SUPERVISOR_SECRET") == 0);
  sup.stop();
}

TEST_CASE("environment: a bad env-file line, a missing file or a reserved name stops run with exit 2 and says why") {
  TempDir d;
  const std::string file = d.file("bad.env");
  write_file_atomic(file, "GOOD=1\n# fine\nBAD LINE\n");
  const std::string marker = d.file("started");
  const std::vector<std::string> command = {"/bin/sh", "-c", fmt::format("touch '{}'", marker)};
  const auto with_command = [&](std::vector<std::string> args) {
    args.insert(args.end(), {"--listen", "http=tcp://127.0.0.1:0", "--"});
    args.insert(args.end(), command.begin(), command.end());
    return run_refused(d, args);
  };

  RunResult r = with_command({"--env-file", file});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(contains(r.err, file + ":3: expected NAME=VALUE, not 'BAD LINE'"), r.err);

  r = with_command({"--env-file", d.file("missing.env")});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(contains(r.err, "--env-file " + d.file("missing.env") + ": No such file or directory"), r.err);

  r = with_command({"--env", "LISTEN_FDS=9"});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(contains(r.err, "LISTEN_FDS is set by the supervisor for every worker and cannot be overridden"),
                r.err);

  write_file_atomic(file, "HOTRESTART_CONTROL=/tmp/x\n");
  r = with_command({"--env-file", file});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(contains(r.err, file + ":1: HOTRESTART_CONTROL is set by the supervisor"), r.err);

  r = with_command({"--env", "2FAST=1"});
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(contains(r.err, "'2FAST' is not a valid variable name"), r.err);

  // Nothing was started by any of them.
  CHECK(::access(marker.c_str(), F_OK) != 0);
}

TEST_CASE("environment: --chdir is where workers and checks start, and the supervisor itself is in /") {
  TempDir d;
  const std::string work = d.file("work");
  REQUIRE(::mkdir(work.c_str(), 0755) == 0);
  write_file_atomic(work + "/config.toml", "x = 1\n");
  // The preflight check and the readiness probe find the worker's files by relative paths.
  Supervisor sup({"--chdir", work, "--preflight", "test -f config.toml", "--ready",
                  "exec:test -f config.toml && test \"$PWD\" = \"$(pwd)\""},
                 hello("v1"));
  CHECK(cwd_of(sup.active_pid()) == work);
  CHECK(environ_of(sup.active_pid()).at("PWD") == work);
  CHECK(cwd_of(sup.pid()) == "/");
  if (const pid_t g = sup.guard()) CHECK(cwd_of(g) == "/");
  sup.stop();
}

TEST_CASE("environment: a deleted working directory fails the upgrade with a clear reason while the old one serves") {
  TempDir d;
  const std::string work = d.file("work");
  REQUIRE(::mkdir(work.c_str(), 0755) == 0);
  Supervisor sup({"--chdir", work}, hello("v1"));
  const pid_t old_pid = sup.active_pid();
  MixedLoad load(sup.port(), 2);
  let_load_run(load.keepalive, 50);

  REQUIRE(::rmdir(work.c_str()) == 0);
  RunResult r = sup.upgrade_to(hello("v2"));
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  const std::string why = "cannot enter working directory " + work + ": No such file or directory";
  CHECK_MESSAGE(contains(r.err, why), r.err);
  CHECK_MESSAGE(contains(r.err, fmt::format("generation 1 (pid {}) still serves", old_pid)), r.err);
  CHECK(sup.active_pid() == old_pid);
  CHECK(contains(sup.status_or_fail()["last_upgrade"]["reason"].get<std::string>(), why));
  let_load_run(load.keepalive, 50);
  let_load_run(load.fresh, 50);

  // Once it is back, the next upgrade goes through.
  REQUIRE(::mkdir(work.c_str(), 0755) == 0);
  r = sup.upgrade_to(hello("v2"));
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(contains(http_get(sup.port(), "/"), "version=v2"));
  CHECK(cwd_of(sup.active_pid()) == work);
  load.finish();
  sup.stop();
}

TEST_CASE("environment: a preflight check that cannot enter the working directory says so, and nothing starts") {
  TempDir d;
  const std::string work = d.file("work");
  REQUIRE(::mkdir(work.c_str(), 0755) == 0);
  Supervisor sup({"--chdir", work, "--preflight", "true"}, hello("v1"));
  const pid_t old_pid = sup.active_pid();
  REQUIRE(::rmdir(work.c_str()) == 0);
  RunResult r = sup.upgrade_to(hello("v2"));
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK_MESSAGE(contains(r.err, "preflight failed (could not start: cannot enter working directory " + work +
                                    ": No such file or directory)"),
                r.err);
  CHECK(sup.active_pid() == old_pid);
  CHECK(sup.status_or_fail()["generations"].size() == 1);
  sup.stop();
}

TEST_CASE("environment: run's relative paths are its own directory's, and upgrade's relative command is the client's") {
  TempDir d;
  const std::string home = d.file("home");
  const std::string elsewhere = d.file("elsewhere");
  REQUIRE(::mkdir(home.c_str(), 0755) == 0);
  REQUIRE(::mkdir(elsewhere.c_str(), 0755) == 0);
  REQUIRE(::mkdir((home + "/bin").c_str(), 0755) == 0);
  REQUIRE(::symlink(hello_bin().c_str(), (home + "/bin/server").c_str()) == 0);
  REQUIRE(::symlink(hello_bin().c_str(), (elsewhere + "/server-v2").c_str()) == 0);
  write_file_atomic(home + "/app.env", "FROM_FILE=yes\n");
  const std::string control = home + "/ctl.sock";

  SpawnOptions in_home;
  in_home.cwd = home;
  Child proc = Child::spawn(
      {hotrestart_bin(), "run", "--control", "ctl.sock", "--state-dir", "state", "--listen", "http=tcp://127.0.0.1:0",
       "--listen", "api=unix:api.sock", "--env-file", "app.env", "--", "./bin/server", "--version", "v1"},
      in_home);
  const auto cli = [&](std::vector<std::string> args, SpawnOptions options = {}) {
    args.insert(args.begin() + 1, {"--control", control});
    args.insert(args.begin(), hotrestart_bin());
    return run(args, std::move(options), 60s);
  };
  const auto active = [&]() -> json {
    RunResult r = cli({"status", "--json"});
    if (r.exit_code != 0) return json::object();
    json s = json::parse(r.out, nullptr, false);
    if (s.is_discarded()) return json::object();
    for (const auto& g : s["generations"])
      if (g["role"] == "active") return g;
    return json::object();
  };
  REQUIRE_MESSAGE(wait_until([&] { return active().value("state", "") == "ready"; }, 15s), proc.describe());
  struct stat st {};
  CHECK(::stat((home + "/api.sock").c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK(::stat((home + "/state").c_str(), &st) == 0);
  CHECK(cwd_of(proc.pid()) == "/");
  const pid_t first = active().value("pid", 0);
  CHECK(cwd_of(first) == home);
  CHECK(environ_of(first).at("FROM_FILE") == "yes");
  CHECK(active()["command"] == json::array({home + "/bin/server", "--version", "v1"}));

  // From another directory, ./server-v2 is that directory's.
  SpawnOptions there;
  there.cwd = elsewhere;
  RunResult r = cli({"upgrade", "--", "./server-v2", "--version", "v2"}, there);
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  const json now = active();
  CHECK(now["command"] == json::array({elsewhere + "/server-v2", "--version", "v2"}));
  RunResult h = cli({"history"});
  CHECK_MESSAGE(contains(h.out, elsewhere + "/server-v2 --version v2"), h.out);
  // And a rollback runs release 1 again from its own path, in the workers' directory.
  r = cli({"rollback"}, there);
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  const json back = active();
  CHECK(back["command"] == json::array({home + "/bin/server", "--version", "v1"}));
  CHECK(cwd_of(back.value("pid", 0)) == home);

  r = cli({"stop"});
  CHECK(r.exit_code == 0);
  CHECK(proc.wait_for(30s) == std::optional<int>(0));
}

TEST_CASE("environment: unix listeners get the mode, owner and group asked for, a stale file included") {
  TempDir d;
  const std::string path = d.file("api.sock");
  // A socket file left by a process that is gone, with a mode of its own: it is replaced.
  {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(fd >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path.c_str());
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    ::close(fd);
    REQUIRE(::chmod(path.c_str(), 0777) == 0);
  }
  // Root gives the file away; another user can only name itself.
  const bool root = ::geteuid() == 0;
  const std::string owner = root ? "nobody" : std::to_string(::geteuid());
  const std::string group = root ? "65534" : std::to_string(::getegid());
  const uid_t want_uid = root ? 65534 : ::geteuid();
  const gid_t want_gid = root ? 65534 : ::getegid();
  Supervisor sup({"--listen", "http=tcp://127.0.0.1:0", "--listen",
                  fmt::format("api=unix:{},mode=0660,owner={},group={}", path, owner, group)},
                 hello("v1"));
  struct stat st {};
  REQUIRE(::stat(path.c_str(), &st) == 0);
  CHECK(S_ISSOCK(st.st_mode));
  CHECK((st.st_mode & 07777) == 0660);
  CHECK(st.st_uid == want_uid);
  CHECK(st.st_gid == want_gid);
  sup.stop();

  // Without the options the file is as bind() makes it under the supervisor's umask (here 022).
  const std::string plain = d.file("plain.sock");
  {
    const mode_t was = ::umask(022);
    Supervisor plain_sup({"--listen", "http=tcp://127.0.0.1:0", "--listen", "plain=unix:" + plain}, hello("v1"));
    ::umask(was);
    REQUIRE(::stat(plain.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0755);
    plain_sup.stop();
  }
}

TEST_CASE("environment: an unknown owner or group, or an option run cannot read, is refused at start with exit 2") {
  TempDir d;
  const auto refused = [&](const std::string& listen) {
    return run_refused(d, {"--listen", "http=tcp://127.0.0.1:0", "--listen", listen, "--", hello_bin()});
  };
  RunResult r = refused("api=unix:" + d.file("a.sock") + ",owner=no-such-user-hr");
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(contains(r.err, "owner=no-such-user-hr: no user named 'no-such-user-hr'"), r.err);
  r = refused("api=unix:" + d.file("a.sock") + ",group=no-such-group-hr");
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(contains(r.err, "no group named 'no-such-group-hr'"), r.err);
  r = refused("api=unix:" + d.file("a,b.sock"));
  CHECK(r.exit_code == 2);
  CHECK_MESSAGE(contains(r.err, "unknown option 'b.sock' after the socket path"), r.err);
  CHECK(::access(d.file("a.sock").c_str(), F_OK) != 0);
}

TEST_CASE(
    "environment: upgrade --self keeps the environment, the directory and relative paths, and refuses a bad file") {
  TempDir d;
  const std::string home = d.file("home");
  const std::string work = d.file("work");
  REQUIRE(::mkdir(home.c_str(), 0755) == 0);
  REQUIRE(::mkdir(work.c_str(), 0755) == 0);
  write_file_atomic(home + "/app.env", "FROM_FILE=one\n");
  SpawnOptions in_home;
  in_home.cwd = home;
  // Relative --env-file and --chdir: the new image, which starts in /, must read them as the first did.
  Supervisor sup({"--clear-env", "--env-file", "app.env", "--chdir", "../work", "--env", "FLAG=1"}, hello("v1"), true,
                 in_home);
  const pid_t pid = sup.pid();
  RunResult r = sup.cli({"upgrade", "--self"}, 60s);
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(sup.pid() == pid);
  CHECK(cwd_of(pid) == "/");
  r = sup.upgrade_to(hello("v2"));
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  auto env = environ_of(sup.active_pid());
  CHECK(env["FROM_FILE"] == "one");
  CHECK(env["FLAG"] == "1");
  CHECK(cwd_of(sup.active_pid()) == work);

  // The file now has a bad line: the new image would not start, so the old one refuses and serves on.
  write_file_atomic(home + "/app.env", "FROM_FILE=two\nnot valid\n");
  r = sup.cli({"upgrade", "--self"}, 60s);
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK_MESSAGE(contains(r.err, home + "/app.env:2: expected NAME=VALUE"), r.err);
  CHECK(sup.active_state() == "ready");
  sup.stop();
}
