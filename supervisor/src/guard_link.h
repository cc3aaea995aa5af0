// GuardLink: the supervisor's side of its guard (guard.h): starts it, keeps it told of every
// generation's role, deadline and output pipe, starts it again if it dies, and releases it at a
// stop.
//
// The supervisor calls sync() with the whole table after every loop iteration; the link sends only
// what changed, so a quiet supervisor sends nothing.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>

#include "guard_protocol.h"
#include "listener_set.h"
#include "reaper.h"
#include "uv_handles.h"

namespace hotrestart {

class GuardLink {
 public:
  // One generation as the guard should know it, and its output pipe's read end (-1: none any more).
  struct Entry {
    GuardGeneration generation;
    int output_fd = -1;
  };

  // `takeover_path`: where the guard waits, once the supervisor is gone, for one to take over.
  GuardLink(uv_loop_t* loop, Reaper& reaper, const ListenerSet& listeners, std::string name, std::string takeover_path);
  ~GuardLink();
  GuardLink(const GuardLink&) = delete;
  GuardLink& operator=(const GuardLink&) = delete;

  // Starts the guard. A failure is an error to log: the supervisor serves on without one.
  Status start();
  // Called whenever a guard has started (also one that replaces a guard that died), so that the
  // supervisor tells it the table at once rather than after the next event.
  void on_started(std::function<void()> callback) { started_ = std::move(callback); }
  pid_t pid() const { return pid_; }
  // Tells the guard what changed since the last call: new generations (with a duplicate of their
  // output pipe), changed roles or deadlines, and generations that are gone. False when a message
  // could not be sent, so that the rest is told at the next call.
  bool sync(const std::vector<Entry>& table);
  // Tells the guard to exit (every generation has ended), and calls `done` once it has, or after
  // two seconds at the latest.
  void release(std::function<void()> done);

 private:
  void on_exit(pid_t pid, ExitStatus status);
  Status send(nlohmann::json body, std::span<const int> fds = {});

  uv_loop_t* loop_;
  Reaper& reaper_;
  const ListenerSet& listeners_;
  std::string name_;
  std::string takeover_path_;
  Fd link_;
  pid_t pid_ = 0;
  bool releasing_ = false;
  std::function<void()> released_;
  std::function<void()> started_;
  std::map<std::uint64_t, GuardGeneration> told_;  // What the guard knows.
  Timer restart_timer_;
  Timer release_timer_;
};

}  // namespace hotrestart
