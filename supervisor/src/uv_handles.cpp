// The owners of libuv handles (see uv_handles.h).
#include "uv_handles.h"

#include <memory>

namespace hotrestart {
namespace {

template <class State>
void close_and_free(State* state) {
  state->fn = nullptr;
  auto* handle = reinterpret_cast<uv_handle_t*>(&state->handle);
  if (uv_is_closing(handle) == 0) {
    uv_close(handle, [](uv_handle_t* h) { delete static_cast<State*>(h->data); });
  }
}

}  // namespace

struct Timer::State {
  uv_timer_t handle;
  std::function<void()> fn;
};

Timer::Timer(uv_loop_t* loop) : state_(new State) {
  uv_timer_init(loop, &state_->handle);
  state_->handle.data = state_;
}

Timer::~Timer() {
  close_and_free(state_);
}

void Timer::start(std::chrono::milliseconds after, std::function<void()> fn) {
  state_->fn = std::move(fn);
  uv_timer_start(
      &state_->handle,
      [](uv_timer_t* t) {
        auto* s = static_cast<State*>(t->data);
        // A copy: the callback may destroy this Timer, which clears s->fn.
        if (auto callback = s->fn) callback();
      },
      static_cast<std::uint64_t>(after.count() < 0 ? 0 : after.count()), 0);
}

void Timer::start_repeating(std::chrono::milliseconds every, std::function<void()> fn) {
  state_->fn = std::move(fn);
  const auto ms = static_cast<std::uint64_t>(every.count() <= 0 ? 1 : every.count());
  uv_timer_start(
      &state_->handle,
      [](uv_timer_t* t) {
        auto* s = static_cast<State*>(t->data);
        if (auto callback = s->fn) callback();
      },
      ms, ms);
}

void Timer::stop() {
  uv_timer_stop(&state_->handle);
  state_->fn = nullptr;
}

bool Timer::active() const {
  return uv_is_active(reinterpret_cast<const uv_handle_t*>(&state_->handle)) != 0;
}

struct FdWatch::State {
  uv_poll_t handle;
  std::function<void()> fn;
  bool ok = false;
};

FdWatch::FdWatch(uv_loop_t* loop, int fd, std::function<void()> on_readable) : state_(new State) {
  state_->fn = std::move(on_readable);
  state_->handle.data = state_;
  if (uv_poll_init(loop, &state_->handle, fd) != 0) {
    // Never initialised, so there is no handle to close.
    delete state_;
    state_ = nullptr;
    return;
  }
  state_->handle.data = state_;
  state_->ok = uv_poll_start(&state_->handle, UV_READABLE, [](uv_poll_t* p, int, int) {
                 auto* s = static_cast<State*>(p->data);
                 if (auto callback = s->fn) callback();
               }) == 0;
}

FdWatch::~FdWatch() {
  if (state_ != nullptr) close_and_free(state_);
}

bool FdWatch::ok() const {
  return state_ != nullptr && state_->ok;
}

struct AfterEvents::State {
  uv_check_t handle;
  std::function<void()> fn;
};

AfterEvents::AfterEvents(uv_loop_t* loop, std::function<void()> fn) : state_(new State) {
  state_->fn = std::move(fn);
  uv_check_init(loop, &state_->handle);
  state_->handle.data = state_;
  uv_check_start(&state_->handle, [](uv_check_t* h) {
    auto* s = static_cast<State*>(h->data);
    if (auto callback = s->fn) callback();
  });
  uv_unref(reinterpret_cast<uv_handle_t*>(&state_->handle));
}

AfterEvents::~AfterEvents() {
  close_and_free(state_);
}

struct SignalWatch::State {
  uv_signal_t handle;
  std::function<void(int)> fn;
};

SignalWatch::SignalWatch(uv_loop_t* loop, int signo, std::function<void(int)> fn) : state_(new State) {
  state_->fn = std::move(fn);
  uv_signal_init(loop, &state_->handle);
  state_->handle.data = state_;
  uv_signal_start(
      &state_->handle,
      [](uv_signal_t* h, int sig) {
        auto* s = static_cast<State*>(h->data);
        if (auto callback = s->fn) callback(sig);
      },
      signo);
}

SignalWatch::~SignalWatch() {
  close_and_free(state_);
}

struct PoolTask::State {
  uv_work_t request{};
  std::function<void()> work;
  std::function<void()> done;
  PoolTask* owner = nullptr;  // Null once the owner is gone.
};

PoolTask::~PoolTask() {
  if (current_ != nullptr) current_->owner = nullptr;
}

int PoolTask::start(std::function<void()> work, std::function<void()> done) {
  if (current_ != nullptr) return UV_EBUSY;
  auto* state = new State;
  state->work = std::move(work);
  state->done = std::move(done);
  state->owner = this;
  state->request.data = state;
  const int rc = uv_queue_work(
      loop_, &state->request, [](uv_work_t* req) { static_cast<State*>(req->data)->work(); },
      [](uv_work_t* req, int) {
        std::unique_ptr<State> s(static_cast<State*>(req->data));
        if (s->owner == nullptr) return;
        s->owner->current_ = nullptr;
        // Last: `done` may destroy the owner, or start the next task.
        s->done();
      });
  if (rc != 0) {
    delete state;
    return rc;
  }
  current_ = state;
  return 0;
}

}  // namespace hotrestart
