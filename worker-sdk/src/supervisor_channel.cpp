// The worker's channel to the supervisor (see supervisor_channel.h).
#include "supervisor_channel.h"

#include <string>

#include <hotrestart/wire/channel.h>
#include "worker_common.h"

namespace hotrestart::sdk {

void SupervisorChannel::adopt(Fd fd) {
  std::lock_guard lock(mutex_);
  fd_ = std::move(fd);
}

void SupervisorChannel::send(const wire::Message& message) {
  std::lock_guard lock(mutex_);
  if (!fd_) return;
  if (auto ok = wire::send_message(fd_.get(), message, {}, wire::Blocking::Yes); !ok) {
    say("cannot tell the supervisor (%s): %s", std::string(wire::type_name(wire::type_of(message))).c_str(),
        ok.error().text().c_str());
  }
}

void SupervisorChannel::close() {
  std::lock_guard lock(mutex_);
  fd_.reset();
}

}  // namespace hotrestart::sdk
