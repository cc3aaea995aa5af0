// One sd_notify datagram to a NOTIFY_SOCKET path (see sd_notify.h).
#include <hotrestart/base/sd_notify.h>

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <vector>

#include <hotrestart/fd.h>

namespace hotrestart {

Status sd_notify_to(const std::string& socket_path, std::string_view message) {
  return sd_notify_with_fds(socket_path, message, {});
}

Status sd_notify_with_fds(const std::string& socket_path, std::string_view message, std::span<const int> fds) {
  // The kernel refuses more in one message (SCM_MAX_FD).
  constexpr std::size_t kMaxFds = 253;
  if (fds.size() > kMaxFds) return Error::message("too many descriptors for one notify datagram");
  sockaddr_un addr{};
  if (socket_path.empty() || socket_path.size() >= sizeof addr.sun_path) {
    return Error::message("the notify socket path '" + socket_path + "' is empty or too long");
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());
  auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + socket_path.size());
  if (addr.sun_path[0] == '@') {
    addr.sun_path[0] = '\0';  // Abstract namespace: no terminating NUL is part of the name.
  } else {
    ++length;
  }
  Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_errno("socket");
  iovec iov{const_cast<char*>(message.data()), message.size()};
  msghdr msg{};
  msg.msg_name = &addr;
  msg.msg_namelen = length;
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.resize(CMSG_SPACE(sizeof(int) * fds.size()));
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t sent = 0;
  do {
    sent = ::sendmsg(fd.get(), &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) return Error::from_errno("sendmsg " + socket_path);
  return {};
}

}  // namespace hotrestart
