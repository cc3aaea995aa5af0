// What the fuzzers and their seed generator share: how an input is read, and the structure the
// section and stream fuzzers load from a payload.
//
// A random mutation of a frame or a section almost never keeps its checksums right, so each
// fuzzer reads its input in one of two modes, picked by the first byte: odd, the rest is a
// datagram (or section, or stream) as it would arrive; even, the rest gives the fields, and the
// harness builds the frame (or chunks) around them with correct checksums, so that mutations reach
// the body decoder.
#pragma once

#include <cereal/types/string.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace fuzz {

// Even mode for messages: type (2 bytes), descriptor count (1 byte), then the body.
inline constexpr std::size_t kMessageFieldsHeader = 3;
// Even mode for sections: version (4 bytes), sequence (8), name length (1), name, then the payload.
inline constexpr std::size_t kSectionFieldsHeader = 13;
// Even mode for streams: chunk size (1 byte: 1 to 256 bytes a chunk), ending (1 byte, see
// StreamEnding), then the payload, which the harness cuts into chunks.
inline constexpr std::size_t kStreamFieldsHeader = 2;
// How a stream built from fields ends (the ending byte modulo 4).
enum class StreamEnding : std::uint8_t { End = 0, WrongTotal = 1, Abort = 2, None = 3 };
// At most this many bytes go into the socket (so that they fit its buffer), and at most this many
// data chunks are built in even mode.
inline constexpr std::size_t kMaxStreamInput = 64 * 1024;
inline constexpr std::size_t kMaxStreamChunks = 256;

// A structure with the shapes a section's payload usually has.
struct State {
  std::vector<std::pair<std::string, std::string>> entries;
  std::vector<std::uint32_t> numbers;
  std::vector<bool> flags;
  std::vector<std::vector<std::string>> nested;
  std::string tail;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(entries, numbers, flags, nested, tail);
  }
  bool operator==(const State&) const = default;
};

}  // namespace fuzz
