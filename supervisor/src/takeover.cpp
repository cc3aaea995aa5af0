// Asking a dead supervisor's guard for what it holds (takeover.h).
#include "takeover.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <utility>

#include <fmt/core.h>

#include "log.h"
#include "process_table.h"

namespace hotrestart {

namespace {

constexpr int kExchangeMs = 5'000;
constexpr std::size_t kMaxRecord = 1 << 20;

// The next message from the guard, waiting up to the deadline.
Result<GuardMessage> next(int sock, std::chrono::steady_clock::time_point deadline) {
  for (;;) {
    auto m = receive_guard_message(sock);
    if (m || m.error().code() != EAGAIN) return m;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return Error::message("the guard did not answer in time");
    pollfd p{sock, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) return Error::from_errno("poll");
  }
}

}  // namespace

namespace {
Result<std::optional<Inheritance>> exchange(const std::string& path);
}  // namespace

Result<std::optional<Inheritance>> ask_guard(const std::string& path) {
  // A field of the wrong type in the guard's answer throws.
  try {
    return exchange(path);
  } catch (const nlohmann::json::exception& e) {
    return Error::message(fmt::format("takeover: the guard's answer is malformed: {}", e.what()));
  }
}

namespace {

Result<std::optional<Inheritance>> exchange(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return std::optional<Inheritance>{};
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd sock(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!sock) return Error::from_errno("takeover: socket");
  if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    // Nobody waits there: nothing was left behind (or its guard is gone too).
    if (errno == ENOENT || errno == ECONNREFUSED) return std::optional<Inheritance>{};
    return Error::from_errno(fmt::format("takeover: connect {}", path));
  }
  Inheritance in;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(sock.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) in.guard = cred.pid;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kExchangeMs);
  if (auto ok = send_guard_message(sock.get(), {{"op", "takeover"}, {"supervisor", ::getpid()}}); !ok)
    return ok.error().context("takeover");
  auto state = next(sock.get(), deadline);
  if (!state) return state.error().context("takeover");
  if (state->body.value("op", "") != "state") return Error::message("takeover: the guard did not send its state");
  in.supervisor = state->body.value("supervisor", 0);
  const auto& names = state->body["names"];
  const auto& generations = state->body["generations"];
  if (!names.is_array() || !generations.is_array()) return Error::message("takeover: the guard's state is malformed");
  for (const auto& n : names) {
    if (!n.is_string()) return Error::message("takeover: a listener name is not a string");
    in.listener_names.push_back(n.get<std::string>());
  }
  std::map<std::uint64_t, std::size_t> index;
  for (const auto& j : generations) {
    auto g = guard_generation_from_json(j);
    if (!g) return g.error().context("takeover: a generation");
    index[g->number] = in.generations.size();
    in.generations.push_back({*g, Fd{}});
  }
  for (;;) {
    auto m = next(sock.get(), deadline);
    if (!m) return m.error().context("takeover");
    const std::string op = m->body.value("op", "");
    if (op == "end") break;
    if (op == "listeners") {
      for (Fd& fd : m->fds)
        in.listeners.push_back(std::move(fd));
    } else if (op == "output") {
      const auto it = index.find(m->body.value("number", std::uint64_t{0}));
      if (it == index.end() || m->fds.size() != 1) return Error::message("takeover: an output pipe for no generation");
      in.generations[it->second].output = std::move(m->fds[0]);
    } else {
      return Error::message(fmt::format("takeover: unexpected '{}' from the guard", op.substr(0, 32)));
    }
  }
  if (in.listeners.size() != in.listener_names.size())
    return Error::message(fmt::format("takeover: the guard sent {} listeners for {} names", in.listeners.size(),
                                      in.listener_names.size()));
  in.link = std::move(sock);
  return std::optional<Inheritance>(std::move(in));
}

}  // namespace

nlohmann::json running_record(ProcessRecord supervisor, ProcessRecord guard,
                              const std::vector<ListenerRecord>& listeners,
                              const std::vector<GuardGeneration>& generations) {
  nlohmann::json ls = nlohmann::json::array();
  for (const auto& l : listeners)
    ls.push_back({{"name", l.name}, {"address", l.address}, {"inode", l.inode}});
  nlohmann::json gs = nlohmann::json::array();
  for (const auto& g : generations)
    gs.push_back(to_json(g));
  return {{"format", 1},
          {"supervisor", {{"pid", supervisor.pid}, {"start", supervisor.start}}},
          {"guard", {{"pid", guard.pid}, {"start", guard.start}}},
          {"listeners", ls},
          {"generations", gs}};
}

namespace {

// The descriptor number in `pid` that is the socket with inode `inode`; when its descriptors cannot
// be read (no ptrace rights over it), nothing, with `*err` set.
std::optional<int> fd_of_socket(pid_t pid, std::uint64_t inode, int* err) {
  const std::string want = fmt::format("socket:[{}]", inode);
  const std::string dir = fmt::format("/proc/{}/fd", pid);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    *err = errno;
    return std::nullopt;
  }
  std::optional<int> found;
  while (dirent* e = ::readdir(d)) {
    char target[64];
    const ssize_t n = ::readlinkat(::dirfd(d), e->d_name, target, sizeof target - 1);
    if (n < 0 && (errno == EACCES || errno == EPERM)) *err = errno;
    if (n > 0 && std::string_view(target, static_cast<std::size_t>(n)) == want) {
      found = std::atoi(e->d_name);
      break;
    }
  }
  ::closedir(d);
  return found;
}

Result<std::optional<Inheritance>> from_record(const nlohmann::json& record) {
  if (record.value("format", 0) != 1) throw std::invalid_argument("it is of another format");
  Inheritance in;
  in.supervisor = record.at("supervisor").value("pid", 0);
  if (still_running(in.supervisor, record.at("supervisor").value("start", std::uint64_t{0})))
    return std::optional<Inheritance>{};  // Not gone (the control socket would have said so).
  // A guard alive but silent (busy, or its takeover socket could not be bound) still holds and acts
  // on everything: taking the sockets past it would make two keepers of the same generations.
  if (const auto guard = record.find("guard"); guard != record.end() && guard->is_object()) {
    const pid_t pid = guard->value("pid", 0);
    if (pid > 0 && still_running(pid, guard->value("start", std::uint64_t{0}))) {
      return Error::message(fmt::format(
          "the guard (pid {}) of supervisor pid {} is alive but does not answer; try again, or end it first", pid,
          in.supervisor));
    }
  }
  if (!record.at("generations").is_array() || !record.at("listeners").is_array())
    throw std::invalid_argument("its generations or listeners are not lists");
  for (const auto& j : record.at("generations")) {
    auto g = guard_generation_from_json(j);
    if (!g) throw std::invalid_argument(g.error().text());
    if (still_running(g->pid, g->start)) in.generations.push_back({*g, Fd{}});
  }
  if (in.generations.empty()) return std::optional<Inheritance>{};
  // The active generation first: it holds every listener.
  std::stable_partition(in.generations.begin(), in.generations.end(),
                        [](const auto& g) { return g.facts.role == GuardRole::Active; });
  std::string pids;
  for (const auto& g : in.generations)
    pids += fmt::format("{}{}", pids.empty() ? "" : ", ", g.facts.pid);
  for (const auto& l : record.at("listeners")) {
    const std::string name = l.value("name", "");
    const auto inode = l.value("inode", std::uint64_t{0});
    Fd taken;
    int last_errno = 0;
    for (const auto& g : in.generations) {
      const auto fd = fd_of_socket(g.facts.pid, inode, &last_errno);
      if (!fd) continue;
      const long pidfd = ::syscall(SYS_pidfd_open, g.facts.pid, 0);
      if (pidfd < 0) {
        last_errno = errno;
        continue;
      }
      Fd owned_pidfd(static_cast<int>(pidfd));
      if (!still_running(g.facts.pid, g.facts.start)) continue;
      const long got = ::syscall(SYS_pidfd_getfd, owned_pidfd.get(), *fd, 0);
      if (got >= 0) {
        taken.reset(static_cast<int>(got));
        break;
      }
      last_errno = errno;
    }
    if (!taken) {
      return Error::message(fmt::format(
          "cannot take listener '{}' ({}) from the generations left (pids {}){}; end them, then start again", name,
          l.value("address", "?"), pids,
          last_errno == EACCES || last_errno == EPERM
              ? fmt::format(": {} (taking a descriptor needs the right to trace its process)",
                            std::strerror(last_errno))
          : last_errno != 0 ? fmt::format(": {}", std::strerror(last_errno))
                            : std::string(": none of them holds it")));
    }
    in.listener_names.push_back(name);
    in.listeners.push_back(std::move(taken));
  }
  // Their stderr pipes, reopened for reading through /proc: a pipe opened that way is the same
  // pipe, so the workers' writes have a reader again.
  for (auto& g : in.generations) {
    char target[64];
    const std::string fd2 = fmt::format("/proc/{}/fd/2", g.facts.pid);
    const ssize_t n = ::readlink(fd2.c_str(), target, sizeof target - 1);
    if (n > 0 && std::string_view(target, static_cast<std::size_t>(n)).starts_with("pipe:"))
      g.output.reset(::open(fd2.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
  }
  return std::optional<Inheritance>(std::move(in));
}

}  // namespace

Result<std::optional<Inheritance>> take_from_generations(const std::string& state_dir) {
  const std::string path = state_dir + "/" + kRunningRecord;
  std::ifstream file(path, std::ios::binary);
  if (!file) return std::optional<Inheritance>{};
  std::string text(kMaxRecord + 1, '\0');
  file.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(file.gcount()));
  const auto record = nlohmann::json::parse(text, nullptr, false);
  if (text.size() > kMaxRecord || record.is_discarded() || !record.is_object()) {
    log_warn("{} is unreadable; nothing is taken over from it", path);
    return std::optional<Inheritance>{};
  }
  try {
    auto in = from_record(record);
    if (!in) return in.error().context("takeover");
    return in;
  } catch (const std::exception& e) {
    // A damaged record must not keep the service from starting: it is only a hint.
    log_warn("{} is malformed ({}); nothing is taken over from it", path, e.what());
    return std::optional<Inheritance>{};
  }
}

Result<Fd> listen_seqpacket(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    return Error::message(fmt::format("the socket path '{}' is too long; choose a shorter --control", path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
  Fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Error::from_errno("socket");
  const mode_t old_mask = ::umask(0177);
  const int rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  ::umask(old_mask);
  if (rc != 0) return Error::from_errno(fmt::format("bind {}", path));
  if (::listen(fd.get(), 16) != 0) return Error::from_errno(fmt::format("listen {}", path));
  return fd;
}

Status confirm_takeover(Inheritance& inheritance) {
  if (!inheritance.link) return {};  // Taken from the generations themselves: no guard to tell.
  auto ok = send_guard_message(inheritance.link.get(), {{"op", "taken"}});
  inheritance.link.reset();
  return ok;
}

}  // namespace hotrestart
