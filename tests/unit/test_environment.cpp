// The workers' environment (--env, --env-file, --clear-env), run's relative paths, and the options
// of a unix listener: parsing and precedence, with no supervisor.
#include <doctest/doctest.h>

#include <unistd.h>

#include <map>

#include "listen_spec.h"
#include "run_options.h"
#include "testsupport.h"
#include "worker_environment.h"

using namespace hotrestart;

namespace {

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

std::map<std::string, std::string> as_map(const std::vector<std::string>& env) {
  std::map<std::string, std::string> out;
  for (const auto& e : env) {
    const auto eq = e.find('=');
    REQUIRE(eq != std::string::npos);
    REQUIRE_MESSAGE(out.emplace(e.substr(0, eq), e.substr(eq + 1)).second, "set twice: " << e);
  }
  return out;
}

}  // namespace

TEST_CASE("env files: comments, blank lines, quotes and spaces") {
  const std::string text =
      "# a comment\n"
      "; another\n"
      "\n"
      "   \t\n"
      "PLAIN=a b  c \n"
      "  SPACED = value\r\n"
      "SINGLE='it''s'x\n"
      "SQ='a \"b\" $HOME \\n'\n"
      "DQ=\"say \\\"hi\\\" \\\\ \\$HOME\"  \n"
      "EMPTY=\n"
      "EMPTYQ=\"\"\n"
      "HASH=a#b\n"
      "EQUALS=a=b=c\n"
      "PLAIN=second";
  auto parsed = parse_env_file(text, "app.env");
  // 'it''s'x has text after its closing quote ('s'x), which is refused. Without that line:
  CHECK(!parsed);
  CHECK(parsed.error().text() == "app.env:7: ''s'x' follows the closing quote");

  const std::string good =
      "PLAIN=a b  c \n"
      "  SPACED = value\r\n"
      "SQ='a \"b\" $HOME \\n'\n"
      "DQ=\"say \\\"hi\\\" \\\\ \\$HOME\"  \n"
      "EMPTY=\n"
      "EMPTYQ=\"\"\n"
      "HASH=a#b\n"
      "EQUALS=a=b=c\n"
      "PLAIN=second";
  auto lines = parse_env_file(good, "app.env").value();
  REQUIRE(lines.size() == 9);
  CHECK(lines[0].name == "PLAIN");
  CHECK(lines[0].value == "a b  c");
  CHECK(lines[0].origin == "app.env:1");
  CHECK(lines[1].name == "SPACED");
  CHECK(lines[1].value == "value");
  CHECK(lines[2].value == "a \"b\" $HOME \\n");
  CHECK(lines[3].value == "say \"hi\" \\ $HOME");
  CHECK(lines[4].value.empty());
  CHECK(lines[5].value.empty());
  CHECK(lines[6].value == "a#b");
  CHECK(lines[7].value == "a=b=c");
  CHECK(lines[8].value == "second");
}

TEST_CASE("env files: a bad line is refused with the file, the line and why") {
  const auto why = [](const std::string& text) {
    auto r = parse_env_file(text, "/etc/web.env");
    REQUIRE_MESSAGE(!r, "accepted: " << text);
    return r.error().text();
  };
  CHECK(why("A=1\n\nnot an assignment\n") == "/etc/web.env:3: expected NAME=VALUE, not 'not an assignment'");
  CHECK(has(why("A=1\n1ABC=2\n"), "/etc/web.env:2: '1ABC' is not a valid variable name"));
  CHECK(has(why("A-B=2\n"), "/etc/web.env:1: 'A-B' is not a valid variable name"));
  CHECK(has(why("export A=2\n"), "/etc/web.env:1: 'export A' is not a valid variable name"));
  CHECK(has(why("=2\n"), "/etc/web.env:1: '' is not a valid variable name"));
  CHECK(why("A=\"open\n") == "/etc/web.env:1: the quote \" is not closed on this line");
  CHECK(why("A='open\n") == "/etc/web.env:1: the quote ' is not closed on this line");
  CHECK(has(why("A=\"x\" y\n"), "/etc/web.env:1: 'y' follows the closing quote"));
  CHECK(has(why("A=one \\\n two\n"), "/etc/web.env:1: a line ending with '\\' would continue"));
  CHECK(has(why(std::string("A=x\0y\n", 6)), "/etc/web.env:1: the line contains a NUL byte"));
  CHECK(why("LISTEN_FDS=3\n") ==
        "/etc/web.env:1: LISTEN_FDS is set by the supervisor for every worker and cannot be overridden");
  CHECK(has(why("HOTRESTART_GENERATION=3\n"), "HOTRESTART_GENERATION is set by the supervisor"));
  CHECK(has(why("PWD=/tmp\n"), "PWD is set by the supervisor"));
  CHECK(has(why("NOTIFY_SOCKET=/x\n"), "NOTIFY_SOCKET is set by the supervisor"));
}

TEST_CASE("--env takes NAME=VALUE as it is and refuses bad or reserved names") {
  auto a = parse_env_flag("GREETING='hello world'=1").value();
  CHECK(a.name == "GREETING");
  CHECK(a.value == "'hello world'=1");
  CHECK(parse_env_flag("EMPTY=").value().value.empty());
  CHECK(has(parse_env_flag("NOEQUALS").error().text(), "invalid --env 'NOEQUALS': expected NAME=VALUE"));
  CHECK(has(parse_env_flag("9X=1").error().text(), "'9X' is not a valid variable name"));
  CHECK(has(parse_env_flag("LISTEN_PID=1").error().text(), "LISTEN_PID is set by the supervisor"));
  CHECK(has(parse_env_flag("WATCHDOG_USEC=1").error().text(), "cannot be overridden"));
  CHECK(valid_variable_name("_a9"));
  CHECK(!valid_variable_name("a.b"));
  CHECK(!is_reserved_variable("LISTEN"));
  CHECK(is_reserved_variable("HOTRESTART_ANYTHING"));
}

TEST_CASE("the workers' environment: inherited, then files in order, then --env in order") {
  testsupport::TempDir dir;
  const std::string one = dir.file("one.env");
  const std::string two = dir.file("two.env");
  testsupport::write_file_atomic(one, "LAYER=one\nONLY_ONE=1\nBOTH=one\n");
  testsupport::write_file_atomic(two, "LAYER=two\nBOTH=two\n");
  const std::vector<std::string> inherited = {
      "LAYER=inherited", "HOME=/root", "LISTEN_FDS=2", "NOTIFY_SOCKET=/x", "HOTRESTART_TEST_DIE_AT=cutover",
      "PWD=/elsewhere",  "PATH=/bin"};
  EnvironmentFlags flags;
  flags.files = {one, two};
  flags.assignments = {"BOTH=flag", "LATE=a", "LATE=b"};
  auto env = as_map(base_worker_environment(flags, inherited).value());
  CHECK(env ==
        std::map<std::string, std::string>{
            {"LAYER", "two"}, {"HOME", "/root"}, {"PATH", "/bin"}, {"ONLY_ONE", "1"}, {"BOTH", "flag"}, {"LATE", "b"}});

  SUBCASE("--clear-env keeps nothing inherited, and PATH gets systemd's default") {
    flags.clear = true;
    auto cleared = as_map(base_worker_environment(flags, inherited).value());
    CHECK(cleared ==
          std::map<std::string, std::string>{
              {"LAYER", "two"}, {"ONLY_ONE", "1"}, {"BOTH", "flag"}, {"LATE", "b"}, {"PATH", kDefaultWorkerPath}});
  }
  SUBCASE("one bad line in any file fails everything") {
    testsupport::write_file_atomic(two, "LAYER=two\nBAD LINE\n");
    auto r = base_worker_environment(flags, inherited);
    REQUIRE(!r);
    CHECK(r.error().text() == two + ":2: expected NAME=VALUE, not 'BAD LINE'");
  }
  SUBCASE("a missing file is named") {
    flags.files = {dir.file("missing.env")};
    auto r = base_worker_environment(flags, inherited);
    REQUIRE(!r);
    CHECK(r.error().text() == "--env-file " + dir.file("missing.env") + ": No such file or directory");
  }
}

TEST_CASE("run's relative paths are made absolute without looking anything up") {
  CHECK(absolute_path("/srv/web", "server") == "/srv/web/server");
  CHECK(absolute_path("/srv/web", "./server") == "/srv/web/server");
  CHECK(absolute_path("/srv/web", "././bin/server") == "/srv/web/bin/server");
  CHECK(absolute_path("/srv/web", "../v2/server") == "/srv/web/../v2/server");
  CHECK(absolute_path("/srv/web", "/opt/server") == "/opt/server");
  CHECK(absolute_path("/srv/web", ".") == "/srv/web");
  CHECK(absolute_path("/srv/web", "./") == "/srv/web");
  CHECK(absolute_path("/", "x") == "/x");
  CHECK(absolute_path("/srv/web", "").empty());
}

TEST_CASE("unix listeners take mode, owner and group after a comma") {
  auto a = parse_listen_spec("api=unix:/run/web/api.sock,mode=0660,owner=root,group=0", 0).value();
  CHECK(a.path == "/run/web/api.sock");
  CHECK(a.mode == std::optional<mode_t>(0660));
  CHECK(a.owner == std::optional<uid_t>(0));
  CHECK(a.group == std::optional<gid_t>(0));
  auto b = parse_listen_spec("unix:/run/x.sock", 0).value();
  CHECK(!b.mode);
  CHECK(!b.owner);
  CHECK(!b.group);
  auto c = parse_listen_spec("unix:/run/x.sock,owner=4242", 0).value();
  CHECK(c.owner == std::optional<uid_t>(4242));

  const auto why = [](const char* text) { return parse_listen_spec(text, 0).error().text(); };
  CHECK(has(why("unix:/run/a,b.sock"), "unknown option 'b.sock' after the socket path"));
  CHECK(has(why("unix:/run/a,b.sock"), "cannot contain one"));
  CHECK(has(why("unix:/run/a.sock,mode=660"), "mode=660 is not an octal mode with its leading 0"));
  CHECK(has(why("unix:/run/a.sock,mode=0999"), "mode=0999 is not an octal mode"));
  CHECK(has(why("unix:/run/a.sock,mode=017777"), "not an octal mode"));
  CHECK(has(why("unix:/run/a.sock,mode="), "mode= needs a value"));
  CHECK(has(why("unix:/run/a.sock,mode=0600,mode=0660"), "mode= is given twice"));
  CHECK(has(why("unix:/run/a.sock,owner=no-such-user-hr"), "owner=no-such-user-hr: no user named 'no-such-user-hr'"));
  CHECK(has(why("unix:/run/a.sock,group=no-such-group-hr"), "no group named 'no-such-group-hr'"));
  CHECK(has(why("unix:,mode=0600"), "the socket path is empty"));
}
