// The worker channel's codec (frames and bodies), the bounded archive, and state sections.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/utility.hpp>
#include <cereal/types/vector.hpp>
#include <cstring>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <hotrestart/archive.h>
#include <hotrestart/fd.h>
#include <hotrestart/wire/message.h>
#include <hotrestart/wire/section.h>

using namespace hotrestart;
using namespace hotrestart::wire;

namespace {

std::span<const std::byte> bytes_of(const std::string& s) {
  return std::as_bytes(std::span<const char>(s));
}

template <class T>
void put(std::string& s, std::size_t at, T value) {
  std::memcpy(s.data() + at, &value, sizeof value);
}

// A frame built by hand, with both checksums right unless a test spoils them afterwards.
std::string frame(std::uint16_t type, const std::string& body, std::uint32_t fd_count = 0,
                  std::uint16_t version = kProtocolVersion) {
  std::string f(kHeaderSize, '\0');
  std::memcpy(f.data(), "HRC1", 4);
  put<std::uint16_t>(f, 4, version);
  put<std::uint16_t>(f, 6, type);
  put<std::uint32_t>(f, 8, static_cast<std::uint32_t>(body.size()));
  put<std::uint32_t>(f, 12, fd_count);
  put<std::uint64_t>(f, 16, XXH3_64bits(body.data(), body.size()));
  put<std::uint64_t>(f, 24, XXH3_64bits(f.data(), 24));
  return f + body;
}
void fix_header_checksum(std::string& f) {
  put<std::uint64_t>(f, 24, XXH3_64bits(f.data(), 24));
}

// A body in cereal's binary layout, from whatever fields a test lists.
template <class... Fields>
std::string body(const Fields&... fields) {
  std::ostringstream out;
  {
    OutputArchive ar(out);
    ar(fields...);
  }
  return std::move(out).str();
}

std::string decode_error(const std::string& datagram) {
  auto d = decode(bytes_of(datagram));
  return d ? std::string("decoded") : d.error().text();
}
std::string encode_error(const Message& m) {
  auto e = encode(m);
  return e ? std::string("encoded") : e.error().text();
}

std::vector<Message> one_of_each() {
  SectionReport report{"sessions", true, 3, 123456789, 4242, ""};
  SectionReport failed{"cache.v2", false, 0, 0, 17, "load threw: bad record"};
  std::vector<SectionVersions> plan{{"sessions", {3, 2, 1}}, {"cache.v2", {7}}, {"empty:list", {}}};
  return {
      Hello{1, 4, 4242, "hotrestart-sdk 0.1.0", plan, {{"sessions", {3}}}, false, {}},
      Hello{6, 6, 7, "sdk", {}, {}, true, {{"app", 0}, {"routes", 12}}},
      Ready{},
      StatusLine{"serving version v2 \xe2\x9c\x93"},
      SectionImported{report},
      ImportFinished{{2, 1, 123456789, 5000}},
      SectionExported{failed},
      ExportFinished{{2, 2, 99, 1}},
      ConfigPrepared{"app", 3, true, ""},
      ConfigPrepared{"app", 4, false, "line 2: ttl: not a number"},
      ConfigCommitted{"app", 3, true},
      Welcome{1, 0xfedcba9876543210ULL, 300},
      Refuse{"no common protocol version: the worker speaks 2..3, the supervisor 1..1"},
      Listeners{{"http", "https", "admin-0"}},
      BeginImport{7, plan, ""},
      BeginImport{0, {}, "no previous generation speaks the SDK"},
      BeginExport{8, plan},
      Drain{},
      Drain{30'000},
      Stop{},
      Resume{3},
      Active{},
      ConfigPrepare{{"app", kConfigFormat, 3, 120, 0x55}},
      ConfigCommit{"app", 3},
      ConfigAbort{"app", 4},
      SectionOffer{"sessions", 3, 99, 1 << 20, 0x0123456789abcdefULL},
      SectionUnavailable{"cache.v2", "no common version"},
      Fds{{"conn:1", "conn:2"}},
      SnapshotEnd{},
      Delta{"sessions", 3, 100, std::string(kMaxDeltaPayload, '\0')},
      DeltaMemfd{{"sessions", 3, 101, 1 << 20, 42}},
      ArenaOffer{{"cache", 2, 102, 4096, 43}, std::uint64_t{1} << 40, std::uint64_t{1} << 30, 44},
      SectionStream{"sessions", 3, 103},
      SnapshotCovers{"sessions", 104},
  };
}

// Tracks the largest single allocation made through it, to show that a count was refused
// before anything was sized from it.
std::size_t g_largest_allocation = 0;
template <class T>
struct CountingAllocator {
  using value_type = T;
  CountingAllocator() = default;
  template <class U>
  CountingAllocator(const CountingAllocator<U>&) {}  // NOLINT(google-explicit-constructor)
  T* allocate(std::size_t n) {
    g_largest_allocation = std::max(g_largest_allocation, n * sizeof(T));
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) { std::allocator<T>().deallocate(p, n); }
  template <class U>
  bool operator==(const CountingAllocator<U>&) const {
    return true;
  }
};
using CountedString = std::basic_string<char, std::char_traits<char>, CountingAllocator<char>>;

enum class Color : std::uint8_t { Red = 1, Green = 2 };
struct Record {
  std::string key;
  std::vector<std::uint64_t> numbers;
  std::map<std::string, std::int32_t> counts;
  std::vector<std::pair<std::string, bool>> flags;
  Color color = Color::Red;
  double weight = 0;
  template <class Ar>
  void serialize(Ar& ar) {
    ar(key, numbers, counts, flags, color, weight);
  }
  bool operator==(const Record&) const = default;
};

}  // namespace

TEST_CASE("wire: every message type round-trips through encode and decode") {
  auto messages = one_of_each();
  // Every alternative of the variant is covered.
  std::vector<bool> seen(std::variant_size_v<Message>);
  for (const auto& m : messages)
    seen[m.index()] = true;
  CHECK(std::all_of(seen.begin(), seen.end(), [](bool b) { return b; }));

  for (const auto& m : messages) {
    CAPTURE(type_name(type_of(m)));
    auto datagram = encode(m);
    REQUIRE(datagram.ok());
    CHECK(datagram->size() >= kHeaderSize);
    CHECK(datagram->compare(0, 4, "HRC1") == 0);
    auto decoded = decode(bytes_of(*datagram));
    REQUIRE_MESSAGE(decoded.ok(), decoded.error().text());
    CHECK(decoded->message == m);
    CHECK(decoded->fd_count == fds_expected(m));
    // The encoding is canonical: encoding the decoded message gives the same bytes.
    CHECK(encode(decoded->message).value() == *datagram);
  }
}

TEST_CASE("wire: the header layout is the documented one") {
  auto datagram = encode(SectionOffer{"s", 2, 3, 4, 5}).value();
  std::uint16_t version = 0, type = 0;
  std::uint32_t body_length = 0, fd_count = 0;
  std::uint64_t body_sum = 0, header_sum = 0;
  std::memcpy(&version, datagram.data() + 4, 2);
  std::memcpy(&type, datagram.data() + 6, 2);
  std::memcpy(&body_length, datagram.data() + 8, 4);
  std::memcpy(&fd_count, datagram.data() + 12, 4);
  std::memcpy(&body_sum, datagram.data() + 16, 8);
  std::memcpy(&header_sum, datagram.data() + 24, 8);
  CHECK(version == 7);
  CHECK(version == kProtocolVersion);
  CHECK(type == 64);
  CHECK(fd_count == 1);
  // name (8-byte count + 1) + version 4 + sequence 8 + length 8 + checksum 8.
  CHECK(body_length == 9 + 4 + 8 + 8 + 8);
  CHECK(datagram.size() == kHeaderSize + body_length);
  CHECK(body_sum == XXH3_64bits(datagram.data() + kHeaderSize, body_length));
  CHECK(header_sum == XXH3_64bits(datagram.data(), 24));
  CHECK(datagram.substr(kHeaderSize) ==
        body(std::string("s"), std::uint32_t{2}, std::uint64_t{3}, std::uint64_t{4}, std::uint64_t{5}));
}

TEST_CASE("wire: every type number has the name and descriptor counts of docs/protocol.md's table") {
  struct Documented {
    std::uint16_t type;
    std::string_view name;
    std::uint32_t min_fds;
    std::uint32_t max_fds;
  };
  const Documented table[] = {
      {1, "hello", 0, 0},
      {2, "ready", 0, 0},
      {3, "status", 0, 0},
      {4, "section-imported", 0, 0},
      {5, "import-finished", 0, 0},
      {6, "section-exported", 0, 0},
      {7, "export-finished", 0, 0},
      {8, "config-prepared", 0, 0},
      {9, "config-committed", 0, 0},
      {32, "welcome", 0, 0},
      {33, "refuse", 0, 0},
      {34, "listeners", 0, 253},
      {35, "begin-import", 0, 1},
      {36, "begin-export", 1, 1},
      {37, "drain", 0, 0},
      {38, "stop", 0, 0},
      {39, "resume", 0, 0},
      {40, "active", 0, 0},
      {41, "config-prepare", 1, 1},
      {42, "config-commit", 0, 0},
      {43, "config-abort", 0, 0},
      {64, "section-offer", 1, 1},
      {65, "section-unavailable", 0, 0},
      {66, "fds", 0, 253},
      {67, "snapshot-end", 0, 0},
      {68, "delta", 0, 0},
      {69, "delta-memfd", 1, 1},
      {70, "arena-offer", 2, 2},
      {71, "section-stream", 1, 1},
      {72, "snapshot-covers", 0, 0},
  };
  auto allowed = [](std::uint16_t type, std::uint32_t fds) { return check_frame(bytes_of(frame(type, "", fds))).ok(); };
  std::size_t documented = 0;
  for (std::uint32_t number = 0; number <= 0xffff; ++number) {
    auto type = static_cast<std::uint16_t>(number);
    CAPTURE(number);
    const auto* row = std::find_if(std::begin(table), std::end(table), [&](const auto& r) { return r.type == type; });
    if (row == std::end(table)) {
      CHECK(type_name(static_cast<Type>(type)) == "unknown");
      continue;
    }
    ++documented;
    CHECK(type_name(static_cast<Type>(type)) == row->name);
    CHECK(allowed(type, row->min_fds));
    CHECK(allowed(type, row->max_fds));
    CHECK_FALSE(allowed(type, row->max_fds + 1));
    if (row->min_fds > 0) CHECK_FALSE(allowed(type, row->min_fds - 1));
  }
  CHECK(documented == std::size(table));
  CHECK(std::size(table) == std::variant_size_v<Message>);
}

TEST_CASE("wire: type names, descriptor counts and names") {
  CHECK(type_name(Type::SectionImported) == "section-imported");
  CHECK(type_name(Type::SnapshotEnd) == "snapshot-end");
  CHECK(type_name(static_cast<Type>(99)) == "unknown");
  CHECK(type_of(Message(StatusLine{})) == Type::Status);
  CHECK(type_of(Message(Delta{})) == Type::Delta);
  CHECK(fds_expected(Listeners{{"a", "b", "c"}}) == 3);
  CHECK(fds_expected(Fds{}) == 0);
  CHECK(fds_expected(BeginImport{0, {}, "cold"}) == 0);
  CHECK(fds_expected(BeginImport{5, {}, ""}) == 1);
  CHECK(fds_expected(BeginExport{}) == 1);
  CHECK(fds_expected(SectionOffer{}) == 1);
  CHECK(fds_expected(DeltaMemfd{}) == 1);
  CHECK(type_name(Type::DeltaMemfd) == "delta-memfd");
  CHECK(fds_expected(Hello{}) == 0);

  CHECK(valid_name("http"));
  CHECK(valid_name("A-z_0.9:x"));
  CHECK(valid_name(std::string(128, 'n')));
  CHECK_FALSE(valid_name(""));
  CHECK_FALSE(valid_name(std::string(129, 'n')));
  CHECK_FALSE(valid_name("x y"));
  CHECK_FALSE(valid_name("a/b"));
  CHECK_FALSE(valid_name(std::string("a\0b", 3)));
  CHECK_FALSE(valid_name("caf\xc3\xa9"));
  CHECK(quote("x y") == "'x y'");
  CHECK(quote("a\n'\\") == "'a\\x0a\\x27\\x5c'");
  CHECK(quote(std::string(100, 'z')) == "'" + std::string(64, 'z') + "...'");
}

TEST_CASE("wire: decode checks the frame in the documented order and names each failure") {
  const std::string good = encode(Welcome{1, 7, 2}).value();
  REQUIRE(decode_error(good) == "decoded");

  CHECK(decode_error("") == "channel frame: 0 bytes, shorter than the 32-byte header");
  CHECK(decode_error(good.substr(0, 31)) == "channel frame: 31 bytes, shorter than the 32-byte header");

  std::string bad = good;
  bad[0] = 'X';
  CHECK(decode_error(bad) == "channel frame: bad magic");

  bad = good;
  bad[9] ^= 1;  // Body length, covered by the header checksum.
  CHECK(decode_error(bad) == "channel frame: header checksum mismatch");
  bad = good;
  bad[30] ^= 1;  // The header checksum itself.
  CHECK(decode_error(bad) == "channel frame: header checksum mismatch");

  bad = good;
  put<std::uint16_t>(bad, 4, 2);  // The previous version (before streamed sections).
  fix_header_checksum(bad);
  CHECK(decode_error(bad) == "channel frame: protocol version 2, but this side speaks version 7");
  put<std::uint16_t>(bad, 4, 1);
  fix_header_checksum(bad);
  CHECK(decode_error(bad) == "channel frame: protocol version 1, but this side speaks version 7");
  put<std::uint16_t>(bad, 6, 99);  // A bad version is reported before a bad type.
  fix_header_checksum(bad);
  CHECK(decode_error(bad) == "channel frame: protocol version 1, but this side speaks version 7");

  CHECK(decode_error(frame(99, "")) == "channel frame: unknown message type 99");
  CHECK(decode_error(frame(0, "")) == "channel frame: unknown message type 0");
  CHECK(decode_error(frame(10, "")) == "channel frame: unknown message type 10");

  bad = frame(static_cast<std::uint16_t>(Type::Status), std::string(100, 'x'));
  put<std::uint32_t>(bad, 8, 70000);
  fix_header_checksum(bad);
  CHECK(decode_error(bad) == "channel frame: body length 70000 is over the limit of 65536 bytes");

  // The datagram is cut short, or has bytes after the announced body.
  CHECK(decode_error(good.substr(0, good.size() - 1)) ==
        "channel frame: the header announces a 14-byte body but the datagram holds 13 bytes after the header");
  CHECK(decode_error(good + "z") ==
        "channel frame: the header announces a 14-byte body but the datagram holds 15 bytes after the header");

  bad = good;
  bad.back() ^= 0x40;
  CHECK(decode_error(bad) == "channel frame: body checksum mismatch");
}

TEST_CASE("wire: decode checks bodies: exact length, limits, names, counts") {
  const auto hello = static_cast<std::uint16_t>(Type::Hello);
  const auto status = static_cast<std::uint16_t>(Type::Status);
  const auto welcome = static_cast<std::uint16_t>(Type::Welcome);
  const auto listeners = static_cast<std::uint16_t>(Type::Listeners);

  // A body shorter than its fields, and one longer.
  CHECK(decode_error(frame(welcome, body(std::uint16_t{1}, std::uint64_t{2}))) ==
        "welcome: the body is malformed: truncated: a field reaches past the end of the data");
  CHECK(decode_error(frame(welcome, body(std::uint16_t{1}, std::uint64_t{2}, std::uint32_t{3}, std::uint8_t{0}))) ==
        "welcome: 1 byte left over after the body's last field");
  CHECK(decode_error(frame(static_cast<std::uint16_t>(Type::Ready), "xyz")) ==
        "ready: 3 bytes left over after the body's last field");

  // A hello whose imports count is 2^60: refused from the count alone, before anything is sized
  // from it (an attempt to allocate would fail differently, and under ASan abort the test).
  CHECK(decode_error(frame(hello, body(std::uint16_t{1}, std::uint16_t{1}, std::int32_t{9}, std::string("sdk"),
                                       std::uint64_t{1} << 60))) ==
        "hello: the body is malformed: corrupt: a count is larger than the data left");
  // The same for a string length and for a list of versions (4 bytes each: 3 entries need 12).
  CHECK(decode_error(frame(status, body(~std::uint64_t{0}))) ==
        "status: the body is malformed: corrupt: a count is larger than the data left");
  CHECK(decode_error(frame(hello, body(std::uint16_t{1}, std::uint16_t{1}, std::int32_t{9}, std::string("sdk"),
                                       std::uint64_t{1}, std::string("s"), std::uint64_t{3}, std::uint64_t{0}))) ==
        "hello: the body is malformed: corrupt: a count is larger than the data left");

  // Field limits.
  CHECK(decode_error(frame(status, body(std::string(1025, 't')))) == "status: text is 1025 bytes, more than 1024");
  CHECK(decode_error(frame(status, body(std::string(1024, 't')))) == "decoded");
  CHECK(decode_error(frame(listeners, body(std::vector<std::string>{"http", "x y"}), 2)) ==
        "listeners: listener name 'x y' is not valid");
  CHECK(decode_error(frame(hello, body(std::uint16_t{1}, std::uint16_t{1}, std::int32_t{9}, std::string("sdk"),
                                       std::uint64_t{1}, std::string("x y"), std::vector<std::uint32_t>{1}, false,
                                       std::uint64_t{0}, false, std::uint64_t{0}))) ==
        "hello: section name 'x y' is not valid");
  CHECK(decode_error(
            frame(static_cast<std::uint16_t>(Type::SectionUnavailable), body(std::string(""), std::string("why")))) ==
        "section-unavailable: section name '' is not valid");
  CHECK(decode_error(frame(static_cast<std::uint16_t>(Type::SectionImported),
                           body(std::string("s"), std::uint8_t{2}, std::uint32_t{1}, std::uint64_t{0}, std::uint64_t{0},
                                std::string("")))) ==
        "section-imported: the body is malformed: corrupt: a bool is neither 0 nor 1");

  // A count of descriptors this type cannot carry, or one that does not match the body.
  CHECK(decode_error(frame(static_cast<std::uint16_t>(Type::Ready), "", 1)) ==
        "ready: the header announces 1 descriptor, which this type of message cannot carry");
  CHECK(decode_error(
            frame(static_cast<std::uint16_t>(Type::SectionOffer),
                  body(std::string("s"), std::uint32_t{1}, std::uint64_t{1}, std::uint64_t{0}, std::uint64_t{0}), 0)) ==
        "section-offer: the header announces 0 descriptors, which this type of message cannot carry");
  CHECK(decode_error(frame(static_cast<std::uint16_t>(Type::Fds), body(std::vector<std::string>{}), 254)) ==
        "fds: the header announces 254 descriptors, which this type of message cannot carry");
  CHECK(decode_error(frame(listeners, body(std::vector<std::string>{"a", "b"}), 1)) ==
        "listeners: the header announces 1 descriptor, but the message needs 2");
  CHECK(decode_error(frame(static_cast<std::uint16_t>(Type::BeginImport),
                           body(std::uint64_t{0}, std::uint64_t{0}, std::string("cold")), 1)) ==
        "begin-import: the header announces 1 descriptor, but the message needs 0");
  CHECK(decode_error(frame(static_cast<std::uint16_t>(Type::BeginImport),
                           body(std::uint64_t{4}, std::uint64_t{0}, std::string("")), 0)) ==
        "begin-import: the header announces 0 descriptors, but the message needs 1");
}

TEST_CASE("wire: encode refuses messages that break a limit, naming the field") {
  CHECK(encode_error(Listeners{{"ok", "not ok"}}) == "listeners: listener name 'not ok' is not valid");
  CHECK(encode_error(Fds{std::vector<std::string>(254, "conn")}) == "fds: 254 names, more than 253");
  CHECK(encode_error(Fds{std::vector<std::string>(253, "conn")}) == "encoded");
  CHECK(encode_error(StatusLine{std::string(1025, 's')}) == "status: text is 1025 bytes, more than 1024");
  CHECK(encode_error(Refuse{std::string(2000, 'r')}) == "refuse: reason is 2000 bytes, more than 1024");
  CHECK(encode_error(BeginImport{0, {}, std::string(1025, 'n')}) == "begin-import: note is 1025 bytes, more than 1024");
  CHECK(encode_error(Hello{2, 1, 1, "sdk", {}, {}, false, {}}) == "hello: min_version 2 is above max_version 1");
  CHECK(encode_error(Hello{1, 1, 1, "sdk", {{"s", std::vector<std::uint32_t>(65, 1)}}, {}, false, {}}) ==
        "hello: section 's' lists 65 versions, more than 64");
  CHECK(encode_error(Hello{1, 1, 1, "sdk", {}, {{"s", {2, 0}}}, false, {}}) ==
        "hello: section 's' lists version 0 (versions start at 1)");
  CHECK(encode_error(BeginExport{1, std::vector<SectionVersions>(257, {"s", {1}})}) ==
        "begin-export: plan lists 257 sections, more than 256");
  CHECK(encode_error(SectionOffer{"a b", 1, 1, 1, 1}) == "section-offer: section name 'a b' is not valid");
  CHECK(encode_error(SectionImported{{"s", false, 0, 0, 0, std::string(1025, 'x')}}) ==
        "section-imported: reason is 1025 bytes, more than 1024");
  CHECK(encode_error(Delta{"s", 1, 1, std::string(kMaxDeltaPayload + 1, 'd')}) ==
        "delta: payload is 60001 bytes, more than 60000");
  CHECK(encode_error(Delta{"", 1, 1, ""}) == "delta: section name '' is not valid");
  CHECK(encode_error(Hello{6, 6, 1, "sdk", {}, {}, false, {{"a", 1}, {"a", 2}}}) == "hello: configs lists 'a' twice");
  CHECK(encode_error(Hello{6, 6, 1, "sdk", {}, {}, false, std::vector<ConfigHeld>(65, {"a", 1})}) ==
        "hello: configs lists 65 configurations, more than 64");
  CHECK(encode_error(Hello{6, 6, 1, "sdk", {}, {}, false, {{"a/b", 1}}}) ==
        "hello: configuration name 'a/b' is not valid");
  CHECK(encode_error(ConfigPrepare{{"app", 2, 1, 0, 0}}) == "config-prepare: format 2, but this side reads format 1");
  CHECK(encode_error(ConfigPrepare{{"app", kConfigFormat, 0, 0, 0}}) ==
        "config-prepare: version 0 (versions start at 1)");
  CHECK(encode_error(ConfigCommit{"app", 0}) == "config-commit: version 0 (versions start at 1)");
  CHECK(encode_error(ConfigPrepared{"app", 1, false, std::string(1025, 'r')}) ==
        "config-prepared: reason is 1025 bytes, more than 1024");
  // Every list within its limit, but the body over 64 KiB.
  std::vector<SectionVersions> big(256, {std::string(128, 'n'), std::vector<std::uint32_t>(64, 1)});
  CHECK(encode_error(Hello{1, 1, 1, "sdk", big, {}, false, {}}) == "hello: the body is 102700 bytes, more than 65536");
}

TEST_CASE("archive: values written by cereal's BinaryOutputArchive read back, from spans and streams") {
  Record a{"key", {1, 2, 3}, {{"x", -1}, {"y", 2}}, {{"f", true}, {"g", false}}, Color::Green, 0.5};
  Record b{"", {}, {}, {}, Color::Red, -1};
  std::string bytes = body(a, b);

  {
    InputArchive ar(bytes_of(bytes));
    Record x, y;
    ar(x, y);
    CHECK(x == a);
    CHECK(y == b);
    CHECK(ar.remaining() == 0);
    CHECK(ar.consumed() == bytes.size());
  }
  // Two archives one after the other on one SDK stream: each starts where the last one stopped.
  {
    SpanStreamBuf buf(bytes_of(bytes));
    std::istream in(&buf);
    Record x, y;
    {
      InputArchive ar(in);
      ar(x);
    }
    CHECK(in.rdbuf()->in_avail() == static_cast<std::streamsize>(bytes.size() - body(a).size()));
    {
      InputArchive ar(in);
      ar(y);
    }
    CHECK(x == a);
    CHECK(y == b);
    CHECK(in.rdbuf()->in_avail() == 0);
  }
  // The same with a stream that is not the SDK's: read into the archive's own buffer.
  {
    std::istringstream in(bytes + "tail");
    Record x, y;
    {
      InputArchive ar(in);
      ar(x);
    }
    {
      InputArchive ar(in);
      ar(y);
    }
    CHECK(x == a);
    CHECK(y == b);
    std::string rest;
    in >> rest;
    CHECK(rest == "tail");
  }
}

TEST_CASE("archive: counts are checked against the bytes left before anything is allocated") {
  // A vector<string> whose count is 2^62.
  {
    std::string data = body(std::uint64_t{1} << 62, std::string("a"), std::string("b"));
    InputArchive ar(bytes_of(data));
    std::vector<CountedString, CountingAllocator<CountedString>> v;
    g_largest_allocation = 0;
    CHECK_THROWS_WITH_AS(ar(v), "corrupt: a count is larger than the data left", ArchiveError);
    CHECK(g_largest_allocation == 0);
  }
  // 12 integers of 8 bytes each announced, with 80 bytes left: enough for one byte per element,
  // not for eight.
  {
    std::string data = body(std::uint64_t{12}, std::string(72, 'x'));
    REQUIRE(data.size() - 8 == 80);
    InputArchive ar(bytes_of(data));
    std::vector<std::uint64_t, CountingAllocator<std::uint64_t>> v;
    g_largest_allocation = 0;
    CHECK_THROWS_WITH_AS(ar(v), "corrupt: a count is larger than the data left", ArchiveError);
    CHECK(g_largest_allocation == 0);
  }
  // A string's length.
  {
    std::string data = body(std::uint64_t{1000}, std::string(10, 'x'));
    InputArchive ar(bytes_of(data));
    CountedString s;
    g_largest_allocation = 0;
    CHECK_THROWS_AS(ar(s), ArchiveError);
    CHECK(g_largest_allocation == 0);
  }
  // A map's count (cereal's own loader, bounded by the SizeTag check).
  {
    std::string data = body(std::uint64_t{1} << 40);
    InputArchive ar(bytes_of(data));
    std::map<std::string, std::string> m;
    CHECK_THROWS_WITH_AS(ar(m), "corrupt: a count is larger than the data left", ArchiveError);
  }
  // Reads past the end and bools that are not 0 or 1.
  {
    std::string data = body(std::uint32_t{1});
    InputArchive ar(bytes_of(data));
    std::uint64_t big = 0;
    CHECK_THROWS_WITH_AS(ar(big), "truncated: a field reaches past the end of the data", ArchiveError);
  }
  {
    std::string data = body(std::uint8_t{7});
    InputArchive ar(bytes_of(data));
    bool b = false;
    CHECK_THROWS_WITH_AS(ar(b), "corrupt: a bool is neither 0 nor 1", ArchiveError);
  }
}

TEST_CASE("section stream: tellg, seekg and in_avail within the span") {
  std::string data = "0123456789";
  SpanStreamBuf buf(bytes_of(data));
  std::istream in(&buf);
  CHECK(buf.in_avail() == 10);
  CHECK(in.tellg() == 0);
  char c = 0;
  in.get(c);
  CHECK(c == '0');
  CHECK(in.tellg() == 1);
  in.seekg(-2, std::ios_base::end);
  in.get(c);
  CHECK(c == '8');
  in.seekg(-3, std::ios_base::cur);
  in.get(c);
  CHECK(c == '6');
  in.seekg(4);
  CHECK(buf.in_avail() == 6);
  CHECK(buf.unread().size() == 6);
  in.seekg(11);
  CHECK(in.fail());
  in.clear();
  CHECK(in.tellg() == 4);
  in.seekg(-5, std::ios_base::cur);
  CHECK(in.fail());
  in.clear();
  in.seekg(0, std::ios_base::end);
  CHECK(in.tellg() == 10);
  CHECK(in.get() == std::char_traits<char>::eof());
  // It never writes: putting back a different character fails.
  in.clear();
  in.seekg(3);
  in.putback('x');
  CHECK(in.fail());
  CHECK(data == "0123456789");
}

TEST_CASE("section: encode_section and decode_section round-trip") {
  std::string payload = "the payload \0 with a NUL";
  auto whole = encode_section("cache.v2", 7, 99, payload);
  CHECK(whole.size() == kSectionFixedHeader + 8 + payload.size());
  CHECK(whole.compare(0, 8, "HRSECT01") == 0);
  auto view = decode_section(bytes_of(whole), 1000);
  REQUIRE_MESSAGE(view.ok(), view.error().text());
  CHECK(view->header.name == "cache.v2");
  CHECK(view->header.version == 7);
  CHECK(view->header.sequence == 99);
  CHECK(view->header.length == payload.size());
  CHECK(view->header.checksum == XXH3_64bits(payload.data(), payload.size()));
  CHECK(std::string(reinterpret_cast<const char*>(view->payload.data()), view->payload.size()) == payload);
  // An empty payload is a section too, and a payload of exactly max_bytes is allowed.
  CHECK(decode_section(bytes_of(encode_section("e", 1, 1, "")), 0).ok());
  CHECK(decode_section(bytes_of(whole), payload.size()).ok());
}

TEST_CASE("section: decode_section names each failure") {
  auto err = [](const std::string& whole, std::uint64_t max = 1 << 20) {
    auto v = decode_section(bytes_of(whole), max);
    return v ? std::string("decoded") : v.error().text();
  };
  const std::string good = encode_section("sessions", 1, 2, "payload!");
  const std::size_t h = kSectionFixedHeader + 8;

  CHECK(err(good.substr(0, 51)) == "section: 51 bytes, shorter than a section header");
  std::string bad = good;
  bad[7] = '2';
  CHECK(err(bad) == "section: bad magic");
  bad = good;
  bad[12] ^= 1;  // The version, covered by the header checksum.
  CHECK(err(bad) == "section: header checksum mismatch");
  bad = good;
  bad[h - 1] ^= 1;  // The header checksum itself.
  CHECK(err(bad) == "section: header checksum mismatch");
  bad = good;
  put<std::uint32_t>(bad, 8, 61);
  put<std::uint64_t>(bad, 52, XXH3_64bits(bad.data(), 52));
  CHECK(err(bad) == "section: header length 61 is not 52 + the name's 8");
  CHECK(err(good + "x") == "section 'sessions': the header gives a payload of 8 bytes, but 9 bytes follow it");
  CHECK(err(good.substr(0, good.size() - 1)) ==
        "section 'sessions': the header gives a payload of 8 bytes, but 7 bytes follow it");
  bad = good;
  bad.back() ^= 1;
  CHECK(err(bad) == "section 'sessions': payload checksum mismatch");
  CHECK(err(good, 7) == "section 'sessions': the payload of 8 bytes is over the limit of 7");
  CHECK(err(encode_section("x y", 1, 1, "p")) == "section: name 'x y' is not valid");
  CHECK(err(encode_section("", 1, 1, "p")) == "section: name length 0 is not 1 to 128");
  CHECK(err(encode_section(std::string(129, 'n'), 1, 1, "p")) == "section: name length 129 is not 1 to 128");
  bad = good;
  put<std::uint32_t>(bad, 40, 100);  // A name longer than the bytes there are.
  CHECK(err(bad) == "section: the header with its name takes 152 bytes, but there are only 68");
}

namespace {

std::string payload_of(const MappedSection& s) {
  return std::string(reinterpret_cast<const char*>(s.payload().data()), s.payload().size());
}
int seals_of(int fd) {
  return ::fcntl(fd, F_GET_SEALS);
}
constexpr int kAllSeals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

}  // namespace

TEST_CASE("section: write_section and open_section round-trip through a sealed memfd") {
  // Small writes, writes that straddle the writer's buffer and writes larger than it, so that
  // every path through the stream is taken; the payload is a pattern that shows misplaced bytes.
  std::string expected;
  auto save = [&](std::ostream& out) {
    for (int i = 0; i < 5000; ++i) {
      std::string piece = std::to_string(i) + ",";
      out << piece;
      expected += piece;
    }
    for (std::size_t size : {std::size_t{100'000}, std::size_t{3'000'000}, std::size_t{262'144}, std::size_t{7}}) {
      std::string chunk(size, '\0');
      for (std::size_t i = 0; i < size; ++i)
        chunk[i] = static_cast<char>('a' + (i * 7 + size) % 26);
      out.write(chunk.data(), static_cast<std::streamsize>(size));
      expected += chunk;
    }
    out.put('!');
    expected += '!';
  };
  auto written = write_section("sessions", 3, 41, save, 1 << 30);
  REQUIRE_MESSAGE(written.ok(), written.error().text());
  const int fd = written->memfd.get();
  CHECK(seals_of(fd) == kAllSeals);
  CHECK((::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
  const SectionOffer offer = written->offer;
  CHECK(offer.name == "sessions");
  CHECK(offer.version == 3);
  CHECK(offer.sequence == 41);
  CHECK(offer.length == expected.size());
  CHECK(offer.checksum == XXH3_64bits(expected.data(), expected.size()));
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  CHECK(static_cast<std::size_t>(st.st_size) == kSectionFixedHeader + 8 + expected.size());
  // The seals hold: nothing can be written, and the size cannot change.
  CHECK(::pwrite(fd, "x", 1, 0) < 0);
  CHECK(::ftruncate(fd, 10) < 0);

  auto mapped = open_section(std::move(written->memfd), offer, 1 << 30);
  REQUIRE_MESSAGE(mapped.ok(), mapped.error().text());
  CHECK(mapped->header().name == "sessions");
  CHECK(mapped->header().version == 3);
  CHECK(payload_of(*mapped) == expected);

  MappedSection moved = std::move(mapped.value());
  CHECK(payload_of(moved) == expected);
  CHECK(mapped->payload().empty());
}

TEST_CASE("section: cereal output through write_section reads back through InputArchive") {
  Record r{"k", {5, 6}, {{"a", 1}}, {{"b", true}}, Color::Green, 2.5};
  auto written = write_section(
      "records", 1, 1,
      [&](std::ostream& out) {
        OutputArchive ar(out);
        ar(r, r);
      },
      1 << 20);
  REQUIRE(written.ok());
  auto offer = written->offer;
  auto mapped = open_section(std::move(written->memfd), offer, 1 << 20);
  REQUIRE(mapped.ok());
  SpanStreamBuf buf(mapped->payload());
  std::istream in(&buf);
  InputArchive ar(in);
  Record x, y;
  ar(x, y);
  CHECK(x == r);
  CHECK(y == r);
  CHECK(ar.remaining() == 0);
}

TEST_CASE("section: write_section reports exporters that fail or write too much") {
  auto threw = write_section(
      "cache", 1, 1, [](std::ostream&) { throw std::runtime_error("boom"); }, 100);
  REQUIRE_FALSE(threw.ok());
  CHECK(threw.error().text() == "section 'cache': the exporter failed: boom");

  auto threw_int = write_section(
      "cache", 1, 1, [](std::ostream&) { throw 42; }, 100);
  REQUIRE_FALSE(threw_int.ok());
  CHECK(threw_int.error().text() ==
        "section 'cache': the exporter failed: it threw an exception that is not a std::exception");

  // Too much through write(), through operator<< and through put(); exactly max_bytes is fine.
  for (int how = 0; how < 3; ++how) {
    CAPTURE(how);
    bool went_on = false;
    auto big = write_section(
        "cache", 1, 1,
        [&](std::ostream& out) {
          std::string s(60, 'x');
          for (int i = 0; i < 2; ++i) {
            if (how == 0) out.write(s.data(), 60);
            if (how == 1) out << s;
            if (how == 2)
              for (char c : s)
                out.put(c);
          }
          went_on = true;
        },
        100);
    REQUIRE_FALSE(big.ok());
    CHECK(big.error().text() == "section 'cache': the exporter wrote more than 100 bytes");
    CHECK_FALSE(went_on);  // The stream throws, so the exporter stops at once.
  }
  // An exporter that catches the stream's exception is still refused.
  auto swallowed = write_section(
      "cache", 1, 1,
      [](std::ostream& out) {
        try {
          out << std::string(200, 'y');
        } catch (...) {
        }
      },
      100);
  REQUIRE_FALSE(swallowed.ok());
  CHECK(swallowed.error().text() == "section 'cache': the exporter wrote more than 100 bytes");

  auto exact = write_section(
      "cache", 1, 1, [](std::ostream& out) { out << std::string(100, 'z'); }, 100);
  REQUIRE(exact.ok());
  CHECK(exact->offer.length == 100);
  auto none = write_section(
      "cache", 1, 1, [](std::ostream&) {}, 0);
  REQUIRE(none.ok());
  CHECK(none->offer.length == 0);

  auto bad_name = write_section(
      "no good", 1, 1, [](std::ostream&) {}, 100);
  REQUIRE_FALSE(bad_name.ok());
  CHECK(bad_name.error().text() == "section 'no good': the name is not valid");
}

TEST_CASE("section: open_section refuses a memfd that does not match its offer") {
  auto make = [] {
    auto w = write_section(
        "sessions", 2, 10, [](std::ostream& out) { out << "some state"; }, 1000);
    REQUIRE(w.ok());
    return std::move(w.value());
  };
  auto err = [&](auto change, std::uint64_t max = 1000) {
    auto w = make();
    SectionOffer offer = w.offer;
    change(offer);
    auto m = open_section(std::move(w.memfd), offer, max);
    return m ? std::string("opened") : m.error().text();
  };
  CHECK(err([](SectionOffer&) {}) == "opened");
  CHECK(err([](SectionOffer& o) { o.version = 3; }) ==
        "section 'sessions': the offer says version 3 but the memfd holds 2");
  CHECK(err([](SectionOffer& o) { o.sequence = 11; }) ==
        "section 'sessions': the offer says sequence 11 but the memfd holds 10");
  CHECK(err([](SectionOffer& o) { o.checksum ^= 1; }).find("section 'sessions': the offer says checksum ") == 0);
  CHECK(err([](SectionOffer& o) { o.name = "sessionz"; }) ==
        "section 'sessionz': the offer says name 'sessionz' but the memfd holds 'sessions'");
  // A different length or name length changes the size the memfd must have.
  CHECK(err([](SectionOffer& o) { o.length = 11; }) ==
        "section 'sessions': the memfd holds 70 bytes, but the offer's header and payload make 71");
  CHECK(err([](SectionOffer& o) { o.name = "s"; }) ==
        "section 's': the memfd holds 70 bytes, but the offer's header and payload make 63");
  CHECK(err([](SectionOffer&) {}, 9) == "section 'sessions': the offer's payload of 10 bytes is over the limit of 9");
}

TEST_CASE("section: open_section refuses an unsealed or partly sealed memfd, and other files") {
  const std::string whole = encode_section("sessions", 1, 1, "state");
  const SectionOffer offer{"sessions", 1, 1, 5, XXH3_64bits("state", 5)};
  auto memfd_with = [&](int seals) {
    Fd fd(::memfd_create("test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    REQUIRE(fd);
    REQUIRE(::write(fd.get(), whole.data(), whole.size()) == static_cast<ssize_t>(whole.size()));
    if (seals != 0) REQUIRE(::fcntl(fd.get(), F_ADD_SEALS, seals) == 0);
    return fd;
  };
  auto err = [&](Fd fd) {
    auto m = open_section(std::move(fd), offer, 1000);
    return m ? std::string("opened") : m.error().text();
  };
  CHECK(err(memfd_with(kAllSeals)) == "opened");
  CHECK(err(memfd_with(0)) ==
        "section 'sessions': the memfd is not sealed (missing F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE)");
  CHECK(err(memfd_with(F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW)) ==
        "section 'sessions': the memfd is not sealed (missing F_SEAL_WRITE)");
  // A memfd created without MFD_ALLOW_SEALING reports F_SEAL_SEAL only.
  Fd plain(::memfd_create("test", MFD_CLOEXEC));
  REQUIRE(plain);
  CHECK(err(std::move(plain)) ==
        "section 'sessions': the memfd is not sealed (missing F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE)");
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  Fd keep(p[1]);
  CHECK(err(Fd(p[0])) == "section 'sessions': fcntl(F_GET_SEALS): Invalid argument");
  // A sealed memfd holding a section whose payload was changed before sealing.
  std::string changed = whole;
  changed.back() ^= 1;
  Fd tampered(::memfd_create("test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  REQUIRE(::write(tampered.get(), changed.data(), changed.size()) == static_cast<ssize_t>(changed.size()));
  REQUIRE(::fcntl(tampered.get(), F_ADD_SEALS, kAllSeals) == 0);
  CHECK(err(std::move(tampered)) == "section 'sessions': payload checksum mismatch");
}
