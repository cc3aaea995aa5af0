// kv-cache's hash index: an open-addressing table of {chunk id, hash} slots, in one block of the
// store's arena (XXH3 of the key, linear probing, backward-shift deletion). Every walk from a hash's
// home slot to the slot it stops at goes through probe(). Linear probing is also what remove()'s
// backward shift, prefetch() and the checks of a loaded index (arena_checks.cpp) assume, and the
// index travels in snapshots as it is (snapshot.cpp): another probe scheme is another snapshot
// format. The index keeps at least a quarter of its slots empty, so that every probe ends.
#pragma once

#include <xxhash.h>

#include <hotrestart/arena.h>

#include <cstdint>
#include <string_view>

#include "slabs.h"

namespace kv::detail {

// The hash an index slot keeps of its key: the low 32 bits of XXH3-64, whose values are specified
// and stable across builds, so that the index travels in snapshots as it is.
inline std::uint32_t hash_of(std::string_view key) {
  return static_cast<std::uint32_t>(XXH3_64bits(key.data(), key.size()));
}

// One slot of the hash index.
struct Slot {
  std::uint32_t id;  // kNil: empty.
  std::uint32_t hash;
};
static_assert(sizeof(Slot) == 8);

inline constexpr std::uint64_t kMinSlots = 16;
inline constexpr std::uint64_t kMaxSlots = std::uint64_t{1} << 32;

// The slot a probe for `hash` stops at: the first one from the hash's home slot on (wrapping around)
// for which `stop` returns true. `mask` is the table's slot count less one.
template <typename Stop>
std::uint64_t probe(const Slot* table, std::uint64_t mask, std::uint32_t hash, Stop stop) {
  std::uint64_t s = hash & mask;
  while (!stop(table[s]))
    s = (s + 1) & mask;
  return s;
}

class HashIndex {
 public:
  // No table yet (rehash() or adopt() makes one); its blocks are `arena`'s, which must outlive it.
  explicit HashIndex(hotrestart::Arena& arena) : arena_(arena) {}
  HashIndex(const HashIndex&) = delete;
  HashIndex& operator=(const HashIndex&) = delete;

  // The chunk `key` (whose hash is `hash`) is in, or kNil; `key_of` gives a chunk's key.
  template <typename KeyOf>
  std::uint32_t find(std::string_view key, std::uint32_t hash, const KeyOf& key_of) const {
    const Slot* table = slots();
    return table[probe(table, slot_count_ - 1, hash,
                       [&](const Slot& slot) {
                         return slot.id == kNil || (slot.hash == hash && key_of(slot.id) == key);
                       })]
        .id;
  }

  // Brings the index slot where a lookup of `hash` starts into the cache: a batch of lookups
  // prefetched first waits for memory once rather than once per key.
  void prefetch(std::uint32_t hash) const { __builtin_prefetch(slots() + (hash & (slot_count_ - 1))); }

  // Makes room for `n` entries.
  void reserve(std::uint64_t n);
  // Makes room for one more entry than `count`.
  void grow_for(std::uint64_t count) {
    if ((count + 1) * 4 > slot_count_ * 3) rehash(slot_count_ * 2);
  }
  // Moves every slot into a new table of `slot_count` slots (a power of two).
  void rehash(std::uint64_t slot_count);
  void place(std::uint32_t id, std::uint32_t hash);
  void remove(std::uint32_t id, std::uint32_t hash);

  // A table loaded from a snapshot, or mapped as it is (snapshot.cpp), checked by arena_checks.h.
  void adopt(Block block, std::uint64_t slot_count) {
    block_ = block;
    slot_count_ = slot_count;
  }

  Slot* slots() { return reinterpret_cast<Slot*>(block_.data()); }
  const Slot* slots() const { return reinterpret_cast<const Slot*>(block_.data()); }
  const Block& block() const { return block_; }
  std::uint64_t slot_count() const { return slot_count_; }

 private:
  hotrestart::Arena& arena_;
  Block block_;
  std::uint64_t slot_count_ = 0;
};

}  // namespace kv::detail
