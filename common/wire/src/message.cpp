#include <hotrestart/wire/bytes.h>
#include <hotrestart/wire/message.h>

#include <xxhash.h>

#include <bit>
#include <cereal/archives/binary.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <cstring>
#include <exception>
#include <optional>
#include <sstream>
#include <type_traits>

#include <hotrestart/archive.h>

// Integers are copied to and from the wire as they are in memory, which is the documented
// little-endian layout only on a little-endian machine (as is cereal's binary archive).
static_assert(std::endian::native == std::endian::little, "the worker channel codec assumes a little-endian host");

namespace hotrestart::wire {

// The fields of each body, in the order of docs/protocol.md's table. cereal's binary layout makes
// these the wire format; InputArchive reads them back with every count bounded.
template <class Ar>
void serialize(Ar& ar, SectionVersions& s) {
  ar(s.name, s.versions, s.arena);
}
template <class Ar>
void serialize(Ar& ar, SectionReport& r) {
  ar(r.name, r.ok, r.version, r.bytes, r.micros, r.reason);
}
template <class Ar>
void serialize(Ar& ar, TransferTotals& t) {
  ar(t.sections, t.done, t.bytes, t.micros);
}
template <class Ar>
void serialize(Ar& ar, Hello& m) {
  ar(m.min_version, m.max_version, m.pid, m.sdk, m.imports, m.exports);
}
template <class Ar>
void serialize(Ar& ar, StatusLine& m) {
  ar(m.text);
}
template <class Ar>
void serialize(Ar& ar, SectionImported& m) {
  ar(m.report);
}
template <class Ar>
void serialize(Ar& ar, ImportFinished& m) {
  ar(m.totals);
}
template <class Ar>
void serialize(Ar& ar, SectionExported& m) {
  ar(m.report);
}
template <class Ar>
void serialize(Ar& ar, ExportFinished& m) {
  ar(m.totals);
}
template <class Ar>
void serialize(Ar& ar, Welcome& m) {
  ar(m.version, m.generation, m.listeners);
}
template <class Ar>
void serialize(Ar& ar, Refuse& m) {
  ar(m.reason);
}
template <class Ar>
void serialize(Ar& ar, Listeners& m) {
  ar(m.names);
}
template <class Ar>
void serialize(Ar& ar, BeginImport& m) {
  ar(m.from_generation, m.plan, m.note);
}
template <class Ar>
void serialize(Ar& ar, BeginExport& m) {
  ar(m.to_generation, m.plan);
}
template <class Ar>
void serialize(Ar& ar, SectionOffer& m) {
  ar(m.name, m.version, m.sequence, m.length, m.checksum);
}
template <class Ar>
void serialize(Ar& ar, SectionUnavailable& m) {
  ar(m.name, m.reason);
}
template <class Ar>
void serialize(Ar& ar, Fds& m) {
  ar(m.names);
}
template <class Ar>
void serialize(Ar& ar, Delta& m) {
  ar(m.section, m.version, m.sequence, m.payload);
}
template <class Ar>
void serialize(Ar& ar, DeltaMemfd& m) {
  serialize(ar, m.offer);
}
template <class Ar>
void serialize(Ar& ar, ArenaOffer& m) {
  serialize(ar, m.offer);
  ar(m.reserve, m.bytes, m.checksum);
}
template <class Ar>
void serialize(Ar& ar, SectionStream& m) {
  ar(m.name, m.version, m.sequence);
}
// Ready, Drain, Stop and SnapshotEnd have no body.
template <class M>
concept NoFields = std::is_empty_v<M>;
template <class Ar, NoFields M>
void serialize(Ar&, M&) {}

namespace {

constexpr char kMagic[4] = {'H', 'R', 'C', '1'};
constexpr std::size_t kHeaderChecked = 24;  // The header checksum covers bytes 0..23.

// Checks every field limit of a message; used by encode() (the sender's own mistake) and by
// decode() (a peer's). The error names the message type and the field.
class Checker {
 public:
  explicit Checker(Type type) : where_(type_name(type)) {}

  std::optional<Error> operator()(const Hello& m) const {
    if (m.min_version > m.max_version)
      return fail("min_version " + std::to_string(m.min_version) + " is above max_version " +
                  std::to_string(m.max_version));
    if (auto e = text("sdk", m.sdk)) return e;
    if (auto e = sections("imports", m.imports)) return e;
    return sections("exports", m.exports);
  }
  std::optional<Error> operator()(const StatusLine& m) const { return text("text", m.text); }
  std::optional<Error> operator()(const SectionImported& m) const { return report(m.report); }
  std::optional<Error> operator()(const SectionExported& m) const { return report(m.report); }
  std::optional<Error> operator()(const Refuse& m) const { return text("reason", m.reason); }
  std::optional<Error> operator()(const Listeners& m) const { return names("listener name", m.names); }
  std::optional<Error> operator()(const Fds& m) const { return names("descriptor name", m.names); }
  std::optional<Error> operator()(const BeginImport& m) const {
    if (auto e = sections("plan", m.plan)) return e;
    return text("note", m.note);
  }
  std::optional<Error> operator()(const BeginExport& m) const { return sections("plan", m.plan); }
  std::optional<Error> operator()(const SectionOffer& m) const { return name("section name", m.name); }
  std::optional<Error> operator()(const DeltaMemfd& m) const { return name("section name", m.offer.name); }
  std::optional<Error> operator()(const ArenaOffer& m) const { return name("section name", m.offer.name); }
  std::optional<Error> operator()(const SectionStream& m) const { return name("section name", m.name); }
  std::optional<Error> operator()(const SectionUnavailable& m) const {
    if (auto e = name("section name", m.name)) return e;
    return text("reason", m.reason);
  }
  std::optional<Error> operator()(const Delta& m) const {
    if (auto e = name("section name", m.section)) return e;
    if (m.payload.size() > kMaxDeltaPayload)
      return fail("payload is " + std::to_string(m.payload.size()) + " bytes, more than " +
                  std::to_string(kMaxDeltaPayload));
    return std::nullopt;
  }
  // Messages whose fields are all integers have nothing to check.
  template <class M>
  std::optional<Error> operator()(const M&) const {
    return std::nullopt;
  }

 private:
  Error fail(const std::string& what) const { return Error::message(std::string(where_) + ": " + what); }

  std::optional<Error> name(const char* what, const std::string& n) const {
    if (!valid_name(n)) return fail(std::string(what) + " " + quote(n) + " is not valid");
    return std::nullopt;
  }
  std::optional<Error> text(const char* field, const std::string& t) const {
    if (t.size() > kMaxTextLength)
      return fail(std::string(field) + " is " + std::to_string(t.size()) + " bytes, more than " +
                  std::to_string(kMaxTextLength));
    return std::nullopt;
  }
  std::optional<Error> names(const char* what, const std::vector<std::string>& list) const {
    if (list.size() > kMaxFdsPerMessage)
      return fail(std::to_string(list.size()) + " names, more than " + std::to_string(kMaxFdsPerMessage));
    for (const auto& n : list)
      if (auto e = name(what, n)) return e;
    return std::nullopt;
  }
  std::optional<Error> report(const SectionReport& r) const {
    if (auto e = name("section name", r.name)) return e;
    return text("reason", r.reason);
  }
  std::optional<Error> sections(const char* field, const std::vector<SectionVersions>& list) const {
    if (list.size() > kMaxSections)
      return fail(std::string(field) + " lists " + std::to_string(list.size()) + " sections, more than " +
                  std::to_string(kMaxSections));
    for (const auto& s : list) {
      if (auto e = name("section name", s.name)) return e;
      if (s.versions.size() > kMaxVersions)
        return fail("section " + quote(s.name) + " lists " + std::to_string(s.versions.size()) +
                    " versions, more than " + std::to_string(kMaxVersions));
      for (auto v : s.versions)
        if (v == 0) return fail("section " + quote(s.name) + " lists version 0 (versions start at 1)");
    }
    return std::nullopt;
  }

  std::string_view where_;
};

std::optional<Error> check_fields(const Message& m) {
  return std::visit(Checker(type_of(m)), m);
}

// A default-constructed message of a known type, for decode() to read the body into.
std::optional<Message> empty_message(Type t) {
  switch (t) {
    case Type::Hello:
      return Hello{};
    case Type::Ready:
      return Ready{};
    case Type::Status:
      return StatusLine{};
    case Type::SectionImported:
      return SectionImported{};
    case Type::ImportFinished:
      return ImportFinished{};
    case Type::SectionExported:
      return SectionExported{};
    case Type::ExportFinished:
      return ExportFinished{};
    case Type::Welcome:
      return Welcome{};
    case Type::Refuse:
      return Refuse{};
    case Type::Listeners:
      return Listeners{};
    case Type::BeginImport:
      return BeginImport{};
    case Type::BeginExport:
      return BeginExport{};
    case Type::Drain:
      return Drain{};
    case Type::Stop:
      return Stop{};
    case Type::SectionOffer:
      return SectionOffer{};
    case Type::SectionUnavailable:
      return SectionUnavailable{};
    case Type::Fds:
      return Fds{};
    case Type::SnapshotEnd:
      return SnapshotEnd{};
    case Type::Delta:
      return Delta{};
    case Type::DeltaMemfd:
      return DeltaMemfd{};
    case Type::ArenaOffer:
      return ArenaOffer{};
    case Type::SectionStream:
      return SectionStream{};
  }
  return std::nullopt;
}

// The descriptor counts a type allows before its body is known: Listeners and Fds carry one per
// name, BeginImport one or none.
bool fd_count_allowed(Type t, std::uint32_t count) {
  switch (t) {
    case Type::Listeners:
    case Type::Fds:
      return count <= kMaxFdsPerMessage;
    case Type::BeginImport:
      return count <= 1;
    case Type::BeginExport:
    case Type::SectionOffer:
    case Type::SectionStream:
    case Type::DeltaMemfd:
      return count == 1;
    case Type::ArenaOffer:
      return count == 2;
    default:
      return count == 0;
  }
}

std::string bytes(std::size_t n) {
  return std::to_string(n) + (n == 1 ? " byte" : " bytes");
}
std::string descriptors(std::size_t n) {
  return std::to_string(n) + (n == 1 ? " descriptor" : " descriptors");
}

}  // namespace

std::string_view type_name(Type t) {
  switch (t) {
    case Type::Hello:
      return "hello";
    case Type::Ready:
      return "ready";
    case Type::Status:
      return "status";
    case Type::SectionImported:
      return "section-imported";
    case Type::ImportFinished:
      return "import-finished";
    case Type::SectionExported:
      return "section-exported";
    case Type::ExportFinished:
      return "export-finished";
    case Type::Welcome:
      return "welcome";
    case Type::Refuse:
      return "refuse";
    case Type::Listeners:
      return "listeners";
    case Type::BeginImport:
      return "begin-import";
    case Type::BeginExport:
      return "begin-export";
    case Type::Drain:
      return "drain";
    case Type::Stop:
      return "stop";
    case Type::SectionOffer:
      return "section-offer";
    case Type::SectionUnavailable:
      return "section-unavailable";
    case Type::Fds:
      return "fds";
    case Type::SnapshotEnd:
      return "snapshot-end";
    case Type::Delta:
      return "delta";
    case Type::DeltaMemfd:
      return "delta-memfd";
    case Type::ArenaOffer:
      return "arena-offer";
    case Type::SectionStream:
      return "section-stream";
  }
  return "unknown";
}

Type type_of(const Message& m) {
  // The variant's alternatives are listed in the order of the type table.
  constexpr Type kTypes[] = {Type::Hello,
                             Type::Ready,
                             Type::Status,
                             Type::SectionImported,
                             Type::ImportFinished,
                             Type::SectionExported,
                             Type::ExportFinished,
                             Type::Welcome,
                             Type::Refuse,
                             Type::Listeners,
                             Type::BeginImport,
                             Type::BeginExport,
                             Type::Drain,
                             Type::Stop,
                             Type::SectionOffer,
                             Type::SectionUnavailable,
                             Type::Fds,
                             Type::SnapshotEnd,
                             Type::Delta,
                             Type::DeltaMemfd,
                             Type::ArenaOffer,
                             Type::SectionStream};
  static_assert(std::size(kTypes) == std::variant_size_v<Message>);
  return kTypes[m.index()];
}

std::size_t fds_expected(const Message& m) {
  if (const auto* l = std::get_if<Listeners>(&m)) return l->names.size();
  if (const auto* f = std::get_if<Fds>(&m)) return f->names.size();
  if (const auto* b = std::get_if<BeginImport>(&m)) return b->from_generation != 0 ? 1 : 0;
  if (std::holds_alternative<BeginExport>(m) || std::holds_alternative<SectionOffer>(m) ||
      std::holds_alternative<SectionStream>(m) || std::holds_alternative<DeltaMemfd>(m)) {
    return 1;
  }
  if (std::holds_alternative<ArenaOffer>(m)) return 2;
  return 0;
}

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxNameLength) return false;
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Result<std::string> encode(const Message& m) {
  Type type = type_of(m);
  if (auto e = check_fields(m)) return *e;

  std::string body;
  try {
    std::ostringstream out;
    {
      cereal::BinaryOutputArchive ar(out);
      std::visit([&](const auto& msg) { ar(msg); }, m);
    }
    body = std::move(out).str();
  } catch (const std::exception& e) {
    return Error::message(std::string(type_name(type)) + ": encoding the body failed: " + e.what());
  }
  if (body.size() > kMaxBody)
    return Error::message(std::string(type_name(type)) + ": the body is " + std::to_string(body.size()) +
                          " bytes, more than " + std::to_string(kMaxBody));

  std::string datagram(kHeaderSize + body.size(), '\0');
  char* h = datagram.data();
  std::memcpy(h, kMagic, sizeof kMagic);
  put<std::uint16_t>(h + 4, kProtocolVersion);
  put<std::uint16_t>(h + 6, static_cast<std::uint16_t>(type));
  put<std::uint32_t>(h + 8, static_cast<std::uint32_t>(body.size()));
  put<std::uint32_t>(h + 12, static_cast<std::uint32_t>(fds_expected(m)));
  put<std::uint64_t>(h + 16, XXH3_64bits(body.data(), body.size()));
  put<std::uint64_t>(h + 24, XXH3_64bits(h, kHeaderChecked));
  if (!body.empty()) std::memcpy(h + kHeaderSize, body.data(), body.size());
  return datagram;
}

Result<FrameHeader> check_frame(std::span<const std::byte> datagram) {
  auto fail = [](const std::string& what) { return Error::message("channel frame: " + what); };
  if (datagram.size() < kHeaderSize)
    return fail(std::to_string(datagram.size()) + " bytes, shorter than the " + std::to_string(kHeaderSize) +
                "-byte header");
  const std::byte* h = datagram.data();
  if (std::memcmp(h, kMagic, sizeof kMagic) != 0) return fail("bad magic");
  if (get<std::uint64_t>(h + 24) != XXH3_64bits(h, kHeaderChecked)) return fail("header checksum mismatch");
  auto version = get<std::uint16_t>(h + 4);
  if (version != kProtocolVersion)
    return fail("protocol version " + std::to_string(version) + ", but this side speaks version " +
                std::to_string(kProtocolVersion));
  auto raw_type = get<std::uint16_t>(h + 6);
  auto type = static_cast<Type>(raw_type);
  if (!empty_message(type)) return fail("unknown message type " + std::to_string(raw_type));
  auto body_length = get<std::uint32_t>(h + 8);
  if (body_length > kMaxBody)
    return fail("body length " + std::to_string(body_length) + " is over the limit of " + std::to_string(kMaxBody) +
                " bytes");
  std::size_t after_header = datagram.size() - kHeaderSize;
  if (body_length != after_header)
    return fail("the header announces a " + std::to_string(body_length) + "-byte body but the datagram holds " +
                std::to_string(after_header) + " bytes after the header");
  if (get<std::uint64_t>(h + 16) != XXH3_64bits(h + kHeaderSize, body_length)) return fail("body checksum mismatch");
  auto fd_count = get<std::uint32_t>(h + 12);
  if (!fd_count_allowed(type, fd_count))
    return Error::message(std::string(type_name(type)) + ": the header announces " + descriptors(fd_count) +
                          ", which this type of message cannot carry");
  return FrameHeader{type, body_length, fd_count};
}

Result<Decoded> decode(std::span<const std::byte> datagram) {
  auto frame = check_frame(datagram);
  if (!frame) return frame.error();
  const std::string where(type_name(frame->type));

  Message message = *empty_message(frame->type);
  try {
    InputArchive ar(datagram.subspan(kHeaderSize));
    std::visit([&](auto& msg) { ar(msg); }, message);
    if (ar.remaining() != 0)
      return Error::message(where + ": " + bytes(ar.remaining()) + " left over after the body's last field");
  } catch (const std::exception& e) {
    return Error::message(where + ": the body is malformed: " + e.what());
  } catch (...) {
    return Error::message(where + ": the body is malformed");
  }
  if (auto e = check_fields(message)) return *e;
  if (frame->fd_count != fds_expected(message))
    return Error::message(where + ": the header announces " + descriptors(frame->fd_count) +
                          ", but the message needs " + std::to_string(fds_expected(message)));
  return Decoded{std::move(message), frame->fd_count};
}

}  // namespace hotrestart::wire
