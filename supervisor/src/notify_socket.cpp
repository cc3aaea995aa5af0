// The notify socket: receiving sd_notify datagrams and finding the generation that sent each
// (see notify_socket.h).
#include "notify_socket.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

#include "log.h"
#include "process_table.h"

namespace hotrestart {
namespace {

// Datagrams handled per wake-up, so that a flooding sender cannot starve the loop.
constexpr int kDatagramsPerWakeup = 64;
constexpr int kMaxParentDepth = 32;

// Closes every descriptor an SCM_RIGHTS message brought: we keep no fds from workers (no FDSTORE).
void close_passed_fds(const cmsghdr* c) {
  const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
  for (std::size_t k = 0; k < count; ++k) {
    int fd = -1;
    std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
    if (fd >= 0) ::close(fd);
  }
}

}  // namespace

pid_t parent_of(pid_t pid) {
  const auto entry = read_process(pid);
  return entry ? entry->ppid : 0;
}

std::uint64_t find_sender_generation(pid_t sender, bool by_group,
                                     const std::function<std::uint64_t(pid_t)>& is_main_process) {
  if (sender <= 0) return 0;
  // A worker's own processes share its process group unless they made their own; the parent chain
  // covers those. (Any process of the session may join a process group, so the group counts only
  // when the caller says the sender is trusted that far.)
  const pid_t pgid = by_group ? ::getpgid(sender) : -1;
  if (pgid > 0) {
    if (const std::uint64_t g = is_main_process(pgid)) return g;
  }
  pid_t cursor = sender;
  for (int depth = 0; depth < kMaxParentDepth && cursor > 1; ++depth) {
    if (const std::uint64_t g = is_main_process(cursor)) return g;
    cursor = parent_of(cursor);
  }
  return 0;
}

NotifySocket::NotifySocket(uv_loop_t* loop, IsMainProcess is_main_process, OnMessage on_message)
    : loop_(loop), is_main_process_(std::move(is_main_process)), on_message_(std::move(on_message)) {}

NotifySocket::~NotifySocket() {
  watch_.reset();
  if (fd_) ::unlink(path_.c_str());
}

Status NotifySocket::bind(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Error::message(fmt::format("notify socket path '{}' is too long; choose a shorter --control", path));
  }
  Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Error::from_errno("notify socket: socket");
  const int one = 1;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
    return Error::from_errno("notify socket: setsockopt SO_PASSCRED");
  }
  ::unlink(path.c_str());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Error::from_errno(fmt::format("notify socket: bind {}", path));
  }
  path_ = path;
  fd_ = std::move(fd);
  watch_ = std::make_unique<FdWatch>(loop_, fd_.get(), [this] { on_readable(); });
  return {};
}

void NotifySocket::on_readable() {
  for (int i = 0; i < kDatagramsPerWakeup; ++i) {
    char data[kNotifyMaxDatagram + 1];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * 16)];
    iovec iov{data, sizeof data};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd_.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
    if (n < 0) return;  // EAGAIN: drained.
    const ucred* cred = nullptr;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len == CMSG_LEN(sizeof(ucred))) {
        cred = reinterpret_cast<const ucred*>(CMSG_DATA(c));
      } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        close_passed_fds(c);
      }
    }
    if (static_cast<std::size_t>(n) > kNotifyMaxDatagram || (msg.msg_flags & MSG_TRUNC) != 0) {
      log_warn("notify: dropped a datagram of {} bytes (limit {})", n, kNotifyMaxDatagram);
      continue;
    }
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
      log_warn("notify: dropped a datagram whose ancillary data was truncated");
      continue;
    }
    if (cred == nullptr) {
      log_warn("notify: dropped a datagram without sender credentials");
      continue;
    }
    // Membership in a generation's process tree is what counts: a worker may run its helpers as
    // another user (nginx's workers), found through their parent chain, which no process outside
    // the tree can fake. Anyone else, of any user, is dropped.
    const bool trusted_uid = cred->uid == ::geteuid() || cred->uid == 0;
    const std::uint64_t generation = find_sender_generation(cred->pid, trusted_uid, is_main_process_);
    if (generation == 0) {
      log_warn("notify: dropped a datagram from pid {} (uid {}), which belongs to no worker generation", cred->pid,
               cred->uid);
      continue;
    }
    on_message_(generation, cred->pid, parse_notify(std::string_view(data, static_cast<std::size_t>(n))));
  }
}

}  // namespace hotrestart
