// What the SDK reads from an Arena::Snapshot it hands over, and how it builds the Arena an
// import adopts. Not part of the public API.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <hotrestart/arena.h>

namespace hotrestart::detail {

struct ArenaAccess {
  static const Fd& memfd(const Arena::Snapshot& s);
  static std::uint64_t reserve(const Arena::Snapshot& s);
  static const std::vector<Arena::Block>& blocks(const Arena::Snapshot& s);
  static std::shared_ptr<std::atomic<bool>> shared_with(const Arena::Snapshot& s);

  // An Arena over a memfd received from the previous generation, already mapped MAP_PRIVATE at
  // `base` (`reserve` bytes) and checked: borrowed, holding `blocks`, with every gap punched out.
  // `shared_with` stays true until the previous generation is gone.
  // Drops this process's page table entries of every arena mapped shared (the memory stays in the
  // memfd, and the next access maps it again), outside any application lock: so that a snapshot
  // taken next, under the lock, does not pay for unmapping a gigabyte's entries (tens of
  // milliseconds), only those the application touched since.
  static void drop_page_tables();

  static Arena adopt(Fd memfd, std::byte* base, std::uint64_t reserve, const std::vector<Arena::Block>& blocks,
                     std::shared_ptr<std::atomic<bool>> shared_with);
};

}  // namespace hotrestart::detail
