// kv-cache's slab pages and chunk allocation (see slabs.h): the size classes, the arena's blocks,
// the pages and the free lists of their chunks.
#include "slabs.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <stdexcept>
#include <utility>

namespace kv {

namespace {

std::atomic<std::uint64_t> g_mapped_total{0};

}  // namespace

std::uint64_t arena_bytes_mapped_total() {
  return g_mapped_total.load(std::memory_order_relaxed);
}

namespace detail {

const std::vector<std::uint32_t>& default_classes() {
  static const std::vector<std::uint32_t> classes = [] {
    std::vector<std::uint32_t> out;
    std::uint64_t size = kMinChunk;
    while (size < kMaxClassChunk) {
      out.push_back(static_cast<std::uint32_t>(size));
      size = std::max(size + 8, (size * 5 / 4 + 7) / 8 * 8);
    }
    out.push_back(kMaxClassChunk);
    return out;
  }();
  return classes;
}

std::uint64_t arena_reserve(std::uint64_t max_bytes) {
  constexpr std::uint64_t kMost = std::uint64_t{1} << 40;
  if (max_bytes >= kMost / 8) return kMost;
  return 4 * max_bytes + (std::uint64_t{12} << 30);
}

Block map_block(hotrestart::Arena& arena, std::uint64_t bytes, Populate populate) {
  if (bytes == 0) return {};
  std::byte* at = arena.allocate(bytes);
  // Only an optimisation: a kernel without MADV_POPULATE_WRITE (before 5.14) says EINVAL.
  if (populate == Populate::kYes) (void)::madvise(at, (bytes + 4095) / 4096 * 4096, MADV_POPULATE_WRITE);
  g_mapped_total.fetch_add(bytes, std::memory_order_relaxed);
  return {at, bytes};
}

void unmap_block(hotrestart::Arena& arena, Block& block) {
  arena.release(block.data());
  block = {};
}

Slabs::Slabs(hotrestart::Arena& arena, std::uint64_t max_bytes, const std::vector<std::uint32_t>& classes)
    : arena_(arena), max_bytes_(max_bytes) {
  classes_.resize(classes.size());
  for (std::size_t k = 0; k < classes.size(); ++k)
    classes_[k].size = classes[k];
}

std::uint32_t Slabs::kind_for(std::uint64_t need) const {
  auto it = std::lower_bound(classes_.begin(), classes_.end(), need,
                             [](const Class& c, std::uint64_t n) { return c.size < n; });
  return it == classes_.end() ? kDedicatedPage : static_cast<std::uint32_t>(it - classes_.begin());
}

bool Slabs::has_default_classes() const {
  const auto& defaults = default_classes();
  if (defaults.size() != classes_.size()) return false;
  for (std::size_t k = 0; k < defaults.size(); ++k) {
    if (defaults[k] != classes_[k].size) return false;
  }
  return true;
}

bool Slabs::may_map(std::uint64_t bytes, bool first_of_class) const {
  if (free_page_ids_.empty() && pages_.size() >= kMaxPages) return false;
  return first_of_class || saturating_add(page_bytes_, bytes) <= page_budget();
}

std::uint32_t Slabs::allocate(std::uint32_t kind, std::uint64_t need, Room room) {
  if (kind == kDedicatedPage) {
    const std::uint64_t size = dedicated_bytes(need);
    if (room == Room::kWithinBudget && !may_map(size, false)) return kNil;
    const std::uint32_t p = map_page(kind, size);
    pages_[p].used = 1;
    pages_[p].live = 1;
    return p << kSlotBits;
  }
  Class& c = classes_[kind];
  for (;;) {
    if (c.free_head != kNil) {
      const std::uint32_t id = pop_free(c);
      ++pages_[id >> kSlotBits].live;
      return id;
    }
    if (c.current != kNil) {
      Page& page = pages_[c.current];
      if (page.used < page.capacity) {
        ++page.live;
        return c.current << kSlotBits | page.used++;
      }
    }
    // With nothing left to evict, every other class is down to its one page, so this one fits.
    if (room == Room::kWithinBudget && !may_map(kPageBytes, c.pages == 0)) return kNil;
    c.current = map_page(kind, kPageBytes);
  }
}

std::uint32_t Slabs::map_page(std::uint32_t kind, std::uint64_t bytes) {
  if (free_page_ids_.empty() && pages_.size() >= kMaxPages) throw std::length_error("kv-cache: out of page numbers");
  // A page of its own is written whole at once; a class's page is, in a large cache, soon filled.
  Block memory =
      map_block(arena_, bytes, kind == kDedicatedPage || max_bytes_ >= kPopulateFrom ? Populate::kYes : Populate::kNo);
  std::uint32_t p = 0;
  if (!free_page_ids_.empty()) {
    // The lowest free number, whatever order pages were freed in, so that a store loaded from a
    // snapshot (which does not carry that order) goes on exactly as the original would.
    auto lowest = std::min_element(free_page_ids_.begin(), free_page_ids_.end());
    p = *lowest;
    *lowest = free_page_ids_.back();
    free_page_ids_.pop_back();
  } else {
    p = static_cast<std::uint32_t>(pages_.size());
    pages_.emplace_back();
  }
  Page& page = pages_[p];
  page.memory = std::move(memory);
  page.kind = kind;
  page.used = 0;
  page.live = 0;
  if (kind == kDedicatedPage) {
    page.chunk = bytes;
    page.capacity = 1;
  } else {
    page.chunk = classes_[kind].size;
    page.capacity = static_cast<std::uint32_t>(kPageBytes / page.chunk);
    if (classes_[kind].pages++ == 0) ++classes_with_pages_;
  }
  page_bytes_ += bytes;
  return p;
}

void Slabs::unmap_page(std::uint32_t p) {
  page_bytes_ -= pages_[p].memory.size();
  unmap_block(arena_, pages_[p].memory);
  pages_[p] = Page{};
  free_page_ids_.push_back(p);
}

void Slabs::release(std::uint32_t id) {
  const std::uint32_t p = id >> kSlotBits;
  Page& page = pages_[p];
  --page.live;
  if (page.kind == kDedicatedPage) return unmap_page(p);
  Chunk* c = chunk(id);
  zero_bytes(payload(c), std::uint64_t{c->key_len} + c->value_len + c->type_len);
  c->stamp = 0;
  c->key_len = 0;
  c->value_len = 0;
  c->type_len = 0;
  Class& k = classes_[page.kind];
  push_free(k, id);
  // An empty page goes back to the system, unless it is its class's last: a class that keeps
  // one entry coming and going would otherwise map and unmap a page each time.
  if (page.live == 0 && k.pages > 1) {
    for (std::uint32_t s = 0; s < page.used; ++s)
      unlink_free(k, p << kSlotBits | s);
    if (k.current == p) k.current = kNil;
    --k.pages;
    unmap_page(p);
  }
}

void Slabs::push_free(Class& k, std::uint32_t id) {
  Chunk* c = chunk(id);
  c->prev = kNil;
  c->next = k.free_head;
  if (k.free_head != kNil) chunk(k.free_head)->prev = id;
  k.free_head = id;
}

std::uint32_t Slabs::pop_free(Class& k) {
  const std::uint32_t id = k.free_head;
  Chunk* c = chunk(id);
  k.free_head = c->next;
  if (c->next != kNil) chunk(c->next)->prev = kNil;
  c->prev = c->next = kNil;
  return id;
}

void Slabs::unlink_free(Class& k, std::uint32_t id) {
  Chunk* c = chunk(id);
  (c->prev != kNil ? chunk(c->prev)->next : k.free_head) = c->next;
  if (c->next != kNil) chunk(c->next)->prev = c->prev;
}

void Slabs::restore_page(std::uint32_t p, Block memory, std::uint32_t kind, std::uint32_t used) {
  Page& page = pages_[p];
  page.memory = memory;
  page.kind = kind;
  page.used = used;
  if (kind == kDedicatedPage) {
    page.chunk = memory.size();
    page.capacity = 1;
  } else {
    page.chunk = classes_[kind].size;
    page.capacity = static_cast<std::uint32_t>(kPageBytes / page.chunk);
    ++classes_[kind].pages;
  }
  page_bytes_ += memory.size();
}

void Slabs::finish_restore() {
  for (std::uint32_t p = 0; p < pages_.size(); ++p) {
    const Page& page = pages_[p];
    if (page.kind != kNoPage && page.kind != kDedicatedPage && page.used < page.capacity) {
      classes_[page.kind].current = p;
    }
  }
  for (const Class& c : classes_)
    classes_with_pages_ += c.pages > 0 ? 1 : 0;
}

}  // namespace detail

}  // namespace kv
