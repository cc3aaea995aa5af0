// `run --metrics`: the Prometheus endpoint. What an upgrade, a rollback and a control request add up
// to, read the way Prometheus reads it (and checked by Prometheus's own promtool); the gauges a
// worker publishes; and an endpoint that bad requests and idle connections cannot break.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>

#include <fmt/format.h>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

struct Scrape {
  int code = 0;
  std::string body;
};

// GET `path` from the endpoint at `address` ("127.0.0.1:PORT" or "unix:PATH", as status gives it),
// with curl.
Scrape scrape(const std::string& address, const std::string& path = "/metrics") {
  std::vector<std::string> argv{"curl", "-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"};
  if (address.starts_with("unix:")) {
    argv.insert(argv.end(), {"--unix-socket", address.substr(5), "http://localhost" + path});
  } else {
    argv.push_back(fmt::format("http://{}{}", address, path));
  }
  RunResult r = run(argv, {}, 10s);
  REQUIRE_MESSAGE(r.exit_code == 0, "curl: " << r.err);
  const auto last = r.out.rfind('\n');
  REQUIRE(last != std::string::npos);
  return {std::atoi(r.out.c_str() + last + 1), r.out.substr(0, last)};
}

// The value of the sample `series` (a name with its labels as written, e.g.
// `hotrestart_generations{state="ready"}`), or nullopt when there is none.
std::optional<double> sample(const std::string& body, const std::string& series) {
  for (const std::string& line : lines_of(body)) {
    if (line.size() > series.size() && line.starts_with(series) && line[series.size()] == ' ')
      return std::strtod(line.c_str() + series.size() + 1, nullptr);
  }
  return std::nullopt;
}

// promtool's verdict on `body`: "" when it passes, else what it said.
std::string promtool_check(const TempDir& dir, const std::string& body) {
  const std::string file = dir.file("scrape.txt");
  write_file_atomic(file, body);
  RunResult r = run({"sh", "-c", "promtool check metrics < \"$1\"", "sh", file}, {}, 30s);
  if (r.exit_code == 0 && r.err.empty() && r.out.empty()) return "";
  return fmt::format("exit {}: {}{}", r.exit_code, r.out, r.err);
}

std::string metrics_address(Supervisor& sup) {
  const json status = sup.status_or_fail();
  REQUIRE_MESSAGE(status["metrics"].is_object(), status.dump());
  return status["metrics"]["address"].get<std::string>();
}

// Sends `request` on a new TCP connection to 127.0.0.1:`port` and reads until the peer closes
// (at most `limit`): what came back.
std::string talk(std::uint16_t port, const std::string& request, std::chrono::milliseconds limit = 10s) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  if (!request.empty()) REQUIRE(::send(fd, request.data(), request.size(), MSG_NOSIGNAL) >= 0);
  std::string got;
  const auto until = std::chrono::steady_clock::now() + limit;
  char buf[4096];
  while (std::chrono::steady_clock::now() < until) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return got;
}

std::uint16_t port_of(const std::string& address) {
  return static_cast<std::uint16_t>(std::atoi(address.c_str() + address.rfind(':') + 1));
}

}  // namespace

TEST_CASE("metrics: upgrades, rollbacks, generations and control requests add up, and promtool passes them") {
  Supervisor sup({"--metrics", "tcp://127.0.0.1:0"}, hello("v1"));
  const std::string address = metrics_address(sup);
  CHECK(address.starts_with("127.0.0.1:"));
  RunResult text = sup.cli({"status"});
  CHECK_MESSAGE(contains(text.out, fmt::format("metrics:     http://{}/metrics (", address)), text.out);

  RunResult good = sup.upgrade_to(hello("v2"));
  REQUIRE_MESSAGE(good.exit_code == 0, good.out << good.err);
  RunResult exits = sup.upgrade_to({test_worker_bin(), "exit", "3"});
  REQUIRE_MESSAGE(exits.exit_code == 1, exits.out << exits.err);
  RunResult missing = sup.upgrade_to({"/nonexistent/server"});
  REQUIRE_MESSAGE(missing.exit_code == 1, missing.out << missing.err);
  // Generation 1 drains away.
  REQUIRE(wait_until([&] { return sup.status_or_fail()["generations"].size() == 1; }, 20s));

  const Scrape s = scrape(address);
  REQUIRE(s.code == 200);
  const std::string& m = s.body;
  INFO(m);
  CHECK(sample(m, R"(hotrestart_upgrades_total{outcome="done",cause=""})") == 1);
  CHECK(sample(m, R"(hotrestart_upgrades_total{outcome="rolled-back",cause="new-exited"})") == 1);
  CHECK(sample(m, R"(hotrestart_upgrades_total{outcome="rolled-back",cause="spawn-failed"})") == 1);
  CHECK(sample(m, R"(hotrestart_upgrade_duration_seconds_count{outcome="done"})") == 1);
  CHECK(sample(m, R"(hotrestart_upgrade_duration_seconds_count{outcome="rolled-back"})") == 2);
  CHECK(sample(m, R"(hotrestart_upgrade_phase_duration_seconds_count{phase="handshake"})") == 2);
  CHECK(sample(m, R"(hotrestart_upgrade_phase_duration_seconds_bucket{phase="handshake",le="+Inf"})") == 2);
  CHECK(sample(m, R"(hotrestart_generations{state="ready"})") == 1);
  CHECK(sample(m, R"(hotrestart_generations{state="draining"})") == 0);
  CHECK(sample(m, "hotrestart_active_generation") == sup.active_generation());
  CHECK(sample(m, "hotrestart_generations_started_total") >= 3);
  CHECK(sample(m, R"(hotrestart_generations_exited_total{state="draining"})") == 1);
  CHECK(sample(m, "hotrestart_drains_total") == 1);
  CHECK(sample(m, "hotrestart_drain_kills_total") == 0);
  CHECK(sample(m, R"(hotrestart_control_requests_total{command="upgrade"})") == 3);
  CHECK(sample(m, R"(hotrestart_control_requests_total{command="status"})") >= 1);
  CHECK(sample(m, "hotrestart_listeners") == 1);
  CHECK(sample(m, "hotrestart_metrics_scrapes_total") == 1);
  CHECK(sample(m, "process_resident_memory_bytes") > 0);
  // The release that serves, by number, origin and executable.
  const json release = sup.status_or_fail()["release"];
  CHECK(contains(
      m, fmt::format("hotrestart_release_info{{release=\"{}\",origin=\"upgrade\",sha256=\"", release.get<int>())));
  CHECK(promtool_check(sup.dir(), m) == "");

  // A second scrape counts itself.
  CHECK(sample(scrape(address).body, "hotrestart_metrics_scrapes_total") == 2);
  sup.stop();
}

TEST_CASE("metrics: a worker's gauges carry its generation and go with it, and bad ones are refused") {
  Supervisor sup({"--metrics", "tcp://127.0.0.1:0"},
                 {test_worker_bin(), "notify",
                  "X_HOTRESTART_METRIC=queue_depth 7\nX_HOTRESTART_METRIC=hit_ratio 0.25\n"
                  "X_HOTRESTART_METRIC=9lives 1\nX_HOTRESTART_METRIC=broken NaN"});
  const std::string address = metrics_address(sup);
  std::string m;
  REQUIRE_MESSAGE(wait_until(
                      [&] {
                        m = scrape(address).body;
                        return sample(m, R"(hotrestart_worker_queue_depth{generation="1",release="1"})").has_value();
                      },
                      10s),
                  m);
  CHECK(sample(m, R"(hotrestart_worker_queue_depth{generation="1",release="1"})") == 7);
  CHECK(sample(m, R"(hotrestart_worker_hit_ratio{generation="1",release="1"})") == 0.25);
  CHECK_FALSE(contains(m, "9lives"));
  CHECK_FALSE(contains(m, "broken"));
  CHECK(contains(m, "# TYPE hotrestart_worker_queue_depth gauge"));
  CHECK(promtool_check(sup.dir(), m) == "");
  REQUIRE(wait_until(
      [&] {
        return contains(sup.proc().err(), "X_HOTRESTART_METRIC ignored: metric name '9lives'") &&
               contains(sup.proc().err(), "X_HOTRESTART_METRIC ignored: metric broken: value 'NaN'");
      },
      5s));

  // The next generation publishes its own; the old one's go when it exits.
  RunResult r = sup.upgrade_to({test_worker_bin(), "notify", "X_HOTRESTART_METRIC=queue_depth 3"});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  REQUIRE_MESSAGE(wait_until(
                      [&] {
                        m = scrape(address).body;
                        return !contains(m, "generation=\"1\"") &&
                               sample(m, R"(hotrestart_worker_queue_depth{generation="2",release="2"})") == 3;
                      },
                      20s),
                  m);
  CHECK_FALSE(contains(m, "hotrestart_worker_hit_ratio"));
  sup.stop();
}

TEST_CASE("metrics: bad requests get a 4xx answer, idle connections are dropped, and the endpoint serves on") {
  Supervisor sup({"--metrics", "tcp://127.0.0.1:0"}, hello("v1"));
  const std::string address = metrics_address(sup);
  const std::uint16_t port = port_of(address);

  CHECK(talk(port, "NOT HTTP AT ALL\r\n\r\n").starts_with("HTTP/1.1 400 "));
  const std::string post = talk(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  CHECK(post.starts_with("HTTP/1.1 405 "));
  CHECK(contains(post, "Allow: GET, HEAD\r\n"));
  CHECK(talk(port, "GET /secrets HTTP/1.1\r\nHost: x\r\n\r\n").starts_with("HTTP/1.1 404 "));
  CHECK(talk(port, "GET /metrics HTTP/1.1\r\nX-Pad: " + std::string(9000, 'a') + "\r\n\r\n")
            .starts_with("HTTP/1.1 431 "));
  const std::string head = talk(port, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(head.starts_with("HTTP/1.1 200 "));
  CHECK(head.ends_with("\r\n\r\n"));  // Headers only.

  // More idle connections than the endpoint keeps: the oldest are dropped, a scrape still works.
  std::vector<int> idle;
  for (int i = 0; i < 20; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    idle.push_back(fd);
  }
  const Scrape s = scrape(address);
  CHECK(s.code == 200);
  CHECK(contains(s.body, "hotrestart_build_info{version=\""));
  for (int fd : idle)
    ::close(fd);
  // A connection that says nothing is closed once the request deadline has passed.
  const auto before = std::chrono::steady_clock::now();
  CHECK(talk(port, "", 15s).empty());
  CHECK(std::chrono::steady_clock::now() - before < 14s);
  // The supervisor never noticed: its worker serves.
  CHECK(contains(http_get(sup.port(), "/"), "version=v1"));
  sup.stop();
}

TEST_CASE("metrics: on a unix socket, and a bad or taken address is refused at start") {
  TempDir dir;
  const std::string path = dir.file("metrics.sock");
  {
    Supervisor sup({"--metrics", "unix:" + path}, hello("v1"));
    CHECK(metrics_address(sup) == "unix:" + path);
    CHECK(contains(sup.cli({"status"}).out, "metrics:     unix:" + path + " ("));
    const Scrape s = scrape("unix:" + path);
    CHECK(s.code == 200);
    CHECK(sample(s.body, R"(hotrestart_generations{state="ready"})") == 1);
    sup.stop();
  }
  CHECK(::access(path.c_str(), F_OK) != 0);  // Removed at the stop.

  RunResult bad = run({hotrestart_bin(), "run", "--control", dir.file("c.sock"), "--listen", "tcp://127.0.0.1:0",
                       "--metrics", "http://127.0.0.1:9100", "--", hello_bin()});
  CHECK(bad.exit_code == 2);
  CHECK_MESSAGE(contains(bad.err, "invalid --metrics 'http://127.0.0.1:9100': write tcp://HOST:PORT or unix:PATH"),
                bad.err);

  // A port that is taken: the supervisor does not start (nothing is left behind).
  Supervisor holder({"--metrics", "tcp://127.0.0.1:0"}, hello("v1"));
  const std::string taken = metrics_address(holder);
  RunResult busy = run({hotrestart_bin(), "run", "--control", dir.file("d.sock"), "--state-dir", dir.file("state"),
                        "--listen", "tcp://127.0.0.1:0", "--metrics", "tcp://" + taken, "--", hello_bin()});
  CHECK(busy.exit_code == 1);
  CHECK_MESSAGE(contains(busy.err, fmt::format("--metrics tcp://{}", taken)), busy.err);
  CHECK_MESSAGE(contains(busy.err, "Address already in use"), busy.err);
  holder.stop();
}

TEST_CASE("metrics: kv-cache publishes its gauges through the SDK, and its state transfer is counted") {
  Supervisor sup({"--metrics", "tcp://127.0.0.1:0", "--drain-timeout", "10s", "--no-park"}, {bin_path("kv-cache-v1")});
  const std::string address = metrics_address(sup);
  const std::string base = fmt::format("http://127.0.0.1:{}/kv/", sup.port());
  for (int i = 0; i < 5; ++i) {
    RunResult put = run({"curl", "-sS", "--max-time", "5", "-X", "PUT", "--data", fmt::format("value {}", i),
                         base + fmt::format("key{}", i)},
                        {}, 10s);
    REQUIRE_MESSAGE(put.exit_code == 0, put.err);
  }
  CHECK(contains(http_get(sup.port(), "/kv/key1"), "value 1"));  // A hit.
  http_get(sup.port(), "/kv/absent");                            // A miss.
  std::string m;
  REQUIRE_MESSAGE(wait_until(
                      [&] {
                        m = scrape(address).body;
                        // Published once a second: until the one after both reads, a sample may show one.
                        return sample(m, R"(hotrestart_worker_kv_entries{generation="1",release="1"})") == 5 &&
                               sample(m, R"(hotrestart_worker_kv_hits{generation="1",release="1"})") == 1 &&
                               sample(m, R"(hotrestart_worker_kv_misses{generation="1",release="1"})") == 1;
                      },
                      10s),
                  m);
  CHECK(sample(m, R"(hotrestart_worker_kv_hit_ratio{generation="1",release="1"})") == 0.5);
  CHECK(sample(m, R"(hotrestart_worker_sdk_deltas_applied{generation="1",release="1"})") == 0);

  RunResult r = sup.upgrade_to({bin_path("kv-cache-v2")});
  REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
  REQUIRE_MESSAGE(wait_until(
                      [&] {
                        m = scrape(address).body;
                        return sample(m, R"(hotrestart_worker_kv_entries{generation="2",release="2"})") == 5;
                      },
                      10s),
                  m);
  CHECK(sample(m, R"(hotrestart_state_section_imports_total{section="cache",outcome="ok"})") == 1);
  CHECK(sample(m, R"(hotrestart_state_section_bytes_total{section="cache"})") > 0);
  CHECK(sample(m, R"(hotrestart_state_section_last_bytes{section="cache"})") ==
        sample(m, R"(hotrestart_state_section_bytes_total{section="cache"})"));
  CHECK(promtool_check(sup.dir(), m) == "");
  sup.stop();
}
