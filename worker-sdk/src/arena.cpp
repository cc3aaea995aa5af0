// hotrestart::Arena (arena.h) and what the SDK does with one at a transfer (arena_access.h).
//
// The memfd's size is the reserve, fixed by F_SEAL_GROW and F_SEAL_SHRINK, so that no process
// mapping it can ever fault past its end. Outside the live blocks the file is a hole: a released
// block is punched out (while the arena is this process's alone) and an importer punches every gap
// itself, so a new block is zero-filled wherever it lands.
//
// Modes. A *shared* arena maps the memfd MAP_SHARED: writes go to the file. snapshot() and an
// import map it MAP_PRIVATE instead (the *borrowed* mode): this process's first write to a page
// copies it, so the file keeps the snapshot for the other generation. reclaim() finds the copied
// pages in /proc/self/pagemap (present and not file-backed), writes them back with pwrite and maps
// the file shared again. Mappings are replaced with mremap(MREMAP_FIXED) of a complete new
// mapping, so that a failure leaves the old one in place.
#include <hotrestart/arena.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <stdexcept>
#include <system_error>

#include "arena_access.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

namespace hotrestart {
namespace {

constexpr std::uint64_t kPage = 4096;
#if defined(__SANITIZE_ADDRESS__)
// Under AddressSanitizer each block is followed by at least this many poisoned bytes, so that a
// read or write past its end is reported.
constexpr std::uint64_t kGuard = kPage;
#else
constexpr std::uint64_t kGuard = 0;
#endif

std::uint64_t round_up(std::uint64_t n) {
  return (n + kPage - 1) / kPage * kPage;
}

void poison(std::byte* p, std::uint64_t n, bool on) {
#if defined(__SANITIZE_ADDRESS__)
  if (on) {
    ASAN_POISON_MEMORY_REGION(p, n);
  } else {
    ASAN_UNPOISON_MEMORY_REGION(p, n);
  }
#else
  (void)p, (void)n, (void)on;
#endif
}

[[noreturn]] void throw_errno(const char* what) {
  throw std::system_error(errno, std::generic_category(), what);
}

// Adds [offset, offset + bytes) to a set of disjoint ranges, merging it with its neighbours.
void add_range(std::map<std::uint64_t, std::uint64_t>& ranges, std::uint64_t offset, std::uint64_t bytes) {
  auto next = ranges.lower_bound(offset);
  if (next != ranges.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second == offset) {
      offset = prev->first;
      bytes += prev->second;
      ranges.erase(prev);
    }
  }
  if (next != ranges.end() && offset + bytes == next->first) {
    bytes += next->second;
    ranges.erase(next);
  }
  ranges[offset] = bytes;
}

// Takes `bytes` from the first range that holds them; returns its offset, or nullopt.
std::optional<std::uint64_t> take_range(std::map<std::uint64_t, std::uint64_t>& ranges, std::uint64_t bytes) {
  for (auto it = ranges.begin(); it != ranges.end(); ++it) {
    if (it->second < bytes) continue;
    const std::uint64_t offset = it->first;
    const std::uint64_t left = it->second - bytes;
    ranges.erase(it);
    if (left > 0) ranges[offset + bytes] = left;
    return offset;
  }
  return std::nullopt;
}

// Maps the whole memfd at a new address, then moves that mapping over `base` (if not null) in one
// step. Returns the mapping's address; throws, leaving any mapping at `base` as it was.
std::byte* map_over(std::byte* base, int fd, std::uint64_t reserve, int flags) {
  void* fresh = ::mmap(nullptr, reserve, PROT_READ | PROT_WRITE, flags | MAP_NORESERVE, fd, 0);
  if (fresh == MAP_FAILED) throw_errno("mmap of the arena");
  if (base == nullptr) return static_cast<std::byte*>(fresh);
  void* moved = ::mremap(fresh, reserve, reserve, MREMAP_MAYMOVE | MREMAP_FIXED, base);
  if (moved == MAP_FAILED) {
    const int saved = errno;
    ::munmap(fresh, reserve);
    errno = saved;
    throw_errno("mremap of the arena");
  }
  return base;
}

}  // namespace

struct Arena::State {
  Fd memfd;
  std::byte* base = nullptr;
  std::uint64_t reserve = 0;
  bool shared = true;
  std::map<std::uint64_t, std::uint64_t> live;    // offset -> bytes
  std::map<std::uint64_t, std::uint64_t> guards;  // offset -> poisoned bytes at its end (ASan)
  std::map<std::uint64_t, std::uint64_t> holes;   // Free, and a hole in the file (zero).
  std::map<std::uint64_t, std::uint64_t> stale;   // Released while borrowed: not zero in the file.
  std::uint64_t top = 0;                          // Everything from here to the reserve is a hole.
  std::uint64_t allocated = 0;
  // True while another process may map the memfd (after a snapshot, or an import, until the SDK
  // learns that the other generation is gone).
  std::shared_ptr<std::atomic<bool>> shared_with = std::make_shared<std::atomic<bool>>(false);

  // Guards `shared` and the mapping against drop_page_tables() on another thread (snapshot() and
  // reclaim() remap under it). Everything else is the application's lock's.
  std::mutex mapping_mutex;
  bool registered = false;

  ~State() {
    if (registered) {
      std::lock_guard lock(registry_mutex());
      registry().erase(this);
    }
    if (base != nullptr) {
      // AddressSanitizer keeps a region's poison after munmap: the guards would poison whatever
      // is mapped at these addresses next (another arena's blocks, say).
      for (const auto& [offset, bytes] : guards) {
        if (auto it = live.find(offset); it != live.end()) poison(base + offset + it->second - bytes, bytes, false);
      }
      ::munmap(base, reserve);
    }
  }

  // Every arena of the process, for drop_all_page_tables().
  static std::mutex& registry_mutex() {
    static std::mutex m;
    return m;
  }
  static std::set<State*>& registry() {
    static std::set<State*> r;
    return r;
  }
  void add_to_registry() {
    std::lock_guard lock(registry_mutex());
    registry().insert(this);
    registered = true;
  }

  // Drops this process's page table entries of every shared arena (the pages stay in the memfd;
  // the next access maps them again), a piece at a time so that the address space's lock is let go
  // between pieces.
  static void drop_all_page_tables() {
    constexpr std::uint64_t kPiece = std::uint64_t{64} << 20;
    std::lock_guard registry_lock(registry_mutex());
    for (State* s : registry()) {
      std::lock_guard lock(s->mapping_mutex);
      if (!s->shared || s->base == nullptr) continue;
      for (std::uint64_t at = 0; at < s->reserve; at += kPiece)
        (void)::madvise(s->base + at, std::min(kPiece, s->reserve - at), MADV_DONTNEED);
    }
  }

  // Maps the memfd over the current mapping, shared or private.
  void remap(int flags) {
    std::lock_guard lock(mapping_mutex);
    map_over(base, memfd.get(), reserve, flags);
    shared = flags == MAP_SHARED;
  }

  void punch(std::uint64_t offset, std::uint64_t bytes) const {
    if (bytes == 0) return;
    // The pages go back to the system; a failure only costs memory.
    (void)::fallocate(memfd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                      static_cast<off_t>(bytes));
  }

  // Punches every gap between the live blocks (and above them), so that the file outside them is
  // a hole; all free space becomes `holes`.
  void punch_gaps() {
    std::uint64_t at = 0;
    holes.clear();
    stale.clear();
    for (const auto& [offset, bytes] : live) {
      if (offset > at) {
        punch(at, offset - at);
        holes[at] = offset - at;
      }
      at = offset + bytes;
    }
    if (at < top) punch(at, top - at);
    top = at;
  }

  // The pages of live blocks that this process has copied (written while borrowed), written back
  // into the memfd. Without /proc/self/pagemap every page of every block is written.
  bool write_back() {
    Fd pagemap(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    std::vector<std::uint64_t> entries;
    for (const auto& [offset, bytes] : live) {
      const std::uint64_t pages = bytes / kPage;
      std::byte* at = base + offset;
      entries.assign(pages, 0);
      bool known = false;
      if (pagemap) {
        const auto want = static_cast<ssize_t>(pages * sizeof(std::uint64_t));
        const auto index = static_cast<off_t>(reinterpret_cast<std::uintptr_t>(at) / kPage * sizeof(std::uint64_t));
        known = ::pread(pagemap.get(), entries.data(), static_cast<std::size_t>(want), index) == want;
      }
      // Bit 63: present; bit 62: swapped; bit 61: a file page (or shared). A present page that is
      // not the file's, or a swapped one, is this process's copy.
      auto own = [&](std::uint64_t i) {
        if (!known) return true;
        const std::uint64_t e = entries[i];
        return (e >> 62 & 1) != 0 || ((e >> 63 & 1) != 0 && (e >> 61 & 1) == 0);
      };
      for (std::uint64_t i = 0; i < pages;) {
        if (!own(i)) {
          ++i;
          continue;
        }
        std::uint64_t j = i + 1;
        while (j < pages && own(j))
          ++j;
        // (The block's guard, if any, is written too; it is poisoned again below.)
        poison(at + i * kPage, (j - i) * kPage, false);
        for (std::uint64_t done = i * kPage; done < j * kPage;) {
          const ssize_t n = ::pwrite(memfd.get(), at + done, j * kPage - done, static_cast<off_t>(offset + done));
          if (n < 0 && errno == EINTR) continue;
          if (n <= 0) return false;
          done += static_cast<std::uint64_t>(n);
        }
        i = j;
      }
      if (auto g = guards.find(offset); g != guards.end()) poison(at + bytes - g->second, g->second, true);
    }
    return true;
  }
};

std::uint64_t Arena::Snapshot::bytes() const {
  std::uint64_t total = 0;
  for (const Block& b : blocks_)
    total += b.bytes;
  return total;
}

Arena::Arena(std::uint64_t reserve) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.reserve = round_up(std::max<std::uint64_t>(reserve, kPage));
  s.memfd.reset(::memfd_create("hotrestart-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!s.memfd) throw_errno("memfd_create for an arena");
  if (::ftruncate(s.memfd.get(), static_cast<off_t>(s.reserve)) != 0) throw_errno("ftruncate of an arena");
  if (::fcntl(s.memfd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    throw_errno("sealing an arena");
  }
  s.base = map_over(nullptr, s.memfd.get(), s.reserve, MAP_SHARED);
  s.add_to_registry();
}

Arena::Arena() = default;
Arena::~Arena() = default;
Arena::Arena(Arena&& other) noexcept = default;
Arena& Arena::operator=(Arena&& other) noexcept = default;

std::byte* Arena::allocate(std::uint64_t bytes) {
  if (!state_) throw std::bad_alloc();
  State& s = *state_;
  if (bytes > s.reserve) throw std::bad_alloc();
  const std::uint64_t n = std::max(kPage, round_up(bytes + kGuard));  // A 0-byte block still takes a page.
  std::optional<std::uint64_t> at = take_range(s.holes, n);
  if (!at && s.reserve - s.top >= n) {
    at = s.top;
    s.top += n;
  }
  bool zero = true;
  if (!at) {
    // Borrowed, and nothing else left: a block released since the snapshot, zeroed here.
    at = take_range(s.stale, n);
    zero = false;
  }
  if (!at) throw std::bad_alloc();
  std::byte* p = s.base + *at;
  poison(p, n, false);
  if (!zero) std::memset(p, 0, n);
  poison(p + bytes, n - bytes, true);
  if (kGuard > 0) s.guards[*at] = n - bytes;
  s.live[*at] = n;
  s.allocated += n;
  return p;
}

void Arena::release(std::byte* block) {
  if (block == nullptr || !state_) return;
  State& s = *state_;
  auto it = s.live.find(offset_of(block));
  if (it == s.live.end()) return;
  const auto [offset, n] = *it;
  s.live.erase(it);
  s.guards.erase(offset);
  s.allocated -= n;
  poison(block, n, false);
  if (s.shared) {
    s.punch(offset, n);
    if (offset + n == s.top) {
      s.top = offset;
      // A hole just below the new top merges into it.
      if (auto last = s.holes.empty() ? s.holes.end() : std::prev(s.holes.end());
          last != s.holes.end() && last->first + last->second == s.top) {
        s.top = last->first;
        s.holes.erase(last);
      }
    } else {
      add_range(s.holes, offset, n);
    }
  } else {
    // This process's copies of the pages go; the file keeps the other generation's bytes.
    (void)::madvise(block, n, MADV_DONTNEED);
    add_range(s.stale, offset, n);
  }
}

void Arena::write(std::byte* at, const void* bytes, std::uint64_t n) {
  if (!state_ || at < state_->base || at >= state_->base + state_->reserve) {
    throw std::out_of_range("Arena::write: the destination is not in the arena");
  }
  State& s = *state_;
  const std::uint64_t offset = offset_of(at);
  // The block that holds `at`, without its guard: the memfd's writes bypass AddressSanitizer's
  // poisoning, so the bound is checked here.
  auto it = s.live.upper_bound(offset);
  if (it == s.live.begin()) throw std::out_of_range("Arena::write: the destination is not in a block");
  --it;
  const auto g = s.guards.find(it->first);
  const std::uint64_t end = it->first + it->second - (g != s.guards.end() ? g->second : 0);
  if (offset >= end || n > end - offset) {
    throw std::out_of_range("Arena::write: the bytes reach past the end of their block");
  }
  if (n == 0) return;
  const auto* from = static_cast<const std::byte*>(bytes);
  std::uint64_t done = 0;
  if (s.shared) {
    while (done < n) {
      const ssize_t w = ::pwrite(s.memfd.get(), from + done, n - done, static_cast<off_t>(offset + done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) throw std::system_error(errno, std::generic_category(), "Arena::write: pwrite to the arena's memfd");
      if (w == 0) break;  // The mapping then takes the rest.
      done += static_cast<std::uint64_t>(w);
    }
  }
  if (done < n) std::memcpy(at + done, from + done, n - done);
}

std::uint64_t Arena::offset_of(const std::byte* block) const {
  return state_ ? static_cast<std::uint64_t>(block - state_->base) : 0;
}

std::byte* Arena::block_at(std::uint64_t offset, std::uint64_t bytes) const {
  if (!state_) return nullptr;
  auto it = state_->live.find(offset);
  if (it == state_->live.end() || it->second < bytes) return nullptr;
  return state_->base + offset;
}

std::vector<Arena::Block> Arena::blocks() const {
  std::vector<Block> out;
  if (!state_) return out;
  out.reserve(state_->live.size());
  for (const auto& [offset, bytes] : state_->live)
    out.push_back({offset, bytes});
  return out;
}

std::uint64_t Arena::allocated_bytes() const {
  return state_ ? state_->allocated : 0;
}
std::uint64_t Arena::reserve() const {
  return state_ ? state_->reserve : 0;
}
bool Arena::shared() const {
  return state_ && state_->shared;
}

Arena::Snapshot Arena::snapshot() {
  Snapshot out;
  if (!state_ || !reclaim()) return out;
  State& s = *state_;
  Fd copy(::fcntl(s.memfd.get(), F_DUPFD_CLOEXEC, 0));
  if (!copy) return out;
  try {
    s.remap(MAP_PRIVATE);
  } catch (const std::system_error&) {
    return out;  // Still shared: the caller falls back to serializing.
  }
  s.shared_with->store(true);
  out.memfd_ = std::move(copy);
  out.reserve_ = s.reserve;
  out.blocks_ = blocks();
  out.shared_with_ = s.shared_with;
  return out;
}

bool Arena::reclaim() {
  if (!state_) return false;
  State& s = *state_;
  if (s.shared) return true;
  if (s.shared_with->load()) return false;
  if (!s.write_back()) return false;
  try {
    s.remap(MAP_SHARED);
  } catch (const std::system_error&) {
    return false;
  }
  s.punch_gaps();
  return true;
}

// ---------------------------------------------------------------------------------------------
// The SDK's side.

namespace detail {

const Fd& ArenaAccess::memfd(const Arena::Snapshot& s) {
  return s.memfd_;
}
std::uint64_t ArenaAccess::reserve(const Arena::Snapshot& s) {
  return s.reserve_;
}
const std::vector<Arena::Block>& ArenaAccess::blocks(const Arena::Snapshot& s) {
  return s.blocks_;
}
std::shared_ptr<std::atomic<bool>> ArenaAccess::shared_with(const Arena::Snapshot& s) {
  return s.shared_with_;
}

Arena ArenaAccess::adopt(Fd memfd, std::byte* base, std::uint64_t reserve, const std::vector<Arena::Block>& blocks,
                         std::shared_ptr<std::atomic<bool>> shared_with) {
  Arena arena;
  arena.state_ = std::make_unique<Arena::State>();
  Arena::State& s = *arena.state_;
  s.memfd = std::move(memfd);
  s.base = base;
  s.reserve = reserve;
  s.shared = false;
  for (const Arena::Block& b : blocks) {
    s.live[b.offset] = b.bytes;
    s.allocated += b.bytes;
    s.top = std::max(s.top, b.offset + b.bytes);
  }
  // Outside the blocks the file must be a hole, whatever the exporter left there.
  s.top = reserve;
  s.punch_gaps();
  s.shared_with = std::move(shared_with);
  s.add_to_registry();
  return arena;
}

void ArenaAccess::drop_page_tables() {
  Arena::State::drop_all_page_tables();
}

}  // namespace detail
}  // namespace hotrestart
