// kv-cache's hash index (see hash_index.h): growing the table, placing a slot and removing one.
#include "hash_index.h"

#include <cstring>
#include <stdexcept>

namespace kv::detail {

namespace {

bool empty_slot(const Slot& slot) {
  return slot.id == kNil;
}

}  // namespace

void HashIndex::reserve(std::uint64_t n) {
  std::uint64_t want = kMinSlots;
  while (want * 3 / 4 < n && want < kMaxSlots)
    want *= 2;
  if (want > slot_count_) rehash(want);
}

void HashIndex::rehash(std::uint64_t slot_count) {
  if (slot_count > kMaxSlots) throw std::length_error("kv-cache: the index cannot grow further");
  Block fresh = map_block(arena_, slot_count * sizeof(Slot), Populate::kYes);
  std::memset(fresh.data(), 0xFF, slot_count * sizeof(Slot));  // Every id kNil: empty.
  Slot* to = reinterpret_cast<Slot*>(fresh.data());
  const std::uint64_t mask = slot_count - 1;
  const Slot* from = slots();
  for (std::uint64_t i = 0; i < slot_count_; ++i) {
    if (from[i].id != kNil) to[probe(to, mask, from[i].hash, empty_slot)] = from[i];
  }
  unmap_block(arena_, block_);
  block_ = fresh;
  slot_count_ = slot_count;
}

void HashIndex::place(std::uint32_t id, std::uint32_t hash) {
  Slot* table = slots();
  table[probe(table, slot_count_ - 1, hash, empty_slot)] = {id, hash};
}

// Backward-shift deletion: later slots of the same probe run move up, so that no lookup ever
// stops early at the hole.
void HashIndex::remove(std::uint32_t id, std::uint32_t hash) {
  Slot* table = slots();
  const std::uint64_t mask = slot_count_ - 1;
  std::uint64_t hole = probe(table, mask, hash, [id](const Slot& slot) { return slot.id == id; });
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

}  // namespace kv::detail
