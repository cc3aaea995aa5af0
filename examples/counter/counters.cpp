// counter's state (counters.h).
//
// Snapshot, schema 1: u64 N, then N times {string key, u64 count}. Schema 2: the same with
// u64 changed_ns after each count. Delta, both schemas: {string key, u64 amount}. Strings are
// cereal's (u64 length, bytes); everything is read through hotrestart::InputArchive, which refuses
// a length longer than what is left.
#include "counters.h"

#include <cereal/types/string.hpp>

#include <chrono>
#include <sstream>
#include <stdexcept>

#include <hotrestart/archive.h>

namespace counter {
namespace {

std::uint64_t now_ns() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count());
}

void check_version(std::uint32_t version, int schema) {
  if (version < 1 || version > static_cast<std::uint32_t>(schema))
    throw std::invalid_argument("counter schema " + std::to_string(schema) + " has no version " +
                                std::to_string(version));
}

void check_key(const std::string& key) {
  if (key.empty() || key.size() > kMaxKeyBytes)
    throw std::invalid_argument("a key of " + std::to_string(key.size()) + " bytes (1 to " +
                                std::to_string(kMaxKeyBytes) + ")");
}

}  // namespace

template <int Schema>
std::uint64_t Counters<Schema>::add_locked(const std::string& key, std::uint64_t amount, std::uint64_t changed_ns) {
  Entry& e = counts_[key];
  e.count += amount;
  e.changed_ns = std::max(e.changed_ns, changed_ns);
  return e.count;
}

template <int Schema>
std::optional<std::uint64_t> Counters<Schema>::increment(std::string_view key, hotrestart::Worker& worker) {
  std::lock_guard lock(mutex_);
  // Published before it is applied, under the lock that save's snapshot takes: the operation is
  // either in the snapshot (applied before the fork) or after it in the stream, never both.
  if (!worker.publish_delta(kSectionName, [&](std::uint32_t) { return encode_delta(key, 1); })) return std::nullopt;
  return add_locked(std::string(key), 1, now_ns());
}

template <int Schema>
std::uint64_t Counters<Schema>::count(std::string_view key) const {
  std::lock_guard lock(mutex_);
  auto it = counts_.find(std::string(key));
  return it == counts_.end() ? 0 : it->second.count;
}

template <int Schema>
std::size_t Counters<Schema>::size() const {
  std::lock_guard lock(mutex_);
  return counts_.size();
}

template <int Schema>
std::uint64_t Counters<Schema>::operations_received() const {
  std::lock_guard lock(mutex_);
  return operations_received_;
}

template <int Schema>
hotrestart::Section Counters<Schema>::section(hotrestart::Worker& worker) {
  return {.name = std::string(kSectionName),
          .versions = versions(),
          .save = [this](std::uint32_t v, std::ostream& out) { save(v, out); },
          .load = [this](std::uint32_t v, std::istream& in) { load(v, in); },
          .apply_delta = [this, &worker](std::uint32_t v, std::string_view d) { apply_delta(v, d, worker); },
          // The snapshot's instant: the lock the writers take, held only while the process forks.
          // `save` then runs in the child, on the counters as they were, while this process counts on.
          .freeze =
              [this](const hotrestart::SnapshotFork& fork) {
                std::lock_guard lock(mutex_);
                fork();
              }};
}

template <int Schema>
void Counters<Schema>::save(std::uint32_t version, std::ostream& out) const {
  check_version(version, Schema);
  std::lock_guard lock(mutex_);  // In the forked child, this lock is free: nothing else runs there.
  hotrestart::OutputArchive ar(out);
  ar(static_cast<std::uint64_t>(counts_.size()));
  for (const auto& [key, e] : counts_) {
    ar(key, e.count);
    if (version >= 2) ar(e.changed_ns);
  }
}

template <int Schema>
void Counters<Schema>::load(std::uint32_t version, std::istream& in) {
  check_version(version, Schema);
  hotrestart::InputArchive ar(in);
  std::uint64_t n = 0;
  ar(n);
  std::unordered_map<std::string, Entry> staging;
  for (std::uint64_t i = 0; i < n; ++i) {
    std::string key;
    Entry e;
    ar(key, e.count);
    if (version >= 2) ar(e.changed_ns);
    check_key(key);
    if (!staging.emplace(std::move(key), e).second) throw std::invalid_argument("a key appears twice");
  }
  if (!ar.at_end()) throw std::invalid_argument("bytes left after the counters");
  std::lock_guard lock(mutex_);
  counts_.swap(staging);  // Whole or nothing.
}

template <int Schema>
void Counters<Schema>::apply_delta(std::uint32_t version, std::string_view bytes, hotrestart::Worker& worker) {
  check_version(version, Schema);
  std::string key;
  std::uint64_t amount = 0;
  {
    std::istringstream in{std::string(bytes)};
    hotrestart::InputArchive ar(in);
    ar(key, amount);
    if (!ar.at_end()) throw std::invalid_argument("bytes left after the operation");
  }
  check_key(key);
  std::lock_guard lock(mutex_);
  // Passed on, under the same lock, to a next generation that may be taking this one's snapshot
  // already (an upgrade right after this one). If it cannot be queued the operation is still
  // applied here: it was acknowledged by the previous generation.
  (void)worker.publish_delta(kSectionName, [&](std::uint32_t) { return encode_delta(key, amount); });
  add_locked(key, amount, now_ns());
  ++operations_received_;
}

template <int Schema>
std::string Counters<Schema>::encode_delta(std::string_view key, std::uint64_t amount) {
  std::ostringstream out;
  {
    hotrestart::OutputArchive ar(out);
    ar(std::string(key), amount);
  }
  return std::move(out).str();
}

template class Counters<1>;
template class Counters<2>;

}  // namespace counter
