// /proc inspection, temporary directories, files, waiting.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <set>
#include <stdexcept>
#include <thread>
#include <utility>

#include "testsupport.h"

namespace hotrestart::testsupport {
namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

std::string proc_path(pid_t pid, std::string_view leaf) {
  return "/proc/" + std::to_string(pid) + "/" + std::string(leaf);
}

std::optional<std::string> read_link(const std::string& path) {
  std::string buf(256, '\0');
  for (;;) {
    ssize_t n = ::readlink(path.c_str(), buf.data(), buf.size());
    if (n < 0) return std::nullopt;
    if (static_cast<std::size_t>(n) < buf.size()) {
      buf.resize(static_cast<std::size_t>(n));
      return buf;
    }
    buf.resize(buf.size() * 2);
  }
}

template <typename T>
bool parse_num(std::string_view s, T& out, int base = 10) {
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out, base);
  return ec == std::errc{} && ptr == s.data() + s.size() && !s.empty();
}

struct Stat {
  char state = '?';
  pid_t ppid = 0;
};

// "pid (comm) S ppid ...": comm may contain spaces and parentheses.
std::optional<Stat> read_stat(pid_t pid) {
  auto content = read_file(proc_path(pid, "stat"));
  if (!content) return std::nullopt;
  auto close = content->rfind(')');
  if (close == std::string::npos || close + 4 > content->size()) return std::nullopt;
  std::string_view rest = std::string_view(*content).substr(close + 2);
  Stat st;
  st.state = rest[0];
  rest.remove_prefix(2);
  auto sp = rest.find(' ');
  if (!parse_num(rest.substr(0, sp), st.ppid)) return std::nullopt;
  return st;
}

std::vector<pid_t> all_pids() {
  std::vector<pid_t> pids;
  DIR* d = ::opendir("/proc");  // opendir uses O_CLOEXEC
  if (d == nullptr) throw std::runtime_error("opendir /proc: " + errno_text(errno));
  while (dirent* e = ::readdir(d)) {
    pid_t p = 0;
    if (parse_num(std::string_view(e->d_name), p)) pids.push_back(p);
  }
  ::closedir(d);
  return pids;
}

std::vector<std::string> split_nul(const std::string& s) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos < s.size()) {
    auto end = s.find('\0', pos);
    if (end == std::string::npos) end = s.size();
    out.emplace_back(s, pos, end - pos);
    pos = end + 1;
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------

std::string bin_dir() {
  if (const char* env = std::getenv("HOTRESTART_BIN_DIR"); env != nullptr && *env != '\0') return env;
#ifdef HOTRESTART_BIN_DIR
  return HOTRESTART_BIN_DIR;
#else
  auto exe = read_link("/proc/self/exe");
  if (!exe) return ".";
  return std::filesystem::path(*exe).parent_path().string();
#endif
}

std::string bin_path(std::string_view name) {
  return bin_dir() + "/" + std::string(name);
}

bool wait_until(const std::function<bool()>& pred, std::chrono::milliseconds deadline, std::chrono::milliseconds poll) {
  const auto end = Clock::now() + deadline;
  if (poll.count() <= 0) poll = 1ms;
  for (;;) {
    if (pred()) return true;
    auto now = Clock::now();
    if (now >= end) return false;
    std::this_thread::sleep_for(std::min<Clock::duration>(poll, end - now));
  }
}

// ---------------------------------------------------------------------------------

std::optional<unsigned long> FdInfo::socket_inode() const {
  constexpr std::string_view prefix = "socket:[";
  if (target.size() <= prefix.size() + 1 || target.compare(0, prefix.size(), prefix) != 0 || target.back() != ']') {
    return std::nullopt;
  }
  unsigned long ino = 0;
  std::string_view digits = std::string_view(target).substr(prefix.size(), target.size() - prefix.size() - 1);
  if (!parse_num(digits, ino)) return std::nullopt;
  return ino;
}

std::vector<FdInfo> list_fds(pid_t pid) {
  const std::string dir = proc_path(pid, "fd");
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) throw std::runtime_error("opendir " + dir + ": " + errno_text(errno));
  const int self_fd = pid == ::getpid() ? ::dirfd(d) : -1;
  std::vector<FdInfo> fds;
  while (dirent* e = ::readdir(d)) {
    int fd = -1;
    if (!parse_num(std::string_view(e->d_name), fd) || fd == self_fd) continue;
    auto target = read_link(dir + "/" + e->d_name);
    if (!target) continue;  // closed meanwhile
    FdInfo info;
    info.fd = fd;
    info.target = std::move(*target);
    if (auto fdinfo = read_file(proc_path(pid, "fdinfo/") + e->d_name)) {
      auto pos = fdinfo->find("flags:");
      if (pos != std::string::npos) {
        pos += 6;
        while (pos < fdinfo->size() && ((*fdinfo)[pos] == '\t' || (*fdinfo)[pos] == ' '))
          ++pos;
        auto end = fdinfo->find('\n', pos);
        int flags = 0;
        if (parse_num(std::string_view(*fdinfo).substr(pos, end - pos), flags, 8)) {
          info.flags = flags;
          info.cloexec = (flags & O_CLOEXEC) != 0;
        }
      }
    }
    fds.push_back(std::move(info));
  }
  ::closedir(d);
  std::sort(fds.begin(), fds.end(), [](const FdInfo& a, const FdInfo& b) { return a.fd < b.fd; });
  return fds;
}

std::size_t settled_fd_count(pid_t pid) {
  std::size_t fewest = list_fds(pid).size();
  for (int i = 0; i < 10; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    fewest = std::min(fewest, list_fds(pid).size());
  }
  return fewest;
}

std::string fds_settle_to(pid_t pid, std::size_t count, std::chrono::milliseconds timeout) {
  std::vector<FdInfo> fds;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    fds = list_fds(pid);
    if (fds.size() == count) return {};
    if (std::chrono::steady_clock::now() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::string held = std::to_string(fds.size()) + " descriptors, not " + std::to_string(count) + ":";
  for (const auto& f : fds)
    held += " " + std::to_string(f.fd) + "=" + f.target;
  return held;
}

std::vector<pid_t> children_of(pid_t pid) {
  std::vector<pid_t> out;
  for (pid_t p : all_pids()) {
    auto st = read_stat(p);
    if (st && st->ppid == pid) out.push_back(p);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<pid_t> descendants_of(pid_t pid) {
  std::multimap<pid_t, pid_t> by_parent;
  for (pid_t p : all_pids()) {
    if (auto st = read_stat(p)) by_parent.emplace(st->ppid, p);
  }
  std::vector<pid_t> out;
  std::set<pid_t> seen{pid};
  std::deque<pid_t> queue{pid};
  while (!queue.empty()) {
    pid_t cur = queue.front();
    queue.pop_front();
    auto [lo, hi] = by_parent.equal_range(cur);
    std::vector<pid_t> kids;
    for (auto it = lo; it != hi; ++it)
      kids.push_back(it->second);
    std::sort(kids.begin(), kids.end());
    for (pid_t k : kids) {
      if (!seen.insert(k).second) continue;
      out.push_back(k);
      queue.push_back(k);
    }
  }
  return out;
}

std::vector<pid_t> kill_descendants(pid_t root, int sig) {
  std::vector<pid_t> pids = descendants_of(root);
  std::reverse(pids.begin(), pids.end());
  std::vector<pid_t> signalled;
  for (pid_t p : pids) {
    if (::kill(p, sig) == 0) signalled.push_back(p);
  }
  return signalled;
}

std::optional<char> process_state(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  auto st = read_stat(pid);
  if (!st) return std::nullopt;
  return st->state;
}

bool pid_alive(pid_t pid) {
  auto s = process_state(pid);
  return s && *s != 'Z' && *s != 'X' && *s != 'x';
}

std::optional<pid_t> parent_of(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  auto st = read_stat(pid);
  if (!st) return std::nullopt;
  return st->ppid;
}

std::optional<long> rss_kib(pid_t pid) {
  if (pid <= 0) return std::nullopt;
  auto content = read_file(proc_path(pid, "status"));
  if (!content) return std::nullopt;
  const auto at = content->find("\nVmRSS:");
  if (at == std::string::npos) return std::nullopt;
  return std::strtol(content->c_str() + at + 7, nullptr, 10);
}

std::map<std::string, std::string> environ_of(pid_t pid) {
  std::map<std::string, std::string> env;
  auto content = read_file(proc_path(pid, "environ"));
  if (!content) return env;
  for (auto& kv : split_nul(*content)) {
    auto eq = kv.find('=');
    if (eq == std::string::npos) continue;
    env.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return env;
}

std::vector<std::string> cmdline_of(pid_t pid) {
  auto content = read_file(proc_path(pid, "cmdline"));
  if (!content) return {};
  return split_nul(*content);
}

std::vector<TcpSocket> tcp_sockets() {
  std::vector<TcpSocket> out;
  for (const char* file : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    auto content = read_file(file);
    if (!content) continue;
    const bool v6 = std::string_view(file).ends_with('6');
    std::size_t pos = content->find('\n');  // skip the header line
    while (pos != std::string::npos && pos + 1 < content->size()) {
      auto end = content->find('\n', pos + 1);
      std::string_view line = std::string_view(*content).substr(pos + 1, end - pos - 1);
      pos = end;
      std::vector<std::string_view> f;
      while (!line.empty()) {
        auto b = line.find_first_not_of(' ');
        if (b == std::string_view::npos) break;
        line.remove_prefix(b);
        auto e = line.find(' ');
        f.push_back(line.substr(0, e));
        line = e == std::string_view::npos ? std::string_view{} : line.substr(e);
      }
      if (f.size() < 10) continue;
      auto addr = [v6](std::string_view s, std::string& a, uint16_t& port) {
        auto colon = s.find(':');
        if (colon == std::string_view::npos) return false;
        if (!parse_num(s.substr(colon + 1), port, 16)) return false;
        std::string_view hex = s.substr(0, colon);
        char text[INET6_ADDRSTRLEN] = {};
        if (!v6) {
          uint32_t w = 0;
          if (hex.size() != 8 || !parse_num(hex, w, 16)) return false;
          in_addr ia{};
          ia.s_addr = w;  // printed by the kernel as a host-order u32 of the raw bytes
          ::inet_ntop(AF_INET, &ia, text, sizeof text);
        } else {
          if (hex.size() != 32) return false;
          in6_addr ia{};
          for (int i = 0; i < 4; ++i) {
            uint32_t w = 0;
            if (!parse_num(hex.substr(static_cast<std::size_t>(i) * 8, 8), w, 16)) return false;
            std::memcpy(ia.s6_addr + i * 4, &w, 4);
          }
          ::inet_ntop(AF_INET6, &ia, text, sizeof text);
        }
        a = text;
        return true;
      };
      TcpSocket s;
      if (!addr(f[1], s.local_addr, s.local_port) || !addr(f[2], s.remote_addr, s.remote_port)) continue;
      if (!parse_num(f[3], s.state, 16) || !parse_num(f[9], s.inode)) continue;
      out.push_back(std::move(s));
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------

std::string free_tmp_dir() {
  char tmpl[] = "/tmp/hrt-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error(std::string("mkdtemp: ") + errno_text(errno));
  return tmpl;
}

TempDir::TempDir() : path_(free_tmp_dir()) {}

TempDir::~TempDir() {
  if (path_.empty()) return;
  if (const char* keep = std::getenv("HOTRESTART_KEEP_TMP"); keep != nullptr && *keep != '\0') {
    std::fprintf(stderr, "testsupport: keeping %s\n", path_.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

TempDir::TempDir(TempDir&& o) noexcept : path_(std::exchange(o.path_, {})) {}

TempDir& TempDir::operator=(TempDir&& o) noexcept {
  if (this != &o) {
    TempDir old(std::move(*this));
    path_ = std::exchange(o.path_, {});
  }
  return *this;
}

std::string TempDir::file(std::string_view name) const {
  return path_ + "/" + std::string(name);
}

std::optional<std::string> read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

void write_file_atomic(const std::string& path, std::string_view content) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw std::runtime_error("open " + tmp + ": " + errno_text(errno));
  while (!content.empty()) {
    ssize_t n = ::write(fd, content.data(), content.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      throw std::runtime_error("write " + tmp + ": " + errno_text(e));
    }
    content.remove_prefix(static_cast<std::size_t>(n));
  }
  if (::close(fd) != 0) throw std::runtime_error("close " + tmp + ": " + errno_text(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    throw std::runtime_error("rename " + tmp + " -> " + path + ": " + errno_text(errno));
  }
}

}  // namespace hotrestart::testsupport
