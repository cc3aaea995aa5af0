// The worker SDK without a supervisor: the stub session, the fallback modes, and the rules of
// pass_fd and publish_delta. The state goes through the real section codec and a real socket.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <sstream>
#include <string>

#include <hotrestart/archive.h>
#include <hotrestart/testing.h>
#include <hotrestart/worker.h>
#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>

using hotrestart::Fd;
using hotrestart::Worker;
using hotrestart::testing::StubSupervisor;

namespace {

// A tiny application: a map that it saves in schema 1 ({key: value}) or 2 (with a label).
struct App {
  std::map<std::string, std::string> data;
  std::vector<std::pair<std::uint32_t, std::string>> deltas;
  std::vector<std::string> fds_received;
  bool previous_gone = false;

  void attach(Worker& w, std::vector<std::uint32_t> versions) {
    w.add_section({.name = "data",
                   .versions = std::move(versions),
                   .save =
                       [this](std::uint32_t v, std::ostream& out) {
                         hotrestart::OutputArchive ar(out);
                         if (v == 2) ar(std::string("label"));
                         ar(data);
                       },
                   .load =
                       [this](std::uint32_t v, std::istream& in) {
                         hotrestart::InputArchive ar(in);
                         std::string label;
                         if (v == 2) ar(label);
                         std::map<std::string, std::string> staging;
                         ar(staging);
                         data.swap(staging);
                       },
                   .apply_delta = [this](std::uint32_t v, std::string_view d) { deltas.emplace_back(v, d); }});
    w.on_fd([this](std::string name, Fd fd) {
      if (fd) fds_received.push_back(name);
    });
    w.on_previous_gone([this] { previous_gone = true; });
  }
};

Worker::Options local() {
  Worker::Options o;
  o.fallback_listen = {{"http", "127.0.0.1:0"}};
  return o;
}

}  // namespace

TEST_CASE("sdk: a stub worker binds its fallback listeners and starts cold") {
  Worker w(local());
  App app;
  app.attach(w, {1});
  REQUIRE(StubSupervisor::start(w) == "");
  CHECK(w.mode() == hotrestart::Mode::Stub);
  CHECK(w.generation() == 1);
  CHECK(w.listener_names() == std::vector<std::string>{"http"});
  const int fd = w.listener("http");
  REQUIRE(fd >= 0);
  int type = 0;
  socklen_t len = sizeof type;
  REQUIRE(::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &type, &len) == 0);
  CHECK(type == 1);  // Listening.
  CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
  CHECK(w.listener("nope") == -1);
  REQUIRE(w.imported().size() == 1);
  CHECK_FALSE(w.imported()[0].imported);
  CHECK_FALSE(StubSupervisor::is_ready(w));
  w.ready();
  CHECK(StubSupervisor::is_ready(w));
  CHECK(StubSupervisor::start(w) == "hotrestart::Worker::start() was called twice");
}

TEST_CASE("sdk: a first generation is active at once, the next one a candidate until the cutover") {
  Worker v1(local()), v2(local());
  int v1_active = 0, v2_active = 0;
  v1.on_active([&] { ++v1_active; });
  v2.on_active([&] { ++v2_active; });
  REQUIRE(StubSupervisor::start(v1) == "");
  CHECK(v1.active());
  CHECK(v1_active == 1);
  REQUIRE(StubSupervisor::start_from(v2, v1) == "");
  CHECK_FALSE(v2.active());
  CHECK(v2_active == 0);
  StubSupervisor::cut_over(v2);
  StubSupervisor::drain(v1);
  CHECK(v2.active());
  CHECK(v2_active == 1);
  CHECK_FALSE(v1.active());
  StubSupervisor::cut_over(v2);  // Told twice: once is enough.
  CHECK(v2_active == 1);
}

TEST_CASE("sdk: state moves to the next generation in the newest common schema, both ways") {
  Worker v1(local());
  App a1;
  a1.attach(v1, {1});
  REQUIRE(StubSupervisor::start(v1) == "");
  for (int i = 0; i < 500; ++i)
    a1.data["k" + std::to_string(i)] = std::string(100, 'x') + std::to_string(i);

  Worker v2(local());
  App a2;
  a2.attach(v2, {1, 2});
  REQUIRE(StubSupervisor::start_from(v2, v1) == "");
  CHECK(v2.generation() == 2);
  REQUIRE(v2.imported().size() == 1);
  CHECK(v2.imported()[0].imported);
  CHECK(v2.imported()[0].version == 1);
  CHECK(v2.imported()[0].bytes > 500 * 100);
  CHECK(a2.data == a1.data);

  Worker v3(local());
  App a3;
  a3.attach(v3, {1, 2});
  REQUIRE(StubSupervisor::start_from(v3, v2) == "");
  CHECK(v3.imported()[0].version == 2);
  CHECK(a3.data == a1.data);

  Worker back(local());
  App a4;
  a4.attach(back, {1});
  REQUIRE(StubSupervisor::start_from(back, v3) == "");
  CHECK(back.imported()[0].version == 1);
  CHECK(a4.data == a1.data);
}

TEST_CASE("sdk: a section that cannot be imported starts cold with its reason and leaves the data alone") {
  Worker v1(local());
  App a1;
  a1.attach(v1, {1});
  REQUIRE(StubSupervisor::start(v1) == "");
  a1.data["k"] = "v";

  SUBCASE("no common version") {
    Worker v2(local());
    App a2;
    a2.attach(v2, {5});
    a2.data["before"] = "kept";
    REQUIRE(StubSupervisor::start_from(v2, v1) == "");
    CHECK_FALSE(v2.imported()[0].imported);
    CHECK(v2.imported()[0].reason == "no common schema version: the importer reads [5], the exporter writes [1]");
    CHECK(a2.data == std::map<std::string, std::string>{{"before", "kept"}});
  }
  SUBCASE("a load that throws") {
    Worker v2(local());
    v2.add_section({.name = "data",
                    .versions = {1},
                    .save = {},
                    .load = [](std::uint32_t, std::istream&) { throw std::runtime_error("disk full"); },
                    .apply_delta = {}});
    REQUIRE(StubSupervisor::start_from(v2, v1) == "");
    CHECK_FALSE(v2.imported()[0].imported);
    CHECK(v2.imported()[0].reason == "its load function failed: disk full");
  }
  SUBCASE("a save that throws") {
    Worker broken(local());
    broken.add_section({.name = "data",
                        .versions = {1},
                        .save = [](std::uint32_t, std::ostream&) { throw std::runtime_error("lock timeout"); },
                        .load = {},
                        .apply_delta = {}});
    REQUIRE(StubSupervisor::start(broken) == "");
    Worker v2(local());
    App a2;
    a2.attach(v2, {1});
    REQUIRE(StubSupervisor::start_from(v2, broken) == "");
    CHECK_FALSE(v2.imported()[0].imported);
    CHECK(v2.imported()[0].reason.find("lock timeout") != std::string::npos);
    CHECK(a2.data.empty());
  }
  SUBCASE("a section larger than the importer takes") {
    Worker::Options o = local();
    o.max_section_bytes = 4;
    Worker v2(o);
    App a2;
    a2.attach(v2, {1});
    REQUIRE(StubSupervisor::start_from(v2, v1) == "");
    CHECK_FALSE(v2.imported()[0].imported);
    // {"k": "v"} in cereal's layout: a count and two strings, 8 + 9 + 9 bytes.
    CHECK(v2.imported()[0].reason == "section 'data': the offer's payload of 26 bytes is over the limit of 4");
    CHECK(a2.data.empty());
  }
  SUBCASE("a section the previous generation does not have") {
    Worker v2(local());
    App a2;
    a2.attach(v2, {1});
    v2.add_section({.name = "sessions",
                    .versions = {1},
                    .save = {},
                    .load = [](std::uint32_t, std::istream&) {},
                    .apply_delta = {}});
    REQUIRE(StubSupervisor::start_from(v2, v1) == "");
    REQUIRE(v2.imported().size() == 2);
    for (const auto& s : v2.imported()) {
      if (s.name == "sessions") {
        CHECK_FALSE(s.imported);
        CHECK(s.reason == "generation 1 has no section 'sessions' to export");
      } else {
        CHECK(s.imported);
      }
    }
  }
}

TEST_CASE("sdk: descriptors passed before an upgrade go with the state, later ones at once") {
  Worker v1(local());
  App a1;
  a1.attach(v1, {1});
  REQUIRE(StubSupervisor::start(v1) == "");
  Fd memfd(::memfd_create("extra", MFD_CLOEXEC));
  REQUIRE(::write(memfd.get(), "hello", 5) == 5);
  CHECK(v1.pass_fd("extra", memfd.get()));
  CHECK_FALSE(v1.pass_fd("not a name", memfd.get()));

  Worker v2(local());
  App a2;
  a2.attach(v2, {1});
  REQUIRE(StubSupervisor::start_from(v2, v1) == "");
  Fd got = v2.take_fd("extra");
  REQUIRE(got);
  CHECK((::fcntl(got.get(), F_GETFD) & FD_CLOEXEC) != 0);
  char buf[8] = {};
  CHECK(::pread(got.get(), buf, sizeof buf, 0) == 5);
  CHECK(std::string(buf) == "hello");
  CHECK_FALSE(v2.take_fd("extra"));  // Taken once.

  // During the drain, a passed descriptor reaches the next generation through on_fd.
  StubSupervisor::drain(v1);
  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
  Fd a(pair[0]);
  Fd b(pair[1]);
  CHECK(v1.pass_fd("conn", a.get()));
  CHECK(StubSupervisor::pump(v2) == 1);
  CHECK(a2.fds_received == std::vector<std::string>{"conn"});

  // Once the old generation is gone, the new one hears of it, and nothing more can be passed.
  StubSupervisor::end_previous(v1);
  StubSupervisor::pump(v2);
  CHECK(a2.previous_gone);
  CHECK_FALSE(v1.pass_fd("conn", a.get()));
}

TEST_CASE("sdk: changes after the snapshot stream to the next generation as deltas") {
  Worker v1(local());
  App a1;
  a1.attach(v1, {1, 2});
  REQUIRE(StubSupervisor::start(v1) == "");
  int encoded = 0;
  auto encode = [&](std::uint32_t v) {
    ++encoded;
    return "put k" + std::to_string(encoded) + " v" + std::to_string(v);
  };
  // No transfer under way: nothing is encoded, and the change is not refused.
  CHECK(v1.publish_delta("data", encode));
  CHECK(encoded == 0);

  Worker v2(local());
  App a2;
  a2.attach(v2, {2});
  REQUIRE(StubSupervisor::start_from(v2, v1) == "");
  CHECK(v1.publish_delta("data", encode));
  CHECK(v1.publish_delta("data", encode));
  CHECK(v1.publish_delta("other-section", encode));  // Not streamed: nothing to do.
  CHECK(encoded == 2);
  CHECK(StubSupervisor::pump(v2) == 2);
  REQUIRE(a2.deltas.size() == 2);
  CHECK(a2.deltas[0] == std::pair<std::uint32_t, std::string>{2, "put k1 v2"});
  CHECK(a2.deltas[1] == std::pair<std::uint32_t, std::string>{2, "put k2 v2"});

  // A change too large for one message travels in a memfd and arrives whole.
  std::string large(100'000, 'x');
  large[77'777] = 'y';
  CHECK(v1.publish_delta("data", [&](std::uint32_t) { return large; }));
  CHECK(StubSupervisor::pump(v2) == 1);
  REQUIRE(a2.deltas.size() == 3);
  CHECK(a2.deltas[2].second == large);
}

TEST_CASE("sdk: a change larger than max_delta_bytes is refused, so it is not acknowledged") {
  Worker::Options o = local();
  o.max_delta_bytes = 1000;
  Worker v1(o);
  App a1;
  a1.attach(v1, {1});
  REQUIRE(StubSupervisor::start(v1) == "");
  Worker v2(local());
  App a2;
  a2.attach(v2, {1});
  REQUIRE(StubSupervisor::start_from(v2, v1) == "");
  CHECK(v1.publish_delta("data", [](std::uint32_t) { return std::string(1000, 'x'); }));
  CHECK_FALSE(v1.publish_delta("data", [](std::uint32_t) { return std::string(1001, 'x'); }));
  CHECK(StubSupervisor::pump(v2) == 1);
  CHECK(a2.deltas.size() == 1);
}

TEST_CASE("sdk: a worker started by hand binds its fallback addresses, and bad ones are named") {
  ::unsetenv("HOTRESTART_CHANNEL_FD");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_PID");
  {
    Worker w(local());
    REQUIRE(w.start() == "");
    CHECK(w.mode() == hotrestart::Mode::Standalone);
    CHECK(w.listener("http") >= 0);
  }
  {
    Worker::Options o;
    o.fallback_listen = {{"http", "example.com:80"}};
    Worker w(o);
    CHECK(w.start() == "listener http (example.com:80): 'example.com' is not a numeric IPv4 or IPv6 address");
  }
  {
    Worker w(local());
    w.add_section({.name = "bad name", .versions = {1}, .save = {}, .load = {}, .apply_delta = {}});
    CHECK(w.start() == "section name 'bad name' is not valid (1-64 of A-Z a-z 0-9 . _ -)");
  }
  {
    Worker w(local());
    w.add_section(
        {.name = "zero", .versions = {0}, .save = [](std::uint32_t, std::ostream&) {}, .load = {}, .apply_delta = {}});
    CHECK(w.start() == "section 'zero': schema versions start at 1");
  }
}

TEST_CASE("sdk: a worker started by systemd takes LISTEN_FDS by name") {
  int pair[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
  // Put the socket at fd 3 (and 4) as systemd would; remember what was there to restore it.
  const int saved3 = ::fcntl(3, F_DUPFD_CLOEXEC, 100);
  const int saved4 = ::fcntl(4, F_DUPFD_CLOEXEC, 100);
  REQUIRE(::dup2(pair[0], 3) == 3);
  REQUIRE(::dup2(pair[1], 4) == 4);
  ::close(pair[0]);
  ::close(pair[1]);
  ::setenv("LISTEN_PID", std::to_string(::getpid()).c_str(), 1);
  ::setenv("LISTEN_FDS", "2", 1);
  ::setenv("LISTEN_FDNAMES", "http:admin", 1);
  {
    Worker w(local());
    REQUIRE(w.start() == "");
    CHECK(w.mode() == hotrestart::Mode::Systemd);
    CHECK(w.listener("http") == 3);
    CHECK(w.listener("admin") == 4);
    CHECK((::fcntl(3, F_GETFD) & FD_CLOEXEC) != 0);
    CHECK(std::getenv("LISTEN_FDS") == nullptr);  // Not passed on to programs the worker starts.
  }                                               // The Worker closes fds 3 and 4.
  for (auto [saved, fd] : {std::pair{saved3, 3}, std::pair{saved4, 4}}) {
    if (saved >= 0) {
      ::dup2(saved, fd);
      ::close(saved);
    }
  }
}
