// counter's state: named counters that only ever go up, carried to the next generation by the
// worker SDK without losing or doubling an increment. Free of I/O.
//
// Read-modify-write state and the overlap. During an upgrade both generations take increments for
// a moment: the old one until its drain has answered its last request, the new one from its
// cutover. The new generation imports a snapshot of the old one's counters, and every increment the
// old generation makes after its snapshot follows as a delta. Were a delta the counter's new value
// ("hits = 41"), it would overwrite the increments the new generation made meanwhile. So a delta
// here is the operation ("add 1 to hits"), which adds to whatever the new generation holds. Each
// operation must then be applied exactly once: the section has Section::freeze, so its snapshot
// is taken at one instant under the lock, and the SDK applies only the operations published after
// that instant (docs/sdk.md, "Deltas applied exactly once").
//
// Schemas. Schema 1: {key: count}. Schema 2 adds when each counter last changed (CLOCK_REALTIME,
// in ns). counter-v1 reads and writes schema 1; counter-v2 both. A delta is the same in both:
// {key, amount}.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <hotrestart/worker.h>

namespace counter {

inline constexpr std::string_view kSectionName = "counters";
inline constexpr std::size_t kMaxKeyBytes = 256;

template <int Schema>
class Counters {
  static_assert(Schema == 1 || Schema == 2, "counter has schemas 1 and 2");

 public:
  static std::vector<std::uint32_t> versions() {
    return Schema == 1 ? std::vector<std::uint32_t>{1} : std::vector<std::uint32_t>{1, 2};
  }

  // Adds 1 to `key`, publishing the operation to the next generation first (under the lock, so
  // that the snapshot holds it exactly when the SDK says it does). Returns the new count, or
  // nothing when the SDK could not queue the operation: then nothing changed, and the increment
  // must not be acknowledged.
  std::optional<std::uint64_t> increment(std::string_view key, hotrestart::Worker& worker);
  std::uint64_t count(std::string_view key) const;
  std::size_t size() const;
  // Operations applied from the previous generation (apply_delta).
  std::uint64_t operations_received() const;

  // The section: save and load the snapshot in a schema version, apply_delta one operation,
  // freeze the fork's instant. apply_delta publishes the operation again for a next generation
  // that may already be taking this one's state (back-to-back upgrades).
  hotrestart::Section section(hotrestart::Worker& worker);

  void save(std::uint32_t version, std::ostream& out) const;
  void load(std::uint32_t version, std::istream& in);
  void apply_delta(std::uint32_t version, std::string_view bytes, hotrestart::Worker& worker);
  static std::string encode_delta(std::string_view key, std::uint64_t amount);

 private:
  struct Entry {
    std::uint64_t count = 0;
    std::uint64_t changed_ns = 0;  // Schema 2.
  };
  std::uint64_t add_locked(const std::string& key, std::uint64_t amount, std::uint64_t changed_ns);

  mutable std::mutex mutex_;
  std::unordered_map<std::string, Entry> counts_;
  std::uint64_t operations_received_ = 0;
};

extern template class Counters<1>;
extern template class Counters<2>;

}  // namespace counter
