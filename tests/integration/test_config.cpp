// Configurations (run --config): reload in every generation or none, refusals of every kind,
// rollback, history across a restart, concurrent reloads, a reload during an upgrade, and a new
// generation that starts with the live version rather than the file.
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

std::vector<std::string> sdk(std::vector<std::string> args) {
  args.insert(args.begin(), bin_path("sdk-worker"));
  args.insert(args.end(), {"--config", "app"});
  return args;
}

void write(const std::string& path, const std::string& text) {
  // Saved as editors do: a new file renamed over the old one.
  const std::string temp = path + ".new";
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    out << text;
  }
  REQUIRE(::rename(temp.c_str(), path.c_str()) == 0);
}

// "config=V greeting=G" from the generation that answers.
std::string config_of(Supervisor& sup) {
  std::string body = http_get(sup.port(), "/config");
  while (!body.empty() && body.back() == '\n')
    body.pop_back();
  return body;
}

json history_of(Supervisor& sup) {
  RunResult r = sup.cli({"config", "history", "--json"}, 10s);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  return json::parse(r.out);
}

struct ConfigSupervisor {
  TempDir dir;
  std::string file = dir.file("app.conf");
  std::unique_ptr<Supervisor> sup;

  explicit ConfigSupervisor(std::vector<std::string> worker_args = {}, std::vector<std::string> run_args = {}) {
    write(file, "greeting=hello\n");
    run_args.insert(run_args.end(), {"--config", "app=" + file});
    sup = std::make_unique<Supervisor>(run_args, sdk(std::move(worker_args)));
  }
};

}  // namespace

TEST_CASE("config: a generation starts with the file's version, and a reload switches it") {
  ConfigSupervisor c;
  Supervisor& sup = *c.sup;
  CHECK(config_of(sup) == "config=1 greeting=hello");

  write(c.file, "greeting=bonjour\n");
  RunResult r = sup.cli({"reload"}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(contains(r.out, "configuration app: version 2 is live (was 1)"));
  CHECK(contains(r.out, "switched in generation(s) 1"));
  CHECK(config_of(sup) == "config=2 greeting=bonjour");

  // The same bytes again: nothing to do, and no new version.
  r = sup.cli({"reload", "app"}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(contains(r.out, "unchanged, version 2 stays live"));

  // Another file, by name.
  const std::string other = c.dir.file("other.conf");
  write(other, "greeting=hola\n");
  r = sup.cli({"reload", "app", "--file", other}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(config_of(sup) == "config=3 greeting=hola");
  // A relative --file is the caller's, not the supervisor's (which runs in /).
  write(c.dir.file("relative.conf"), "greeting=ciao\n");
  r = run({"sh", "-c", "cd \"$0\" && exec \"$1\" reload app --file relative.conf --control \"$2\"", c.dir.path(),
           hotrestart_bin(), sup.control()},
          {}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(config_of(sup) == "config=4 greeting=ciao");

  const json status = sup.status_or_fail();
  CHECK(status["configs"]["configs"][0]["version"] == 4);
  CHECK(status["configs"]["configs"][0]["path"] == c.file);
  RunResult text = sup.cli({"status"}, 10s);
  CHECK_MESSAGE(contains(text.out, "config:      app version 4 ("), text.out);
  sup.stop();
}

TEST_CASE("config: every kind of invalid file is refused with exit 1, and nothing changes") {
  ConfigSupervisor c;
  Supervisor& sup = *c.sup;
  const std::string before = config_of(sup);

  struct Bad {
    const char* what;
    std::function<void()> make;
    const char* message;
  };
  const Bad bad[] = {
      {"syntax", [&] { write(c.file, "greeting=hi\nno equals sign\n"); }, "line 2: expected key=value"},
      {"semantic", [&] { write(c.file, "ttl=soon\n"); }, "line 1: ttl: not a number"},
      {"empty", [&] { write(c.file, ""); }, "is empty"},
      {"binary garbage",
       [&] {
         write(c.file, std::string("\x7f"
                                   "ELF\x02\x01\x01\0\0\0",
                                   10));
       },
       "line 1: not text"},
      {"oversized",
       [&] {
         write(c.file, "greeting=big\n");
         REQUIRE(::truncate(c.file.c_str(), (16 << 20) + 1) == 0);
       },
       "more than the 16777216 a configuration may have"},
      {"deleted", [&] { REQUIRE(::unlink(c.file.c_str()) == 0); }, "No such file or directory"},
      {"a directory", [&] { REQUIRE(::mkdir(c.file.c_str(), 0700) == 0); }, "is not a regular file"},
  };
  for (const Bad& b : bad) {
    CAPTURE(b.what);
    b.make();
    RunResult r = sup.cli({"reload"}, 30s);
    CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
    CHECK_MESSAGE(contains(r.err, b.message), r.err);
    CHECK(config_of(sup) == before);
    ::rmdir(c.file.c_str());
  }
  // The worker's refusals are in the history, with the worker's reason.
  const json h = history_of(sup);
  int refused = 0;
  for (const auto& v : h["versions"]) {
    if (v["outcome"] != "refused") continue;
    ++refused;
    CHECK(contains(v["reason"].get<std::string>(), "refused it: line"));
  }
  CHECK(refused == 3);  // syntax, semantic, binary; the others never reached a worker.
  CHECK(h["version"] == 1);
  sup.stop();
}

TEST_CASE("config: rollback brings an earlier version back as a new one, and show and diff read the history") {
  ConfigSupervisor c;
  Supervisor& sup = *c.sup;
  write(c.file, "greeting=bonjour\n");
  REQUIRE(sup.cli({"reload"}, 30s).exit_code == 0);
  REQUIRE(config_of(sup) == "config=2 greeting=bonjour");

  RunResult r = sup.cli({"config", "diff"}, 10s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(contains(r.out, "--- app version 1"));
  CHECK(contains(r.out, "-greeting=hello"));
  CHECK(contains(r.out, "+greeting=bonjour"));
  r = sup.cli({"config", "show", "1"}, 10s);
  CHECK(r.out == "greeting=hello\n");

  r = sup.cli({"config", "rollback"}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  CHECK(contains(r.out, "version 3 is live (was 2), the bytes of version 1"));
  CHECK(config_of(sup) == "config=3 greeting=hello");
  {
    // The file is the operator's: a rollback leaves it as it is.
    std::ifstream in(c.file);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    CHECK(text == "greeting=bonjour\n");
  }
  r = sup.cli({"config", "rollback", "2"}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(config_of(sup) == "config=4 greeting=bonjour");

  // Nothing to go back to: refused with exit 3.
  r = sup.cli({"config", "rollback", "99"}, 10s);
  CHECK(r.exit_code == 3);
  CHECK(contains(r.err, "has no version 99"));
  const json h = history_of(sup);
  CHECK(h["versions"][2]["origin"] == "rollback");
  CHECK(h["versions"][2]["restores"] == 1);
  CHECK(h["versions"][2]["uid"] == static_cast<std::int64_t>(::getuid()));
  sup.stop();
}

TEST_CASE("config: a second reload while one is under way is refused with exit 3") {
  ConfigSupervisor c({"--config-delay-ms", "1500"});
  Supervisor& sup = *c.sup;
  write(c.file, "greeting=slow\n");
  Child first = Child::spawn({hotrestart_bin(), "reload", "--control", sup.control()});
  REQUIRE(wait_until([&] { return sup.status_or_fail()["configs"]["reload"].is_object(); }, 10s));
  RunResult second = sup.cli({"reload"}, 10s);
  CHECK(second.exit_code == 3);
  CHECK_MESSAGE(contains(second.err, "a reload of app is under way"), second.err);
  CHECK(first.wait_for(30s) == std::optional<int>(0));
  CHECK(config_of(sup) == "config=2 greeting=slow");
  sup.stop();
}

TEST_CASE("config: a file replaced while the reload is under way is refused, and nothing changes") {
  ConfigSupervisor c({"--config-delay-ms", "1500"});
  Supervisor& sup = *c.sup;
  write(c.file, "greeting=first\n");
  Child reload = Child::spawn({hotrestart_bin(), "reload", "--control", sup.control()});
  REQUIRE(wait_until(
      [&] {
        const json under_way = sup.status_or_fail()["configs"]["reload"];
        return under_way.is_object() && under_way.value("phase", "") == "preparing";
      },
      10s));
  write(c.file, "greeting=second\n");
  CHECK(reload.wait_for(30s) == std::optional<int>(1));
  CHECK_MESSAGE(contains(reload.err(), "was changed while the reload was under way"), reload.err());
  CHECK(config_of(sup) == "config=1 greeting=hello");
  // The file as it is now reloads.
  RunResult r = sup.cli({"reload"}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(config_of(sup) == "config=3 greeting=second");
  sup.stop();
}

TEST_CASE("config: during an upgrade both generations must accept, and a new one starts with the live version") {
  ConfigSupervisor c;
  Supervisor& sup = *c.sup;
  // The new binary refuses what the old one accepts.
  Child upgrade =
      Child::spawn({hotrestart_bin(), "upgrade", "--control", sup.control(), "--hold", "manual", "--",
                    bin_path("sdk-worker"), "--version", "v2", "--config", "app", "--config-refuse", "forbidden"});
  REQUIRE(wait_until(
      [&] {
        const json u = sup.status_or_fail()["upgrade"];
        return u.is_object() && u.value("phase", "") == "holding";
      },
      15s));

  write(c.file, "greeting=forbidden\n");
  RunResult r = sup.cli({"reload"}, 30s);
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(contains(r.err, "generation 2 (pid"), r.err);
  CHECK(contains(r.err, "refused it: this binary refuses 'forbidden'"));
  for (int i = 0; i < 6; ++i)
    CHECK(config_of(sup) == "config=1 greeting=hello");  // Whichever generation answers.

  write(c.file, "greeting=both\n");
  r = sup.cli({"reload", "--json"}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  const json answer = json::parse(r.out);
  CHECK(answer["configs"][0]["generations"] == json::array({1, 2}));
  for (int i = 0; i < 6; ++i)
    CHECK(config_of(sup) == "config=3 greeting=both");

  REQUIRE(sup.cli({"promote"}, 30s).exit_code == 0);
  CHECK(upgrade.wait_for(30s) == std::optional<int>(0));

  // The file changes without a reload: the next generation still starts with the live version.
  write(c.file, "greeting=unreloaded\n");
  r = sup.upgrade_to(sdk({"--version", "v3"}));
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(config_of(sup) == "config=3 greeting=both");
  sup.stop();
}

TEST_CASE("config: the history survives a restart of the supervisor") {
  TempDir state;
  ConfigSupervisor c({}, {"--state-dir", state.path()});
  write(c.file, "greeting=bonjour\n");
  REQUIRE(c.sup->cli({"reload"}, 30s).exit_code == 0);
  c.sup->stop();
  c.sup.reset();

  // The same file: the same version is live again.
  Supervisor again({"--state-dir", state.path(), "--config", "app=" + c.file}, sdk({}));
  CHECK(config_of(again) == "config=2 greeting=bonjour");
  json h = history_of(again);
  REQUIRE(h["versions"].size() == 2);
  CHECK(h["versions"][0]["origin"] == "start");
  CHECK(h["versions"][1]["origin"] == "reload");
  RunResult r = again.cli({"config", "show", "1"}, 10s);
  CHECK(r.out == "greeting=hello\n");
  again.stop();

  // Edited while it was stopped: the start takes the file as a new version.
  write(c.file, "greeting=hej\n");
  Supervisor third({"--state-dir", state.path(), "--config", "app=" + c.file}, sdk({}));
  CHECK(config_of(third) == "config=3 greeting=hej");
  third.stop();
}

TEST_CASE("config: SIGHUP reloads, and a first generation that refuses the file fails the start") {
  ConfigSupervisor c;
  Supervisor& sup = *c.sup;
  write(c.file, "greeting=signalled\n");
  REQUIRE(sup.proc().send_signal(SIGHUP));
  CHECK(wait_until([&] { return config_of(sup) == "config=2 greeting=signalled"; }, 10s));
  CHECK(history_of(sup)["versions"][1]["origin"] == "SIGHUP");
  sup.stop();

  // A file the first generation refuses: it cannot start (and is restarted, as any worker that fails
  // its start); a reload of a good file is what the next restart starts with.
  TempDir dir;
  write(dir.file("bad.conf"), "no equals sign\n");
  Supervisor refused({"--config", "app=" + dir.file("bad.conf")}, sdk({}), false);
  CHECK_MESSAGE(refused.proc().wait_output("refused version 1 of configuration app: line 1: expected key=value", 20s),
                refused.proc().describe());
  write(dir.file("bad.conf"), "greeting=fixed\n");
  RunResult r = refused.cli({"reload"}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(wait_until([&] { return refused.active_state() == "ready"; }, 20s));
  CHECK(config_of(refused) == "config=2 greeting=fixed");
  refused.stop();
}

TEST_CASE("config: a generation that starts while a reload is under way takes part in it") {
  // Generation 1's parser takes 2 s: time for generation 2 to say hello meanwhile.
  ConfigSupervisor c({"--config-delay-ms", "2000"});
  Supervisor& sup = *c.sup;
  write(c.file, "greeting=joined\n");
  Child reload = Child::spawn({hotrestart_bin(), "reload", "--json", "--control", sup.control()});
  REQUIRE(wait_until(
      [&] {
        const json under_way = sup.status_or_fail()["configs"]["reload"];
        return under_way.is_object() && under_way.value("phase", "") == "preparing";
      },
      10s));
  // Generation 2 says hello during the first phase: it starts with version 1, and the reload waits
  // for its answer too.
  RunResult upgraded = sup.upgrade_to(sdk({"--version", "v2", "--config-delay-ms", "1000"}));
  CHECK_MESSAGE(upgraded.exit_code == 0, upgraded.err);
  REQUIRE(reload.wait_for(30s) == std::optional<int>(0));
  const json answer = json::parse(reload.out());
  const json generations = answer["configs"][0]["generations"];
  CHECK_MESSAGE(std::find(generations.begin(), generations.end(), 2) != generations.end(), answer.dump());
  CHECK(config_of(sup) == "config=2 greeting=joined");
  sup.stop();
}

TEST_CASE("config: a supervisor that takes generations over keeps the live version, and reloads reach them") {
  ConfigSupervisor c({}, {"--no-park"});
  Supervisor& first = *c.sup;
  Leftovers left;
  const pid_t worker = first.active_pid();
  left.pids = {worker, first.guard()};
  const std::uint16_t port = first.port();
  write(c.file, "greeting=bonjour\n");
  REQUIRE(first.cli({"reload"}, 30s).exit_code == 0);
  write(c.file, "greeting=not-reloaded\n");  // Edited, not reloaded, when the supervisor dies.
  kill_supervisor(first);

  Supervisor second(
      first.place(),
      {"--listen", fmt::format("http=tcp://127.0.0.1:{}", port), "--no-park", "--config", "app=" + c.file}, sdk({}));
  left.pids.insert(second.guard());
  CHECK(second.proc().wait_output(fmt::format("generation 1 (pid {}) connected its channel again", worker), 10s));
  CHECK(config_of(second) == "config=2 greeting=bonjour");
  CHECK(second.status_or_fail()["configs"]["configs"][0]["version"] == 2);
  CHECK(history_of(second)["versions"].size() == 2);

  // The worker it took over takes the next reload over its channel again.
  RunResult r = second.cli({"reload", "--json"}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(json::parse(r.out)["configs"][0]["generations"] == json::array({1}));
  CHECK(config_of(second) == "config=3 greeting=not-reloaded");
  second.stop();
}

TEST_CASE("config: run exits 1 when a configuration file cannot be read at start") {
  TempDir dir;
  RunResult r = run({hotrestart_bin(), "run", "--control", dir.file("ctl.sock"), "--state-dir", dir.file("state"),
                     "--listen", "http=tcp://127.0.0.1:0", "--config", "app=" + dir.file("missing.conf"), "--",
                     bin_path("sdk-worker"), "--config", "app"},
                    {}, 30s);
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(contains(r.err, "configuration app: cannot read " + dir.file("missing.conf")), r.err);
}

TEST_CASE("config: --watch-config applies a save with no command, and reports a refused one") {
  ConfigSupervisor c({}, {"--watch-config"});
  Supervisor& sup = *c.sup;
  // Saved by rename, as editors do.
  write(c.file, "greeting=watched\n");
  CHECK(wait_until([&] { return config_of(sup) == "config=2 greeting=watched"; }, 10s));
  // Written in place: applied once the writer closes it.
  {
    std::ofstream out(c.file, std::ios::binary | std::ios::trunc);
    out << "greeting=in-place\n";
  }
  CHECK(wait_until([&] { return config_of(sup) == "config=3 greeting=in-place"; }, 10s));

  // An invalid save: the running version stays, and status, events and the log say why.
  write(c.file, "ttl=later\n");
  CHECK(wait_until([&] { return sup.status_or_fail()["configs"]["configs"][0].contains("watch_error"); }, 10s));
  const json error = sup.status_or_fail()["configs"]["configs"][0]["watch_error"];
  CHECK_MESSAGE(contains(error["message"].get<std::string>(), "line 1: ttl: not a number"), error.dump());
  CHECK(config_of(sup) == "config=3 greeting=in-place");
  CHECK(sup.proc().wait_output("configuration reload refused: app version 4 refused", 5s));
  RunResult events = sup.cli({"events", "--json", "-n", "50"}, 10s);
  bool refused = false;
  for (const json& e : json_lines(events.out))
    if (e.value("type", "") == "config.refused" && e.value("origin", "") == "watch") refused = true;
  CHECK(refused);
  RunResult shown = sup.cli({"status"}, 10s);
  CHECK_MESSAGE(contains(shown.out, ": app version 4 refused: generation 1"), shown.out);
  CHECK_MESSAGE(contains(shown.out, "line 1: ttl: not a number"), shown.out);
  RunResult lines = sup.cli({"events", "-n", "50"}, 10s);
  CHECK_MESSAGE(contains(lines.out, "config.refused app version 4 (watch): "), lines.out);

  // Fixed: applied, and the error is gone.
  write(c.file, "greeting=fixed\n");
  CHECK(wait_until([&] { return config_of(sup) == "config=5 greeting=fixed"; }, 10s));
  CHECK_FALSE(sup.status_or_fail()["configs"]["configs"][0].contains("watch_error"));
  sup.stop();
}

namespace {

// nginx's configuration, answering `answer=LABEL` on 127.0.0.1:PORT, with its files in `dir`.
std::string nginx_conf(const TempDir& dir, std::uint16_t port, const std::string& label) {
  return nginx_config(dir.path(), port, dir.file("nginx.pid"), "answer=" + label, true);
}

}  // namespace

TEST_CASE("config: nginx, which reads its file itself, is checked with nginx -t and told with SIGHUP") {
  constexpr const char* kNginx = "/usr/sbin/nginx";
  if (::access(kNginx, X_OK) != 0) {
    MESSAGE("skipped: " << kNginx << " is not installed (scripts/install-deps installs nginx-light)");
    return;
  }
  TempDir dir;
  const std::uint16_t port = free_port();
  const std::string file = dir.file("nginx.conf");
  write(file, nginx_conf(dir, port, "A"));
  Supervisor sup({"--listen", fmt::format("http=tcp://127.0.0.1:{}", port), "--adopt-binds", "--no-park", "--config",
                  "nginx=" + file, "--config-check", std::string(kNginx) + " -e stderr -t -q -c {file}",
                  "--reload-signal", "SIGHUP"},
                 {kNginx, "-e", "stderr", "-c", file});
  const auto answer = [&] {
    std::string body = http_get(port, "/");
    while (!body.empty() && body.back() == '\n')
      body.pop_back();
    return body;
  };
  // nginx loads a file on HUP in new workers and lets the old ones finish: for a moment both answer.
  const auto settled = [&](const std::string& expected) {
    return wait_until(
        [&] {
          for (int i = 0; i < 5; ++i)
            if (answer() != expected) return false;
          return true;
        },
        10s);
  };
  CHECK(answer() == "answer=A");

  // Valid: the file is checked, nginx is told, and answers from the new one.
  write(file, nginx_conf(dir, port, "B"));
  RunResult r = sup.cli({"reload"}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(contains(r.out, "version 2 is live"));
  CHECK(settled("answer=B"));

  // Invalid: nginx -t refuses it, nginx is not told, and it answers as before.
  const std::string bad = dir.file("bad.conf");
  write(bad, "this is not nginx;\n");
  r = sup.cli({"reload", "--file", bad}, 30s);
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(contains(r.err, "the check `" + std::string(kNginx) +
                                    " -e stderr -t -q -c {file}` refused version 3: exit status 1: "),
                r.err);
  CHECK_MESSAGE(contains(r.err, "unknown directive \"this\""), r.err);
  CHECK(read_file(file).value_or("") == nginx_conf(dir, port, "B"));  // The file nginx reads was not touched.
  CHECK(answer() == "answer=B");
  CHECK(::access((dir.path() + "/.nginx.conf.hotrestart-new").c_str(), F_OK) != 0);  // Nothing staged is left.

  // Rollback: version 1's bytes are nginx's file again, and nginx answers from them.
  r = sup.cli({"config", "rollback"}, 30s);
  CHECK_MESSAGE(r.exit_code == 0, r.err);
  CHECK(read_file(file).value_or("") == nginx_conf(dir, port, "A"));
  CHECK(settled("answer=A"));
  sup.stop();
}
