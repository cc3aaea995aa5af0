// Error values that name what failed and why.
//
// Every fallible call in the supervisor, the SDK and the wire codec returns a Result<T>. Its error text names the
// operation first ("bind 127.0.0.1:8080: Address already in use"), so that a log line or a
// CLI message explains itself without a stack trace. Error policy: in the handoff path every
// error ends in a rollback of the new generation; nothing here throws across the event loop.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>
#include <variant>

namespace hotrestart {

class Error {
 public:
  // "what: strerror(err)", with the errno kept for callers that branch on it.
  static Error from_errno(std::string what, int err) {
    Error e;
    e.code_ = err;
    e.text_ = std::move(what) + ": " + std::strerror(err);
    return e;
  }
  static Error from_errno(std::string what) { return from_errno(std::move(what), errno); }
  static Error message(std::string text) {
    Error e;
    e.text_ = std::move(text);
    return e;
  }
  // A message of its own for a failure that callers still branch on by its errno.
  static Error message(std::string text, int err) {
    Error e = message(std::move(text));
    e.code_ = err;
    return e;
  }

  const std::string& text() const { return text_; }
  int code() const { return code_; }

  // Prefixes the message with context: "listener http: " + "bind ...".
  Error context(const std::string& where) const {
    Error e = *this;
    e.text_ = where + ": " + text_;
    return e;
  }

 private:
  std::string text_;
  int code_ = 0;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}      // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  T& operator*() & { return value(); }

  const Error& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)), ok_(false) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  const Error& error() const { return error_; }

 private:
  Error error_;
  bool ok_ = true;
};

using Status = Result<void>;

}  // namespace hotrestart
