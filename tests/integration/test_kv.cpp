// The key-value cache example under a real supervisor: writes acknowledged by either generation
// survive upgrades in both directions, and keep-alive clients ride through upgrades on the same
// connection, handed from one generation to the next.
#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <hotrestart/fd.h>
#include <atomic>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

std::vector<std::string> kv(const std::string& build, std::vector<std::string> args = {}) {
  args.insert(args.begin(), bin_path("kv-cache-" + build));
  return args;
}

// A minimal HTTP/1.1 client on one keep-alive connection, reconnecting only when the server said
// `Connection: close`. Every read has a deadline.
class HttpConnection {
 public:
  explicit HttpConnection(std::uint16_t port) : port_(port) {}

  struct Answer {
    int status = 0;  // 0: the exchange failed; `error` says how.
    std::string body;
    std::string error;
    std::int64_t config_version = -1;  // X-Config-Version, -1 when absent.
  };

  Answer request(const std::string& method, const std::string& path, const std::string& body = {}) {
    if (!fd_ && !connect()) return {0, {}, "connect: " + std::string(std::strerror(errno))};
    ++requests_;
    std::string req = fmt::format("{} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{}", method, path,
                                  body.size(), body);
    if (::send(fd_.get(), req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
      fd_.reset();
      return {0, {}, "send: " + std::string(std::strerror(errno))};
    }
    Answer a;
    std::string in;
    std::size_t header_end = std::string::npos;
    std::size_t length = 0;
    for (;;) {
      if (header_end == std::string::npos) {
        header_end = in.find("\r\n\r\n");
        if (header_end != std::string::npos) {
          a.status = std::atoi(in.c_str() + 9);
          const std::string head = lower(in.substr(0, header_end));
          const auto cl = head.find("content-length:");
          length = cl == std::string::npos ? 0 : std::strtoul(head.c_str() + cl + 15, nullptr, 10);
          closing_ = head.find("connection: close") != std::string::npos;
          if (const auto cv = head.find("x-config-version:"); cv != std::string::npos)
            a.config_version = std::strtoll(head.c_str() + cv + 17, nullptr, 10);
        }
      }
      if (header_end != std::string::npos && in.size() >= header_end + 4 + length) break;
      pollfd p{fd_.get(), POLLIN, 0};
      char buf[16384];
      if (::poll(&p, 1, 5000) <= 0) return fail("read: no answer within 5 s");
      const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
      if (n <= 0) return fail(n == 0 ? "read: EOF before the answer" : "read: " + std::string(std::strerror(errno)));
      in.append(buf, static_cast<std::size_t>(n));
    }
    a.body = in.substr(header_end + 4, length);
    if (closing_) {
      fd_.reset();
      ++reconnects_owed_;
    }
    return a;
  }

  std::size_t connects() const { return connects_; }
  std::size_t closed_by_server() const { return reconnects_owed_; }

 private:
  static std::string lower(std::string s) {
    for (char& c : s)
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return s;
  }
  Answer fail(std::string why) {
    fd_.reset();
    return {0, {}, std::move(why)};
  }
  bool connect() {
    hotrestart::Fd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port_);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return false;
    const int one = 1;
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    fd_ = std::move(fd);
    ++connects_;
    return true;
  }

  std::uint16_t port_;
  hotrestart::Fd fd_;
  bool closing_ = false;
  std::size_t connects_ = 0;
  std::size_t requests_ = 0;
  std::size_t reconnects_owed_ = 0;
};

}  // namespace

TEST_CASE("kv: every acknowledged write survives upgrades in both directions under continuous writes") {
  // --no-park: each old generation exits once drained (its changes all sent), rather than wait
  // parked through the watch window.
  Supervisor sup({"--state-required", "cache", "--drain-timeout", "10s", "--no-park"}, kv("v1"));
  const std::uint16_t port = sup.port();

  constexpr int kWriters = 4;
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::map<std::string, std::string> acknowledged;
  std::map<std::string, std::size_t> problems;
  std::vector<std::thread> writers;
  for (int w = 0; w < kWriters; ++w) {
    writers.emplace_back([&, w] {
      HttpConnection c(port);
      for (int i = 0; !stop.load(); ++i) {
        const std::string key = fmt::format("w{}-{}", w, i);
        // Every 50th value is too large for one channel message, so that a change made during a
        // transfer also travels as a memfd.
        const std::size_t pad = i % 50 == 0 ? 100'000 : static_cast<std::size_t>(i % 64);
        const std::string value = fmt::format("value of {} ({})", key, std::string(pad, 'x'));
        auto a = c.request("PUT", "/kv/" + key, value);
        std::lock_guard lock(mu);
        if (a.status == 204) {
          acknowledged[key] = value;
        } else {
          ++problems[a.status == 0 ? a.error : fmt::format("status {}", a.status)];
        }
      }
    });
  }
  auto acked = [&] {
    std::lock_guard lock(mu);
    return acknowledged.size();
  };
  REQUIRE(wait_until([&] { return acked() > 500; }, 15s));
  // v1 -> v2 -> v1 -> v2, then v2 -> v2 twice (the arena handed over as it is, then again once
  // the new generation has made it its own), each while the writers keep writing to whichever
  // generation accepts.
  for (const char* build : {"v2", "v1", "v2", "v2", "v2"}) {
    const pid_t old_pid = sup.active_pid();
    RunResult r = sup.upgrade_to(kv(build));
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
    CHECK(contains(r.out, "cache: schema"));
    REQUIRE(wait_until([&] { return !pid_alive(old_pid); }, 15s));
    const std::size_t before = acked();
    REQUIRE(wait_until([&] { return acked() > before + 300; }, 15s));
  }
  stop = true;
  for (auto& t : writers)
    t.join();
  CHECK(sup.proc().wait_output("(mapped arena: ", 5s));

  // Every write was acknowledged: none was refused (503), none failed.
  for (const auto& [what, count] : problems)
    FAIL_CHECK(what << " x" << count);
  INFO("acknowledged writes: " << acknowledged.size());
  HttpConnection reader(port);
  std::size_t missing = 0;
  for (const auto& [key, value] : acknowledged) {
    auto a = reader.request("GET", "/kv/" + key);
    if (a.status != 200 || a.body != value) {
      if (++missing <= 5) FAIL_CHECK("lost: " << key << " -> status " << a.status << " " << a.error);
    }
  }
  CHECK(missing == 0);
  sup.stop();
}

TEST_CASE("kv: keep-alive clients ride through upgrades on the same connection") {
  Supervisor sup({"--drain-timeout", "10s", "--no-park"}, kv("v1"));  // Each old generation exits once drained.
  LoadClient::Config cfg;
  cfg.port = sup.port();
  cfg.mode = LoadClient::Mode::KeepAlive;
  cfg.threads = 4;
  cfg.think_time = std::chrono::microseconds(2000);  // Idle moments, when a drain can hand them over.
  LoadClient load(cfg);
  load.start();
  REQUIRE(wait_until([&] { return load.ok_count() > 100; }, 10s));
  for (const char* build : {"v2", "v1", "v2"}) {
    const pid_t old_pid = sup.active_pid();
    RunResult r = sup.upgrade_to(kv(build));
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
    REQUIRE(wait_until([&] { return !pid_alive(old_pid); }, 15s));
    const std::size_t served = load.ok_count();
    REQUIRE(wait_until([&] { return load.ok_count() > served + 100; }, 10s));
  }
  load.stop();
  require_no_failures(load, "keep-alive clients");

  // No connection was ever closed by a server, so the clients never reconnected: each thread
  // used one connection throughout, and on it answers came from every generation in turn.
  std::map<std::uint64_t, std::set<long long>> generations_per_connection;
  std::size_t closed = 0;
  for (const auto& r : load.responses()) {
    generations_per_connection[r.connection].insert(r.generation);
    closed += r.server_closed ? 1 : 0;
  }
  CHECK(closed == 0);
  CHECK(generations_per_connection.size() == static_cast<std::size_t>(cfg.threads));
  for (const auto& [connection, generations] : generations_per_connection) {
    const std::set<long long> all_four{1, 2, 3, 4};
    CHECK_MESSAGE(generations == all_four, "connection " << connection);
  }
  sup.stop();
}

TEST_CASE("kv: after a rolled-back upgrade the old generation takes back the memory it lent, and serves on") {
  // A state timeout far shorter than the transfer of 1.5 million entries: the new generation is
  // killed while the arena is (about to be) mapped by it, and the upgrade rolls back.
  Supervisor sup({"--state-timeout", "20ms", "--drain-timeout", "10s"},
                 kv("v2", {"--max-memory", "536870912", "--prefill", "1500000"}));
  const pid_t old_pid = sup.active_pid();
  HttpConnection c(sup.port());
  REQUIRE(c.request("PUT", "/kv/probe", "written before").status == 204);

  RunResult r = sup.upgrade_to(kv("v2", {"--max-memory", "536870912"}));
  CHECK_MESSAGE(r.exit_code == 1, r.out << r.err);
  CHECK(sup.active_pid() == old_pid);
  CHECK(sup.proc().wait_output(
      fmt::format("pid {}: the next generation is gone; the cache's memory is this generation's alone again", old_pid),
      10s));

  // Its own memory again: what it held, and what it writes now, reads back.
  CHECK(c.request("GET", "/kv/probe").body == "written before");
  CHECK(c.request("GET", "/kv/key-0001234567").status == 200);
  REQUIRE(c.request("PUT", "/kv/probe", "written after").status == 204);
  CHECK(c.request("GET", "/kv/probe").body == "written after");
  sup.stop();
}

TEST_CASE("kv: its configuration blocks keys and caps values, and every answer names the version it was made under") {
  TempDir dir;
  const std::string file = dir.file("kv.conf");
  const auto save = [&](const std::string& text) {
    {
      std::ofstream out(file + ".new", std::ios::trunc);
      out << text;
    }
    REQUIRE(::rename((file + ".new").c_str(), file.c_str()) == 0);
  };
  save("# kv-cache\nblock private/\n");
  Supervisor sup({"--config", "kv-cache=" + file}, kv("v1"));
  HttpConnection conn(sup.port());

  auto a = conn.request("PUT", "/kv/private/a", "x");
  CHECK(a.status == 403);
  CHECK(a.body == "keys under 'private/' are blocked (configuration version 1)\n");
  CHECK(a.config_version == 1);
  CHECK(conn.request("PUT", "/kv/public", "a longer value").status == 204);

  save("max-value-bytes 4\n");
  RunResult r = sup.cli({"reload"}, 30s);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  a = conn.request("PUT", "/kv/private/a", "x");  // The same connection: the new version at once.
  CHECK(a.status == 204);
  CHECK(a.config_version == 2);
  a = conn.request("PUT", "/kv/public", "too long");
  CHECK(a.status == 413);
  CHECK(a.body == "values are at most 4 bytes (configuration version 2)\n");

  save("block\n");
  r = sup.cli({"reload"}, 30s);
  CHECK(r.exit_code == 1);
  CHECK_MESSAGE(contains(r.err, "line 1: block: give a key prefix"), r.err);
  CHECK(conn.request("GET", "/kv/private/a").config_version == 2);

  r = sup.cli({"config", "rollback", "1"}, 30s);
  REQUIRE_MESSAGE(r.exit_code == 0, r.err);
  a = conn.request("GET", "/kv/private/a");
  CHECK(a.status == 403);
  CHECK(a.config_version == 4);

  // An upgrade starts with the live version, and the data came over.
  REQUIRE(sup.upgrade_to(kv("v2")).exit_code == 0);
  HttpConnection fresh(sup.port());
  a = fresh.request("GET", "/kv/public");
  CHECK(a.body == "a longer value");
  CHECK(a.config_version == 4);
  CHECK(fresh.request("GET", "/kv/private/a").status == 403);
  sup.stop();
}
