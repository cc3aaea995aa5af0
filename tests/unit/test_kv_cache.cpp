// examples/kv-cache's store: LRU by memory, snapshots across schema versions, deltas with
// last-writer-wins, and hostile input.
//
// The schema is a template parameter of kv::Cache and the kv_cache library instantiates both, so
// this one binary checks the v1 binary's cache (Cache<1>) against the v2 binary's (Cache<2>).
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <hotrestart/archive.h>
#include <hotrestart/testing.h>
#include <cereal/types/string.hpp>

#include "cache.h"

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

std::uint64_t charge(std::string_view key, std::string_view value, std::string_view ctype = {}) {
  return key.size() + value.size() + ctype.size() + kv::kEntryOverhead;
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

// Hand-made snapshot bytes, in the layout cache.h documents.
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
  Writer& str(const std::string& s) {
    ar(s);
    return *this;
  }
  std::string bytes() { return out.str(); }
};

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
  CHECK(old.stats().bytes == charge("k", "v"));
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

  // A value that grows pushes out the oldest others until it fits.
  CHECK(cache.put("k1", value + value, "t", 5));
  CHECK(cache.keys_by_recency() == std::vector<std::string>{"k1", "k4"});
  CHECK(cache.stats().bytes == charge("k1", value + value, "t") + charge("k4", value, "t"));

  // An entry larger than the whole budget does not stay.
  CHECK(cache.put("huge", std::string(cache.max_bytes(), 'h'), "t", 6));
  CHECK(cache.stats().entries == 0);
  CHECK(cache.stats().bytes == 0);

  // Many entries through a small budget: the index stays consistent through evictions.
  V1 small(50 * charge("key-0000", "value"));
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
  CHECK(to.stats().bytes == charge("a", "apple") + charge("b", "banana"));
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
  const std::string good = snapshot(from, 2);

  V2 cache(1 << 20);
  cache.put("mine", "keep me", "text/plain", 7);
  cache.get("mine");
  const auto before = dump(cache);
  const auto stats_before = cache.stats();

  // Every strict prefix of a snapshot is incomplete.
  for (std::size_t n = 0; n < good.size(); ++n) {
    CAPTURE(n);
    CHECK_THROWS_AS(load(cache, 2, good.substr(0, n)), hotrestart::ArchiveError);
  }
  CHECK_THROWS_AS(load(cache, 2, good + '\0'), hotrestart::ArchiveError);  // Trailing bytes.
  // The same bytes read as version 1 do not line up.
  CHECK_THROWS_AS(load(cache, 1, good), hotrestart::ArchiveError);
  // A count one too many or one too few.
  CHECK_THROWS_AS(load(cache, 2, Writer().u64(3).bytes() + good.substr(8)), hotrestart::ArchiveError);
  CHECK_THROWS_AS(load(cache, 2, Writer().u64(1).bytes() + good.substr(8)), hotrestart::ArchiveError);
  // A string length past the end.
  CHECK_THROWS_AS(load(cache, 2, Writer().u64(1).u64(1000).bytes() + std::string(100, 'k')), hotrestart::ArchiveError);
  // The same key twice.
  CHECK_THROWS_AS(
      load(cache, 2, Writer().u64(2).str("k").str("v").str("").u64(1).str("k").str("w").str("").u64(2).bytes()),
      hotrestart::ArchiveError);

  CHECK(dump(cache) == before);
  CHECK(cache.stats().entries == stats_before.entries);
  CHECK(cache.stats().bytes == stats_before.bytes);
  // And it still works.
  load(cache, 2, good);
  CHECK(cache.keys_by_recency() == std::vector<std::string>{"beta", "alpha"});
}

TEST_CASE("kv cache: a snapshot with a huge count throws without allocating") {
  V2 cache(std::uint64_t{1} << 40);
  cache.put("mine", "keep", "", 1);
  const std::string huge_count = Writer().u64(std::uint64_t{1} << 62).str("k").str("v").str("").u64(1).bytes();
  const std::string huge_string = Writer().u64(1).u64(std::uint64_t{1} << 50).bytes() + std::string(64, 'k');
  const std::string many_small = Writer().u64(std::uint64_t{1} << 30).bytes() + std::string(64, '\0');
  for (const auto* bytes : {&huge_count, &huge_string, &many_small}) {
    const std::uint64_t before = g_allocated.load();
    CHECK_THROWS_AS(load(cache, 2, *bytes), hotrestart::ArchiveError);
    const std::uint64_t used = g_allocated.load() - before;
    CHECK(used < 256 * 1024);
  }
  CHECK(cache.peek("mine")->value == "keep");
  CHECK(cache.stats().entries == 1);
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
