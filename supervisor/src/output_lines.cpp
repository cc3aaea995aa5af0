// Lines of a worker's output: the splitter, the tail, and the tail in a reason (see output_lines.h).
#include "output_lines.h"

#include <algorithm>

#include <hotrestart/base/text.h>

namespace hotrestart {

// ---------------------------------------------------------------------------------------------
// The splitter

void LineSplitter::feed(std::string_view bytes, const Emit& emit) {
  while (!bytes.empty()) {
    const std::size_t newline = bytes.find('\n');
    const std::size_t room = kMaxLinePiece - partial_.size();
    if (newline == std::string_view::npos && bytes.size() <= room) {
      // Held, even when it fills the piece exactly: a newline may still come and end the line.
      partial_.append(bytes);
      return;
    }
    if (newline != std::string_view::npos && newline <= room) {
      emit_joined(bytes.substr(0, newline), emit);
      bytes.remove_prefix(newline + 1);
    } else {
      emit_joined(bytes.substr(0, room), emit);
      bytes.remove_prefix(room);
    }
  }
}

void LineSplitter::finish(const Emit& emit) {
  if (partial_.empty()) return;
  emit(partial_);
  partial_.clear();
}

void LineSplitter::emit_joined(std::string_view rest, const Emit& emit) {
  if (partial_.empty()) {
    emit(rest);
    return;
  }
  partial_.append(rest);
  emit(partial_);
  partial_.clear();  // Keeps its capacity: a flood of long lines reuses the one buffer.
}

// ---------------------------------------------------------------------------------------------
// The tail

void OutputTail::push(std::string_view line) {
  if (line.ends_with('\r')) line.remove_suffix(1);
  if (line.empty()) return;
  line = line.substr(0, kBytes);
  while (count_ > 0 && (count_ == kLines || bytes_ + line.size() > kBytes)) {
    bytes_ -= slots_[first_].size();
    first_ = (first_ + 1) % kLines;
    --count_;
  }
  slots_[(first_ + count_) % kLines].assign(line);
  ++count_;
  bytes_ += line.size();
}

std::vector<std::string> OutputTail::lines() const {
  std::vector<std::string> out;
  out.reserve(count_);
  for (std::size_t i = 0; i < count_; ++i)
    out.push_back(printable(slots_[(first_ + i) % kLines], ' '));
  return out;
}

// ---------------------------------------------------------------------------------------------
// The tail in a reason

std::string with_last_output(std::string reason, const std::vector<std::string>& lines) {
  const std::string quoted = last_lines_text(lines);
  if (quoted.empty()) return reason;
  return reason + "; its last output: \"" + quoted + "\"";
}

std::string last_lines_text(const std::vector<std::string>& lines) {
  constexpr std::string_view kSeparator = " | ";
  constexpr std::string_view kCut = "...";
  // The newest lines that fit, counted from the end.
  std::size_t taken = 0;
  std::size_t bytes = 0;
  while (taken < lines.size() && taken < kReasonLines) {
    const std::size_t more = lines[lines.size() - 1 - taken].size() + (taken > 0 ? kSeparator.size() : 0);
    if (taken > 0 && bytes + more > kReasonBytes) break;
    bytes += more;
    ++taken;
  }
  std::string quoted;
  for (std::size_t i = lines.size() - taken; i < lines.size(); ++i) {
    if (!quoted.empty()) quoted += kSeparator;
    quoted += lines[i];
  }
  // Only a newest line that is longer than the whole budget by itself is cut.
  if (quoted.size() > kReasonBytes) quoted = quoted.substr(0, kReasonBytes - kCut.size()) + std::string(kCut);
  return quoted;
}

}  // namespace hotrestart
