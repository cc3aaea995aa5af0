// Fd: the one owner of a file descriptor.
//
// Move-only; -1 means empty; the destructor closes and never throws. close() is not retried
// on EINTR: on Linux the descriptor is released even when close reports EINTR, and a retry
// could close a descriptor another part of the program has just been given.
#pragma once

#include <unistd.h>

#include <utility>

namespace hotrestart {

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }

  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }

  // Gives up ownership without closing.
  int release() { return std::exchange(fd_, -1); }

  void reset(int fd = -1) noexcept {
    int old = std::exchange(fd_, fd);
    if (old >= 0) ::close(old);
  }

 private:
  int fd_ = -1;
};

}  // namespace hotrestart
