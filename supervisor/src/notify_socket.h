// NotifySocket: the datagram socket behind workers' NOTIFY_SOCKET (sd_notify: READY=1, STATUS=,
// STOPPING=1, and the preload library's X_HOTRESTART_ADOPT=1).
//
// A datagram's sender is known by the credentials the kernel attaches (SO_PASSCRED), never by
// anything in the datagram, and it counts only if it belongs to a generation's process tree: the
// generation's main process, a process whose parent chain leads to it (a worker may run helpers as
// another user, as nginx does), or, for senders of the supervisor's own uid or root, a member of
// its process group. Anyone else is dropped with a warning. So are datagrams over the size limit,
// with truncated ancillary data, or without credentials; descriptors a datagram carries are closed
// (the supervisor keeps no fds from workers).
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>

#include "notify_message.h"
#include "uv_handles.h"

namespace hotrestart {

// The generation a sender belongs to, or 0. `is_main_process(pid)` names the generation whose main
// process `pid` is (or 0); the chain of parents is walked from /proc, at most 32 levels up.
// `by_group`: a sender in a generation's process group counts too.
std::uint64_t find_sender_generation(pid_t sender, bool by_group,
                                     const std::function<std::uint64_t(pid_t)>& is_main_process);

// The parent of `pid`, from /proc/PID/stat; 0 when it cannot be read.
pid_t parent_of(pid_t pid);

class NotifySocket {
 public:
  using IsMainProcess = std::function<std::uint64_t(pid_t)>;
  using OnMessage = std::function<void(std::uint64_t generation, pid_t sender, const NotifyMessage& message)>;

  NotifySocket(uv_loop_t* loop, IsMainProcess is_main_process, OnMessage on_message);
  ~NotifySocket();
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;

  // Binds the socket at `path` (a stale file there is replaced) and starts reading.
  Status bind(const std::string& path);
  const std::string& path() const { return path_; }

 private:
  void on_readable();

  uv_loop_t* loop_;
  IsMainProcess is_main_process_;
  OnMessage on_message_;
  std::string path_;
  Fd fd_;
  std::unique_ptr<FdWatch> watch_;
};

}  // namespace hotrestart
