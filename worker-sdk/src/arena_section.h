// Arena sections: a section whose state lives in a hotrestart::Arena goes to the next generation
// as two memfds, a small sealed section (the block table and the application's header) and the
// arena itself, with the blocks' checksum in the offer. See docs/protocol.md, "Arena sections".
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include <hotrestart/arena.h>
#include <hotrestart/fd.h>

#include <hotrestart/base/result.h>
#include <hotrestart/wire/message.h>
#include <hotrestart/wire/section.h>

namespace hotrestart::wire {

// Address space an importer maps for one arena at most.
inline constexpr std::uint64_t kMaxArenaReserve = std::uint64_t{16} << 40;
// Blocks in one arena at most.
inline constexpr std::uint64_t kMaxArenaBlocks = std::uint64_t{1} << 20;

struct WrittenArena {
  Fd header;  // The sealed section: block table + the application's header.
  Fd arena;   // The arena's memfd.
  ArenaOffer offer;
};
// Checksums the snapshot's blocks (through a read-only mapping of its memfd) and writes the
// header section.
Result<WrittenArena> write_arena_section(const std::string& name, std::uint32_t version, std::uint64_t sequence,
                                         std::string_view app_header, const Arena::Snapshot& snapshot);

struct OpenedArena {
  MappedSection header;
  std::span<const std::byte> app_header;
  Arena arena;
};
// Checks the header section (as open_section does), the block table, the arena memfd's seals and
// size, maps it MAP_PRIVATE, checks the blocks' checksum, and adopts it. `shared_with` is the
// flag the SDK clears once the previous generation is gone. Errors name the check.
Result<OpenedArena> open_arena_section(Fd header, Fd arena, const ArenaOffer& offer, std::uint64_t max_bytes,
                                       std::shared_ptr<std::atomic<bool>> shared_with);

}  // namespace hotrestart::wire
