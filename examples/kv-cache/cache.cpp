#include "cache.h"

#include <sys/mman.h>
#include <time.h>
#include <xxhash.h>

#include <hotrestart/archive.h>
#include <hotrestart/arena.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstring>
#include <limits>
#include <new>
#include <span>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <unordered_set>
#include <utility>

namespace kv {

// Snapshots copy the arena's bytes as they are, and cereal's binary archives are host-endian too:
// the layouts documented in cache.h are little-endian.
static_assert(std::endian::native == std::endian::little, "kv-cache's snapshot layouts are little-endian");

std::uint64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000U + static_cast<std::uint64_t>(ts.tv_nsec);
}

namespace {

std::atomic<std::uint64_t> g_mapped_total{0};

constexpr std::uint32_t kNil = UINT32_MAX;
// A chunk id is the page's number in the high 16 bits and the chunk's number in its page in the
// low 16 bits. Page 0xFFFF is never used, so that no chunk id is kNil.
constexpr std::uint32_t kSlotBits = 16;
constexpr std::uint32_t kSlotMask = (1U << kSlotBits) - 1;
constexpr std::uint32_t kMaxPages = (1U << 16) - 1;
// The size classes: 48 bytes (a header and 24 bytes of key and value), then 1.25x per class
// (rounded up to 8 bytes, which keeps every header aligned), and half a page as the largest, so
// that no class wastes more than a chunk per page.
constexpr std::uint32_t kMinChunk = 48;
constexpr std::uint32_t kMaxClassChunk = static_cast<std::uint32_t>(kPageBytes / 2);
constexpr std::uint32_t kMaxClasses = 256;
constexpr std::uint64_t kDedicatedAlign = 4096;
// A dedicated page holds one header, key, value and type; value lengths are 32-bit.
constexpr std::uint64_t kMaxDedicatedBytes = std::uint64_t{1} << 33;
constexpr std::uint32_t kHashXxh3 = 1;
constexpr std::uint64_t kMinSlots = 16;
// A cache with at least this budget faults a new page in whole when it maps it, which costs less
// than a fault per 4 KiB as chunks are handed out; a smaller one leaves unused chunks unbacked.
constexpr std::uint64_t kPopulateFrom = std::uint64_t{64} << 20;
constexpr std::uint64_t kMaxSlots = std::uint64_t{1} << 32;
// The first 16 entries of the index and one slot in kHashSample have their hash recomputed from
// their key when an arena is loaded: a hash function that changed between builds shows at once,
// without a cache miss for every entry.
constexpr std::uint64_t kHashSample = 1024;
// An arena's pages are copied in pieces of this size, each checked while it is in the CPU's cache.
constexpr std::uint64_t kCopyPiece = 128 * 1024;
// The entries layout is gathered into a buffer of this size, so that the SDK's stream sees a few
// large writes rather than five small ones per entry.
constexpr std::size_t kWriteBuffer = 256 * 1024;

constexpr std::uint8_t kOpPut = 1;
constexpr std::uint8_t kOpErase = 2;

using hotrestart::ArchiveError;

std::uint32_t hash_of(std::string_view key) {
  return static_cast<std::uint32_t>(XXH3_64bits(key.data(), key.size()));
}

std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) {
  return a > std::numeric_limits<std::uint64_t>::max() - b ? std::numeric_limits<std::uint64_t>::max() : a + b;
}

// memcpy and memset with a length of zero, where the pointer of an empty string_view may be null.
void copy_bytes(std::byte* to, const void* from, std::size_t n) {
  if (n > 0) std::memcpy(to, from, n);
}
void zero_bytes(std::byte* at, std::size_t n) {
  if (n > 0) std::memset(at, 0, n);
}

// Writes a string in cereal's layout (u64 length, bytes) without copying it into a std::string.
void write_bytes(hotrestart::OutputArchive& ar, std::string_view s) {
  ar(cereal::make_size_tag(static_cast<cereal::size_type>(s.size())));
  ar(cereal::binary_data(s.data(), s.size()));
}

void check_version(std::uint32_t version, bool supported, int schema) {
  if (!supported) {
    throw std::invalid_argument("schema " + std::to_string(schema) + " has no version " + std::to_string(version));
  }
}

// The size classes every cache of this build uses.
const std::vector<std::uint32_t>& default_classes() {
  static const std::vector<std::uint32_t> classes = [] {
    std::vector<std::uint32_t> out;
    std::uint64_t size = kMinChunk;
    while (size < kMaxClassChunk) {
      out.push_back(static_cast<std::uint32_t>(size));
      size = std::max(size + 8, (size * 5 / 4 + 7) / 8 * 8);
    }
    out.push_back(kMaxClassChunk);
    return out;
  }();
  return classes;
}

std::uint64_t dedicated_bytes(std::uint64_t need) {
  return (need + kDedicatedAlign - 1) / kDedicatedAlign * kDedicatedAlign;
}

// A block of the store's arena (hotrestart::Arena): pages and index tables are large and freed
// whole, and living in an arena lets an upgrade hand them to the next generation as they are. The
// Store allocates and releases them; a Block only points. Blocks are zero-filled, and under
// AddressSanitizer the arena poisons the bytes past a block's end.
struct Block {
  std::byte* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  std::byte* data_ = nullptr;
  std::uint64_t size_ = 0;
};

// The address space a store's arena reserves: what its budget can fill twice over (a borrowed
// arena does not reuse freed blocks until it is reclaimed), its largest index twice (a rehash
// holds two), and room for one dedicated page of the largest size.
std::uint64_t arena_reserve(std::uint64_t max_bytes) {
  constexpr std::uint64_t kMost = std::uint64_t{1} << 40;
  if (max_bytes >= kMost / 8) return kMost;
  return 4 * max_bytes + (std::uint64_t{12} << 30);
}

// A fixed-size set of bits, for the marks of an import's validation.
class Bits {
 public:
  explicit Bits(std::uint64_t n) : words_((n + 63) / 64) {}
  bool test(std::uint64_t i) const { return ((words_[i >> 6] >> (i & 63)) & 1U) != 0; }
  void set(std::uint64_t i) { words_[i >> 6] |= std::uint64_t{1} << (i & 63); }
  void clear(std::uint64_t i) { words_[i >> 6] &= ~(std::uint64_t{1} << (i & 63)); }

 private:
  std::vector<std::uint64_t> words_;
};

// Faults in, on a thread of its own, the regions a load is about to fill: from the last one
// backwards, while the loading thread fills them from the first, so that the two meet in the
// middle. Filling fresh memory costs mostly page faults (the kernel zeroes every page, and a
// virtual machine may have to back it first), which this spreads over two cores. The destructor
// stops and joins the thread, so the regions must outlive it.
class Prefaulter {
 public:
  explicit Prefaulter(std::vector<std::span<std::byte>> regions) : regions_(std::move(regions)) {
    if (regions_.size() > 1) thread_ = std::thread([this] { run(); });
  }
  ~Prefaulter() {
    front_.store(regions_.size(), std::memory_order_relaxed);
    if (thread_.joinable()) thread_.join();
  }
  Prefaulter(const Prefaulter&) = delete;
  Prefaulter& operator=(const Prefaulter&) = delete;

  // The loading thread is about to fill region `i`: the thread leaves it, and those before it, alone.
  void reached(std::size_t i) { front_.store(i, std::memory_order_relaxed); }

 private:
  void run() {
    for (std::size_t i = regions_.size(); i-- > 0;) {
      if (i <= front_.load(std::memory_order_relaxed) + 1) return;
      // Whole pages of the mapping: the regions start on a page (but for a small one under
      // AddressSanitizer, which then fails harmlessly).
      const std::span<std::byte> r = regions_[i];
      const std::size_t length = (r.size() + 4095) / 4096 * 4096;
      // Only an optimisation: a kernel without MADV_POPULATE_WRITE (before 5.14) says EINVAL.
      if (length > 0 && ::madvise(r.data(), length, MADV_POPULATE_WRITE) != 0) return;
    }
  }

  std::vector<std::span<std::byte>> regions_;
  std::atomic<std::size_t> front_{0};
  std::thread thread_;
};

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

// One slot of the hash index.
struct Slot {
  std::uint32_t id;  // kNil: empty.
  std::uint32_t hash;
};
static_assert(sizeof(Slot) == 8);

}  // namespace

// The entries, their order and their index, without a lock: the Cache guards it, and load() fills
// a staging one. See cache.h for the layout.
template <int Schema>
class Store {
 public:
  struct View {
    std::string_view key;
    std::string_view value;
    std::string_view type;
    std::uint64_t stamp = 0;
    std::uint32_t prev = kNil;
    std::uint32_t next = kNil;
  };

  // An empty store; `with_index` false leaves it without an index table, for load_arena to read
  // one in, so that a snapshot that fails before its index maps nothing for it.
  Store(std::uint64_t max_bytes, const std::vector<std::uint32_t>& classes, bool with_index = true,
        hotrestart::Arena arena = {})
      : arena_(arena ? std::move(arena) : hotrestart::Arena(arena_reserve(max_bytes))), max_bytes_(max_bytes) {
    classes_.resize(classes.size());
    for (std::size_t k = 0; k < classes.size(); ++k)
      classes_[k].size = classes[k];
    if (with_index) rehash(kMinSlots);
  }

  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  static std::uint64_t need_bytes(std::size_t key, std::size_t value, std::size_t type) {
    return kChunkHeaderBytes + key + value + (Schema >= 2 ? type : 0);
  }

  // The class whose chunks fit `need` bytes, or kDedicatedPage.
  std::uint32_t kind_for(std::uint64_t need) const {
    auto it = std::lower_bound(classes_.begin(), classes_.end(), need,
                               [](const Class& c, std::uint64_t n) { return c.size < n; });
    return it == classes_.end() ? kDedicatedPage : static_cast<std::uint32_t>(it - classes_.begin());
  }

  View view(std::uint32_t id) const {
    const Chunk* c = chunk(id);
    const char* p = reinterpret_cast<const char*>(c) + kChunkHeaderBytes;
    return {{p, c->key_len},
            {p + c->key_len, c->value_len},
            {p + c->key_len + c->value_len, c->type_len},
            c->stamp,
            c->prev,
            c->next};
  }

  std::uint32_t find(std::string_view key) const { return find(key, hash_of(key)); }
  std::uint32_t find(std::string_view key, std::uint32_t hash) const {
    const Slot* table = slots();
    const std::uint64_t mask = slot_count_ - 1;
    for (std::uint64_t s = hash & mask;; s = (s + 1) & mask) {
      const Slot& slot = table[s];
      if (slot.id == kNil) return kNil;
      if (slot.hash == hash && key_of(slot.id) == key) return slot.id;
    }
  }

  // Brings the index slot where a lookup of `hash` starts into the cache: a batch of lookups
  // prefetched first waits for memory once rather than once per key.
  void prefetch(std::uint32_t hash) const { __builtin_prefetch(slots() + (hash & (slot_count_ - 1))); }

  // Makes room for `n` entries in the index.
  void reserve(std::uint64_t n) {
    std::uint64_t want = kMinSlots;
    while (want * 3 / 4 < n && want < kMaxSlots)
      want *= 2;
    if (want > slot_count_) rehash(want);
  }

  // Stores `key` (absent, or the entry `id`) with these contents as the most recently used entry,
  // then evicts least recently used entries until the store fits its budget. An entry that cannot
  // fit even alone is treated as stored and evicted at once, with everything older.
  void set(std::uint32_t id, std::string_view key, std::string_view value, std::string_view type, std::uint64_t stamp) {
    set(id, key, value, type, stamp, hash_of(key));
  }
  void set(std::uint32_t id, std::string_view key, std::string_view value, std::string_view type, std::uint64_t stamp,
           std::uint32_t hash) {
    if constexpr (Schema < 2) type = {};
    const std::uint64_t need = need_bytes(key.size(), value.size(), type.size());
    const std::uint32_t kind = kind_for(need);
    const std::uint64_t cost = kind == kDedicatedPage ? dedicated_bytes(need) : classes_[kind].size;
    if (cost > max_bytes_) {
      if (id != kNil) remove(id);
      while (tail_ != kNil)
        evict_tail();
      ++evictions_;
      return;
    }
    if (id != kNil) {
      if (kind != kDedicatedPage && page_of(id).kind == kind) {
        // Same class: rewritten in place; the bytes past the new contents are cleared, so that a
        // snapshot carries nothing of the old value.
        Chunk* c = chunk(id);
        const std::uint64_t old_length = std::uint64_t{c->key_len} + c->value_len + c->type_len;
        write(id, key, value, type, stamp);
        const std::uint64_t length = key.size() + value.size() + type.size();
        if (old_length > length) zero_bytes(payload(c) + length, old_length - length);
        touch(id);
        fit_budget();
        return;
      }
      remove(id);
    }
    if ((count_ + 1) * 4 > slot_count_ * 3) rehash(slot_count_ * 2);
    id = allocate(kind, need);
    write(id, key, value, type, stamp);
    place(id, hash);
    link_front(id);
    ++count_;
    bytes_ += cost;
    fit_budget();
  }

  void touch(std::uint32_t id) {
    if (head_ == id) return;
    unlink(id);
    link_front(id);
  }

  void remove(std::uint32_t id) {
    remove_slot(id, hash_of(key_of(id)));
    unlink(id);
    bytes_ -= page_of(id).chunk;
    --count_;
    release_chunk(id);
  }

  // Evicts least recently used entries until the charged bytes fit max_bytes and the pages fit
  // theirs.
  void fit_budget() {
    while ((bytes_ > max_bytes_ || page_bytes_ > page_budget()) && tail_ != kNil)
      evict_tail();
  }

  std::uint32_t head() const { return head_; }
  std::uint32_t tail() const { return tail_; }
  std::uint64_t count() const { return count_; }
  std::uint64_t bytes() const { return bytes_; }
  std::uint64_t evictions() const { return evictions_; }
  std::uint64_t page_bytes() const { return page_bytes_; }
  std::uint64_t index_bytes() const { return index_.size(); }
  std::uint64_t max_stamp() const { return max_stamp_; }
  void note_stamp(std::uint64_t stamp) { max_stamp_ = std::max(max_stamp_, stamp); }

  bool has_default_classes() const {
    const auto& defaults = default_classes();
    if (defaults.size() != classes_.size()) return false;
    for (std::size_t k = 0; k < defaults.size(); ++k) {
      if (defaults[k] != classes_[k].size) return false;
    }
    return true;
  }

  // The arena layout (cache.h), after which the store is unchanged.
  void save_arena(hotrestart::OutputArchive& ar) const {
    save_layout(ar, false);
    for (const Page& p : pages_) {
      if (p.kind != kNoPage) ar(cereal::binary_data(p.memory.data(), p.used * p.chunk));
    }
    ar(slot_count_);
    ar(cereal::binary_data(index_.data(), slot_count_ * sizeof(Slot)));
  }

  // The header of the store's own arena handed over as it is (cache.h, "mapped arena"), then the
  // arena's snapshot. Empty while the arena is still lent to, or borrowed from, another generation.
  hotrestart::Arena::Snapshot save_mapped(hotrestart::OutputArchive& ar) {
    save_layout(ar, true);
    ar(slot_count_, arena_.offset_of(index_.data()));
    return arena_.snapshot();
  }

  // What both arena layouts start with, up to the page records; with `offsets` (the mapped
  // layout) each record also gives its block's offset in the arena.
  void save_layout(hotrestart::OutputArchive& ar, bool offsets) const {
    ar(kArenaMagic, static_cast<std::uint32_t>(Schema), static_cast<std::uint32_t>(kPageBytes), kHashXxh3,
       std::uint32_t{0}, count_, head_, tail_);
    ar(static_cast<std::uint32_t>(classes_.size()));
    for (const Class& c : classes_)
      ar(c.size);
    for (const Class& c : classes_)
      ar(c.free_head);
    ar(static_cast<std::uint32_t>(pages_.size()));
    for (const Page& p : pages_) {
      ar(p.kind, p.used, p.memory.size());
      if (offsets) ar(p.kind == kNoPage ? std::uint64_t{0} : arena_.offset_of(p.memory.data()));
    }
  }

  bool reclaim() { return arena_.reclaim(); }
  std::uint64_t arena_reserve_bytes() const { return arena_.reserve(); }
  bool arena_shared() const { return arena_.shared(); }

  // The entries layout (cache.h) in `version`, least recently used first, gathered into large
  // writes.
  void save_entries(std::ostream& out, std::uint32_t version) const {
    std::streambuf& sink = *out.rdbuf();
    std::vector<char> buffer(kWriteBuffer);
    std::size_t used = 0;
    auto flush = [&] {
      if (used > 0 &&
          sink.sputn(buffer.data(), static_cast<std::streamsize>(used)) != static_cast<std::streamsize>(used)) {
        throw std::runtime_error("kv-cache: the snapshot stream took fewer bytes than written");
      }
      used = 0;
    };
    auto put_u64 = [&](std::uint64_t v) {
      if (buffer.size() - used < sizeof v) flush();
      std::memcpy(buffer.data() + used, &v, sizeof v);
      used += sizeof v;
    };
    auto put_string = [&](std::string_view s) {
      put_u64(s.size());
      if (s.size() > buffer.size() - used) {
        flush();
        if (s.size() >= buffer.size()) {
          if (sink.sputn(s.data(), static_cast<std::streamsize>(s.size())) != static_cast<std::streamsize>(s.size())) {
            throw std::runtime_error("kv-cache: the snapshot stream took fewer bytes than written");
          }
          return;
        }
      }
      if (!s.empty()) std::memcpy(buffer.data() + used, s.data(), s.size());
      used += s.size();
    };
    put_u64(count_);
    for (std::uint32_t id = tail_; id != kNil;) {
      const View e = view(id);
      put_string(e.key);
      put_string(e.value);
      if (version >= 2) put_string(e.type);
      put_u64(e.stamp);
      id = e.prev;
    }
    flush();
  }

  // Reads an arena (its magic already read) into a new store with this budget, and checks it
  // whole; throws ArchiveError on anything inconsistent. Nothing is allocated or mapped for more
  // than the bytes the archive actually holds.
  //
  // The checks ride along with the copies where they can, while the bytes are in the CPU's cache:
  // each page's chunk headers right after the page is copied, each block of the index right after
  // it is. What needs the whole (the LRU list and the free lists: no cycle, every chunk exactly
  // once) walks a compact copy of the links rather than the pages.
  //
  // With `mapped` (an arena handed over as it is, and its header in `ar`), the page records carry
  // their blocks' offsets and nothing is copied: every offset must name a block of the arena of
  // exactly one page (or the index), every block must be used, and the same checks then run over
  // the pages where they lie. The store takes the arena over.
  static std::unique_ptr<Store> load_arena(hotrestart::InputArchive& ar, std::uint64_t max_bytes,
                                           hotrestart::Arena* mapped = nullptr) {
    std::uint32_t schema = 0;
    std::uint32_t page_bytes = 0;
    std::uint32_t hash = 0;
    std::uint32_t reserved = 0;
    std::uint64_t count = 0;
    std::uint32_t head = kNil;
    std::uint32_t tail = kNil;
    ar(schema, page_bytes, hash, reserved, count, head, tail);
    if (schema != Schema) {
      throw ArchiveError("corrupt: an arena of schema " + std::to_string(schema) + " read as schema " +
                         std::to_string(Schema));
    }
    if (page_bytes != kPageBytes) {
      throw ArchiveError("the arena's pages are " + std::to_string(page_bytes) + " bytes, this build's " +
                         std::to_string(kPageBytes));
    }
    if (hash != kHashXxh3 || reserved != 0) throw ArchiveError("the arena's index uses an unknown hash function");

    std::uint32_t class_count = 0;
    ar(class_count);
    if (class_count == 0 || class_count > kMaxClasses) throw ArchiveError("corrupt: the arena's class count");
    ar.check_count(class_count, 2 * sizeof(std::uint32_t));
    std::vector<std::uint32_t> classes(class_count);
    for (std::uint32_t k = 0; k < class_count; ++k) {
      ar(classes[k]);
      // Every chunk holds a header, stays 8-byte aligned, and its number fits in 16 bits.
      if (classes[k] % 8 != 0 || classes[k] <= kChunkHeaderBytes || classes[k] > kMaxClassChunk ||
          (k > 0 && classes[k] <= classes[k - 1])) {
        throw ArchiveError("corrupt: the arena's size classes");
      }
    }
    std::vector<std::uint32_t> free_heads(class_count);
    for (std::uint32_t& f : free_heads)
      ar(f);

    std::uint32_t page_count = 0;
    ar(page_count);
    if (page_count > kMaxPages) throw ArchiveError("corrupt: the arena has too many pages");
    ar.check_count(page_count, mapped != nullptr ? 24 : 16);
    struct Record {
      std::uint32_t kind = kNoPage;
      std::uint32_t used = 0;
      std::uint64_t bytes = 0;
      std::uint64_t offset = 0;  // In a mapped arena.
    };
    std::vector<Record> records(page_count);
    // A class hands chunks out from one page at a time, so every other page of it is full: which
    // also keeps the pages mapped here in proportion to the bytes that fill them.
    std::vector<std::uint8_t> has_room(class_count);
    std::uint64_t data = 0;
    for (Record& r : records) {
      ar(r.kind, r.used, r.bytes);
      if (mapped != nullptr) ar(r.offset);
      std::uint64_t present = 0;
      if (r.kind == kNoPage) {
        if (r.used != 0 || r.bytes != 0) throw ArchiveError("corrupt: an absent page with contents");
      } else if (r.kind == kDedicatedPage) {
        if (r.used != 1 || r.bytes % kDedicatedAlign != 0 || r.bytes == 0 || r.bytes > kMaxDedicatedBytes) {
          throw ArchiveError("corrupt: a dedicated page's size");
        }
        present = r.bytes;
      } else if (r.kind < class_count) {
        if (r.bytes != kPageBytes || r.used > kPageBytes / classes[r.kind]) {
          throw ArchiveError("corrupt: a page holds more chunks than fit");
        }
        if (r.used < kPageBytes / classes[r.kind] && has_room[r.kind]++ > 0) {
          throw ArchiveError("corrupt: a size class has two pages that are not full");
        }
        present = std::uint64_t{r.used} * classes[r.kind];
      } else {
        throw ArchiveError("corrupt: a page of an unknown size class");
      }
      data += present;
      if (mapped == nullptr && data > ar.remaining()) {
        throw ArchiveError("truncated: the arena's pages reach past the end of the data");
      }
    }

    // Every chunk handed out gets a number, page after page, for the marks and the links below.
    auto store = std::make_unique<Store>(max_bytes, classes, false,
                                         mapped != nullptr ? std::move(*mapped) : hotrestart::Arena());
    Store& s = *store;
    std::unordered_set<std::uint64_t> claimed;  // The blocks of a mapped arena already given a use.
    auto claim = [&](std::uint64_t offset, std::uint64_t bytes) {
      std::byte* at = s.arena_.block_at(offset, bytes);
      if (at == nullptr) throw ArchiveError("corrupt: a page or the index is not a block of the arena");
      if (!claimed.insert(offset).second) throw ArchiveError("corrupt: two pages share a block of the arena");
      return Block{at, bytes};
    };
    s.head_ = head;
    s.tail_ = tail;
    s.count_ = count;
    s.pages_.resize(page_count);
    s.numbering_.resize(page_count);
    std::uint64_t total = 0;
    std::vector<std::span<std::byte>> fill;
    for (std::uint32_t p = 0; p < page_count; ++p) {
      const Record& r = records[p];
      s.numbering_[p] = {total, r.used};
      total += r.used;
      if (r.kind == kNoPage) {
        s.free_page_ids_.push_back(p);
        continue;
      }
      Page& page = s.pages_[p];
      page.memory = mapped != nullptr ? claim(r.offset, r.bytes) : s.map_block(r.bytes, false);
      page.kind = r.kind;
      page.used = r.used;
      if (r.kind == kDedicatedPage) {
        page.chunk = r.bytes;
        page.capacity = 1;
      } else {
        page.chunk = classes[r.kind];
        page.capacity = static_cast<std::uint32_t>(kPageBytes / page.chunk);
        ++s.classes_[r.kind].pages;
      }
      s.page_bytes_ += r.bytes;
      fill.emplace_back(page.memory.data(), page.used * page.chunk);
    }
    for (std::uint32_t k = 0; k < class_count; ++k)
      s.classes_[k].free_head = free_heads[k];

    auto links = std::make_unique_for_overwrite<Link[]>(total);
    if (mapped != nullptr) {
      const std::uint64_t t0 = monotonic_ns();
      for (std::uint32_t p = 0; p < page_count; ++p) {
        if (s.pages_[p].kind != kNoPage) s.check_chunks(p, 0, s.pages_[p].used, links.get());
      }
      s.check_ns_ += monotonic_ns() - t0;
    } else {
      Prefaulter prefault(fill);
      std::size_t filled = 0;
      for (std::uint32_t p = 0; p < page_count; ++p) {
        const Page& page = s.pages_[p];
        if (page.kind == kNoPage) continue;
        prefault.reached(filled++);
        // In pieces, each checked while it is still in the CPU's cache.
        const std::uint64_t bytes = page.used * page.chunk;
        std::uint32_t checked = 0;
        for (std::uint64_t done = 0; done < bytes;) {
          const std::uint64_t piece = std::min(kCopyPiece, bytes - done);
          const std::uint64_t t0 = monotonic_ns();
          ar.loadBinary(page.memory.data() + done, piece);
          const std::uint64_t t1 = monotonic_ns();
          s.copy_ns_ += t1 - t0;
          done += piece;
          // The chunks whose headers are all there by now.
          const auto ready = static_cast<std::uint32_t>(
              done < kChunkHeaderBytes
                  ? 0
                  : std::min<std::uint64_t>(page.used, (done - kChunkHeaderBytes) / page.chunk + 1));
          s.check_chunks(p, checked, done == bytes ? page.used : ready, links.get());
          checked = done == bytes ? page.used : ready;
          s.check_ns_ += monotonic_ns() - t1;
        }
      }
    }
    const std::uint64_t t0 = monotonic_ns();
    s.check_lists(links.get(), total);
    s.check_ns_ += monotonic_ns() - t0;

    std::uint64_t slot_count = 0;
    ar(slot_count);
    if (slot_count < kMinSlots || slot_count > kMaxSlots || !std::has_single_bit(slot_count)) {
      throw ArchiveError("corrupt: the index's size");
    }
    // The index always keeps a quarter of its slots empty, so that every probe ends.
    if (count > slot_count / 4 * 3) throw ArchiveError("corrupt: the index is too small for the entry count");
    if (mapped != nullptr) {
      std::uint64_t offset = 0;
      ar(offset);
      s.index_ = claim(offset, slot_count * sizeof(Slot));
      if (claimed.size() != s.arena_.blocks().size()) {
        throw ArchiveError("corrupt: the arena holds blocks that no page uses");
      }
    } else {
      ar.check_count(slot_count, sizeof(Slot));
      s.index_ = s.map_block(slot_count * sizeof(Slot), false);
    }
    s.slot_count_ = slot_count;
    s.load_index(mapped != nullptr ? nullptr : &ar);
    if (!ar.at_end()) throw ArchiveError("corrupt: bytes left after the arena");
    std::vector<Numbering>().swap(s.numbering_);
    return store;
  }

 private:
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

  Chunk* chunk(std::uint32_t id) {
    const Page& p = pages_[id >> kSlotBits];
    return reinterpret_cast<Chunk*>(p.memory.data() + std::uint64_t{id & kSlotMask} * p.chunk);
  }
  const Chunk* chunk(std::uint32_t id) const {
    const Page& p = pages_[id >> kSlotBits];
    return reinterpret_cast<const Chunk*>(p.memory.data() + std::uint64_t{id & kSlotMask} * p.chunk);
  }
  static std::byte* payload(Chunk* c) { return reinterpret_cast<std::byte*>(c) + kChunkHeaderBytes; }
  Page& page_of(std::uint32_t id) { return pages_[id >> kSlotBits]; }
  std::string_view key_of(std::uint32_t id) const {
    const Chunk* c = chunk(id);
    return {reinterpret_cast<const char*>(c) + kChunkHeaderBytes, c->key_len};
  }
  Slot* slots() { return reinterpret_cast<Slot*>(index_.data()); }
  const Slot* slots() const { return reinterpret_cast<const Slot*>(index_.data()); }

  // What the pages may take: max_bytes, and a first page for each class in use.
  std::uint64_t page_budget() const { return saturating_add(max_bytes_, kPageBytes * classes_with_pages_); }

  bool may_map(std::uint64_t bytes, bool first_of_class) const {
    if (free_page_ids_.empty() && pages_.size() >= kMaxPages) return false;
    return first_of_class || saturating_add(page_bytes_, bytes) <= page_budget();
  }

  // A zero-filled block of the arena. With `populate`, the kernel faults it in at once, which costs
  // less than a fault per 4 KiB page as it is first written (for memory about to be filled anyway).
  // Transparent huge pages are not asked for: on the machine of docs/benchmarks.md faulting them in
  // was 2-6x slower than 4 KiB pages.
  Block map_block(std::uint64_t bytes, bool populate) {
    if (bytes == 0) return {};
    std::byte* at = arena_.allocate(bytes);
    // Only an optimisation: a kernel without MADV_POPULATE_WRITE (before 5.14) says EINVAL.
    if (populate) (void)::madvise(at, (bytes + 4095) / 4096 * 4096, MADV_POPULATE_WRITE);
    g_mapped_total.fetch_add(bytes, std::memory_order_relaxed);
    return {at, bytes};
  }
  void unmap_block(Block& block) {
    arena_.release(block.data());
    block = {};
  }

  void write(std::uint32_t id, std::string_view key, std::string_view value, std::string_view type,
             std::uint64_t stamp) {
    Chunk* c = chunk(id);
    c->stamp = stamp;
    c->key_len = static_cast<std::uint16_t>(key.size());
    c->value_len = static_cast<std::uint32_t>(value.size());
    c->type_len = static_cast<std::uint16_t>(type.size());
    std::byte* p = payload(c);
    copy_bytes(p, key.data(), key.size());
    copy_bytes(p + key.size(), value.data(), value.size());
    copy_bytes(p + key.size() + value.size(), type.data(), type.size());
  }

  // A chunk for `need` bytes of kind `kind`: from the class's free list, from its current page,
  // or from a new page; when the pages have reached their budget, least recently used entries are
  // evicted until one of those works.
  std::uint32_t allocate(std::uint32_t kind, std::uint64_t need) {
    if (kind == kDedicatedPage) {
      const std::uint64_t size = dedicated_bytes(need);
      while (!may_map(size, false) && tail_ != kNil)
        evict_tail();
      const std::uint32_t p = map_page(kind, size);
      pages_[p].used = 1;
      pages_[p].live = 1;
      return p << kSlotBits;
    }
    Class& c = classes_[kind];
    for (;;) {
      if (c.free_head != kNil) {
        const std::uint32_t id = pop_free(c);
        ++page_of(id).live;
        return id;
      }
      if (c.current != kNil) {
        Page& page = pages_[c.current];
        if (page.used < page.capacity) {
          ++page.live;
          return c.current << kSlotBits | page.used++;
        }
      }
      // With nothing left to evict, every other class is down to its one page, so this one fits.
      if (may_map(kPageBytes, c.pages == 0) || tail_ == kNil) {
        c.current = map_page(kind, kPageBytes);
        continue;
      }
      evict_tail();
    }
  }

  std::uint32_t map_page(std::uint32_t kind, std::uint64_t bytes) {
    if (free_page_ids_.empty() && pages_.size() >= kMaxPages) throw std::length_error("kv-cache: out of page numbers");
    // A page of its own is written whole at once; a class's page is, in a large cache, soon filled.
    Block memory = map_block(bytes, kind == kDedicatedPage || max_bytes_ >= kPopulateFrom);
    std::uint32_t p = 0;
    if (!free_page_ids_.empty()) {
      // The lowest free number, whatever order pages were freed in, so that a store loaded from a
      // snapshot (which does not carry that order) goes on exactly as the original would.
      auto lowest = std::min_element(free_page_ids_.begin(), free_page_ids_.end());
      p = *lowest;
      *lowest = free_page_ids_.back();
      free_page_ids_.pop_back();
    } else {
      p = static_cast<std::uint32_t>(pages_.size());
      pages_.emplace_back();
    }
    Page& page = pages_[p];
    page.memory = std::move(memory);
    page.kind = kind;
    page.used = 0;
    page.live = 0;
    if (kind == kDedicatedPage) {
      page.chunk = bytes;
      page.capacity = 1;
    } else {
      page.chunk = classes_[kind].size;
      page.capacity = static_cast<std::uint32_t>(kPageBytes / page.chunk);
      if (classes_[kind].pages++ == 0) ++classes_with_pages_;
    }
    page_bytes_ += bytes;
    return p;
  }

  void unmap_page(std::uint32_t p) {
    page_bytes_ -= pages_[p].memory.size();
    unmap_block(pages_[p].memory);
    pages_[p] = Page{};
    free_page_ids_.push_back(p);
  }

  void evict_tail() {
    remove(tail_);
    ++evictions_;
  }

  void release_chunk(std::uint32_t id) {
    const std::uint32_t p = id >> kSlotBits;
    Page& page = pages_[p];
    --page.live;
    if (page.kind == kDedicatedPage) return unmap_page(p);
    Chunk* c = chunk(id);
    zero_bytes(payload(c), std::uint64_t{c->key_len} + c->value_len + c->type_len);
    c->stamp = 0;
    c->key_len = 0;
    c->value_len = 0;
    c->type_len = 0;
    Class& k = classes_[page.kind];
    push_free(k, id);
    // An empty page goes back to the system, unless it is its class's last: a class that keeps
    // one entry coming and going would otherwise map and unmap a page each time.
    if (page.live == 0 && k.pages > 1) {
      for (std::uint32_t s = 0; s < page.used; ++s)
        unlink_free(k, p << kSlotBits | s);
      if (k.current == p) k.current = kNil;
      --k.pages;
      unmap_page(p);
    }
  }

  void push_free(Class& k, std::uint32_t id) {
    Chunk* c = chunk(id);
    c->prev = kNil;
    c->next = k.free_head;
    if (k.free_head != kNil) chunk(k.free_head)->prev = id;
    k.free_head = id;
  }
  std::uint32_t pop_free(Class& k) {
    const std::uint32_t id = k.free_head;
    Chunk* c = chunk(id);
    k.free_head = c->next;
    if (c->next != kNil) chunk(c->next)->prev = kNil;
    c->prev = c->next = kNil;
    return id;
  }
  void unlink_free(Class& k, std::uint32_t id) {
    Chunk* c = chunk(id);
    (c->prev != kNil ? chunk(c->prev)->next : k.free_head) = c->next;
    if (c->next != kNil) chunk(c->next)->prev = c->prev;
  }

  void link_front(std::uint32_t id) {
    Chunk* c = chunk(id);
    c->prev = kNil;
    c->next = head_;
    if (head_ != kNil) chunk(head_)->prev = id;
    head_ = id;
    if (tail_ == kNil) tail_ = id;
  }
  void unlink(std::uint32_t id) {
    Chunk* c = chunk(id);
    (c->prev != kNil ? chunk(c->prev)->next : head_) = c->next;
    (c->next != kNil ? chunk(c->next)->prev : tail_) = c->prev;
    c->prev = c->next = kNil;
  }

  void rehash(std::uint64_t slot_count) {
    if (slot_count > kMaxSlots) throw std::length_error("kv-cache: the index cannot grow further");
    Block fresh = map_block(slot_count * sizeof(Slot), true);
    std::memset(fresh.data(), 0xFF, slot_count * sizeof(Slot));  // Every id kNil: empty.
    Slot* to = reinterpret_cast<Slot*>(fresh.data());
    const std::uint64_t mask = slot_count - 1;
    const Slot* from = slots();
    for (std::uint64_t i = 0; i < slot_count_; ++i) {
      if (from[i].id == kNil) continue;
      std::uint64_t s = from[i].hash & mask;
      while (to[s].id != kNil)
        s = (s + 1) & mask;
      to[s] = from[i];
    }
    unmap_block(index_);
    index_ = fresh;
    slot_count_ = slot_count;
  }

  void place(std::uint32_t id, std::uint32_t hash) {
    Slot* table = slots();
    const std::uint64_t mask = slot_count_ - 1;
    std::uint64_t s = hash & mask;
    while (table[s].id != kNil)
      s = (s + 1) & mask;
    table[s] = {id, hash};
  }

  // Backward-shift deletion: later slots of the same probe run move up, so that no lookup ever
  // stops early at the hole.
  void remove_slot(std::uint32_t id, std::uint32_t hash) {
    Slot* table = slots();
    const std::uint64_t mask = slot_count_ - 1;
    std::uint64_t hole = hash & mask;
    while (table[hole].id != id)
      hole = (hole + 1) & mask;
    for (std::uint64_t j = (hole + 1) & mask; table[j].id != kNil; j = (j + 1) & mask) {
      const std::uint64_t home = table[j].hash & mask;
      if (((j - home) & mask) >= ((j - hole) & mask)) {
        table[hole] = table[j];
        hole = j;
      }
    }
    table[hole].id = kNil;
    table[hole].hash = UINT32_MAX;
  }

  // --- Checks of a loaded arena (see load_arena).

  struct Link {
    std::uint32_t next;
    std::uint32_t prev;
  };

  // Where a page's chunks start in the numbering of all chunks handed out, and how many it has
  // handed out (0 for an absent page): compact, so that the checks' lookups stay in the cache.
  struct Numbering {
    std::uint64_t first = 0;
    std::uint64_t used = 0;
  };

  // Whether `id` names a chunk handed out (or is kNil).
  bool valid_link(std::uint32_t id) const {
    if (id == kNil) return true;
    const std::uint32_t p = id >> kSlotBits;
    return p < numbering_.size() && (id & kSlotMask) < numbering_[p].used;
  }
  std::uint64_t number_of(std::uint32_t id) const { return numbering_[id >> kSlotBits].first + (id & kSlotMask); }

  // Chunks [from, to) of page p, just copied: their lengths fit their chunks and their links name
  // chunks; the links are kept for check_lists, in chunk-number order.
  void check_chunks(std::uint32_t p, std::uint32_t from, std::uint32_t to, Link* links) {
    const Page& page = pages_[p];
    const std::uint64_t first = numbering_[p].first;
    for (std::uint32_t slot = from; slot < to; ++slot) {
      const Chunk* c = chunk(p << kSlotBits | slot);
      if (kChunkHeaderBytes + c->key_len + std::uint64_t{c->value_len} + c->type_len > page.chunk) {
        throw ArchiveError("corrupt: an entry is longer than its chunk");
      }
      if (Schema < 2 && c->type_len != 0) throw ArchiveError("corrupt: a schema-1 entry with a content type");
      if (!valid_link(c->next) || !valid_link(c->prev)) throw ArchiveError("corrupt: a chunk links to no chunk");
      links[first + slot] = {c->next, c->prev};
      note_stamp(c->stamp);  // A free chunk's stamp is 0.
    }
  }

  // The LRU list visits exactly `count_` entries, from head_ to tail_, without a cycle and with
  // links that agree both ways; each free list holds chunks of its class only, likewise; and every
  // chunk handed out is on exactly one of them. Derives what is not sent: the charged bytes, the
  // live chunks per page, the page each class hands chunks out from.
  void check_lists(const Link* links, std::uint64_t total) {
    live_ = Bits(total);
    Bits freed(total);
    if (!valid_link(head_) || !valid_link(tail_)) throw ArchiveError("corrupt: the LRU list's ends name no chunk");
    std::uint64_t n = 0;
    std::uint32_t prev = kNil;
    for (std::uint32_t id = head_; id != kNil;) {
      const std::uint64_t at = number_of(id);
      if (live_.test(at)) throw ArchiveError("corrupt: the LRU list has a cycle");
      if (++n > count_) throw ArchiveError("corrupt: the LRU list is longer than the entry count");
      live_.set(at);
      if (links[at].prev != prev) throw ArchiveError("corrupt: the LRU list's links disagree");
      Page& page = pages_[id >> kSlotBits];
      ++page.live;
      bytes_ += page.chunk;
      prev = id;
      id = links[at].next;
    }
    if (n != count_ || prev != tail_) throw ArchiveError("corrupt: the LRU list does not hold every entry");

    std::vector<std::uint32_t> free_in_page(pages_.size());
    for (std::uint32_t k = 0; k < classes_.size(); ++k) {
      if (!valid_link(classes_[k].free_head)) throw ArchiveError("corrupt: a free list's head names no chunk");
      prev = kNil;
      for (std::uint32_t id = classes_[k].free_head; id != kNil;) {
        const std::uint64_t at = number_of(id);
        if (pages_[id >> kSlotBits].kind != k) throw ArchiveError("corrupt: a free list holds another class's chunk");
        if (live_.test(at) || freed.test(at)) throw ArchiveError("corrupt: a free list holds an entry, or a cycle");
        freed.set(at);
        if (links[at].prev != prev) throw ArchiveError("corrupt: a free list's links disagree");
        ++free_in_page[id >> kSlotBits];
        prev = id;
        id = links[at].next;
      }
    }
    for (std::uint32_t p = 0; p < pages_.size(); ++p) {
      const Page& page = pages_[p];
      if (page.kind == kNoPage) continue;
      if (std::uint64_t{page.live} + free_in_page[p] != page.used) {
        throw ArchiveError("corrupt: a page has chunks that are neither entries nor free");
      }
      if (page.kind != kDedicatedPage && page.used < page.capacity) classes_[page.kind].current = p;
    }
    for (const Class& c : classes_)
      classes_with_pages_ += c.pages > 0 ? 1 : 0;
  }

  // Reads the index block by block, checking each block just copied: every entry exactly once (its
  // mark from check_lists is cleared when found), and every slot within the probe run that starts
  // at its hash, where a lookup finds it. The slots before the first empty one belong to a run
  // that wraps around from the end, so they are checked last.
  // (`ar` null: the index is already in place, in a mapped arena; it is only checked.)
  void load_index(hotrestart::InputArchive* ar) {
    constexpr std::uint64_t kBlockSlots = kPageBytes / sizeof(Slot);
    const std::uint64_t blocks = (slot_count_ + kBlockSlots - 1) / kBlockSlots;
    std::vector<std::span<std::byte>> fill;
    for (std::uint64_t b = 0; b < blocks; ++b) {
      const std::uint64_t from = b * kBlockSlots;
      fill.emplace_back(index_.data() + from * sizeof(Slot), std::min(kBlockSlots, slot_count_ - from) * sizeof(Slot));
    }
    Slot* table = slots();
    const std::uint64_t mask = slot_count_ - 1;
    std::uint64_t first_empty = slot_count_;
    std::uint64_t run_start = 0;
    std::uint64_t indexed = 0;
    auto check_slot = [&](std::uint64_t j, const Slot& slot) {
      if (((j - (slot.hash & mask)) & mask) > ((j - run_start) & mask)) {
        throw ArchiveError("corrupt: an index slot lies where no lookup finds it");
      }
    };
    Prefaulter prefault(ar != nullptr ? fill : std::vector<std::span<std::byte>>{});
    for (std::uint64_t b = 0; b < blocks; ++b) {
      prefault.reached(b);
      const std::uint64_t t0 = monotonic_ns();
      if (ar != nullptr) ar->loadBinary(fill[b].data(), fill[b].size());
      const std::uint64_t t1 = monotonic_ns();
      copy_ns_ += t1 - t0;
      const std::uint64_t end = b * kBlockSlots + fill[b].size() / sizeof(Slot);
      for (std::uint64_t j = b * kBlockSlots; j < end; ++j) {
        const Slot& slot = table[j];
        if (slot.id == kNil) {
          if (first_empty == slot_count_) first_empty = j;
          run_start = j + 1;
          continue;
        }
        if (!valid_link(slot.id)) throw ArchiveError("corrupt: the index names no chunk");
        const std::uint64_t at = number_of(slot.id);
        if (!live_.test(at)) throw ArchiveError("corrupt: the index names a free chunk, or an entry twice");
        live_.clear(at);
        ++indexed;
        if (first_empty != slot_count_) check_slot(j, slot);
        if ((j % kHashSample == 0 || indexed <= 16) && slot.hash != hash_of(key_of(slot.id))) {
          throw ArchiveError("the index's hashes do not match its keys (another hash function?)");
        }
      }
      check_ns_ += monotonic_ns() - t1;
    }
    if (first_empty == slot_count_) throw ArchiveError("corrupt: the index has no empty slot");
    for (std::uint64_t j = 0; j < first_empty; ++j)
      check_slot(j, table[j]);  // run_start is where the run that wraps around began.
    if (indexed != count_) throw ArchiveError("corrupt: the index does not hold every entry");
    live_ = Bits(0);
  }

  // Declared first, so that it outlives everything pointing into it.
  hotrestart::Arena arena_;
  const std::uint64_t max_bytes_;
  std::vector<Page> pages_;
  std::vector<std::uint32_t> free_page_ids_;
  std::vector<Class> classes_;
  std::uint64_t classes_with_pages_ = 0;
  Block index_;
  std::uint64_t slot_count_ = 0;
  std::uint32_t head_ = kNil;  // Most recently used.
  std::uint32_t tail_ = kNil;  // Least recently used.
  std::uint64_t count_ = 0;
  std::uint64_t bytes_ = 0;       // Charged: the chunks of the entries.
  std::uint64_t page_bytes_ = 0;  // Mapped: the pages.
  std::uint64_t evictions_ = 0;
  std::uint64_t max_stamp_ = 0;
  // While an arena is loaded: the numbering of its chunks, and the entries not yet found in the
  // index.
  std::vector<Numbering> numbering_;
  Bits live_{0};

 public:
  // Where the time of the last load_arena went: copying bytes into the pages and the index (most
  // of it page faults, in new memory), and checking them.
  std::uint64_t copy_ns_ = 0;
  std::uint64_t check_ns_ = 0;
};

namespace {

// Copies every entry of `from` into a new store with this build's size classes, least recently
// used first, so that the order is kept and an importer with a smaller budget keeps the most
// recently used. For an arena of another schema or of another class table.
template <int To, int From>
std::unique_ptr<Store<To>> convert(const Store<From>& from, std::uint64_t max_bytes) {
  auto to = std::make_unique<Store<To>>(max_bytes, default_classes());
  to->reserve(std::min<std::uint64_t>(from.count(), max_bytes / kMinChunk + 1));
  // In batches whose index slots are prefetched together (see Store::prefetch).
  constexpr std::size_t kBatch = 16;
  std::array<typename Store<From>::View, kBatch> batch;
  std::array<std::uint32_t, kBatch> hashes{};
  for (std::uint32_t id = from.tail(); id != kNil;) {
    std::size_t n = 0;
    for (; n < kBatch && id != kNil; ++n) {
      batch[n] = from.view(id);
      hashes[n] = hash_of(batch[n].key);
      to->prefetch(hashes[n]);
      id = batch[n].prev;
    }
    for (std::size_t i = 0; i < n; ++i) {
      const auto& e = batch[i];
      if (to->find(e.key, hashes[i]) != kNil) throw ArchiveError("corrupt: a key appears twice in the snapshot");
      to->set(kNil, e.key, e.value, To >= 2 && From >= 2 ? e.type : std::string_view{}, e.stamp, hashes[i]);
    }
  }
  to->note_stamp(from.max_stamp());
  return to;
}

// Reads the entries layout (its count already read), inserting entry by entry, in batches whose
// index slots are prefetched together.
template <int Schema>
std::unique_ptr<Store<Schema>> load_entries(hotrestart::InputArchive& ar, std::uint64_t count, std::uint32_t version,
                                            std::uint64_t max_bytes) {
  // Every entry takes at least its two (or three) string lengths and its stamp.
  ar.check_count(count, version >= 2 ? 32 : 24);
  auto staging = std::make_unique<Store<Schema>>(max_bytes, default_classes());
  staging->reserve(std::min<std::uint64_t>(count, max_bytes / kMinChunk + 1));
  struct Entry {
    std::string key;
    std::string value;
    std::string type;
    std::uint64_t stamp = 0;
    std::uint32_t hash = 0;
  };
  constexpr std::uint64_t kBatch = 16;
  std::array<Entry, kBatch> batch;
  for (std::uint64_t done = 0; done < count;) {
    const std::uint64_t n = std::min(kBatch, count - done);
    for (std::uint64_t i = 0; i < n; ++i) {
      Entry& e = batch[i];
      ar(e.key, e.value);
      if (version >= 2) ar(e.type);
      ar(e.stamp);
      if (e.key.size() > kMaxKeyBytes || e.type.size() > kMaxTypeBytes || e.value.size() > UINT32_MAX - kPageBytes) {
        throw ArchiveError("the snapshot holds an entry larger than this cache stores");
      }
      e.hash = hash_of(e.key);
      staging->prefetch(e.hash);
    }
    for (std::uint64_t i = 0; i < n; ++i) {
      const Entry& e = batch[i];
      if (staging->find(e.key, e.hash) != kNil) throw ArchiveError("corrupt: a key appears twice in the snapshot");
      staging->set(kNil, e.key, e.value, e.type, e.stamp, e.hash);
      staging->note_stamp(e.stamp);
    }
    done += n;
  }
  return staging;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::uint64_t arena_bytes_mapped_total() {
  return g_mapped_total.load(std::memory_order_relaxed);
}

template <int Schema>
std::vector<std::uint32_t> Cache<Schema>::versions() {
  if constexpr (Schema == 1) {
    return {1};
  } else {
    return {1, 2};
  }
}

template <int Schema>
bool Cache<Schema>::supports(std::uint32_t version) {
  return version >= 1 && version <= static_cast<std::uint32_t>(Schema);
}

template <int Schema>
std::uint64_t Cache<Schema>::charge(std::size_t key_size, std::size_t value_size, std::size_t type_size) {
  const std::uint64_t need = Store<Schema>::need_bytes(key_size, value_size, type_size);
  const auto& classes = default_classes();
  auto it = std::lower_bound(classes.begin(), classes.end(), need);
  return it == classes.end() ? dedicated_bytes(need) : *it;
}

namespace {

// Throws std::length_error for contents a chunk header cannot describe.
void check_sizes(std::string_view key, std::string_view value, std::string_view type, int schema) {
  if (key.size() > kMaxKeyBytes) throw std::length_error("kv-cache: a key is limited to 65535 bytes");
  if (schema >= 2 && type.size() > kMaxTypeBytes) {
    throw std::length_error("kv-cache: a content type is limited to 65535 bytes");
  }
  if (value.size() > UINT32_MAX - kPageBytes) throw std::length_error("kv-cache: a value is limited to 4 GiB");
}

}  // namespace

template <int Schema>
Cache<Schema>::Cache(std::uint64_t max_bytes)
    : max_bytes_(max_bytes), store_(std::make_unique<Store<Schema>>(max_bytes, default_classes())) {}

template <int Schema>
Cache<Schema>::~Cache() = default;

template <int Schema>
std::optional<Found> Cache<Schema>::get(std::string_view key) {
  std::lock_guard lock(mutex_);
  const std::uint32_t id = store_->find(key);
  if (id == kNil) {
    ++misses_;
    return std::nullopt;
  }
  ++hits_;
  store_->touch(id);
  const auto e = store_->view(id);
  return Found{std::string(e.value), std::string(e.type), e.stamp};
}

template <int Schema>
std::optional<Found> Cache<Schema>::peek(std::string_view key) const {
  std::lock_guard lock(mutex_);
  const std::uint32_t id = store_->find(key);
  if (id == kNil) return std::nullopt;
  const auto e = store_->view(id);
  return Found{std::string(e.value), std::string(e.type), e.stamp};
}

template <int Schema>
bool Cache<Schema>::put(std::string_view key, std::string_view value, std::string_view content_type,
                        std::uint64_t stamp) {
  check_sizes(key, value, content_type, Schema);
  std::lock_guard lock(mutex_);
  return put_locked(key, value, content_type, stamp);
}

template <int Schema>
bool Cache<Schema>::erase(std::string_view key, std::uint64_t stamp) {
  std::lock_guard lock(mutex_);
  return erase_locked(key, stamp);
}

template <int Schema>
bool Cache<Schema>::put_locked(std::string_view key, std::string_view value, std::string_view content_type,
                               std::uint64_t stamp) {
  last_stamp_ = std::max(last_stamp_, stamp);
  if (!tombstones_.empty()) {
    if (auto t = tombstones_.find(std::string(key)); t != tombstones_.end()) {
      if (t->second >= stamp) return false;
      tombstone_bytes_ -= t->first.size() + kTombstoneOverhead;
      tombstones_.erase(t);
    }
  }
  const std::uint32_t id = store_->find(key);
  if (id != kNil && store_->view(id).stamp >= stamp) return false;
  store_->set(id, key, value, content_type, stamp);
  return true;
}

template <int Schema>
bool Cache<Schema>::erase_locked(std::string_view key, std::uint64_t stamp) {
  last_stamp_ = std::max(last_stamp_, stamp);
  bool removed = false;
  if (const std::uint32_t id = store_->find(key); id != kNil) {
    if (store_->view(id).stamp >= stamp) return false;  // The entry was written after this erase.
    store_->remove(id);
    removed = true;
  }
  if (keep_tombstones_) {
    if (auto t = tombstones_.find(std::string(key)); t != tombstones_.end()) {
      t->second = std::max(t->second, stamp);
    } else if (tombstone_bytes_ + key.size() + kTombstoneOverhead <= max_bytes_ / kTombstoneShare) {
      tombstones_.emplace(key, stamp);
      tombstone_bytes_ += key.size() + kTombstoneOverhead;
    }
  }
  return removed;
}

template <int Schema>
std::uint64_t Cache<Schema>::next_stamp_locked() {
  last_stamp_ = std::max(monotonic_ns(), last_stamp_ + 1);
  return last_stamp_;
}

template <int Schema>
WriteResult Cache<Schema>::put_local(std::string_view key, std::string_view value, std::string_view content_type,
                                     const Publish& publish) {
  // Checked before anything is published: a change the next generation cannot store either.
  check_sizes(key, value, content_type, Schema);
  std::lock_guard lock(mutex_);
  const std::uint64_t stamp = next_stamp_locked();
  if (!publish(stamp)) return WriteResult::kRefused;
  put_locked(key, value, content_type, stamp);
  return WriteResult::kApplied;
}

template <int Schema>
WriteResult Cache<Schema>::erase_local(std::string_view key, const Publish& publish) {
  std::lock_guard lock(mutex_);
  const std::uint64_t stamp = next_stamp_locked();
  // Published even when the key is absent here: the next generation may hold an older write of it.
  if (!publish(stamp)) return WriteResult::kRefused;
  return erase_locked(key, stamp) ? WriteResult::kApplied : WriteResult::kAbsent;
}

template <int Schema>
void Cache<Schema>::drop_tombstones() {
  std::lock_guard lock(mutex_);
  keep_tombstones_ = false;
  std::unordered_map<std::string, std::uint64_t>().swap(tombstones_);
  tombstone_bytes_ = 0;
}

template <int Schema>
void Cache<Schema>::prefill(std::uint64_t n, std::size_t value_bytes) {
  if (value_bytes > UINT32_MAX - kPageBytes) throw std::length_error("kv-cache: a value is limited to 4 GiB");
  {
    // No more than the budget can hold: the index would only be sized for entries evicted anyway.
    std::lock_guard lock(mutex_);
    store_->reserve(std::min(saturating_add(store_->count(), n), max_bytes_ / kMinChunk + 1));
  }
  // Batches keep the lock for well under a millisecond at a time, and their index slots are
  // prefetched together (see Store::prefetch).
  constexpr std::uint64_t kBatch = 16;
  std::array<std::string, kBatch> keys;
  std::array<std::uint32_t, kBatch> hashes{};
  std::string value;
  for (std::uint64_t i = 0; i < n;) {
    const std::uint64_t count = std::min(kBatch, n - i);
    std::lock_guard lock(mutex_);
    for (std::uint64_t j = 0; j < count; ++j) {
      keys[j] = prefill_key(i + j);
      hashes[j] = hash_of(keys[j]);
      store_->prefetch(hashes[j]);
    }
    // One clock reading per batch: the stamps only have to grow.
    std::uint64_t stamp = next_stamp_locked();
    for (std::uint64_t j = 0; j < count; ++j, ++stamp) {
      prefill_value(i + j, value_bytes, value);
      if (!tombstones_.empty()) {
        put_locked(keys[j], value, {}, stamp);
        continue;
      }
      const std::uint32_t id = store_->find(keys[j], hashes[j]);
      if (id != kNil && store_->view(id).stamp >= stamp) continue;
      store_->set(id, keys[j], value, {}, stamp, hashes[j]);
    }
    last_stamp_ = std::max(last_stamp_, stamp);
    i += count;
  }
}

template <int Schema>
Stats Cache<Schema>::stats() const {
  std::lock_guard lock(mutex_);
  return {store_->count(),      store_->bytes(),      hits_, misses_, store_->evictions(), tombstones_.size(), deltas_,
          store_->page_bytes(), store_->index_bytes()};
}

template <int Schema>
std::vector<std::string> Cache<Schema>::keys_by_recency() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> keys;
  for (std::uint32_t id = store_->head(); id != kNil;) {
    const auto e = store_->view(id);
    keys.emplace_back(e.key);
    id = e.next;
  }
  return keys;
}

template <int Schema>
void Cache<Schema>::save(std::uint32_t version, std::ostream& out) const {
  check_version(version, supports(version), Schema);
  std::lock_guard lock(mutex_);
  if (version == static_cast<std::uint32_t>(Schema)) {
    hotrestart::OutputArchive ar(out);
    store_->save_arena(ar);
  } else {
    store_->save_entries(out, version);
  }
}

template <int Schema>
void Cache<Schema>::load(std::uint32_t version, std::istream& in) {
  load_from(version, in, nullptr);
}

template <int Schema>
hotrestart::Arena::Snapshot Cache<Schema>::save_mapped(std::uint32_t version, std::ostream& out) {
  check_version(version, supports(version), Schema);
  if (version != static_cast<std::uint32_t>(Schema)) return {};
  std::lock_guard lock(mutex_);
  hotrestart::OutputArchive ar(out);
  return store_->save_mapped(ar);
}

template <int Schema>
void Cache<Schema>::load_mapped(std::uint32_t version, std::istream& in, hotrestart::Arena arena) {
  load_from(version, in, &arena);
}

template <int Schema>
void Cache<Schema>::load_from(std::uint32_t version, std::istream& in, hotrestart::Arena* mapped) {
  check_version(version, supports(version), Schema);
  const std::uint64_t t0 = monotonic_ns();
  LoadReport report;
  hotrestart::InputArchive ar(in);
  std::uint64_t first = 0;
  ar(first);
  const std::string how = mapped != nullptr ? "mapped arena" : "arena";
  std::unique_ptr<Store<Schema>> staging;
  auto convert_timed = [&](const auto& from) {
    const std::uint64_t t = monotonic_ns();
    staging = convert<Schema>(from, max_bytes_);
    report.convert_micros = (monotonic_ns() - t) / 1000;
  };
  if (first != kArenaMagic) {
    if (mapped != nullptr) throw ArchiveError("corrupt: a mapped arena's header does not start with its magic");
    report.layout = "entries";
    staging = load_entries<Schema>(ar, first, version, max_bytes_);
  } else if (version == static_cast<std::uint32_t>(Schema)) {
    auto loaded = Store<Schema>::load_arena(ar, max_bytes_, mapped);
    report.copy_micros = loaded->copy_ns_ / 1000;
    report.check_micros = loaded->check_ns_ / 1000;
    if (mapped != nullptr && loaded->arena_reserve_bytes() < arena_reserve(max_bytes_)) {
      // Another budget's arena (a larger --max-memory, say) could run out of address space here.
      report.layout = how + " with a smaller reserve, copied entry by entry";
      convert_timed(*loaded);
    } else if (loaded->has_default_classes()) {
      report.layout = how;
      staging = std::move(loaded);
      staging->fit_budget();
    } else {
      report.layout = how + " of other size classes, copied entry by entry";
      convert_timed(*loaded);
    }
  } else if constexpr (Schema >= 2) {
    // A v1 binary's arena: loaded and checked as it is (no budget: the conversion applies this
    // cache's), then copied entry by entry.
    const auto v1 = Store<1>::load_arena(ar, std::numeric_limits<std::uint64_t>::max(), mapped);
    report.layout = how + " of schema 1, copied entry by entry";
    report.copy_micros = v1->copy_ns_ / 1000;
    report.check_micros = v1->check_ns_ / 1000;
    convert_timed(*v1);
  }
  if (!staging) throw ArchiveError("an arena of another schema");
  if (!ar.at_end()) throw ArchiveError("corrupt: bytes left after the last entry");
  report.micros = (monotonic_ns() - t0) / 1000;
  std::unique_ptr<Store<Schema>> old;
  {
    std::lock_guard lock(mutex_);
    last_stamp_ = std::max(last_stamp_, staging->max_stamp());
    old = std::exchange(store_, std::move(staging));
    last_load_ = std::move(report);
  }
  // The previous contents are freed outside the lock.
}

template <int Schema>
bool Cache<Schema>::memory_borrowed() const {
  std::lock_guard lock(mutex_);
  return !store_->arena_shared();
}

template <int Schema>
bool Cache<Schema>::reclaim_memory() {
  std::lock_guard lock(mutex_);
  return store_->reclaim();
}

template <int Schema>
LoadReport Cache<Schema>::last_load() const {
  std::lock_guard lock(mutex_);
  return last_load_;
}

template <int Schema>
std::string Cache<Schema>::encode_put_delta(std::uint32_t version, std::string_view key, std::string_view value,
                                            std::string_view content_type, std::uint64_t stamp) {
  check_version(version, supports(version), Schema);
  std::ostringstream out;
  {
    hotrestart::OutputArchive ar(out);
    ar(kOpPut);
    write_bytes(ar, key);
    write_bytes(ar, value);
    if (version >= 2) write_bytes(ar, content_type);
    ar(stamp);
  }
  return std::move(out).str();
}

template <int Schema>
std::string Cache<Schema>::encode_erase_delta(std::uint32_t version, std::string_view key, std::uint64_t stamp) {
  check_version(version, supports(version), Schema);
  std::ostringstream out;
  {
    hotrestart::OutputArchive ar(out);
    ar(kOpErase);
    write_bytes(ar, key);
    ar(stamp);
  }
  return std::move(out).str();
}

template <int Schema>
void Cache<Schema>::apply_delta(std::uint32_t version, std::string_view bytes) {
  check_version(version, supports(version), Schema);
  hotrestart::InputArchive ar(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
  std::uint8_t op = 0;
  std::string key;
  std::string value;
  std::string content_type;
  std::uint64_t stamp = 0;
  ar(op, key);
  if (op == kOpPut) {
    ar(value);
    if (version >= 2) ar(content_type);
  } else if (op != kOpErase) {
    throw hotrestart::ArchiveError("corrupt: unknown delta operation " + std::to_string(op));
  }
  ar(stamp);
  if (ar.remaining() != 0) throw hotrestart::ArchiveError("corrupt: bytes left after the delta");
  if (op == kOpPut) check_sizes(key, value, content_type, Schema);
  std::lock_guard lock(mutex_);
  ++deltas_;
  if (op == kOpPut) {
    put_locked(key, value, content_type, stamp);
  } else {
    erase_locked(key, stamp);
  }
}

template class Cache<1>;
template class Cache<2>;

}  // namespace kv
