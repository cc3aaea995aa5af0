// The worker's channel to the supervisor, and the lock that keeps each message on it whole and in
// order. Messages go from the application's threads (ready, status) and from the SDK thread (the
// transfer's reports, a refusal). Only start(), before the SDK thread exists, and then the SDK
// thread receive from it; only the SDK thread closes it. That thread may therefore read the
// descriptor without the lock, which every other use of the descriptor takes.
#pragma once

#include <mutex>

#include <hotrestart/fd.h>

#include <hotrestart/wire/message.h>

namespace hotrestart::sdk {

class SupervisorChannel {
 public:
  // start(): the descriptor named by HOTRESTART_CHANNEL_FD, before the SDK thread exists.
  void adopt(Fd fd);
  // The descriptor, or -1 once closed. For start() and the SDK thread only (see above).
  int fd() const { return fd_.get(); }
  // Sends one message, blocking; a failure is logged, since nothing better can be done about it.
  void send(const wire::Message& message);
  // The SDK thread gives up on the channel: the supervisor sees it close.
  void close();

 private:
  std::mutex mutex_;
  Fd fd_;
};

}  // namespace hotrestart::sdk
