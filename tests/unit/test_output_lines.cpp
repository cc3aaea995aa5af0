// A worker's output as lines, with no pipe and no loop: the splitter's bounded lines and pieces,
// the tail's bounds, and the tail as a reason quotes it.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "output_lines.h"

using namespace hotrestart;

namespace {

// Feeds `chunks` one after the other, then ends the stream; returns every line handed on.
std::vector<std::string> split(const std::vector<std::string>& chunks, bool finish = true) {
  LineSplitter splitter;
  std::vector<std::string> lines;
  const LineSplitter::Emit keep = [&](std::string_view line) { lines.emplace_back(line); };
  for (const auto& chunk : chunks)
    splitter.feed(chunk, keep);
  if (finish) splitter.finish(keep);
  return lines;
}

using Lines = std::vector<std::string>;

}  // namespace

TEST_CASE("output lines: whole lines are handed on, and a partial one waits for its newline") {
  CHECK(split({"one\ntwo\n"}) == Lines{"one", "two"});
  CHECK(split({"on", "e\ntw", "o\nthr"}, false) == Lines{"one", "two"});
  // At the end of the stream the partial line is handed on as it is.
  CHECK(split({"on", "e\ntw", "o\nthr"}) == Lines{"one", "two", "thr"});
  CHECK(split({"a\n\nb\n"}) == Lines{"a", "", "b"});
  CHECK(split({}) == Lines{});
  CHECK(split({"\n"}) == Lines{""});
}

TEST_CASE("output lines: a line over the limit comes in pieces, and nothing more is held") {
  const std::string piece(kMaxLinePiece, 'x');
  // Exactly the limit, then its newline: one line, and no empty piece after it.
  CHECK(split({piece, "\n"}) == Lines{piece});
  CHECK(split({piece + "\n"}) == Lines{piece});
  // One byte over: a full piece and a one-byte line.
  CHECK(split({piece + "y\n"}) == Lines{piece, "y"});
  CHECK(split({piece, "y", "\n"}) == Lines{piece, "y"});
  // 2.5 pieces in small chunks.
  const std::string long_line = piece + piece + std::string(kMaxLinePiece / 2, 'z');
  std::vector<std::string> chunks;
  for (std::size_t at = 0; at < long_line.size(); at += 1000)
    chunks.push_back(long_line.substr(at, 1000));
  chunks.emplace_back("\nnext\n");
  CHECK(split(chunks) == Lines{piece, piece, std::string(kMaxLinePiece / 2, 'z'), "next"});

  // 50 MB without a newline: pieces of the limit, and never more than one piece held.
  LineSplitter splitter;
  std::size_t pieces = 0;
  std::size_t most_held = 0;
  const std::string block(64 * 1024, 'x');
  for (int i = 0; i < 800; ++i) {
    splitter.feed(block, [&](std::string_view line) {
      CHECK(line.size() == kMaxLinePiece);
      ++pieces;
    });
    most_held = std::max(most_held, splitter.held());
  }
  CHECK(most_held <= kMaxLinePiece);
  CHECK(pieces == 800 * block.size() / kMaxLinePiece);
}

TEST_CASE("output tail: the last lines, bounded in count and bytes, printable, without empty lines") {
  OutputTail tail;
  CHECK(tail.empty());
  CHECK(tail.lines().empty());
  for (int i = 0; i < 30; ++i)
    tail.push("line " + std::to_string(i));
  Lines expected;
  for (int i = 10; i < 30; ++i)
    expected.push_back("line " + std::to_string(i));
  CHECK(tail.lines() == expected);

  // Empty lines (and a CRLF's "\r") push nothing out; control characters are shown as spaces.
  tail.push("");
  tail.push("\r");
  tail.push("with\ttab\x1b[31m red\r");
  expected.erase(expected.begin());
  expected.push_back("with tab [31m red");
  CHECK(tail.lines() == expected);

  // Bytes: long lines push out old ones, until the tail holds at most kBytes.
  tail.push(std::string(1500, 'a'));
  tail.push(std::string(1000, 'b'));
  CHECK(tail.lines() == Lines{std::string(1000, 'b')});
  tail.push(std::string(1048, 'c'));
  CHECK(tail.lines() == Lines{std::string(1000, 'b'), std::string(1048, 'c')});
  CHECK(tail.bytes() == OutputTail::kBytes);
  // A line longer than the whole tail keeps its beginning.
  tail.push("start" + std::string(5000, 'd'));
  const auto lines = tail.lines();
  REQUIRE(lines.size() == 1);
  CHECK(lines[0].size() == OutputTail::kBytes);
  CHECK(lines[0].starts_with("startddd"));
}

TEST_CASE("output tail in a reason: its newest lines, bounded, on one line") {
  CHECK(with_last_output("generation 2 exited", {}) == "generation 2 exited");
  CHECK(with_last_output("generation 2 exited", {"config: line 3: expected '='"}) ==
        "generation 2 exited; its last output: \"config: line 3: expected '='\"");
  // At most kReasonLines lines, the newest, oldest first.
  Lines many;
  for (int i = 0; i < 8; ++i)
    many.push_back(std::to_string(i));
  CHECK(with_last_output("r", many) == "r; its last output: \"3 | 4 | 5 | 6 | 7\"");
  // At most kReasonBytes: older lines that do not fit are left out ...
  const std::string big(900, 'b');
  CHECK(with_last_output("r", {"old", std::string(200, 'a'), big}) == "r; its last output: \"" + big + "\"");
  // ... and a newest line over the budget by itself is cut.
  const std::string reason = with_last_output("r", {std::string(3000, 'c')});
  CHECK(reason == "r; its last output: \"" + std::string(kReasonBytes - 3, 'c') + "...\"");
}
