// Section::freeze: a section saved by a forked process while the application goes on writing,
// through the stub supervisor (the export runs on a thread of this process, and forks it). The
// state is records that a writer thread rewrites whole under the lock, each with its checksum: a
// snapshot that saw a record half-written fails the import.
#include <doctest/doctest.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <hotrestart/archive.h>
#include <hotrestart/arena.h>
#include <hotrestart/testing.h>
#include <hotrestart/worker.h>

using hotrestart::Worker;
using hotrestart::testing::StubSupervisor;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::size_t kRecords = 2048;

// 4 KiB: a sequence number, the words it determines, and their checksum.
struct Record {
  std::uint64_t seq = 0;
  std::uint64_t sum = 0;
  std::array<std::uint64_t, 510> words{};
};
static_assert(sizeof(Record) == 4096);

std::uint64_t word(std::uint64_t seq, std::size_t j) {
  return (seq + 1) * 0x9E37'79B9'7F4A'7C15ULL ^ (j * 0xC2B2'AE3D'27D4'EB4FULL);
}
std::uint64_t sum_of(const Record& r) {
  std::uint64_t s = r.seq;
  for (auto w : r.words)
    s = (s ^ w) * 0x100'0000'01B3ULL;
  return s;
}
bool intact(const Record& r) {
  for (std::size_t j = 0; j < r.words.size(); ++j)
    if (r.words[j] != word(r.seq, j)) return false;
  return r.sum == sum_of(r);
}

enum class Memory { Heap, Arena };
enum class Kill { No, MidSave };

// The application: records in heap memory or in a hotrestart::Arena, and a writer thread.
struct App {
  std::mutex mutex;
  std::vector<Record> heap;
  hotrestart::Arena arena;
  Record* records = nullptr;
  std::uint64_t next_seq = 0;
  pid_t saved_by = 0;     // In the importer: the pid the snapshot says it was written by.
  int freezes = 0;        // freeze calls.
  Kill kill = Kill::No;   // The saving process kills itself half-way.
  bool call_fork = true;  // freeze calls fork().

  explicit App(Memory memory) {
    if (memory == Memory::Heap) {
      heap.resize(kRecords);
      records = heap.data();
    } else {
      arena = hotrestart::Arena(std::uint64_t{64} << 20);
      records = reinterpret_cast<Record*>(arena.allocate(kRecords * sizeof(Record)));
    }
    for (std::size_t i = 0; i < kRecords; ++i)
      write_locked(i);
  }

  void write_locked(std::size_t i) {
    Record& r = records[i];
    r.seq = ++next_seq;
    for (std::size_t j = 0; j < r.words.size(); ++j)
      r.words[j] = word(r.seq, j);
    r.sum = sum_of(r);
  }

  hotrestart::Section section(bool stream) {
    hotrestart::Section s{.name = "records",
                          .versions = {1},
                          .save =
                              [this](std::uint32_t, std::ostream& out) {
                                std::lock_guard lock(mutex);
                                const auto self = static_cast<std::int64_t>(::getpid());
                                out.write(reinterpret_cast<const char*>(&self), sizeof self);
                                for (std::size_t i = 0; i < kRecords; ++i) {
                                  out.write(reinterpret_cast<const char*>(&records[i]), sizeof(Record));
                                  // A slow save, so that the writer has long to write while it runs.
                                  if (i % 16 == 15) std::this_thread::sleep_for(std::chrono::milliseconds(4));
                                  if (kill == Kill::MidSave && i == kRecords / 2) {
                                    out.flush();
                                    ::raise(SIGKILL);
                                  }
                                }
                              },
                          .load =
                              [this](std::uint32_t, std::istream& in) {
                                std::int64_t pid = 0;
                                in.read(reinterpret_cast<char*>(&pid), sizeof pid);
                                std::vector<Record> staging(kRecords);
                                for (std::size_t i = 0; i < kRecords; ++i) {
                                  in.read(reinterpret_cast<char*>(&staging[i]), sizeof(Record));
                                  if (!in) throw std::runtime_error("short snapshot");
                                  if (!intact(staging[i]))
                                    throw std::runtime_error("record " + std::to_string(i) + " is torn");
                                }
                                std::lock_guard lock(mutex);
                                std::memcpy(records, staging.data(), kRecords * sizeof(Record));
                                saved_by = static_cast<pid_t>(pid);
                              },
                          .stream = stream,
                          .freeze =
                              [this](const hotrestart::SnapshotFork& fork) {
                                std::lock_guard lock(mutex);
                                ++freezes;
                                if (!call_fork) return;
                                if (arena) {
                                  fork({&arena});
                                } else {
                                  fork();
                                }
                              }};
    return s;
  }

  std::size_t torn() {
    std::lock_guard lock(mutex);
    std::size_t n = 0;
    for (std::size_t i = 0; i < kRecords; ++i)
      n += intact(records[i]) ? 0 : 1;
    return n;
  }
};

// Rewrites records under the lock, round and round, until stopped; keeps the longest wait for
// the lock.
class Writer {
 public:
  explicit Writer(App& app) : app_(app), thread_([this] { run(); }) {}
  ~Writer() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::chrono::milliseconds longest_wait() const { return std::chrono::milliseconds(longest_wait_ms_.load()); }
  std::uint64_t writes() const { return writes_.load(); }

 private:
  void run() {
    for (std::size_t i = 0; !stop_; i = (i + 7) % kRecords) {
      const auto t0 = Clock::now();
      {
        std::lock_guard lock(app_.mutex);
        const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
        if (waited > longest_wait_ms_) longest_wait_ms_ = waited;
        app_.write_locked(i);
      }
      ++writes_;
      if (i % 64 == 0) std::this_thread::yield();
    }
  }

  App& app_;
  std::atomic<bool> stop_{false};
  std::atomic<long long> longest_wait_ms_{0};
  std::atomic<std::uint64_t> writes_{0};
  std::thread thread_;
};

Worker::Options options() {
  Worker::Options o;
  o.fallback_listen = {{"http", "127.0.0.1:0"}};
  return o;
}

}  // namespace

TEST_CASE("sdk fork: a frozen section is saved by a forked process while the writers go on, and arrives whole") {
  for (const Memory memory : {Memory::Heap, Memory::Arena}) {
    for (const bool stream : {false, true}) {
      CAPTURE(memory == Memory::Heap ? "heap" : "arena");
      CAPTURE(stream);
      App a1(memory);
      Worker v1(options());
      v1.add_section(a1.section(stream));
      REQUIRE(StubSupervisor::start(v1) == "");

      App a2(Memory::Heap);
      Worker v2(options());
      v2.add_section(a2.section(stream));
      Writer writer(a1);
      const auto t0 = Clock::now();
      REQUIRE(StubSupervisor::start_from(v2, v1) == "");
      const auto took = Clock::now() - t0;
      const std::uint64_t writes_before_stop = writer.writes();
      writer.stop();

      REQUIRE(v2.imported().size() == 1);
      INFO(v2.imported()[0].reason);
      CHECK(v2.imported()[0].imported);
      CHECK(a2.saved_by != 0);
      CHECK(a2.saved_by != ::getpid());  // Saved by another process.
      CHECK(a1.freezes == 1);
      CHECK(a2.torn() == 0);
      CHECK(a1.torn() == 0);
      // The save sleeps 4 ms per 16 records, 0.5 s in all; the writer never waited for it.
      CHECK(took >= std::chrono::milliseconds(450));
      CHECK(writer.longest_wait() < std::chrono::milliseconds(200));
      CHECK(writes_before_stop > 0);
      // The arena is this process's alone again once the saving process is gone.
      if (memory == Memory::Arena) {
        std::lock_guard lock(a1.mutex);
        CHECK(a1.arena.reclaim());
        CHECK(a1.arena.shared());
      }
    }
  }
}

TEST_CASE("sdk fork: without fork() in freeze, or with max_snapshot_copy_bytes 0, the save holds the lock") {
  for (const bool no_fork_call : {true, false}) {
    CAPTURE(no_fork_call);
    App a1(Memory::Heap);
    a1.call_fork = !no_fork_call;
    Worker::Options o = options();
    if (!no_fork_call) o.max_snapshot_copy_bytes = 0;
    Worker v1(o);
    v1.add_section(a1.section(false));
    REQUIRE(StubSupervisor::start(v1) == "");
    App a2(Memory::Heap);
    Worker v2(options());
    v2.add_section(a2.section(false));
    REQUIRE(StubSupervisor::start_from(v2, v1) == "");
    REQUIRE(v2.imported().size() == 1);
    CHECK(v2.imported()[0].imported);
    CHECK(a2.saved_by == ::getpid());
    CHECK(a1.freezes == (no_fork_call ? 1 : 0));
    CHECK(a2.torn() == 0);
  }
}

TEST_CASE("sdk fork: past max_snapshot_copy_bytes the writers wait for the save, which stays whole") {
  App a1(Memory::Heap);
  Worker::Options o = options();
  o.max_snapshot_copy_bytes = std::uint64_t{1} << 20;  // 256 records; the writer rewrites all 2,048.
  Worker v1(o);
  v1.add_section(a1.section(false));
  REQUIRE(StubSupervisor::start(v1) == "");
  App a2(Memory::Heap);
  Worker v2(options());
  v2.add_section(a2.section(false));
  Writer writer(a1);
  REQUIRE(StubSupervisor::start_from(v2, v1) == "");
  writer.stop();
  REQUIRE(v2.imported().size() == 1);
  CHECK(v2.imported()[0].imported);
  CHECK(a2.saved_by != ::getpid());
  CHECK(a1.freezes == 2);  // The fork, then the wait under the lock.
  CHECK(writer.longest_wait() >= std::chrono::milliseconds(50));
  CHECK(a2.torn() == 0);
}

TEST_CASE("sdk fork: a saving process killed half-way fails the section, and the old generation keeps its data") {
  for (const bool stream : {false, true}) {
    CAPTURE(stream);
    App a1(Memory::Arena);
    a1.kill = Kill::MidSave;
    Worker v1(options());
    v1.add_section(a1.section(stream));
    REQUIRE(StubSupervisor::start(v1) == "");
    const std::uint64_t seq_before = a1.next_seq;
    App a2(Memory::Heap);
    Worker v2(options());
    v2.add_section(a2.section(stream));
    REQUIRE(StubSupervisor::start_from(v2, v1) == "");
    REQUIRE(v2.imported().size() == 1);
    CHECK_FALSE(v2.imported()[0].imported);
    if (!stream) CHECK(v2.imported()[0].reason.find("killed by signal 9") != std::string::npos);
    CHECK(a2.saved_by == 0);
    // The old generation's records are all there, and it writes on.
    CHECK(a1.torn() == 0);
    {
      std::lock_guard lock(a1.mutex);
      a1.write_locked(3);
      CHECK(a1.next_seq == seq_before + 1);
      CHECK(a1.arena.reclaim());
    }
    CHECK(a1.torn() == 0);
  }
}

TEST_CASE("sdk fork: a change in the snapshot and also streamed as a delta is applied once") {
  // A counter whose deltas are operations ("add 1"): applying one twice would count it twice.
  struct Counter {
    std::mutex mutex;
    std::uint64_t total = 0;
    Worker* worker = nullptr;
    bool publish_in_freeze = true;

    void add_locked() {
      if (worker->publish_delta("total", [](std::uint32_t) { return std::string("+1"); })) ++total;
    }
    hotrestart::Section section() {
      return {.name = "total",
              .versions = {1},
              .save =
                  [this](std::uint32_t, std::ostream& out) {
                    std::lock_guard lock(mutex);
                    out << total;
                  },
              .load =
                  [this](std::uint32_t, std::istream& in) {
                    std::uint64_t t = 0;
                    in >> t;
                    std::lock_guard lock(mutex);
                    total = t;
                  },
              .apply_delta =
                  [this](std::uint32_t, std::string_view d) {
                    REQUIRE(d == "+1");
                    std::lock_guard lock(mutex);
                    ++total;
                  },
              .freeze =
                  [this](const hotrestart::SnapshotFork& fork) {
                    std::lock_guard lock(mutex);
                    // The transfer is under way: this change is published, and it is in the snapshot.
                    if (publish_in_freeze) add_locked();
                    fork();
                  }};
    }
  };
  Counter c1;
  Worker v1(options());
  c1.worker = &v1;
  v1.add_section(c1.section());
  REQUIRE(StubSupervisor::start(v1) == "");
  for (int i = 0; i < 100; ++i) {
    std::lock_guard lock(c1.mutex);
    c1.add_locked();  // No transfer yet: nothing is published, the change is only made.
  }
  // A bounded writer (what the stub sends, it sends once, without waiting for room on the link).
  std::thread writer([&] {
    for (int i = 0; i < 200; ++i) {
      std::lock_guard lock(c1.mutex);
      c1.add_locked();
    }
  });
  Counter c2;
  Worker v2(options());
  c2.worker = &v2;
  v2.add_section(c2.section());
  REQUIRE(StubSupervisor::start_from(v2, v1) == "");
  writer.join();
  StubSupervisor::end_previous(v1);
  while (StubSupervisor::pump(v2) > 0) {
  }
  REQUIRE(v2.imported().size() == 1);
  CHECK(v2.imported()[0].imported);
  CHECK(c1.total == 301);
  CHECK(c2.total == c1.total);
}
