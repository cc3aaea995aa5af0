// config-bench: what reading a configuration costs a request, with hotrestart::Config<T> and with
// the usual alternatives, while a writer publishes a new version every millisecond.
//
//   config-bench [--readers N] [--reads N] [--reload-us U]
//
// Each way is run by N reader threads at once (default 2), each taking N snapshots (default
// 20,000,000) and reading two fields of each; a writer thread publishes a new object every U
// microseconds (default 1000) meanwhile. Printed per way: ns per read (the slowest thread's wall
// time over its reads), the ratio to a plain atomic pointer load, and how many versions were
// published during the run. The ways:
//   atomic-load        std::atomic<const T*> load, acquire: the floor; it cannot tell when an old
//                      object may be freed (here every one is kept until the end)
//   Config::Reader     hotrestart::Config<T>: an acquire load and a comparison; snapshots keep their
//                      object, which is freed with the last one
//   shared_ptr+mutex   a std::shared_ptr copied under a std::mutex
//   atomic<shared_ptr> std::atomic<std::shared_ptr<const T>> (libstdc++: a lock bit in the pointer)
// Exit status: 0, or 1 when a reader saw a torn object (its two fields disagree), 2 on bad usage.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <hotrestart/config.h>

namespace {

struct Settings {
  std::uint64_t ttl = 0;
  std::uint64_t twice = 0;
  char padding[48] = {};  // A cache line's worth, as a real object would be.
};

Settings make(std::uint64_t n) {
  Settings s;
  s.ttl = n;
  s.twice = 2 * n;
  return s;
}

struct Options {
  int readers = 2;
  std::uint64_t reads = 20'000'000;
  int reload_us = 1000;
};

struct Outcome {
  double ns_per_read = 0;
  std::uint64_t published = 0;
  std::uint64_t torn = 0;
};

// Runs `read` (which returns a nonzero count of torn objects) `reads` times on each of the
// readers while `publish(n)` runs every reload_us; returns the slowest reader's ns per read.
Outcome run(const Options& o, const std::function<std::uint64_t(std::uint64_t reads)>& reader_loop,
            const std::function<void(std::uint64_t)>& publish) {
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> published{0};
  std::thread writer([&] {
    std::uint64_t n = 1;
    while (!stop.load(std::memory_order_relaxed)) {
      publish(++n);
      published.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::microseconds(o.reload_us));
    }
  });
  std::atomic<std::uint64_t> torn{0};
  std::atomic<std::int64_t> slowest_ns{0};
  std::vector<std::thread> readers;
  for (int i = 0; i < o.readers; ++i) {
    readers.emplace_back([&] {
      const auto t0 = std::chrono::steady_clock::now();
      torn += reader_loop(o.reads);
      const auto ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
      std::int64_t seen = slowest_ns.load();
      while (ns > seen && !slowest_ns.compare_exchange_weak(seen, ns)) {
      }
    });
  }
  for (auto& t : readers)
    t.join();
  stop = true;
  writer.join();
  return {static_cast<double>(slowest_ns.load()) / static_cast<double>(o.reads), published.load(), torn.load()};
}

// Keeps `value` from being optimised away.
inline void keep(std::uint64_t value) {
  asm volatile("" : : "r"(value) : "memory");
}

bool parse_number(std::string_view text, std::uint64_t& out) {
  if (text.empty() || text.size() > 12) return false;
  std::uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<std::uint64_t>(c - '0');
  }
  out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string_view flag = argv[i];
    std::uint64_t v = 0;
    if (i + 1 >= argc || !parse_number(argv[i + 1], v) || v == 0) {
      std::fprintf(stderr, "usage: config-bench [--readers N] [--reads N] [--reload-us U] (each a positive number)\n");
      return 2;
    }
    ++i;
    if (flag == "--readers" && v <= 64) {
      o.readers = static_cast<int>(v);
    } else if (flag == "--reads" && v <= 1'000'000'000) {
      o.reads = v;
    } else if (flag == "--reload-us" && v <= 1'000'000) {
      o.reload_us = static_cast<int>(v);
    } else {
      std::fprintf(stderr, "config-bench: bad flag or value: %s %s\n", argv[i - 1], argv[i]);
      return 2;
    }
  }

  std::printf("config-bench: %d readers x %llu reads, a new version every %d us\n", o.readers,
              static_cast<unsigned long long>(o.reads), o.reload_us);
  std::printf("  %-20s %10s %10s %12s\n", "way", "ns/read", "x atomic", "versions");
  std::uint64_t torn = 0;
  double floor_ns = 0;
  const auto report = [&](const char* name, const Outcome& r) {
    if (floor_ns == 0) floor_ns = r.ns_per_read;
    torn += r.torn;
    std::printf("  %-20s %10.2f %10.2f %12llu%s\n", name, r.ns_per_read, r.ns_per_read / floor_ns,
                static_cast<unsigned long long>(r.published), r.torn != 0 ? "  TORN READS" : "");
  };

  {
    // The floor: every object is kept until the end, since nothing says when a reader is done.
    std::vector<std::unique_ptr<Settings>> all;
    all.push_back(std::make_unique<Settings>(make(1)));
    std::atomic<const Settings*> current{all.back().get()};
    std::mutex all_mutex;
    report("atomic-load", run(
                              o,
                              [&](std::uint64_t reads) {
                                std::uint64_t bad = 0;
                                for (std::uint64_t i = 0; i < reads; ++i) {
                                  const Settings* s = current.load(std::memory_order_acquire);
                                  bad += s->twice != 2 * s->ttl;
                                  keep(s->ttl);
                                }
                                return bad;
                              },
                              [&](std::uint64_t n) {
                                std::lock_guard lock(all_mutex);
                                all.push_back(std::make_unique<Settings>(make(n)));
                                current.store(all.back().get(), std::memory_order_release);
                              }));
  }
  {
    hotrestart::Config<Settings> config([](std::string_view bytes) -> hotrestart::Parsed<Settings> {
      std::uint64_t n = 0;
      if (!parse_number(bytes, n)) return hotrestart::ConfigError{"not a number"};
      return make(n);
    });
    config.load("1");
    report("Config::Reader", run(
                                 o,
                                 [&](std::uint64_t reads) {
                                   auto reader = config.reader();
                                   std::uint64_t bad = 0;
                                   for (std::uint64_t i = 0; i < reads; ++i) {
                                     auto s = reader.get();
                                     bad += s->twice != 2 * s->ttl;
                                     keep(s->ttl);
                                   }
                                   return bad;
                                 },
                                 [&](std::uint64_t n) { config.load(std::to_string(n), n); }));
  }
  {
    std::mutex mutex;
    std::shared_ptr<const Settings> current = std::make_shared<const Settings>(make(1));
    report("shared_ptr+mutex", run(
                                   o,
                                   [&](std::uint64_t reads) {
                                     std::uint64_t bad = 0;
                                     for (std::uint64_t i = 0; i < reads; ++i) {
                                       std::shared_ptr<const Settings> s;
                                       {
                                         std::lock_guard lock(mutex);
                                         s = current;
                                       }
                                       bad += s->twice != 2 * s->ttl;
                                       keep(s->ttl);
                                     }
                                     return bad;
                                   },
                                   [&](std::uint64_t n) {
                                     auto next = std::make_shared<const Settings>(make(n));
                                     std::lock_guard lock(mutex);
                                     current = std::move(next);
                                   }));
  }
  {
    std::atomic<std::shared_ptr<const Settings>> current{std::make_shared<const Settings>(make(1))};
    report("atomic<shared_ptr>",
           run(
               o,
               [&](std::uint64_t reads) {
                 std::uint64_t bad = 0;
                 for (std::uint64_t i = 0; i < reads; ++i) {
                   const std::shared_ptr<const Settings> s = current.load();
                   bad += s->twice != 2 * s->ttl;
                   keep(s->ttl);
                 }
                 return bad;
               },
               [&](std::uint64_t n) { current.store(std::make_shared<const Settings>(make(n))); }));
  }
  if (torn != 0) {
    std::printf("FAIL: %llu torn reads\n", static_cast<unsigned long long>(torn));
    return 1;
  }
  return 0;
}
