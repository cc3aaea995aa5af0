// The facade: the public hotrestart::Worker methods, each a thin call into Worker::Impl and its
// rooms (see worker_impl.h). The registration methods run before start(); ready, status, pass_fd
// and publish_delta may run on any of the application's threads afterwards.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstddef>
#include <cstring>
#include <ostream>

#include <hotrestart/wire/section.h>
#include "worker_impl.h"

namespace hotrestart {
namespace {

// A datagram in systemd's notify format to `path` ('@' = abstract namespace).
void sd_notify_to(const std::string& path, std::string_view message) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof addr.sun_path) return;
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  auto len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  if (addr.sun_path[0] == '@') {
    addr.sun_path[0] = '\0';
  } else {
    ++len;
  }
  Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return;
  ::sendto(fd.get(), message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<const sockaddr*>(&addr), len);
}

std::size_t message_bytes(const wire::Message& m) {
  if (const auto* d = std::get_if<wire::Delta>(&m)) return d->payload.size() + d->section.size() + 64;
  return 256;
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

// ---------------------------------------------------------------------------------------------
// The public surface

Worker::Worker() : Worker(Options{}) {}
Worker::Worker(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Worker::~Worker() = default;

void Worker::add_section(Section section) {
  impl_->sections.push_back(std::move(section));
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

std::string Worker::start() {
  return impl_->start();
}
Mode Worker::mode() const {
  return impl_->mode;
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
      impl_->send_channel(wire::Ready{});
      break;
    case Mode::Systemd:
    case Mode::Standalone:
      sd_notify_to(impl_->notify_socket, "READY=1");
      break;
    case Mode::Stub:
      impl_->stub_ready = true;
      break;
  }
}

void Worker::status(std::string_view text) {
  std::string line(text.substr(0, 256));
  for (char& c : line) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  if (impl_->mode == Mode::Supervised) {
    impl_->send_channel(wire::StatusLine{line});
  } else if (impl_->mode != Mode::Stub) {
    sd_notify_to(impl_->notify_socket, "STATUS=" + line);
  }
}

bool Worker::pass_fd(std::string name, int fd) {
  if (!wire::valid_name(name)) return false;
  const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
  if (copy < 0) return false;
  Fd owned(copy);
  Impl& impl = *impl_;
  {
    std::lock_guard lock(impl.mutex);
    const bool link_up = impl.peer_out && impl.snapshot_sent;
    if (impl.mode != Mode::Supervised && impl.mode != Mode::Stub) return false;
    if (impl.draining && !link_up) return false;  // Nothing will ever receive it.
    if (!impl.draining) {
      // Kept for every later transfer too, in case the next generation is rolled back.
      const int keep = ::fcntl(owned.get(), F_DUPFD_CLOEXEC, 3);
      if (keep < 0) return false;
      impl.passed_fds.emplace_back(name, Fd(keep));
    }
    if (!link_up) return true;  // Goes with the next transfer.
    if (impl.peer_queue_bytes + 256 > impl.options.max_queued_bytes) return false;
    Impl::Outgoing out;
    out.message = wire::Fds{{std::move(name)}};
    out.fds.push_back(std::move(owned));
    out.bytes = 256;
    impl.peer_queue_bytes += out.bytes;
    impl.peer_queue.push_back(std::move(out));
  }
  if (impl.mode == Mode::Stub) return impl.flush_peer_out();
  impl.wake();
  return true;
}

bool Worker::publish_delta(std::string_view section, const std::function<std::string(std::uint32_t version)>& encode) {
  Impl& impl = *impl_;
  {
    std::lock_guard lock(impl.mutex);
    auto it = impl.streaming.find(std::string(section));
    if (!impl.peer_out || it == impl.streaming.end()) return true;  // No transfer under way: nothing to do.
    std::string payload = encode(it->second);
    if (payload.size() > impl.options.max_delta_bytes) return false;
    Impl::Outgoing out;
    const std::uint64_t sequence = ++impl.delta_sequence;
    if (payload.size() <= wire::kMaxDeltaPayload) {
      out.message = wire::Delta{std::string(section), it->second, sequence, std::move(payload)};
      out.bytes = message_bytes(out.message);
    } else {
      // Too large for one message: it goes as a sealed memfd in the section format, checked on
      // arrival like a snapshot.
      auto written = wire::write_section(
          std::string(section), it->second, sequence, [&](std::ostream& o) { o.write(payload.data(), payload.size()); },
          payload.size());
      if (!written) return false;
      out.message = wire::DeltaMemfd{written->offer};
      out.fds.push_back(std::move(written->memfd));
      out.bytes = payload.size() + 256;
    }
    if (impl.peer_queue_bytes + out.bytes > impl.options.max_queued_bytes) return false;
    impl.peer_queue_bytes += out.bytes;
    impl.peer_queue.push_back(std::move(out));
  }
  if (impl.mode == Mode::Stub) return impl.flush_peer_out();
  impl.wake();
  return true;
}

}  // namespace hotrestart
