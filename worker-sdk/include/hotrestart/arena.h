// hotrestart::Arena: memory that the next generation takes over as it is, with no copy.
//
// An Arena is one memfd mapped into the process, in which the application allocates large blocks
// (4 KiB-aligned, zero-filled) and keeps its state, using offsets rather than pointers between
// blocks. A section whose state lives in an Arena can hand the whole arena over at an upgrade
// (Section::save_arena / load_arena in worker.h): the SDK passes the memfd, checksums the blocks
// on both sides, and the next generation maps the same memory pages. A gigabyte moves in the time
// it takes to checksum it, and the old generation pauses only to take the snapshot.
//
//   hotrestart::Arena arena(std::uint64_t{64} << 30);   // address space to reserve; no memory yet
//   std::byte* table = arena.allocate(1 << 20);        // zero-filled
//   std::uint64_t where = arena.offset_of(table);      // what a section's header records
//
// Sharing. After snapshot() (the old generation) or an import (the new one), two processes map
// the same pages. Each then sees its own writes only: the arena is *borrowed* (shared() is false),
// and a page it writes becomes its own copy. Once the other generation is gone (the SDK tells the
// arena), reclaim() writes those copies back into the memfd and makes the arena this process's
// alone again; snapshot() does it by itself when it can. Borrowed arenas do not reuse freed blocks
// before reclaim(); they allocate above the snapshot instead.
//
// Threads. An Arena is not synchronised: allocate, release, write, snapshot and reclaim must be
// called under the lock that guards the application's state (the lock `save_arena` takes), or by
// one thread at a time. Reads and writes of the blocks' bytes need no more than the application's
// own locking.
//
// A process that forks must not read an arena's memory in the child: after reclaim() the child's
// view would change under it.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include <hotrestart/fd.h>

namespace hotrestart {

namespace detail {
struct ArenaAccess;
}

class Arena {
 public:
  // A block: where it starts in the arena and how many bytes it spans (a multiple of 4 KiB).
  struct Block {
    std::uint64_t offset = 0;
    std::uint64_t bytes = 0;
    bool operator==(const Block&) const = default;
  };

  // The arena as it was at snapshot(): what Section::save_arena returns for the SDK to hand over.
  // An empty Snapshot means "no snapshot": the SDK then falls back to Section::save.
  class Snapshot {
   public:
    Snapshot() = default;
    explicit operator bool() const { return static_cast<bool>(memfd_); }
    std::uint64_t bytes() const;  // The blocks' total.

   private:
    friend class Arena;
    friend struct detail::ArenaAccess;
    Fd memfd_;
    std::uint64_t reserve_ = 0;
    std::vector<Block> blocks_;
    std::shared_ptr<std::atomic<bool>> shared_with_;
  };

  Arena();  // Holds nothing; allocate() throws.
  // Reserves `reserve` bytes of address space (rounded up to 4 KiB) over a new memfd. Nothing is
  // allocated until blocks are. Throws std::system_error if the memfd or the mapping fails.
  explicit Arena(std::uint64_t reserve);
  ~Arena();
  Arena(Arena&& other) noexcept;
  Arena& operator=(Arena&& other) noexcept;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  explicit operator bool() const { return static_cast<bool>(state_); }

  // A zero-filled block of at least `bytes` bytes, 4 KiB-aligned. Throws std::bad_alloc when the
  // reserve is used up.
  std::byte* allocate(std::uint64_t bytes);
  // Gives a block back (its pages return to the system). `block` must be a pointer allocate()
  // returned, or the start of a block the arena was imported with.
  void release(std::byte* block);

  // Copies `n` bytes from `bytes` to `at`, which with its n bytes must lie inside one block; throws
  // std::out_of_range otherwise, and std::system_error if the memfd refuses the write (no memory
  // left to give it, say). The same as std::memcpy, but while the arena is this process's alone
  // (shared()) it writes through the memfd: into pages not touched yet that costs no page fault per
  // 4 KiB page (the first read maps them, up to 16 pages per fault), and fills new memory about
  // twice as fast as a copy through the mapping (docs/benchmarks.md, "State transfer"). For a load
  // that fills a new arena from a snapshot; a few bytes at a time it is slower than memcpy (a
  // system call each). In a borrowed arena it copies through the mapping.
  void write(std::byte* at, const void* bytes, std::uint64_t n);

  std::uint64_t offset_of(const std::byte* block) const;
  // The block that starts at `offset`, if it spans at least `bytes` bytes; otherwise nullptr.
  // What a load_arena uses to turn the offsets of a header it does not trust into pointers.
  std::byte* block_at(std::uint64_t offset, std::uint64_t bytes) const;
  std::vector<Block> blocks() const;      // In offset order.
  std::uint64_t allocated_bytes() const;  // The blocks' total.
  std::uint64_t reserve() const;

  // Whether the memory is this process's alone (see "Sharing" above).
  bool shared() const;

  // Freezes the arena's contents for the next generation and returns them, for save_arena. Call
  // it under the lock that guards the state, after writing the header that describes it: from here
  // on this process's writes go to its own copies of the pages. Returns an empty Snapshot when the
  // arena is borrowed and the other generation may still read it.
  Snapshot snapshot();

  // Makes a borrowed arena this process's alone again once the other generation is gone: writes the
  // pages this process changed back into the memfd and maps it shared. Returns false (and changes
  // nothing) while the other generation may still map it, or for an empty arena; true once the
  // arena is not borrowed. Call it under the state's lock (for example from on_previous_gone).
  bool reclaim();

 private:
  friend struct detail::ArenaAccess;
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace hotrestart
