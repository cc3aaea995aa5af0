// kv-cache's store: the entries, their LRU order and their index, without a lock (the Cache guards
// it, and a load fills a staging one). An entry is a chunk of the slabs (slabs.h), linked into the
// LRU list through its header and found through the hash index (hash_index.h); this file keeps
// the three in step and within the budget. Snapshots of a store are written and read in
// snapshot.cpp, and a loaded one is checked by arena_checks.h.
#pragma once

#include <hotrestart/arena.h>

#include <algorithm>
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "cache.h"
#include "hash_index.h"
#include "slabs.h"

namespace kv::detail {

template <int Schema>
class ArenaReader;

// Whether a new store starts with an empty index, or with none for a snapshot's to be read into
// (so that a snapshot that fails before its index maps nothing for it).
enum class StartIndex { kEmpty, kNone };

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

  // An empty store in `arena`, or in an arena of its own.
  Store(std::uint64_t max_bytes, const std::vector<std::uint32_t>& classes, StartIndex start = StartIndex::kEmpty,
        hotrestart::Arena arena = {})
      : arena_(arena ? std::move(arena) : hotrestart::Arena(arena_reserve(max_bytes))),
        max_bytes_(max_bytes),
        slabs_(arena_, max_bytes, classes),
        index_(arena_) {
    if (start == StartIndex::kEmpty) index_.rehash(kMinSlots);
  }
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  static std::uint64_t need_bytes(std::size_t key, std::size_t value, std::size_t type) {
    return kChunkHeaderBytes + key + value + (Schema >= 2 ? type : 0);
  }

  View view(std::uint32_t id) const {
    const Chunk* c = slabs_.chunk(id);
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
    return index_.find(key, hash, [this](std::uint32_t id) { return slabs_.key_of(id); });
  }
  void prefetch(std::uint32_t hash) const { index_.prefetch(hash); }
  // Makes room for `n` entries in the index.
  void reserve(std::uint64_t n) { index_.reserve(n); }

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
    const std::uint32_t kind = slabs_.kind_for(need);
    const std::uint64_t cost = slabs_.chunk_bytes(kind, need);
    if (cost > max_bytes_) {
      if (id != kNil) remove(id);
      while (tail_ != kNil)
        evict_tail();
      ++evictions_;
      return;
    }
    if (id != kNil) {
      if (kind != kDedicatedPage && slabs_.page_of(id).kind == kind) return rewrite(id, key, value, type, stamp);
      remove(id);
    }
    index_.grow_for(count_);
    id = allocate(kind, need);
    write(id, key, value, type, stamp);
    index_.place(id, hash);
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
    index_.remove(id, hash_of(slabs_.key_of(id)));
    unlink(id);
    bytes_ -= slabs_.page_of(id).chunk;
    --count_;
    slabs_.release(id);
  }

  // Evicts least recently used entries until the charged bytes fit max_bytes and the pages fit
  // theirs.
  void fit_budget() {
    while ((bytes_ > max_bytes_ || slabs_.over_budget()) && tail_ != kNil)
      evict_tail();
  }

  std::uint32_t head() const { return head_; }
  std::uint32_t tail() const { return tail_; }
  std::uint64_t count() const { return count_; }
  std::uint64_t bytes() const { return bytes_; }
  std::uint64_t evictions() const { return evictions_; }
  std::uint64_t page_bytes() const { return slabs_.page_bytes(); }
  std::uint64_t index_bytes() const { return index_.block().size(); }
  std::uint64_t max_stamp() const { return max_stamp_; }
  void note_stamp(std::uint64_t stamp) { max_stamp_ = std::max(max_stamp_, stamp); }
  bool has_default_classes() const { return slabs_.has_default_classes(); }
  const Slabs& slabs() const { return slabs_; }
  const HashIndex& index() const { return index_; }

  hotrestart::Arena& arena() { return arena_; }
  const hotrestart::Arena& arena() const { return arena_; }
  bool reclaim() { return arena_.reclaim(); }
  std::uint64_t arena_reserve_bytes() const { return arena_.reserve(); }
  bool arena_shared() const { return arena_.shared(); }

 private:
  friend class ArenaReader<Schema>;

  // Same class: rewritten in place; the bytes past the new contents are cleared, so that a
  // snapshot carries nothing of the old value.
  void rewrite(std::uint32_t id, std::string_view key, std::string_view value, std::string_view type,
               std::uint64_t stamp) {
    Chunk* c = slabs_.chunk(id);
    const std::uint64_t old_length = std::uint64_t{c->key_len} + c->value_len + c->type_len;
    write(id, key, value, type, stamp);
    const std::uint64_t length = key.size() + value.size() + type.size();
    if (old_length > length) zero_bytes(Slabs::payload(c) + length, old_length - length);
    touch(id);
    fit_budget();
  }

  void write(std::uint32_t id, std::string_view key, std::string_view value, std::string_view type,
             std::uint64_t stamp) {
    Chunk* c = slabs_.chunk(id);
    c->stamp = stamp;
    c->key_len = static_cast<std::uint16_t>(key.size());
    c->value_len = static_cast<std::uint32_t>(value.size());
    c->type_len = static_cast<std::uint16_t>(type.size());
    std::byte* p = Slabs::payload(c);
    copy_bytes(p, key.data(), key.size());
    copy_bytes(p + key.size(), value.data(), value.size());
    copy_bytes(p + key.size() + value.size(), type.data(), type.size());
  }

  // A chunk for `need` bytes of kind `kind`; when the pages have reached their budget, least
  // recently used entries are evicted until one is free (or nothing is left to evict).
  std::uint32_t allocate(std::uint32_t kind, std::uint64_t need) {
    for (;;) {
      const std::uint32_t id = slabs_.allocate(kind, need, tail_ == kNil ? Room::kAny : Room::kWithinBudget);
      if (id != kNil) return id;
      evict_tail();
    }
  }

  void evict_tail() {
    remove(tail_);
    ++evictions_;
  }

  void link_front(std::uint32_t id) {
    Chunk* c = slabs_.chunk(id);
    c->prev = kNil;
    c->next = head_;
    if (head_ != kNil) slabs_.chunk(head_)->prev = id;
    head_ = id;
    if (tail_ == kNil) tail_ = id;
  }
  void unlink(std::uint32_t id) {
    Chunk* c = slabs_.chunk(id);
    (c->prev != kNil ? slabs_.chunk(c->prev)->next : head_) = c->next;
    (c->next != kNil ? slabs_.chunk(c->next)->prev : tail_) = c->prev;
    c->prev = c->next = kNil;
  }

  // Declared first, so that it outlives everything pointing into it.
  hotrestart::Arena arena_;
  const std::uint64_t max_bytes_;
  Slabs slabs_;
  HashIndex index_;
  std::uint32_t head_ = kNil;  // Most recently used.
  std::uint32_t tail_ = kNil;  // Least recently used.
  std::uint64_t count_ = 0;
  std::uint64_t bytes_ = 0;  // Charged: the chunks of the entries.
  std::uint64_t evictions_ = 0;
  std::uint64_t max_stamp_ = 0;
};

}  // namespace kv::detail
