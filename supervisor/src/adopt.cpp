// --adopt-binds on the supervisor's side: finding the preload library, checking that a program can
// preload it, and counting a draining generation's connections (see adopt.h).
#include "adopt.h"

#include <dirent.h>
#include <elf.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <cerrno>
#include <climits>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "../adopt/adopt_page.h"

#include <hotrestart/fd.h>

#include "process_table.h"

#ifndef HOTRESTART_ADOPT_INSTALLED_DIR
#define HOTRESTART_ADOPT_INSTALLED_DIR "../lib/hotrestart"
#endif

namespace hotrestart {

namespace {

std::string self_directory() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return {};
  std::string path(buf, static_cast<std::size_t>(n));
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

bool readable_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), R_OK) == 0;
}

// Whether an ELF file has a program interpreter (is dynamically linked).
Result<bool> has_interpreter(int fd, const std::string& path) {
  Elf64_Ehdr eh{};
  if (::pread(fd, &eh, sizeof eh, 0) != static_cast<ssize_t>(sizeof eh) || eh.e_ident[EI_CLASS] != ELFCLASS64)
    return Error::message(fmt::format("{}: not a 64-bit ELF executable", path));
  if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > 4096)
    return Error::message(fmt::format("{}: its ELF program headers cannot be read", path));
  for (unsigned i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph{};
    const auto at = static_cast<off_t>(eh.e_phoff + i * sizeof ph);
    if (::pread(fd, &ph, sizeof ph, at) != static_cast<ssize_t>(sizeof ph))
      return Error::message(fmt::format("{}: its ELF program headers cannot be read", path));
    if (ph.p_type == PT_INTERP) return true;
  }
  return false;
}

// `name` is how messages call the file (its path, where `executable` is /proc/self/fd/N).
Status check_one(const std::string& executable, const std::string& name, int depth) {
  struct stat st {};
  if (::stat(executable.c_str(), &st) != 0) return Error::from_errno(name);
  if (!S_ISREG(st.st_mode)) return Error::message(fmt::format("{} is not a regular file", name));
  if ((st.st_mode & (S_ISUID | S_ISGID)) != 0)
    return Error::message(
        fmt::format("{} is set-user-ID or set-group-ID, and the dynamic linker ignores LD_PRELOAD for such programs: "
                    "--adopt-binds cannot work with it",
                    name));
  // File capabilities put the dynamic linker in secure mode too.
  if (::getxattr(executable.c_str(), "security.capability", nullptr, 0) > 0)
    return Error::message(
        fmt::format("{} has file capabilities (setcap), and the dynamic linker ignores LD_PRELOAD for such programs: "
                    "--adopt-binds cannot work with it",
                    name));
  // O_NONBLOCK: a FIFO put in the way after the check above must not block the supervisor.
  Fd fd(::open(executable.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) return Error::from_errno(name);
  char head[256] = {};
  const ssize_t n = ::pread(fd.get(), head, sizeof head - 1, 0);
  if (n >= 2 && head[0] == '#' && head[1] == '!') {
    if (depth > 0) return Error::message(fmt::format("{}: an interpreter that is itself a script", name));
    // "#!/usr/bin/env python3" or "#!/bin/sh -e": the interpreter is what gets preloaded.
    std::string first(head + 2, static_cast<std::size_t>(n - 2));
    first = first.substr(0, first.find('\n'));
    std::istringstream line(first);
    std::string interpreter;
    line >> interpreter;
    if (interpreter.empty()) return Error::message(fmt::format("{}: a script with no interpreter", name));
    return check_one(interpreter, interpreter, depth + 1);
  }
  if (n < 4 || std::memcmp(head, ELFMAG, SELFMAG) != 0)
    return Error::message(fmt::format("{}: neither an ELF executable nor a script", name));
  auto dynamic = has_interpreter(fd.get(), name);
  if (!dynamic) return dynamic.error();
  if (!dynamic.value())
    return Error::message(fmt::format(
        "{} is statically linked, so no library can be preloaded into it: --adopt-binds needs a dynamically "
        "linked server (or give the server the sockets itself: LISTEN_FDS, or the worker SDK)",
        name));
  return {};
}

// The socket inodes a process holds, from /proc/PID/fd. False when they cannot be read (a process
// that made itself non-dumpable, for one); a process that has just exited holds none.
bool socket_inodes(pid_t pid, std::set<unsigned long>& out) {
  const std::string dir = fmt::format("/proc/{}/fd", pid);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return errno == ENOENT;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char target[64];
    const ssize_t n = ::readlinkat(::dirfd(d), e->d_name, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    unsigned long inode = 0;
    if (std::sscanf(target, "socket:[%lu]", &inode) == 1) out.insert(inode);
  }
  ::closedir(d);
  return true;
}

// The processes of a process group, from /proc/PID/stat (field 5).
std::vector<pid_t> group_members(pid_t pgid) {
  std::vector<pid_t> out;
  for (const auto& [pid, entry] : read_process_table())
    if (entry.pgid == pgid) out.push_back(pid);
  return out;
}

}  // namespace

Result<std::string> find_adopt_library() {
  if (const char* env = std::getenv("HOTRESTART_ADOPT_LIBRARY"); env != nullptr && *env != '\0') {
    if (env[0] != '/') return Error::message(fmt::format("HOTRESTART_ADOPT_LIBRARY '{}' is not an absolute path", env));
    if (!readable_file(env))
      return Error::message(fmt::format("HOTRESTART_ADOPT_LIBRARY '{}' is not a readable file", env));
    return std::string(env);
  }
  const std::string dir = self_directory();
  std::vector<std::string> tried;
  // Beside the build tree's bin/ (as CMake lays it out), then where `cmake --install` puts it.
  for (const std::string rel : {"/../lib/", "/" HOTRESTART_ADOPT_INSTALLED_DIR "/"}) {
    std::string candidate = dir + rel + kAdoptLibraryName;
    if (readable_file(candidate)) {
      char resolved[4096];
      if (::realpath(candidate.c_str(), resolved) != nullptr) return std::string(resolved);
      return candidate;
    }
    tried.push_back(candidate);
  }
  return Error::message(
      fmt::format("--adopt-binds: cannot find {} (looked for {} and {}; set HOTRESTART_ADOPT_LIBRARY)",
                  kAdoptLibraryName, tried[0], tried[1]));
}

Status check_preloadable(const std::string& executable, const std::string& shown_as) {
  return check_one(executable, shown_as.empty() ? executable : shown_as, 0);
}

AdoptPage::AdoptPage(AdoptPage&& other) noexcept
    : fd_(std::move(other.fd_)), page_(std::exchange(other.page_, nullptr)), mode_(other.mode_) {}

AdoptPage& AdoptPage::operator=(AdoptPage&& other) noexcept {
  if (this != &other) {
    if (page_ != nullptr) ::munmap(page_, HR_ADOPT_PAGE_SIZE);
    fd_ = std::move(other.fd_);
    page_ = std::exchange(other.page_, nullptr);
    mode_ = other.mode_;
  }
  return *this;
}

AdoptPage::~AdoptPage() {
  if (page_ != nullptr) ::munmap(page_, HR_ADOPT_PAGE_SIZE);
}

namespace {

constexpr unsigned kPageSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;

Result<void*> map_page(int fd, const std::string& what) {
  void* m = ::mmap(nullptr, HR_ADOPT_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) return Error::from_errno(what + ": mmap");
  return m;
}

}  // namespace

Result<AdoptPage> AdoptPage::create(bool http_drain) {
  Fd fd(static_cast<int>(::syscall(SYS_memfd_create, HR_ADOPT_PAGE_NAME, MFD_CLOEXEC | MFD_ALLOW_SEALING)));
  if (!fd) return Error::from_errno("--adopt-binds: command page: memfd_create");
  if (::ftruncate(fd.get(), HR_ADOPT_PAGE_SIZE) != 0)
    return Error::from_errno("--adopt-binds: command page: ftruncate");
  // Sealed at its size: a generation holding it cannot shrink it under the supervisor's mapping,
  // which would make the supervisor's next write a SIGBUS.
  if (::fcntl(fd.get(), F_ADD_SEALS, kPageSeals) != 0) return Error::from_errno("--adopt-binds: command page: seals");
  auto m = map_page(fd.get(), "--adopt-binds: command page");
  if (!m) return m.error();
  AdoptPage page;
  page.fd_ = std::move(fd);
  page.page_ = m.value();
  auto* p = static_cast<hr_adopt_page*>(page.page_);
  p->magic = HR_ADOPT_PAGE_MAGIC;
  p->version = HR_ADOPT_PAGE_VERSION;
  p->mode = HR_ADOPT_SERVE;
  p->flags = http_drain ? HR_ADOPT_HTTP_DRAIN : 0;
  __atomic_store_n(&p->seq, 0, __ATOMIC_RELEASE);
  return page;
}

Result<AdoptPage> AdoptPage::find(pid_t pid, int fd) {
  const std::string path = fmt::format("/proc/{}/fd/{}", pid, fd);
  const std::string what = fmt::format("the command page of pid {} (descriptor {})", pid, fd);
  char target[256];
  const ssize_t n = ::readlink(path.c_str(), target, sizeof target - 1);
  if (n <= 0) return Error::from_errno(what);
  if (!std::string_view(target, static_cast<std::size_t>(n)).starts_with("/memfd:" HR_ADOPT_PAGE_NAME))
    return Error::message(what + ": not a command page");
  Fd opened(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!opened) return Error::from_errno(what);
  struct stat st {};
  const int seals = ::fcntl(opened.get(), F_GET_SEALS);
  if (::fstat(opened.get(), &st) != 0 || st.st_size != HR_ADOPT_PAGE_SIZE || seals < 0 ||
      (static_cast<unsigned>(seals) & kPageSeals) != kPageSeals)
    return Error::message(what + ": not a sealed page of the right size");
  auto m = map_page(opened.get(), what);
  if (!m) return m.error();
  AdoptPage page;
  page.fd_ = std::move(opened);
  page.page_ = m.value();
  auto* p = static_cast<hr_adopt_page*>(page.page_);
  if (p->magic != HR_ADOPT_PAGE_MAGIC || p->version != HR_ADOPT_PAGE_VERSION)
    return Error::message(
        fmt::format("{}: version {}, where this supervisor speaks {}", what, p->version, HR_ADOPT_PAGE_VERSION));
  // What it says now is what the last supervisor left: a generation could have written anything,
  // and the next command overwrites it.
  page.mode_ = p->mode <= HR_ADOPT_DRAIN ? static_cast<AdoptMode>(p->mode) : AdoptMode::Serve;
  return page;
}

void AdoptPage::set(AdoptMode mode) {
  if (page_ == nullptr) return;
  auto* p = static_cast<hr_adopt_page*>(page_);
  mode_ = mode;
  __atomic_store_n(&p->mode, static_cast<std::uint32_t>(mode), __ATOMIC_RELEASE);
  __atomic_add_fetch(&p->seq, 1, __ATOMIC_RELEASE);
  // A shared futex: the processes that wait on the page are others.
  ::syscall(SYS_futex, &p->seq, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

int count_connections(pid_t pgid, const std::vector<std::uint16_t>& ports) {
  std::set<unsigned long> inodes;
  for (pid_t pid : group_members(pgid))
    if (!socket_inodes(pid, inodes)) return -1;
  if (inodes.empty()) return 0;
  int count = 0;
  bool read_any = false;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(table);
    if (!in) continue;
    read_any = true;
    std::string line;
    std::getline(in, line);  // The column titles.
    while (std::getline(in, line)) {
      // "  sl  local_address rem_address   st tx_queue:rx_queue tr:tm->when retrnsmt   uid  timeout inode"
      std::istringstream fields(line);
      std::string sl, local, remote, state, queues, timer, retransmits, uid, timeout;
      unsigned long inode = 0;
      if (!(fields >> sl >> local >> remote >> state >> queues >> timer >> retransmits >> uid >> timeout >> inode))
        continue;
      if (state == "0A" || inodes.count(inode) == 0) continue;  // 0A: LISTEN.
      const auto colon = local.rfind(':');
      if (colon == std::string::npos) continue;
      const auto port = static_cast<std::uint16_t>(std::strtoul(local.c_str() + colon + 1, nullptr, 16));
      if (std::find(ports.begin(), ports.end(), port) != ports.end()) ++count;
    }
  }
  return read_any ? count : -1;
}

}  // namespace hotrestart
