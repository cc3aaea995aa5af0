// The listening sockets, bound or adopted once and held for life (see listener_set.h).
#include "listener_set.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>

#include <fmt/format.h>

#include "log.h"

namespace hotrestart {
namespace {

// The backlog is a property of the shared socket, so it is set once here; workers that call
// listen() again with a smaller value would shrink it for everyone (the SDK passes SOMAXCONN).
constexpr int kBacklog = SOMAXCONN;

Result<Fd> bind_tcp(const ListenSpec& spec) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(spec.port);
  const int rc = ::getaddrinfo(spec.host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    return Error::message(fmt::format("resolve '{}': {}", spec.host, ::gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> guard(found, &::freeaddrinfo);
  // The first address the resolver prefers is used; one listener is one socket.
  Fd fd(::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_errno("socket");
  const int one = 1;
  // SO_REUSEADDR lets a restarted supervisor bind while old connections sit in TIME_WAIT.
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
    return Error::from_errno("setsockopt SO_REUSEADDR");
  }
  if (::bind(fd.get(), found->ai_addr, found->ai_addrlen) != 0) {
    return Error::from_errno(fmt::format("bind {}", spec.text));
  }
  if (::listen(fd.get(), kBacklog) != 0) return Error::from_errno(fmt::format("listen {}", spec.text));
  return fd;
}

Result<Fd> bind_unix(const ListenSpec& spec, bool* created) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, spec.path.c_str(), spec.path.size() + 1);
  struct stat st {};
  if (::lstat(spec.path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Error::message(fmt::format("bind {}: the path exists and is not a socket", spec.text));
    }
    // A socket file left by a process that is gone refuses connections: remove it. One that
    // accepts belongs to a live server, and stealing its path would be a surprise.
    Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      return Error::message(fmt::format("bind {}: another process is listening on it", spec.text));
    }
    if (::unlink(spec.path.c_str()) != 0) return Error::from_errno(fmt::format("unlink stale {}", spec.text));
  }
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_errno("socket");
  const bool restricted = spec.mode || spec.owner || spec.group;
  // With a mode, owner or group asked for, the file is made for the supervisor's user alone (0600)
  // and opened up only once it has its owner and group: no other user can connect in between.
  const mode_t umask_was = restricted ? ::umask(0177) : 0;
  const int bound = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  const int bind_errno = errno;
  if (restricted) ::umask(umask_was);
  if (bound != 0) return Error::from_errno(fmt::format("bind {}", spec.text), bind_errno);
  *created = true;
  if (restricted) {
    const auto fail = [&](const std::string& what) {
      const Error e = Error::from_errno(what);
      ::unlink(spec.path.c_str());
      return e;
    };
    if ((spec.owner || spec.group) && ::chown(spec.path.c_str(), spec.owner.value_or(static_cast<uid_t>(-1)),
                                              spec.group.value_or(static_cast<gid_t>(-1))) != 0) {
      return fail(fmt::format("chown {} to {}:{}", spec.path,
                              spec.owner ? std::to_string(*spec.owner) : std::string("-"),
                              spec.group ? std::to_string(*spec.group) : std::string("-")));
    }
    // Without mode=, the mode bind() would have given it under the supervisor's own umask.
    const mode_t mode = spec.mode.value_or(0777 & ~umask_was);
    if (::chmod(spec.path.c_str(), mode) != 0) return fail(fmt::format("chmod {} to {:04o}", spec.path, mode));
  }
  if (::listen(fd.get(), kBacklog) != 0) {
    ::unlink(spec.path.c_str());
    return Error::from_errno(fmt::format("listen {}", spec.text));
  }
  return fd;
}

Result<Listener> bind_one(const ListenSpec& spec) {
  Listener l;
  l.spec = spec;
  Result<Fd> fd = Error::message("unreachable");
  if (spec.kind == ListenSpec::Kind::Tcp) {
    fd = bind_tcp(spec);
  } else {
    fd = bind_unix(spec, &l.unlink_on_exit);
  }
  if (!fd) return fd.error().context(fmt::format("listener {}", spec.name));
  l.fd = std::move(fd).value();
  l.address = describe_bound_address(l.fd.get());
  return l;
}

Status check_listening_stream_socket(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Error::from_errno(fmt::format("fstat fd {}", fd));
  if (!S_ISSOCK(st.st_mode)) return Error::message(fmt::format("fd {} is not a socket", fd));
  int type = 0;
  int listening = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) return Error::from_errno("getsockopt SO_TYPE");
  len = sizeof listening;
  if (::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0) {
    return Error::from_errno("getsockopt SO_ACCEPTCONN");
  }
  if (type != SOCK_STREAM || !listening) {
    return Error::message(fmt::format("fd {} is not a listening stream socket", fd));
  }
  return {};
}

// Whether two descriptors are the same socket (the same inode of the socket file system).
bool same_socket(int a, int b) {
  struct stat sa {};
  struct stat sb {};
  return ::fstat(a, &sa) == 0 && ::fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// Whether a socket bound to `address` (as describe_bound_address spells it) is what `spec` asks
// for: the same path, or the same port (port 0 takes any). Host names are not resolved again: a
// port is one service's.
bool at_address(const ListenSpec& spec, const std::string& address) {
  if (spec.kind == ListenSpec::Kind::Unix) return address == "unix:" + spec.path;
  if (address.starts_with("unix:")) return false;
  return spec.port == 0 || address.ends_with(fmt::format(":{}", spec.port));
}

std::vector<std::string> split(std::string_view text, char sep) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const auto pos = text.find(sep, start);
    parts.emplace_back(text.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return parts;
}

}  // namespace

std::string describe_bound_address(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  char text[INET6_ADDRSTRLEN] = {};
  switch (ss.ss_family) {
    case AF_INET: {
      const auto* in = reinterpret_cast<sockaddr_in*>(&ss);
      ::inet_ntop(AF_INET, &in->sin_addr, text, sizeof text);
      return fmt::format("{}:{}", text, ntohs(in->sin_port));
    }
    case AF_INET6: {
      const auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
      ::inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof text);
      return fmt::format("[{}]:{}", text, ntohs(in6->sin6_port));
    }
    case AF_UNIX: {
      const auto* un = reinterpret_cast<sockaddr_un*>(&ss);
      const auto path_len = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
      return fmt::format("unix:{}", std::string(un->sun_path, ::strnlen(un->sun_path, path_len)));
    }
    default:
      return "?";
  }
}

Result<ListenerSet> ListenerSet::bind_all(const std::vector<ListenSpec>& specs) {
  ListenerSet set;
  for (const auto& spec : specs) {
    auto l = bind_one(spec);
    if (!l) return l.error();  // `set` unwinds and closes what was bound.
    set.listeners_.push_back(std::move(l).value());
  }
  return set;
}

Result<ListenerSet> ListenerSet::adopt_or_bind(const std::vector<ListenSpec>& specs, Activation* activation) {
  *activation = {};
  const char* pid_env = std::getenv("LISTEN_PID");
  const char* fds_env = std::getenv("LISTEN_FDS");
  if (pid_env == nullptr || fds_env == nullptr || std::to_string(::getpid()) != pid_env) {
    return bind_all(specs);
  }
  const int count = std::atoi(fds_env);
  const char* names_env = std::getenv("LISTEN_FDNAMES");
  std::vector<std::string> names = names_env ? split(names_env, ':') : std::vector<std::string>{};
  // Whatever happens next, these variables describe *our* fds and must not reach a worker.
  ::unsetenv("LISTEN_PID");
  ::unsetenv("LISTEN_FDS");
  ::unsetenv("LISTEN_FDNAMES");
  if (count <= 0 || count > 1024) return Error::message(fmt::format("LISTEN_FDS={} is out of range", fds_env));
  activation->activated = true;
  auto discard = [&](const std::string& name) {
    if (std::find(activation->discarded.begin(), activation->discarded.end(), name) == activation->discarded.end())
      activation->discarded.push_back(name);
  };

  // Every passed descriptor is owned at once, so that all are closed on any error below, and those
  // not adopted when this returns.
  std::vector<std::pair<std::string, Fd>> owned;
  for (int i = 0; i < count; ++i) {
    const int fd = 3 + i;
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    owned.emplace_back(i < static_cast<int>(names.size()) && !names[i].empty() ? names[i] : fmt::format("listen{}", i),
                       Fd(fd));
  }
  std::map<std::string, Fd> passed;
  for (auto& [name, fd] : owned) {
    // Not refused: the fd store hands back what it holds at every restart, and one unusable
    // descriptor in it must not keep the service from starting until someone empties the store.
    if (auto ok = check_listening_stream_socket(fd.get()); !ok) {
      log_warn("socket activation passed '{}', which cannot be a listener ({}); closing it", name, ok.error().text());
      discard(name);
      continue;
    }
    auto [it, fresh] = passed.try_emplace(name);
    if (fresh) {
      it->second = std::move(fd);
      continue;
    }
    // systemd passes a socket unit's sockets first, then the fd store's: a socket kept in the
    // store comes back beside the socket unit's own copy of it, which is no conflict.
    if (same_socket(it->second.get(), fd.get())) continue;
    log_warn(
        "socket activation passed two different sockets named '{}' ({} and {}); adopting the first, closing the "
        "other",
        name, describe_bound_address(it->second.get()), describe_bound_address(fd.get()));
    discard(name);
  }

  ListenerSet set;
  if (specs.empty()) {
    for (auto& [name, fd] : passed) {
      Listener l;
      l.spec.name = name;
      l.address = describe_bound_address(fd.get());
      l.spec.text = l.address;
      l.fd = std::move(fd);
      l.adopted = true;
      set.listeners_.push_back(std::move(l));
    }
    return set;
  }
  for (const auto& spec : specs) {
    auto it = passed.find(spec.name);
    if (it != passed.end() && !at_address(spec, describe_bound_address(it->second.get()))) {
      // The --listen is what the operator asks for now: a socket kept from an earlier configuration
      // (in the fd store) must not pin the old address.
      log_warn(
          "socket activation passed '{}' on {}, and --listen asks for {}; binding {} and closing the passed socket",
          spec.name, describe_bound_address(it->second.get()), spec.text, spec.text);
      discard(spec.name);
      passed.erase(it);
      it = passed.end();
    }
    if (it == passed.end()) {
      auto l = bind_one(spec);
      if (!l) return l.error();
      set.listeners_.push_back(std::move(l).value());
      continue;
    }
    Listener l;
    l.spec = spec;
    l.fd = std::move(it->second);
    l.address = describe_bound_address(l.fd.get());
    l.adopted = true;
    set.listeners_.push_back(std::move(l));
    passed.erase(it);
  }
  for (const auto& [name, fd] : passed) {
    log_warn("socket activation passed '{}' ({}), which no --listen names; closing it", name,
             describe_bound_address(fd.get()));
    discard(name);
  }
  return set;
}

Result<ListenerSet> ListenerSet::inherit(const std::vector<ListenSpec>& specs, const std::vector<std::string>& names,
                                         std::vector<Fd> fds) {
  std::map<std::string, Fd> left;
  std::string have;
  for (std::size_t i = 0; i < fds.size() && i < names.size(); ++i) {
    if (auto ok = check_listening_stream_socket(fds[i].get()); !ok) return ok.error().context("listener " + names[i]);
    have += fmt::format("{}{} on {}", have.empty() ? "" : ", ", names[i], describe_bound_address(fds[i].get()));
    left.emplace(names[i], std::move(fds[i]));
  }
  ListenerSet set;
  auto take = [&](ListenSpec spec, Fd fd) {
    Listener l;
    l.address = describe_bound_address(fd.get());
    if (spec.text.empty()) spec.text = l.address;
    l.spec = std::move(spec);
    l.fd = std::move(fd);
    l.inherited = true;
    // Never unlinked: should this takeover fail, the generations left serve on at that path. (The
    // next `run` replaces a stale socket file when it binds.)
    l.unlink_on_exit = false;
    set.listeners_.push_back(std::move(l));
  };
  if (specs.empty()) {
    for (std::size_t i = 0; i < names.size(); ++i) {
      auto it = left.find(names[i]);
      if (it == left.end()) continue;
      ListenSpec spec;
      spec.name = names[i];
      take(spec, std::move(it->second));
      left.erase(it);
    }
    return set;
  }
  for (const auto& spec : specs) {
    auto it = left.find(spec.name);
    if (it == left.end()) {
      return Error::message(fmt::format(
          "the generations left behind have no listener '{}' (they serve {}); run with the same --listen, or end them",
          spec.name, have));
    }
    const std::string address = describe_bound_address(it->second.get());
    if (!at_address(spec, address)) {
      return Error::message(fmt::format(
          "the generations left behind serve '{}' on {}, and --listen asks for {}; run with the same --listen, or end "
          "them",
          spec.name, address, spec.text));
    }
    take(spec, std::move(it->second));
    left.erase(it);
  }
  if (!left.empty()) {
    return Error::message(fmt::format(
        "the generations left behind also serve '{}', which no --listen names; run with the same --listen, or end them",
        left.begin()->first));
  }
  return set;
}

ListenerSet::~ListenerSet() {
  for (auto& l : listeners_) {
    if (l.unlink_on_exit && l.fd) ::unlink(l.spec.path.c_str());
  }
}

std::string ListenerSet::fdnames() const {
  std::string out;
  for (const auto& l : listeners_) {
    if (!out.empty()) out += ':';
    out += l.spec.name;
  }
  return out;
}

}  // namespace hotrestart
