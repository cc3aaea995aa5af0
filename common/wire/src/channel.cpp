// Sending and receiving channel messages with their descriptors on a seqpacket socket (see channel.h).
#include <hotrestart/wire/channel.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

namespace hotrestart::wire {

ssize_t SocketCalls::sendmsg(int fd, const msghdr* msg, int flags) {
  return ::sendmsg(fd, msg, flags);
}
ssize_t SocketCalls::recvmsg(int fd, msghdr* msg, int flags) {
  return ::recvmsg(fd, msg, flags);
}
SocketCalls& SocketCalls::system() {
  static SocketCalls calls;
  return calls;
}

namespace {

// Room for the most descriptors a message may carry, and for the sender's credentials, which the
// kernel adds when the receiving end has SO_PASSCRED (the supervisor's end of a worker channel).
constexpr std::size_t kControlSize = CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage) + CMSG_SPACE(sizeof(ucred));

// Control buffers must be aligned for cmsghdr; a plain char array is not.
union ControlBuffer {
  cmsghdr align;
  char bytes[kControlSize];
};

// Waits for `events` on a socket whose calls said EAGAIN although the caller asked to block (the
// socket itself is O_NONBLOCK, as an event loop's sockets are).
void wait_for(int sock, short events) {
  pollfd p{sock, events, 0};
  while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
  }
}

}  // namespace

Result<std::pair<Fd, Fd>> seqpacket_pair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return Error::from_errno("socketpair(AF_UNIX, SOCK_SEQPACKET)");
  return std::pair<Fd, Fd>(Fd(sv[0]), Fd(sv[1]));
}

Status send_message(int sock, const Message& message, std::span<const int> fds, Blocking blocking, SocketCalls& calls) {
  const std::string what = "send " + std::string(type_name(type_of(message)));
  std::size_t expected = fds_expected(message);
  if (fds.size() != expected)
    return Error::message(what + ": " + std::to_string(fds.size()) + " descriptors given, but the message carries " +
                          std::to_string(expected));
  auto datagram = encode(message);
  if (!datagram) return datagram.error().context(what);
  return send_datagram(sock, std::as_bytes(std::span(*datagram)), fds, blocking, what, calls);
}

Status send_datagram(int sock, std::span<const std::byte> bytes, std::span<const int> fds, Blocking blocking,
                     const std::string& what, SocketCalls& calls) {
  if (fds.size() > kMaxFdsPerMessage)
    return Error::message(what + ": " + std::to_string(fds.size()) + " descriptors, more than one datagram carries");
  // sendmsg does not write through iov_base; the cast only fits the C interface.
  iovec iov{const_cast<std::byte*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ControlBuffer control{};
  if (!fds.empty()) {
    msg.msg_control = control.bytes;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  int flags = MSG_NOSIGNAL | (blocking == Blocking::No ? MSG_DONTWAIT : 0);
  for (;;) {
    ssize_t n = calls.sendmsg(sock, &msg, flags);
    if (n >= 0) {
      // A seqpacket socket sends a datagram whole or not at all; anything else is a broken seam.
      if (static_cast<std::size_t>(n) != bytes.size())
        return Error::message(what + ": sendmsg sent " + std::to_string(n) + " of " + std::to_string(bytes.size()) +
                              " bytes");
      return {};
    }
    int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN && blocking == Blocking::Yes) {
      wait_for(sock, POLLOUT);
      continue;
    }
    return Error::from_errno(what + ": sendmsg", err);
  }
}

Status send_named_fds(int sock, Type type, std::span<const std::string> names, std::span<const int> fds,
                      Blocking blocking, SocketCalls& calls) {
  if (type != Type::Listeners && type != Type::Fds)
    return Error::message("send_named_fds: type " + std::string(type_name(type)) + " does not carry named descriptors");
  if (names.size() != fds.size())
    return Error::message("send " + std::string(type_name(type)) + ": " + std::to_string(names.size()) + " names but " +
                          std::to_string(fds.size()) + " descriptors");
  for (std::size_t at = 0; at < names.size(); at += kMaxFdsPerMessage) {
    std::size_t n = std::min(kMaxFdsPerMessage, names.size() - at);
    std::vector<std::string> batch(names.begin() + static_cast<std::ptrdiff_t>(at),
                                   names.begin() + static_cast<std::ptrdiff_t>(at + n));
    Message m = type == Type::Listeners ? Message(Listeners{std::move(batch)}) : Message(Fds{std::move(batch)});
    if (auto s = send_message(sock, m, fds.subspan(at, n), blocking, calls); !s) return s;
  }
  return {};
}

Result<Received> receive_message(int sock, Blocking blocking, SocketCalls& calls) {
  // One byte more than the largest valid datagram, so that an oversized one shows as MSG_TRUNC
  // (or as a length over the limit) rather than as a clean cut.
  thread_local std::vector<std::byte> buffer(kMaxDatagram + 1);
  auto raw = receive_datagram(sock, buffer, blocking, calls);
  if (!raw) return raw.error();
  Received received;
  received.fds = std::move(raw->fds);
  received.sender = raw->sender;
  const std::span<const std::byte> datagram = raw->bytes;
  auto frame = check_frame(datagram);
  if (!frame) return frame.error();
  if (received.fds.size() != frame->fd_count)
    return Error::message(std::string(type_name(frame->type)) + ": the header announces " +
                          std::to_string(frame->fd_count) + (frame->fd_count == 1 ? " descriptor" : " descriptors") +
                          " but " + std::to_string(received.fds.size()) + " arrived");
  auto decoded = decode(datagram);
  if (!decoded) return decoded.error();
  received.message = std::move(decoded->message);
  return received;
}

Result<Datagram> receive_datagram(int sock, std::span<std::byte> buffer, Blocking blocking, SocketCalls& calls) {
  const std::size_t limit = buffer.size() - 1;
  iovec iov{buffer.data(), buffer.size()};
  ControlBuffer control{};
  msghdr msg{};
  int flags = MSG_CMSG_CLOEXEC | MSG_TRUNC | (blocking == Blocking::No ? MSG_DONTWAIT : 0);
  ssize_t n;
  for (;;) {
    msg = msghdr{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes;
    msg.msg_controllen = sizeof control.bytes;
    n = calls.recvmsg(sock, &msg, flags);
    if (n >= 0) break;
    int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN && blocking == Blocking::Yes) {
      wait_for(sock, POLLIN);
      continue;
    }
    return Error::from_errno("recvmsg", err);
  }

  // Own every descriptor before looking at anything else, so that each early return closes them.
  // (The length is clamped in case a seam hands back more control data than the buffer holds.)
  msg.msg_controllen = std::min<std::size_t>(msg.msg_controllen, sizeof control.bytes);
  Datagram received;
  bool unexpected_control = false;
  if (msg.msg_controllen > 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        // The count is bounded by the buffer too, in case a seam hands back a bad header.
        const unsigned char* data = CMSG_DATA(c);
        const auto* end = reinterpret_cast<const unsigned char*>(control.bytes) + msg.msg_controllen;
        std::size_t len = c->cmsg_len < CMSG_LEN(0) ? 0 : c->cmsg_len - CMSG_LEN(0);
        std::size_t count = std::min<std::size_t>(len, static_cast<std::size_t>(end - data)) / sizeof(int);
        for (std::size_t i = 0; i < count; ++i) {
          int fd;
          std::memcpy(&fd, data + i * sizeof(int), sizeof fd);
          received.fds.emplace_back(fd);
        }
      } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS &&
                 c->cmsg_len >= CMSG_LEN(sizeof(ucred))) {
        ucred cred{};
        std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
        received.sender = cred.pid;
      } else {
        unexpected_control = true;
      }
    }
  }

  // recvmsg returns 0 both at end of file and for an empty datagram, which no valid peer sends.
  if (n == 0 && received.fds.empty() && !unexpected_control) return Error::from_errno("peer closed the channel", EPIPE);
  if ((msg.msg_flags & MSG_TRUNC) != 0 || static_cast<std::size_t>(n) > limit)
    return Error::message("channel frame: the datagram is " + std::to_string(n) + " bytes, more than " +
                          std::to_string(limit));
  if ((msg.msg_flags & MSG_CTRUNC) != 0)
    return Error::message("channel frame: the descriptors sent with it were truncated (MSG_CTRUNC)");
  if (unexpected_control) return Error::message("channel frame: it came with control data other than descriptors");
  received.bytes = buffer.first(static_cast<std::size_t>(n));
  return received;
}

bool wait_readable(int sock, int timeout_ms) {
  using Clock = std::chrono::steady_clock;
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  pollfd p{sock, POLLIN, 0};
  for (;;) {
    int left = timeout_ms;
    if (timeout_ms > 0) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      left = static_cast<int>(std::max<decltype(ms)>(ms, 0));
    }
    int r = ::poll(&p, 1, left);
    if (r > 0) return true;  // Readable, or hung up or failed: the next recvmsg says which.
    if (r == 0) return false;
    if (errno != EINTR) return true;  // Let the caller's recvmsg report the error.
  }
}

}  // namespace hotrestart::wire
