// The SDK's HandoverState on its own: what goes to the next generation, and when, with no thread
// and no process (the link is a seqpacket pair whose other end the test reads).
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <hotrestart/wire/channel.h>

#include "handover_state.h"

using namespace hotrestart;
using namespace hotrestart::sdk;

namespace {

struct Link {
  Fd ours;    // Given to the HandoverState.
  Fd theirs;  // The next generation's end, read by the test.
};

Link make_link() {
  auto pair = wire::seqpacket_pair();
  REQUIRE(pair.ok());
  return {std::move(pair->first), std::move(pair->second)};
}

Fd dev_null() {
  return Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
}

// The names of the descriptors in every Fds message waiting on `end`.
std::vector<std::string> received_fd_names(int end) {
  std::vector<std::string> names;
  for (;;) {
    auto r = wire::receive_message(end, wire::Blocking::No);
    if (!r) break;
    if (const auto* fds = std::get_if<wire::Fds>(&r->message))
      names.insert(names.end(), fds->names.begin(), fds->names.end());
  }
  return names;
}

}  // namespace

TEST_CASE("handover: a descriptor passed after the snapshot took the passed ones reaches the next generation") {
  HandoverState state(1 << 20, 1 << 20);
  CHECK(state.queue_fd("early", dev_null()) == QueueOutcome::NothingToSendNow);  // Kept for the transfer.
  Link link = make_link();
  state.begin_transfer(std::move(link.ours));
  const auto passed = state.take_passed_fds_for_snapshot();
  CHECK(passed.names == std::vector<std::string>{"early"});
  // The exporter has copied the kept descriptors but not yet sent snapshot-end: one passed now is
  // not in the snapshot, so it must follow it.
  CHECK(state.queue_fd("late", dev_null()) == QueueOutcome::Queued);
  CHECK(state.flush());  // Nothing goes before snapshot-end.
  CHECK(received_fd_names(link.theirs.get()).empty());
  state.snapshot_sent(std::nullopt);
  CHECK(state.flush());
  CHECK(received_fd_names(link.theirs.get()) == std::vector<std::string>{"late"});
  // Kept for a later transfer too, in case this next generation is rolled back.
  Link second = make_link();
  state.next_gone(LinkEnd::PeerClosed);
  state.begin_transfer(std::move(second.ours));
  CHECK(state.take_passed_fds_for_snapshot().names == std::vector<std::string>{"early", "late"});
}

TEST_CASE("handover: a descriptor passed before the snapshot takes the passed ones goes with the snapshot only") {
  HandoverState state(1 << 20, 1 << 20);
  Link link = make_link();
  state.begin_transfer(std::move(link.ours));
  CHECK(state.queue_fd("before", dev_null()) == QueueOutcome::NothingToSendNow);
  CHECK(state.take_passed_fds_for_snapshot().names == std::vector<std::string>{"before"});
  state.snapshot_sent(std::nullopt);
  CHECK(state.flush());
  CHECK(received_fd_names(link.theirs.get()).empty());  // Not twice.
}

TEST_CASE("handover: a hang-up polled on an earlier link does not end the next generation's new one") {
  HandoverState state(1 << 20, 1 << 20);
  Link first = make_link();
  state.begin_transfer(std::move(first.ours));
  const auto polled = state.poll_request();
  // The earlier next generation exits, and before the hang-up is handled a new transfer begins.
  first.theirs.reset();
  Link second = make_link();
  state.begin_transfer(std::move(second.ours));
  state.link_hung_up(polled.link);
  CHECK_FALSE(state.take_next_gone_notice());
  CHECK(state.poll_request().fd >= 0);
  // A hang-up of the link in place does end it.
  state.link_hung_up(state.poll_request().link);
  CHECK(state.take_next_gone_notice());
  CHECK(state.poll_request().fd == -1);
}
