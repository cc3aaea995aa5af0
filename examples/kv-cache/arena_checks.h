// The checks of an arena that kv-cache loaded from a snapshot or took over as it is, before anything
// of it is swapped in: every chunk id in range, every length within its chunk, the LRU list visiting
// exactly `count` entries from head to tail without a cycle, the free lists holding exactly the
// other chunks handed out, the index holding each entry exactly once and each where a lookup finds
// it. The index's hashes are recomputed from the keys for a sample only (the first 16 entries and
// one slot in kHashSample): all of them would cost a cache miss per entry, and a wrong hash can only
// hide an entry from lookups (the section's checksum already guards the bytes; the sample catches a
// hash function that changed between builds).
//
// The checks run beside the copies (snapshot.cpp), on a thread of their own: each page's chunk
// headers as soon as the page is in place, each block of the index likewise. What needs the whole
// (the LRU list and the free lists: no cycle, every chunk exactly once) walks a compact copy of the
// links rather than the pages. One ArenaCheck is used by one thread at a time. check_lists writes
// the pages' live counts and the classes' current pages into the Slabs (Slabs::restore_live,
// finish_restore) while the loading thread may still read the pages' memory, kinds and sizes and
// allocate the index: different fields, which is what lets the two run at once. Each check throws
// hotrestart::ArchiveError on anything inconsistent.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "hash_index.h"
#include "slabs.h"

namespace kv::detail {

// The first 16 entries of the index and one slot in kHashSample have their hash recomputed from
// their key when an arena is loaded: a hash function that changed between builds shows at once,
// without a cache miss for every entry.
inline constexpr std::uint64_t kHashSample = 1024;

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

// Whether a chunk may hold a content type: only in schema 2.
enum class ContentTypes { kNone, kAllowed };

// The checks of one loaded arena, run in this order: check_chunks over every page (each part just
// after it is in place), check_lists, check_index over every slot (likewise), finish_index.
class ArenaCheck {
 public:
  // Numbers every chunk the pages of `slabs` hand out, page after page, for the marks and the
  // links below; `slabs` holds every page of the arena by now (Slabs::restore_page).
  ArenaCheck(Slabs& slabs, ContentTypes types);

  // Chunks [from, to) of page p, just copied: their lengths fit their chunks and their links name
  // chunks; the links are kept for check_lists, in chunk-number order.
  void check_chunks(std::uint32_t p, std::uint32_t from, std::uint32_t to) { check_chunks(p, from, to, max_stamp_); }
  // The same, with the highest stamp kept in `max_stamp` rather than here: two threads may check
  // the chunks of different pages at once this way, each with its own, and then note_stamp() each.
  void check_chunks(std::uint32_t p, std::uint32_t from, std::uint32_t to, std::uint64_t& max_stamp);
  void note_stamp(std::uint64_t stamp) { max_stamp_ = std::max(max_stamp_, stamp); }
  // The LRU list visits exactly `count` entries, from `head` to `tail`, without a cycle and with
  // links that agree both ways; each free list holds chunks of its class only, likewise; and every
  // chunk handed out is on exactly one of them. Derives what is not sent: the live chunks per page
  // and the page each class hands chunks out from (Slabs::finish_restore). Returns the charged
  // bytes.
  std::uint64_t check_lists(std::uint32_t head, std::uint32_t tail, std::uint64_t count);
  // Slots [from, to) of `index`, just copied, in order: every entry exactly once (its mark from
  // check_lists is cleared when found), and every slot within the probe run that starts at its
  // hash, where a lookup finds it. The slots before the first empty one belong to a run that wraps
  // around from the end, so finish_index checks them last, and that all `count` entries were found.
  void check_index(const HashIndex& index, std::uint64_t from, std::uint64_t to);
  void finish_index(const HashIndex& index, std::uint64_t count);

  // The highest stamp of any chunk checked (a free chunk's stamp is 0).
  std::uint64_t max_stamp() const { return max_stamp_; }

 private:
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
  void check_free_lists(std::vector<std::uint32_t>& free_in_page, const Bits& live);
  void check_slot_run(std::uint64_t j, const Slot& slot, std::uint64_t mask) const;

  Slabs& slabs_;
  const ContentTypes types_;
  std::vector<Numbering> numbering_;
  std::uint64_t total_ = 0;  // Chunks handed out.
  std::unique_ptr<Link[]> links_;
  // The entries not yet found in the index.
  Bits live_{0};
  std::uint64_t max_stamp_ = 0;
  // The index's walk: its first empty slot (UINT64_MAX while none is known), where the probe run
  // being walked began, and the entries found so far.
  std::uint64_t first_empty_ = UINT64_MAX;
  std::uint64_t run_start_ = 0;
  std::uint64_t indexed_ = 0;
};

}  // namespace kv::detail
