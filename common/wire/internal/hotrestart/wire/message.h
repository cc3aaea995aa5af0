// The worker channel's messages and their frame codec: see docs/protocol.md, "Worker channel".
//
// Pure: no I/O. encode() builds one datagram; decode() checks a datagram (header, checksums,
// limits, exact consumption of the body, names and counts) and returns the message or an error
// naming what was wrong. channel.h sends and receives these with their descriptors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <hotrestart/base/result.h>
#include <hotrestart/base/text.h>  // quote(), for the errors that name what a peer sent.

namespace hotrestart::wire {

inline constexpr std::uint16_t kProtocolVersion = 3;
inline constexpr std::size_t kHeaderSize = 32;
inline constexpr std::size_t kMaxBody = 64 * 1024;
inline constexpr std::size_t kMaxDatagram = kHeaderSize + kMaxBody;
inline constexpr std::size_t kMaxFdsPerMessage = 253;  // SCM_MAX_FD
inline constexpr std::size_t kMaxNameLength = 128;
inline constexpr std::size_t kMaxTextLength = 1024;
inline constexpr std::size_t kMaxVersions = 64;
inline constexpr std::size_t kMaxSections = 256;
inline constexpr std::size_t kMaxDeltaPayload = 60'000;

enum class Type : std::uint16_t {
  Hello = 1,
  Ready = 2,
  Status = 3,
  SectionImported = 4,
  ImportFinished = 5,
  SectionExported = 6,
  ExportFinished = 7,
  Welcome = 32,
  Refuse = 33,
  Listeners = 34,
  BeginImport = 35,
  BeginExport = 36,
  Drain = 37,
  Stop = 38,
  SectionOffer = 64,
  SectionUnavailable = 65,
  Fds = 66,
  SnapshotEnd = 67,
  Delta = 68,
  DeltaMemfd = 69,
  ArenaOffer = 70,
  SectionStream = 71,
};
std::string_view type_name(Type t);

struct SectionVersions {
  std::string name;
  std::vector<std::uint32_t> versions;
  bool arena = false;  // The importer takes this section as an arena too (Section::load_arena).
  bool operator==(const SectionVersions&) const = default;
};

struct SectionReport {
  std::string name;
  bool ok = false;
  std::uint32_t version = 0;
  std::uint64_t bytes = 0;
  std::uint64_t micros = 0;
  std::string reason;
  bool operator==(const SectionReport&) const = default;
};

struct TransferTotals {
  std::uint32_t sections = 0;
  std::uint32_t done = 0;  // imported, or exported
  std::uint64_t bytes = 0;
  std::uint64_t micros = 0;
  bool operator==(const TransferTotals&) const = default;
};

struct Hello {
  std::uint16_t min_version = kProtocolVersion;
  std::uint16_t max_version = kProtocolVersion;
  std::int32_t pid = 0;
  std::string sdk;
  std::vector<SectionVersions> imports;
  std::vector<SectionVersions> exports;
  bool operator==(const Hello&) const = default;
};
struct Ready {
  bool operator==(const Ready&) const = default;
};
// (Named StatusLine, not Status, because hotrestart::Status is the result type.)
struct StatusLine {
  std::string text;
  bool operator==(const StatusLine&) const = default;
};
struct SectionImported {
  SectionReport report;
  bool operator==(const SectionImported&) const = default;
};
struct ImportFinished {
  TransferTotals totals;
  bool operator==(const ImportFinished&) const = default;
};
struct SectionExported {
  SectionReport report;
  bool operator==(const SectionExported&) const = default;
};
struct ExportFinished {
  TransferTotals totals;
  bool operator==(const ExportFinished&) const = default;
};
struct Welcome {
  std::uint16_t version = kProtocolVersion;
  std::uint64_t generation = 0;
  std::uint32_t listeners = 0;
  bool operator==(const Welcome&) const = default;
};
struct Refuse {
  std::string reason;
  bool operator==(const Refuse&) const = default;
};
// `listeners` and `fds`: the descriptors ride with the message, one per name, in order.
struct Listeners {
  std::vector<std::string> names;
  bool operator==(const Listeners&) const = default;
};
struct BeginImport {
  std::uint64_t from_generation = 0;  // 0: no previous SDK generation; no peer link attached.
  std::vector<SectionVersions> plan;
  std::string note;
  bool operator==(const BeginImport&) const = default;
};
struct BeginExport {
  std::uint64_t to_generation = 0;
  std::vector<SectionVersions> plan;
  bool operator==(const BeginExport&) const = default;
};
struct Drain {
  bool operator==(const Drain&) const = default;
};
struct Stop {
  bool operator==(const Stop&) const = default;
};
struct SectionOffer {
  std::string name;
  std::uint32_t version = 0;
  std::uint64_t sequence = 0;
  std::uint64_t length = 0;
  std::uint64_t checksum = 0;
  bool operator==(const SectionOffer&) const = default;
};
struct SectionUnavailable {
  std::string name;
  std::string reason;
  bool operator==(const SectionUnavailable&) const = default;
};
struct Fds {
  std::vector<std::string> names;
  bool operator==(const Fds&) const = default;
};
struct SnapshotEnd {
  bool operator==(const SnapshotEnd&) const = default;
};
struct Delta {
  std::string section;
  std::uint32_t version = 0;
  std::uint64_t sequence = 0;
  std::string payload;
  bool operator==(const Delta&) const = default;
};

// A change too large for a `delta` message: the same fields as a section-offer, and the payload in
// a sealed memfd in the section format (name = the section's).
struct DeltaMemfd {
  SectionOffer offer;
  bool operator==(const DeltaMemfd&) const = default;
};

// A section that goes as an arena (arena_section.h): `offer` describes the small sealed section
// (block table + the application's header), the first descriptor; the arena's memfd is the second.
struct ArenaOffer {
  SectionOffer offer;
  std::uint64_t reserve = 0;   // The arena memfd's size.
  std::uint64_t bytes = 0;     // The blocks' total.
  std::uint64_t checksum = 0;  // XXH3-64 of the blocks' bytes, in offset order.
  bool operator==(const ArenaOffer&) const = default;
};

// A section streamed over a socket of its own (stream.h), which is the descriptor: its bytes arrive
// while the exporter's `save` writes them.
struct SectionStream {
  std::string name;
  std::uint32_t version = 0;
  std::uint64_t sequence = 0;
  bool operator==(const SectionStream&) const = default;
};

using Message = std::variant<Hello, Ready, StatusLine, SectionImported, ImportFinished, SectionExported, ExportFinished,
                             Welcome, Refuse, Listeners, BeginImport, BeginExport, Drain, Stop, SectionOffer,
                             SectionUnavailable, Fds, SnapshotEnd, Delta, DeltaMemfd, ArenaOffer, SectionStream>;

Type type_of(const Message& m);
// How many descriptors a message of this content must carry (names.size() for Listeners and
// Fds, 1 for SectionOffer, SectionStream, DeltaMemfd and BeginExport, 2 for ArenaOffer, 1 or 0 for BeginImport).
std::size_t fds_expected(const Message& m);

// A valid name: 1-128 bytes of [A-Za-z0-9._:-].
bool valid_name(std::string_view name);

// One datagram: header + body. Fails (naming the field) when the message breaks a limit, so a
// sender learns of its own mistake instead of the peer refusing it.
Result<std::string> encode(const Message& m);

// A frame header that passed check_frame().
struct FrameHeader {
  Type type = Type::Hello;
  std::uint32_t body_length = 0;
  std::uint32_t fd_count = 0;  // Within what the type allows; Listeners and Fds are exact only after decode().
};
// The frame checks alone, in docs/protocol.md's order (size, magic, header checksum, version, type,
// body length, body checksum, descriptor count allowed for the type), without decoding the body.
// A receiver runs this before it compares the descriptors that arrived with the header's count.
Result<FrameHeader> check_frame(std::span<const std::byte> datagram);

struct Decoded {
  Message message;
  std::uint32_t fd_count = 0;  // As announced in the header; already checked against the type.
};
// Checks everything in docs/protocol.md's order except what only the receiver of the datagram
// knows (MSG_TRUNC, MSG_CTRUNC, how many descriptors really arrived).
Result<Decoded> decode(std::span<const std::byte> datagram);

}  // namespace hotrestart::wire
