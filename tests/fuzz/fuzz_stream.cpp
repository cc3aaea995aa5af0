// libFuzzer target: wire::StreamReader on hostile streams, and hotrestart::InputArchive in its
// streaming mode on what they carry. The input goes into one end of a stream_pair() (at most
// 64 KiB, so that it fits the socket's buffer), that end is shut down for writing, and a
// StreamReader with a deadline a second away reads the other end and loads a fuzz::State.
//
// The first byte picks the mode (fuzz_common.h): odd, the rest is the stream as it would arrive;
// even, the rest is a chunk size, an ending and the payload, which the harness cuts into chunks
// with correct checksums and ends as told, so that mutations reach the archive.
//
// Checked, besides that nothing crashes or hangs: every failure has a text; a State that loads
// with at_end() true saves back to exactly the data bytes the stream carried; a stream built with
// a proper end is never refused by the reader, and finish() then returns the bytes the load left;
// a stream built without one never reaches its end, never hands out its last data chunk, and
// fails with the documented error.
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <istream>
#include <sstream>
#include <string>
#include <string_view>

#include <hotrestart/archive.h>
#include <hotrestart/fd.h>

#include <hotrestart/wire/stream.h>
#include "fuzz_common.h"

namespace {

using hotrestart::wire::ChunkKind;
using hotrestart::wire::encode_chunk;
using hotrestart::wire::kChunkHeader;
using hotrestart::wire::kChunkTrailer;

constexpr std::uint64_t kMaxBytes = 1 << 20;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_stream: %s: %s\n", what, detail.c_str());
  std::abort();
}

std::string u64_le(std::uint64_t v) {
  std::string s(8, '\0');
  for (std::size_t i = 0; i < 8; ++i)
    s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

std::string size_text(std::uint64_t n) {
  return std::to_string(n) + (n == 1 ? " byte" : " bytes");
}

// Even mode: the payload in chunks of the given size (at most kMaxStreamChunks of them), and the
// ending. `last` is the size of the last data chunk (0 without one).
struct Built {
  std::string stream;
  std::string payload;
  fuzz::StreamEnding ending = fuzz::StreamEnding::End;
  std::size_t last = 0;
};
bool build(const std::uint8_t* data, std::size_t size, Built& b) {
  if (size < fuzz::kStreamFieldsHeader) return false;
  b.payload.assign(reinterpret_cast<const char*>(data) + fuzz::kStreamFieldsHeader, size - fuzz::kStreamFieldsHeader);
  b.ending = static_cast<fuzz::StreamEnding>(data[1] % 4);
  const std::size_t step = std::max<std::size_t>(
      std::size_t{data[0]} + 1, (b.payload.size() + fuzz::kMaxStreamChunks - 1) / fuzz::kMaxStreamChunks);
  for (std::size_t at = 0; at < b.payload.size(); at += step) {
    const std::string_view part = std::string_view(b.payload).substr(at, step);
    b.stream += encode_chunk(ChunkKind::Data, part);
    b.last = part.size();
  }
  switch (b.ending) {
    case fuzz::StreamEnding::End:
      b.stream += encode_chunk(ChunkKind::End, u64_le(b.payload.size()));
      break;
    case fuzz::StreamEnding::WrongTotal:
      b.stream += encode_chunk(ChunkKind::End, u64_le(b.payload.size() + 1));
      break;
    case fuzz::StreamEnding::Abort:
      b.stream += encode_chunk(ChunkKind::Abort, "fuzz");
      break;
    case fuzz::StreamEnding::None:
      break;
  }
  return true;
}

// The data bytes of a stream the reader accepted to its end chunk: its data chunks' payloads.
std::string data_of(std::string_view stream) {
  std::string out;
  std::size_t at = 0;
  while (stream.size() - at >= kChunkHeader) {
    std::uint32_t kind = 0, length = 0;
    std::memcpy(&kind, stream.data() + at + 4, 4);
    std::memcpy(&length, stream.data() + at + 8, 4);
    if (kind == static_cast<std::uint32_t>(ChunkKind::End)) return out;
    if (kind != static_cast<std::uint32_t>(ChunkKind::Data) ||
        stream.size() - at - kChunkHeader < length + kChunkTrailer)
      fail("an accepted stream holds something other than data chunks before its end", std::to_string(at));
    out.append(stream.substr(at + kChunkHeader, length));
    at += kChunkHeader + length + kChunkTrailer;
  }
  fail("an accepted stream has no end chunk", std::to_string(stream.size()));
}

// Puts the whole stream into the socket without blocking; false if it does not fit.
bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace hotrestart::wire;
  if (size == 0 || size - 1 > fuzz::kMaxStreamInput) return 0;
  const bool built = (data[0] & 1) == 0;
  Built b;
  if (built) {
    if (!build(data + 1, size - 1, b)) return 0;
  } else {
    b.stream.assign(reinterpret_cast<const char*>(data) + 1, size - 1);
  }

  auto pair = stream_pair();
  if (!pair) fail("stream_pair", pair.error().text());
  hotrestart::Fd writer = std::move(pair->first);
  hotrestart::Fd reader_end = std::move(pair->second);
  if (!send_all(writer.get(), b.stream)) return 0;  // A system with smaller socket buffers.
  if (::shutdown(writer.get(), SHUT_WR) != 0) fail("shutdown", std::strerror(errno));

  StreamReader reader(reader_end.get(), StreamReader::Clock::now() + std::chrono::seconds(1), kMaxBytes);
  std::istream in(&reader);
  fuzz::State state;
  bool loaded = false;
  bool at_end = false;
  std::size_t consumed = 0;
  try {
    hotrestart::InputArchive ar(in);
    if (!ar.streaming()) fail("the archive does not stream from a StreamReader", "");
    if (ar.remaining() != kMaxBytes) fail("the archive's bound is not the reader's limit", "");
    ar(state);
    consumed = ar.consumed();
    loaded = true;
    at_end = ar.at_end();
  } catch (const hotrestart::ArchiveError& e) {
    if (std::string(e.what()).empty()) fail("an archive error without a text", "");
  }
  if (loaded && consumed != reader.consumed()) fail("the archive and the reader disagree on the bytes consumed", "");
  if (reader.consumed() > reader.total() || reader.total() > kMaxBytes)
    fail("the reader handed out more than it received, or more than its limit", std::to_string(reader.total()));
  if (at_end && (!reader.error().empty() || !reader.ended())) fail("at_end() with a failed or unended stream", "");

  if (at_end) {
    // The whole stream was valid: the state is exactly what it carried.
    const std::string carried = data_of(b.stream);
    if (carried.size() != consumed || reader.total() != consumed)
      fail("at_end() before every data byte was consumed", std::to_string(consumed));
    std::ostringstream out;
    {
      hotrestart::OutputArchive ar(out);
      ar(state);
    }
    if (std::move(out).str() != carried)
      fail("a loaded stream does not save to the same bytes", std::to_string(consumed));
  }

  const std::uint64_t handed_out = reader.consumed();
  auto left = reader.finish();
  if (!left) {
    if (left.error().text().empty() || reader.error().empty()) fail("finish failed without a text", "");
    if (left.error().text() != reader.error()) fail("finish and error() disagree", reader.error());
  } else {
    if (!reader.at_end()) fail("finish succeeded but the reader is not at its end", "");
    if (*left + handed_out != reader.total()) fail("finish's count does not add up", std::to_string(*left));
    if (data_of(b.stream).size() != reader.total()) fail("the reader's total is not the data carried", "");
  }

  if (built) {
    const std::uint64_t n = b.payload.size();
    switch (b.ending) {
      case fuzz::StreamEnding::End:
        if (!left) fail("a well-formed stream was refused", left.error().text());
        if (reader.total() != n) fail("a well-formed stream's total is wrong", std::to_string(reader.total()));
        break;
      case fuzz::StreamEnding::WrongTotal:
      case fuzz::StreamEnding::Abort:
      case fuzz::StreamEnding::None: {
        if (at_end || left) fail("a stream without its proper end was accepted", "");
        if (handed_out > n - b.last)
          fail("the last data chunk was handed out before the end", std::to_string(handed_out));
        const std::string expected =
            b.ending == fuzz::StreamEnding::WrongTotal
                ? "corrupt: the end chunk states " + size_text(n + 1) + ", but " + size_text(n) + " arrived"
            : b.ending == fuzz::StreamEnding::Abort
                ? std::string("the previous generation's save failed: 'fuzz'")
                : "truncated: the stream ended after " + size_text(n) + ", before its end chunk";
        if (left.error().text() != expected)
          fail("an unexpected error", left.error().text() + " (expected " + expected + ")");
        break;
      }
    }
  }
  return 0;
}
