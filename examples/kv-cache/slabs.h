// kv-cache's slab pages and chunk allocation, as memcached keeps its items: entries live in 2 MiB
// pages; each page holds fixed-size chunks of one size class (48 bytes, then about 1.25x per class,
// up to 1 MiB), and an entry larger than the largest class gets a page of its own. A chunk holds a
// 24-byte header (stamp, value length, key length, content-type length, and two links as 32-bit
// chunk ids) followed by the key, the value and, in schema 2, the content type. A chunk id is the
// page number (16 bits) and the chunk's number in its page (16 bits). Freed chunks go on their
// class's free list; a page whose chunks are all free goes back to the arena (except the last page
// of each class). Pages are blocks of the store's hotrestart::Arena, as is the hash index
// (hash_index.h), and the two refer to each other by chunk id and offset, never by pointer.
//
// Slabs knows nothing of the entries' order or of the index: when its pages have reached their
// budget it says so (kNil from allocate), and the store (store.h) evicts an entry and asks again.
#pragma once

#include <hotrestart/arena.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>
#include <type_traits>
#include <vector>

#include "cache.h"

namespace kv::detail {

inline constexpr std::uint32_t kNil = UINT32_MAX;
// A chunk id is the page's number in the high 16 bits and the chunk's number in its page in the
// low 16 bits. Page 0xFFFF is never used, so that no chunk id is kNil.
inline constexpr std::uint32_t kSlotBits = 16;
inline constexpr std::uint32_t kSlotMask = (1U << kSlotBits) - 1;
inline constexpr std::uint32_t kMaxPages = (1U << 16) - 1;
// The size classes: 48 bytes (a header and 24 bytes of key and value), then 1.25x per class
// (rounded up to 8 bytes, which keeps every header aligned), and half a page as the largest, so
// that no class wastes more than a chunk per page.
inline constexpr std::uint32_t kMinChunk = 48;
inline constexpr std::uint32_t kMaxClassChunk = static_cast<std::uint32_t>(kPageBytes / 2);
inline constexpr std::uint32_t kMaxClasses = 256;
inline constexpr std::uint64_t kDedicatedAlign = 4096;
// A dedicated page holds one header, key, value and type; value lengths are 32-bit.
inline constexpr std::uint64_t kMaxDedicatedBytes = std::uint64_t{1} << 33;
// A cache with at least this budget faults a new page in whole when it maps it, which costs less
// than a fault per 4 KiB as chunks are handed out; a smaller one leaves unused chunks unbacked.
inline constexpr std::uint64_t kPopulateFrom = std::uint64_t{64} << 20;

inline std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) {
  return a > std::numeric_limits<std::uint64_t>::max() - b ? std::numeric_limits<std::uint64_t>::max() : a + b;
}

// memcpy and memset with a length of zero, where the pointer of an empty string_view may be null.
inline void copy_bytes(std::byte* to, const void* from, std::size_t n) {
  if (n > 0) std::memcpy(to, from, n);
}
inline void zero_bytes(std::byte* at, std::size_t n) {
  if (n > 0) std::memset(at, 0, n);
}

// The size classes every cache of this build uses.
const std::vector<std::uint32_t>& default_classes();

inline std::uint64_t dedicated_bytes(std::uint64_t need) {
  return (need + kDedicatedAlign - 1) / kDedicatedAlign * kDedicatedAlign;
}

// The address space a store's arena reserves: what its budget can fill twice over (a borrowed
// arena does not reuse freed blocks until it is reclaimed), its largest index twice (a rehash
// holds two), and room for one dedicated page of the largest size.
std::uint64_t arena_reserve(std::uint64_t max_bytes);

// A block of the store's arena (hotrestart::Arena): pages and index tables are large and freed
// whole, and living in an arena lets an upgrade hand them to the next generation as they are. The
// store allocates and releases them; a Block only points. Blocks are zero-filled, and under
// AddressSanitizer the arena poisons the bytes past a block's end.
struct Block {
  std::byte* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  std::byte* data_ = nullptr;
  std::uint64_t size_ = 0;
};

// Whether a new block is faulted in at once: for memory about to be filled anyway.
enum class Populate { kNo, kYes };

// A zero-filled block of `arena`. With Populate::kYes, the kernel faults it in at once, which costs
// less than a fault per 4 KiB page as it is first written. Transparent huge pages are not asked
// for: on the machine of docs/benchmarks.md faulting them in was 2-6x slower than 4 KiB pages.
// Counts in arena_bytes_mapped_total().
Block map_block(hotrestart::Arena& arena, std::uint64_t bytes, Populate populate);
void unmap_block(hotrestart::Arena& arena, Block& block);

// The start of every chunk. Schema 1 has no content type: its type_len is always 0 (a schema-1
// header would be 24 bytes without it anyway, for the alignment of the stamp).
struct Chunk {
  std::uint64_t stamp;
  std::uint32_t prev;  // LRU neighbours while the chunk holds an entry; free-list ones when free.
  std::uint32_t next;
  std::uint32_t value_len;
  std::uint16_t key_len;
  std::uint16_t type_len;
};
static_assert(sizeof(Chunk) == kChunkHeaderBytes);
static_assert(std::is_trivially_copyable_v<Chunk>);

// Whether allocate() may map a page past the budget: only when nothing is left to evict.
enum class Room { kWithinBudget, kAny };

class Slabs {
 public:
  struct Page {
    Block memory;                  // Empty: the page number is free.
    std::uint32_t kind = kNoPage;  // A size class, kDedicatedPage or kNoPage.
    std::uint32_t used = 0;        // Chunks handed out: each is an entry's or on the free list.
    std::uint32_t capacity = 0;    // Chunks that fit.
    std::uint32_t live = 0;        // Chunks that hold an entry.
    std::uint64_t chunk = 0;       // Bytes per chunk (the whole page for a dedicated one).
  };
  struct Class {
    std::uint32_t size = 0;
    std::uint32_t free_head = kNil;  // A doubly linked list through the free chunks' headers.
    std::uint32_t current = kNil;    // The page chunks are handed out from once the list is empty.
    std::uint32_t pages = 0;
  };

  // No pages yet; they are blocks of `arena`, which must outlive the Slabs.
  Slabs(hotrestart::Arena& arena, std::uint64_t max_bytes, const std::vector<std::uint32_t>& classes);
  Slabs(const Slabs&) = delete;
  Slabs& operator=(const Slabs&) = delete;

  Chunk* chunk(std::uint32_t id) {
    const Page& p = pages_[id >> kSlotBits];
    return reinterpret_cast<Chunk*>(p.memory.data() + std::uint64_t{id & kSlotMask} * p.chunk);
  }
  const Chunk* chunk(std::uint32_t id) const {
    const Page& p = pages_[id >> kSlotBits];
    return reinterpret_cast<const Chunk*>(p.memory.data() + std::uint64_t{id & kSlotMask} * p.chunk);
  }
  static std::byte* payload(Chunk* c) { return reinterpret_cast<std::byte*>(c) + kChunkHeaderBytes; }
  std::string_view key_of(std::uint32_t id) const {
    const Chunk* c = chunk(id);
    return {reinterpret_cast<const char*>(c) + kChunkHeaderBytes, c->key_len};
  }
  const Page& page_of(std::uint32_t id) const { return pages_[id >> kSlotBits]; }

  // The class whose chunks fit `need` bytes, or kDedicatedPage.
  std::uint32_t kind_for(std::uint64_t need) const;
  // The bytes a chunk of `kind` for `need` bytes takes: what its entry is charged.
  std::uint64_t chunk_bytes(std::uint32_t kind, std::uint64_t need) const {
    return kind == kDedicatedPage ? dedicated_bytes(need) : classes_[kind].size;
  }

  // A chunk for `need` bytes of kind `kind`: from the class's free list, from its current page, or
  // from a new page. kNil when that would take the pages past their budget: the caller evicts and
  // asks again, or passes Room::kAny once it has nothing left to evict. Throws std::length_error
  // when the arena is out of page numbers.
  std::uint32_t allocate(std::uint32_t kind, std::uint64_t need, Room room);
  // Gives a chunk back: cleared and on its class's free list, or its page unmapped.
  void release(std::uint32_t id);

  // Whether the pages take more than their budget: max_bytes, and a first page for each class in use.
  bool over_budget() const { return page_bytes_ > page_budget(); }
  std::uint64_t page_bytes() const { return page_bytes_; }
  bool has_default_classes() const;
  const std::vector<Page>& pages() const { return pages_; }
  const std::vector<Class>& classes() const { return classes_; }

  // Loading an arena (snapshot.cpp) sets the pages as a snapshot describes them: first how many page
  // numbers there are, then each page and each free list's head; after the checks (arena_checks.h),
  // the live chunks of each page, and last what follows from those.
  void restore_page_count(std::uint32_t count) { pages_.resize(count); }
  void restore_absent_page(std::uint32_t p) { free_page_ids_.push_back(p); }
  void restore_page(std::uint32_t p, Block memory, std::uint32_t kind, std::uint32_t used);
  void restore_free_head(std::uint32_t kind, std::uint32_t id) { classes_[kind].free_head = id; }
  void restore_live(std::uint32_t p, std::uint32_t live) { pages_[p].live = live; }
  // The page each class hands chunks out from (a class's only page that is not full), and the
  // classes that have pages.
  void finish_restore();

 private:
  std::uint64_t page_budget() const { return saturating_add(max_bytes_, kPageBytes * classes_with_pages_); }
  bool may_map(std::uint64_t bytes, bool first_of_class) const;
  std::uint32_t map_page(std::uint32_t kind, std::uint64_t bytes);
  void unmap_page(std::uint32_t p);
  void push_free(Class& k, std::uint32_t id);
  std::uint32_t pop_free(Class& k);
  void unlink_free(Class& k, std::uint32_t id);

  hotrestart::Arena& arena_;
  const std::uint64_t max_bytes_;
  std::vector<Page> pages_;
  std::vector<std::uint32_t> free_page_ids_;
  std::vector<Class> classes_;
  std::uint64_t classes_with_pages_ = 0;
  std::uint64_t page_bytes_ = 0;  // Mapped: the pages.
};

}  // namespace kv::detail
