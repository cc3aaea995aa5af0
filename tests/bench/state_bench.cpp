// state-bench: what scripts/bench-state cannot do in bash. Each command prints "NAME VALUE" lines.
//
//   state-bench baselines [--bytes N] [--reps R]
//       This machine's reference rates, best of R runs each, in GB/s (1e9 bytes per second):
//       memcpy_gbps: memcpy of N bytes between two buffers already in memory;
//       unix_gbps:   N bytes over socketpair(AF_UNIX, SOCK_STREAM), written by one thread and read
//                    by another, with large writes: the best of 256 KiB and 1 MiB writes, with the
//                    default socket buffers and with 4 MiB ones (which, in unix_how);
//       fresh_gbps:  writing N bytes into memory just mapped, which the kernel must fault in first:
//                    what any copy into a new process's memory pays on top of memcpy;
//       arena_memcpy_gbps, arena_write_gbps: copying N bytes in 128 KiB pieces into a new
//                    hotrestart::Arena's blocks of 1 MiB (as kv-cache's load fills its pages), with
//                    memcpy through the mapping and with Arena::write through the memfd, then
//                    reading a word of every 4 KiB page (which maps the pages Arena::write left
//                    unmapped, as kv-cache's checks do);
//       smaps_rollup_ms: reading /proc/PID/smaps_rollup of a child that maps N bytes of touched
//                    shared memory, the fastest of R reads: what each sample of a forked save's
//                    copies costs the old generation (hence their spacing, docs/architecture.md).
//   state-bench transfer STATUS_JSON [SECTION]
//       The `last_transfer` of `hotrestart status --json`: its outcome, and the first section's (or
//       SECTION's)
//       bytes and schema version, the exporter's and the importer's times for it (micros), and the
//       whole import's time (from its begin to import-finished).
//   state-bench upgrade EVENTS
//       `hotrestart upgrade --json`, each line prefixed by the epoch ms it was read at: the result
//       and the generation it started, the upgrade's start in epoch ms, when each phase of its
//       timeline began (ms after the start), and the `state` event.
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <hotrestart/arena.h>
#include <nlohmann/json.hpp>

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Anonymous memory, unmapped at the end of its scope.
struct Mapping {
  explicit Mapping(std::size_t n) : size(n) {
    void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("state-bench: mmap");
      std::exit(1);
    }
    data = static_cast<char*>(p);
  }
  ~Mapping() { ::munmap(data, size); }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  char* data = nullptr;
  std::size_t size = 0;
};

double memcpy_rate(std::size_t bytes, int reps) {
  Mapping from(bytes);
  Mapping to(bytes);
  // Both buffers are faulted in first: this is the rate of copying, not of the kernel.
  std::memset(from.data, 0x5a, bytes);
  std::memset(to.data, 0, bytes);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t = Clock::now();
    std::memcpy(to.data, from.data, bytes);
    best = std::max(best, static_cast<double>(bytes) / seconds_since(t) / 1e9);
    // Keeps the copy from being optimised away.
    if (to.data[static_cast<std::size_t>(r) % bytes] != 0x5a) std::abort();
  }
  return best;
}

// With `buffer_bytes` > 0, both ends' socket buffers are set to it (the kernel doubles it, within
// net.core.wmem_max and rmem_max); otherwise they keep the default.
double unix_rate(std::size_t bytes, std::size_t write_bytes, int buffer_bytes, int reps) {
  double best = 0;
  std::vector<char> out(write_bytes, 'x');
  std::vector<char> in(write_bytes);
  for (int r = 0; r < reps; ++r) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      std::perror("state-bench: socketpair");
      std::exit(1);
    }
    if (buffer_bytes > 0) {
      ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof buffer_bytes);
      ::setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof buffer_bytes);
    }
    const auto t = Clock::now();
    std::thread writer([&] {
      std::size_t left = bytes;
      while (left > 0) {
        const ssize_t n = ::write(sv[0], out.data(), std::min(left, write_bytes));
        if (n <= 0) break;
        left -= static_cast<std::size_t>(n);
      }
      ::close(sv[0]);
    });
    std::size_t got = 0;
    for (;;) {
      const ssize_t n = ::read(sv[1], in.data(), in.size());
      if (n <= 0) break;
      got += static_cast<std::size_t>(n);
    }
    const double s = seconds_since(t);
    writer.join();
    ::close(sv[1]);
    if (got != bytes) {
      std::fprintf(stderr, "state-bench: the socket carried %zu of %zu bytes\n", got, bytes);
      std::exit(1);
    }
    best = std::max(best, static_cast<double>(bytes) / s / 1e9);
  }
  return best;
}

// Copies `bytes` from memory already touched into a new arena's 1 MiB blocks, 128 KiB at a time,
// with memcpy or with Arena::write, then reads a word of every page; the best of `reps`.
double arena_rate(std::size_t bytes, int reps, bool write) {
  constexpr std::size_t kBlock = std::size_t{1} << 20;
  constexpr std::size_t kPiece = std::size_t{128} << 10;
  Mapping source(kBlock);
  std::memset(source.data, 0x5a, kBlock);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    hotrestart::Arena arena(bytes + bytes / 8);
    std::vector<std::byte*> blocks;
    for (std::size_t done = 0; done < bytes; done += kBlock)
      blocks.push_back(arena.allocate(kBlock));
    const auto t = Clock::now();
    for (std::byte* block : blocks) {
      for (std::size_t at = 0; at < kBlock; at += kPiece) {
        if (write) {
          arena.write(block + at, source.data + at, kPiece);
        } else {
          std::memcpy(block + at, source.data + at, kPiece);
        }
      }
    }
    std::uint64_t sum = 0;
    for (std::byte* block : blocks) {
      for (std::size_t at = 0; at < kBlock; at += 4096)
        sum += static_cast<std::uint64_t>(block[at]);
    }
    const double s = seconds_since(t);
    if (sum != blocks.size() * (kBlock / 4096) * 0x5a) {
      std::fprintf(stderr, "state-bench: the arena holds other bytes than were written\n");
      std::exit(1);
    }
    best = std::max(best, static_cast<double>(blocks.size() * kBlock) / s / 1e9);
  }
  return best;
}

// Reads /proc/PID/smaps_rollup of a child that has touched `bytes` of shared memory; the fastest
// of `reps` reads, in milliseconds.
double smaps_rollup_ms(std::size_t bytes, int reps) {
  void* shared = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  int ready[2];
  if (shared == MAP_FAILED || ::pipe(ready) != 0) {
    std::perror("state-bench: smaps_rollup set-up");
    std::exit(1);
  }
  std::memset(shared, 1, bytes);
  const pid_t child = ::fork();
  if (child == 0) {
    // Maps every page (a fork does not copy the page tables of shared memory), then waits.
    std::uint64_t sum = 0;
    for (std::size_t at = 0; at < bytes; at += 4096)
      sum += static_cast<const unsigned char*>(shared)[at];
    const char done = sum > 0 ? 'y' : 'n';
    (void)!::write(ready[1], &done, 1);
    ::pause();
    ::_exit(0);
  }
  char done = 0;
  if (child < 0 || ::read(ready[0], &done, 1) != 1) {
    std::perror("state-bench: smaps_rollup child");
    std::exit(1);
  }
  const std::string path = "/proc/" + std::to_string(child) + "/smaps_rollup";
  double best = 1e9;
  for (int r = 0; r < reps; ++r) {
    const auto t = Clock::now();
    std::ifstream f(path);
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (text.find("Rss:") == std::string::npos) {
      std::fprintf(stderr, "state-bench: cannot read %s\n", path.c_str());
      std::exit(1);
    }
    best = std::min(best, seconds_since(t) * 1e3);
  }
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ::close(ready[0]);
  ::close(ready[1]);
  ::munmap(shared, bytes);
  return best;
}

double fresh_rate(std::size_t bytes, int reps) {
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    Mapping m(bytes);
    const auto t = Clock::now();
    std::memset(m.data, 0x5a, bytes);
    best = std::max(best, static_cast<double>(bytes) / seconds_since(t) / 1e9);
  }
  return best;
}

int baselines(const std::vector<std::string>& args) {
  std::size_t bytes = std::size_t{1} << 30;
  int reps = 3;
  for (std::size_t i = 0; i + 1 < args.size(); i += 2) {
    if (args[i] == "--bytes") {
      bytes = std::stoull(args[i + 1]);
    } else if (args[i] == "--reps") {
      reps = std::stoi(args[i + 1]);
    } else {
      std::fprintf(stderr, "state-bench baselines: unknown option %s\n", args[i].c_str());
      return 2;
    }
  }
  if (bytes < (std::size_t{1} << 20) || reps < 1 || reps > 100) {
    std::fprintf(stderr, "state-bench baselines: --bytes must be at least 1 MiB, --reps 1..100\n");
    return 2;
  }
  std::printf("bytes %zu\nreps %d\n", bytes, reps);
  std::printf("memcpy_gbps %.3f\n", memcpy_rate(bytes, reps));
  // The reference is the best of these: large writes, with the default socket buffers and with
  // larger ones, so that the stream is not made to look slower than it can be.
  double unix_best = 0;
  std::string unix_how;
  for (const int buffer : {0, 4 << 20}) {
    for (const std::size_t w : {std::size_t{256} << 10, std::size_t{1} << 20}) {
      const double rate = unix_rate(bytes, w, buffer, reps);
      const std::string how =
          std::to_string(w >> 10) + "KiB-writes-" +
          (buffer == 0 ? std::string("default-buffers") : std::to_string(buffer >> 20) + "MiB-buffers");
      std::printf("unix_gbps_%s %.3f\n", how.c_str(), rate);
      if (rate > unix_best) {
        unix_best = rate;
        unix_how = how;
      }
    }
  }
  std::printf("unix_gbps %.3f\nunix_how %s\n", unix_best, unix_how.c_str());
  std::printf("fresh_gbps %.3f\n", fresh_rate(bytes, reps));
  std::printf("arena_memcpy_gbps %.3f\n", arena_rate(bytes, reps, false));
  std::printf("arena_write_gbps %.3f\n", arena_rate(bytes, reps, true));
  std::printf("smaps_rollup_ms %.2f\n", smaps_rollup_ms(bytes, reps));
  return 0;
}

json read_json(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read " + path);
  return json::parse(f);
}

template <class T>
T get_or(const json& j, const char* key, T otherwise) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return otherwise;
  return j[key].get<T>();
}

int transfer(const std::string& path, const std::string& section) {
  const json status = read_json(path);
  const json t = status.value("last_transfer", json());
  if (!t.is_object()) {
    std::printf("outcome none\n");
    return 0;
  }
  const std::string outcome = get_or<std::string>(t, "outcome", "");
  std::printf("outcome %s\n", outcome.empty() ? "unknown" : outcome.c_str());
  std::printf("from_generation %llu\nto_generation %llu\n",
              static_cast<unsigned long long>(get_or<std::uint64_t>(t, "from_generation", 0)),
              static_cast<unsigned long long>(get_or<std::uint64_t>(t, "to_generation", 0)));
  auto first = [&](const char* list) -> json {
    const json l = t.value(list, json::array());
    if (!l.is_array() || l.empty()) return json::object();
    if (section.empty()) return l[0];
    for (const json& s : l)
      if (s.is_object() && get_or<std::string>(s, "section", "") == section) return s;
    return json::object();
  };
  const json exported = first("exported");
  const json imported = first("imported");
  std::printf("section %s\n", get_or<std::string>(imported, "section", "none").c_str());
  std::printf("ok %d\n", get_or<bool>(imported, "ok", false) ? 1 : 0);
  std::printf("version %u\n", get_or<std::uint32_t>(imported, "version", 0));
  std::printf("bytes %llu\n", static_cast<unsigned long long>(get_or<std::uint64_t>(imported, "bytes", 0)));
  std::printf("export_us %llu\n", static_cast<unsigned long long>(get_or<std::uint64_t>(exported, "micros", 0)));
  std::printf("import_us %llu\n", static_cast<unsigned long long>(get_or<std::uint64_t>(imported, "micros", 0)));
  std::printf("transfer_us %llu\n",
              static_cast<unsigned long long>(get_or<std::uint64_t>(t.value("import", json()), "micros", 0)));
  const std::string reason = get_or<std::string>(imported, "reason", "");
  if (!reason.empty()) std::printf("reason %s\n", reason.c_str());
  return 0;
}

int upgrade(const std::string& path) {
  std::ifstream f(path);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::string line;
  long long start_ms = -1;
  int unparsed = 0;
  bool have_result = false;
  while (std::getline(f, line)) {
    const std::size_t space = line.find(' ');
    json event;
    long long at_ms = 0;
    try {
      at_ms = std::stoll(line.substr(0, space));
      event = json::parse(line.substr(space + 1));
    } catch (const std::exception&) {
      ++unparsed;  // Text on stderr, say.
      continue;
    }
    if (!event.is_object()) continue;
    // The line was read as soon as it was written; the earliest estimate of the start wins.
    const long long elapsed = get_or<long long>(event, "elapsed_ms", 0);
    if (start_ms < 0 || at_ms - elapsed < start_ms) start_ms = at_ms - elapsed;
    const std::string type = get_or<std::string>(event, "type", "");
    if (type == "state") {
      std::printf("state_ok %d\n", get_or<bool>(event, "ok", false) ? 1 : 0);
      std::printf("state_version %u\n", get_or<std::uint32_t>(event, "version", 0));
      std::printf("state_bytes %llu\n", static_cast<unsigned long long>(get_or<std::uint64_t>(event, "bytes", 0)));
      std::printf("state_us %llu\n", static_cast<unsigned long long>(get_or<std::uint64_t>(event, "micros", 0)));
      std::printf("state_transfer_ms %llu\n",
                  static_cast<unsigned long long>(get_or<std::uint64_t>(event, "transfer_ms", 0)));
      std::printf("state_elapsed_ms %lld\n", elapsed);
    } else if (type == "result") {
      have_result = true;
      std::printf("ok %d\n", get_or<bool>(event, "ok", false) ? 1 : 0);
      std::printf("generation %llu\n", static_cast<unsigned long long>(get_or<std::uint64_t>(event, "generation", 0)));
      std::printf("outcome %s\n", get_or<std::string>(event, "outcome", "unknown").c_str());
      for (const auto& step : event.value("timeline", json::array())) {
        std::printf("at_%s %lld\n", get_or<std::string>(step, "phase", "unknown").c_str(),
                    get_or<long long>(step, "at_ms", 0));
      }
      std::printf("elapsed_ms %lld\n", elapsed);
    } else if (type == "event") {
      const std::string message = get_or<std::string>(event, "message", "");
      if (message.rfind("state transfer finished", 0) == 0) std::printf("at_import_finished %lld\n", elapsed);
    }
  }
  if (!have_result) std::printf("ok 0\noutcome no-result\n");
  std::printf("start_ms %lld\nunparsed_lines %d\n", start_ms, unparsed);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  try {
    if (!args.empty() && args[0] == "baselines") return baselines({args.begin() + 1, args.end()});
    if ((args.size() == 2 || args.size() == 3) && args[0] == "transfer")
      return transfer(args[1], args.size() == 3 ? args[2] : "");
    if (args.size() == 2 && args[0] == "upgrade") return upgrade(args[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "state-bench: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr,
               "usage: state-bench baselines [--bytes N] [--reps R]\n"
               "       state-bench transfer STATUS_JSON [SECTION]\n"
               "       state-bench upgrade EVENTS\n");
  return 2;
}
