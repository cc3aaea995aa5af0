// Which processes hold a TCP port (port_holders.h), from /proc.
#include "port_holders.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/core.h>

namespace hotrestart {

namespace {

constexpr int kListen = 10;  // The kernel's TCP_LISTEN, as /proc/net/tcp shows it (hex 0A).

std::string read_whole(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

template <class T>
bool parse_hex(std::string_view text, T& out) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out, 16);
  return ec == std::errc{} && ptr == text.data() + text.size();
}

template <class T>
bool parse_decimal(std::string_view text, T& out) {
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && ptr == text.data() + text.size() && !text.empty();
}

// The whitespace-separated fields of one line.
std::vector<std::string_view> fields_of(std::string_view line) {
  std::vector<std::string_view> fields;
  std::size_t at = 0;
  while (at < line.size()) {
    const auto start = line.find_first_not_of(" \t", at);
    if (start == std::string_view::npos) break;
    const auto end = line.find_first_of(" \t", start);
    fields.push_back(line.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    at = end == std::string_view::npos ? line.size() : end;
  }
  return fields;
}

}  // namespace

std::vector<std::uint64_t> listening_inodes(std::string_view table, std::uint16_t port) {
  std::vector<std::uint64_t> inodes;
  std::size_t at = 0;
  bool header = true;
  while (at < table.size()) {
    const auto end = table.find('\n', at);
    const std::string_view line = table.substr(at, end == std::string_view::npos ? std::string_view::npos : end - at);
    at = end == std::string_view::npos ? table.size() : end + 1;
    if (header) {
      header = false;
      continue;
    }
    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    const auto f = fields_of(line);
    if (f.size() < 10) continue;
    const auto colon = f[1].rfind(':');
    std::uint16_t local_port = 0;
    int state = 0;
    std::uint64_t inode = 0;
    if (colon == std::string_view::npos || !parse_hex(f[1].substr(colon + 1), local_port) || !parse_hex(f[3], state) ||
        !parse_decimal(f[9], inode))
      continue;
    if (state == kListen && local_port == port && inode != 0) inodes.push_back(inode);
  }
  return inodes;
}

std::vector<PortHolder> port_holders(std::uint16_t port) {
  std::set<std::uint64_t> inodes;
  for (const char* table : {"/proc/net/tcp", "/proc/net/tcp6"})
    for (std::uint64_t inode : listening_inodes(read_whole(table), port))
      inodes.insert(inode);
  std::vector<PortHolder> holders;
  if (inodes.empty()) return holders;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return holders;
  while (dirent* e = ::readdir(proc)) {
    pid_t pid = 0;
    if (!parse_decimal(std::string_view(e->d_name), pid) || pid <= 0) continue;
    const std::string fd_dir = fmt::format("/proc/{}/fd", pid);
    DIR* fds = ::opendir(fd_dir.c_str());
    if (fds == nullptr) continue;
    bool holds = false;
    while (dirent* f = ::readdir(fds)) {
      if (f->d_name[0] == '.') continue;
      char target[64];
      const ssize_t n = ::readlinkat(::dirfd(fds), f->d_name, target, sizeof target - 1);
      if (n <= 0) continue;
      const std::string_view link(target, static_cast<std::size_t>(n));
      std::uint64_t inode = 0;
      if (link.starts_with("socket:[") && link.ends_with("]") &&
          parse_decimal(link.substr(8, link.size() - 9), inode) && inodes.count(inode) != 0) {
        holds = true;
        break;
      }
    }
    ::closedir(fds);
    if (!holds) continue;
    PortHolder h;
    h.pid = pid;
    struct stat st {};
    if (::stat(fmt::format("/proc/{}", pid).c_str(), &st) == 0) h.uid = st.st_uid;
    h.command = read_whole(fmt::format("/proc/{}/comm", pid));
    while (!h.command.empty() && (h.command.back() == '\n' || h.command.back() == ' '))
      h.command.pop_back();
    holders.push_back(std::move(h));
  }
  ::closedir(proc);
  return holders;
}

std::string describe(const std::vector<PortHolder>& holders) {
  std::string text;
  for (const PortHolder& h : holders)
    text += fmt::format("{}pid {} ({}, uid {})", text.empty() ? "" : ", ", h.pid, h.command, h.uid);
  return text;
}

}  // namespace hotrestart
