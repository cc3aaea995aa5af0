#include "cache.h"

#include <time.h>

#include <hotrestart/archive.h>

#include <algorithm>
#include <bit>
#include <cstddef>
#include <span>
#include <sstream>
#include <stdexcept>
#include <type_traits>
#include <utility>

namespace kv {

std::uint64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000U + static_cast<std::uint64_t>(ts.tv_nsec);
}

namespace {

constexpr std::uint32_t kNil = UINT32_MAX;
constexpr std::uint8_t kOpPut = 1;
constexpr std::uint8_t kOpErase = 2;

template <int Schema>
struct EntryExtra {};  // Schema 1: no content type.
template <>
struct EntryExtra<2> {
  std::string content_type;
};

std::uint32_t tag_of(std::string_view key) {
  const std::uint64_t h = std::hash<std::string_view>{}(key);
  return static_cast<std::uint32_t>(h ^ (h >> 32));
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

}  // namespace

// The entries and their order, without a lock: the Cache guards it, and load() fills a staging one.
//
// Entries live in fixed-size chunks (no reallocation moves when the store grows, no node per
// entry), linked into an LRU list by 32-bit indices, and are found through an open-addressing
// hash index of {entry, tag} slots with linear probing and backward-shift deletion.
template <int Schema>
class Store {
 public:
  struct Entry : EntryExtra<Schema> {
    std::string key;
    std::string value;
    std::uint64_t stamp = 0;
    std::uint32_t prev = kNil;
    std::uint32_t next = kNil;
    std::uint32_t tag = 0;
  };

  explicit Store(std::uint64_t max_bytes) : max_bytes_(max_bytes) {}

  Entry& at(std::uint32_t i) { return chunks_[i >> kChunkShift][i & kChunkMask]; }
  const Entry& at(std::uint32_t i) const { return chunks_[i >> kChunkShift][i & kChunkMask]; }

  std::uint32_t find(std::string_view key) const { return find(key, tag_of(key)); }
  std::uint32_t find(std::string_view key, std::uint32_t tag) const {
    if (slots_.empty()) return kNil;
    const std::size_t mask = slots_.size() - 1;
    for (std::size_t s = tag & mask;; s = (s + 1) & mask) {
      const Slot& slot = slots_[s];
      if (slot.index == kNil) return kNil;
      if (slot.tag == tag && at(slot.index).key == key) return slot.index;
    }
  }

  // Makes room for `n` entries in the index.
  void reserve(std::uint64_t n) {
    std::size_t want = 16;
    while (want * 3 / 4 < n)
      want *= 2;
    if (want > slots_.size()) rehash(want);
  }

  // Adds an absent key as the most recently used entry; the caller then sets the value and calls
  // charge().
  std::uint32_t insert(std::string key) {
    const std::uint32_t tag = tag_of(key);
    if ((count_ + 1) * 4 > slots_.size() * 3) rehash(std::max<std::size_t>(16, slots_.size() * 2));
    const std::uint32_t i = allocate();
    Entry& e = at(i);
    e.key = std::move(key);
    e.tag = tag;
    const std::size_t mask = slots_.size() - 1;
    std::size_t s = tag & mask;
    while (slots_[s].index != kNil)
      s = (s + 1) & mask;
    slots_[s] = {i, tag};
    ++count_;
    link_front(i);
    bytes_ += cost(e);
    return i;
  }

  // Around a change of an entry's value or content type, so that the charge follows.
  void uncharge(std::uint32_t i) { bytes_ -= cost(at(i)); }
  void charge(std::uint32_t i) { bytes_ += cost(at(i)); }

  void touch(std::uint32_t i) {
    if (head_ == i) return;
    unlink(i);
    link_front(i);
  }

  void remove(std::uint32_t i) {
    Entry& e = at(i);
    remove_slot(i, e.tag);
    unlink(i);
    bytes_ -= cost(e);
    --count_;
    // Swapping with empty strings gives their memory back at once.
    std::string().swap(e.key);
    std::string().swap(e.value);
    if constexpr (Schema >= 2) std::string().swap(e.content_type);
    e.stamp = 0;
    e.next = free_;
    free_ = i;
  }

  // Evicts least recently used entries until the store fits its budget.
  void evict_to_budget() {
    while (bytes_ > max_bytes_ && tail_ != kNil) {
      remove(tail_);
      ++evictions_;
    }
  }

  std::uint32_t head() const { return head_; }
  std::uint32_t tail() const { return tail_; }
  std::uint64_t count() const { return count_; }
  std::uint64_t bytes() const { return bytes_; }
  std::uint64_t evictions() const { return evictions_; }
  std::uint64_t max_stamp() const { return max_stamp_; }
  void note_stamp(std::uint64_t stamp) { max_stamp_ = std::max(max_stamp_, stamp); }

 private:
  static constexpr std::uint32_t kChunkShift = 12;
  static constexpr std::uint32_t kChunkSize = 1U << kChunkShift;
  static constexpr std::uint32_t kChunkMask = kChunkSize - 1;
  struct Slot {
    std::uint32_t index = kNil;
    std::uint32_t tag = 0;
  };

  static std::uint64_t cost(const Entry& e) {
    std::uint64_t n = e.key.size() + e.value.size() + kEntryOverhead;
    if constexpr (Schema >= 2) n += e.content_type.size();
    return n;
  }

  std::uint32_t allocate() {
    if (free_ != kNil) {
      const std::uint32_t i = free_;
      free_ = at(i).next;
      return i;
    }
    if (used_ == chunks_.size() * kChunkSize) {
      if (used_ >= kNil - kChunkSize) throw std::length_error("kv-cache: too many entries");
      chunks_.push_back(std::make_unique<Entry[]>(kChunkSize));
    }
    return used_++;
  }

  void rehash(std::size_t size) {
    std::vector<Slot> old = std::exchange(slots_, std::vector<Slot>(size));
    const std::size_t mask = size - 1;
    for (const Slot& slot : old) {
      if (slot.index == kNil) continue;
      std::size_t s = slot.tag & mask;
      while (slots_[s].index != kNil)
        s = (s + 1) & mask;
      slots_[s] = slot;
    }
  }

  // Backward-shift deletion: later slots of the same probe run move up, so that no lookup ever
  // stops early at the hole.
  void remove_slot(std::uint32_t index, std::uint32_t tag) {
    const std::size_t mask = slots_.size() - 1;
    std::size_t hole = tag & mask;
    while (slots_[hole].index != index)
      hole = (hole + 1) & mask;
    for (std::size_t j = (hole + 1) & mask; slots_[j].index != kNil; j = (j + 1) & mask) {
      const std::size_t home = slots_[j].tag & mask;
      if (((j - home) & mask) >= ((j - hole) & mask)) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = Slot{};
  }

  void link_front(std::uint32_t i) {
    Entry& e = at(i);
    e.prev = kNil;
    e.next = head_;
    if (head_ != kNil) at(head_).prev = i;
    head_ = i;
    if (tail_ == kNil) tail_ = i;
  }

  void unlink(std::uint32_t i) {
    Entry& e = at(i);
    (e.prev != kNil ? at(e.prev).next : head_) = e.next;
    (e.next != kNil ? at(e.next).prev : tail_) = e.prev;
    e.prev = e.next = kNil;
  }

  const std::uint64_t max_bytes_;
  std::vector<std::unique_ptr<Entry[]>> chunks_;
  std::uint32_t used_ = 0;  // Entries ever allocated; those below that and not in use are on `free_`.
  std::uint32_t free_ = kNil;
  std::vector<Slot> slots_;
  std::uint32_t head_ = kNil;  // Most recently used.
  std::uint32_t tail_ = kNil;  // Least recently used.
  std::uint64_t count_ = 0;
  std::uint64_t bytes_ = 0;
  std::uint64_t evictions_ = 0;
  std::uint64_t max_stamp_ = 0;
};

// Sizes that kEntryOverhead stands for (see cache.h): keep it honest if the record grows.
static_assert(sizeof(Store<2>::Entry) + 2 * 8 <= kEntryOverhead);

// ---------------------------------------------------------------------------------------------

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
Cache<Schema>::Cache(std::uint64_t max_bytes)
    : max_bytes_(max_bytes), store_(std::make_unique<Store<Schema>>(max_bytes)) {}

template <int Schema>
Cache<Schema>::~Cache() = default;

template <int Schema>
std::optional<Found> Cache<Schema>::get(std::string_view key) {
  std::lock_guard lock(mutex_);
  const std::uint32_t i = store_->find(key);
  if (i == kNil) {
    ++misses_;
    return std::nullopt;
  }
  ++hits_;
  store_->touch(i);
  const auto& e = store_->at(i);
  Found found{e.value, {}, e.stamp};
  if constexpr (Schema >= 2) found.content_type = e.content_type;
  return found;
}

template <int Schema>
std::optional<Found> Cache<Schema>::peek(std::string_view key) const {
  std::lock_guard lock(mutex_);
  const std::uint32_t i = store_->find(key);
  if (i == kNil) return std::nullopt;
  const auto& e = store_->at(i);
  Found found{e.value, {}, e.stamp};
  if constexpr (Schema >= 2) found.content_type = e.content_type;
  return found;
}

template <int Schema>
bool Cache<Schema>::put(std::string_view key, std::string_view value, std::string_view content_type,
                        std::uint64_t stamp) {
  std::lock_guard lock(mutex_);
  return put_locked(key, value, content_type, stamp);
}

template <int Schema>
bool Cache<Schema>::erase(std::string_view key, std::uint64_t stamp) {
  std::lock_guard lock(mutex_);
  return erase_locked(key, stamp);
}

template <int Schema>
bool Cache<Schema>::put_locked(std::string_view key, std::string_view value,
                               [[maybe_unused]] std::string_view content_type, std::uint64_t stamp) {
  last_stamp_ = std::max(last_stamp_, stamp);
  if (!tombstones_.empty()) {
    if (auto t = tombstones_.find(std::string(key)); t != tombstones_.end()) {
      if (t->second >= stamp) return false;
      tombstone_bytes_ -= t->first.size() + kTombstoneOverhead;
      tombstones_.erase(t);
    }
  }
  std::uint32_t i = store_->find(key);
  if (i != kNil) {
    if (store_->at(i).stamp >= stamp) return false;
    store_->uncharge(i);
    store_->touch(i);
  } else {
    i = store_->insert(std::string(key));
    store_->uncharge(i);
  }
  auto& e = store_->at(i);
  e.value.assign(value);
  if constexpr (Schema >= 2) e.content_type.assign(content_type);
  e.stamp = stamp;
  store_->charge(i);
  store_->evict_to_budget();
  return true;
}

template <int Schema>
bool Cache<Schema>::erase_locked(std::string_view key, std::uint64_t stamp) {
  last_stamp_ = std::max(last_stamp_, stamp);
  bool removed = false;
  if (const std::uint32_t i = store_->find(key); i != kNil) {
    if (store_->at(i).stamp >= stamp) return false;  // The entry was written after this erase.
    store_->remove(i);
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
Stats Cache<Schema>::stats() const {
  std::lock_guard lock(mutex_);
  return {store_->count(), store_->bytes(), hits_, misses_, store_->evictions(), tombstones_.size(), deltas_};
}

template <int Schema>
std::vector<std::string> Cache<Schema>::keys_by_recency() const {
  std::lock_guard lock(mutex_);
  std::vector<std::string> keys;
  for (std::uint32_t i = store_->head(); i != kNil; i = store_->at(i).next)
    keys.push_back(store_->at(i).key);
  return keys;
}

template <int Schema>
void Cache<Schema>::save(std::uint32_t version, std::ostream& out) const {
  check_version(version, supports(version), Schema);
  std::lock_guard lock(mutex_);
  hotrestart::OutputArchive ar(out);
  ar(static_cast<std::uint64_t>(store_->count()));
  // Least recently used first: the importer puts each entry in front of the previous ones, which
  // rebuilds the order, and evicts the oldest if its budget is smaller.
  for (std::uint32_t i = store_->tail(); i != kNil; i = store_->at(i).prev) {
    const auto& e = store_->at(i);
    write_bytes(ar, e.key);
    write_bytes(ar, e.value);
    if (version >= 2) {
      if constexpr (Schema >= 2) write_bytes(ar, e.content_type);
    }
    ar(e.stamp);
  }
}

template <int Schema>
void Cache<Schema>::load(std::uint32_t version, std::istream& in) {
  check_version(version, supports(version), Schema);
  hotrestart::InputArchive ar(in);
  std::uint64_t count = 0;
  ar(count);
  // Every entry takes at least its two (or three) string lengths and its stamp.
  ar.check_count(count, version >= 2 ? 32 : 24);
  auto staging = std::make_unique<Store<Schema>>(max_bytes_);
  staging->reserve(std::min<std::uint64_t>(count, max_bytes_ / kEntryOverhead + 1));
  std::string key;
  std::string value;
  std::string content_type;
  for (std::uint64_t n = 0; n < count; ++n) {
    ar(key, value);
    if (version >= 2) ar(content_type);
    std::uint64_t stamp = 0;
    ar(stamp);
    if (staging->find(key) != kNil) throw hotrestart::ArchiveError("corrupt: a key appears twice in the snapshot");
    const std::uint32_t i = staging->insert(std::move(key));
    staging->uncharge(i);
    auto& e = staging->at(i);
    e.value = std::move(value);
    if constexpr (Schema >= 2) e.content_type = std::move(content_type);
    e.stamp = stamp;
    staging->charge(i);
    staging->note_stamp(stamp);
    staging->evict_to_budget();
    key.clear();
    value.clear();
    content_type.clear();
  }
  if (ar.remaining() != 0) throw hotrestart::ArchiveError("corrupt: bytes left after the last entry");
  std::unique_ptr<Store<Schema>> old;
  {
    std::lock_guard lock(mutex_);
    last_stamp_ = std::max(last_stamp_, staging->max_stamp());
    old = std::exchange(store_, std::move(staging));
  }
  // The previous contents are freed outside the lock.
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
