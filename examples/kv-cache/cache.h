// kv-cache's store: an LRU cache of byte strings bounded by memory, free of I/O, that carries
// itself to the next generation through the worker SDK (snapshots and deltas).
//
// Schemas. The schema is a template parameter, so that one library holds both and one test binary
// can check v1 against v2; a server binary uses Cache<KV_SCHEMA>.
//   schema 1: an entry is {key, value, stamp}; the v1 binary reads and writes version 1 only.
//   schema 2: adds content_type; the v2 binary reads and writes versions 1 and 2 (writing 1 drops
//             the content types; reading 1 leaves them empty, served as application/octet-stream).
//
// Snapshot (a section's payload), in cereal's binary layout (u64 counts, little-endian):
//   count: u64, then `count` entries from least to most recently used, each
//   key: string, value: string, [content_type: string, version 2 only], stamp: u64.
// Delta (one change, published while a transfer is under way):
//   op: u8 (1 = put, 2 = erase), key: string, then for a put value: string and, in version 2,
//   content_type: string; then stamp: u64.
//
// Stamps. Every write carries the CLOCK_MONOTONIC time it was made at, in nanoseconds; that clock
// is system-wide, so the old and the new generation on one machine agree on it. A change replayed
// from the previous generation applies only if it is newer than what the cache holds for its key
// (last writer wins; an equal stamp is the same write seen twice). An erase leaves a tombstone
// {key, stamp} so that an older put arriving later cannot bring the key back; tombstones are kept
// only while the previous generation may still send changes (drop_tombstones() ends that).
#pragma once

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

// Charged for every entry on top of its key, value and content type: the entry record (120 bytes
// in schema 2, 88 in schema 1) and its share of the hash index (8-byte slots, at most 3/4 full).
// The strings' own allocator overhead is not counted.
inline constexpr std::uint64_t kEntryOverhead = 144;
// Tombstones may use at most max_bytes / kTombstoneShare (key + kTombstoneOverhead each); past
// that an erase leaves none, and a late, older put from the previous generation could restore the
// key. They are not charged against max_bytes.
inline constexpr std::uint64_t kTombstoneShare = 16;
inline constexpr std::uint64_t kTombstoneOverhead = 64;
// What an entry without a content type is served as.
inline constexpr std::string_view kDefaultContentType = "application/octet-stream";

// Nanoseconds of CLOCK_MONOTONIC.
std::uint64_t monotonic_ns();

inline std::string_view served_content_type(std::string_view stored) {
  return stored.empty() ? kDefaultContentType : stored;
}

struct Stats {
  std::uint64_t entries = 0;
  std::uint64_t bytes = 0;  // Charged bytes: key + value + content type + kEntryOverhead each.
  std::uint64_t hits = 0;
  std::uint64_t misses = 0;
  std::uint64_t evictions = 0;
  std::uint64_t tombstones = 0;
  std::uint64_t deltas = 0;  // Changes replayed from the previous generation (applied or not).
};

struct Found {
  std::string value;
  std::string content_type;  // Empty in schema 1, or when none was given.
  std::uint64_t stamp = 0;
};

enum class WriteResult {
  kApplied,  // Published (if a transfer is under way) and applied.
  kAbsent,   // An erase of a key the cache did not hold; still published and applied.
  kRefused,  // `publish` returned false: nothing was changed.
};

template <int Schema>
class Store;

template <int Schema>
class Cache {
  static_assert(Schema == 1 || Schema == 2, "kv-cache has schemas 1 and 2");

 public:
  static constexpr int kSchema = Schema;
  // The snapshot and delta versions this schema reads and writes.
  static std::vector<std::uint32_t> versions();
  static bool supports(std::uint32_t version);

  explicit Cache(std::uint64_t max_bytes);
  ~Cache();
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  // A hit makes the entry the most recently used and counts in the stats; peek() does neither.
  std::optional<Found> get(std::string_view key);
  std::optional<Found> peek(std::string_view key) const;

  // Changes at a given stamp (replayed ones, and tests). put returns false when the cache holds a
  // newer or equal write for the key (an entry or a tombstone); erase returns whether it removed
  // an entry. Schema 1 ignores `content_type`.
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

  Stats stats() const;
  std::uint64_t max_bytes() const { return max_bytes_; }
  // Keys from the most to the least recently used (for tests and debugging).
  std::vector<std::string> keys_by_recency() const;

  // Section callbacks. save writes the snapshot in `version` straight to `out` under the lock.
  // load reads it with hotrestart::InputArchive into a staging store and replaces the contents only
  // at the end; on any error it throws and the cache is untouched. Entries beyond max_bytes are
  // evicted as they are loaded, least recently used first. Both throw std::invalid_argument for a
  // version this schema does not have.
  void save(std::uint32_t version, std::ostream& out) const;
  void load(std::uint32_t version, std::istream& in);

  static std::string encode_put_delta(std::uint32_t version, std::string_view key, std::string_view value,
                                      std::string_view content_type, std::uint64_t stamp);
  static std::string encode_erase_delta(std::uint32_t version, std::string_view key, std::uint64_t stamp);
  // Decodes (bounded) and applies one delta; throws on anything but exactly one well-formed change.
  void apply_delta(std::uint32_t version, std::string_view bytes);

 private:
  bool put_locked(std::string_view key, std::string_view value, std::string_view content_type, std::uint64_t stamp);
  bool erase_locked(std::string_view key, std::uint64_t stamp);
  std::uint64_t next_stamp_locked();

  const std::uint64_t max_bytes_;
  mutable std::mutex mutex_;
  std::unique_ptr<Store<Schema>> store_;
  std::uint64_t hits_ = 0;
  std::uint64_t misses_ = 0;
  std::uint64_t deltas_ = 0;
  std::uint64_t last_stamp_ = 0;  // The highest stamp seen.
  bool keep_tombstones_ = true;
  std::unordered_map<std::string, std::uint64_t> tombstones_;
  std::uint64_t tombstone_bytes_ = 0;
};

extern template class Cache<1>;
extern template class Cache<2>;

// ---------------------------------------------------------------------------------------------
// The worker SDK's side, shared by the server and its tests.

inline constexpr std::string_view kSectionName = "cache";

// The section that carries `cache` to the next generation. save and apply_delta run on the SDK's
// thread and take the cache's lock; load runs in start().
template <int Schema>
hotrestart::Section make_section(Cache<Schema>& cache) {
  return {.name = std::string(kSectionName),
          .versions = Cache<Schema>::versions(),
          .save = [&cache](std::uint32_t v, std::ostream& out) { cache.save(v, out); },
          .load = [&cache](std::uint32_t v, std::istream& in) { cache.load(v, in); },
          .apply_delta = [&cache](std::uint32_t v, std::string_view delta) { cache.apply_delta(v, delta); }};
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
