// The control socket treats every peer as hostile: other users are refused, garbage and
// oversized or silent clients are cut off, and status keeps answering throughout.
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>

#include <fmt/format.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

// A raw client: connects, optionally sends bytes, and collects what comes back until the
// supervisor closes the connection (or the deadline passes).
class RawClient {
 public:
  explicit RawClient(const std::string& path) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~RawClient() { ::close(fd_); }
  bool connected() const { return connected_; }
  void send(const std::string& bytes) {
    std::size_t done = 0;
    while (done < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (n <= 0) return;  // The supervisor may cut us off mid-way; that is the point.
      done += static_cast<std::size_t>(n);
    }
  }
  // Reads until EOF. Returns nullopt if the connection is still open at the deadline.
  std::optional<std::string> read_to_eof(std::chrono::milliseconds timeout) {
    std::string out;
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) != 1) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) return out;
      out.append(buf, static_cast<std::size_t>(n));
    }
    return std::nullopt;
  }
  // Waits until something can be read (without reading it), up to `timeout`.
  bool answered_within(std::chrono::milliseconds timeout) {
    pollfd p{fd_, POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

json first_line(const std::string& text) {
  return json::parse(text.substr(0, text.find('\n')));
}

}  // namespace

TEST_CASE("control: garbage and oversized and deeply nested and wrong-version requests are refused") {
  Supervisor sup({}, hello("v1"));

  RawClient silent(sup.control());  // Says nothing; must be cut off at the request deadline.
  REQUIRE(silent.connected());

  struct Case {
    std::string bytes;
    std::string code;
    std::string message;
  };
  const Case cases[] = {
      {"hello\n", "bad-request", "not valid JSON"},
      {"[1,2,3]\n", "bad-request", "not a JSON object"},
      {std::string(100, '[') + "\n", "bad-request", "nests deeper"},
      {std::string(70000, 'x'), "bad-request", "over the 65536-byte limit"},
      // A whole line over the limit, newline and all, is refused at once too (not at the deadline).
      {std::string(70000, 'x') + "\n", "bad-request", "over the 65536-byte limit"},
      {std::string(131000, ' ') + "\n", "bad-request", "over the 65536-byte limit"},
      // A key given twice would mean one command to this reader and another to the next.
      {R"({"v":1,"cmd":"status","cmd":"stop"})"
       "\n",
       "bad-request", "the key 'cmd' twice"},
      {R"({"v":99,"cmd":"status"})"
       "\n",
       "version", "speaks version 1"},
      {R"({"v":1,"cmd":"format-disk"})"
       "\n",
       "bad-request", "unknown command"},
      {R"({"v":1,"cmd":"upgrade","command":[1,2]})"
       "\n",
       "bad-request", "only strings"},
      {std::string("\x00\xff\xfe\n", 4), "bad-request", "not valid JSON"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.message);
    RawClient client(sup.control());
    REQUIRE(client.connected());
    client.send(c.bytes);
    auto reply = client.read_to_eof(5s);
    REQUIRE_MESSAGE(reply.has_value(), "the supervisor kept a bad client connected");
    json j = first_line(*reply);
    CHECK(j["type"] == "error");
    CHECK(j["code"] == c.code);
    CHECK(contains(j["error"].get<std::string>(), c.message));
    CHECK(sup.status().has_value());
  }

  auto cut = silent.read_to_eof(10s);
  REQUIRE_MESSAGE(cut.has_value(), "a silent client was never disconnected");
  CHECK(contains(*cut, "no complete request arrived in time"));

  // More connections than the limit: the idle ones make room, status still answers.
  std::vector<std::unique_ptr<RawClient>> crowd;
  for (int i = 0; i < 80; ++i)
    crowd.push_back(std::make_unique<RawClient>(sup.control()));
  CHECK(wait_until([&] { return sup.status().has_value(); }, 10s));
  crowd.clear();

  // The worker served throughout and the supervisor is unharmed.
  RunResult curl = run({"curl", "-fsS", fmt::format("http://127.0.0.1:{}/", sup.port())}, {}, 10s);
  CHECK(contains(curl.out, "version=v1"));
  CHECK(sup.status_or_fail()["counters"]["crashes"] == 0);
  sup.stop();
}

TEST_CASE("control: a peer of another uid is refused") {
  if (::geteuid() != 0) {
    MESSAGE("skipped: needs root to run a client as another user");
    return;
  }
  const passwd* nobody = ::getpwnam("nobody");
  REQUIRE(nobody != nullptr);
  Supervisor sup({}, hello("v1"));
  SpawnOptions as_nobody;
  as_nobody.uid = nobody->pw_uid;
  as_nobody.gid = nobody->pw_gid;

  // With the socket's own mode (0600 in a 0700 directory) the kernel refuses the connect.
  RunResult denied = sup.cli({"status"}, 10s, as_nobody);
  CHECK(denied.exit_code == 2);
  CHECK(contains(denied.err, "permission denied"));

  // Even if an operator loosens the file modes, the peer-credential check refuses.
  REQUIRE(::chmod(sup.dir().path().c_str(), 0755) == 0);
  REQUIRE(::chmod(sup.control().c_str(), 0666) == 0);
  RunResult refused = sup.cli({"status"}, 10s, as_nobody);
  CHECK(refused.exit_code == 2);
  CHECK(contains(refused.err, fmt::format("uid {} may not control this supervisor", nobody->pw_uid)));
  RunResult upgrade = sup.cli({"upgrade", "--", hello_bin(), "--version", "evil"}, 10s, as_nobody);
  CHECK(upgrade.exit_code == 2);
  CHECK(sup.proc().wait_output("control: refused pid", 5s));
  json s = sup.status_or_fail();
  CHECK(s["counters"]["upgrades_done"] == 0);
  CHECK(s["active_generation"] == 1);
  sup.stop();
}

TEST_CASE("client commands without a supervisor exit 8 with a hint, and a stale socket file says so") {
  TempDir d;
  RunResult r = run({hotrestart_bin(), "status", "--control", d.file("none.sock")}, {}, 10s);
  CHECK(r.exit_code == 8);
  CHECK(contains(r.err, "no supervisor at"));
  RunResult u = run({hotrestart_bin(), "upgrade", "--control", d.file("none.sock")}, {}, 10s);
  CHECK(u.exit_code == 8);
  for (const char* command : {"rollback", "promote", "abort", "history", "events", "stop"}) {
    RunResult c = run({hotrestart_bin(), command, "--control", d.file("none.sock")}, {}, 10s);
    CHECK_MESSAGE(c.exit_code == 8, command << ": " << c.err);
  }
  // A socket file that no process listens on (a supervisor killed with SIGKILL leaves one).
  {
    const int stale = ::socket(AF_UNIX, SOCK_STREAM, 0);
    REQUIRE(stale >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string path = d.file("stale.sock");
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    CHECK(::bind(stale, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    ::close(stale);
  }
  RunResult s = run({hotrestart_bin(), "status", "--control", d.file("stale.sock")}, {}, 10s);
  CHECK(s.exit_code == 8);
  CHECK_MESSAGE(contains(s.err, "the socket file is stale"), s.err);
  RunResult both =
      run({hotrestart_bin(), "upgrade", "--control", d.file("none.sock"), "--exec", "/x", "--", "/y"}, {}, 10s);
  CHECK(both.exit_code == 2);
  CHECK(contains(both.err, "not both"));
}

TEST_CASE("control: 200 idle connections never lock status or stop out, and each one cut off is told why") {
  Supervisor sup({}, hello("v1"));
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 200; ++i) {
    idle.push_back(std::make_unique<RawClient>(sup.control()));
    REQUIRE(idle.back()->connected());
  }
  // The oldest idle ones made room for the newer ones, with a "busy" line rather than a reset.
  auto first = idle.front()->read_to_eof(5s);
  REQUIRE_MESSAGE(first.has_value(), "the oldest idle connection was never disconnected");
  json j = first_line(*first);
  CHECK(j["code"] == "busy");
  CHECK(contains(j["error"].get<std::string>(), "made room for a newer one"));

  // While the newest 64 still wait, status and stop get through.
  RunResult status = sup.cli({"status"}, 10s);
  CHECK_MESSAGE(status.exit_code == 0, status.out << status.err);
  CHECK(contains(status.out, "generations:"));
  RunResult stop = sup.cli({"stop"}, 30s);
  CHECK_MESSAGE(stop.exit_code == 0, stop.out << stop.err);
  CHECK(sup.proc().wait_for(30s).has_value());
}

TEST_CASE("control: with 64 requests in progress, status still gets a connection kept for it") {
  // A worker that ignores its drain signal keeps the supervisor stopping for its drain timeout, and
  // every `stop` request holds its connection until the supervisor exits.
  Supervisor sup({"--drain-timeout", "60s"}, {test_worker_bin(), "ignore-drain"});
  std::vector<std::unique_ptr<RawClient>> stoppers;
  for (int i = 0; i < 64; ++i) {
    stoppers.push_back(std::make_unique<RawClient>(sup.control()));
    REQUIRE(stoppers.back()->connected());
    stoppers.back()->send("{\"v\":1,\"cmd\":\"stop\"}\n");
  }
  // Each has its "stopping" line: every request is in progress.
  for (auto& c : stoppers)
    REQUIRE(c->answered_within(10s));

  // Idle connections fill the kept ones too; a newer one makes room among them, and never gets a
  // place that is not kept for status and stop.
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 4; ++i) {
    idle.push_back(std::make_unique<RawClient>(sup.control()));
    REQUIRE(idle.back()->connected());
  }
  RunResult status = sup.cli({"status"}, 10s);
  CHECK_MESSAGE(status.exit_code == 0, status.out << status.err);
  CHECK(contains(status.out, "STOPPING"));
  // Anything else on a kept connection is told why it cannot have one.
  RunResult history = sup.cli({"history"}, 10s);
  CHECK(history.exit_code == 3);
  CHECK_MESSAGE(contains(history.err, "kept for status and stop"), history.err);

  // Stop now: every waiting `stop` hears the end.
  REQUIRE(::kill(sup.pid(), SIGQUIT) == 0);
  CHECK(sup.proc().wait_for(30s).has_value());
  auto last = stoppers.back()->read_to_eof(10s);
  REQUIRE(last.has_value());
  CHECK(contains(*last, "stopping"));
}
