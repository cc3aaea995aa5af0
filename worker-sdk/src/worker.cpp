// The facade: the public hotrestart::Worker methods, each a thin call into Worker::Impl and its
// rooms (see worker_impl.h). The registration methods run before start(); ready, status, pass_fd
// and publish_delta may run on any of the application's threads afterwards.
#include <fcntl.h>

#include <charconv>

#include <hotrestart/base/sd_notify.h>

#include "worker_impl.h"

namespace hotrestart {
namespace {

// What publish_delta() and pass_fd() return for `outcome`. A queued message is sent at once in the
// stub, and by the SDK thread otherwise.
bool after_queueing(Worker::Impl& impl, sdk::QueueOutcome outcome) {
  switch (outcome) {
    case sdk::QueueOutcome::Refused:
      return false;
    case sdk::QueueOutcome::NothingToSendNow:
      return true;
    case sdk::QueueOutcome::Queued:
      return impl.send_queued();
  }
  return false;
}

}  // namespace

std::string_view mode_name(Mode mode) {
  switch (mode) {
    case Mode::Supervised:
      return "supervised";
    case Mode::Systemd:
      return "systemd";
    case Mode::Standalone:
      return "standalone";
    case Mode::Stub:
      return "stub";
  }
  return "?";
}

Worker::Worker() : Worker(Options{}) {}
Worker::Worker(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {
  sdk::set_transfer_nice(impl_->options.transfer_nice);
}
Worker::~Worker() = default;

void Worker::add_section(Section section) {
  impl_->sections.push_back(std::move(section));
}
void Worker::add_config(ConfigHooks hooks) {
  impl_->configs.push_back(std::move(hooks));
}
void Worker::on_drain(std::function<void()> callback) {
  impl_->drain_callback = std::move(callback);
}
void Worker::on_stop(std::function<void()> callback) {
  impl_->stop_callback = std::move(callback);
}
void Worker::on_fd(std::function<void(std::string, Fd)> callback) {
  impl_->fd_callback = std::move(callback);
}
void Worker::on_previous_gone(std::function<void()> callback) {
  impl_->previous_gone_callback = std::move(callback);
}

void Worker::on_next_gone(std::function<void()> callback) {
  impl_->next_gone_callback = std::move(callback);
}
void Worker::on_active(std::function<void()> callback) {
  impl_->active_callback = std::move(callback);
}

std::string Worker::start() {
  return impl_->start();
}
Mode Worker::mode() const {
  return impl_->mode;
}
bool Worker::active() const {
  return impl_->active.load();
}
std::uint64_t Worker::generation() const {
  return impl_->generation;
}

int Worker::listener(std::string_view name) const {
  for (const auto& [n, fd] : impl_->listeners) {
    if (n == name) return fd.get();
  }
  return -1;
}

Fd Worker::take_listener(std::string_view name) {
  for (auto& [n, fd] : impl_->listeners) {
    if (n == name && fd) return std::move(fd);
  }
  return Fd{};
}

std::vector<std::string> Worker::listener_names() const {
  std::vector<std::string> names;
  for (const auto& [n, fd] : impl_->listeners)
    names.push_back(n);
  return names;
}

Fd Worker::take_fd(std::string_view name) {
  for (auto& [n, fd] : impl_->received_fds) {
    if (n == name && fd) return std::move(fd);
  }
  return Fd{};
}

const std::vector<ImportedSection>& Worker::imported() const {
  return impl_->imported;
}

void Worker::ready() {
  switch (impl_->mode) {
    case Mode::Supervised:
      impl_->channel.send(wire::Ready{});
      break;
    case Mode::Systemd:
    case Mode::Standalone:
      (void)sd_notify_to(impl_->notify_socket, "READY=1");  // Nobody to tell when it fails.
      break;
    case Mode::Stub:
      impl_->stub_ready = true;
      break;
  }
}

bool Worker::wait_for_resume() {
  if (impl_->mode != Mode::Supervised) return false;
  auto& parking = impl_->parking;
  std::unique_lock lock(parking.mutex);
  while (parking.waiting()) {
    if (parking.changed.wait_until(lock, parking.until) == std::cv_status::timeout && parking.waiting() &&
        sdk::Clock::now() >= parking.until) {
      parking.state = Impl::Parking::State::Active;
      parking.listeners.clear();
    }
  }
  if (parking.state != Impl::Parking::State::Resumed) return false;
  parking.state = Impl::Parking::State::Active;
  impl_->listeners = std::move(parking.listeners);
  parking.listeners.clear();
  return true;
}

void Worker::status(std::string_view text) {
  // Bytes below 0x20 become spaces, so that the status stays one line. (printable() from the base
  // layer would replace DEL too, which this line has always passed on.)
  std::string line(text.substr(0, 256));
  for (char& c : line) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  if (impl_->mode == Mode::Supervised) {
    impl_->channel.send(wire::StatusLine{line});
  } else if (impl_->mode != Mode::Stub) {
    (void)sd_notify_to(impl_->notify_socket, "STATUS=" + line);
  }
}

bool Worker::pass_fd(std::string name, int fd) {
  if (!wire::valid_name(name)) return false;
  const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) return false;
  Fd owned(copy);
  // Only a supervisor or the stub has a next generation to give it to.
  if (impl_->mode != Mode::Supervised && impl_->mode != Mode::Stub) return false;
  const bool queued = after_queueing(*impl_, impl_->handover.queue_fd(std::move(name), std::move(owned)));
  if (queued) ++impl_->fds_passed;
  return queued;
}

bool Worker::publish_metrics(const std::vector<std::pair<std::string, double>>& gauges) {
  // Only the supervisor's notify socket knows what to do with them.
  if (impl_->mode != Mode::Supervised || impl_->notify_socket.empty()) return false;
  const auto line = [](std::string_view name, double value) {
    // to_chars: the shortest form that reads back the same, whatever the application's locale
    // (a "%g" under LC_NUMERIC=de_DE would write "0,25", which the supervisor refuses).
    char number[64];
    const auto end = std::to_chars(number, number + sizeof number, value).ptr;
    return "X_HOTRESTART_METRIC=" + std::string(name) + " " + std::string(number, end);
  };
  std::vector<std::string> lines;
  for (const auto& [name, value] : gauges)
    lines.push_back(line(name, value));
  lines.push_back(line("sdk_deltas_applied", static_cast<double>(impl_->deltas_applied.load())));
  lines.push_back(line("sdk_fds_received", static_cast<double>(impl_->fds_received.load())));
  lines.push_back(line("sdk_fds_passed", static_cast<double>(impl_->fds_passed.load())));
  // A datagram is at most 4096 bytes: as many lines as fit in each.
  bool sent = true;
  std::string datagram;
  for (const auto& l : lines) {
    if (!datagram.empty() && datagram.size() + 1 + l.size() > 4096) {
      sent = static_cast<bool>(sd_notify_to(impl_->notify_socket, datagram)) && sent;
      datagram.clear();
    }
    if (!datagram.empty()) datagram += '\n';
    datagram += l;
  }
  if (!datagram.empty()) sent = static_cast<bool>(sd_notify_to(impl_->notify_socket, datagram)) && sent;
  return sent;
}

bool Worker::publish_delta(std::string_view section, const std::function<std::string(std::uint32_t version)>& encode) {
  return after_queueing(*impl_, impl_->handover.queue_delta(section, encode));
}

}  // namespace hotrestart
