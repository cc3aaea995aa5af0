// examples/kv-cache's store: LRU by memory (charging whole chunks, and keeping its pages within
// budget), snapshots across schema versions (the arena taken as it is, and entry by entry), deltas
// with last-writer-wins, and hostile input (corrupted arenas included).
//
// The schema is a template parameter of kv::Cache and the kv_cache library instantiates both, so
// this one binary checks the v1 binary's cache (Cache<1>) against the v2 binary's (Cache<2>).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <new>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include <hotrestart/archive.h>
#include <hotrestart/testing.h>
#include <cereal/types/string.hpp>

#include "arena_section.h"
#include "cache.h"
#include "settings.h"

namespace {

// Counts what operator new hands out, so that a test can show a hostile count allocates nothing.
std::atomic<std::uint64_t> g_allocated{0};

}  // namespace

// GCC sees free() meet a pointer from operator new once these are inlined; they are a matched pair.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(std::size_t n) {
  g_allocated.fetch_add(n, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept {
  std::free(p);
}
#pragma GCC diagnostic pop

namespace {

using V1 = kv::Cache<1>;
using V2 = kv::Cache<2>;

template <class Cache>
std::string snapshot(const Cache& cache, std::uint32_t version) {
  std::ostringstream out;
  cache.save(version, out);
  return std::move(out).str();
}

template <class Cache>
void load(Cache& cache, std::uint32_t version, const std::string& bytes) {
  std::istringstream in(bytes);
  cache.load(version, in);
}

// What an entry is charged: its whole chunk, of the smallest size class that holds it.
template <class Cache = V2>
std::uint64_t charge(std::string_view key, std::string_view value, std::string_view ctype = {}) {
  return Cache::charge(key.size(), value.size(), ctype.size());
}

// The whole visible state of a cache: keys by recency with their values, types and stamps.
template <class Cache>
std::vector<std::string> dump(const Cache& cache) {
  std::vector<std::string> out;
  for (const auto& key : cache.keys_by_recency()) {
    auto found = cache.peek(key);
    REQUIRE(found);
    out.push_back(key + "=" + found->value + ";" + found->content_type + ";" + std::to_string(found->stamp));
  }
  return out;
}

// Hand-made snapshot bytes, in the layout examples/kv-cache/snapshot.cpp documents.
struct Writer {
  std::ostringstream out;
  hotrestart::OutputArchive ar{out};
  Writer& u64(std::uint64_t v) {
    ar(v);
    return *this;
  }
  Writer& u8(std::uint8_t v) {
    ar(v);
    return *this;
  }
  Writer& u32(std::uint32_t v) {
    ar(v);
    return *this;
  }
  Writer& str(const std::string& s) {
    ar(s);
    return *this;
  }
  std::string bytes() { return out.str(); }
};

// Fields of a snapshot at a byte offset, read and replaced (little-endian, as the layouts are).
std::uint32_t get_u32(const std::string& bytes, std::size_t at) {
  std::uint32_t v = 0;
  std::memcpy(&v, bytes.data() + at, sizeof v);
  return v;
}
std::uint64_t get_u64(const std::string& bytes, std::size_t at) {
  std::uint64_t v = 0;
  std::memcpy(&v, bytes.data() + at, sizeof v);
  return v;
}
std::string with_u32(std::string bytes, std::size_t at, std::uint32_t v) {
  std::memcpy(bytes.data() + at, &v, sizeof v);
  return bytes;
}
std::string with_u64(std::string bytes, std::size_t at, std::uint64_t v) {
  std::memcpy(bytes.data() + at, &v, sizeof v);
  return bytes;
}

}  // namespace

TEST_CASE("kv cache: get, put, erase and stats") {
  V2 cache(1 << 20);
  CHECK_FALSE(cache.get("a"));
  CHECK(cache.put("a", "one", "text/plain", 10));
  auto a = cache.get("a");
  REQUIRE(a);
  CHECK(a->value == "one");
  CHECK(a->content_type == "text/plain");
  CHECK(a->stamp == 10);
  CHECK(cache.put("a", "two", "", 11));  // Overwrites, and an empty type is served as the default.
  CHECK(cache.get("a")->value == "two");
  CHECK(kv::served_content_type(cache.peek("a")->content_type) == "application/octet-stream");
  CHECK(cache.put(std::string("bin\0ary", 7), std::string("\0\xff", 2), "", 12));  // Any bytes.
  CHECK(cache.get(std::string("bin\0ary", 7))->value == std::string("\0\xff", 2));
  CHECK(cache.erase("a", 20));
  CHECK_FALSE(cache.erase("a", 21));
  CHECK_FALSE(cache.get("a"));

  auto s = cache.stats();
  CHECK(s.entries == 1);
  CHECK(s.bytes == charge(std::string("bin\0ary", 7), std::string("\0\xff", 2)));
  CHECK(s.hits == 3);
  CHECK(s.misses == 2);
  CHECK(s.evictions == 0);

  V1 old(1 << 20);
  CHECK(old.put("k", "v", "text/plain", 1));
  CHECK(old.get("k")->content_type.empty());  // Schema 1 has no content types.
  CHECK(old.stats().bytes == charge<V1>("k", "v"));
}

TEST_CASE("kv cache: LRU eviction by memory") {
  // Room for exactly three entries of this size.
  const std::string value(100, 'x');
  V2 cache(3 * charge("k1", value, "t"));
  CHECK(cache.put("k1", value, "t", 1));
  CHECK(cache.put("k2", value, "t", 2));
  CHECK(cache.put("k3", value, "t", 3));
  CHECK(cache.stats().evictions == 0);
  CHECK(cache.get("k1"));  // k2 is now the least recently used.
  CHECK(cache.put("k4", value, "t", 4));
  CHECK(cache.keys_by_recency() == std::vector<std::string>{"k4", "k1", "k3"});
  CHECK(cache.stats().evictions == 1);
  CHECK(cache.stats().bytes <= cache.max_bytes());

  // A value that grows pushes out the oldest others until it fits. It moves to a larger size class,
  // whose chunk is charged whole: less than two of the old ones, so one other entry stays.
  const std::string grown(150, 'x');
  REQUIRE(charge("k1", grown, "t") > charge("k1", value, "t"));
  REQUIRE(charge("k1", grown, "t") + charge("k4", value, "t") <= cache.max_bytes());
  CHECK(cache.put("k1", grown, "t", 5));
  CHECK(cache.keys_by_recency() == std::vector<std::string>{"k1", "k4"});
  CHECK(cache.stats().bytes == charge("k1", grown, "t") + charge("k4", value, "t"));
  CHECK(cache.peek("k1")->value == grown);

  // An entry larger than the whole budget does not stay.
  CHECK(cache.put("huge", std::string(cache.max_bytes(), 'h'), "t", 6));
  CHECK(cache.stats().entries == 0);
  CHECK(cache.stats().bytes == 0);

  // Many entries through a small budget: the index stays consistent through evictions.
  V1 small(50 * charge<V1>("key-0000", "value"));
  for (int i = 0; i < 5000; ++i) {
    char key[16];
    std::snprintf(key, sizeof key, "key-%04d", i);
    small.put(key, "value", "", static_cast<std::uint64_t>(i + 1));
  }
  CHECK(small.stats().entries == 50);
  CHECK(small.peek("key-4999"));
  CHECK(small.peek("key-4950"));
  CHECK_FALSE(small.peek("key-4949"));
  CHECK(small.stats().evictions == 4950);
}

TEST_CASE("kv cache: snapshot v2 -> v2 keeps content types, stamps and LRU order") {
  V2 from(1 << 20);
  from.put("a", "apple", "text/plain", 1);
  from.put("b", "banana", "application/json", 2);
  from.put("c", "", "", 3);
  from.put("d", std::string(5000, 'd'), "image/png", 4);
  from.get("a");  // Order, most recent first: a d c b.
  V2 to(1 << 20);
  to.put("stale", "x", "", 1);  // Replaced by the import.
  load(to, 2, snapshot(from, 2));
  CHECK(dump(to) == dump(from));
  CHECK(to.keys_by_recency() == std::vector<std::string>{"a", "d", "c", "b"});
  CHECK(to.peek("b")->content_type == "application/json");
  CHECK_FALSE(to.peek("stale"));
  CHECK(to.stats().bytes == from.stats().bytes);

  // An importer with a smaller budget keeps the most recently used entries.
  V2 small(charge("a", "apple", "text/plain") + charge("d", std::string(5000, 'd'), "image/png"));
  load(small, 2, snapshot(from, 2));
  CHECK(small.keys_by_recency() == std::vector<std::string>{"a", "d"});

  // An empty cache round-trips too.
  V2 empty(1 << 20);
  load(to, 2, snapshot(empty, 2));
  CHECK(to.stats().entries == 0);
}

TEST_CASE("kv cache: downgrade v2 -> v1 keeps keys and values, drops content types") {
  V2 from(1 << 20);
  from.put("a", "apple", "text/plain", 1);
  from.put("b", "banana", "application/json", 2);
  V1 to(1 << 20);
  load(to, 1, snapshot(from, 1));
  CHECK(to.keys_by_recency() == std::vector<std::string>{"b", "a"});
  CHECK(to.peek("a")->value == "apple");
  CHECK(to.peek("b")->value == "banana");
  CHECK(to.peek("b")->stamp == 2);
  CHECK(to.stats().bytes == charge<V1>("a", "apple") + charge<V1>("b", "banana"));
}

TEST_CASE("kv cache: upgrade v1 -> v2 loads with the default content type") {
  V1 from(1 << 20);
  from.put("a", "apple", "ignored", 1);
  from.put("b", "banana", "", 2);
  V2 to(1 << 20);
  load(to, 1, snapshot(from, 1));
  CHECK(to.keys_by_recency() == std::vector<std::string>{"b", "a"});
  CHECK(to.peek("a")->value == "apple");
  CHECK(to.peek("a")->content_type.empty());
  CHECK(kv::served_content_type(to.peek("a")->content_type) == "application/octet-stream");
  // And back: the v2 cache writes version 1 for a v1 importer.
  V1 back(1 << 20);
  load(back, 1, snapshot(to, 1));
  CHECK(dump(back) == dump(from));
}

TEST_CASE("kv cache: versions each schema reads and writes") {
  CHECK(V1::versions() == std::vector<std::uint32_t>{1});
  CHECK(V2::versions() == std::vector<std::uint32_t>{1, 2});
  V1 v1(1 << 20);
  V2 v2(1 << 20);
  std::ostringstream out;
  CHECK_THROWS_AS(v1.save(2, out), std::invalid_argument);
  CHECK_THROWS_AS(v2.save(3, out), std::invalid_argument);
  CHECK_THROWS_AS(v2.save(0, out), std::invalid_argument);
  CHECK_THROWS_AS(load(v1, 2, snapshot(v2, 2)), std::invalid_argument);
  CHECK_THROWS_AS(V1::encode_put_delta(2, "k", "v", "t", 1), std::invalid_argument);
  CHECK_THROWS_AS(v1.apply_delta(2, V2::encode_erase_delta(2, "k", 1)), std::invalid_argument);
}

TEST_CASE("kv cache: a truncated or corrupted snapshot throws and leaves the cache untouched") {
  V2 from(1 << 20);
  from.put("alpha", "one", "text/plain", 1);
  from.put("beta", "two", "", 2);
  const std::string good = snapshot(from, 2);  // The arena layout.
  REQUIRE(good.substr(0, 8) == Writer().u64(kv::kArenaMagic).bytes());
  // The same entries in the entries layout, as kv-cache wrote them before the arena (and as it
  // still writes an older schema).
  const std::string legacy =
      Writer().u64(2).str("alpha").str("one").str("text/plain").u64(1).str("beta").str("two").str("").u64(2).bytes();

  V2 cache(1 << 20);
  cache.put("mine", "keep me", "text/plain", 7);
  cache.get("mine");
  const auto before = dump(cache);
  const auto stats_before = cache.stats();

  for (const auto* bytes : {&good, &legacy}) {
    CAPTURE(bytes == &good ? "arena" : "entries");
    // Every strict prefix of a snapshot is incomplete.
    for (std::size_t n = 0; n < bytes->size(); ++n) {
      CAPTURE(n);
      CHECK_THROWS_AS(load(cache, 2, bytes->substr(0, n)), hotrestart::ArchiveError);
    }
    CHECK_THROWS_AS(load(cache, 2, *bytes + '\0'), hotrestart::ArchiveError);  // Trailing bytes.
    // The same bytes read as version 1 do not line up.
    CHECK_THROWS_AS(load(cache, 1, *bytes), hotrestart::ArchiveError);
  }
  // A count one too many or one too few: in the entries layout, its first field; in the arena,
  // the header's (after the magic, schema, page size, hash and a reserved field).
  CHECK_THROWS_AS(load(cache, 2, Writer().u64(3).bytes() + legacy.substr(8)), hotrestart::ArchiveError);
  CHECK_THROWS_AS(load(cache, 2, Writer().u64(1).bytes() + legacy.substr(8)), hotrestart::ArchiveError);
  REQUIRE(good.substr(24, 8) == Writer().u64(2).bytes());
  CHECK_THROWS_AS(load(cache, 2, good.substr(0, 24) + Writer().u64(3).bytes() + good.substr(32)),
                  hotrestart::ArchiveError);
  CHECK_THROWS_AS(load(cache, 2, good.substr(0, 24) + Writer().u64(1).bytes() + good.substr(32)),
                  hotrestart::ArchiveError);
  // A string length past the end.
  CHECK_THROWS_AS(load(cache, 2, Writer().u64(1).u64(1000).bytes() + std::string(100, 'k')), hotrestart::ArchiveError);
  // The same key twice.
  CHECK_THROWS_AS(
      load(cache, 2, Writer().u64(2).str("k").str("v").str("").u64(1).str("k").str("w").str("").u64(2).bytes()),
      hotrestart::ArchiveError);

  CHECK(dump(cache) == before);
  CHECK(cache.stats().entries == stats_before.entries);
  CHECK(cache.stats().bytes == stats_before.bytes);
  // And it still works, from either layout.
  load(cache, 2, legacy);
  CHECK(dump(cache) == dump(from));
  load(cache, 2, good);
  CHECK(dump(cache) == dump(from));
  CHECK(cache.keys_by_recency() == std::vector<std::string>{"beta", "alpha"});
}

TEST_CASE("kv cache: a snapshot with a huge count throws without allocating") {
  V2 cache(std::uint64_t{1} << 40);
  cache.put("mine", "keep", "", 1);
  const std::string huge_count = Writer().u64(std::uint64_t{1} << 62).str("k").str("v").str("").u64(1).bytes();
  const std::string huge_string = Writer().u64(1).u64(std::uint64_t{1} << 50).bytes() + std::string(64, 'k');
  const std::string many_small = Writer().u64(std::uint64_t{1} << 30).bytes() + std::string(64, '\0');
  // Arenas that claim more than they hold, made from an empty cache's (its header, class table, no
  // page, an index of 16 slots and the list heads). Pages and index tables are mapped rather than
  // allocated, so the bytes mapped are bounded the same way.
  const std::string empty = snapshot(V2(1 << 20), 2);
  // After the header, the class table and the free-list heads.
  const std::size_t pages_at = 44 + 8 * std::size_t{get_u32(empty, 40)};
  REQUIRE(get_u32(empty, pages_at) == 0);
  REQUIRE(get_u64(empty, pages_at + 4) == 16);
  const std::string many_pages = with_u32(empty, pages_at, 65535);
  const std::string page_without_data =
      with_u32(empty, pages_at, 1).insert(pages_at + 4, Writer().u32(0).u32(40000).u64(kv::kPageBytes).bytes());
  const std::string huge_index = with_u64(empty, pages_at + 4, std::uint64_t{1} << 32);
  const std::string count_beyond_index = with_u64(empty, 24, std::uint64_t{1} << 60);
  for (const auto* bytes :
       {&huge_count, &huge_string, &many_small, &many_pages, &page_without_data, &huge_index, &count_beyond_index}) {
    const std::uint64_t before = g_allocated.load();
    const std::uint64_t mapped_before = kv::arena_bytes_mapped_total();
    CHECK_THROWS_AS(load(cache, 2, *bytes), hotrestart::ArchiveError);
    const std::uint64_t used = g_allocated.load() - before;
    CHECK(used < 256 * 1024);
    CHECK(kv::arena_bytes_mapped_total() - mapped_before < 256 * 1024);
  }
  CHECK(cache.peek("mine")->value == "keep");
  CHECK(cache.stats().entries == 1);
}

namespace {

// Entries of many sizes: several size classes, values large enough for a class of their own and,
// one for a page of its own; erased entries on the free lists; and an order
// that is not the order of insertion.
template <class Cache>
void fill_varied(Cache& cache, int n, std::uint64_t stamp0, int spread = 700) {
  for (int i = 0; i < n; ++i) {
    std::size_t size = static_cast<std::size_t>(i * 37 % spread);
    if (i % 97 == 0) size = 20'000 + static_cast<std::size_t>(i);
    if (i == 50) size = (std::size_t{1} << 20) + 100;  // Past the largest class.
    cache.put("key" + std::to_string(i), std::string(size, static_cast<char>('a' + i % 26)),
              i % 3 == 0 ? "text/plain" : "", stamp0 + static_cast<std::uint64_t>(i));
  }
  for (int i = 0; i < n; i += 7)
    cache.erase("key" + std::to_string(i), stamp0 + static_cast<std::uint64_t>(n + i));
  for (int i = 1; i < n; i += 11)
    cache.get("key" + std::to_string(i));
}

// Where the fields of an arena snapshot are, read from the layout snapshot.cpp documents: {offset,
// width} of every integer of the header and tables, of every chunk header, and of every index slot.
std::vector<std::pair<std::size_t, int>> arena_fields(const std::string& b) {
  std::vector<std::pair<std::size_t, int>> f = {{8, 4}, {12, 4}, {16, 4}, {20, 4}, {24, 8}, {32, 4}, {36, 4}, {40, 4}};
  std::size_t at = 44;
  std::vector<std::uint32_t> sizes;
  for (std::uint32_t k = get_u32(b, 40); k > 0; --k, at += 4) {
    sizes.push_back(get_u32(b, at));
    f.emplace_back(at, 4);
  }
  for (std::size_t k = 0; k < sizes.size(); ++k, at += 4)
    f.emplace_back(at, 4);  // Free-list heads.
  const std::uint32_t pages = get_u32(b, at);
  f.emplace_back(at, 4);
  at += 4;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;  // {chunk size, chunks} per page.
  for (std::uint32_t p = 0; p < pages; ++p, at += 16) {
    const std::uint32_t kind = get_u32(b, at);
    if (kind == kv::kDedicatedPage) spans.emplace_back(get_u64(b, at + 8), 1);
    if (kind < sizes.size()) spans.emplace_back(sizes[kind], get_u32(b, at + 4));
    f.insert(f.end(), {{at, 4}, {at + 4, 4}, {at + 8, 8}});
  }
  for (const auto& [chunk, chunks] : spans) {
    for (std::uint64_t c = 0; c < chunks; ++c, at += chunk)
      f.insert(f.end(), {{at, 8}, {at + 8, 4}, {at + 12, 4}, {at + 16, 4}, {at + 20, 2}, {at + 22, 2}});
  }
  const std::uint64_t slots = get_u64(b, at);
  f.emplace_back(at, 8);
  at += 8;
  for (std::uint64_t s = 0; s < slots; ++s, at += 8)
    f.insert(f.end(), {{at, 4}, {at + 4, 4}});
  REQUIRE(at == b.size());
  return f;
}

}  // namespace

TEST_CASE("kv cache: an arena snapshot carries the store as it is, free chunks and all") {
  V2 from(16 << 20);
  fill_varied(from, 2000, 1);
  const std::string bytes = snapshot(from, 2);
  REQUIRE(bytes.substr(0, 8) == Writer().u64(kv::kArenaMagic).bytes());
  V2 to(16 << 20);
  to.put("stale", "x", "", 1);
  load(to, 2, bytes);
  CHECK(dump(to) == dump(from));
  const auto a = from.stats();
  const auto b = to.stats();
  CHECK(b.entries == a.entries);
  CHECK(b.bytes == a.bytes);
  CHECK(b.page_bytes == a.page_bytes);
  CHECK(b.index_bytes == a.index_bytes);
  CHECK(b.evictions == 0);
  // Both go on exactly alike: the free lists, the pages with room and the free page numbers came
  // over, so the same changes leave byte-identical stores (including the page of its own that key50
  // gives up, and values that move to another class).
  for (V2* c : {&from, &to}) {
    fill_varied(*c, 1500, 100'000);
    c->put("key50", "small now", "", 200'000);
    c->put("late", std::string(3 << 20, 'l'), "", 200'001);
  }
  CHECK(dump(to) == dump(from));
  CHECK(snapshot(to, 2) == snapshot(from, 2));
}

TEST_CASE("kv cache: v1's arena reaches v2 entry by entry, and v2 writes v1 entries") {
  const std::string magic = Writer().u64(kv::kArenaMagic).bytes();
  V1 v1(16 << 20);
  fill_varied(v1, 1000, 1);
  const std::string arena1 = snapshot(v1, 1);
  REQUIRE(arena1.substr(0, 8) == magic);
  V1 same(16 << 20);
  load(same, 1, arena1);  // v1 -> v1: taken as it is.
  CHECK(dump(same) == dump(v1));
  V2 up(16 << 20);
  load(up, 1, arena1);  // v1 -> v2: converted, without content types.
  CHECK(dump(up) == dump(v1));
  const std::string entries1 = snapshot(up, 1);  // v2 -> v1: the entries layout.
  REQUIRE(entries1.substr(0, 8) != magic);
  CHECK(get_u64(entries1, 0) == up.stats().entries);
  V1 down(16 << 20);
  load(down, 1, entries1);
  CHECK(dump(down) == dump(v1));

  // An importer with a smaller budget keeps the most recently used entries, on either path.
  const auto all = v1.keys_by_recency();
  V1 small1(v1.stats().bytes / 2);
  V2 small2(v1.stats().bytes / 2);
  load(small1, 1, arena1);
  load(small2, 1, arena1);
  for (const auto& keys : {small1.keys_by_recency(), small2.keys_by_recency()}) {
    CHECK(keys.size() > 0);
    CHECK(keys.size() < all.size());
    CHECK(std::equal(keys.begin(), keys.end(), all.begin()));
  }
  CHECK(small1.stats().bytes <= small1.max_bytes());
  CHECK(small2.stats().bytes <= small2.max_bytes());
}

TEST_CASE("kv cache: memory stays within its budget when entry sizes shift") {
  const std::uint64_t max = 8 << 20;
  V2 cache(max);
  std::uint64_t stamp = 1;
  std::uint64_t classes = 0;
  for (const std::size_t size : {100, 1000, 20'000, 300'000, 1'500'000}) {
    ++classes;
    const std::size_t n = 2 * max / size + 10;
    for (std::size_t i = 0; i < n; ++i)
      cache.put(std::to_string(size) + "-" + std::to_string(i), std::string(size, 'v'), "", stamp++);
    const auto s = cache.stats();
    CAPTURE(size);
    CHECK(s.bytes <= max);
    CHECK(s.evictions > 0);
    // Pages: the budget, and one page for each class in use (a page of its own is not a class).
    CHECK(s.page_bytes <= max + classes * kv::kPageBytes);
  }
  for (const auto& key : cache.keys_by_recency())
    CHECK(cache.erase(key, stamp++));
  const auto s = cache.stats();
  CHECK(s.entries == 0);
  CHECK(s.bytes == 0);
  // Empty pages are given back, but for the last of each class.
  CHECK(s.page_bytes <= (classes - 1) * kv::kPageBytes);

  // A value past the largest class takes a page of its own, charged whole, and gives it back.
  V2 big(64 << 20);
  const std::string value((std::size_t{3} << 20) + 5, 'b');
  CHECK(charge("big", value) == (kv::kChunkHeaderBytes + 3 + value.size() + 4095) / 4096 * 4096);
  CHECK(big.put("big", value, "", 1));
  CHECK(big.stats().bytes == charge("big", value));
  CHECK(big.stats().page_bytes == charge("big", value));
  CHECK(big.peek("big")->value == value);
  CHECK(big.erase("big", 2));
  CHECK(big.stats().page_bytes == 0);
}

TEST_CASE("kv cache: prefill fills deterministic entries") {
  CHECK(kv::prefill_key(0) == "key-0000000000");
  CHECK(kv::prefill_key(1234) == "key-0000001234");
  V2 cache(64 << 20);
  cache.prefill(10'000, 64);
  std::string expect;
  kv::prefill_value(1234, 64, expect);
  CHECK(expect.size() == 64);
  CHECK(cache.stats().entries == 10'000);
  CHECK(cache.stats().bytes == 10'000 * charge(kv::prefill_key(0), expect));
  CHECK(cache.peek(kv::prefill_key(1234))->value == expect);
  CHECK(cache.keys_by_recency().front() == kv::prefill_key(9999));
  CHECK(cache.put("key-0000001234", "newer", "", kv::monotonic_ns() + 1'000'000'000));
}

// Corrupts a valid arena snapshot in many random ways: each load must either throw ArchiveError
// and leave the cache as it was, or give a store that works. Run it under AddressSanitizer.
TEST_CASE("kv cache: random corruptions of an arena snapshot never crash") {
  // Fewer size classes than elsewhere (values up to 150 bytes, and a few larger): every round maps
  // a page per class, and this test runs under AddressSanitizer too.
  V2 from(4 << 20);
  fill_varied(from, 300, 1, 150);
  const std::string good = snapshot(from, 2);
  const auto fields = arena_fields(good);
  std::mt19937_64 rng(20240611);
  auto pick = [&](std::uint64_t n) { return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng); };
  int accepted = 0;
  int rejected = 0;
  for (int round = 0; round < 2000; ++round) {
    std::string bytes = good;
    const std::uint64_t mutations = 1 + pick(3);
    for (std::uint64_t m = 0; m < mutations; ++m) {
      const std::uint64_t how = pick(20);
      if (how == 0) {
        bytes.resize(pick(bytes.size()));  // Truncated.
      } else if (how == 1) {
        bytes += std::string(1 + pick(64), static_cast<char>(pick(256)));  // Extended.
      } else if (how <= 4) {
        bytes[pick(bytes.size())] ^= static_cast<char>(1 + pick(255));  // A byte anywhere.
      } else {
        const auto [at, width] = fields[pick(fields.size())];
        if (at + static_cast<std::size_t>(width) > bytes.size()) continue;
        std::uint64_t old = 0;
        std::memcpy(&old, bytes.data() + at, static_cast<std::size_t>(width));
        const std::uint64_t choices[] = {0,
                                         1,
                                         old + 1,
                                         old - 1,
                                         ~std::uint64_t{0},
                                         rng(),
                                         pick(8) << 16 | pick(64),  // A chunk id that may exist.
                                         old ^ (std::uint64_t{1} << pick(static_cast<std::uint64_t>(width) * 8))};
        const std::uint64_t v = choices[pick(std::size(choices))];
        std::memcpy(bytes.data() + at, &v, static_cast<std::size_t>(width));
      }
    }
    CAPTURE(round);
    V2 cache(4 << 20);
    cache.put("mine", "keep me", "", 1);
    try {
      load(cache, 2, bytes);
    } catch (const hotrestart::ArchiveError&) {
      ++rejected;
      REQUIRE(dump(cache) == std::vector<std::string>{"mine=keep me;;1"});
      continue;
    }
    ++accepted;
    // Accepted (a corruption of bytes that are no structure, such as a value's): the store must
    // hold together through lookups, changes, evictions and another snapshot.
    const auto keys = cache.keys_by_recency();
    REQUIRE(keys.size() == cache.stats().entries);
    for (const auto& key : keys)
      static_cast<void>(cache.peek(key));
    std::uint64_t stamp = std::uint64_t{1} << 40;
    for (std::size_t i = 0; i < 40; ++i) {
      cache.put("new" + std::to_string(i), std::string(i * 4099 % 30'000, 'n'), "t", stamp++);
      if (!keys.empty()) cache.erase(keys[i * 7 % keys.size()], stamp++);
      static_cast<void>(cache.get(keys.empty() ? "none" : keys[i * 3 % keys.size()]));
    }
    cache.put("huge", std::string(1'500'000, 'h'), "", stamp++);
    REQUIRE(cache.stats().bytes <= cache.max_bytes());
    V2 again(4 << 20);
    try {
      load(again, 2, snapshot(cache, 2));
      CHECK(again.stats().entries == cache.stats().entries);
    } catch (const hotrestart::ArchiveError& e) {
      // A corrupted key no longer matches its hash: such an entry cannot be found, which only a
      // sample of the slots is checked for, and moving slots can bring it into the sample.
      CHECK_MESSAGE(std::string(e.what()).find("hashes") != std::string::npos, std::string(e.what()));
    }
  }
  MESSAGE("corrupted arenas: " << rejected << " rejected, " << accepted << " accepted");
  CHECK(rejected > 1300);
}

TEST_CASE("kv cache: deltas resolve last writer wins, with tombstones while the previous generation lives") {
  V2 cache(1 << 20);
  auto put = [&](std::string_view key, std::string_view value, std::uint64_t stamp) {
    cache.apply_delta(2, V2::encode_put_delta(2, key, value, "text/plain", stamp));
  };
  auto erase = [&](std::string_view key, std::uint64_t stamp) {
    cache.apply_delta(2, V2::encode_erase_delta(2, key, stamp));
  };
  put("k", "v100", 100);
  CHECK(cache.peek("k")->value == "v100");
  CHECK(cache.peek("k")->content_type == "text/plain");
  put("k", "v50", 50);  // Older: ignored.
  CHECK(cache.peek("k")->value == "v100");
  put("k", "v200", 200);  // Newer: applied.
  CHECK(cache.peek("k")->value == "v200");
  put("k", "again", 200);  // The same write seen twice (snapshot and delta): no change.
  CHECK(cache.peek("k")->value == "v200");
  erase("k", 150);  // Older than the entry: ignored.
  CHECK(cache.peek("k")->value == "v200");
  erase("k", 300);
  CHECK_FALSE(cache.peek("k"));
  CHECK(cache.stats().tombstones == 1);
  put("k", "v250", 250);  // Written before the delete: the tombstone keeps it deleted.
  CHECK_FALSE(cache.peek("k"));
  put("k", "v400", 400);  // Written after it: back.
  CHECK(cache.peek("k")->value == "v400");
  CHECK(cache.stats().tombstones == 0);

  erase("gone", 500);  // An erase of an absent key still guards it.
  put("gone", "old", 450);
  CHECK_FALSE(cache.peek("gone"));

  // The previous generation has exited: no late change can come, so no tombstones are kept.
  cache.drop_tombstones();
  CHECK(cache.stats().tombstones == 0);
  erase("k", 600);
  CHECK(cache.stats().tombstones == 0);
  put("k", "v550", 550);
  CHECK(cache.peek("k")->value == "v550");

  // Version 1 deltas, as a v1 generation sends them to a v2 one (and the reverse).
  cache.apply_delta(1, V1::encode_put_delta(1, "one", "from v1", "", 700));
  CHECK(cache.peek("one")->value == "from v1");
  CHECK(cache.peek("one")->content_type.empty());
  V1 old(1 << 20);
  old.apply_delta(1, V2::encode_put_delta(1, "two", "from v2", "text/plain", 1));
  CHECK(old.peek("two")->value == "from v2");
}

TEST_CASE("kv cache: local writes are published before they are applied") {
  V2 cache(1 << 20);
  cache.put("k", "replayed", "", kv::monotonic_ns() + 1'000'000'000);  // A stamp ahead of the clock.
  std::vector<std::uint64_t> published;
  auto accept = [&](std::uint64_t stamp) {
    published.push_back(stamp);
    return true;
  };
  auto refuse = [&](std::uint64_t stamp) {
    published.push_back(stamp);
    return false;
  };
  CHECK(cache.put_local("k", "mine", "text/plain", accept) == kv::WriteResult::kApplied);
  REQUIRE(published.size() == 1);
  CHECK(cache.peek("k")->value == "mine");  // Its stamp is above every stamp seen.
  CHECK(cache.peek("k")->stamp == published[0]);
  CHECK(cache.put_local("k", "lost", "", refuse) == kv::WriteResult::kRefused);
  CHECK(cache.peek("k")->value == "mine");  // Refused: not applied.
  CHECK(cache.erase_local("k", refuse) == kv::WriteResult::kRefused);
  CHECK(cache.peek("k"));
  CHECK(cache.erase_local("k", accept) == kv::WriteResult::kApplied);
  CHECK(cache.erase_local("k", accept) == kv::WriteResult::kAbsent);  // Still published.
  CHECK(published.size() == 5);
  for (std::size_t i = 1; i < published.size(); ++i)
    CHECK(published[i] > published[i - 1]);
}

TEST_CASE("kv cache: garbage deltas throw and change nothing") {
  V2 cache(1 << 20);
  cache.put("k", "v", "", 1);
  const std::string good = V2::encode_put_delta(2, "k", "new", "", 5);
  std::vector<std::string> garbage = {
      "",
      std::string(1, '\x07'),                              // Unknown operation.
      Writer().u8(9).str("k").u64(5).bytes(),              // Unknown operation, well formed.
      good.substr(0, good.size() - 1),                     // Truncated.
      good + "x",                                          // Trailing bytes.
      Writer().u8(1).u64(std::uint64_t{1} << 60).bytes(),  // A key longer than the data.
      Writer().u8(2).str("k").bytes(),                     // An erase without its stamp.
      std::string(200, '\xff'),
  };
  for (const auto& bytes : garbage) {
    CAPTURE(bytes.size());
    CHECK_THROWS(cache.apply_delta(2, bytes));
  }
  CHECK(cache.peek("k")->value == "v");
  CHECK(cache.stats().entries == 1);
  cache.apply_delta(2, good);
  CHECK(cache.peek("k")->value == "new");
}

TEST_CASE("kv cache: snapshots while another thread writes") {
  V2 cache(1 << 20);
  std::atomic<bool> done{false};
  std::thread writer([&] {
    for (int i = 0; i < 20000; ++i) {
      cache.put_local("key" + std::to_string(i % 500), std::to_string(i), "text/plain",
                      [](std::uint64_t) { return true; });
      if (i % 3 == 0) cache.erase_local("key" + std::to_string((i * 7) % 500), [](std::uint64_t) { return true; });
    }
    done = true;
  });
  int rounds = 0;
  while (!done || rounds == 0) {
    V2 copy(1 << 20);
    load(copy, 2, snapshot(cache, 2));  // Each snapshot is consistent: it loads.
    CHECK(copy.stats().entries <= 500);
    ++rounds;
  }
  writer.join();
  V2 copy(1 << 20);
  load(copy, 2, snapshot(cache, 2));
  CHECK(dump(copy) == dump(cache));
}

// The same section and write path as the server (kv::make_section, kv::publish_put/erase), through
// the SDK's real framing: a sealed memfd for the snapshot, then deltas over the peer link.
TEST_CASE("kv cache: a v1 worker's cache reaches a v2 worker through the SDK") {
  using hotrestart::testing::StubSupervisor;
  V1 c1(1 << 20);
  V2 c2(1 << 20);
  hotrestart::Worker::Options small_deltas;
  small_deltas.max_delta_bytes = 200'000;
  hotrestart::Worker w1(small_deltas);
  hotrestart::Worker w2;
  w1.add_section(kv::make_section(c1));
  w2.add_section(kv::make_section(c2));
  bool previous_gone = false;
  w2.on_previous_gone([&] {
    c2.drop_tombstones();
    previous_gone = true;
  });
  REQUIRE(StubSupervisor::start(w1).empty());
  for (int i = 0; i < 1000; ++i) {
    const std::string n = std::to_string(i);
    REQUIRE(kv::publish_put(c1, w1, "key" + n, "value" + n, "text/plain") == kv::WriteResult::kApplied);
  }
  CHECK(c1.get("key0"));

  REQUIRE(StubSupervisor::start_from(w2, w1).empty());
  REQUIRE(w2.imported().size() == 1);
  const auto& imported = w2.imported()[0];
  CHECK(imported.name == "cache");
  CHECK(imported.imported);
  CHECK(imported.version == 1);  // The newest version both read: v1 writes only 1.
  CHECK(imported.bytes > 0);
  CHECK(c2.keys_by_recency() == c1.keys_by_recency());
  CHECK(c2.peek("key5")->value == "value5");
  CHECK(c2.peek("key5")->content_type.empty());
  CHECK(c2.stats().entries == 1000);

  // Writes v1 accepts after its snapshot arrive as deltas.
  CHECK(kv::publish_put(c1, w1, "late", "after the snapshot", "") == kv::WriteResult::kApplied);
  CHECK(kv::publish_erase(c1, w1, "key1") == kv::WriteResult::kApplied);
  CHECK(kv::publish_erase(c1, w1, "never-there") == kv::WriteResult::kAbsent);
  CHECK(StubSupervisor::pump(w2) == 3);
  CHECK(c2.peek("late")->value == "after the snapshot");
  CHECK_FALSE(c2.peek("key1"));
  CHECK(c2.stats().tombstones == 2);
  CHECK(c2.stats().deltas == 3);

  // v2 writes on its own meanwhile; a late, older change from v1 loses to it.
  const std::string older = V1::encode_put_delta(1, "key2", "older", "", 1);
  CHECK(kv::publish_put(c2, w2, "key2", "from v2", "application/json") == kv::WriteResult::kApplied);
  c2.apply_delta(1, older);
  CHECK(c2.peek("key2")->value == "from v2");
  CHECK(c2.peek("key2")->content_type == "application/json");

  // A change too large for one channel message travels in a memfd and arrives whole.
  CHECK(kv::publish_put(c1, w1, "big", std::string(100'000, 'x'), "") == kv::WriteResult::kApplied);
  CHECK(StubSupervisor::pump(w2) == 1);
  REQUIRE(c2.peek("big"));
  CHECK(c2.peek("big")->value == std::string(100'000, 'x'));
  // One larger than the SDK may send (max_delta_bytes) is refused rather than acknowledged, and not
  // applied.
  CHECK(kv::publish_put(c1, w1, "huge", std::string(300'000, 'x'), "") == kv::WriteResult::kRefused);
  CHECK_FALSE(c1.peek("huge"));
  CHECK(StubSupervisor::pump(w2) == 0);

  // v1 exits: its tombstones in v2 are no longer needed.
  StubSupervisor::end_previous(w1);
  StubSupervisor::pump(w2);
  CHECK(previous_gone);
  CHECK(c2.stats().tombstones == 0);
}

TEST_CASE("kv cache: v2 -> v2 keeps content types and v2 -> v1 drops them, through the SDK") {
  using hotrestart::testing::StubSupervisor;
  V2 from(1 << 20);
  hotrestart::Worker w_from;
  w_from.add_section(kv::make_section(from));
  REQUIRE(StubSupervisor::start(w_from).empty());
  REQUIRE(kv::publish_put(from, w_from, "doc", "{}", "application/json") == kv::WriteResult::kApplied);
  REQUIRE(kv::publish_put(from, w_from, "raw", std::string("\0\1\2", 3), "") == kv::WriteResult::kApplied);

  SUBCASE("to v2") {
    V2 to(1 << 20);
    hotrestart::Worker w_to;
    w_to.add_section(kv::make_section(to));
    REQUIRE(StubSupervisor::start_from(w_to, w_from).empty());
    CHECK(w_to.imported().at(0).version == 2);
    CHECK(dump(to) == dump(from));
    // Deltas go in version 2 too, with their content type.
    CHECK(kv::publish_put(from, w_from, "late", "<p>", "text/html") == kv::WriteResult::kApplied);
    CHECK(StubSupervisor::pump(w_to) == 1);
    CHECK(to.peek("late")->content_type == "text/html");
  }
  SUBCASE("to v1") {
    V1 to(1 << 20);
    hotrestart::Worker w_to;
    w_to.add_section(kv::make_section(to));
    REQUIRE(StubSupervisor::start_from(w_to, w_from).empty());
    CHECK(w_to.imported().at(0).version == 1);
    CHECK(to.keys_by_recency() == from.keys_by_recency());
    CHECK(to.peek("doc")->value == "{}");
    CHECK(to.peek("raw")->value == std::string("\0\1\2", 3));
    CHECK(kv::publish_put(from, w_from, "late", "<p>", "text/html") == kv::WriteResult::kApplied);
    CHECK(StubSupervisor::pump(w_to) == 1);
    CHECK(to.peek("late")->value == "<p>");
  }
}

TEST_CASE("kv cache: a same-schema upgrade maps the arena as it is, and each side's later writes stay its own") {
  using hotrestart::testing::StubSupervisor;
  V2 from(16 << 20);
  hotrestart::Worker w_from;
  w_from.add_section(kv::make_section(from));
  REQUIRE(StubSupervisor::start(w_from).empty());
  fill_varied(from, 2000, 1, 300);
  REQUIRE(kv::publish_put(from, w_from, "big", std::string(3 << 20, 'b'), "") == kv::WriteResult::kApplied);
  REQUIRE(kv::publish_put(from, w_from, "shared", "before", "text/plain") == kv::WriteResult::kApplied);
  const auto before = dump(from);

  V2 to(16 << 20);
  hotrestart::Worker w_to;
  w_to.add_section(kv::make_section(to));
  bool reclaimed = false;
  w_to.on_previous_gone([&] {
    to.drop_tombstones();
    reclaimed = to.reclaim_memory();
  });
  REQUIRE(StubSupervisor::start_from(w_to, w_from).empty());
  REQUIRE(w_to.imported().at(0).imported);
  CHECK(w_to.imported().at(0).version == 2);
  CHECK(to.last_load().layout == "mapped arena");
  CHECK(to.last_load().copy_micros == 0);
  CHECK(dump(to) == before);

  // Both go on writing to the same pages; neither sees the other's bytes (only deltas cross).
  to.put("shared", "written by the new one", "", kv::monotonic_ns());
  CHECK(from.peek("shared")->value == "before");
  REQUIRE(kv::publish_put(from, w_from, "shared", "written by the old one", "") == kv::WriteResult::kApplied);
  CHECK(to.peek("shared")->value == "written by the new one");
  CHECK(StubSupervisor::pump(w_to) == 1);
  CHECK(to.peek("shared")->value == "written by the old one");  // The later write wins.
  CHECK(from.peek("big")->value == std::string(3 << 20, 'b'));
  // The memory is lent: neither side can hand it on yet, nor make it its own.
  CHECK_FALSE(to.reclaim_memory());
  CHECK_FALSE(from.reclaim_memory());

  // The old generation is gone: the new one owns its memory and hands it on as it is again.
  const auto after = dump(to);
  StubSupervisor::end_previous(w_from);
  StubSupervisor::pump(w_to);
  CHECK(reclaimed);
  CHECK(dump(to) == after);
  V2 third(16 << 20);
  hotrestart::Worker w_third;
  w_third.add_section(kv::make_section(third));
  REQUIRE(StubSupervisor::start_from(w_third, w_to).empty());
  CHECK(third.last_load().layout == "mapped arena");
  CHECK(dump(third) == after);

  // To another schema the store goes serialized, entry by entry.
  V1 older(16 << 20);
  hotrestart::Worker w_older;
  w_older.add_section(kv::make_section(older));
  hotrestart::testing::StubSupervisor::end_previous(w_to);
  StubSupervisor::pump(w_third);
  REQUIRE(third.reclaim_memory());
  REQUIRE(StubSupervisor::start_from(w_older, w_third).empty());
  CHECK(w_older.imported().at(0).version == 1);
  CHECK(older.last_load().layout == "entries");
  CHECK(older.keys_by_recency() == third.keys_by_recency());

  // A cache with a much larger budget would outgrow the arena's address space: it copies.
  V2 larger(std::uint64_t{64} << 30);
  hotrestart::Worker w_larger;
  w_larger.add_section(kv::make_section(larger));
  REQUIRE(StubSupervisor::start_from(w_larger, w_third).empty());
  CHECK(larger.last_load().layout == "mapped arena with a smaller reserve, copied entry by entry");
  CHECK(larger.keys_by_recency() == third.keys_by_recency());
}

TEST_CASE("kv cache: random corruptions of a mapped arena's header never crash") {
  V2 from(4 << 20);
  fill_varied(from, 300, 1, 150);
  from.put("huge", std::string(1'500'000, 'h'), "", kv::monotonic_ns());
  const auto before = dump(from);
  std::ostringstream out;
  auto snap = from.save_mapped(2, out);
  REQUIRE(snap);
  const std::string good = out.str();
  auto written = hotrestart::wire::write_arena_section("cache", 2, 1, good, snap);
  REQUIRE(written);
  auto open = [&](std::string_view header) {
    // The header goes in a section of its own each round; the arena memfd is shared by all.
    auto section = hotrestart::wire::write_arena_section("cache", 2, 1, header, snap);
    REQUIRE(section);
    auto opened =
        hotrestart::wire::open_arena_section(std::move(section->header), std::move(section->arena), section->offer,
                                             std::uint64_t{1} << 40, std::make_shared<std::atomic<bool>>(true));
    REQUIRE(opened);
    return std::move(opened).value();
  };
  std::mt19937_64 rng(20261123);
  auto pick = [&](std::uint64_t n) { return std::uniform_int_distribution<std::uint64_t>(0, n - 1)(rng); };
  int rejected = 0;
  for (int round = 0; round < 300; ++round) {
    std::string bytes = good;
    const std::uint64_t how = pick(4);
    if (how == 0) {
      bytes.resize(pick(bytes.size()));
    } else if (how == 1) {
      bytes[pick(bytes.size())] ^= static_cast<char>(1 + pick(255));
    } else {
      // An aligned field set to a value that may name something real.
      const std::size_t at = pick(bytes.size() / 4) * 4;
      const std::uint64_t values[] = {0, 4096, std::uint64_t{2} << 20, pick(8) << 16 | pick(64), rng()};
      const std::uint64_t v = values[pick(std::size(values))];
      std::memcpy(bytes.data() + at, &v, std::min<std::size_t>(how == 2 ? 4 : 8, bytes.size() - at));
    }
    CAPTURE(round);
    auto opened = open(bytes);
    V2 cache(4 << 20);
    cache.put("mine", "keep me", "", 1);
    hotrestart::wire::SpanStreamBuf buffer(opened.app_header);
    std::istream in(&buffer);
    try {
      cache.load_mapped(2, in, std::move(opened.arena));
    } catch (const hotrestart::ArchiveError&) {
      ++rejected;
      REQUIRE(dump(cache) == std::vector<std::string>{"mine=keep me;;1"});
      continue;
    }
    // Accepted: the store must hold together through lookups and changes.
    for (const auto& key : cache.keys_by_recency())
      static_cast<void>(cache.get(key));
    for (int i = 0; i < 20; ++i)
      cache.put("new" + std::to_string(i), std::string(static_cast<std::size_t>(i) * 997, 'n'), "", kv::monotonic_ns());
  }
  CHECK(rejected > 200);
  CHECK(dump(from) == before);  // The exporter's own view never changed.
}

TEST_CASE("kv cache: settings parse, and every mistake is refused with its line") {
  const auto parsed = [](std::string_view text) { return kv::parse_settings(text); };
  const auto error = [&](std::string_view text) {
    auto p = parsed(text);
    return std::holds_alternative<hotrestart::ConfigError>(p) ? std::get<hotrestart::ConfigError>(p).message
                                                              : std::string("parsed");
  };
  auto ok = parsed("# comment\n\nblock private/\n  block tmp-  \nmax-value-bytes 16\r\n");
  REQUIRE(std::holds_alternative<kv::Settings>(ok));
  const auto& s = std::get<kv::Settings>(ok);
  CHECK(s.blocked == std::vector<std::string>{"private/", "tmp-"});
  CHECK(s.max_value_bytes == 16);
  CHECK(kv::blocked_by(s, "private/x") == "private/");
  CHECK(kv::blocked_by(s, "tmp-1") == "tmp-");
  CHECK(kv::blocked_by(s, "public") == "");

  CHECK(std::get<kv::Settings>(parsed("# only comments\n")).max_value_bytes == 1024 * 1024);
  CHECK(error("block\n") == "line 1: block: give a key prefix");
  CHECK(error("block a b\n") == "line 1: block: a key prefix has no spaces; give one per line");
  CHECK(error("\nmax-value-bytes lots\n") == "line 2: max-value-bytes: 'lots' is not a number of bytes");
  CHECK(error("max-value-bytes\n") == "line 1: max-value-bytes: '' is not a number of bytes");
  CHECK(error("max-value-bytes 1048577\n") == "line 1: max-value-bytes: at most 1048576 (the request limit)");
  CHECK(error("ttl 5\n") == "line 1: unknown setting 'ttl' (expected block or max-value-bytes)");
  CHECK(error(std::string_view("\x7f"
                               "ELF\x02\x01\x00\x00",
                               8)) == "line 1: not text");
}
