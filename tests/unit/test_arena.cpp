// hotrestart::Arena and arena sections: allocation, the snapshot a next generation maps, the
// copies each side makes of what it writes, reclaim, and every check an importer makes.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>

#include <hotrestart/arena.h>
#include <hotrestart/testing.h>
#include <hotrestart/worker.h>

#include "arena_access.h"
#include "arena_section.h"

using hotrestart::Arena;
namespace wire = hotrestart::wire;

namespace {

constexpr std::uint64_t kReserve = std::uint64_t{64} << 20;

std::string read_file(const hotrestart::Fd& fd, std::uint64_t offset, std::size_t n) {
  std::string out(n, '\0');
  REQUIRE(::pread(fd.get(), out.data(), n, static_cast<off_t>(offset)) == static_cast<ssize_t>(n));
  return out;
}

std::string bytes_at(const std::byte* p, std::size_t n) {
  return {reinterpret_cast<const char*>(p), n};
}

// A snapshot written as an arena section and opened again, as the next generation would.
hotrestart::Result<wire::OpenedArena> hand_over(const Arena::Snapshot& snapshot, std::string_view header,
                                                std::shared_ptr<std::atomic<bool>> flag,
                                                std::uint64_t max_bytes = std::uint64_t{1} << 40) {
  auto written = wire::write_arena_section("cache", 3, 7, header, snapshot);
  REQUIRE(written);
  return wire::open_arena_section(std::move(written->header), std::move(written->arena), written->offer, max_bytes,
                                  std::move(flag));
}

}  // namespace

TEST_CASE("arena: blocks are zero-filled, page-aligned, and found again only by their exact start") {
  Arena arena(kReserve);
  std::byte* a = arena.allocate(100);
  std::byte* b = arena.allocate(10'000);
  REQUIRE(a != nullptr);
  REQUIRE(b != nullptr);
  CHECK(reinterpret_cast<std::uintptr_t>(a) % 4096 == 0);
  CHECK(reinterpret_cast<std::uintptr_t>(b) % 4096 == 0);
  CHECK(bytes_at(b, 10'000) == std::string(10'000, '\0'));
  std::memset(a, 'x', 100);
  CHECK(arena.block_at(arena.offset_of(a), 100) == a);
  CHECK(arena.block_at(arena.offset_of(b) + 4096, 1) == nullptr);  // inside a block, not its start
  CHECK(arena.block_at(arena.offset_of(b), 1 << 20) == nullptr);   // longer than the block
  CHECK(arena.blocks().size() == 2);
  CHECK(arena.shared());

  // A released block's memory comes back zeroed.
  arena.release(a);
  std::byte* c = arena.allocate(100);
  CHECK(bytes_at(c, 100) == std::string(100, '\0'));
  // Even an empty block is a block of its own.
  std::byte* none = arena.allocate(0);
  std::byte* next = arena.allocate(4096);
  CHECK(none != next);
  CHECK(arena.block_at(arena.offset_of(none), 0) == none);
  CHECK_THROWS_AS(arena.allocate(kReserve * 2), std::bad_alloc);
  CHECK_THROWS_AS(Arena().allocate(1), std::bad_alloc);
}

TEST_CASE("arena: after a snapshot, each side's writes stay its own until reclaim") {
  Arena arena(kReserve);
  std::byte* block = arena.allocate(3 * 4096);
  std::memset(block, 'a', 3 * 4096);
  const std::uint64_t offset = arena.offset_of(block);

  Arena::Snapshot snapshot = arena.snapshot();
  REQUIRE(snapshot);
  CHECK_FALSE(arena.shared());
  // (Under AddressSanitizer every block has a poisoned page more.)
  CHECK(snapshot.bytes() == arena.allocated_bytes());
  CHECK(snapshot.bytes() >= 3 * 4096);

  auto flag = std::make_shared<std::atomic<bool>>(true);
  auto opened = hand_over(snapshot, "where things are", flag);
  REQUIRE(opened);
  CHECK(bytes_at(opened->app_header.data(), opened->app_header.size()) == "where things are");
  Arena& next = opened->arena;
  std::byte* theirs = next.block_at(offset, 3 * 4096);
  REQUIRE(theirs != nullptr);
  CHECK(bytes_at(theirs, 3 * 4096) == std::string(3 * 4096, 'a'));

  // The old generation goes on writing; the new one sees the snapshot, and the other way round.
  std::memset(block + 4096, 'o', 4096);
  std::memset(theirs + 2 * 4096, 'n', 4096);
  CHECK(bytes_at(theirs + 4096, 4096) == std::string(4096, 'a'));
  CHECK(bytes_at(block + 2 * 4096, 4096) == std::string(4096, 'a'));
  // A borrowed arena allocates above the snapshot and does not hand out what it released.
  std::byte* fresh = next.allocate(4096);
  CHECK(next.offset_of(fresh) >= offset + 3 * 4096);
  CHECK(bytes_at(fresh, 4096) == std::string(4096, '\0'));

  // A second snapshot cannot be taken while the memory is lent.
  CHECK_FALSE(arena.snapshot());
  CHECK_FALSE(next.reclaim());
  CHECK_FALSE(next.snapshot());

  // The old generation is gone: the new one writes its copies back and owns the memory.
  arena = Arena();
  flag->store(false);
  REQUIRE(next.reclaim());
  CHECK(next.shared());
  const auto& fd = hotrestart::detail::ArenaAccess::memfd(snapshot);
  CHECK(read_file(fd, offset, 4096) == std::string(4096, 'a'));
  CHECK(read_file(fd, offset + 2 * 4096, 4096) == std::string(4096, 'n'));
  // Its writes now go to the memory it would hand over next.
  std::memset(theirs, 'm', 4096);
  CHECK(read_file(fd, offset, 4096) == std::string(4096, 'm'));
  CHECK(bytes_at(theirs + 2 * 4096, 4096) == std::string(4096, 'n'));
  CHECK(next.snapshot());
}

TEST_CASE("arena: a destroyed arena leaves nothing poisoned where the next mapping lands") {
  // Under AddressSanitizer each block is followed by a poisoned guard, and the sanitizer keeps
  // that poison after munmap: whatever is mapped at those addresses next (another arena's blocks)
  // must not inherit it. Memory mapped again exactly where a block and its guard were is read whole.
  std::byte* block = nullptr;
  constexpr std::size_t kSpan = 8 * 4096;  // The block (3 pages and 5 bytes) and its guard, and more.
  {
    Arena first(kReserve);
    block = first.allocate(3 * 4096 + 5);
    std::memset(block, 'b', 3 * 4096 + 5);
  }
  void* again = ::mmap(block, kSpan, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
  REQUIRE_MESSAGE(again == block, "the range was taken again: " << std::strerror(errno));
  CHECK(bytes_at(block, kSpan) == std::string(kSpan, '\0'));
  ::munmap(again, kSpan);
}

TEST_CASE("arena: write() fills a block through the memfd, and only a block, and leaves a snapshot alone") {
  Arena arena(kReserve);
  std::byte* block = arena.allocate(3 * 4096);
  const std::uint64_t offset = arena.offset_of(block);
  const std::string text(2 * 4096 + 100, 'w');
  arena.write(block + 50, text.data(), text.size());
  // The same bytes through the mapping and in the file, and the rest of the block still zero.
  CHECK(bytes_at(block + 50, text.size()) == text);
  CHECK(bytes_at(block, 50) == std::string(50, '\0'));
  CHECK(bytes_at(block + 50 + text.size(), 3 * 4096 - 50 - text.size()) ==
        std::string(3 * 4096 - 50 - text.size(), '\0'));

  // Through the memfd: the pages written are in the file, not yet mapped in this process (bit 63
  // of /proc/self/pagemap, "present"), until they are read.
  std::byte* fresh = arena.allocate(4 * 4096);
  const std::string page(4 * 4096, 'p');
  arena.write(fresh, page.data(), page.size());
  auto present = [&](const std::byte* p) {
    hotrestart::Fd pagemap(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    REQUIRE(pagemap);
    std::uint64_t entry = 0;
    const auto at = static_cast<off_t>(reinterpret_cast<std::uintptr_t>(p) / 4096 * sizeof entry);
    REQUIRE(::pread(pagemap.get(), &entry, sizeof entry, at) == static_cast<ssize_t>(sizeof entry));
    return (entry >> 63 & 1) != 0;
  };
  for (int i = 0; i < 4; ++i)
    CHECK_FALSE(present(fresh + i * 4096));
  CHECK(bytes_at(fresh, page.size()) == page);
  CHECK(present(fresh));

  // Outside the arena, outside any block, or past the end of one: refused, nothing written.
  std::byte outside[8] = {};
  CHECK_THROWS_AS(arena.write(outside, "12345678", 8), std::out_of_range);
  CHECK_THROWS_AS(arena.write(block + 3 * 4096 - 4, "12345678", 8), std::out_of_range);
  std::byte* second = arena.allocate(4096);
  arena.release(second);
  CHECK_THROWS_AS(arena.write(second, "x", 1), std::out_of_range);
  CHECK(bytes_at(block + 3 * 4096 - 4, 4) == std::string(4, '\0'));
  CHECK_THROWS_AS(Arena().write(block, "x", 1), std::out_of_range);

  // Lent to the next generation: the writes go to this process's copies, as memcpy's would, and
  // the snapshot keeps what it had.
  Arena::Snapshot snapshot = arena.snapshot();
  REQUIRE(snapshot);
  arena.write(block + 50, "changed", 7);
  CHECK(bytes_at(block + 50, 9) == "changedww");
  const auto& fd = hotrestart::detail::ArenaAccess::memfd(snapshot);
  CHECK(read_file(fd, offset + 50, 9) == "wwwwwwwww");
}

TEST_CASE("arena: an importer refuses a corrupted, resized, oversized or inconsistent arena") {
  Arena arena(kReserve);
  std::byte* block = arena.allocate(8192);
  std::memset(block, 'z', 8192);
  Arena::Snapshot snapshot = arena.snapshot();
  REQUIRE(snapshot);
  auto flag = std::make_shared<std::atomic<bool>>(true);

  SUBCASE("a byte changed after the checksum") {
    auto written = wire::write_arena_section("cache", 1, 1, "h", snapshot);
    REQUIRE(written);
    REQUIRE(::pwrite(written->arena.get(), "Y", 1, static_cast<off_t>(arena.offset_of(block) + 100)) == 1);
    auto opened = wire::open_arena_section(std::move(written->header), std::move(written->arena), written->offer,
                                           std::uint64_t{1} << 40, flag);
    REQUIRE_FALSE(opened);
    CHECK(opened.error().text() == "section 'cache': the arena's checksum does not match its offer");
  }
  SUBCASE("the offer's sizes do not match the memfd") {
    auto written = wire::write_arena_section("cache", 1, 1, "h", snapshot);
    REQUIRE(written);
    auto offer = written->offer;
    offer.reserve += 4096;
    auto opened =
        wire::open_arena_section(std::move(written->header), std::move(written->arena), offer, 1ULL << 40, flag);
    REQUIRE_FALSE(opened);
    CHECK(opened.error().text().find("the arena's memfd holds") != std::string::npos);
  }
  SUBCASE("more bytes than this generation takes") {
    auto opened = hand_over(snapshot, "h", flag, 4096);
    REQUIRE_FALSE(opened);
    CHECK(opened.error().text() == "section 'cache': the arena's " + std::to_string(arena.allocated_bytes()) +
                                       " bytes are over the limit of 4096");
  }
  SUBCASE("a memfd that could shrink under the importer") {
    hotrestart::Fd loose(::memfd_create("loose", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(::ftruncate(loose.get(), static_cast<off_t>(kReserve)) == 0);
    auto written = wire::write_arena_section("cache", 1, 1, "h", snapshot);
    REQUIRE(written);
    auto opened = wire::open_arena_section(std::move(written->header), std::move(loose), written->offer,
                                           std::uint64_t{1} << 40, flag);
    REQUIRE_FALSE(opened);
    CHECK(opened.error().text() ==
          "section 'cache': the arena's memfd is not sealed against resizing (F_SEAL_SHRINK, F_SEAL_GROW)");
  }
  SUBCASE("a hugetlbfs memfd, which could fault when huge pages run out") {
    hotrestart::Fd huge(::memfd_create("huge", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_HUGETLB));
    if (!huge) {
      MESSAGE("skipped: this kernel makes no hugetlbfs memfd (" << std::strerror(errno) << ")");
      return;
    }
    REQUIRE(::ftruncate(huge.get(), static_cast<off_t>(kReserve)) == 0);
    REQUIRE(::fcntl(huge.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) == 0);
    auto written = wire::write_arena_section("cache", 1, 1, "h", snapshot);
    REQUIRE(written);
    auto opened = wire::open_arena_section(std::move(written->header), std::move(huge), written->offer,
                                           std::uint64_t{1} << 40, flag);
    REQUIRE_FALSE(opened);
    CHECK(opened.error().text() == "section 'cache': the arena's memfd is not an ordinary (tmpfs) memfd");
  }
  SUBCASE("a block table with overlapping blocks") {
    // Built by hand: two blocks that overlap.
    std::string table(8 + 32, '\0');
    const std::uint64_t fields[] = {2, 0, 8192, 4096, 4096};
    std::memcpy(table.data(), fields, sizeof fields);
    auto header = wire::write_section(
        "cache", 1, 1, [&](std::ostream& out) { out << table; }, 1 << 20);
    REQUIRE(header);
    wire::ArenaOffer offer{header->offer, kReserve, 12288, 0};
    hotrestart::Fd memfd(::fcntl(hotrestart::detail::ArenaAccess::memfd(snapshot).get(), F_DUPFD_CLOEXEC, 0));
    auto opened = wire::open_arena_section(std::move(header->memfd), std::move(memfd), offer, 1ULL << 40, flag);
    REQUIRE_FALSE(opened);
    CHECK(opened.error().text() ==
          "section 'cache': the arena's block 1 (4096 bytes at 4096) is not aligned, overlaps another, or lies "
          "outside the arena");
  }
}
