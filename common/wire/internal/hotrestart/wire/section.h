// State sections in memfds: see docs/protocol.md, "Section format".
//
// The exporter writes a section with SectionWriter (a std::streambuf over a memfd that computes
// the checksum as the bytes go by), then seals it. The importer maps it with open_section(),
// which checks the seals, the header against the offer, the size and the checksum before any
// payload byte is handed out. decode_section() is the same check over bytes in memory, for tests
// and the fuzzer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <ostream>
#include <span>
#include <streambuf>
#include <string>
#include <string_view>

#include <hotrestart/fd.h>

#include <hotrestart/base/result.h>
#include <hotrestart/wire/message.h>

namespace hotrestart::wire {

inline constexpr char kSectionMagic[8] = {'H', 'R', 'S', 'E', 'C', 'T', '0', '1'};
inline constexpr std::size_t kSectionFixedHeader = 52;  // Plus the name.

// The header's fields are exactly those of the offer that announces the section (one struct, so
// that the two cannot drift apart); their layout in the memfd is the one in docs/protocol.md.
using SectionHeader = SectionOffer;

// Writes `save`'s output as one section into a new sealed memfd. `max_bytes` bounds the payload;
// an exporter that writes more fails with an error saying so. If `save` throws, the error names
// the exception's message.
struct WrittenSection {
  Fd memfd;
  SectionOffer offer;  // What to send with it.
};
Result<WrittenSection> write_section(const std::string& name, std::uint32_t version, std::uint64_t sequence,
                                     const std::function<void(std::ostream&)>& save, std::uint64_t max_bytes);

// A validated section mapped read-only. Unmaps on destruction.
class MappedSection {
 public:
  MappedSection() = default;
  MappedSection(MappedSection&& other) noexcept;
  MappedSection& operator=(MappedSection&& other) noexcept;
  ~MappedSection();
  MappedSection(const MappedSection&) = delete;
  MappedSection& operator=(const MappedSection&) = delete;

  const SectionHeader& header() const { return header_; }
  std::span<const std::byte> payload() const { return payload_; }

 private:
  friend Result<MappedSection> open_section(Fd memfd, const SectionOffer& offer, std::uint64_t max_bytes);
  void* map_ = nullptr;
  std::size_t map_size_ = 0;
  SectionHeader header_;
  std::span<const std::byte> payload_;
};

// Checks that the memfd is sealed against writes, resizes and further sealing, maps it, and
// checks it against `offer` and `max_bytes` (see docs/protocol.md). Errors name the check.
Result<MappedSection> open_section(Fd memfd, const SectionOffer& offer, std::uint64_t max_bytes);

// The same checks over a whole section in memory (header + payload). Returns the header; the
// payload is the bytes after header_length.
struct SectionView {
  SectionHeader header;
  std::span<const std::byte> payload;
};
Result<SectionView> decode_section(std::span<const std::byte> whole, std::uint64_t max_bytes);
// The bytes of a section (header + payload), for tests.
std::string encode_section(const std::string& name, std::uint32_t version, std::uint64_t sequence,
                           std::string_view payload);

// A std::istream over bytes in memory, whose rdbuf()->in_avail() is the bytes left (what
// InputArchive(std::istream&) relies on).
class SpanStreamBuf : public std::streambuf {
 public:
  explicit SpanStreamBuf(std::span<const std::byte> bytes);

  // The bytes not read yet, so that InputArchive can read them in place (and then seek past
  // what it consumed).
  std::span<const std::byte> unread() const;

 protected:
  // Positions within the span (std::ios_base::beg, cur and end), so that tellg and seekg work.
  pos_type seekoff(off_type off, std::ios_base::seekdir dir, std::ios_base::openmode which) override;
  pos_type seekpos(pos_type pos, std::ios_base::openmode which) override;
};

}  // namespace hotrestart::wire
