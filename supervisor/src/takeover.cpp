// Asking a dead supervisor's guard for what it holds (takeover.h).
#include "takeover.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <utility>

#include <fmt/core.h>

namespace hotrestart {

namespace {

constexpr int kExchangeMs = 5'000;

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
  auto ok = send_guard_message(inheritance.link.get(), {{"op", "taken"}});
  inheritance.link.reset();
  return ok;
}

}  // namespace hotrestart
