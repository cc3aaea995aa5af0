// The pure part of a worker's output: cutting its stderr's bytes into bounded lines, the bounded
// tail of its last lines, and that tail as verdicts and crash notes quote it. No I/O here, so
// that tests feed bytes directly; worker_output.h reads the pipe and relays the lines.
#pragma once

#include <array>
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace hotrestart {

// The longest piece of a line that is relayed as one line. A relayed text line is its prefix (a
// time and "gen3[1234]: ", at most kMaxRelayPrefix bytes, log.h), the piece and "\n": at most 4096
// bytes (PIPE_BUF), so that the one write() that carries it into a pipe is atomic and never
// interleaves with the lines of another writer.
inline constexpr std::size_t kMaxLinePiece = 4000;

// Cuts a byte stream into lines. Each complete line is handed on without its "\n"; a line longer
// than kMaxLinePiece is handed on in pieces of that size, each as a line of its own; a partial
// line is held until its newline or finish(). It never holds more than kMaxLinePiece bytes.
class LineSplitter {
 public:
  using Emit = std::function<void(std::string_view line)>;

  // Calls `emit` for each line (or piece) that `bytes` completes.
  void feed(std::string_view bytes, const Emit& emit);
  // The stream has ended: the partial line held, if any, is handed on.
  void finish(const Emit& emit);
  std::size_t held() const { return partial_.size(); }

 private:
  void emit_joined(std::string_view rest, const Emit& emit);

  std::string partial_;
};

// The last lines of a generation's output, as status, verdicts and crash notes show them: at most
// kLines lines and kBytes bytes, oldest first. Empty lines are not kept, since they would push out
// lines that say something, and a line longer than kBytes keeps its beginning, where messages put
// what matters. The lines are kept as they came (less a trailing "\r") in slots that are reused,
// so that a flood of lines does not churn memory; lines() makes them printable.
class OutputTail {
 public:
  static constexpr std::size_t kLines = 20;
  static constexpr std::size_t kBytes = 2048;

  void push(std::string_view line);
  // The lines, oldest first, each made printable (control characters become spaces).
  std::vector<std::string> lines() const;
  bool empty() const { return count_ == 0; }
  std::size_t bytes() const { return bytes_; }

 private:
  std::array<std::string, kLines> slots_;
  std::size_t first_ = 0;  // The oldest line's slot.
  std::size_t count_ = 0;
  std::size_t bytes_ = 0;
};

// `reason` followed, when `lines` (a tail's lines()) is not empty, by `; its last output: "..."`
// with its newest lines joined by " | ": at most kReasonLines lines and kReasonBytes bytes, so that
// a verdict stays one readable line; the whole tail is in the "last_output" fields.
inline constexpr std::size_t kReasonLines = 5;
inline constexpr std::size_t kReasonBytes = 1024;
std::string with_last_output(std::string reason, const std::vector<std::string>& lines);
// The newest of `lines` joined as with_last_output quotes them ("a | b"), or "" when there are none.
std::string last_lines_text(const std::vector<std::string>& lines);

}  // namespace hotrestart
