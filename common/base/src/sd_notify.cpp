// One sd_notify datagram to a NOTIFY_SOCKET path (see sd_notify.h).
#include <hotrestart/base/sd_notify.h>

#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>

#include <hotrestart/fd.h>

namespace hotrestart {

Status sd_notify_to(const std::string& socket_path, std::string_view message) {
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
  if (::sendto(fd.get(), message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr),
               length) < 0) {
    return Error::from_errno("sendto " + socket_path);
  }
  return {};
}

}  // namespace hotrestart
