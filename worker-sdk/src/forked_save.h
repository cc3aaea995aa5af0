// A section's `save` in a forked child (Section::freeze): the application pauses for the fork, not
// for the save.
//
// The SDK thread calls the application's freeze, which takes the writers' lock and calls the
// SnapshotFork it is given. That forks the process (after freezing the arenas it is handed, whose
// memory the two processes share): the child is a copy-on-write image of the state at that instant
// in which only the SDK thread runs. The child closes every descriptor but the standard ones and
// those it writes to, runs the writer it is given (which calls `save`), sends the parent one
// message on a socket of its own saying how that went (with the memfd it wrote, if any), and
// _exit()s. It never logs: another thread may have held stdio's lock at the fork.
//
// The parent waits for that message. Meanwhile it adds up what the snapshot costs in memory: the
// pages this process has written since the fork, each now held twice (the child's private pages,
// from its smaps_rollup, and this process's anonymous pages beyond those it had at the fork, which
// counts the arenas' copies). Past the bound it calls freeze again, and the SnapshotFork then waits
// under the writers' lock for the child, so that no more pages are copied: the application pauses
// as it would have for a locked save, and the log says so.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <hotrestart/fd.h>
#include <hotrestart/worker.h>

#include <hotrestart/wire/message.h>

namespace hotrestart::sdk {

// What the child sends back: a section-offer (with the memfd it wrote, or none for a stream, its
// length then the bytes streamed) when the section was written, section-unavailable with the reason
// when not.
struct ChildResult {
  wire::Message message;
  Fd memfd;
};

// The snapshot's copies are first sampled this long after the fork, and then again after 19 times
// as long as the last sample took (so that sampling takes at most 5% of a CPU), between these two.
inline constexpr int kFirstSampleMs = 20;
inline constexpr int kMaxSampleIntervalMs = 1000;

struct ForkedSave {
  bool forked = false;
  std::string why_not;                // When not forked: why (the caller saves under the lock).
  std::optional<ChildResult> result;  // When forked: the child's result; empty if it died.
  std::string child_end;              // When it died: how ("killed by signal 9").
  pid_t child = 0;
  std::chrono::microseconds pause{0};   // The fork's instant, under the writers' lock.
  std::chrono::microseconds waited{0};  // Writers held back because the copies outgrew the bound.
  std::uint64_t peak_copy_bytes = 0;    // The most memory the snapshot's copies took, as sampled.
  bool sampled = false;                 // Whether they were sampled at all (first after kFirstSampleMs).
  std::uint64_t sequence_at_fork = 0;   // `sequence_now` at the fork: the snapshot holds those changes.
};

// Runs `write` in a child forked under section.freeze. `give` are the descriptors `write` uses:
// the child keeps them (and closes all others but 0, 1 and 2), this process closes them once it has
// forked. `write` runs only in the child, and must not throw.
// `sequence_now` is read at the instant of the fork, under the writers' lock: the number of the
// last change published (HandoverState::delta_sequence).
ForkedSave save_in_child(const Section& section, std::uint64_t max_copy_bytes, const std::vector<Fd*>& give,
                         const std::function<std::uint64_t()>& sequence_now, const std::function<ChildResult()>& write);

// The memory a forked snapshot costs so far: `child`'s private pages, plus this process's anonymous
// pages beyond `anon_at_fork`. 0 if unknown.
std::uint64_t snapshot_copy_bytes(pid_t child, std::uint64_t anon_at_fork);
// This process's anonymous resident bytes (RssAnon).
std::uint64_t own_anonymous_bytes();

}  // namespace hotrestart::sdk
