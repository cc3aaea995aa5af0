// A cereal binary input archive that never trusts a length it reads.
//
// cereal's own BinaryInputArchive resizes a container to the count stored in the data before it
// reads one element, so a corrupted or hostile count can ask for gigabytes. InputArchive reads
// from a span of bytes it knows the size of, and refuses (throws ArchiveError) any count larger
// than the bytes left, any read past the end, and any bool that is neither 0 nor 1. Use it in a
// Section's `load`:
//
//   .load = [&](std::uint32_t v, std::istream& in) {
//     hotrestart::InputArchive archive(in);   // bounded by what the SDK's stream holds
//     Cache staging;
//     archive(staging);
//     cache.swap(staging);                      // whole or nothing
//   }
//
// A section the exporter streams (Section::stream) is read as it arrives instead: the archive then
// knows only an upper bound on the bytes left (the importer's Worker::Options::max_section_bytes),
// so a count is checked against that bound only; strings and vectors grow as their bytes arrive
// rather than to their count at once (cereal's loaders of deques, lists, vector<bool>, valarrays
// and unordered sets do not: see docs/sdk.md), and at_end() (not remaining() == 0) says whether
// the data is exhausted.
//
// The layout is cereal's BinaryOutputArchive's (fixed-size little-endian integers, 64-bit counts),
// so `hotrestart::OutputArchive` (cereal::BinaryOutputArchive) writes what this reads. Include
// cereal's type headers (<cereal/types/string.hpp>, <cereal/types/vector.hpp>, ...) as usual.
#pragma once

#include <cereal/archives/binary.hpp>
#include <cereal/cereal.hpp>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <istream>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace hotrestart {

class ArchiveError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using OutputArchive = cereal::BinaryOutputArchive;

class InputArchive : public cereal::InputArchive<InputArchive, cereal::AllowEmptyClassElision> {
 public:
  // Reads the bytes of `data`; they must outlive the archive.
  explicit InputArchive(std::span<const std::byte> data)
      : cereal::InputArchive<InputArchive, cereal::AllowEmptyClassElision>(this), data_(data) {}
  // Reads what `in` holds. The SDK's streams are read in place; any other stream is first read to
  // its end into a buffer the archive owns. When the archive ends, the stream is positioned just
  // past the bytes the archive consumed (if the stream can seek; otherwise it stays at its end).
  explicit InputArchive(std::istream& in);
  ~InputArchive() noexcept override;
  InputArchive(const InputArchive&) = delete;
  InputArchive& operator=(const InputArchive&) = delete;

  void loadBinary(void* out, std::size_t size) {
    if (stream_ != nullptr) {
      read_stream(out, size);
      return;
    }
    if (size > remaining()) throw ArchiveError("truncated: a field reaches past the end of the data");
    if (size == 0) return;
    std::memcpy(out, data_.data() + offset_, size);
    offset_ += size;
  }
  // The next `size` bytes, consumed as by loadBinary but without a copy where they lie in memory:
  // a section through a memfd, or a span the archive was made over; the span is then valid while
  // that memory is. (Over any other std::istream the archive reads the bytes into a copy of its
  // own, and the span lasts as long as the archive.) A streamed section's bytes are read into
  // `scratch` (at least `size` bytes) and the span is that.
  std::span<const std::byte> view(std::size_t size, std::span<std::byte> scratch) {
    if (stream_ != nullptr) {
      if (size > scratch.size()) throw std::length_error("InputArchive::view: the scratch buffer is too small");
      read_stream(scratch.data(), size);
      return scratch.first(size);
    }
    if (size > remaining()) throw ArchiveError("truncated: a field reaches past the end of the data");
    const auto bytes = data_.subspan(offset_, size);
    offset_ += size;
    return bytes;
  }

  // A count of elements must leave at least `min_bytes_each` bytes (at least one) per element.
  void check_count(std::uint64_t count, std::uint64_t min_bytes_each = 1) const {
    if (min_bytes_each == 0) min_bytes_each = 1;
    if (count > remaining() / min_bytes_each) throw ArchiveError("corrupt: a count is larger than the data left");
  }
  // The bytes left; for a streamed section, the most there can be.
  std::size_t remaining() const { return stream_ != nullptr ? stream_bound_ - offset_ : data_.size() - offset_; }
  std::size_t consumed() const { return offset_; }
  // Whether every byte was read (for a streamed section: and its end arrived intact). Throws
  // ArchiveError when the stream failed.
  bool at_end() { return stream_ != nullptr ? stream_at_end() : remaining() == 0; }
  // Whether the bytes are read as they arrive (a streamed section), with no total known.
  bool streaming() const { return stream_ != nullptr; }
  // How many elements of `each` bytes to reserve for a count that check_count() accepted: the
  // count, but no more than the bytes left could hold, or (streaming) than 1 MiB holds.
  std::size_t reserve_hint(std::uint64_t count, std::size_t each) const {
    const std::uint64_t cap =
        (stream_ != nullptr ? std::uint64_t{1} << 20 : remaining()) / std::max<std::size_t>(each, 1) + 1;
    return static_cast<std::size_t>(std::min(count, cap));
  }
  // Resizes `c` (a string or a vector of arithmetic values) to `count` elements and reads them.
  // Streaming, it grows a megabyte at a time, so that memory follows the bytes that arrived.
  template <class C>
  void load_contiguous(C& c, std::uint64_t count) {
    using T = typename C::value_type;
    if (stream_ == nullptr) {
      c.resize(static_cast<std::size_t>(count));
      loadBinary(c.data(), static_cast<std::size_t>(count) * sizeof(T));
      return;
    }
    c.clear();
    const std::size_t step = std::max<std::size_t>((std::size_t{1} << 20) / sizeof(T), 1);
    while (c.size() < count) {
      const std::size_t old = c.size();
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(step, count - old));
      c.resize(old + n);
      loadBinary(c.data() + old, n * sizeof(T));
    }
  }

 private:
  void read_stream(void* out, std::size_t size);
  bool stream_at_end();

  std::string owned_;  // The bytes of a stream that could not be read in place.
  std::span<const std::byte> data_;
  std::size_t offset_ = 0;
  std::streambuf* source_ = nullptr;  // Positioned past what was consumed when the archive ends.
  std::streamoff source_start_ = -1;  // Where the archive started reading; -1 if it cannot seek.
  std::streambuf* stream_ = nullptr;  // A streamed section's reader, read as its bytes arrive.
  std::size_t stream_bound_ = 0;      // The most bytes it can still hold, when the archive began.
};

namespace detail {
// Arithmetic types but bool, which has a loader of its own.
template <class T>
concept PlainArithmetic = std::is_arithmetic_v<T> && !std::is_same_v<T, bool>;
// Anything but bool: cereal's vector<bool> loader reads one byte per element, which the SizeTag
// check already bounds.
template <class T>
concept NotBool = !std::is_same_v<T, bool>;
}  // namespace detail

// Arithmetic values: fixed-size, as BinaryOutputArchive writes them.
template <detail::PlainArithmetic T>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, T& t) {
  ar.loadBinary(std::addressof(t), sizeof(t));
}
// A bool is one byte; anything but 0 or 1 would be undefined behaviour to copy into a bool.
inline void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, bool& b) {
  std::uint8_t byte = 0;
  ar.loadBinary(&byte, 1);
  if (byte > 1) throw ArchiveError("corrupt: a bool is neither 0 nor 1");
  b = byte == 1;
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, cereal::NameValuePair<T>& t) {
  ar(t.value);
}
// A container's count: checked against the bytes left before cereal resizes anything.
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, cereal::SizeTag<T>& t) {
  std::uint64_t count = 0;
  ar.loadBinary(&count, sizeof count);
  ar.check_count(count);
  t.size = static_cast<std::remove_reference_t<T>>(count);
}
template <class T>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, cereal::BinaryData<T>& t) {
  ar.loadBinary(t.data, static_cast<std::size_t>(t.size));
}

// Strings and vectors replace cereal's loaders (these are more specialized, so they win): cereal
// resizes to the count first, which the SizeTag check bounds only to one byte per element, while
// an element of a wide string or of a vector of integers takes sizeof(T) bytes. Vectors of other
// types grow as their elements are read, so memory follows the bytes actually consumed.
template <class C, class Traits, class Alloc>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, std::basic_string<C, Traits, Alloc>& s) {
  cereal::size_type count = 0;
  ar(cereal::make_size_tag(count));
  ar.check_count(count, sizeof(C));
  ar.load_contiguous(s, count);
}
template <detail::NotBool T, class Alloc>
void CEREAL_LOAD_FUNCTION_NAME(InputArchive& ar, std::vector<T, Alloc>& v) {
  cereal::size_type count = 0;
  ar(cereal::make_size_tag(count));
  if constexpr (std::is_arithmetic_v<T>) {
    ar.check_count(count, sizeof(T));
    ar.load_contiguous(v, count);
  } else {
    v.clear();
    v.reserve(ar.reserve_hint(count, sizeof(T)));
    for (cereal::size_type i = 0; i < count; ++i)
      ar(v.emplace_back());
  }
}

}  // namespace hotrestart

CEREAL_REGISTER_ARCHIVE(hotrestart::InputArchive)

// load_minimal (which cereal uses for enums, among others) needs to know the output archive that
// pairs with an input archive. Only this direction is declared: BinaryOutputArchive already pairs
// with cereal's own BinaryInputArchive.
namespace cereal::traits::detail {
template <>
struct get_output_from_input<hotrestart::InputArchive> {
  using type = cereal::BinaryOutputArchive;
};
}  // namespace cereal::traits::detail
