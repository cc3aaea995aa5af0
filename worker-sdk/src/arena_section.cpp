// An arena's wire form: writing the offer and checking an offered arena before it is mapped (see
// arena_section.h).
#include "arena_section.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h>  // XXH3_64bits: run-time dispatch to AVX2 / AVX-512 (see stream.cpp).
#endif

#include <algorithm>
#include <atomic>
#include <cstring>
#include <sstream>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <hotrestart/wire/bytes.h>
#include "arena_access.h"
#include "worker_common.h"

namespace hotrestart::wire {
namespace {

constexpr std::uint64_t kPage = 4096;
// The blocks are hashed in pieces of this size, on several threads; the checksum is the XXH3-64 of
// the pieces' XXH3-64 digests (little-endian u64s, in offset order).
constexpr std::uint64_t kHashPiece = std::uint64_t{4} << 20;

struct Piece {
  std::uint64_t offset;
  std::uint64_t bytes;
};

std::uint64_t checksum_blocks(const std::byte* base, const std::vector<Arena::Block>& blocks) {
  std::vector<Piece> pieces;
  for (const auto& b : blocks) {
    for (std::uint64_t at = 0; at < b.bytes; at += kHashPiece)
      pieces.push_back({b.offset + at, std::min(kHashPiece, b.bytes - at)});
  }
  std::vector<std::uint64_t> digests(pieces.size());
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < pieces.size();) {
      const std::byte* p = base + pieces[i].offset;
      // Faulting the piece in with one call is cheaper than a fault per page (an old kernel without
      // MADV_POPULATE_READ faults them as they are read).
      (void)::madvise(const_cast<std::byte*>(p), pieces[i].bytes, MADV_POPULATE_READ);
      digests[i] = XXH3_64bits(p, pieces[i].bytes);  // The host is little-endian (message.cpp).
    }
  };
  // With a transfer priority, the hashing runs on threads of its own at that priority, and this
  // thread (the SDK's, or the application's) only waits.
  const bool lowered = sdk::transfer_nice() > 0;
  const unsigned cores = std::max(1U, std::thread::hardware_concurrency());
  const unsigned helpers = pieces.size() < 8 ? 0 : std::min(3U, lowered ? cores : cores - 1);
  std::vector<std::thread> threads;
  try {
    for (unsigned t = 0; t < helpers; ++t)
      threads.emplace_back([&] {
        sdk::lower_priority_for_transfer();
        work();
      });
  } catch (const std::system_error&) {
    // No thread to be had (a process limit): the threads already started do it, or this one alone.
  }
  if (!lowered || threads.empty()) work();
  for (auto& t : threads)
    t.join();
  return XXH3_64bits(digests.data(), digests.size() * sizeof(std::uint64_t));
}

}  // namespace

Result<WrittenArena> write_arena_section(const std::string& name, std::uint32_t version, std::uint64_t sequence,
                                         std::string_view app_header, const Arena::Snapshot& snapshot) {
  const std::string where = "section " + quote(name);
  const auto& blocks = detail::ArenaAccess::blocks(snapshot);
  const std::uint64_t reserve = detail::ArenaAccess::reserve(snapshot);
  Fd arena(::fcntl(detail::ArenaAccess::memfd(snapshot).get(), F_DUPFD_CLOEXEC, 0));
  if (!arena) return Error::from_errno(where + ": dup of the arena's memfd");
  if (blocks.size() > kMaxArenaBlocks) {
    return Error::message(where + ": the arena has " + std::to_string(blocks.size()) + " blocks, more than " +
                          std::to_string(kMaxArenaBlocks));
  }

  // Read through a mapping of the file: this process's own view may already differ from it.
  void* map = ::mmap(nullptr, reserve, PROT_READ, MAP_SHARED | MAP_NORESERVE, arena.get(), 0);
  if (map == MAP_FAILED) return Error::from_errno(where + ": mmap of the arena");
  const std::uint64_t checksum = checksum_blocks(static_cast<const std::byte*>(map), blocks);
  ::munmap(map, reserve);

  std::uint64_t total = 0;
  auto written = write_section(
      name, version, sequence,
      [&](std::ostream& out) {
        std::string table(8 + blocks.size() * 16, '\0');
        put<std::uint64_t>(table.data(), blocks.size());
        for (std::size_t i = 0; i < blocks.size(); ++i) {
          put<std::uint64_t>(table.data() + 8 + i * 16, blocks[i].offset);
          put<std::uint64_t>(table.data() + 16 + i * 16, blocks[i].bytes);
          total += blocks[i].bytes;
        }
        out.write(table.data(), static_cast<std::streamsize>(table.size()));
        out.write(app_header.data(), static_cast<std::streamsize>(app_header.size()));
      },
      std::uint64_t{1} << 32);
  if (!written) return written.error();
  WrittenArena out;
  out.header = std::move(written->memfd);
  out.arena = std::move(arena);
  out.offer = ArenaOffer{written->offer, reserve, total, checksum};
  return out;
}

Result<OpenedArena> open_arena_section(Fd header, Fd arena, const ArenaOffer& offer, std::uint64_t max_bytes,
                                       std::shared_ptr<std::atomic<bool>> shared_with) {
  const std::string where = "section " + quote(offer.offer.name);
  auto fail = [&](const std::string& what) { return Error::message(where + ": " + what); };

  auto mapped = open_section(std::move(header), offer.offer, std::uint64_t{1} << 32);
  if (!mapped) return mapped.error();
  auto payload = mapped->payload();
  if (payload.size() < 8) return fail("the arena's block table is truncated");
  const auto count = get<std::uint64_t>(payload.data());
  if (count > kMaxArenaBlocks || count * 16 > payload.size() - 8)
    return fail("the arena's block table lists " + std::to_string(count) + " blocks, more than it holds");
  if (offer.reserve == 0 || offer.reserve % kPage != 0 || offer.reserve > kMaxArenaReserve)
    return fail("an arena of " + std::to_string(offer.reserve) + " bytes is not a multiple of 4096 up to " +
                std::to_string(kMaxArenaReserve));
  std::vector<Arena::Block> blocks(count);
  std::uint64_t end = 0;
  std::uint64_t total = 0;
  for (std::uint64_t i = 0; i < count; ++i) {
    Arena::Block& b = blocks[i];
    b.offset = get<std::uint64_t>(payload.data() + 8 + i * 16);
    b.bytes = get<std::uint64_t>(payload.data() + 16 + i * 16);
    if (b.bytes == 0 || b.offset % kPage != 0 || b.bytes % kPage != 0 || b.offset < end ||
        b.bytes > offer.reserve - b.offset || b.offset > offer.reserve) {
      return fail("the arena's block " + std::to_string(i) + " (" + std::to_string(b.bytes) + " bytes at " +
                  std::to_string(b.offset) + ") is not aligned, overlaps another, or lies outside the arena");
    }
    end = b.offset + b.bytes;
    total += b.bytes;
  }
  if (total != offer.bytes)
    return fail("the offer says " + std::to_string(offer.bytes) + " bytes of blocks but the table lists " +
                std::to_string(total));
  if (total > max_bytes)
    return fail("the arena's " + std::to_string(total) + " bytes are over the limit of " + std::to_string(max_bytes));

  // The size must stay what is mapped: a shrink would turn reads into SIGBUS.
  const int seals = ::fcntl(arena.get(), F_GET_SEALS);
  if (seals < 0) return Error::from_errno(where + ": fcntl(F_GET_SEALS) of the arena");
  if ((seals & F_SEAL_SHRINK) == 0 || (seals & F_SEAL_GROW) == 0)
    return fail("the arena's memfd is not sealed against resizing (F_SEAL_SHRINK, F_SEAL_GROW)");
  // An ordinary memfd, in 4 KiB pages: a hugetlbfs one could fault (SIGBUS) when no huge page is
  // left, and holes could not be punched in 4 KiB pieces.
  struct statfs fs {};
  if (::fstatfs(arena.get(), &fs) != 0) return Error::from_errno(where + ": fstatfs of the arena");
  if (fs.f_type != TMPFS_MAGIC) return fail("the arena's memfd is not an ordinary (tmpfs) memfd");
  struct stat st {};
  if (::fstat(arena.get(), &st) != 0) return Error::from_errno(where + ": fstat of the arena");
  if (static_cast<std::uint64_t>(st.st_size) != offer.reserve)
    return fail("the arena's memfd holds " + std::to_string(st.st_size) + " bytes, the offer says " +
                std::to_string(offer.reserve));

  void* map = ::mmap(nullptr, offer.reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, arena.get(), 0);
  if (map == MAP_FAILED) return Error::from_errno(where + ": mmap of the arena");
  auto* base = static_cast<std::byte*>(map);
  if (checksum_blocks(base, blocks) != offer.checksum) {
    ::munmap(map, offer.reserve);
    return fail("the arena's checksum does not match its offer");
  }
  const std::size_t table = 8 + count * 16;
  OpenedArena out;
  out.app_header = payload.subspan(table);
  out.header = std::move(mapped).value();
  out.arena = detail::ArenaAccess::adopt(std::move(arena), base, offer.reserve, blocks, std::move(shared_with));
  return out;
}

}  // namespace hotrestart::wire
