// The guard's pure parts: what it does for each generation once the supervisor is gone, and the
// guard link's messages, good and bad.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include <hotrestart/wire/channel.h>

#include "guard.h"
#include "guard_protocol.h"

using namespace hotrestart;
using nlohmann::json;

namespace {

GuardGeneration sample(GuardRole role, std::int64_t kill_at_ns = 0) {
  GuardGeneration g;
  g.number = 7;
  g.pid = 4242;
  g.start = 98765;
  g.role = role;
  g.kill_at_ns = kill_at_ns;
  g.drain_signal = 15;
  g.drain_ms = 2'000;
  return g;
}

}  // namespace

TEST_CASE("guard: the orphan plan leaves the active generation alone and ends the others on time") {
  const std::int64_t now = 1'000'000'000;
  const OrphanPlan active = plan_for_orphan(sample(GuardRole::Active), now);
  CHECK_FALSE(active.drain_now);
  CHECK(active.kill_at_ns == 0);

  const OrphanPlan candidate = plan_for_orphan(sample(GuardRole::Candidate), now);
  CHECK(candidate.drain_now);
  CHECK(candidate.kill_at_ns == now + 2'000'000'000);

  // A draining generation keeps the deadline it had; without one, its drain timeout counts from now.
  const OrphanPlan draining = plan_for_orphan(sample(GuardRole::Draining, now + 5), now);
  CHECK_FALSE(draining.drain_now);
  CHECK(draining.kill_at_ns == now + 5);
  CHECK(plan_for_orphan(sample(GuardRole::Draining), now).kill_at_ns == now + 2'000'000'000);
}

TEST_CASE("guard: a generation round-trips through JSON, and a bad one is refused with its reason") {
  for (GuardRole role : {GuardRole::Active, GuardRole::Candidate, GuardRole::Draining}) {
    const GuardGeneration g = sample(role, 123);
    auto back = guard_generation_from_json(to_json(g));
    REQUIRE(back);
    CHECK(*back == g);
  }
  auto with = [](const char* key, json value) {
    json j = to_json(sample(GuardRole::Active));
    j[key] = std::move(value);
    return guard_generation_from_json(j);
  };
  CHECK(with("role", "leader").error().text() == "unknown role 'leader'");
  CHECK(with("pid", -1).error().text() == "'pid' is out of range");
  CHECK(with("pid", 0).error().text() == "'pid' is out of range");
  CHECK(with("drain_signal", 65).error().text() == "'drain_signal' is out of range");
  CHECK(with("number", "7").error().text() == "'number' is missing or not an integer");
  CHECK(with("kill_at_ns", -5).error().text() == "'kill_at_ns' is out of range");
  CHECK(guard_generation_from_json(json::array()).error().text() == "a generation is not an object");
  json missing = to_json(sample(GuardRole::Active));
  missing.erase("start");
  CHECK(guard_generation_from_json(missing).error().text() == "'start' is missing or not an integer");
}

TEST_CASE("guard: link messages carry their descriptors, and bad datagrams are named") {
  auto pair = wire::seqpacket_pair();
  REQUIRE(pair);
  const int a = pair->first.get();
  const int b = pair->second.get();

  int pipe_fds[2];
  REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
  Fd read_end(pipe_fds[0]);
  Fd write_end(pipe_fds[1]);
  const int send_fds[] = {read_end.get()};
  REQUIRE(send_guard_message(a, {{"op", "generation"}, {"generation", to_json(sample(GuardRole::Active))}}, send_fds));
  auto m = receive_guard_message(b);
  REQUIRE(m);
  CHECK(m->body["op"] == "generation");
  CHECK(m->body["v"] == kGuardProtocolVersion);
  REQUIRE(m->fds.size() == 1);
  struct stat sent {
  }, got{};
  REQUIRE(::fstat(read_end.get(), &sent) == 0);
  REQUIRE(::fstat(m->fds[0].get(), &got) == 0);
  CHECK(sent.st_ino == got.st_ino);

  // Nothing waiting.
  CHECK(receive_guard_message(b).error().code() == EAGAIN);

  auto raw = [&](std::string text) {
    REQUIRE(wire::send_datagram(a, std::as_bytes(std::span(text)), {}, wire::Blocking::Yes, "raw"));
    return receive_guard_message(b);
  };
  CHECK(raw("not json").error().text() == "guard link: a message is not a JSON object");
  CHECK(raw("[1, 2]").error().text() == "guard link: a message is not a JSON object");
  CHECK(raw(R"({"v": 2, "op": "hello"})").error().text() ==
        "guard link: a message of another version (this end speaks 1)");
  CHECK(raw(R"({"v": 1})").error().text() == "guard link: a message without 'op'");
  CHECK(raw(std::string(kGuardMaxMessage + 10, ' ')).error().text().find("more than") != std::string::npos);

  // Too large to send at all.
  json big = {{"op", "hello"}, {"pad", std::string(kGuardMaxMessage, 'x')}};
  CHECK(send_guard_message(a, big).error().text().find("more than 65536") != std::string::npos);

  // End of file.
  pair->first.reset();
  CHECK(receive_guard_message(b).error().code() == EPIPE);
}
