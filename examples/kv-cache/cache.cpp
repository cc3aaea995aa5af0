// kv-cache's cache: the lock around a store, the stamps that order writes across generations, the
// tombstones that keep an erase from being undone by an older write, and the deltas that carry
// each write to the next generation. Snapshots are written and read in snapshot.cpp.
//
// Delta (one change, published while a transfer is under way):
//   op: u8 (1 = put, 2 = erase), key: string, then for a put value: string and, in version 2,
//   content_type: string; then stamp: u64.
#include "cache.h"

#include <time.h>

#include <hotrestart/archive.h>

#include <algorithm>
#include <array>
#include <limits>
#include <span>
#include <sstream>
#include <stdexcept>
#include <utility>

#include "snapshot.h"
#include "store.h"

namespace kv {

std::uint64_t monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000U + static_cast<std::uint64_t>(ts.tv_nsec);
}

namespace {

using detail::hash_of;
using detail::kNil;
using detail::Store;

constexpr std::uint8_t kOpPut = 1;
constexpr std::uint8_t kOpErase = 2;

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
  const auto& classes = detail::default_classes();
  auto it = std::lower_bound(classes.begin(), classes.end(), need);
  return it == classes.end() ? detail::dedicated_bytes(need) : *it;
}

template <int Schema>
Cache<Schema>::Cache(std::uint64_t max_bytes)
    : max_bytes_(max_bytes), store_(std::make_unique<Store<Schema>>(max_bytes, detail::default_classes())) {}

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
    store_->reserve(std::min(detail::saturating_add(store_->count(), n), max_bytes_ / detail::kMinChunk + 1));
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
  detail::save_snapshot(*store_, version, out);
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
  return detail::save_mapped_snapshot(*store_, out);
}

template <int Schema>
void Cache<Schema>::freeze(const hotrestart::SnapshotFork& fork) {
  std::lock_guard lock(mutex_);
  fork({&store_->arena()});
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
  std::unique_ptr<Store<Schema>> staging = detail::load_snapshot<Schema>(version, in, max_bytes_, mapped, report);
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
