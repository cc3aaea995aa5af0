// WorkerChannel: the supervisor's end of one worker's channel (docs/protocol.md, "Worker
// channel"), on the loop. Every worker gets one; only SDK workers ever speak on it.
//
// It reads without blocking and hands each message to its handler, at most a bounded number per
// wake-up so that one chatty worker cannot starve the loop; it sends without blocking, so that a
// worker that stops reading costs only itself (what it has not read stays in its socket buffer);
// and it tells apart the worker closing its end (usually because it is exiting) from a message
// that does not decode. What a message means is the supervisor's business, not this class's.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <span>
#include <string>
#include <vector>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>
#include <hotrestart/wire/message.h>

#include "uv_handles.h"

namespace hotrestart {

class WorkerChannel {
 public:
  struct Handler {
    std::function<void(wire::Message& message, std::vector<Fd>& fds)> on_message;
    std::function<void()> on_closed;                        // The worker closed its end (EOF, reset).
    std::function<void(const std::string& why)> on_broken;  // A message failed the codec's checks.
  };

  // `label` names the worker in log lines ("generation 3").
  WorkerChannel(uv_loop_t* loop, Fd fd, std::string label, Handler handler);
  ~WorkerChannel();
  WorkerChannel(const WorkerChannel&) = delete;
  WorkerChannel& operator=(const WorkerChannel&) = delete;

  bool open() const { return static_cast<bool>(fd_); }
  // The process the channel belongs to: a message any other process sends on it (a helper that
  // inherited the descriptor) is dropped, with a warning, and never reaches the handler. The
  // sender is known when the supervisor's end has SO_PASSCRED (WorkerLauncher sets it).
  void set_owner(pid_t pid) { owner_ = pid; }
  int fd() const { return fd_.get(); }

  // Sends one message without blocking; false (and a warning in the log) if it could not go.
  bool send(const wire::Message& message, std::span<const int> fds = {});
  // Sends the listening sockets, named, in as many `listeners` messages as they need.
  Status send_listeners(std::span<const std::string> names, std::span<const int> fds);
  // Tells the worker why (a `refuse` message, if the channel is still open), then closes it.
  void refuse_and_close(const std::string& reason);
  void close();

 private:
  void on_readable();

  uv_loop_t* loop_;
  Fd fd_;
  std::string label_;
  pid_t owner_ = 0;
  std::set<pid_t> warned_;  // Other senders already named in the log.
  Handler handler_;
  std::unique_ptr<FdWatch> watch_;
  // Cleared by the destructor: a handler may destroy this channel's owner while on_readable runs.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace hotrestart
