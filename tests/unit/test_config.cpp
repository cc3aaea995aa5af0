// hotrestart::Config<T>: validation that changes nothing when it fails, snapshots that keep their
// object across commits, objects freed with their last snapshot, and readers on several threads
// while versions are committed.
#include <atomic>
#include <charconv>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include <hotrestart/config.h>

using hotrestart::Config;
using hotrestart::ConfigError;
using hotrestart::Parsed;

namespace {

std::atomic<int> g_alive{0};  // Settings objects alive, moved-from ones included.

// A configuration of "name=value" lines with two fields, `ttl` and `twice` (which must be twice
// `ttl`, so that a torn object would show).
struct Settings {
  long ttl = 0;
  long twice = 0;
  Settings() { ++g_alive; }
  Settings(const Settings& o) : ttl(o.ttl), twice(o.twice) { ++g_alive; }
  Settings(Settings&& o) noexcept : ttl(o.ttl), twice(o.twice) { ++g_alive; }
  Settings& operator=(const Settings&) = default;
  ~Settings() { --g_alive; }
};

Parsed<Settings> parse(std::string_view bytes) {
  Settings s;
  int line = 0;
  while (!bytes.empty()) {
    ++line;
    const auto end = bytes.find('\n');
    std::string_view text = bytes.substr(0, end);
    bytes.remove_prefix(end == std::string_view::npos ? bytes.size() : end + 1);
    if (text.empty()) continue;
    if (text == "throw") throw std::runtime_error("boom");
    if (text == "silent") return ConfigError{};
    const auto eq = text.find('=');
    if (eq == std::string_view::npos) return ConfigError{"line " + std::to_string(line) + ": expected name=value"};
    const std::string_view name = text.substr(0, eq);
    const std::string_view value = text.substr(eq + 1);
    long n = 0;
    const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
    if (ec != std::errc() || ptr != value.data() + value.size()) {
      return ConfigError{"line " + std::to_string(line) + ": " + std::string(name) + ": not a number"};
    }
    if (name == "ttl") {
      s.ttl = n;
    } else if (name == "twice") {
      s.twice = n;
    } else {
      return ConfigError{"line " + std::to_string(line) + ": unknown field " + std::string(name)};
    }
  }
  if (s.twice != 2 * s.ttl) return ConfigError{"twice must be twice ttl"};
  return s;
}

std::string text_of(long ttl) {
  return "ttl=" + std::to_string(ttl) + "\ntwice=" + std::to_string(2 * ttl) + "\n";
}

}  // namespace

TEST_CASE("config: an invalid file is refused with the parser's message, and nothing changes") {
  Config<Settings> config(parse);
  REQUIRE(config.load(text_of(5)).empty());
  CHECK(config.version() == 1);
  auto reader = config.reader();

  CHECK(config.load("ttl=5\ntwice=x\n") == "line 2: twice: not a number");
  CHECK(config.load("ttl=5\nspeed=3\n") == "line 2: unknown field speed");
  CHECK(config.load("ttl=5\n") == "twice must be twice ttl");
  CHECK(config.load("throw\n") == "the parser failed: boom");
  CHECK(config.load("silent\n") == "the parser refused it without saying why");
  CHECK(config.load(std::string("\x01\xff\x00garbage", 10)) == "line 1: expected name=value");
  CHECK(config.version() == 1);
  auto s = reader.get();
  CHECK(s.version() == 1);
  CHECK(s->ttl == 5);
}

TEST_CASE("config: prepare stages, commit publishes only the version staged, abort drops it") {
  Config<Settings> config(parse);
  auto reader = config.reader();
  {
    auto none = reader.get();
    CHECK_FALSE(none);
    CHECK(none.version() == 0);
    CHECK(none.get() == nullptr);
  }
  REQUIRE(config.prepare(text_of(1), 7).empty());
  CHECK(config.version() == 0);  // Staged, not live.
  CHECK_FALSE(config.commit(8));
  CHECK(config.commit(7));
  CHECK_FALSE(config.commit(7));  // Nothing staged any more.
  CHECK(reader.get().version() == 7);

  REQUIRE(config.prepare(text_of(2), 8).empty());
  config.abort(8);
  CHECK_FALSE(config.commit(8));
  CHECK(config.version() == 7);
  CHECK(reader.get()->ttl == 1);
  // A failed prepare leaves nothing staged, and the live version alone.
  REQUIRE(config.prepare(text_of(3), 9).empty());
  CHECK_FALSE(config.prepare("ttl=\n", 10).empty());
  CHECK_FALSE(config.commit(9));
  CHECK(reader.get()->ttl == 1);
}

TEST_CASE("config: a snapshot keeps its object across commits, which is freed when the last snapshot ends") {
  const int before = g_alive.load();
  {
    Config<Settings> config(parse);
    auto reader = config.reader();
    REQUIRE(config.load(text_of(1)).empty());
    {
      auto request = reader.get();
      CHECK(request->ttl == 1);
      REQUIRE(config.load(text_of(2)).empty());
      // The request in flight still reads what it started with, and so does a nested read.
      CHECK(request->ttl == 1);
      auto nested = reader.get();
      CHECK(nested->ttl == 1);
      CHECK(nested.version() == 1);
      CHECK(g_alive.load() == before + 2);  // Versions 1 and 2.
    }
    // The last snapshot of version 1 ended: version 1 is gone, version 2 is live.
    CHECK(g_alive.load() == before + 1);
    auto next = reader.get();
    CHECK(next->ttl == 2);
    CHECK(next.version() == 2);
  }
  CHECK(g_alive.load() == before);
}

TEST_CASE(
    "config: readers on four threads see whole objects, never older than one seen, while 2000 versions are "
    "committed") {
  const int before = g_alive.load();
  {
    Config<Settings> config(parse);
    REQUIRE(config.load(text_of(1)).empty());
    constexpr long kVersions = 2000;
    std::atomic<bool> done{false};
    std::atomic<int> problems{0};
    std::atomic<long> reads{0};
    std::vector<std::thread> readers;
    for (int t = 0; t < 4; ++t) {
      readers.emplace_back([&] {
        auto reader = config.reader();
        std::uint64_t last = 0;
        long n = 0;
        while (!done.load(std::memory_order_relaxed)) {
          auto s = reader.get();
          if (!s || s->twice != 2 * s->ttl || s.version() < last || static_cast<long>(s.version()) != s->ttl) {
            ++problems;
          }
          last = s.version();
          ++n;
        }
        reads += n;
      });
    }
    for (long v = 2; v <= kVersions; ++v) {
      REQUIRE(config.load(text_of(v), static_cast<std::uint64_t>(v)).empty());
      if (v % 100 == 0) std::this_thread::yield();
    }
    done = true;
    for (auto& t : readers)
      t.join();
    CHECK(problems.load() == 0);
    CHECK(reads.load() > 0);
    CHECK(config.version() == kVersions);
    // The readers are gone: only the live version is left.
    CHECK(g_alive.load() == before + 1);
  }
  CHECK(g_alive.load() == before);
}
