// hotrestart::Config<T>: a server's configuration as an immutable object, swapped atomically while
// requests read it without a lock.
//
//   struct Settings { std::chrono::seconds ttl; std::vector<std::string> blocked; };
//   hotrestart::Config<Settings> config([](std::string_view bytes) -> hotrestart::Parsed<Settings> {
//     Settings s;
//     ...                                   // on a bad value: return hotrestart::ConfigError{"line 3: ttl: not a
//     number"}; return s;
//   });
//   if (auto error = config.load(read_file("app.conf")); !error.empty()) { ... }
//
//   // On each thread that serves requests, one Reader (it is not shared between threads):
//   thread_local auto reader = config.reader();
//   auto settings = reader.get();           // the configuration this request started with
//   use(settings->ttl, settings.version());
//
// Reading. Reader::get() is an acquire load and a comparison while the configuration does not
// change; after a change, the next get() on that thread takes the new object under a mutex, once.
// A Snapshot stays valid, and keeps meaning the same object, until it is destroyed, whatever is
// committed meanwhile; nested get()s on one thread return the object the outermost one got, so
// that a request sees one configuration from its start to its end. An object is freed when the
// last snapshot of it ends (on that reader's thread), or, for a reader that held it but was not
// read since, at that reader's next get() or destruction.
//
// Changing. prepare() parses bytes into a staged object (the parser's error, or its exception's
// message, comes back as text, and nothing changes); commit() publishes the staged object;
// abort() drops it: the two phases of a change that must be made everywhere or nowhere. load() is
// both in one. Writers are serialised by a mutex; a parser runs outside it. See docs/sdk.md,
// "Configuration".
#pragma once

#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace hotrestart {

// Why bytes are not a valid configuration: name the line and the field ("line 3: ttl: not a
// number").
struct ConfigError {
  std::string message;
};

// What a configuration parser returns.
template <class T>
using Parsed = std::variant<T, ConfigError>;

template <class T>
class Config {
  struct Entry {
    T value;
    std::uint64_t version;
  };

 public:
  using Parser = std::function<Parsed<T>(std::string_view bytes)>;

  class Reader;

  // What a request reads: the object and its version. Not copyable; it must not outlive its Reader.
  class Snapshot {
   public:
    Snapshot(const Snapshot&) = delete;
    Snapshot& operator=(const Snapshot&) = delete;
    ~Snapshot() { reader_->close_one(); }

    // Null before the first commit.
    const T* get() const { return entry_ != nullptr ? &entry_->value : nullptr; }
    const T& operator*() const { return entry_->value; }
    const T* operator->() const { return &entry_->value; }
    explicit operator bool() const { return entry_ != nullptr; }
    // The version it was committed as (0 before the first commit).
    std::uint64_t version() const { return entry_ != nullptr ? entry_->version : 0; }

   private:
    friend class Reader;
    Snapshot(Reader* reader, const Entry* entry) : reader_(reader), entry_(entry) {}
    Reader* reader_;
    const Entry* entry_;
  };

  // One thread's way in. Movable, not copyable; it must not outlive its Config.
  class Reader {
   public:
    explicit Reader(const Config& config) : config_(&config) {}
    Reader(Reader&& other) noexcept
        : config_(other.config_), cached_(std::move(other.cached_)), sequence_(other.sequence_) {}
    Reader(const Reader&) = delete;
    Reader& operator=(const Reader&) = delete;
    Reader& operator=(Reader&&) = delete;
    ~Reader() = default;

    Snapshot get() {
      if (open_ == 0) {
        const std::uint64_t now = config_->sequence_.load(std::memory_order_acquire);
        if (now != sequence_) refresh();
      }
      ++open_;
      return Snapshot(this, cached_.get());
    }

   private:
    friend class Snapshot;
    void refresh() {
      std::lock_guard lock(config_->mutex_);
      cached_ = config_->current_;
      sequence_ = config_->sequence_.load(std::memory_order_relaxed);
    }
    void close_one() {
      // The last snapshot of an object that has been replaced: let it go now, not at the next get().
      if (--open_ == 0 && sequence_ != config_->sequence_.load(std::memory_order_acquire)) {
        cached_.reset();
        sequence_ = kNone;
      }
    }

    static constexpr std::uint64_t kNone = ~std::uint64_t{0};
    const Config* config_;
    std::shared_ptr<const Entry> cached_;
    std::uint64_t sequence_ = kNone;
    int open_ = 0;  // Snapshots taken and not yet destroyed.
  };

  explicit Config(Parser parser) : parser_(std::move(parser)) {}
  Config(const Config&) = delete;
  Config& operator=(const Config&) = delete;

  Reader reader() const { return Reader(*this); }

  // The version of the committed object (0: none yet).
  std::uint64_t version() const {
    std::lock_guard lock(mutex_);
    return current_ ? current_->version : 0;
  }

  // Parses `bytes` as version `version` and stages the result; whatever was staged before is dropped
  // first. Returns "" on success, else why not; then nothing is staged and what is live stays.
  std::string prepare(std::string_view bytes, std::uint64_t version) {
    abort_staged();
    std::optional<Parsed<T>> parsed;
    try {
      parsed.emplace(parser_(bytes));
    } catch (const std::exception& e) {
      return std::string("the parser failed: ") + e.what();
    } catch (...) {
      return "the parser failed with an exception that is not a std::exception";
    }
    if (auto* error = std::get_if<ConfigError>(&*parsed)) {
      std::string message = std::move(error->message);
      return message.empty() ? std::string("the parser refused it without saying why") : message;
    }
    auto entry = std::make_shared<const Entry>(Entry{std::move(std::get<T>(*parsed)), version});
    std::lock_guard lock(mutex_);
    staged_ = std::move(entry);
    return {};
  }

  // Publishes what prepare(…, version) staged. False when nothing of that version is staged.
  bool commit(std::uint64_t version) {
    std::shared_ptr<const Entry> old;  // Freed (if this was its last holder) outside the lock.
    std::lock_guard lock(mutex_);
    if (!staged_ || staged_->version != version) return false;
    old = std::exchange(current_, std::move(staged_));
    sequence_.store(sequence_.load(std::memory_order_relaxed) + 1, std::memory_order_release);
    return true;
  }

  // Drops what prepare(…, version) staged, if it is still there.
  void abort(std::uint64_t version) {
    std::shared_ptr<const Entry> old;
    std::lock_guard lock(mutex_);
    if (staged_ && staged_->version == version) old = std::move(staged_);
  }

  // prepare() and commit() in one, as version version() + 1 unless told otherwise.
  std::string load(std::string_view bytes, std::uint64_t version = 0) {
    if (version == 0) version = this->version() + 1;
    if (auto error = prepare(bytes, version); !error.empty()) return error;
    commit(version);
    return {};
  }

 private:
  void abort_staged() {
    std::shared_ptr<const Entry> old;
    std::lock_guard lock(mutex_);
    old = std::move(staged_);
  }

  Parser parser_;
  mutable std::mutex mutex_;
  std::shared_ptr<const Entry> current_;  // Under mutex_.
  std::shared_ptr<const Entry> staged_;   // Under mutex_.
  // Bumped (release) at each commit, after current_ changed: a reader compares it with the one it
  // saw to know whether its object is still the current one.
  std::atomic<std::uint64_t> sequence_{0};
};

}  // namespace hotrestart
