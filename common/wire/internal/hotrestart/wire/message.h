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

inline constexpr std::uint16_t kProtocolVersion = 7;
inline constexpr std::size_t kHeaderSize = 32;
inline constexpr std::size_t kMaxBody = 64 * 1024;
inline constexpr std::size_t kMaxDatagram = kHeaderSize + kMaxBody;
inline constexpr std::size_t kMaxFdsPerMessage = 253;  // SCM_MAX_FD
inline constexpr std::size_t kMaxNameLength = 128;
inline constexpr std::size_t kMaxTextLength = 1024;
inline constexpr std::size_t kMaxVersions = 64;
inline constexpr std::size_t kMaxSections = 256;
inline constexpr std::size_t kMaxDeltaPayload = 60'000;
inline constexpr std::size_t kMaxConfigs = 64;  // Configurations one worker reads (hello).

// The catalogue: every message of the worker channel, one line each, in type-number order, which
// is also the order of Message's alternatives. Each line is
//
//   X(enumerator of Type, struct, type number, name, fewest descriptors, most descriptors)
//
// The descriptor range is what check_frame() allows before the body is decoded. A message whose
// range is not one number says in message.cpp (descriptors_for) how many its body needs.
// docs/protocol.md's message table lists the same numbers, names and descriptors.
#define HOTRESTART_WIRE_MESSAGES(X)                                          \
  X(Hello, Hello, 1, "hello", 0, 0)                                          \
  X(Ready, Ready, 2, "ready", 0, 0)                                          \
  X(Status, StatusLine, 3, "status", 0, 0)                                   \
  X(SectionImported, SectionImported, 4, "section-imported", 0, 0)           \
  X(ImportFinished, ImportFinished, 5, "import-finished", 0, 0)              \
  X(SectionExported, SectionExported, 6, "section-exported", 0, 0)           \
  X(ExportFinished, ExportFinished, 7, "export-finished", 0, 0)              \
  X(ConfigPrepared, ConfigPrepared, 8, "config-prepared", 0, 0)              \
  X(ConfigCommitted, ConfigCommitted, 9, "config-committed", 0, 0)           \
  X(Welcome, Welcome, 32, "welcome", 0, 0)                                   \
  X(Refuse, Refuse, 33, "refuse", 0, 0)                                      \
  X(Listeners, Listeners, 34, "listeners", 0, kMaxFdsPerMessage)             \
  X(BeginImport, BeginImport, 35, "begin-import", 0, 1)                      \
  X(BeginExport, BeginExport, 36, "begin-export", 1, 1)                      \
  X(Drain, Drain, 37, "drain", 0, 0)                                         \
  X(Stop, Stop, 38, "stop", 0, 0)                                            \
  X(Resume, Resume, 39, "resume", 0, 0)                                      \
  X(Active, Active, 40, "active", 0, 0)                                      \
  X(ConfigPrepare, ConfigPrepare, 41, "config-prepare", 1, 1)                \
  X(ConfigCommit, ConfigCommit, 42, "config-commit", 0, 0)                   \
  X(ConfigAbort, ConfigAbort, 43, "config-abort", 0, 0)                      \
  X(SectionOffer, SectionOffer, 64, "section-offer", 1, 1)                   \
  X(SectionUnavailable, SectionUnavailable, 65, "section-unavailable", 0, 0) \
  X(Fds, Fds, 66, "fds", 0, kMaxFdsPerMessage)                               \
  X(SnapshotEnd, SnapshotEnd, 67, "snapshot-end", 0, 0)                      \
  X(Delta, Delta, 68, "delta", 0, 0)                                         \
  X(DeltaMemfd, DeltaMemfd, 69, "delta-memfd", 1, 1)                         \
  X(ArenaOffer, ArenaOffer, 70, "arena-offer", 2, 2)                         \
  X(SectionStream, SectionStream, 71, "section-stream", 1, 1)                \
  X(SnapshotCovers, SnapshotCovers, 72, "snapshot-covers", 0, 0)

enum class Type : std::uint16_t {
#define HOTRESTART_WIRE_ENUMERATOR(enumerator, message, number, ...) enumerator = number,
  HOTRESTART_WIRE_MESSAGES(HOTRESTART_WIRE_ENUMERATOR)
#undef HOTRESTART_WIRE_ENUMERATOR
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

// A configuration a worker reads (Worker::add_config), and the version it has live (0: none yet).
struct ConfigHeld {
  std::string name;
  std::uint64_t version = 0;
  bool operator==(const ConfigHeld&) const = default;
};

struct Hello {
  std::uint16_t min_version = kProtocolVersion;
  std::uint16_t max_version = kProtocolVersion;
  std::int32_t pid = 0;
  std::string sdk;
  std::vector<SectionVersions> imports;
  std::vector<SectionVersions> exports;
  // The application can be brought back after its drain (Worker::Options::resumable): asked to
  // drain with a parking time, it waits for `resume` or for the end of that time before it exits.
  bool resumable = false;
  std::vector<ConfigHeld> configs;  // Version 6.
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
// park_ms > 0 (only to a worker whose hello said `resumable`): after its drain the worker stays
// alive, serving nothing, for that long, in case the supervisor resumes it; 0: drain and exit. A
// second `drain` with 0 to a parked worker ends its parking.
struct Drain {
  std::uint64_t park_ms = 0;
  bool operator==(const Drain&) const = default;
};
// Takes a parked (draining) worker back into service: `listeners` messages with this many
// listening sockets follow, as after `welcome`; the worker answers `ready` once it serves again.
struct Resume {
  std::uint32_t listeners = 0;
  bool operator==(const Resume&) const = default;
};
struct Stop {
  bool operator==(const Stop&) const = default;
};
// This generation is the one that serves now (the first one, a cutover's new one, a resumed one):
// until it hears this, a worker is a candidate, and a candidate whose supervisor goes away drains
// and exits rather than serve on its own authority. `drain` ends it.
struct Active {
  bool operator==(const Active&) const = default;
};

// A section in a sealed memfd (section.h). These are also the fields of the section format's
// header, which open_section() compares with the offer one by one: section.h calls this type
// SectionHeader there.
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

// Version 7. Sent after a section's snapshot (before snapshot-end): the snapshot holds every change
// the exporter published with a sequence up to `sequence`, so the importer applies only the
// deltas of `section` numbered after it. Without one, every delta is applied.
struct SnapshotCovers {
  std::string section;
  std::uint64_t sequence = 0;
  bool operator==(const SnapshotCovers&) const = default;
};

// Configuration reload, in two phases (docs/protocol.md, "Configurations"). `config-prepare` carries
// the bytes of version `offer.sequence` of configuration `offer.name` in a sealed memfd in the
// section format (offer.version is the format's, 1); the worker parses and stages it and answers
// `config-prepared`. `config-commit` makes the staged version live and is answered with
// `config-committed`; `config-abort` drops it.
inline constexpr std::uint32_t kConfigFormat = 1;
struct ConfigPrepare {
  SectionOffer offer;
  bool operator==(const ConfigPrepare&) const = default;
};
struct ConfigCommit {
  std::string name;
  std::uint64_t version = 0;
  bool operator==(const ConfigCommit&) const = default;
};
struct ConfigAbort {
  std::string name;
  std::uint64_t version = 0;
  bool operator==(const ConfigAbort&) const = default;
};
// ok: the version is staged; otherwise `reason` is the application's parser's message.
struct ConfigPrepared {
  std::string name;
  std::uint64_t version = 0;
  bool ok = false;
  std::string reason;
  bool operator==(const ConfigPrepared&) const = default;
};
// ok: the version is live; false when nothing of that version was staged.
struct ConfigCommitted {
  std::string name;
  std::uint64_t version = 0;
  bool ok = false;
  bool operator==(const ConfigCommitted&) const = default;
};

// Drops the leading `void`, which lets the catalogue's expansion put a comma before every struct.
template <class Void, class... Messages>
struct CatalogueVariant {
  using type = std::variant<Messages...>;
};
#define HOTRESTART_WIRE_ALTERNATIVE(enumerator, message, ...) , message
using Message = CatalogueVariant<void HOTRESTART_WIRE_MESSAGES(HOTRESTART_WIRE_ALTERNATIVE)>::type;
#undef HOTRESTART_WIRE_ALTERNATIVE

Type type_of(const Message& m);
// How many descriptors a message of this content must carry: the catalogue's number, or for a type
// that allows a range, what its body asks for (one per name; the peer link when there is one).
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
  std::uint32_t fd_count = 0;  // Within the type's range; exact for its body only after decode().
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
