// The stub supervisor (hotrestart/testing.h). It drives the same rooms an upgrade does, on the
// caller's threads: start-up (start_stub), the Exporter and the Importer over a real socket pair,
// and the HandoverState through which deltas and descriptors follow; only the processes, the
// supervisor and the SDK thread are missing.
#include <hotrestart/testing.h>

#include <thread>

#include <hotrestart/wire/channel.h>
#include "worker_impl.h"

namespace hotrestart {

// The stub reaches into Worker::Impl through this friend.
class testing_access {
 public:
  static Worker::Impl& impl(Worker& w) { return *w.impl_; }
  static const Worker::Impl& impl(const Worker& w) { return *w.impl_; }
};

namespace testing {

std::string StubSupervisor::start(Worker& worker, std::uint64_t generation) {
  Worker::Impl& impl = testing_access::impl(worker);
  auto error = impl.start_stub(generation);
  if (error.empty()) impl.become_active();
  return error;
}

void StubSupervisor::cut_over(Worker& next) {
  testing_access::impl(next).become_active();
}

std::string StubSupervisor::start_from(Worker& next, Worker& previous) {
  Worker::Impl& to = testing_access::impl(next);
  Worker::Impl& from = testing_access::impl(previous);
  if (!from.started) return "the previous worker was not started";
  if (auto error = to.start_stub(from.generation + 1); !error.empty()) return error;
  to.imported.clear();

  auto pair = wire::seqpacket_pair();
  if (!pair) return pair.error().text();
  std::vector<wire::SectionVersions> plan;
  for (const auto& s : to.sections) {
    if (s.load || s.load_arena) plan.push_back({s.name, s.versions, static_cast<bool>(s.load_arena)});
  }
  // The export writes to a socket the import reads, so they run side by side as they would in two
  // processes.
  Fd export_end = std::move(pair->second);
  std::thread exporter([&] { from.export_to(std::move(export_end), to.generation, plan, [](const auto&) {}); });
  to.peer_in = std::move(pair->first);
  to.import_from(to.peer_in.get(), plan, Worker::Impl::Clock::now() + to.options.start_timeout, [](const auto&) {});
  exporter.join();
  from.handover.flush();
  return {};
}

std::size_t StubSupervisor::pump(Worker& next) {
  Worker::Impl& to = testing_access::impl(next);
  std::size_t handled = 0;
  while (to.peer_in) {
    auto r = wire::receive_message(to.peer_in.get(), wire::Blocking::No);
    if (!r) {
      const int code = r.error().code();
      if (code == EAGAIN) break;
      if (code == EPIPE || code == ECONNRESET) {
        to.previous_gone();
        break;
      }
      continue;  // One bad message costs that message, not the link (as on the SDK thread).
    }
    to.on_peer_in(std::move(r).value());
    ++handled;
  }
  return handled;
}

void StubSupervisor::end_previous(Worker& previous) {
  Worker::Impl& from = testing_access::impl(previous);
  from.handover.flush();
  from.handover.next_gone(sdk::LinkEnd::PeerClosed);
}

void StubSupervisor::drain(Worker& worker) {
  Worker::Impl& impl = testing_access::impl(worker);
  impl.active.store(false);
  impl.draining.store(true);
  impl.handover.start_draining();
  if (impl.drain_callback) impl.drain_callback();
}

void StubSupervisor::stop(Worker& worker) {
  Worker::Impl& impl = testing_access::impl(worker);
  if (impl.stop_callback) impl.stop_callback();
}

bool StubSupervisor::is_ready(const Worker& worker) {
  return testing_access::impl(worker).stub_ready;
}

}  // namespace testing
}  // namespace hotrestart
