// kv-cache's snapshot layouts: writing a store in each and reading it back (see snapshot.h).
//
// Snapshot (a section's payload), in one of two layouts, told apart by the first 8 bytes:
//   arena   (what save() writes in the cache's own schema): the store as it is, so that loading it
//           is a few large reads and a check, with no per-entry work and no index to rebuild. All
//           integers are little-endian, as in cereal's binary archives:
//             magic: u64 = kArenaMagic, schema: u32, page_bytes: u32, hash: u32 (1 = XXH3-64, low 32
//             bits), reserved: u32 (0), count: u64 (entries), lru head: u32, lru tail: u32,
//             classes: u32 n, then n chunk sizes: u32, then n free-list heads: u32,
//             pages: u32 n, then n records {kind: u32 (size class, kDedicatedPage or kNoPage),
//                    used: u32 (chunks handed out), bytes: u64 (the page's size)},
//             the used bytes of every page (used * chunk size), in page order,
//             index: u64 slot count (a power of two), then the slots {chunk id: u32, hash: u32}.
//           An import checks it before it swaps anything in (arena_checks.h). An arena of schema 1
//           loaded by schema 2, or one with other size classes, is checked the same way and then
//           copied entry by entry; other page sizes are refused.
//   mapped arena (what save_mapped() writes, the header of an arena handed over as it is, see
//           hotrestart/arena.h): the arena layout's fields up to the page records, each record
//           followed by offset: u64 (its block in the arena; 0 for kNoPage), then the index's
//           slot count: u64 and offset: u64, and no page or index bytes: they are the arena's
//           blocks. load_mapped() checks that every offset names a block of at least the record's
//           size, that no two share one and that every block is used, then runs the same checks
//           over the pages and the index where they lie.
//   entries (what save() writes for an older schema, and what kv-cache wrote before the arena):
//           cereal's binary layout (u64 counts), count: u64, then `count` entries from least to
//           most recently used, each key: string, value: string, [content_type: string, version 2
//           only], stamp: u64. An import inserts them one by one. Because both layouts are read, an
//           upgrade from a build older than the arena keeps the cache; a rollback to such a build
//           is sent an arena it cannot read, and starts cold.
//   save() runs in a process forked under the cache's lock (Section::freeze), so the old generation
//   pauses for the fork only; with --locked-save it holds the lock while it writes instead
//   (docs/benchmarks.md, "State transfer"). A load copies an arena's pages and index into its new
//   arena through the arena's memfd (Arena::write), while a thread of its own checks each part
//   as soon as it is in place.
#include "snapshot.h"

#include <hotrestart/archive.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "arena_checks.h"

namespace kv::detail {

// Snapshots copy the arena's bytes as they are, and cereal's binary archives are host-endian too:
// the layouts above are little-endian.
static_assert(std::endian::native == std::endian::little, "kv-cache's snapshot layouts are little-endian");

namespace {

using hotrestart::ArchiveError;

constexpr std::uint32_t kHashXxh3 = 1;
// An arena's pages and index are copied in pieces of this size (a streamed one through a buffer of
// this size, which stays in the CPU's cache).
constexpr std::uint64_t kCopyPiece = 128 * 1024;
// The index is copied and checked in blocks of this many slots.
constexpr std::uint64_t kIndexBlockSlots = kPageBytes / sizeof(Slot);
// The entries layout is gathered into a buffer of this size, so that the SDK's stream sees a few
// large writes rather than five small ones per entry.
constexpr std::size_t kWriteBuffer = 256 * 1024;
// Entries are copied and read in batches whose index slots are prefetched together (see
// HashIndex::prefetch).
constexpr std::size_t kBatch = 16;

// What both arena layouts start with, up to the page records; with `offsets` (the mapped
// layout) each record also gives its block's offset in the arena.
enum class Offsets { kNo, kYes };

template <int Schema>
void save_layout(const Store<Schema>& store, hotrestart::OutputArchive& ar, Offsets offsets) {
  const Slabs& slabs = store.slabs();
  ar(kArenaMagic, static_cast<std::uint32_t>(Schema), static_cast<std::uint32_t>(kPageBytes), kHashXxh3,
     std::uint32_t{0}, store.count(), store.head(), store.tail());
  ar(static_cast<std::uint32_t>(slabs.classes().size()));
  for (const Slabs::Class& c : slabs.classes())
    ar(c.size);
  for (const Slabs::Class& c : slabs.classes())
    ar(c.free_head);
  ar(static_cast<std::uint32_t>(slabs.pages().size()));
  for (const Slabs::Page& p : slabs.pages()) {
    ar(p.kind, p.used, p.memory.size());
    if (offsets == Offsets::kYes) {
      ar(p.kind == kNoPage ? std::uint64_t{0} : store.arena().offset_of(p.memory.data()));
    }
  }
}

// The arena layout, after which the store is unchanged.
template <int Schema>
void save_arena(const Store<Schema>& store, hotrestart::OutputArchive& ar) {
  save_layout(store, ar, Offsets::kNo);
  for (const Slabs::Page& p : store.slabs().pages()) {
    if (p.kind != kNoPage) ar(cereal::binary_data(p.memory.data(), p.used * p.chunk));
  }
  const HashIndex& index = store.index();
  ar(index.slot_count());
  ar(cereal::binary_data(index.block().data(), index.slot_count() * sizeof(Slot)));
}

// Writes the entries layout through a buffer of kWriteBuffer bytes, so that the stream sees a few
// large writes.
class EntryWriter {
 public:
  explicit EntryWriter(std::ostream& out) : sink_(*out.rdbuf()), buffer_(kWriteBuffer) {}

  void put_u64(std::uint64_t v) {
    if (buffer_.size() - used_ < sizeof v) flush();
    std::memcpy(buffer_.data() + used_, &v, sizeof v);
    used_ += sizeof v;
  }
  void put_string(std::string_view s) {
    put_u64(s.size());
    if (s.size() > buffer_.size() - used_) {
      flush();
      if (s.size() >= buffer_.size()) return write(s.data(), s.size());
    }
    if (!s.empty()) std::memcpy(buffer_.data() + used_, s.data(), s.size());
    used_ += s.size();
  }
  void flush() {
    write(buffer_.data(), used_);
    used_ = 0;
  }

 private:
  void write(const char* data, std::size_t n) {
    if (n > 0 && sink_.sputn(data, static_cast<std::streamsize>(n)) != static_cast<std::streamsize>(n)) {
      throw std::runtime_error("kv-cache: the snapshot stream took fewer bytes than written");
    }
  }

  std::streambuf& sink_;
  std::vector<char> buffer_;
  std::size_t used_ = 0;
};

// The entries layout in `version`, least recently used first.
template <int Schema>
void save_entries(const Store<Schema>& store, std::ostream& out, std::uint32_t version) {
  EntryWriter writer(out);
  writer.put_u64(store.count());
  for (std::uint32_t id = store.tail(); id != kNil;) {
    const auto e = store.view(id);
    writer.put_string(e.key);
    writer.put_string(e.value);
    if (version >= 2) writer.put_string(e.type);
    writer.put_u64(e.stamp);
    id = e.prev;
  }
  writer.flush();
}

}  // namespace

// Reads an arena (its magic already read) into a new store with a given budget, and checks it whole
// (arena_checks.h); throws ArchiveError on anything inconsistent. Nothing is allocated or mapped for
// more than the bytes the archive actually holds.
//
// With `mapped` (an arena handed over as it is, and its header in the archive), the page records
// carry their blocks' offsets and nothing is copied: every offset must name a block of the arena of
// exactly one page (or the index), every block must be used, and the same checks then run over the
// pages where they lie. The store takes the arena over.
template <int Schema>
class ArenaReader {
 public:
  ArenaReader(hotrestart::InputArchive& ar, std::uint64_t max_bytes, hotrestart::Arena* mapped)
      : ar_(ar), max_bytes_(max_bytes), mapped_(mapped) {}

  std::unique_ptr<Store<Schema>> read() {
    read_header();
    read_classes();
    read_page_records();
    place_pages();
    ArenaCheck check(store_->slabs_, Schema >= 2 ? ContentTypes::kAllowed : ContentTypes::kNone);
    if (mapped_ != nullptr) {
      // Nothing to copy: the checks run here, over the pages where they lie, in the same order.
      const std::uint64_t t0 = monotonic_ns();
      check_chunks_on_two_threads(check);
      store_->bytes_ = check.check_lists(head_, tail_, count_);
      read_index();
      check_index_blocks(check, [] {});
      check_ns_ = monotonic_ns() - t0;
    } else {
      // The checks run on a thread of their own, each part as soon as it is copied.
      Checker checker([this, &check](const std::function<void(std::uint64_t)>& ready) { run_checks(check, ready); });
      try {
        copy_pages(checker);
        read_index();
        checker.reached(++steps_);
        copy_index(checker);
      } catch (...) {
        // What the checks found wins over what the copy ran into after it (a corrupt page, say,
        // before the bytes ran out), as when each part was checked before the next was read.
        checker.abandon();
        throw;
      }
      checker.finish();
      check_ns_ = checker.busy_ns();
    }
    if (!ar_.at_end()) throw ArchiveError("corrupt: bytes left after the arena");
    store_->max_stamp_ = check.max_stamp();
    return std::move(store_);
  }

  // Where the time of read() went: copying bytes into the pages and the index (in new memory), and
  // checking them (alongside the copies, on a thread of their own, unless the arena is mapped).
  std::uint64_t copy_ns() const { return copy_ns_; }
  std::uint64_t check_ns() const { return check_ns_; }

 private:
  struct Record {
    std::uint32_t kind = kNoPage;
    std::uint32_t used = 0;
    std::uint64_t bytes = 0;
    std::uint64_t offset = 0;  // In a mapped arena.
  };

  void read_header() {
    std::uint32_t schema = 0;
    std::uint32_t page_bytes = 0;
    std::uint32_t hash = 0;
    std::uint32_t reserved = 0;
    ar_(schema, page_bytes, hash, reserved, count_, head_, tail_);
    if (schema != Schema) {
      throw ArchiveError("corrupt: an arena of schema " + std::to_string(schema) + " read as schema " +
                         std::to_string(Schema));
    }
    if (page_bytes != kPageBytes) {
      throw ArchiveError("the arena's pages are " + std::to_string(page_bytes) + " bytes, this build's " +
                         std::to_string(kPageBytes));
    }
    if (hash != kHashXxh3 || reserved != 0) throw ArchiveError("the arena's index uses an unknown hash function");
  }

  void read_classes() {
    std::uint32_t class_count = 0;
    ar_(class_count);
    if (class_count == 0 || class_count > kMaxClasses) throw ArchiveError("corrupt: the arena's class count");
    ar_.check_count(class_count, 2 * sizeof(std::uint32_t));
    classes_.resize(class_count);
    for (std::uint32_t k = 0; k < class_count; ++k) {
      ar_(classes_[k]);
      // Every chunk holds a header, stays 8-byte aligned, and its number fits in 16 bits.
      if (classes_[k] % 8 != 0 || classes_[k] <= kChunkHeaderBytes || classes_[k] > kMaxClassChunk ||
          (k > 0 && classes_[k] <= classes_[k - 1])) {
        throw ArchiveError("corrupt: the arena's size classes");
      }
    }
    free_heads_.resize(class_count);
    for (std::uint32_t& f : free_heads_)
      ar_(f);
  }

  void read_page_records() {
    std::uint32_t page_count = 0;
    ar_(page_count);
    if (page_count > kMaxPages) throw ArchiveError("corrupt: the arena has too many pages");
    ar_.check_count(page_count, mapped_ != nullptr ? 24 : 16);
    records_.resize(page_count);
    // A class hands chunks out from one page at a time, so every other page of it is full: which
    // also keeps the pages mapped here in proportion to the bytes that fill them.
    std::vector<std::uint8_t> has_room(classes_.size());
    std::uint64_t data = 0;
    for (Record& r : records_) {
      ar_(r.kind, r.used, r.bytes);
      if (mapped_ != nullptr) ar_(r.offset);
      std::uint64_t present = 0;
      if (r.kind == kNoPage) {
        if (r.used != 0 || r.bytes != 0) throw ArchiveError("corrupt: an absent page with contents");
      } else if (r.kind == kDedicatedPage) {
        if (r.used != 1 || r.bytes % kDedicatedAlign != 0 || r.bytes == 0 || r.bytes > kMaxDedicatedBytes) {
          throw ArchiveError("corrupt: a dedicated page's size");
        }
        present = r.bytes;
      } else if (r.kind < classes_.size()) {
        if (r.bytes != kPageBytes || r.used > kPageBytes / classes_[r.kind]) {
          throw ArchiveError("corrupt: a page holds more chunks than fit");
        }
        if (r.used < kPageBytes / classes_[r.kind] && has_room[r.kind]++ > 0) {
          throw ArchiveError("corrupt: a size class has two pages that are not full");
        }
        present = std::uint64_t{r.used} * classes_[r.kind];
      } else {
        throw ArchiveError("corrupt: a page of an unknown size class");
      }
      data += present;
      if (mapped_ == nullptr && data > ar_.remaining()) {
        throw ArchiveError("truncated: the arena's pages reach past the end of the data");
      }
    }
  }

  // A block of the mapped arena that the header names, which no other page (or the index) uses.
  Block claim(std::uint64_t offset, std::uint64_t bytes) {
    std::byte* at = store_->arena_.block_at(offset, bytes);
    if (at == nullptr) throw ArchiveError("corrupt: a page or the index is not a block of the arena");
    if (!claimed_.insert(offset).second) throw ArchiveError("corrupt: two pages share a block of the arena");
    return Block{at, bytes};
  }

  // The store, with its pages where the records say: claimed in the mapped arena, or mapped anew
  // for the copies.
  void place_pages() {
    store_ = std::make_unique<Store<Schema>>(max_bytes_, classes_, StartIndex::kNone,
                                             mapped_ != nullptr ? std::move(*mapped_) : hotrestart::Arena());
    Store<Schema>& s = *store_;
    s.head_ = head_;
    s.tail_ = tail_;
    s.count_ = count_;
    s.slabs_.restore_page_count(static_cast<std::uint32_t>(records_.size()));
    for (std::uint32_t p = 0; p < records_.size(); ++p) {
      const Record& r = records_[p];
      if (r.kind == kNoPage) {
        s.slabs_.restore_absent_page(p);
        continue;
      }
      const Block memory = mapped_ != nullptr ? claim(r.offset, r.bytes) : map_block(s.arena_, r.bytes, Populate::kNo);
      s.slabs_.restore_page(p, memory, r.kind, r.used);
    }
    for (std::uint32_t k = 0; k < classes_.size(); ++k)
      s.slabs_.restore_free_head(k, free_heads_[k]);
  }

  // Runs the checks on a thread of its own, a step behind the copies: the loading thread calls
  // reached(n) once the n-th part (a page, the index's table, a block of the index) is in place,
  // and finish() at the end, which waits for the checks and throws what they threw. Without a
  // thread to be had, finish() runs them all.
  class Checker {
   public:
    using Checks = std::function<void(const std::function<void(std::uint64_t)>& ready)>;
    explicit Checker(Checks checks) : checks_(std::move(checks)) {
      try {
        threaded_ = true;  // Before the thread starts, which reads it.
        thread_ = std::thread([this] { run(); });
      } catch (const std::system_error&) {
        threaded_ = false;
      }
    }
    ~Checker() { stop(); }
    Checker(const Checker&) = delete;
    Checker& operator=(const Checker&) = delete;

    void reached(std::uint64_t step) {
      ready_.store(step, std::memory_order_release);
      ready_.notify_one();
    }
    // Whether the checks have failed already, so that the copies can stop.
    bool failed() const { return failed_.load(std::memory_order_relaxed); }
    // The copy failed: stops the checks where they are, and throws what they found, if anything.
    void abandon() {
      stop();
      if (error_) std::rethrow_exception(error_);
    }
    void finish() {
      if (threaded_) {
        thread_.join();
      } else {
        run();
      }
      if (error_) std::rethrow_exception(error_);
    }
    std::uint64_t busy_ns() const { return busy_ns_; }

   private:
    static constexpr std::uint64_t kAbandoned = std::numeric_limits<std::uint64_t>::max();
    struct Abandoned {};

    void stop() {
      if (!thread_.joinable()) return;
      reached(kAbandoned);
      thread_.join();
    }

    void run() {
      const std::uint64_t t0 = monotonic_ns();
      std::uint64_t waited = 0;
      try {
        checks_([&](std::uint64_t step) {
          if (!threaded_) return;  // Run at the end: everything is in place.
          std::uint64_t now = ready_.load(std::memory_order_acquire);
          if (now < step) {
            const std::uint64_t w = monotonic_ns();
            while ((now = ready_.load(std::memory_order_acquire)) < step)
              ready_.wait(now, std::memory_order_acquire);
            waited += monotonic_ns() - w;
          }
          if (now == kAbandoned) throw Abandoned{};
        });
      } catch (const Abandoned&) {
      } catch (...) {
        error_ = std::current_exception();
        failed_.store(true, std::memory_order_relaxed);
      }
      busy_ns_ = monotonic_ns() - t0 - waited;
    }

    Checks checks_;
    std::atomic<std::uint64_t> ready_{0};
    std::atomic<bool> failed_{false};
    std::exception_ptr error_;
    std::uint64_t busy_ns_ = 0;
    bool threaded_ = false;
    std::thread thread_;
  };

  // Every check of a copied arena, in order; `ready(n)` returns once the n-th part (a page, the
  // index's table, a block of the index) is in place.
  void run_checks(ArenaCheck& check, const std::function<void(std::uint64_t)>& ready) {
    const auto& pages = store_->slabs_.pages();
    std::uint64_t step = 0;
    for (std::uint32_t p = 0; p < pages.size(); ++p) {
      if (pages[p].kind == kNoPage) continue;
      ready(++step);
      check.check_chunks(p, 0, pages[p].used);
    }
    store_->bytes_ = check.check_lists(head_, tail_, count_);
    ready(++step);  // The index's table.
    check_index_blocks(check, [&] { ready(++step); });
  }

  // The index, block by block, once the lists are checked; `next()` returns once the next block is
  // in place.
  void check_index_blocks(ArenaCheck& check, const std::function<void()>& next) {
    const HashIndex& index = store_->index_;
    const std::uint64_t slot_count = index.slot_count();
    for (std::uint64_t from = 0; from < slot_count; from += kIndexBlockSlots) {
      next();
      check.check_index(index, from, std::min(slot_count, from + kIndexBlockSlots));
    }
    check.finish_index(index, count_);
  }

  // A mapped arena's chunk headers, read where they lie: the pages holding the first half of the
  // chunks on a thread of its own, the rest on this one (the first fault each page in, and they
  // take most of the checks' time). Each keeps its own highest stamp; the lower pages' error wins,
  // as when one thread checked them in order.
  void check_chunks_on_two_threads(ArenaCheck& check) {
    const auto& pages = store_->slabs_.pages();
    std::uint64_t chunks = 0;
    for (const Slabs::Page& page : pages)
      chunks += page.kind != kNoPage ? page.used : 0;
    std::uint32_t middle = 0;
    for (std::uint64_t seen = 0; middle < pages.size() && seen < chunks / 2; ++middle)
      seen += pages[middle].kind != kNoPage ? pages[middle].used : 0;
    auto check_pages = [&](std::uint32_t from, std::uint32_t to, std::uint64_t& stamp) {
      for (std::uint32_t p = from; p < to; ++p) {
        if (pages[p].kind != kNoPage) check.check_chunks(p, 0, pages[p].used, stamp);
      }
    };
    std::uint64_t low_stamp = 0;
    std::uint64_t high_stamp = 0;
    std::exception_ptr low_error;
    std::thread low;
    try {
      low = std::thread([&] {
        try {
          check_pages(0, middle, low_stamp);
        } catch (...) {
          low_error = std::current_exception();
        }
      });
    } catch (const std::system_error&) {
      check_pages(0, middle, low_stamp);  // No thread to be had: both halves here.
    }
    std::exception_ptr high_error;
    try {
      check_pages(middle, static_cast<std::uint32_t>(pages.size()), high_stamp);
    } catch (...) {
      high_error = std::current_exception();
    }
    if (low.joinable()) low.join();
    if (low_error) std::rethrow_exception(low_error);
    if (high_error) std::rethrow_exception(high_error);
    check.note_stamp(low_stamp);
    check.note_stamp(high_stamp);
  }

  // Copies `n` bytes of the archive into the new arena at `to`, through its memfd
  // (Arena::write): the pages are new, and that fills them about twice as fast as a copy through
  // the mapping (docs/benchmarks.md). A section through a memfd is read where it lies; a streamed
  // one through a buffer that stays in the CPU's cache. Stops, throwing what the checks found,
  // as soon as they have failed.
  void copy_into_arena(std::byte* to, std::uint64_t n, Checker& checker) {
    for (std::uint64_t done = 0; done < n;) {
      if (checker.failed()) checker.finish();  // Throws what the checks found.
      const auto piece = static_cast<std::size_t>(std::min(kCopyPiece, n - done));
      const auto bytes = ar_.view(piece, scratch_);
      store_->arena_.write(to + done, bytes.data(), piece);
      done += piece;
    }
  }

  // The pages' bytes, each page handed to the checks once it is in place.
  void copy_pages(Checker& checker) {
    const std::uint64_t t0 = monotonic_ns();
    for (const Slabs::Page& page : store_->slabs_.pages()) {
      if (page.kind == kNoPage) continue;
      copy_into_arena(page.memory.data(), page.used * page.chunk, checker);
      checker.reached(++steps_);
    }
    copy_ns_ += monotonic_ns() - t0;
  }

  // The index's size, and its table: claimed in the mapped arena (the last of its blocks to be
  // given a use), or mapped anew for the copy.
  void read_index() {
    std::uint64_t slot_count = 0;
    ar_(slot_count);
    if (slot_count < kMinSlots || slot_count > kMaxSlots || !std::has_single_bit(slot_count)) {
      throw ArchiveError("corrupt: the index's size");
    }
    // The index always keeps a quarter of its slots empty, so that every probe ends.
    if (count_ > slot_count / 4 * 3) throw ArchiveError("corrupt: the index is too small for the entry count");
    Block table;
    if (mapped_ != nullptr) {
      std::uint64_t offset = 0;
      ar_(offset);
      table = claim(offset, slot_count * sizeof(Slot));
      if (claimed_.size() != store_->arena_.blocks().size()) {
        throw ArchiveError("corrupt: the arena holds blocks that no page uses");
      }
    } else {
      ar_.check_count(slot_count, sizeof(Slot));
      table = map_block(store_->arena_, slot_count * sizeof(Slot), Populate::kNo);
    }
    store_->index_.adopt(table, slot_count);
  }

  // The index's slots, block by block, each handed to the checks once it is in place.
  void copy_index(Checker& checker) {
    const HashIndex& index = store_->index_;
    const std::uint64_t t0 = monotonic_ns();
    const std::uint64_t slot_count = index.slot_count();
    for (std::uint64_t from = 0; from < slot_count; from += kIndexBlockSlots) {
      const std::uint64_t slots = std::min(kIndexBlockSlots, slot_count - from);
      copy_into_arena(index.block().data() + from * sizeof(Slot), slots * sizeof(Slot), checker);
      checker.reached(++steps_);
    }
    copy_ns_ += monotonic_ns() - t0;
  }

  hotrestart::InputArchive& ar_;
  const std::uint64_t max_bytes_;
  hotrestart::Arena* const mapped_;
  std::uint64_t count_ = 0;
  std::uint32_t head_ = kNil;
  std::uint32_t tail_ = kNil;
  std::vector<std::uint32_t> classes_;
  std::vector<std::uint32_t> free_heads_;
  std::vector<Record> records_;
  std::unique_ptr<Store<Schema>> store_;
  std::unordered_set<std::uint64_t> claimed_;  // The blocks of a mapped arena already given a use.
  std::uint64_t copy_ns_ = 0;
  std::uint64_t check_ns_ = 0;
  std::uint64_t steps_ = 0;  // The parts in place so far (Checker::reached).
  std::vector<std::byte> scratch_ = std::vector<std::byte>(kCopyPiece);
};

namespace {

// Copies every entry of `from` into a new store with this build's size classes, least recently
// used first, so that the order is kept and an importer with a smaller budget keeps the most
// recently used. For an arena of another schema or of another class table.
template <int To, int From>
std::unique_ptr<Store<To>> convert(const Store<From>& from, std::uint64_t max_bytes) {
  auto to = std::make_unique<Store<To>>(max_bytes, default_classes());
  to->reserve(std::min<std::uint64_t>(from.count(), max_bytes / kMinChunk + 1));
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

// One field of an entry: where it lies in the archive's bytes (a section through a memfd), or, read
// as it arrives (a streamed one), in `buffer`.
std::string_view read_field(hotrestart::InputArchive& ar, std::string& buffer) {
  if (ar.streaming()) {
    ar(buffer);
    return buffer;
  }
  std::uint64_t n = 0;
  ar(n);
  ar.check_count(n);
  const auto bytes = ar.view(static_cast<std::size_t>(n), {});
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
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
    std::string_view key;
    std::string_view value;
    std::string_view type;
    std::uint64_t stamp = 0;
    std::uint32_t hash = 0;
    std::string key_buffer;  // A streamed section's bytes.
    std::string value_buffer;
    std::string type_buffer;
  };
  std::array<Entry, kBatch> batch;
  for (std::uint64_t done = 0; done < count;) {
    const std::uint64_t n = std::min<std::uint64_t>(kBatch, count - done);
    for (std::uint64_t i = 0; i < n; ++i) {
      Entry& e = batch[i];
      e.key = read_field(ar, e.key_buffer);
      e.value = read_field(ar, e.value_buffer);
      e.type = version >= 2 ? read_field(ar, e.type_buffer) : std::string_view{};
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

// An arena in this cache's own schema: taken as it is if it has this build's size classes (and, if
// mapped, enough address space), else copied entry by entry.
template <int Schema>
std::unique_ptr<Store<Schema>> load_own_arena(hotrestart::InputArchive& ar, std::uint64_t max_bytes,
                                              hotrestart::Arena* mapped, LoadReport& report) {
  const std::string how = mapped != nullptr ? "mapped arena" : "arena";
  ArenaReader<Schema> reader(ar, max_bytes, mapped);
  auto loaded = reader.read();
  report.copy_micros = reader.copy_ns() / 1000;
  report.check_micros = reader.check_ns() / 1000;
  if (mapped != nullptr && loaded->arena_reserve_bytes() < arena_reserve(max_bytes)) {
    // Another budget's arena (a larger --max-memory, say) could run out of address space here.
    report.layout = how + " with a smaller reserve, copied entry by entry";
  } else if (loaded->has_default_classes()) {
    report.layout = how;
    loaded->fit_budget();
    return loaded;
  } else {
    report.layout = how + " of other size classes, copied entry by entry";
  }
  const std::uint64_t t = monotonic_ns();
  auto converted = convert<Schema>(*loaded, max_bytes);
  report.convert_micros = (monotonic_ns() - t) / 1000;
  return converted;
}

// A v1 binary's arena, read by schema 2: loaded and checked as it is (no budget: the conversion
// applies this cache's), then copied entry by entry.
template <int Schema>
std::unique_ptr<Store<Schema>> load_schema1_arena(hotrestart::InputArchive& ar, std::uint64_t max_bytes,
                                                  hotrestart::Arena* mapped, LoadReport& report) {
  ArenaReader<1> reader(ar, std::numeric_limits<std::uint64_t>::max(), mapped);
  const auto v1 = reader.read();
  report.layout = std::string(mapped != nullptr ? "mapped arena" : "arena") + " of schema 1, copied entry by entry";
  report.copy_micros = reader.copy_ns() / 1000;
  report.check_micros = reader.check_ns() / 1000;
  const std::uint64_t t = monotonic_ns();
  auto converted = convert<Schema>(*v1, max_bytes);
  report.convert_micros = (monotonic_ns() - t) / 1000;
  return converted;
}

}  // namespace

template <int Schema>
void save_snapshot(const Store<Schema>& store, std::uint32_t version, std::ostream& out) {
  if (version == static_cast<std::uint32_t>(Schema)) {
    hotrestart::OutputArchive ar(out);
    save_arena(store, ar);
  } else {
    save_entries(store, out, version);
  }
}

template <int Schema>
hotrestart::Arena::Snapshot save_mapped_snapshot(Store<Schema>& store, std::ostream& out) {
  hotrestart::OutputArchive ar(out);
  save_layout(store, ar, Offsets::kYes);
  ar(store.index().slot_count(), store.arena().offset_of(store.index().block().data()));
  return store.arena().snapshot();
}

template <int Schema>
std::unique_ptr<Store<Schema>> load_snapshot(std::uint32_t version, std::istream& in, std::uint64_t max_bytes,
                                             hotrestart::Arena* mapped, LoadReport& report) {
  hotrestart::InputArchive ar(in);
  std::uint64_t first = 0;
  ar(first);
  std::unique_ptr<Store<Schema>> staging;
  if (first != kArenaMagic) {
    if (mapped != nullptr) throw ArchiveError("corrupt: a mapped arena's header does not start with its magic");
    report.layout = "entries";
    staging = load_entries<Schema>(ar, first, version, max_bytes);
  } else if (version == static_cast<std::uint32_t>(Schema)) {
    staging = load_own_arena<Schema>(ar, max_bytes, mapped, report);
  } else if constexpr (Schema >= 2) {
    staging = load_schema1_arena<Schema>(ar, max_bytes, mapped, report);
  }
  if (!staging) throw ArchiveError("an arena of another schema");
  if (!ar.at_end()) throw ArchiveError("corrupt: bytes left after the last entry");
  return staging;
}

template void save_snapshot(const Store<1>&, std::uint32_t, std::ostream&);
template void save_snapshot(const Store<2>&, std::uint32_t, std::ostream&);
template hotrestart::Arena::Snapshot save_mapped_snapshot(Store<1>&, std::ostream&);
template hotrestart::Arena::Snapshot save_mapped_snapshot(Store<2>&, std::ostream&);
template std::unique_ptr<Store<1>> load_snapshot(std::uint32_t, std::istream&, std::uint64_t, hotrestart::Arena*,
                                                 LoadReport&);
template std::unique_ptr<Store<2>> load_snapshot(std::uint32_t, std::istream&, std::uint64_t, hotrestart::Arena*,
                                                 LoadReport&);

}  // namespace kv::detail
