// The checks of a loaded arena (see arena_checks.h): its chunks, its lists and its index.
#include "arena_checks.h"

#include <hotrestart/archive.h>

#include <algorithm>

namespace kv::detail {

using hotrestart::ArchiveError;

ArenaCheck::ArenaCheck(Slabs& slabs, ContentTypes types) : slabs_(slabs), types_(types) {
  const auto& pages = slabs.pages();
  numbering_.resize(pages.size());
  for (std::size_t p = 0; p < pages.size(); ++p) {
    numbering_[p] = {total_, pages[p].used};
    total_ += pages[p].used;
  }
  links_ = std::make_unique_for_overwrite<Link[]>(total_);
}

void ArenaCheck::check_chunks(std::uint32_t p, std::uint32_t from, std::uint32_t to, std::uint64_t& max_stamp) {
  const Slabs::Page& page = slabs_.pages()[p];
  const std::uint64_t first = numbering_[p].first;
  for (std::uint32_t slot = from; slot < to; ++slot) {
    const Chunk* c = slabs_.chunk(p << kSlotBits | slot);
    if (kChunkHeaderBytes + c->key_len + std::uint64_t{c->value_len} + c->type_len > page.chunk) {
      throw ArchiveError("corrupt: an entry is longer than its chunk");
    }
    if (types_ == ContentTypes::kNone && c->type_len != 0) {
      throw ArchiveError("corrupt: a schema-1 entry with a content type");
    }
    if (!valid_link(c->next) || !valid_link(c->prev)) throw ArchiveError("corrupt: a chunk links to no chunk");
    links_[first + slot] = {c->next, c->prev};
    max_stamp = std::max(max_stamp, c->stamp);  // A free chunk's stamp is 0.
  }
}

std::uint64_t ArenaCheck::check_lists(std::uint32_t head, std::uint32_t tail, std::uint64_t count) {
  const auto& pages = slabs_.pages();
  live_ = Bits(total_);
  if (!valid_link(head) || !valid_link(tail)) throw ArchiveError("corrupt: the LRU list's ends name no chunk");
  std::uint64_t n = 0;
  std::uint64_t charged = 0;
  std::vector<std::uint32_t> live_in_page(pages.size());
  std::uint32_t prev = kNil;
  for (std::uint32_t id = head; id != kNil;) {
    const std::uint64_t at = number_of(id);
    if (live_.test(at)) throw ArchiveError("corrupt: the LRU list has a cycle");
    if (++n > count) throw ArchiveError("corrupt: the LRU list is longer than the entry count");
    live_.set(at);
    if (links_[at].prev != prev) throw ArchiveError("corrupt: the LRU list's links disagree");
    ++live_in_page[id >> kSlotBits];
    charged += pages[id >> kSlotBits].chunk;
    prev = id;
    id = links_[at].next;
  }
  if (n != count || prev != tail) throw ArchiveError("corrupt: the LRU list does not hold every entry");

  std::vector<std::uint32_t> free_in_page(pages.size());
  check_free_lists(free_in_page, live_);
  for (std::uint32_t p = 0; p < pages.size(); ++p) {
    if (pages[p].kind == kNoPage) continue;
    if (std::uint64_t{live_in_page[p]} + free_in_page[p] != pages[p].used) {
      throw ArchiveError("corrupt: a page has chunks that are neither entries nor free");
    }
    slabs_.restore_live(p, live_in_page[p]);
  }
  slabs_.finish_restore();
  return charged;
}

// Each free list holds chunks of its class only, none of them an entry (marked in `live`), without
// a cycle and with links that agree both ways; counts them per page.
void ArenaCheck::check_free_lists(std::vector<std::uint32_t>& free_in_page, const Bits& live) {
  const auto& classes = slabs_.classes();
  const auto& pages = slabs_.pages();
  Bits freed(total_);
  for (std::uint32_t k = 0; k < classes.size(); ++k) {
    if (!valid_link(classes[k].free_head)) throw ArchiveError("corrupt: a free list's head names no chunk");
    std::uint32_t prev = kNil;
    for (std::uint32_t id = classes[k].free_head; id != kNil;) {
      const std::uint64_t at = number_of(id);
      if (pages[id >> kSlotBits].kind != k) throw ArchiveError("corrupt: a free list holds another class's chunk");
      if (live.test(at) || freed.test(at)) throw ArchiveError("corrupt: a free list holds an entry, or a cycle");
      freed.set(at);
      if (links_[at].prev != prev) throw ArchiveError("corrupt: a free list's links disagree");
      ++free_in_page[id >> kSlotBits];
      prev = id;
      id = links_[at].next;
    }
  }
}

void ArenaCheck::check_slot_run(std::uint64_t j, const Slot& slot, std::uint64_t mask) const {
  if (((j - (slot.hash & mask)) & mask) > ((j - run_start_) & mask)) {
    throw ArchiveError("corrupt: an index slot lies where no lookup finds it");
  }
}

void ArenaCheck::check_index(const HashIndex& index, std::uint64_t from, std::uint64_t to) {
  const Slot* table = index.slots();
  const std::uint64_t mask = index.slot_count() - 1;
  for (std::uint64_t j = from; j < to; ++j) {
    const Slot& slot = table[j];
    if (slot.id == kNil) {
      if (first_empty_ == UINT64_MAX) first_empty_ = j;
      run_start_ = j + 1;
      continue;
    }
    if (!valid_link(slot.id)) throw ArchiveError("corrupt: the index names no chunk");
    const std::uint64_t at = number_of(slot.id);
    if (!live_.test(at)) throw ArchiveError("corrupt: the index names a free chunk, or an entry twice");
    live_.clear(at);
    ++indexed_;
    if (first_empty_ != UINT64_MAX) check_slot_run(j, slot, mask);
    if ((j % kHashSample == 0 || indexed_ <= 16) && slot.hash != hash_of(slabs_.key_of(slot.id))) {
      throw ArchiveError("the index's hashes do not match its keys (another hash function?)");
    }
  }
}

void ArenaCheck::finish_index(const HashIndex& index, std::uint64_t count) {
  const Slot* table = index.slots();
  const std::uint64_t mask = index.slot_count() - 1;
  if (first_empty_ == UINT64_MAX) throw ArchiveError("corrupt: the index has no empty slot");
  for (std::uint64_t j = 0; j < first_empty_; ++j)
    check_slot_run(j, table[j], mask);  // run_start_ is where the run that wraps around began.
  if (indexed_ != count) throw ArchiveError("corrupt: the index does not hold every entry");
  live_ = Bits(0);
}

}  // namespace kv::detail
