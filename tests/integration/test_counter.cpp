// The counter example under a real supervisor: increments acknowledged by either generation, in
// the moment both take them, are counted exactly once across upgrades and downgrades.
#include <fmt/format.h>

#include <string>

#include "fixture.h"

using namespace hotrestart::it;

namespace {

std::vector<std::string> counter(const std::string& build) {
  return {bin_path("counter-" + build)};
}

// The number after `field=` in the answer to GET `path`, read with curl; -1 if it could not be read.
long long read_number(std::uint16_t port, const std::string& path, const std::string& field) {
  RunResult r = run({"curl", "-sS", "--max-time", "5", fmt::format("http://127.0.0.1:{}{}", port, path)}, {}, 10s);
  const std::size_t at = r.out.find(field + "=");
  if (r.exit_code != 0 || at == std::string::npos) return -1;
  return std::stoll(r.out.substr(at + field.size() + 1));
}

}  // namespace

TEST_CASE("counter: 16 clients incrementing through 10 upgrades between v1 and v2 lose and double nothing") {
  Supervisor sup({"--drain-timeout", "10s"}, counter("v1"));
  const std::uint16_t port = sup.port();
  LoadClient::Config cfg;
  cfg.port = port;
  cfg.mode = LoadClient::Mode::KeepAlive;
  cfg.threads = 16;
  cfg.path = "/incr/hits";
  cfg.think_time = std::chrono::microseconds(500);
  LoadClient load(cfg);
  load.start();
  REQUIRE(wait_until([&] { return load.ok_count() > 200; }, 10s));
  int upgrades = 0;
  long long received = 0;  // Increments that old generations made after the snapshot.
  for (int i = 0; i < 10; ++i) {
    const std::string build = i % 2 == 0 ? "v2" : "v1";
    const pid_t old_pid = sup.active_pid();
    const auto t0 = Clock::now();
    RunResult r = sup.upgrade_to(counter(build));
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
    ++upgrades;
    REQUIRE(wait_until([&] { return !pid_alive(old_pid); }, 15s));
    MESSAGE("upgrade " << i + 1 << " to " << build << ": old generation gone after "
                       << std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count() << " ms");
    const long long from_previous = read_number(port, "/stats", "received");
    CHECK(from_previous >= 0);
    received += from_previous;
    const std::size_t counted = load.ok_count();
    REQUIRE(wait_until([&] { return load.ok_count() > counted + 100; }, 10s));
  }
  load.stop();
  CHECK(upgrades == 10);

  // Every 200 is one increment the server acknowledged (ok_count); no other answer counted one.
  const std::size_t acknowledged = load.ok_count();
  std::map<long long, std::size_t> per_generation;
  for (const auto& r : load.responses()) {
    if (r.status == 200) ++per_generation[r.generation];
  }
  INFO(load.summary());
  REQUIRE(load.responses().size() == load.request_count() - load.failure_count());  // All were kept.
  CHECK(read_number(port, "/count/hits", "count") == static_cast<long long>(acknowledged));
  // The generations overlapped: old ones counted increments after their snapshot, which reached
  // the new ones as operations.
  MESSAGE(acknowledged << " increments acknowledged, " << received << " of them carried as operations");
  CHECK(received > 0);
  CHECK(load.failure_count() == 0);
  // Every generation counted some of them.
  CHECK(per_generation.size() == 11);
  sup.stop();
}
