// Running as a service: systemd's file descriptor store, SIGHUP, the supervisor as PID 1 of a pid
// namespace, and the examples an operator copies (examples/systemd, ansible, kubernetes) run as
// written against the real binary.
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <future>
#include <map>
#include <sstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

// One datagram as systemd would receive it on NOTIFY_SOCKET, with the descriptors it carried.
struct Datagram {
  std::string text;
  std::vector<int> fds;  // Owned by the NotifyReceiver.
};

// A datagram socket standing in for systemd's NOTIFY_SOCKET that also takes the descriptors sent
// with FDSTORE=1 (SCM_RIGHTS), as the service manager does.
class NotifyReceiver {
 public:
  explicit NotifyReceiver(std::string path) : path_(std::move(path)) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  }
  ~NotifyReceiver() {
    for (auto& d : received_)
      for (int fd : d.fds)
        ::close(fd);
    ::close(fd_);
  }
  NotifyReceiver(const NotifyReceiver&) = delete;
  NotifyReceiver& operator=(const NotifyReceiver&) = delete;

  const std::string& path() const { return path_; }
  const std::deque<Datagram>& received() const { return received_; }

  // Collects datagrams until one is exactly `text` (or, with `prefix`, starts with it).
  const Datagram* wait_for(const std::string& text, std::chrono::milliseconds timeout, bool prefix = false) {
    const auto deadline = Clock::now() + timeout;
    std::size_t seen = 0;
    while (true) {
      for (; seen < received_.size(); ++seen) {
        const std::string& t = received_[seen].text;
        if (t == text || (prefix && t.starts_with(text))) return &received_[seen];
      }
      if (Clock::now() >= deadline) return nullptr;
      receive(50ms);
    }
  }
  // Every text received, in order, without the watchdog's pings.
  std::vector<std::string> texts() const {
    std::vector<std::string> out;
    for (const auto& d : received_)
      if (d.text != "WATCHDOG=1") out.push_back(d.text);
    return out;
  }
  std::string dump() const {
    std::string out;
    for (const auto& d : received_)
      out += fmt::format("[{}] ({} fds)\n", d.text, d.fds.size());
    return out;
  }

 private:
  void receive(std::chrono::milliseconds wait) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(wait.count())) != 1) return;
    char buf[4096];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 16)];
    iovec iov{buf, sizeof buf};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) return;
    Datagram d;
    d.text.assign(buf, static_cast<std::size_t>(n));
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd = -1;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        d.fds.push_back(fd);
      }
    }
    CHECK_FALSE_MESSAGE((msg.msg_flags & MSG_CTRUNC) != 0, "descriptors were cut off: " << d.text);
    received_.push_back(std::move(d));
  }

  std::string path_;
  int fd_ = -1;
  // A deque: wait_for hands out pointers to its elements, which later datagrams must not move.
  std::deque<Datagram> received_;
};

std::string local_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  REQUIRE(::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0);
  if (ss.ss_family == AF_UNIX) return "unix:" + std::string(reinterpret_cast<sockaddr_un*>(&ss)->sun_path);
  char text[64] = {};
  const auto* in = reinterpret_cast<sockaddr_in*>(&ss);
  ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
  return fmt::format("{}:{}", text, ntohs(in->sin_port));
}

unsigned long inode_of(int fd) {
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  return st.st_ino;
}

std::set<unsigned long> socket_inodes(pid_t pid) {
  std::set<unsigned long> out;
  for (const auto& f : list_fds(pid))
    if (auto inode = f.socket_inode()) out.insert(*inode);
  return out;
}

std::string listener_address(const json& status, const std::string& name) {
  for (const auto& l : status["listeners"])
    if (l["name"] == name) return l["address"];
  return "";
}

// What goes before `hotrestart run` to hand it `names` at fds 3.. the way systemd does: LISTEN_PID
// must be the supervisor's own pid, so the shell sets it to its own and then execs.
std::vector<std::string> activate(const std::vector<std::string>& names) {
  std::string joined;
  for (const auto& n : names)
    joined += (joined.empty() ? "" : ":") + n;
  return {"/bin/sh", "-c",
          fmt::format("LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={} exec \"$0\" \"$@\"", names.size(), joined)};
}

// A connection to 127.0.0.1:port that sends one request and reads the whole response.
class PendingRequest {
 public:
  explicit PendingRequest(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(port);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    const std::string request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if (connected_) connected_ = ::send(fd_, request.data(), request.size(), MSG_NOSIGNAL) == ssize_t(request.size());
  }
  ~PendingRequest() { ::close(fd_); }
  bool connected() const { return connected_; }
  std::string response(std::chrono::milliseconds timeout) {
    std::string out;
    const auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) != 1) continue;
      char buf[4096];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) break;
      out.append(buf, static_cast<std::size_t>(n));
    }
    return out;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

}  // namespace

TEST_CASE("--fdstore keeps the listening sockets in systemd's fd store, and the next supervisor adopts them") {
  TempDir d;
  NotifyReceiver systemd(d.file("notify"));
  const std::string unix_path = d.file("admin.sock");
  SpawnOptions under_systemd;
  under_systemd.set_env = {{"NOTIFY_SOCKET", systemd.path()}};
  std::string http_address;
  std::set<unsigned long> first_inodes;
  int http_fd = -1;  // The copies systemd would keep, owned by `systemd`.
  int admin_fd = -1;
  {
    Supervisor first({"--fdstore", "--listen", "http=tcp://127.0.0.1:0", "--listen", "admin=unix:" + unix_path},
                     hello("v1"), true, under_systemd);
    const json status = first.status_or_fail();
    http_address = listener_address(status, "http");
    first_inodes = socket_inodes(first.pid());
    // One datagram per listener, named, with its socket, before READY=1.
    const Datagram* http = systemd.wait_for("FDSTORE=1\nFDNAME=http", 5s);
    const Datagram* admin = systemd.wait_for("FDSTORE=1\nFDNAME=admin", 5s);
    REQUIRE_MESSAGE(http != nullptr, systemd.dump());
    REQUIRE_MESSAGE(admin != nullptr, systemd.dump());
    REQUIRE(http->fds.size() == 1);
    REQUIRE(admin->fds.size() == 1);
    CHECK(local_address(http->fds[0]) == http_address);
    CHECK(local_address(admin->fds[0]) == "unix:" + unix_path);
    // The very sockets the supervisor holds, not new ones at the same address.
    CHECK(first_inodes.count(inode_of(http->fds[0])) == 1);
    CHECK(first_inodes.count(inode_of(admin->fds[0])) == 1);
    http_fd = http->fds[0];
    admin_fd = admin->fds[0];
    REQUIRE(systemd.wait_for("READY=1", 5s, true) != nullptr);
    const auto texts = systemd.texts();
    CHECK_MESSAGE(texts.size() >= 3, systemd.dump());
    CHECK_MESSAGE(texts[2].starts_with("READY=1"), systemd.dump());
    CHECK(first.proc().wait_output("listeners kept in systemd's fd store: http, admin", 5s));
    first.stop();  // As `systemctl restart` stops it.
  }
  const std::uint16_t port = static_cast<std::uint16_t>(std::stoi(http_address.substr(http_address.rfind(':') + 1)));

  // Between the two supervisors the store holds the port open: a client connects and waits in the
  // backlog rather than being refused.
  PendingRequest waiting(port);
  REQUIRE(waiting.connected());
  // The unix socket's file stays too, for the socket that lives on in the store.
  struct stat st {};
  CHECK((::stat(unix_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)));

  // systemd starts the service again and passes the stored sockets, by name.
  SpawnOptions restarted = under_systemd;
  restarted.pass_fds = {{http_fd, 3}, {admin_fd, 4}};
  Supervisor second({"--fdstore", "--listen", "http=tcp://127.0.0.1:0", "--listen", "admin=unix:" + unix_path},
                    hello("v2"), true, restarted, activate({"http", "admin"}));
  const json status = second.status_or_fail();
  CHECK(listener_address(status, "http") == http_address);
  CHECK(listener_address(status, "admin") == "unix:" + unix_path);
  for (const auto& l : status["listeners"])
    CHECK(l["adopted"] == true);
  CHECK(second.proc().wait_output(fmt::format("listener http on {} (from socket activation)", http_address), 5s));
  const auto second_inodes = socket_inodes(second.pid());
  CHECK(second_inodes.count(inode_of(http_fd)) == 1);
  CHECK(second_inodes.count(inode_of(admin_fd)) == 1);
  // The client that connected while no supervisor ran is served by the new one.
  const std::string response = waiting.response(15s);
  CHECK_MESSAGE(contains(response, "version=v2"), response);
  // It stores them again (systemd keeps one copy of each) and removes nothing.
  CHECK(second.proc().wait_output("listeners kept in systemd's fd store: http, admin", 5s));
  for (const auto& t : systemd.texts())
    CHECK_FALSE(t.starts_with("FDSTOREREMOVE=1"));
  second.stop();
}

TEST_CASE("a stored socket that no --listen wants any more is closed and removed from the fd store") {
  // Listening sockets as systemd would pass them back: a socket unit's first, then the store's.
  TempDir d;
  NotifyReceiver systemd(d.file("notify"));
  auto listening_tcp = [] {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd, 16) == 0);
    return fd;
  };
  const int http = listening_tcp();
  const int old_admin = listening_tcp();
  const int old_metrics = listening_tcp();
  const int other_http = listening_tcp();
  const int junk = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const std::string admin_path = d.file("admin.sock");
  SpawnOptions options;
  options.set_env = {{"NOTIFY_SOCKET", systemd.path()}};
  // http comes twice as the same socket (a socket unit's, and its copy in the store: adopted once),
  // and a third time as another socket (the first wins); admin is now a unix socket (another
  // address: bound anew); metrics is gone from --listen; junk is no socket at all (closed, and the
  // service still starts).
  options.pass_fds = {{http, 3}, {old_admin, 4}, {old_metrics, 5}, {http, 6}, {other_http, 7}, {junk, 8}};
  Supervisor sup({"--fdstore", "--listen", "http=tcp://127.0.0.1:0", "--listen", "admin=unix:" + admin_path},
                 hello("v1"), true, options, activate({"http", "admin", "metrics", "http", "http", "junk"}));
  const json status = sup.status_or_fail();
  CHECK(listener_address(status, "http") == local_address(http));
  CHECK(listener_address(status, "admin") == "unix:" + admin_path);
  CHECK(sup.proc().wait_output(fmt::format("socket activation passed two different sockets named 'http' ({} and {}); "
                                           "adopting the first, closing the other",
                                           local_address(http), local_address(other_http)),
                               5s));
  CHECK(sup.proc().wait_output(fmt::format("socket activation passed 'admin' on {}, and --listen asks for unix:{}; "
                                           "binding unix:{} and closing the passed socket",
                                           local_address(old_admin), admin_path, admin_path),
                               5s));
  CHECK(sup.proc().wait_output("socket activation passed 'metrics'", 5s));
  CHECK(
      sup.proc().wait_output("socket activation passed 'junk', which cannot be a listener (fd 8 is not a socket); "
                             "closing it",
                             5s));
  // The stale names leave the store first; then what the supervisor now holds is stored.
  REQUIRE_MESSAGE(systemd.wait_for("READY=1", 5s, true) != nullptr, systemd.dump());
  const auto texts = systemd.texts();
  const std::vector<std::string> expected = {"FDSTOREREMOVE=1\nFDNAME=http",  "FDSTOREREMOVE=1\nFDNAME=junk",
                                             "FDSTOREREMOVE=1\nFDNAME=admin", "FDSTOREREMOVE=1\nFDNAME=metrics",
                                             "FDSTORE=1\nFDNAME=http",        "FDSTORE=1\nFDNAME=admin"};
  REQUIRE_MESSAGE(texts.size() >= expected.size() + 1, systemd.dump());
  CHECK(std::vector<std::string>(texts.begin(), texts.begin() + 6) == expected);
  CHECK(inode_of(systemd.received()[4].fds.at(0)) == inode_of(http));
  CHECK(local_address(systemd.received()[5].fds.at(0)) == "unix:" + admin_path);
  // The supervisor let go of the stale sockets: only the test holds them now.
  const auto held = socket_inodes(sup.pid());
  CHECK(held.count(inode_of(old_admin)) == 0);
  CHECK(held.count(inode_of(old_metrics)) == 0);
  CHECK(held.count(inode_of(other_http)) == 0);
  CHECK(held.count(inode_of(http)) == 1);
  sup.stop();
  for (int fd : {http, old_admin, old_metrics, other_http, junk})
    ::close(fd);
}

TEST_CASE("without --fdstore nothing is stored, unless systemd says the store is there ($FDSTORE)") {
  TempDir d;
  NotifyReceiver systemd(d.file("notify"));
  SpawnOptions options;
  options.set_env = {{"NOTIFY_SOCKET", systemd.path()}};
  {
    Supervisor plain({}, hello("v1"), true, options);
    REQUIRE(systemd.wait_for("READY=1", 5s, true) != nullptr);
    for (const auto& t : systemd.texts())
      CHECK_FALSE(t.starts_with("FDSTORE"));
    plain.stop();
  }
  // systemd 254 and later set FDSTORE= to FileDescriptorStoreMax=; the workers do not see it.
  NotifyReceiver newer(d.file("notify2"));
  options.set_env = {{"NOTIFY_SOCKET", newer.path()}, {"FDSTORE", "8"}};
  Supervisor offered({}, hello("v1"), true, options);
  const Datagram* stored = newer.wait_for("FDSTORE=1\nFDNAME=http", 5s);
  REQUIRE_MESSAGE(stored != nullptr, newer.dump());
  CHECK(stored->fds.size() == 1);
  CHECK(environ_of(offered.active_pid()).count("FDSTORE") == 0);
  offered.stop();

  // --fdstore with no service manager: said once, and nothing else changes.
  Supervisor alone({"--fdstore"}, hello("v1"));
  CHECK(alone.proc().wait_output("--fdstore: not under systemd (no NOTIFY_SOCKET)", 5s));
  alone.stop();
}

TEST_CASE("SIGHUP reloads: a new generation of the current release, recorded as SIGHUP") {
  Supervisor sup({}, hello("v1"));
  const pid_t old_pid = sup.active_pid();
  REQUIRE(sup.proc().send_signal(SIGHUP));
  CHECK(wait_until([&] { return sup.active_generation() == 2 && sup.active_state() == "ready"; }, 15s));
  CHECK(gone_within(old_pid, 15s));
  CHECK(sup.proc().wait_output("SIGHUP: reload, a new generation with the same command line", 5s));
  const json g = *sup.active();
  CHECK(g["command"] == json(hello("v1")));
  RunResult curl = run({"curl", "-fsS", fmt::format("http://127.0.0.1:{}/", sup.port())}, {}, 10s);
  CHECK(contains(curl.out, "generation=2"));
  // The history and the event log name it.
  const json h = history(sup);
  CHECK(release(h, 2)["origin"] == "SIGHUP");
  CHECK(release(h, 2)["outcome"] == "serving");
  CHECK(release(h, 1)["outcome"] == "retired");
  RunResult events = sup.cli({"events", "--json", "-n", "1000"});
  REQUIRE_MESSAGE(events.exit_code == 0, events.err);
  bool signal_seen = false;
  bool result_seen = false;
  for (const std::string& line : lines_of(events.out)) {
    const json e = json::parse(line, nullptr, false);
    if (!e.is_object()) continue;
    const json& ev = e.contains("event") ? e["event"] : e;
    if (ev.value("type", "") == "signal" && ev.value("signal", "") == "SIGHUP") signal_seen = true;
    if (ev.value("type", "") == "upgrade.result" && ev.value("origin", "") == "SIGHUP" && ev.value("ok", false))
      result_seen = true;
  }
  CHECK_MESSAGE(signal_seen, events.out);
  CHECK_MESSAGE(result_seen, events.out);
  CHECK(sup.status_or_fail()["counters"]["upgrades_done"] == 1);
  sup.stop();
}

namespace {

// A unit file of examples/systemd as written: each key's value, continuation lines joined.
std::map<std::string, std::string> unit_file(const std::string& name) {
  const auto text = read_file(std::string(HOTRESTART_SOURCE_DIR) + "/examples/systemd/" + name);
  REQUIRE_MESSAGE(text.has_value(), "examples/systemd/" << name);
  std::map<std::string, std::string> keys;
  std::string pending;
  for (std::string line : lines_of(*text)) {
    if (!pending.empty()) line = pending + line;
    pending.clear();
    if (line.ends_with("\\")) {
      pending = line.substr(0, line.size() - 1) + " ";
      continue;
    }
    if (line.empty() || line[0] == '#' || line[0] == '[') continue;
    const auto eq = line.find('=');
    if (eq != std::string::npos) keys[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return keys;
}

std::vector<std::string> words(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string w; in >> w;)
    out.push_back(w);
  return out;
}

// The example's command lines with the build's binaries in place of the installed ones, and the
// server replaced by the example server.
std::vector<std::string> as_built(std::vector<std::string> argv) {
  for (auto& w : argv) {
    if (w == "/usr/local/bin/hotrestart") w = hotrestart_bin();
    if (w == "/srv/web/server") w = hello_bin();
  }
  return argv;
}

std::uint64_t monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000 + static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

}  // namespace

TEST_CASE("the example systemd units pass systemd-analyze verify") {
  TempDir d;
  for (const std::string name : {"hotrestart-web.service", "hotrestart-web.socket"}) {
    auto text = read_file(std::string(HOTRESTART_SOURCE_DIR) + "/examples/systemd/" + name);
    REQUIRE(text.has_value());
    // verify checks that ExecStart='s program exists: the build's binary stands in for the installed one.
    std::string replaced;
    for (const auto& line : lines_of(*text)) {
      std::string l = line;
      for (auto at = l.find("/usr/local/bin/hotrestart"); at != std::string::npos;
           at = l.find("/usr/local/bin/hotrestart", at + 1))
        l.replace(at, std::strlen("/usr/local/bin/hotrestart"), hotrestart_bin());
      replaced += l + "\n";
    }
    write_file_atomic(d.file(name), replaced);
  }
  RunResult r =
      run({"systemd-analyze", "verify", d.file("hotrestart-web.service"), d.file("hotrestart-web.socket")}, {}, 60s);
  CHECK_MESSAGE(r.exit_code == 0, r.out << r.err);
  // Warnings (an unknown key, a bad value) do not change the exit status: none is allowed either.
  CHECK_MESSAGE(r.err.empty(), r.err);
  CHECK_MESSAGE(r.out.empty(), r.out);
}

TEST_CASE("the example service as written: socket-activated, its notifications from start through upgrades to stop") {
  const auto service = unit_file("hotrestart-web.service");
  const auto socket = unit_file("hotrestart-web.socket");
  // The two units agree: the socket unit's port and name are the service's --listen.
  const std::vector<std::string> exec_start = words(service.at("ExecStart"));
  REQUIRE(exec_start.at(0) == "/usr/local/bin/hotrestart");
  const auto listen = std::find(exec_start.begin(), exec_start.end(), "--listen");
  REQUIRE(listen != exec_start.end());
  const std::string spec = *(listen + 1);
  CHECK(spec == fmt::format("{}=tcp://0.0.0.0:{}", socket.at("FileDescriptorName"), socket.at("ListenStream")));
  CHECK(service.at("Type") == "notify");
  CHECK(service.at("KillMode") == "mixed");
  CHECK(std::stoi(service.at("FileDescriptorStoreMax")) > 0);
  CHECK(std::find(exec_start.begin(), exec_start.end(), "--fdstore") != exec_start.end());
  const auto drain = std::find(exec_start.begin(), exec_start.end(), "--drain-timeout");
  REQUIRE(drain != exec_start.end());
  CHECK_MESSAGE(std::stoi(service.at("TimeoutStopSec")) > std::stoi(*(drain + 1)), "TimeoutStopSec= must be longer");
  const std::string watchdog = service.at("WatchdogSec");
  REQUIRE(watchdog.ends_with("s"));

  // systemd's part, played by systemd-socket-activate: it binds the socket unit's socket (on a free
  // port here), passes it as LISTEN_FDS with its name, and gives what the unit's settings would.
  TempDir d;
  NotifyReceiver systemd(d.file("notify"));
  const std::uint16_t port = free_port();
  std::vector<std::string> argv = as_built(exec_start);
  for (auto& w : argv)
    if (w == spec) w = fmt::format("{}=tcp://0.0.0.0:{}", socket.at("FileDescriptorName"), port);
  REQUIRE(::mkdir(d.file("run").c_str(), 0755) == 0);
  REQUIRE(::mkdir(d.file("state").c_str(), 0755) == 0);
  std::vector<std::string> activate = {"systemd-socket-activate",
                                       "-l",
                                       fmt::format("127.0.0.1:{}", port),
                                       "--fdname=" + socket.at("FileDescriptorName"),
                                       "-E",
                                       "NOTIFY_SOCKET=" + systemd.path(),
                                       "-E",
                                       "RUNTIME_DIRECTORY=" + d.file("run"),
                                       "-E",
                                       "STATE_DIRECTORY=" + d.file("state"),
                                       "-E",
                                       fmt::format("WATCHDOG_USEC={}", std::stoll(watchdog) * 1'000'000)};
  activate.insert(activate.end(), argv.begin(), argv.end());
  Child service_process = Child::spawn(activate);
  REQUIRE_MESSAGE(service_process.wait_output(fmt::format("Listening on 127.0.0.1:{}", port), 10s),
                  service_process.describe());
  // The first request starts the service (socket activation on demand) and is served by it.
  RunResult first = run({"curl", "-fsS", "-m", "30", fmt::format("http://127.0.0.1:{}/", port)}, {}, 40s);
  CHECK_MESSAGE(first.exit_code == 0, first.err << service_process.describe());
  CHECK(contains(first.out, "generation=1"));
  const Datagram* ready = systemd.wait_for("READY=1", 10s, true);
  REQUIRE_MESSAGE(ready != nullptr, systemd.dump() << service_process.describe());
  CHECK(service_process.wait_output("listener http on 127.0.0.1:", 5s));
  CHECK(service_process.wait_output("(from socket activation)", 5s));

  // `systemctl reload`: ExecReload= as written, which finds the control socket in RUNTIME_DIRECTORY.
  SpawnOptions in_service;
  in_service.set_env = {{"RUNTIME_DIRECTORY", d.file("run")}};
  const std::vector<std::string> reload = as_built(words(service.at("ExecReload")));
  const std::uint64_t before = monotonic_usec();
  RunResult good = run(reload, in_service, 60s);
  const std::uint64_t after = monotonic_usec();
  CHECK_MESSAGE(good.exit_code == 0, good.out << good.err);
  REQUIRE_MESSAGE(systemd.wait_for("READY=1\nSTATUS=generation 2 serving", 10s) != nullptr, systemd.dump());
  RunResult second = run({"curl", "-fsS", "-m", "10", fmt::format("http://127.0.0.1:{}/", port)}, {}, 20s);
  CHECK(contains(second.out, "generation=2"));
  // A reload that fails is rolled back, and `systemctl reload` fails with it.
  std::vector<std::string> bad_reload = reload;
  bad_reload.insert(bad_reload.end(), {"--exec", d.file("missing-server")});
  RunResult bad = run(bad_reload, in_service, 60s);
  CHECK_MESSAGE(bad.exit_code == 1, bad.out << bad.err);
  REQUIRE_MESSAGE(
      systemd.wait_for("READY=1\nSTATUS=generation 2 serving; release 3 rolled back: ", 10s, true) != nullptr,
      systemd.dump());

  // `systemctl stop` with KillMode=mixed: SIGTERM to the main process, the supervisor.
  REQUIRE(service_process.send_signal(SIGTERM));
  CHECK(service_process.wait_for(30s) == std::optional<int>(0));
  REQUIRE_MESSAGE(systemd.wait_for("STOPPING=1", 5s) != nullptr, systemd.dump());

  // The exact sequence systemd saw.
  const auto texts = systemd.texts();
  REQUIRE_MESSAGE(texts.size() == 7, systemd.dump());
  CHECK(texts[0] == "FDSTORE=1\nFDNAME=http");
  CHECK(systemd.received()[0].fds.size() == 1);
  CHECK(local_address(systemd.received()[0].fds.at(0)) == fmt::format("127.0.0.1:{}", port));
  CHECK(texts[1] == fmt::format("READY=1\nSTATUS=generation 1 serving\nMAINPID={}", service_process.pid()));
  for (std::size_t i : {2u, 4u}) {
    CAPTURE(texts[i]);
    CHECK(texts[i].starts_with("RELOADING=1\nMONOTONIC_USEC="));
    CHECK(texts[i].ends_with("\nSTATUS=upgrading"));
  }
  // MONOTONIC_USEC= is CLOCK_MONOTONIC when the reload began, as systemd requires.
  const std::uint64_t usec = std::stoull(texts[2].substr(std::strlen("RELOADING=1\nMONOTONIC_USEC=")));
  CHECK(usec >= before);
  CHECK(usec <= after);
  CHECK(texts[3] == "READY=1\nSTATUS=generation 2 serving");
  CHECK(texts[5].starts_with("READY=1\nSTATUS=generation 2 serving; release 3 rolled back: cannot start the worker: "));
  CHECK(texts[6] == "STOPPING=1");
  // WatchdogSec=: the first WATCHDOG=1 goes at start.
  CHECK(std::any_of(systemd.received().begin(), systemd.received().end(),
                    [](const Datagram& g) { return g.text == "WATCHDOG=1"; }));
}

namespace {

// Every process in the pid namespace `ns` (as /proc/PID/ns/pid reads), seen from outside it:
// its pid here and its state letter (R, S, Z, ...).
std::map<pid_t, char> processes_in(const std::string& ns) {
  std::map<pid_t, char> out;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    char target[128] = {};
    if (::readlink(fmt::format("/proc/{}/ns/pid", name).c_str(), target, sizeof target - 1) <= 0) continue;
    if (ns != target) continue;
    const auto stat = read_file(fmt::format("/proc/{}/stat", name));
    if (!stat) continue;
    const auto close = stat->rfind(") ");
    if (close == std::string::npos || close + 2 >= stat->size()) continue;
    out[std::stoi(name)] = (*stat)[close + 2];
  }
  return out;
}

std::string describe(const std::map<pid_t, char>& processes) {
  std::string out;
  for (const auto& [pid, state] : processes)
    out += fmt::format("{} {} {}\n", pid, state, fmt::join(cmdline_of(pid), " "));
  return out;
}

}  // namespace

TEST_CASE("as PID 1 of a pid namespace the supervisor reaps every orphan, upgrades, and stops on SIGTERM") {
  RunResult probe = run({"unshare", "--pid", "--fork", "--mount-proc", "/bin/sh", "-c", "echo $$"}, {}, 10s);
  REQUIRE_MESSAGE((probe.exit_code == 0 && probe.out == "1\n"),
                  "unshare --pid --fork --mount-proc does not work on this machine: " << probe.err);
  TempDir d;
  // The worker leaves two orphans before it becomes the server: one that exits a moment later
  // (re-parented to PID 1, it is a zombie unless PID 1 reaps it) and one that would run for five
  // minutes (its generation's, it ends with it).
  const std::string script =
      fmt::format("(sh -c 'sleep 1; echo done > {0}/short-$0' \"$1\" &); (exec sleep 300 &); exec {1} --version \"$1\"",
                  d.path(), hello_bin());
  auto worker = [&](const std::string& version) {
    return std::vector<std::string>{"/bin/sh", "-c", script, "worker", version};
  };
  Supervisor sup({"--drain-timeout", "20s"}, worker("v1"), true, {}, {"unshare", "--pid", "--fork", "--mount-proc"});
  const std::vector<pid_t> below = children_of(sup.pid());
  REQUIRE(below.size() == 1);
  const pid_t supervisor = below[0];
  char ns[128] = {};
  REQUIRE(::readlink(fmt::format("/proc/{}/ns/pid", supervisor).c_str(), ns, sizeof ns - 1) > 0);
  // It is PID 1 there.
  CHECK(sup.status_or_fail()["pid"] == 1);

  auto no_zombie = [&](const std::string& version) {
    std::map<pid_t, char> in_ns;
    const bool clean = wait_until(
        [&] {
          in_ns = processes_in(ns);
          const bool zombies = std::any_of(in_ns.begin(), in_ns.end(), [](const auto& p) { return p.second == 'Z'; });
          return read_file(d.file("short-" + version)).has_value() && !zombies;
        },
        15s);
    CHECK_MESSAGE(clean, "after " << version << ":\n" << describe(in_ns));
    return in_ns;
  };
  no_zombie("v1");
  RunResult served = run({"curl", "-fsS", fmt::format("http://127.0.0.1:{}/", sup.port())}, {}, 10s);
  CHECK(contains(served.out, "version=v1"));

  RunResult up = sup.upgrade_to(worker("v2"));
  REQUIRE_MESSAGE(up.exit_code == 0, up.out << up.err);
  // Generation 1 is gone with its long orphan; generation 2's short one was reaped: what is left
  // is the supervisor, its guard, generation 2's server and its long orphan, none of them a zombie.
  std::map<pid_t, char> left;
  CHECK_MESSAGE(wait_until(
                    [&] {
                      left = no_zombie("v2");
                      return left.size() == 4;
                    },
                    20s),
                describe(left));
  served = run({"curl", "-fsS", fmt::format("http://127.0.0.1:{}/", sup.port())}, {}, 10s);
  CHECK(contains(served.out, "version=v2"));

  // `docker stop`: SIGTERM to PID 1. It drains, and exits 0 (unshare passes its status on).
  REQUIRE(::kill(supervisor, SIGTERM) == 0);
  CHECK(sup.proc().wait_for(30s) == std::optional<int>(0));
  CHECK(sup.proc().wait_output("SIGTERM: graceful stop", 5s));
  // The generations were drained and had exited before PID 1 did (the kernel would kill what is
  // left in the namespace when it exits, which would hide a stop that does not wait).
  CHECK_MESSAGE(contains(sup.proc().err(), "stopped: every generation has exited"), sup.proc().err());
  CHECK(processes_in(ns).empty());
}

TEST_CASE("the example Ansible playbook upgrades host after host, and stops at the first that rolls back") {
  REQUIRE_MESSAGE(run({"ansible-playbook", "--version"}, {}, 60s).exit_code == 0,
                  "ansible-playbook is missing: install ansible-core (scripts/lib.sh hr_install_deps)");
  TempDir d;
  // Two hosts on this machine, each with its own supervisor (control socket, port) and release dir.
  Supervisor web1({}, hello("v1"));
  Supervisor web2({}, hello("v1"));
  json hosts = json::object();
  for (auto [name, sup] : {std::pair<std::string, Supervisor*>{"web1", &web1}, {"web2", &web2}}) {
    REQUIRE(::mkdir(d.file(name).c_str(), 0755) == 0);
    hosts[name] = {{"ansible_connection", "local"},
                   {"ansible_python_interpreter", "/usr/bin/python3"},
                   {"hotrestart_target", {"--control", sup->control()}},
                   {"release_dir", d.file(name)}};
  }
  // JSON is YAML: the inventory plugin reads it as such.
  write_file_atomic(d.file("inventory.yml"), json{{"web", {{"hosts", hosts}}}}.dump(2));
  SpawnOptions quiet;
  quiet.set_env = {{"ANSIBLE_NOCOLOR", "1"},
                   {"ANSIBLE_LOCAL_TEMP", d.file("ansible-tmp")},
                   {"ANSIBLE_REMOTE_TEMP", d.file("ansible-tmp")},
                   {"ANSIBLE_RETRY_FILES_ENABLED", "0"}};
  auto rollout = [&](const std::string& binary, const std::string& release) {
    return run({"ansible-playbook", "-i", d.file("inventory.yml"),
                std::string(HOTRESTART_SOURCE_DIR) + "/examples/ansible/upgrade.yml", "-e",
                "hotrestart=" + hotrestart_bin(), "-e", "release_src=" + binary, "-e", "release=" + release},
               quiet, 180s);
  };
  auto serves = [](Supervisor& sup, const std::string& what) {
    RunResult r = run({"curl", "-fsS", fmt::format("http://127.0.0.1:{}/", sup.port())}, {}, 10s);
    return contains(r.out, what);
  };

  // A good release: both hosts upgrade, in order.
  RunResult good = rollout(hello_bin(), "v2");
  CHECK_MESSAGE(good.exit_code == 0, good.out << good.err);
  CHECK_MESSAGE(contains(good.out, "web1: served: upgrade succeeded"), good.out);
  CHECK_MESSAGE(contains(good.out, "web2: served: upgrade succeeded"), good.out);
  CHECK(good.out.find("web1: served") < good.out.find("web2: served"));
  for (Supervisor* sup : {&web1, &web2}) {
    CHECK(sup->active_generation() == 2);
    CHECK(serves(*sup, "generation=2"));
  }
  CHECK((*web1.active())["command"][0] == d.file("web1") + "/server-v2");

  // A bad release (it exits at once): the first host rolls back and keeps serving; the rollout
  // stops there, and the second host is never touched, not even by the copy.
  RunResult bad = rollout("/bin/false", "v3");
  CHECK_MESSAGE(bad.exit_code == 2, bad.out << bad.err);
  CHECK_MESSAGE(contains(bad.out, "web1: rolled back, the previous release still serves: hotrestart: upgrade failed"),
                bad.out);
  CHECK_MESSAGE(contains(bad.out, "the rollout stops here"), bad.out);
  CHECK_MESSAGE(!contains(bad.out, "[web2]"), bad.out);
  CHECK(web1.active_generation() == 2);
  CHECK(serves(web1, "generation=2"));
  CHECK(release(history(web1), 3)["outcome"] == "rolled-back");
  CHECK(history(web2)["releases"].size() == 2);
  CHECK_FALSE(read_file(d.file("web2") + "/server-v3").has_value());
  CHECK(serves(web2, "generation=2"));
  web1.stop();
  web2.stop();
}

TEST_CASE("the example Kubernetes Deployment's command lines work as written: entrypoint, probes, upgrade, preStop") {
  const std::string path = std::string(HOTRESTART_SOURCE_DIR) + "/examples/kubernetes/deployment.yaml";
  RunResult loaded = run(
      {"python3", "-c", "import sys, json, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))", path},
      {}, 30s);
  REQUIRE_MESSAGE(loaded.exit_code == 0, "python3-yaml cannot load " << path << ": " << loaded.err);
  const json docs = json::parse(loaded.out);
  REQUIRE(docs.size() == 1);
  const json& pod = docs[0]["spec"]["template"]["spec"];
  const json& c = pod["containers"][0];
  std::vector<std::string> entrypoint = c["command"];
  for (const auto& a : c["args"])
    entrypoint.push_back(a);
  const std::vector<std::string> readiness = c["readinessProbe"]["exec"]["command"];
  const std::vector<std::string> liveness = c["livenessProbe"]["exec"]["command"];
  const std::vector<std::string> pre_stop = c["lifecycle"]["preStop"]["exec"]["command"];
  // hotrestart is PID 1: the entrypoint is the supervisor itself, not a shell around it.
  REQUIRE(entrypoint.at(0) == "/usr/local/bin/hotrestart");
  REQUIRE(entrypoint.at(1) == "run");
  // The grace period outlasts preStop and the drain.
  const auto drain = std::find(entrypoint.begin(), entrypoint.end(), "--drain-timeout");
  REQUIRE(drain != entrypoint.end());
  REQUIRE(pre_stop.size() == 2);
  CHECK(pre_stop[0] == "/bin/sleep");
  CHECK(pod["terminationGracePeriodSeconds"].get<int>() > std::stoi(pre_stop[1]) + std::stoi(*(drain + 1)));
  CHECK(c["ports"][0]["containerPort"] == 8080);

  // The container's paths and port, moved into a temp dir and a free loopback port here.
  TempDir d;
  const std::uint16_t port = free_port();
  auto here = [&](std::vector<std::string> argv) {
    for (auto& w : argv) {
      if (w == "/usr/local/bin/hotrestart") w = hotrestart_bin();
      if (w == "/app/server") w = hello_bin();
      if (w == "/run/hotrestart/web.sock") w = d.file("web.sock");
      if (w == "/var/lib/hotrestart/web") w = d.file("state");
      if (w == "http=tcp://0.0.0.0:8080") w = fmt::format("http=tcp://127.0.0.1:{}", port);
    }
    return argv;
  };
  Child container = Child::spawn(here(entrypoint));
  CHECK_MESSAGE(wait_until([&] { return run(here(readiness), {}, 10s).exit_code == 0; }, 15s), container.describe());
  RunResult live = run(here(liveness), {}, 10s);
  CHECK(live.exit_code == 0);
  CHECK(contains(live.out, "serving"));
  auto get = [&] { return run({"curl", "-fsS", "-m", "10", fmt::format("http://127.0.0.1:{}/", port)}, {}, 20s).out; };
  CHECK(contains(get(), "generation=1"));

  // Upgrade in place, as `kubectl exec deploy/web -- hotrestart upgrade --control ...` does.
  RunResult up = run({hotrestart_bin(), "upgrade", "--control", d.file("web.sock")}, {}, 60s);
  CHECK_MESSAGE(up.exit_code == 0, up.out << up.err);
  CHECK(contains(get(), "generation=2"));
  CHECK(run(here(readiness), {}, 10s).exit_code == 0);

  // Pod deletion: preStop runs while the endpoint goes away, and the pod serves throughout; then
  // SIGTERM to PID 1 drains it, well within the grace period.
  auto stopping = std::async(std::launch::async, [&] { return run(pre_stop, {}, 60s); });
  CHECK(contains(get(), "generation=2"));
  CHECK(stopping.get().exit_code == 0);
  REQUIRE(container.send_signal(SIGTERM));
  CHECK(container.wait_for(std::chrono::seconds(pod["terminationGracePeriodSeconds"].get<int>())) ==
        std::optional<int>(0));
  // Once stopping, readiness fails: no supervisor runs (exit 8).
  CHECK(run(here(readiness), {}, 10s).exit_code == 8);
}
