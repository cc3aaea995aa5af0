// --adopt-binds, the supervisor's side: which programs can be preloaded, how a draining
// generation's connections are counted, the library's notify line and the command page.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "../../supervisor/adopt/adopt_page.h"
#include "adopt.h"
#include "notify_message.h"

using namespace hotrestart;

namespace {

// A directory of its own under /tmp, removed at the end.
struct Scratch {
  Scratch() {
    char name[] = "/tmp/hotrestart-adopt-test.XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    dir = name;
  }
  ~Scratch() { (void)std::system(("rm -rf '" + dir + "'").c_str()); }
  std::string file(const std::string& name, const std::string& content, mode_t mode) const {
    const std::string path = dir + "/" + name;
    std::ofstream(path) << content;
    REQUIRE(::chmod(path.c_str(), mode) == 0);
    return path;
  }
  std::string dir;
};

std::string error_of(const std::string& executable) {
  auto s = check_preloadable(executable);
  return s ? std::string() : s.error().text();
}

}  // namespace

TEST_CASE("adopt: dynamically linked programs and scripts can be preloaded, and others are refused with the reason") {
  CHECK(error_of("/usr/bin/env") == "");
  CHECK(error_of("/bin/sh") == "");
  Scratch scratch;
  CHECK(error_of(scratch.file("script", "#!/bin/sh -e\necho hi\n", 0755)) == "");
  CHECK(error_of(scratch.file("env-script", "#!/usr/bin/env python3\n", 0755)) == "");
  if (::access("/sbin/ldconfig", X_OK) == 0) {  // Debian's is statically linked.
    CHECK(error_of("/sbin/ldconfig")
              .starts_with(
                  "/sbin/ldconfig is statically linked, so no library can be preloaded into it: --adopt-binds needs a "
                  "dynamically linked server"));
    // A script is judged by its interpreter.
    CHECK(error_of(scratch.file("static-script", "#!/sbin/ldconfig\n", 0755))
              .starts_with("/sbin/ldconfig is statically linked"));
  }
  const std::string text = scratch.file("text", "hello\n", 0755);
  CHECK(error_of(text) == text + ": neither an ELF executable nor a script");
  const std::string empty_script = scratch.file("empty", "#!\n", 0755);
  CHECK(error_of(empty_script) == empty_script + ": a script with no interpreter");
  const std::string nested = scratch.file("nested", "#!" + scratch.dir + "/script\n", 0755);
  CHECK(error_of(nested) == scratch.dir + "/script: an interpreter that is itself a script");
  CHECK(error_of(scratch.dir + "/missing") == scratch.dir + "/missing: No such file or directory");

  // Set-user-ID: a copy of a dynamically linked program with the bit set.
  const std::string setuid = scratch.dir + "/setuid-env";
  REQUIRE(std::system(("cp /usr/bin/env '" + setuid + "'").c_str()) == 0);
  REQUIRE(::chmod(setuid.c_str(), 04755) == 0);
  CHECK(error_of(setuid) == setuid +
                                " is set-user-ID or set-group-ID, and the dynamic linker ignores LD_PRELOAD for "
                                "such programs: --adopt-binds cannot work with it");

  // File capabilities (what `setcap cap_net_bind_service+ep` writes: a version 2 vfs_cap_data).
  const std::string capable = scratch.dir + "/capable-env";
  REQUIRE(std::system(("cp /usr/bin/env '" + capable + "'").c_str()) == 0);
  const std::uint32_t cap_data[5] = {0x02000000u | 0x1u /* VFS_CAP_REVISION_2, effective */, 1u << 10, 0, 0, 0};
  if (::setxattr(capable.c_str(), "security.capability", cap_data, sizeof cap_data, 0) != 0) {
    MESSAGE("file capabilities not checked: setxattr(security.capability) failed here: " << std::strerror(errno));
  } else {
    CHECK(error_of(capable) == capable +
                                   " has file capabilities (setcap), and the dynamic linker ignores LD_PRELOAD for "
                                   "such programs: --adopt-binds cannot work with it");
  }
}

TEST_CASE("adopt: a process group's connections on a port are counted, listeners and other ports not") {
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(listener >= 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(listener, 8) == 0);
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len) == 0);
  const auto port = ntohs(a.sin_port);
  const pid_t group = ::getpgrp();
  CHECK(count_connections(group, {port}) == 0);  // The listener does not count.

  const int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(::connect(client, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  const int accepted = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  REQUIRE(accepted >= 0);
  // The accepted end is on the port; the client's end is on an ephemeral one.
  CHECK(count_connections(group, {port}) == 1);
  CHECK(count_connections(group, {static_cast<std::uint16_t>(port + 1)}) == 0);
  // Another process group holds none of them.
  CHECK(count_connections(999999, {port}) == 0);
  ::close(accepted);
  CHECK(count_connections(group, {port}) == 0);
  ::close(client);
  ::close(listener);
}

TEST_CASE("adopt: the library's notify line is understood") {
  CHECK(parse_notify("X_HOTRESTART_ADOPT=1").adopt);
  CHECK_FALSE(parse_notify("X_HOTRESTART_ADOPT=0").adopt);
  CHECK(parse_notify("X_HOTRESTART_ADOPT=1").problems.empty());
}

TEST_CASE("adopt: a command page wakes a process waiting on it in another process, and cannot be shrunk") {
  auto page = AdoptPage::create(true);
  REQUIRE_MESSAGE(page, page.error().text());
  // A child maps the page as the library does and waits for a command, then exits with the mode.
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    void* m = ::mmap(nullptr, HR_ADOPT_PAGE_SIZE, PROT_READ, MAP_SHARED, page->fd(), 0);
    if (m == MAP_FAILED) ::_exit(90);
    const auto* p = static_cast<const hr_adopt_page*>(m);
    if (p->magic != HR_ADOPT_PAGE_MAGIC || p->flags != HR_ADOPT_HTTP_DRAIN) ::_exit(91);
    // Waits for the first change, however late it comes.
    while (__atomic_load_n(&p->seq, __ATOMIC_ACQUIRE) == 0)
      ::syscall(SYS_futex, &p->seq, FUTEX_WAIT, 0, nullptr, nullptr, 0);
    ::_exit(static_cast<int>(__atomic_load_n(&p->mode, __ATOMIC_ACQUIRE)));
  }
  page->set(AdoptMode::Park);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == HR_ADOPT_PARK);
  // The seals keep a generation from making the supervisor's next write a SIGBUS.
  CHECK(::ftruncate(page->fd(), 0) != 0);
  CHECK(errno == EPERM);
}

TEST_CASE("adopt: a command page is found again through /proc, and anything else is refused with a sentence") {
  auto page = AdoptPage::create(false);
  REQUIRE(page);
  page->set(AdoptMode::Drain);
  auto found = AdoptPage::find(::getpid(), page->fd());
  REQUIRE_MESSAGE(found, found.error().text());
  CHECK(found->mode() == AdoptMode::Drain);
  found->set(AdoptMode::Serve);
  CHECK(AdoptPage::find(::getpid(), page->fd())->mode() == AdoptMode::Serve);

  int pipe_fds[2];
  REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
  auto not_page = AdoptPage::find(::getpid(), pipe_fds[0]);
  REQUIRE_FALSE(not_page);
  CHECK(not_page.error().text() ==
        fmt::format("the command page of pid {} (descriptor {}): not a command page", ::getpid(), pipe_fds[0]));
  ::close(pipe_fds[0]);
  ::close(pipe_fds[1]);
  auto gone = AdoptPage::find(::getpid(), 999);
  REQUIRE_FALSE(gone);
  CHECK(gone.error().text().starts_with(fmt::format("the command page of pid {} (descriptor 999)", ::getpid())));
}
