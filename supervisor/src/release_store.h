// ReleaseStore: the state directory (--state-dir), where the release history outlives the
// supervisor, and the executables of recent good releases, held open for `rollback`.
//
// Disk never stops serving (DESIGN.md, invariant 12): the history is written by a thread of
// libuv's pool, never by the loop, as a whole new file (temp file, fsync, rename, fsync of the
// directory), so that a reader or a crash sees the old file or the new one, never a mix. A write
// that fails (a full or read-only disk) is kept for `status` and retried with the next change; the
// history in memory goes on. At most one write runs at a time, and changes made meanwhile are
// written together by the next one.
//
// The directory is locked (flock on DIR/lock) for as long as the supervisor runs: two supervisors
// that would share a history are a mistake, refused at start.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>

#include "executable.h"
#include "releases.h"

namespace hotrestart {

// The default state directory for a supervisor name: $STATE_DIRECTORY/NAME when systemd's
// StateDirectory= set it, /var/lib/hotrestart/NAME for root, else
// ${XDG_STATE_HOME:-$HOME/.local/state}/hotrestart/NAME.
std::string default_state_dir(const std::string& name);

// Writes `contents` to `path` atomically: a temp file beside it, fsync, rename over `path`, fsync of
// the directory. Blocking: call it off the loop.
Status write_file_atomically(const std::string& path, const std::string& contents);

// One file written atomically (write_file_atomically) by a thread of libuv's pool, never by the
// loop. At most one write runs at a time; contents saved meanwhile are written by the next one
// (only the newest). `done` hears each write's outcome, on the loop.
class BackgroundFile {
 public:
  BackgroundFile(uv_loop_t* loop, std::string path, std::function<void(Status)> done);
  ~BackgroundFile();
  BackgroundFile(const BackgroundFile&) = delete;
  BackgroundFile& operator=(const BackgroundFile&) = delete;

  void save(std::string contents);
  // The same, with the contents made by `render` on the thread pool: it must own what it reads.
  void save_rendered(std::function<std::string()> render);
  const std::string& path() const { return path_; }

 private:
  struct Write;
  void start_write();
  void write_done(Status status);

  uv_loop_t* loop_;
  std::string path_;
  std::function<void(Status)> done_;
  bool writing_ = false;
  std::function<std::string()> pending_;  // Saved while a write ran: written when it ends.
  // The write in flight reaches this object only through it, cleared by the destructor.
  std::shared_ptr<BackgroundFile*> self_ = std::make_shared<BackgroundFile*>(this);
};

class ReleaseStore {
 public:
  // How many of the newest good releases keep their executable open for rollback.
  static constexpr std::size_t kPinned = 5;
  static constexpr const char* kHistoryFile = "releases.json";

  ReleaseStore(uv_loop_t* loop, std::string dir);
  ~ReleaseStore();
  ReleaseStore(const ReleaseStore&) = delete;
  ReleaseStore& operator=(const ReleaseStore&) = delete;

  // Creates the directory (0700) if needed, locks it, and reads the history. Fails only when
  // another supervisor holds the directory; any other trouble (the disk) is kept for status(), and
  // the supervisor runs with a history in memory only.
  Status open();

  ReleaseHistory& history() { return history_; }
  const ReleaseHistory& history() const { return history_; }
  // Writes the history in the background (see above).
  void save();

  // Keeps `image` open for release `release`, and returns the image to run it from: one already
  // held with the same contents (same path and hash) if there is one, so that releases of one
  // executable share one descriptor.
  std::shared_ptr<const ExecutableImage> pin(std::uint64_t release, std::shared_ptr<const ExecutableImage> image);
  // The executable release `number` ran, if it is still held.
  std::shared_ptr<const ExecutableImage> pinned(std::uint64_t number) const;
  // Keeps only the newest kPinned good releases' executables (and `keep`'s).
  void trim_pins(std::uint64_t keep);

  const std::string& dir() const { return dir_; }
  // {"dir", "error", "saved_ms"}: where the history is, the last write's (or the start's) error.
  nlohmann::json status_json() const;
  const std::string& error() const { return error_; }

 private:
  void write_done(Status status);

  uv_loop_t* loop_;
  std::string dir_;
  std::unique_ptr<BackgroundFile> file_;
  Fd lock_;
  ReleaseHistory history_;
  std::map<std::uint64_t, std::shared_ptr<const ExecutableImage>> pins_;
  bool persistent_ = false;  // The directory is usable: writes are tried.
  std::string error_;
  std::int64_t saved_ms_ = 0;
};

std::int64_t wall_clock_ms();

}  // namespace hotrestart
