// kv-cache's cache: an LRU cache of byte strings bounded by memory, free of I/O, that carries itself
// to the next generation through the worker SDK (snapshots and deltas). The Cache holds the lock,
// the stamps, the tombstones and the deltas; its entries are in a Store (store.h).
//
// Schemas. The schema is a template parameter, so that one library holds both and one test binary
// can check v1 against v2; a server binary uses Cache<KV_SCHEMA>.
//   schema 1: an entry is {key, value, stamp}; the v1 binary reads and writes version 1 only.
//   schema 2: adds content_type; the v2 binary reads and writes versions 1 and 2 (writing 1 drops
//             the content types; reading 1 leaves them empty, served as application/octet-stream).
//
// Storage: an arena of slabs, as memcached keeps its items (slabs.h), and a hash index of the
// entries (hash_index.h). Pages and index are blocks of one hotrestart::Arena per store, and refer to
// each other by chunk id and offset, never by pointer. Nothing is allocated per entry, and the whole
// store is a few large blocks: in the same schema the next generation maps them as they are;
// otherwise a snapshot is a few large writes.
//
// Memory. An entry is charged its whole chunk (Cache::charge), and the least recently used entries
// are evicted while the charged bytes exceed max_bytes. The pages themselves may hold at most
// max_bytes plus one page per size class in use (as memcached gives every class its first page):
// when a class needs a page beyond that, least recently used entries are evicted until a chunk or a
// page frees up, so that a workload whose sizes shift cannot grow the process past its budget.
// The arena addresses at most 65,535 pages (128 GiB of 2 MiB pages); past that it evicts as if full.
// Limits: keys and content types of at most 65,535 bytes, values below 4 GiB (put throws
// std::length_error beyond them).
//
// Snapshot (a section's payload): the arena, mapped-arena and entries layouts are described in
// snapshot.cpp, beside the code that writes and reads them; an imported arena is checked as
// arena_checks.h describes before anything is swapped in.
// Delta (one change, published while a transfer is under way): described in cache.cpp, beside its
// codec (encode_put_delta, encode_erase_delta, apply_delta).
//
// Stamps. Every write carries the CLOCK_MONOTONIC time it was made at, in nanoseconds; that clock
// is system-wide, so the old and the new generation on one machine agree on it. A change replayed
// from the previous generation applies only if it is newer than what the cache holds for its key
// (last writer wins; an equal stamp is the same write seen twice). An erase leaves a tombstone
// {key, stamp} so that an older put arriving later cannot bring the key back; tombstones are kept
// only while the previous generation may still send changes (drop_tombstones() ends that).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <istream>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <hotrestart/worker.h>

namespace kv {

// The size of every page of size-classed chunks; an entry larger than the largest class (half a
// page) gets a page of its own, rounded up to 4 KiB.
inline constexpr std::uint64_t kPageBytes = std::uint64_t{2} << 20;
// Every chunk starts with a header this large; Cache::charge() gives an entry's whole cost.
inline constexpr std::uint64_t kChunkHeaderBytes = 24;
inline constexpr std::size_t kMaxKeyBytes = 65535;
inline constexpr std::size_t kMaxTypeBytes = 65535;
// The first 8 bytes of an arena snapshot ("kv-arena" in ASCII): larger than any count an entries
// snapshot could hold, so the two layouts cannot be confused.
inline constexpr std::uint64_t kArenaMagic = 0x616E'6572'612D'766BULL;
// Page kinds in an arena snapshot's page table, besides a size class's number.
inline constexpr std::uint32_t kDedicatedPage = 0xFFFF'FFFE;
inline constexpr std::uint32_t kNoPage = 0xFFFF'FFFF;
// Tombstones may use at most max_bytes / kTombstoneShare (key + kTombstoneOverhead each); past
// that an erase leaves none, and a late, older put from the previous generation could restore the
// key. They are not charged against max_bytes.
inline constexpr std::uint64_t kTombstoneShare = 16;
inline constexpr std::uint64_t kTombstoneOverhead = 64;
// What an entry without a content type is served as.
inline constexpr std::string_view kDefaultContentType = "application/octet-stream";

// Nanoseconds of CLOCK_MONOTONIC.
std::uint64_t monotonic_ns();

// Bytes of pages and index tables every cache of this process has mapped so far (a running total
// that never decreases), so that tests can show that a hostile snapshot maps no more than a small,
// fixed amount.
std::uint64_t arena_bytes_mapped_total();

inline std::string_view served_content_type(std::string_view stored) {
  return stored.empty() ? kDefaultContentType : stored;
}

// The entries `kv-cache --prefill N` fills in (for benchmarks): key-0000000000, key-0000000001, ...
// with values of a given size that a client can check byte for byte.
inline std::string prefill_key(std::uint64_t i) {
  std::string key = "key-0000000000";
  for (std::size_t pos = key.size(); i > 0 && pos > 4; i /= 10)
    key[--pos] = static_cast<char>('0' + i % 10);
  return key;
}
inline void prefill_value(std::uint64_t i, std::size_t bytes, std::string& out) {
  static constexpr std::string_view kAlphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_";
  out.resize(bytes);
  for (std::size_t j = 0; j < bytes; ++j)
    out[j] = kAlphabet[(i * 31 + j) % kAlphabet.size()];
}

struct Stats {
  std::uint64_t entries = 0;
  std::uint64_t bytes = 0;  // Charged bytes: the whole chunk of every entry (Cache::charge).
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t evictions = 0;
  std::uint64_t tombstones = 0;
  std::uint64_t deltas = 0;       // Changes replayed from the previous generation (applied or not).
  std::uint64_t page_bytes = 0;   // Memory mapped for pages (at most max_bytes + a page per class).
  std::uint64_t index_bytes = 0;  // Memory of the hash index.
};

struct Found {
  std::string value;
  std::string content_type;  // Empty in schema 1, or when none was given.
  std::uint64_t stamp = 0;
};

// How the last successful load() went, for logs and benchmarks.
struct LoadReport {
  std::string layout;                // "mapped arena", "arena", "entries", or how one was converted.
  std::uint64_t micros = 0;          // The whole load, from the first byte read to the swap.
  std::uint64_t copy_micros = 0;     // Arena: copying pages and index into the new arena (Arena::write);
                                     // 0 for a mapped arena.
  std::uint64_t check_micros = 0;    // Arena: checking them before the swap; when copied, on a thread
                                     // of its own beside the copy (its busy time, which overlaps it).
  std::uint64_t convert_micros = 0;  // Copying an arena entry by entry (another schema or class table).
};

enum class WriteResult {
  kApplied,  // Published (if a transfer is under way) and applied.
  kAbsent,   // An erase of a key the cache did not hold; still published and applied.
  kRefused,  // `publish` returned false: nothing was changed.
};

namespace detail {
template <int Schema>
class Store;
}  // namespace detail

template <int Schema>
class Cache {
  static_assert(Schema == 1 || Schema == 2, "kv-cache has schemas 1 and 2");

 public:
  static constexpr int kSchema = Schema;
  // The snapshot and delta versions this schema reads and writes.
  static std::vector<std::uint32_t> versions();
  static bool supports(std::uint32_t version);
  // The bytes an entry of these sizes is charged: its whole chunk (schema 1 ignores `type_size`).
  static std::uint64_t charge(std::size_t key_size, std::size_t value_size, std::size_t type_size = 0);

  explicit Cache(std::uint64_t max_bytes);
  ~Cache();
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  // A hit makes the entry the most recently used and counts in the stats; peek() does neither.
  std::optional<Found> get(std::string_view key);
  std::optional<Found> peek(std::string_view key) const;

  // Changes at a given stamp (replayed ones, and tests). put returns false when the cache holds a
  // newer or equal write for the key (an entry or a tombstone); erase returns whether it removed
  // an entry. Schema 1 ignores `content_type`. put throws std::length_error (and changes nothing)
  // for a key, value or content type beyond the limits above.
  bool put(std::string_view key, std::string_view value, std::string_view content_type, std::uint64_t stamp);
  bool erase(std::string_view key, std::uint64_t stamp);

  // A change made by this generation. Under the cache's lock: picks a stamp above every stamp seen
  // (and at least the clock), calls publish(stamp) to hand the change to the next generation, and
  // applies it only if that returned true. Publishing first means a refused write needs no undo;
  // holding the lock across both means a concurrent save() sees the write either entirely before
  // or entirely after it, never applied but unpublished. `publish` must not call into the cache.
  using Publish = std::function<bool(std::uint64_t stamp)>;
  WriteResult put_local(std::string_view key, std::string_view value, std::string_view content_type,
                        const Publish& publish);
  WriteResult erase_local(std::string_view key, const Publish& publish);

  // The previous generation is gone (or there never was one): forget the tombstones and keep no
  // more. Idempotent.
  void drop_tombstones();

  // Puts prefill_key(i) -> prefill_value(i, value_bytes) for i in [0, n), with no content type,
  // as `kv-cache --prefill` does at start-up (the lock is taken per batch, not held throughout).
  // The index is sized for n more entries first (as many as the budget can hold), so that it is
  // not rehashed again and again.
  void prefill(std::uint64_t n, std::size_t value_bytes);

  Stats stats() const;
  LoadReport last_load() const;
  std::uint64_t max_bytes() const { return max_bytes_; }
  // Keys from the most to the least recently used (for tests and debugging).
  std::vector<std::string> keys_by_recency() const;

  // Section callbacks. save writes the snapshot in `version` straight to `out` under the lock: the
  // arena layout in this cache's own schema, the entries layout in an older one. load reads either
  // layout with hotrestart::InputArchive into a staging store, checks it, and replaces the contents
  // only at the end; on any error it throws and the cache is untouched. Entries beyond max_bytes
  // are evicted, least recently used first. Both throw std::invalid_argument for a version this
  // schema does not have.
  void save(std::uint32_t version, std::ostream& out) const;
  void load(std::uint32_t version, std::istream& in);
  // The zero-copy path (Section::save_arena / load_arena): in this cache's own schema, save_mapped
  // writes the mapped-arena header and returns the store's arena snapshot, under the lock; in
  // another schema, or while the arena is still shared with another generation, it returns an
  // empty snapshot (the SDK then calls save). load_mapped checks the header against the arena
  // and the store in place, as load does, and takes the arena over; an arena of schema 1 or of
  // other size classes is checked the same way and then copied entry by entry.
  hotrestart::Arena::Snapshot save_mapped(std::uint32_t version, std::ostream& out);
  // Section::freeze: forks the process (the SDK's `fork`) under the lock, with the store's arena
  // frozen, so that `save` runs in the child while this process serves and writes on.
  void freeze(const hotrestart::SnapshotFork& fork);
  void load_mapped(std::uint32_t version, std::istream& in, hotrestart::Arena arena);
  // Once the previous (or next) generation is gone: makes the store's memory this process's alone
  // again (hotrestart::Arena::reclaim). Returns whether it is.
  bool reclaim_memory();
  // Whether the store's memory is still shared with another generation (lent or borrowed).
  bool memory_borrowed() const;

  static std::string encode_put_delta(std::uint32_t version, std::string_view key, std::string_view value,
                                      std::string_view content_type, std::uint64_t stamp);
  static std::string encode_erase_delta(std::uint32_t version, std::string_view key, std::uint64_t stamp);
  // Decodes (bounded) and applies one delta; throws on anything but exactly one well-formed change.
  void apply_delta(std::uint32_t version, std::string_view bytes);

 private:
  // load and load_mapped: `mapped` is the arena the header describes, or null.
  void load_from(std::uint32_t version, std::istream& in, hotrestart::Arena* mapped);
  bool put_locked(std::string_view key, std::string_view value, std::string_view content_type, std::uint64_t stamp);
  bool erase_locked(std::string_view key, std::uint64_t stamp);
  std::uint64_t next_stamp_locked();

  const std::uint64_t max_bytes_;
  mutable std::mutex mutex_;
  std::unique_ptr<detail::Store<Schema>> store_;
  std::uint64_t hits_ = 0;
  std::uint64_t misses_ = 0;
  std::uint64_t deltas_ = 0;
  std::uint64_t last_stamp_ = 0;  // The highest stamp seen.
  bool keep_tombstones_ = true;
  std::unordered_map<std::string, std::uint64_t> tombstones_;
  std::uint64_t tombstone_bytes_ = 0;
  LoadReport last_load_;
};

extern template class Cache<1>;
extern template class Cache<2>;

// ---------------------------------------------------------------------------------------------
// The worker SDK's side, shared by the server and its tests.

inline constexpr std::string_view kSectionName = "cache";

// The section that carries `cache` to the next generation. save and apply_delta run on the SDK's
// thread and take the cache's lock (save in a process forked under freeze, unless the worker was
// told not to fork); load runs in start().
template <int Schema>
hotrestart::Section make_section(Cache<Schema>& cache) {
  return {.name = std::string(kSectionName),
          .versions = Cache<Schema>::versions(),
          .save = [&cache](std::uint32_t v, std::ostream& out) { cache.save(v, out); },
          .load = [&cache](std::uint32_t v, std::istream& in) { cache.load(v, in); },
          .apply_delta = [&cache](std::uint32_t v, std::string_view delta) { cache.apply_delta(v, delta); },
          .save_arena = [&cache](std::uint32_t v, std::ostream& out) { return cache.save_mapped(v, out); },
          .load_arena = [&cache](std::uint32_t v, std::istream& in,
                                 hotrestart::Arena arena) { cache.load_mapped(v, in, std::move(arena)); },
          .freeze = [&cache](const hotrestart::SnapshotFork& fork) { cache.freeze(fork); }};
}

// A write made by this generation, published to the next one first (see Cache::put_local).
// kRefused: the SDK could not queue the change (too large for a delta, or too much waiting), so
// the write must not be acknowledged.
template <int Schema>
WriteResult publish_put(Cache<Schema>& cache, hotrestart::Worker& worker, std::string_view key, std::string_view value,
                        std::string_view content_type) {
  return cache.put_local(key, value, content_type, [&](std::uint64_t stamp) {
    return worker.publish_delta(kSectionName, [&](std::uint32_t v) {
      return Cache<Schema>::encode_put_delta(v, key, value, content_type, stamp);
    });
  });
}

template <int Schema>
WriteResult publish_erase(Cache<Schema>& cache, hotrestart::Worker& worker, std::string_view key) {
  return cache.erase_local(key, [&](std::uint64_t stamp) {
    return worker.publish_delta(kSectionName,
                                [&](std::uint32_t v) { return Cache<Schema>::encode_erase_delta(v, key, stamp); });
  });
}

}  // namespace kv
