// Sending and receiving channel messages with their descriptors on a SOCK_SEQPACKET socket.
//
// The receiver follows docs/protocol.md: MSG_CMSG_CLOEXEC, MSG_TRUNC and MSG_CTRUNC checked,
// every descriptor owned by an Fd the moment it arrives and all of them closed on any error, the
// count compared with the header's. The syscalls go through a narrow seam so that tests can fail
// the N-th sendmsg or recvmsg and check that nothing leaks.
#pragma once

#include <sys/socket.h>
#include <sys/types.h>

#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include <hotrestart/fd.h>

#include <hotrestart/base/result.h>
#include <hotrestart/wire/message.h>

namespace hotrestart::wire {

// The two calls the channel makes. The default forwards to the kernel.
class SocketCalls {
 public:
  virtual ~SocketCalls() = default;
  virtual ssize_t sendmsg(int fd, const msghdr* msg, int flags);
  virtual ssize_t recvmsg(int fd, msghdr* msg, int flags);
  static SocketCalls& system();
};

// A connected SOCK_SEQPACKET pair, both ends close-on-exec.
Result<std::pair<Fd, Fd>> seqpacket_pair();

enum class Blocking { Yes, No };

// Sends one message with exactly fds_expected(message) descriptors. With Blocking::No a full
// socket buffer is an error whose code() is EAGAIN and nothing was sent. A peer that is gone is
// EPIPE (never SIGPIPE).
Status send_message(int sock, const Message& message, std::span<const int> fds, Blocking blocking,
                    SocketCalls& calls = SocketCalls::system());

// Sends names and descriptors (equal counts) as one or more Listeners or Fds messages of at most
// kMaxFdsPerMessage each. `type` is Type::Listeners or Type::Fds.
Status send_named_fds(int sock, Type type, std::span<const std::string> names, std::span<const int> fds,
                      Blocking blocking, SocketCalls& calls = SocketCalls::system());

struct Received {
  Message message;
  std::vector<Fd> fds;
  // The sending process, as the kernel tells it when the receiving end has SO_PASSCRED; 0 otherwise.
  pid_t sender = 0;
};

// Receives one message. With Blocking::No, nothing to read is an error with code() EAGAIN.
// End of file (the peer closed) is an error with code() EPIPE whose text starts with "peer closed
// the channel". Any other error names the problem; every descriptor that came with it is closed.
// With Blocking::Yes on an O_NONBLOCK socket, both calls wait with poll() instead of failing.
Result<Received> receive_message(int sock, Blocking blocking, SocketCalls& calls = SocketCalls::system());

// The two calls above without the codec, for another protocol spoken over the same kind of socket
// (the supervisor's guard link): one datagram of `bytes` with at most kMaxFdsPerMessage descriptors
// (`what` names it in errors), and one datagram received into `buffer` with the same checks as
// receive_message (descriptors owned at once, MSG_TRUNC, MSG_CTRUNC, no other control data). A
// datagram longer than buffer.size() - 1 bytes is an error; `bytes` points into `buffer`.
Status send_datagram(int sock, std::span<const std::byte> bytes, std::span<const int> fds, Blocking blocking,
                     const std::string& what, SocketCalls& calls = SocketCalls::system());
struct Datagram {
  std::span<const std::byte> bytes;
  std::vector<Fd> fds;
  pid_t sender = 0;  // As in Received.
};
Result<Datagram> receive_datagram(int sock, std::span<std::byte> buffer, Blocking blocking,
                                  SocketCalls& calls = SocketCalls::system());

// Waits up to `timeout_ms` (-1: forever) for `sock` to be readable. Returns false on timeout.
bool wait_readable(int sock, int timeout_ms);

}  // namespace hotrestart::wire
