// Thin owners for the libuv handles the supervisor uses.
//
// A libuv handle must stay in memory until its close callback runs, which is after the
// owner may be gone. Each wrapper therefore keeps the handle and its callback in a heap
// block that the close callback frees; destroying a wrapper (even from inside its own
// callback) is always safe and the callback never runs afterwards.
#pragma once

#include <uv.h>

#include <chrono>
#include <functional>

namespace hotrestart {

class Timer {
 public:
  explicit Timer(uv_loop_t* loop);
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  void start(std::chrono::milliseconds after, std::function<void()> fn);
  void start_repeating(std::chrono::milliseconds every, std::function<void()> fn);
  void stop();
  bool active() const;

 private:
  struct State;
  State* state_;
};

// Watches a file descriptor the wrapper does not own for readability.
class FdWatch {
 public:
  FdWatch(uv_loop_t* loop, int fd, std::function<void()> on_readable);
  ~FdWatch();
  FdWatch(const FdWatch&) = delete;
  FdWatch& operator=(const FdWatch&) = delete;
  bool ok() const;

 private:
  struct State;
  State* state_;
};

// Runs `fn` once per loop iteration, after the iteration's events were handled (a uv_check).
// It does not keep the loop alive.
class AfterEvents {
 public:
  AfterEvents(uv_loop_t* loop, std::function<void()> fn);
  ~AfterEvents();
  AfterEvents(const AfterEvents&) = delete;
  AfterEvents& operator=(const AfterEvents&) = delete;

 private:
  struct State;
  State* state_;
};

// Runs a function on libuv's thread pool, then another on the loop. The work cannot be stopped once
// a thread has it, but destroying the wrapper is always safe: `done` then never runs.
class PoolTask {
 public:
  explicit PoolTask(uv_loop_t* loop) : loop_(loop) {}
  ~PoolTask();
  PoolTask(const PoolTask&) = delete;
  PoolTask& operator=(const PoolTask&) = delete;

  // Starts `work` (which must not touch anything the loop uses) and, once it has returned, runs
  // `done` on the loop. One at a time. Returns libuv's error (and runs neither) when it refuses.
  int start(std::function<void()> work, std::function<void()> done);
  bool busy() const { return current_ != nullptr; }

 private:
  struct State;
  uv_loop_t* loop_;
  State* current_ = nullptr;
};

class SignalWatch {
 public:
  SignalWatch(uv_loop_t* loop, int signo, std::function<void(int)> fn);
  ~SignalWatch();
  SignalWatch(const SignalWatch&) = delete;
  SignalWatch& operator=(const SignalWatch&) = delete;

 private:
  struct State;
  State* state_;
};

}  // namespace hotrestart
