// The worker channel's frame codec: encode, check and decode one datagram (see message.h).
#include <hotrestart/wire/bytes.h>
#include <hotrestart/wire/message.h>

#include <xxhash.h>

#include <array>
#include <bit>
#include <cereal/archives/binary.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <cstring>
#include <exception>
#include <optional>
#include <sstream>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

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
void serialize(Ar& ar, ConfigHeld& c) {
  ar(c.name, c.version);
}
template <class Ar>
void serialize(Ar& ar, Hello& m) {
  ar(m.min_version, m.max_version, m.pid, m.sdk, m.imports, m.exports, m.resumable, m.configs);
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
void serialize(Ar& ar, Drain& m) {
  ar(m.park_ms);
}
template <class Ar>
void serialize(Ar& ar, Resume& m) {
  ar(m.listeners);
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
void serialize(Ar& ar, SnapshotCovers& m) {
  ar(m.section, m.sequence);
}
template <class Ar>
void serialize(Ar& ar, SectionStream& m) {
  ar(m.name, m.version, m.sequence);
}
template <class Ar>
void serialize(Ar& ar, ConfigPrepare& m) {
  serialize(ar, m.offer);
}
template <class Ar>
void serialize(Ar& ar, ConfigCommit& m) {
  ar(m.name, m.version);
}
template <class Ar>
void serialize(Ar& ar, ConfigAbort& m) {
  ar(m.name, m.version);
}
template <class Ar>
void serialize(Ar& ar, ConfigPrepared& m) {
  ar(m.name, m.version, m.ok, m.reason);
}
template <class Ar>
void serialize(Ar& ar, ConfigCommitted& m) {
  ar(m.name, m.version, m.ok);
}
// Ready, Stop, Active and SnapshotEnd have no body.
template <class M>
concept NoFields = std::is_empty_v<M>;
template <class Ar, NoFields M>
void serialize(Ar&, M&) {}

namespace {

constexpr char kMagic[4] = {'H', 'R', 'C', '1'};
constexpr std::size_t kHeaderChecked = 24;  // The header checksum covers bytes 0..23.

// What the catalogue says of each type, in the order of Message's alternatives.
struct TypeInfo {
  Type type;
  std::string_view name;
  std::uint32_t min_fds;
  std::uint32_t max_fds;
};
constexpr TypeInfo kCatalogue[] = {
#define HOTRESTART_WIRE_INFO(enumerator, message, number, name, min_fds, max_fds) \
  {Type::enumerator, name, min_fds, max_fds},
    HOTRESTART_WIRE_MESSAGES(HOTRESTART_WIRE_INFO)
#undef HOTRESTART_WIRE_INFO
};

// The index of a message struct among Message's alternatives.
template <class M, std::size_t I = 0>
constexpr std::size_t kIndexOf = [] {
  if constexpr (std::is_same_v<std::variant_alternative_t<I, Message>, M>)
    return I;
  else
    return kIndexOf<M, I + 1>;
}();

// Checked while compiling, so that a wrong catalogue line fails the build instead of the channel.
constexpr bool numbers_rise() {
  for (std::size_t i = 1; i < std::size(kCatalogue); ++i)
    if (kCatalogue[i - 1].type >= kCatalogue[i].type) return false;
  return true;
}
constexpr bool names_distinct() {
  for (std::size_t i = 0; i < std::size(kCatalogue); ++i) {
    if (kCatalogue[i].name.empty()) return false;
    for (std::size_t j = 0; j < i; ++j)
      if (kCatalogue[j].name == kCatalogue[i].name) return false;
  }
  return true;
}
constexpr bool descriptor_ranges_valid() {
  for (const TypeInfo& t : kCatalogue)
    if (t.min_fds > t.max_fds || t.max_fds > kMaxFdsPerMessage) return false;
  return true;
}
static_assert(numbers_rise(), "type numbers must rise down the catalogue, so that each is used once");
static_assert(names_distinct(), "every message needs a name of its own");
static_assert(descriptor_ranges_valid(), "a descriptor range must run from fewest to most, at most 253");
#define HOTRESTART_WIRE_IN_ORDER(enumerator, message, ...)              \
  static_assert(kCatalogue[kIndexOf<message>].type == Type::enumerator, \
                "the catalogue line of " #message " is out of step with Message");
HOTRESTART_WIRE_MESSAGES(HOTRESTART_WIRE_IN_ORDER)
#undef HOTRESTART_WIRE_IN_ORDER

// The catalogue's index of a type number, if it is one.
std::optional<std::size_t> index_of(Type t) {
  for (std::size_t i = 0; i < std::size(kCatalogue); ++i)
    if (kCatalogue[i].type == t) return i;
  return std::nullopt;
}

// Default-constructed messages, one per alternative, for decode() to read a body into.
template <std::size_t... I>
constexpr auto empty_messages(std::index_sequence<I...>) {
  return std::array<Message (*)(), sizeof...(I)>{[] { return Message(std::in_place_index<I>); }...};
}
constexpr auto kEmptyMessage = empty_messages(std::make_index_sequence<std::variant_size_v<Message>>());

// How many descriptors a message needs when its catalogue line allows a range.
std::size_t descriptors_for(const Listeners& m) {
  return m.names.size();
}
std::size_t descriptors_for(const Fds& m) {
  return m.names.size();
}
std::size_t descriptors_for(const BeginImport& m) {
  return m.from_generation != 0 ? 1 : 0;  // The peer link, when there is a previous generation.
}

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
    if (auto e = sections("exports", m.exports)) return e;
    if (m.configs.size() > kMaxConfigs)
      return fail("configs lists " + std::to_string(m.configs.size()) + " configurations, more than " +
                  std::to_string(kMaxConfigs));
    for (std::size_t i = 0; i < m.configs.size(); ++i) {
      if (auto e = name("configuration name", m.configs[i].name)) return e;
      for (std::size_t j = 0; j < i; ++j)
        if (m.configs[j].name == m.configs[i].name) return fail("configs lists " + quote(m.configs[i].name) + " twice");
    }
    return std::nullopt;
  }
  std::optional<Error> operator()(const ConfigPrepare& m) const {
    if (auto e = name("configuration name", m.offer.name)) return e;
    if (m.offer.version != kConfigFormat)
      return fail("format " + std::to_string(m.offer.version) + ", but this side reads format " +
                  std::to_string(kConfigFormat));
    if (m.offer.sequence == 0) return fail("version 0 (versions start at 1)");
    return std::nullopt;
  }
  std::optional<Error> operator()(const ConfigCommit& m) const { return config_version(m.name, m.version); }
  std::optional<Error> operator()(const ConfigAbort& m) const { return config_version(m.name, m.version); }
  std::optional<Error> operator()(const ConfigCommitted& m) const { return config_version(m.name, m.version); }
  std::optional<Error> operator()(const ConfigPrepared& m) const {
    if (auto e = config_version(m.name, m.version)) return e;
    return text("reason", m.reason);
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
  std::optional<Error> operator()(const SnapshotCovers& m) const { return name("section name", m.section); }
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
  std::optional<Error> config_version(const std::string& n, std::uint64_t version) const {
    if (auto e = name("configuration name", n)) return e;
    if (version == 0) return fail("version 0 (versions start at 1)");
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

std::string bytes(std::size_t n) {
  return std::to_string(n) + (n == 1 ? " byte" : " bytes");
}
std::string descriptors(std::size_t n) {
  return std::to_string(n) + (n == 1 ? " descriptor" : " descriptors");
}

}  // namespace

std::string_view type_name(Type t) {
  auto index = index_of(t);
  return index ? kCatalogue[*index].name : "unknown";
}

Type type_of(const Message& m) {
  return kCatalogue[m.index()].type;
}

std::size_t fds_expected(const Message& m) {
  return std::visit(
      []<class M>(const M& message) -> std::size_t {
        constexpr TypeInfo info = kCatalogue[kIndexOf<M>];
        if constexpr (info.min_fds == info.max_fds)
          return info.min_fds;
        else
          return descriptors_for(message);
      },
      m);
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
  auto index = index_of(type);
  if (!index) return fail("unknown message type " + std::to_string(raw_type));
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
  if (fd_count < kCatalogue[*index].min_fds || fd_count > kCatalogue[*index].max_fds)
    return Error::message(std::string(type_name(type)) + ": the header announces " + descriptors(fd_count) +
                          ", which this type of message cannot carry");
  return FrameHeader{type, body_length, fd_count};
}

Result<Decoded> decode(std::span<const std::byte> datagram) {
  auto frame = check_frame(datagram);
  if (!frame) return frame.error();
  const std::string where(type_name(frame->type));

  Message message = kEmptyMessage[*index_of(frame->type)]();
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
