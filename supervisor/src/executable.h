// ExecutableImage: the file a release runs, opened once, hashed from the open file and, for a
// compiled program, executed from that same descriptor, so that what runs is exactly what was
// hashed and recorded, however the file on disk changes afterwards.
//
// A script (#!) cannot run from a descriptor: its interpreter opens it again by name. So a script
// runs from its path, and its interpreter's path and hash are recorded too; a rollback to a script
// runs only while both are still what they were.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>

namespace hotrestart {

class ExecutableImage {
 public:
  enum class Kind { Program, Script };

  // Opens `path` (a regular file this process may execute) and hashes it.
  static Result<ExecutableImage> open(const std::string& path);
  // The same, shared, as releases and generations keep it.
  static Result<std::shared_ptr<const ExecutableImage>> open_shared(const std::string& path);

  const std::string& path() const { return path_; }  // Absolute.
  Kind kind() const { return kind_; }
  const std::string& sha256() const { return sha256_; }  // Lower-case hex.
  std::uint64_t size() const { return size_; }
  // Script: the interpreter its #! line names, and that file's hash ("" when it cannot be read).
  const std::string& interpreter() const { return interpreter_; }
  const std::string& interpreter_sha256() const { return interpreter_sha256_; }
  // The open file, close-on-exec: exec it with execveat(fd, "", ..., AT_EMPTY_PATH) (Program only).
  int fd() const { return fd_.get(); }

  // Whether the file at path() is still what it was (same hash), and, for a script, whether its
  // interpreter is; otherwise an error saying what changed.
  Status still_on_disk() const;
  // Whether what would run now is what was hashed: for a program, the bytes of the open file (a file
  // rewritten in place, rather than replaced, changes those too); for a script, still_on_disk().
  Status unchanged() const;

 private:
  std::string path_;
  Kind kind_ = Kind::Program;
  std::string sha256_;
  std::uint64_t size_ = 0;
  std::string interpreter_;
  std::string interpreter_sha256_;
  Fd fd_;
};

// The SHA-256 of everything `fd` holds from its start, in lower-case hex.
Result<std::string> sha256_of(int fd);

}  // namespace hotrestart
