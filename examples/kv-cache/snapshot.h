// kv-cache's snapshots of a store: what a Cache's section callbacks write and read. The layouts
// (arena, mapped arena, entries) are described beside their code, in snapshot.cpp.
#pragma once

#include <hotrestart/arena.h>

#include <cstdint>
#include <istream>
#include <memory>
#include <ostream>

#include "cache.h"
#include "store.h"

namespace kv::detail {

// Writes `store` in `version`: the arena layout in the store's own schema, the entries layout in
// an older one. The store is unchanged.
template <int Schema>
void save_snapshot(const Store<Schema>& store, std::uint32_t version, std::ostream& out);

// Writes the mapped-arena header of `store` and returns its arena's snapshot (empty while the arena
// is still lent to, or borrowed from, another generation).
template <int Schema>
hotrestart::Arena::Snapshot save_mapped_snapshot(Store<Schema>& store, std::ostream& out);

// Reads a snapshot of `version` in either layout (with `mapped`, the header of that arena) into a
// new store with this budget, and checks it whole; an arena of another schema or of other size
// classes is copied entry by entry into one of this build's. Fills in `report` but for its
// `micros`. Throws hotrestart::ArchiveError on anything inconsistent.
template <int Schema>
std::unique_ptr<Store<Schema>> load_snapshot(std::uint32_t version, std::istream& in, std::uint64_t max_bytes,
                                             hotrestart::Arena* mapped, LoadReport& report);

}  // namespace kv::detail
