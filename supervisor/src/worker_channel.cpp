// The supervisor's end of a worker's channel (see worker_channel.h).
#include "worker_channel.h"

#include <cerrno>

#include <hotrestart/wire/channel.h>

#include "log.h"

namespace hotrestart {
namespace {

// Messages handled per wake-up before the loop gets a turn.
constexpr int kMessagesPerWakeup = 32;

}  // namespace

WorkerChannel::WorkerChannel(uv_loop_t* loop, Fd fd, std::string label, Handler handler)
    : loop_(loop), fd_(std::move(fd)), label_(std::move(label)), handler_(std::move(handler)) {
  if (fd_) watch_ = std::make_unique<FdWatch>(loop_, fd_.get(), [this] { on_readable(); });
}

WorkerChannel::~WorkerChannel() {
  *alive_ = false;
}

void WorkerChannel::close() {
  watch_.reset();
  fd_.reset();
}

bool WorkerChannel::send(const wire::Message& message, std::span<const int> fds) {
  if (!fd_) return false;
  if (auto ok = wire::send_message(fd_.get(), message, fds, wire::Blocking::No); !ok) {
    log_warn("{}: cannot send {}: {}", label_, wire::type_name(wire::type_of(message)), ok.error().text());
    return false;
  }
  return true;
}

Status WorkerChannel::send_listeners(std::span<const std::string> names, std::span<const int> fds) {
  if (!fd_) return Error::message("the channel is closed");
  return wire::send_named_fds(fd_.get(), wire::Type::Listeners, names, fds, wire::Blocking::No);
}

void WorkerChannel::refuse_and_close(const std::string& reason) {
  if (fd_) send(wire::Refuse{reason.substr(0, wire::kMaxTextLength)});
  close();
}

void WorkerChannel::on_readable() {
  const std::shared_ptr<bool> alive = alive_;
  for (int i = 0; i < kMessagesPerWakeup && *alive && fd_; ++i) {
    auto received = wire::receive_message(fd_.get(), wire::Blocking::No);
    if (received) {
      if (owner_ != 0 && received->sender != owner_) {
        // Not its main process (and no credentials at all counts as not: the kernel always adds
        // them here). Its descriptors, if any, are closed with `received`.
        if (warned_.insert(received->sender).second) {
          log_warn("{}: pid {} sent {} on the channel, which belongs to the main process (pid {}); ignored", label_,
                   received->sender, wire::type_name(wire::type_of(received->message)), owner_);
        }
        continue;
      }
      handler_.on_message(received->message, received->fds);
      continue;
    }
    const int code = received.error().code();
    if (code == EAGAIN) return;
    if (code == EPIPE || code == ECONNRESET) {
      // End of file, or a reset because the worker exited with messages of ours unread.
      log_debug("{}: channel closed by the worker", label_);
      close();
      handler_.on_closed();
      return;
    }
    handler_.on_broken(received.error().text());
    return;
  }
}

}  // namespace hotrestart
