// /proc/PID/stat parsing, and the roster that places a process under its generation even after it
// left the process group.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "port_holders.h"
#include "process_table.h"

using namespace hotrestart;

namespace {

// Forks a child that leads a process group of its own and whose own child has called setsid(), as
// a daemon does; both wait for a signal. Returns once the grandchild is in its session.
pid_t fork_with_daemon() {
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::setpgid(0, 0);
    if (::fork() == 0) {
      ::setsid();
      const char c = 'x';
      (void)!::write(ready[1], &c, 1);
      ::pause();
      ::_exit(0);
    }
    ::pause();
    ::_exit(0);
  }
  ::close(ready[1]);
  char c = 0;
  REQUIRE(::read(ready[0], &c, 1) == 1);
  ::close(ready[0]);
  return child;
}

}  // namespace

TEST_CASE("process table: a stat line whose command holds spaces and parentheses") {
  const std::string line =
      "4242 (a (b) c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 200 "
      "18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n";
  const auto e = parse_process_stat(line);
  REQUIRE(e.has_value());
  CHECK(e->pid == 4242);
  CHECK(e->state == 'S');
  CHECK(e->ppid == 17);
  CHECK(e->pgid == 4242);
  CHECK(e->sid == 4242);
  CHECK(e->start == 98765);
  CHECK_FALSE(parse_process_stat("4242 (cut short) S 17").has_value());
  CHECK_FALSE(parse_process_stat("x (y) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0").has_value());
  CHECK_FALSE(parse_process_stat("").has_value());
}

TEST_CASE("process table: this process is in it, as itself") {
  const auto table = read_process_table();
  REQUIRE(table.count(::getpid()) == 1);
  const ProcessEntry& me = table.at(::getpid());
  CHECK(me.ppid == ::getppid());
  CHECK(me.pgid == ::getpgrp());
  CHECK(me.state != 'Z');
  CHECK(read_process(::getpid()) == std::optional<ProcessEntry>(me));
}

TEST_CASE("process table: the descendants of a process are read through /proc, and nothing beside them") {
  // This process, its child (a group of its own) and that child's child (a session of its own).
  const pid_t child = fork_with_daemon();

  const auto table = read_descendants({::getpid()});
  REQUIRE(table.has_value());  // Debian's kernels list children.
  CHECK(table->count(::getpid()) == 1);
  REQUIRE(table->count(child) == 1);
  std::vector<pid_t> grandchildren;
  for (const auto& [pid, entry] : *table)
    if (entry.ppid == child) grandchildren.push_back(pid);
  REQUIRE(grandchildren.size() == 1);
  const pid_t grandchild = grandchildren[0];
  CHECK(table->at(grandchild).sid == grandchild);
  // Not this process's parent, nor anything else on the host.
  CHECK(table->count(::getppid()) == 0);
  CHECK(table->count(1) == 0);
  CHECK(table->size() < read_process_table().size());
  // From the grandchild alone: itself; a pid that names nothing is left out.
  const auto from_grandchild = read_descendants({grandchild, 0, -1});
  REQUIRE(from_grandchild.has_value());
  CHECK(from_grandchild->size() == 1);
  CHECK(from_grandchild->count(grandchild) == 1);

  ::kill(grandchild, SIGKILL);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
}

TEST_CASE("process roster: a grandchild that called setsid still belongs to the generation") {
  // This process plays the supervisor: its child the generation's main process, whose child leaves
  // the group.
  const pid_t main_pid = fork_with_daemon();

  ProcessRoster roster({::getpid(),
                        [&](pid_t pid) -> std::optional<std::uint64_t> {
                          if (pid == main_pid) return 7;
                          return std::nullopt;
                        },
                        [](pid_t) { return false; },
                        [](std::uint64_t) { return std::optional<std::uint64_t>(); },
                        {}});
  roster.refresh();
  const auto members = roster.members(7);
  REQUIRE(members.size() == 1);
  const ProcessEntry daemon = members[0];
  CHECK(daemon.ppid == main_pid);
  CHECK(daemon.pgid == daemon.pid);
  CHECK(roster.strays().empty());

  // Its parent is gone: it is still known by its pid and start time (here it goes to init or to a
  // subreaper above this process, not to this process, so only the memory of it places it).
  ::kill(main_pid, SIGKILL);
  ::waitpid(main_pid, nullptr, 0);
  roster.refresh();
  CHECK(roster.members(7) == std::vector<ProcessEntry>{[&] {
          auto now = read_process(daemon.pid);
          REQUIRE(now.has_value());
          return *now;
        }()});
  CHECK(signal_process(daemon, SIGKILL));
  // Once it is gone (or only a zombie), nothing is signalled in its name.
  for (int i = 0; i < 500; ++i) {
    const auto now = read_process(daemon.pid);
    if (!now || now->state == 'Z') break;
    ::usleep(2000);
  }
  CHECK_FALSE(signal_process(daemon, SIGKILL));
}

TEST_CASE("port holders: the listening sockets of a port in /proc/net/tcp and tcp6") {
  const std::string tcp =
      "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
      "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1047 1 0 100 0 0 10 "
      "0\n"
      "   1: 0100007F:1F90 0100007F:A800 01 00000000:00000000 00:00000000 00000000     0        0 2000 1 0\n"
      "   2: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3000 1 0\n"
      "   3: garbage\n"
      "   4: 0100007F:ZZZZ 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4000 1 0\n";
  // Port 8080 (0x1F90): the listening one only, not the established connection on it.
  CHECK(listening_inodes(tcp, 8080) == std::vector<std::uint64_t>{1047});
  CHECK(listening_inodes(tcp, 8081) == std::vector<std::uint64_t>{3000});
  CHECK(listening_inodes(tcp, 80).empty());
  const std::string tcp6 =
      "  sl  local_address                         remote_address                        st tx_queue rx_queue tr "
      "tm->when retrnsmt   uid  timeout inode\n"
      "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 "
      "00:00000000 00000000     0        0 5555 1 0 100 0 0 10 0\n";
  CHECK(listening_inodes(tcp6, 8080) == std::vector<std::uint64_t>{5555});
  CHECK(listening_inodes("", 8080).empty());
  CHECK(describe(std::vector<PortHolder>{{12, 0, "nginx"}, {34, 1000, "kv"}}) ==
        "pid 12 (nginx, uid 0), pid 34 (kv, uid 1000)");
}
