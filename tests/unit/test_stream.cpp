// Streamed sections (stream.h) over real SOCK_STREAM socketpairs: the chunks StreamWriter sends,
// round trips through StreamReader, the InputArchive's streaming mode, hostile and broken streams
// (each with its exact error), and the section-stream message.
//
// A writer runs on a thread of its own (Peer) while the test reads the other end; crafted input is
// sent as raw bytes with ::send. Every reader has a deadline a few seconds away, and Peer ends by
// shutting the reader's end down, so that a writer still blocked in send fails and returns.
#include <doctest/doctest.h>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cereal/types/map.hpp>
#include <cereal/types/string.hpp>
#include <cereal/types/vector.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <istream>
#include <map>
#include <ostream>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <hotrestart/archive.h>
#include <hotrestart/fd.h>
#include <hotrestart/wire/message.h>
#include <hotrestart/wire/stream.h>

using namespace hotrestart;
using namespace hotrestart::wire;

namespace {

using Clock = StreamReader::Clock;
using traits = std::char_traits<char>;
constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr std::uint64_t kLimit = std::uint64_t{64} << 20;  // max_bytes, unless a test is about it.

std::pair<Fd, Fd> make_pair() {
  auto p = stream_pair();
  REQUIRE(p.ok());
  return std::move(p.value());
}

Clock::time_point seconds_away(int s = 5) {
  return Clock::now() + std::chrono::seconds(s);
}

// Deterministic bytes that differ from offset to offset, so that a misplaced chunk shows.
std::string pattern(std::size_t n, std::uint32_t seed = 1) {
  std::string s(n, '\0');
  std::uint32_t x = seed * 2654435761U + 12345U;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525U + 1013904223U;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

// Little-endian fields, as the chunk format has them.
template <class T>
void put_le(std::string& s, std::size_t at, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i)
    s[at + i] = static_cast<char>((static_cast<std::uint64_t>(value) >> (8 * i)) & 0xff);
}
std::string u64_le(std::uint64_t v) {
  std::string s(8, '\0');
  put_le(s, 0, v);
  return s;
}

// Chunks built by hand from the documented layout (24-byte header: magic, kind, length, reserved,
// XXH3-64 of bytes 0..15; the payload; its XXH3-64), so that a test can spoil any field.
std::string header(std::uint32_t kind, std::uint32_t length, std::uint32_t reserved = 0,
                   std::string_view magic = "HRSK") {
  std::string h(24, '\0');
  std::memcpy(h.data(), magic.data(), 4);
  put_le(h, 4, kind);
  put_le(h, 8, length);
  put_le(h, 12, reserved);
  put_le(h, 16, XXH3_64bits(h.data(), 16));
  return h;
}
std::string trailer(std::string_view payload) {
  return u64_le(XXH3_64bits(payload.data(), payload.size()));
}
std::string chunk(std::uint32_t kind, std::string_view payload) {
  return header(kind, static_cast<std::uint32_t>(payload.size())) + std::string(payload) + trailer(payload);
}
std::string data_chunk(std::string_view payload) {
  return chunk(1, payload);
}
std::string end_chunk(std::uint64_t total) {
  return chunk(2, u64_le(total));
}
std::string abort_chunk(std::string_view reason) {
  return chunk(3, reason);
}

// Sends all of `bytes` on a blocking socket; false once the peer is gone.
bool send_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    bytes.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

// Everything that arrives on `fd` until end of file, each wait bounded (a test that hangs fails).
std::string read_raw(int fd) {
  std::string out;
  char buf[64 * 1024];
  for (;;) {
    pollfd pfd{fd, POLLIN, 0};
    int ready = ::poll(&pfd, 1, 5000);
    if (ready < 0 && errno == EINTR) continue;
    REQUIRE_MESSAGE(ready == 1, "no data and no end of file within 5 s");
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    REQUIRE(n >= 0);
    if (n == 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

// A socketpair whose first end `write` uses on a thread; the test reads the second end.
class Peer {
 public:
  explicit Peer(std::function<void(int)> write)
      : ends_(make_pair()), thread_([this, w = std::move(write)] { w(ends_.first.get()); }) {}
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;
  ~Peer() { join(); }

  int reader_fd() const { return ends_.second.get(); }
  // Shuts the reader's end down (a writer blocked in send fails with EPIPE) and waits for the
  // writer. The descriptors stay open until the Peer goes.
  void join() {
    if (!thread_.joinable()) return;
    (void)::shutdown(ends_.second.get(), SHUT_RDWR);
    thread_.join();
  }

 private:
  std::pair<Fd, Fd> ends_;
  std::thread thread_;
};

// A peer that sends `bytes` as they are and then ends the stream (or, with keep_open, leaves it
// open and silent until the Peer goes).
std::function<void(int)> sends(std::string bytes, bool keep_open = false) {
  return [bytes = std::move(bytes), keep_open](int fd) {
    (void)send_all(fd, bytes);
    if (!keep_open) (void)::shutdown(fd, SHUT_WR);
  };
}

// Reads with sgetn in steps of `step` bytes until it returns less than asked for.
std::string read_all(StreamReader& r, std::size_t step) {
  std::string out;
  std::string buf(step, '\0');
  for (;;) {
    const std::streamsize got = r.sgetn(buf.data(), static_cast<std::streamsize>(step));
    out.append(buf.data(), static_cast<std::size_t>(got));
    if (static_cast<std::size_t>(got) < step) return out;
  }
}

struct Outcome {
  std::string data;   // What the reader handed out.
  std::string error;  // error() afterwards.
  bool at_end = false;
  std::uint64_t total = 0;
};

Outcome read_crafted(const std::string& bytes, std::size_t step, std::uint64_t max_bytes = kLimit) {
  Peer peer(sends(bytes));
  StreamReader r(peer.reader_fd(), seconds_away(), max_bytes);
  Outcome o;
  o.data = read_all(r, step);
  o.at_end = r.at_end();
  o.error = r.error();
  o.total = r.total();
  return o;
}

// A crafted stream read both ways, in small buffered reads and in reads larger than any chunk
// (straight into the caller's memory): both hand out exactly `data` and then fail with `error`.
void check_refused(const std::string& bytes, const std::string& error, const std::string& data = "",
                   std::uint64_t max_bytes = kLimit) {
  for (std::size_t step : {std::size_t{3}, 8 * kMiB}) {
    CAPTURE(step);
    Outcome o = read_crafted(bytes, step, max_bytes);
    CHECK(o.data == data);
    CHECK(o.error == error);
    CHECK_FALSE(o.at_end);
  }
}

// The chunks a writer sent, read raw from the other end.
std::string wire_bytes(const std::function<void(StreamWriter&)>& write, std::uint64_t max_bytes = kLimit) {
  Peer peer([&](int fd) {
    StreamWriter w(fd, max_bytes);
    write(w);
    (void)::shutdown(fd, SHUT_WR);
  });
  return read_raw(peer.reader_fd());
}

// "" when a == b; otherwise their sizes and where they first differ (they may be megabytes long).
std::string difference(const std::string& a, const std::string& b) {
  if (a == b) return "";
  std::size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i])
    ++i;
  return std::to_string(a.size()) + " and " + std::to_string(b.size()) + " bytes, first difference at offset " +
         std::to_string(i);
}

template <class... T>
std::string cereal_bytes(const T&... values) {
  std::ostringstream out;
  {
    OutputArchive ar(out);
    ar(values...);
  }
  return std::move(out).str();
}

}  // namespace

TEST_CASE("stream: the helpers' chunks are the documented layout") {
  CHECK(kChunkHeader == 24);
  CHECK(kChunkTrailer == 8);
  CHECK(kMaxStreamChunk == 4 * kMiB);
  CHECK(encode_chunk_header(ChunkKind::Data, 5) == header(1, 5));
  CHECK(encode_chunk_header(ChunkKind::End, 8) == header(2, 8));
  CHECK(encode_chunk(ChunkKind::Data, "hello") == data_chunk("hello"));
  CHECK(encode_chunk(ChunkKind::End, u64_le(5)) == end_chunk(5));
  CHECK(encode_chunk(ChunkKind::Abort, "boom") == abort_chunk("boom"));
  const std::string h = encode_chunk_header(ChunkKind::Abort, 0x01020304);
  CHECK(h.substr(0, 16) == std::string("HRSK\x03\0\0\0\x04\x03\x02\x01\0\0\0\0", 16));
  CHECK(h.substr(16) == u64_le(XXH3_64bits(h.data(), 16)));
}

TEST_CASE("stream: StreamWriter's chunks on the wire") {
  SUBCASE("an empty section is one end chunk stating 0") {
    CHECK(wire_bytes([](StreamWriter& w) { CHECK(w.finish().ok()); }) == end_chunk(0));
  }
  SUBCASE("a small write is one data chunk, then the end") {
    CHECK(wire_bytes([](StreamWriter& w) {
            CHECK(w.sputn("hello", 5) == 5);
            CHECK(w.bytes() == 5);
            CHECK(w.finish().ok());
          }) == data_chunk("hello") + end_chunk(5));
  }
  SUBCASE("a sync sends what is buffered; an empty buffer sends nothing") {
    CHECK(wire_bytes([](StreamWriter& w) {
            CHECK(w.sputn("ab", 2) == 2);
            CHECK(w.pubsync() == 0);
            CHECK(w.pubsync() == 0);
            CHECK(w.sputc('c') == 'c');
            CHECK(w.finish().ok());
          }) == data_chunk("ab") + data_chunk("c") + end_chunk(3));
  }
  SUBCASE("sputc fills 1 MiB chunks") {
    const std::string p = pattern(kMiB + 1);
    const std::string raw = wire_bytes([&](StreamWriter& w) {
      for (char c : p)
        if (traits::eq_int_type(w.sputc(c), traits::eof())) return;
      CHECK(w.finish().ok());
    });
    CHECK(difference(raw, data_chunk(p.substr(0, kMiB)) + data_chunk(p.substr(kMiB)) + end_chunk(kMiB + 1)) == "");
  }
  SUBCASE("a large write tops up the buffer, then goes out in whole chunks, the tail buffered") {
    const std::string p = pattern(3 * kMiB + 15);
    const std::string raw = wire_bytes([&](StreamWriter& w) {
      CHECK(w.sputn(p.data(), 10) == 10);
      CHECK(w.sputn(p.data() + 10, static_cast<std::streamsize>(p.size() - 10)) ==
            static_cast<std::streamsize>(p.size() - 10));
      CHECK(w.bytes() == p.size());
      CHECK(w.finish().ok());
    });
    CHECK(difference(raw, data_chunk(p.substr(0, kMiB)) + data_chunk(p.substr(kMiB, kMiB)) +
                              data_chunk(p.substr(2 * kMiB, kMiB)) + data_chunk(p.substr(3 * kMiB)) +
                              end_chunk(p.size())) == "");
  }
  SUBCASE("a write of exactly two chunks into an empty buffer leaves nothing buffered") {
    const std::string p = pattern(2 * kMiB);
    const std::string raw = wire_bytes([&](StreamWriter& w) {
      CHECK(w.sputn(p.data(), static_cast<std::streamsize>(p.size())) == static_cast<std::streamsize>(p.size()));
      CHECK(w.finish().ok());
    });
    CHECK(difference(raw, data_chunk(p.substr(0, kMiB)) + data_chunk(p.substr(kMiB)) + end_chunk(2 * kMiB)) == "");
  }
  SUBCASE("abort sends an abort chunk; what was buffered is dropped") {
    CHECK(wire_bytes([](StreamWriter& w) {
            CHECK(w.sputn("abc", 3) == 3);
            CHECK(w.pubsync() == 0);
            CHECK(w.sputn("def", 3) == 3);
            w.abort("boom");
            CHECK(w.sputn("ghi", 3) == 0);
            CHECK_FALSE(w.finish().ok());
          }) == data_chunk("abc") + abort_chunk("boom"));
  }
  SUBCASE("an abort without a reason, and one with a reason over 1,024 bytes") {
    CHECK(wire_bytes([](StreamWriter& w) { w.abort(""); }) == abort_chunk("no reason given"));
    const std::string long_reason = pattern(2000);
    CHECK(wire_bytes([&](StreamWriter& w) { w.abort(long_reason); }) == abort_chunk(long_reason.substr(0, 1024)));
  }
  SUBCASE("finish twice, and abort after finish") {
    CHECK(wire_bytes([](StreamWriter& w) {
            CHECK(w.finish().ok());
            auto again = w.finish();
            CHECK((again.ok() ? std::string("finished") : again.error().text()) == "the stream was already ended");
            w.abort("too late");
          }) == end_chunk(0));
  }
}

TEST_CASE("stream: an empty section round-trips") {
  Status finished = Error::message("not run");
  Peer peer([&](int fd) {
    StreamWriter w(fd, kLimit);
    finished = w.finish();
  });
  StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
  char c = 0;
  CHECK(r.sgetn(&c, 1) == 0);
  CHECK(traits::eq_int_type(r.sgetc(), traits::eof()));
  CHECK(r.error() == "");
  CHECK(r.at_end());
  CHECK(r.ended());
  CHECK(r.total() == 0);
  CHECK(r.consumed() == 0);
  auto left = r.finish();
  REQUIRE(left.ok());
  CHECK(left.value() == 0);
  peer.join();
  CHECK(finished.ok());
}

TEST_CASE("stream: byte by byte, sputc to sbumpc, across chunks") {
  const std::string p = pattern(2 * kMiB + 77, 2);
  Status finished = Error::message("not run");
  Peer peer([&](int fd) {
    StreamWriter w(fd, kLimit);
    for (char c : p)
      if (traits::eq_int_type(w.sputc(c), traits::eof())) return;
    finished = w.finish();
  });
  StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
  std::string got;
  got.reserve(p.size());
  for (;;) {
    const auto c = r.sbumpc();
    if (traits::eq_int_type(c, traits::eof())) break;
    got.push_back(traits::to_char_type(c));
  }
  CHECK(r.error() == "");
  CHECK(difference(got, p) == "");
  CHECK(r.total() == p.size());
  CHECK(r.consumed() == p.size());
  CHECK(r.at_end());
  auto left = r.finish();
  REQUIRE(left.ok());
  CHECK(left.value() == 0);
  peer.join();
  CHECK(finished.ok());
}

TEST_CASE("stream: one large write, read in assorted sizes through both read paths") {
  // 100 bytes, then one write of the rest: chunks of 1 MiB (x5) and 3 bytes.
  const std::string p = pattern(5 * kMiB + 3, 3);
  Status finished = Error::message("not run");
  Peer peer([&](int fd) {
    StreamWriter w(fd, kLimit);
    if (w.sputn(p.data(), 100) != 100) return;
    if (w.sputn(p.data() + 100, static_cast<std::streamsize>(p.size() - 100)) !=
        static_cast<std::streamsize>(p.size() - 100))
      return;
    finished = w.finish();
  });
  StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
  std::string got;
  auto take = [&](std::size_t n) {
    std::string buf(n, '\0');
    const auto k = r.sgetn(buf.data(), static_cast<std::streamsize>(n));
    got.append(buf.data(), static_cast<std::size_t>(k));
    return static_cast<std::size_t>(k);
  };

  // A small read takes the first chunk into the reader's buffer (after the second's header).
  CHECK(take(1) == 1);
  CHECK(r.consumed() == 1);
  CHECK(r.total() == kMiB);
  CHECK(r.in_avail() == static_cast<std::streamsize>(kMiB - 1));
  // A large one: the rest of the buffer, two chunks straight into the caller's memory, and one
  // byte of the fourth chunk, which the reader buffers.
  CHECK(take(3 * kMiB) == 3 * kMiB);
  CHECK(r.consumed() == 3 * kMiB + 1);
  CHECK(r.total() == 4 * kMiB);
  CHECK(r.in_avail() == static_cast<std::streamsize>(kMiB - 1));
  // sgetc peeks; sbumpc takes.
  CHECK(r.sgetc() == static_cast<unsigned char>(p[got.size()]));
  CHECK(r.consumed() == 3 * kMiB + 1);
  got.push_back(traits::to_char_type(r.sbumpc()));
  CHECK(r.consumed() == 3 * kMiB + 2);
  // Assorted sizes to the end.
  for (std::size_t n : {std::size_t{7}, std::size_t{4096}, kMiB, std::size_t{13}, 2 * kMiB + 1, std::size_t{65536}}) {
    CAPTURE(n);
    take(n);
    CHECK(r.consumed() == got.size());
    CHECK(r.total() >= r.consumed());
  }
  CHECK(difference(got, p) == "");
  CHECK(take(1) == 0);
  CHECK(r.error() == "");
  CHECK(r.at_end());
  CHECK(r.total() == p.size());
  peer.join();
  CHECK(finished.ok());
}

TEST_CASE("stream: finish discards what the load left and returns how much that was") {
  const std::string p = pattern(3 * kMiB + 15, 4);
  auto writer = [&](int fd) {
    StreamWriter w(fd, kLimit);
    (void)w.sputn(p.data(), static_cast<std::streamsize>(p.size()));
    (void)w.finish();
  };
  SUBCASE("nothing read") {
    Peer peer(writer);
    StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
    auto left = r.finish();
    REQUIRE(left.ok());
    CHECK(left.value() == p.size());
    CHECK(r.at_end());
    CHECK(r.total() == p.size());
  }
  SUBCASE("100 bytes read") {
    Peer peer(writer);
    StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
    std::string buf(100, '\0');
    REQUIRE(r.sgetn(buf.data(), 100) == 100);
    CHECK(buf == p.substr(0, 100));
    auto left = r.finish();
    REQUIRE(left.ok());
    CHECK(left.value() == p.size() - 100);
    CHECK(r.at_end());
    CHECK(r.error() == "");
    CHECK(r.total() == p.size());
    // Once at the end, finish has nothing left to discard.
    auto again = r.finish();
    REQUIRE(again.ok());
    CHECK(again.value() == 0);
  }
  SUBCASE("everything read") {
    Peer peer(writer);
    StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
    CHECK(difference(read_all(r, 8 * kMiB), p) == "");
    auto left = r.finish();
    REQUIRE(left.ok());
    CHECK(left.value() == 0);
  }
  SUBCASE("a broken stream: finish returns the error") {
    Peer peer(sends(data_chunk("abc")));
    StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
    auto left = r.finish();
    REQUIRE_FALSE(left.ok());
    CHECK(left.error().text() == "truncated: the stream ended after 3 bytes, before its end chunk");
    CHECK_FALSE(r.at_end());
  }
}

TEST_CASE("stream: InputArchive loads cereal output as it arrives") {
  std::map<std::string, std::string> map;
  for (int i = 0; i < 1000; ++i)
    map["key-" + std::to_string(i)] = pattern(static_cast<std::size_t>(i % 97), static_cast<std::uint32_t>(i));
  std::vector<std::uint64_t> numbers(700'000);  // 5.3 MiB.
  for (std::size_t i = 0; i < numbers.size(); ++i)
    numbers[i] = i * 0x9e3779b97f4a7c15ULL;
  const std::string text = pattern(3 * kMiB, 5);
  const std::size_t size = cereal_bytes(map, numbers, text).size();

  Status finished = Error::message("not run");
  Peer peer([&](int fd) {
    StreamWriter w(fd, kLimit);
    {
      std::ostream out(&w);
      OutputArchive ar(out);
      ar(map, numbers, text);
    }
    finished = w.finish();
  });
  StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
  std::istream in(&r);
  InputArchive ar(in);
  CHECK(ar.streaming());
  CHECK(ar.remaining() == kLimit);
  std::map<std::string, std::string> map2;
  std::vector<std::uint64_t> numbers2;
  std::string text2;
  ar(map2);
  CHECK_FALSE(ar.at_end());
  ar(numbers2, text2);
  CHECK(map2 == map);
  CHECK(numbers2 == numbers);
  CHECK(difference(text2, text) == "");
  CHECK(ar.consumed() == size);
  CHECK(ar.remaining() == kLimit - size);
  CHECK(ar.at_end());
  CHECK(r.total() == size);
  CHECK(r.error() == "");
  peer.join();
  CHECK(finished.ok());
}

TEST_CASE("archive: view() reads bytes in place from memory, and into the scratch buffer from a stream") {
  const std::string text = pattern(3 * kMiB + 17, 9);
  std::string bytes;
  {
    std::ostringstream out;
    {
      OutputArchive ar(out);
      ar(std::uint32_t{7}, cereal::binary_data(text.data(), text.size()));
    }
    bytes = out.str();
  }
  std::vector<std::byte> scratch(kMiB);
  auto read_all = [&](InputArchive& ar) {
    std::uint32_t seven = 0;
    ar(seven);
    CHECK(seven == 7);
    std::string back;
    std::vector<const std::byte*> where;
    for (std::size_t done = 0; done < text.size();) {
      const std::size_t n = std::min(kMiB, text.size() - done);
      const auto piece = ar.view(n, scratch);
      REQUIRE(piece.size() == n);
      where.push_back(piece.data());
      back.append(reinterpret_cast<const char*>(piece.data()), n);
      done += n;
    }
    CHECK(difference(back, text) == "");
    CHECK(ar.at_end());
    return where;
  };

  // In memory: the spans point into the bytes themselves, and nothing is copied to the scratch.
  {
    InputArchive ar(std::as_bytes(std::span<const char>(bytes)));
    const auto where = read_all(ar);
    REQUIRE(where.size() == 4);
    CHECK(where[0] == reinterpret_cast<const std::byte*>(bytes.data()) + 4);
    InputArchive again(std::as_bytes(std::span<const char>(bytes)));
    CHECK_THROWS_AS(again.view(bytes.size() + 1, scratch), hotrestart::ArchiveError);
  }
  // Streamed: each span is the scratch buffer; one larger than it is refused.
  Status finished = Error::message("not run");
  Peer peer([&](int fd) {
    StreamWriter w(fd, kLimit);
    {
      std::ostream out(&w);
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    finished = w.finish();
  });
  StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
  std::istream in(&r);
  InputArchive ar(in);
  for (const std::byte* p : read_all(ar))
    CHECK(p == scratch.data());
  CHECK_THROWS_AS(ar.view(kMiB + 1, scratch), std::length_error);
  peer.join();
  CHECK(finished.ok());
}

TEST_CASE("stream: InputArchive at_end is false while values remain, and throws the reader's error") {
  SUBCASE("two values, one loaded at a time") {
    const std::string b = cereal_bytes(std::uint32_t{7}, std::uint32_t{8});
    Peer peer(sends(data_chunk(b) + end_chunk(b.size())));
    StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
    std::istream in(&r);
    InputArchive ar(in);
    std::uint32_t x = 0;
    ar(x);
    CHECK(x == 7);
    CHECK_FALSE(ar.at_end());
    ar(x);
    CHECK(x == 8);
    CHECK(ar.at_end());
  }
  SUBCASE("a stream that fails at its first header") {
    Peer peer(sends(header(1, 5, 0, "HRSX") + "hello" + trailer("hello")));
    StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
    std::istream in(&r);
    InputArchive ar(in);
    CHECK_THROWS_WITH_AS(ar.at_end(), "corrupt: chunk after 0 bytes: bad magic", ArchiveError);
  }
  SUBCASE("a value whose chunk is followed by an abort is not loaded") {
    const std::string b = cereal_bytes(std::string("hello"));
    Peer peer(sends(data_chunk(b) + abort_chunk("boom")));
    StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
    std::istream in(&r);
    InputArchive ar(in);
    std::string s;
    CHECK_THROWS_WITH_AS(ar(s), "the previous generation's save failed: 'boom'", ArchiveError);
    CHECK(ar.consumed() == 0);
    CHECK_THROWS_WITH_AS(ar.at_end(), "the previous generation's save failed: 'boom'", ArchiveError);
  }
}

TEST_CASE("stream: InputArchive refuses a string whose count is far larger than what arrives") {
  // A count of 1 GiB, then only 100 bytes.
  const std::string b = u64_le(std::uint64_t{1} << 30) + pattern(100);
  SUBCASE("then a proper end: truncated, without sizing the string from the count") {
    Peer peer(sends(data_chunk(b) + end_chunk(b.size())));
    StreamReader r(peer.reader_fd(), seconds_away(), std::uint64_t{4} << 30);
    std::istream in(&r);
    InputArchive ar(in);
    CHECK(ar.remaining() == std::uint64_t{4} << 30);
    std::string s;
    CHECK_THROWS_WITH_AS(ar(s), "truncated: a field reaches past the end of the data", ArchiveError);
    CHECK(ar.consumed() == b.size());
    CHECK(s.capacity() < 2 * kMiB);
  }
  SUBCASE("a reader whose limit is below the count refuses it from the count alone") {
    Peer peer(sends(data_chunk(b) + end_chunk(b.size())));
    StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
    std::istream in(&r);
    InputArchive ar(in);
    std::string s;
    CHECK_THROWS_WITH_AS(ar(s), "corrupt: a count is larger than the data left", ArchiveError);
  }
  SUBCASE("then no end: the chunk never arrives, and the error is the reader's") {
    Peer peer(sends(data_chunk(b)));
    StreamReader r(peer.reader_fd(), seconds_away(), std::uint64_t{4} << 30);
    std::istream in(&r);
    InputArchive ar(in);
    std::string s;
    CHECK_THROWS_WITH_AS(ar(s), "truncated: the stream ended after 108 bytes, before its end chunk", ArchiveError);
    CHECK(ar.consumed() == 0);
  }
}

TEST_CASE("stream: the last data chunk is handed out only once the end chunk arrived") {
  SUBCASE("a valid chunk, then end of file: nothing is handed out") {
    for (std::size_t step : {std::size_t{1}, std::size_t{5}, 8 * kMiB}) {
      CAPTURE(step);
      Peer peer(sends(data_chunk("hello")));
      StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
      std::string buf(step, '\0');
      CHECK(r.sgetn(buf.data(), static_cast<std::streamsize>(step)) == 0);
      CHECK(r.error() == "truncated: the stream ended after 5 bytes, before its end chunk");
      CHECK(r.total() == 5);     // Received and checked,
      CHECK(r.consumed() == 0);  // but not handed out.
      CHECK(r.in_avail() == -1);
      CHECK_FALSE(r.at_end());
    }
  }
  SUBCASE("a valid chunk, then an abort: nothing is handed out") {
    Outcome o = read_crafted(data_chunk("hello") + abort_chunk("boom"), 5);
    CHECK(o.data == "");
    CHECK(o.error == "the previous generation's save failed: 'boom'");
    CHECK_FALSE(o.at_end);
  }
  SUBCASE("two valid chunks, then end of file: only the first is handed out") {
    check_refused(data_chunk("hello") + data_chunk("world"),
                  "truncated: the stream ended after 10 bytes, before its end chunk", "hello");
  }
  SUBCASE("a valid chunk, then the end: handed out") {
    Outcome o = read_crafted(data_chunk("hello") + end_chunk(5), 5);
    CHECK(o.data == "hello");
    CHECK(o.error == "");
    CHECK(o.at_end);
    CHECK(o.total == 5);
  }
}

TEST_CASE("stream: hostile and broken streams are refused with the reason") {
  const std::string hello = data_chunk("hello");

  SUBCASE("bad magic") {
    check_refused(header(1, 5, 0, "HRSX") + "hello" + trailer("hello"), "corrupt: chunk after 0 bytes: bad magic");
    check_refused(hello + header(2, 8, 0, "XRSK") + u64_le(5) + trailer(u64_le(5)),
                  "corrupt: chunk after 5 bytes: bad magic");
    check_refused(std::string("GET / HTTP/1.1\r\nHost: example\r\n\r\n"), "corrupt: chunk after 0 bytes: bad magic");
  }
  SUBCASE("header checksum mismatch") {
    std::string bad = hello;
    bad[8] ^= 1;  // The length, covered by the header checksum.
    check_refused(bad + end_chunk(5), "corrupt: chunk after 0 bytes: header checksum mismatch");
    bad = hello;
    bad[20] ^= 0x40;  // The checksum itself.
    check_refused(bad + end_chunk(5), "corrupt: chunk after 0 bytes: header checksum mismatch");
    bad = end_chunk(5);
    bad[5] ^= 1;  // The kind.
    check_refused(hello + bad, "corrupt: chunk after 5 bytes: header checksum mismatch");
  }
  SUBCASE("reserved field not 0") {
    check_refused(header(1, 5, 1) + "hello" + trailer("hello") + end_chunk(5),
                  "corrupt: chunk after 0 bytes: reserved field is not 0");
    check_refused(header(2, 8, 0x80000000U) + u64_le(0) + trailer(u64_le(0)),
                  "corrupt: chunk after 0 bytes: reserved field is not 0");
  }
  SUBCASE("unknown kind") {
    check_refused(chunk(4, "hello") + end_chunk(0), "corrupt: chunk after 0 bytes: unknown chunk kind 4");
    check_refused(chunk(0, "hello") + end_chunk(0), "corrupt: chunk after 0 bytes: unknown chunk kind 0");
    check_refused(hello + chunk(0xffffffffU, "x"), "corrupt: chunk after 5 bytes: unknown chunk kind 4294967295");
  }
  SUBCASE("a data chunk of 0 bytes, or over 4 MiB") {
    check_refused(data_chunk("") + end_chunk(0),
                  "corrupt: chunk after 0 bytes: data chunk of 0 bytes, not 1 to 4194304 bytes");
    // Refused from the header: the payload is never read.
    check_refused(header(1, 4 * 1024 * 1024 + 1),
                  "corrupt: chunk after 0 bytes: data chunk of 4194305 bytes, not 1 to 4194304 bytes");
    check_refused(hello + header(1, 0xffffffffU),
                  "corrupt: chunk after 5 bytes: data chunk of 4294967295 bytes, not 1 to 4194304 bytes");
  }
  SUBCASE("a data chunk of exactly 4 MiB is accepted") {
    const std::string p = pattern(4 * kMiB, 6);
    for (std::size_t step : {std::size_t{4096}, 8 * kMiB}) {
      Outcome o = read_crafted(data_chunk(p) + end_chunk(p.size()), step);
      CHECK(difference(o.data, p) == "");
      CHECK(o.error == "");
      CHECK(o.at_end);
    }
  }
  SUBCASE("payload checksum mismatch") {
    std::string bad = hello;
    bad[kChunkHeader + 2] ^= 0x01;  // 'l' becomes 'm'.
    check_refused(bad + end_chunk(5), "corrupt: the chunk after 0 bytes fails its checksum");
    bad = hello;
    bad.back() ^= 0x01;  // The trailer.
    check_refused(bad + end_chunk(5), "corrupt: the chunk after 0 bytes fails its checksum");
    // The chunk before the broken one is handed out: its successor's header was good.
    bad = hello;
    bad[kChunkHeader] ^= 0x20;
    check_refused(data_chunk("abc") + bad + end_chunk(8), "corrupt: the chunk after 3 bytes fails its checksum", "abc");
  }
  SUBCASE("end chunk: a wrong total, a wrong length, a bad checksum") {
    check_refused(hello + end_chunk(6), "corrupt: the end chunk states 6 bytes, but 5 bytes arrived");
    check_refused(hello + end_chunk(4), "corrupt: the end chunk states 4 bytes, but 5 bytes arrived");
    check_refused(end_chunk(1), "corrupt: the end chunk states 1 byte, but 0 bytes arrived");
    check_refused(hello + chunk(2, "abcd"), "corrupt: chunk after 5 bytes: end chunk of 4 bytes, not 8");
    std::string bad = end_chunk(5);
    bad[kChunkHeader] ^= 0x01;
    check_refused(hello + bad, "corrupt: chunk after 5 bytes: checksum mismatch");
  }
  SUBCASE("abort chunk") {
    check_refused(abort_chunk("boom"), "the previous generation's save failed: 'boom'");
    check_refused(hello + abort_chunk("boom"), "the previous generation's save failed: 'boom'");
    // The reason is quoted: a peer cannot forge log lines.
    check_refused(abort_chunk("it's\nbad"), "the previous generation's save failed: 'it\\x27s\\x0abad'");
    check_refused(abort_chunk(""), "corrupt: chunk after 0 bytes: abort chunk of 0 bytes, not 1 to 1024 bytes");
    check_refused(abort_chunk(std::string(1025, 'r')),
                  "corrupt: chunk after 0 bytes: abort chunk of 1025 bytes, not 1 to 1024 bytes");
    check_refused(abort_chunk(std::string(1024, 'r')),
                  "the previous generation's save failed: '" + std::string(64, 'r') + "...'");
    std::string bad = abort_chunk("boom");
    bad[kChunkHeader] ^= 0x01;
    check_refused(hello + bad, "corrupt: chunk after 5 bytes: checksum mismatch");
  }
  SUBCASE("end of file between chunks, before the end") {
    check_refused("", "truncated: the stream ended after 0 bytes, before its end chunk");
    check_refused(hello, "truncated: the stream ended after 5 bytes, before its end chunk");
    check_refused(data_chunk("x"), "truncated: the stream ended after 1 byte, before its end chunk");
  }
  SUBCASE("end of file inside a chunk") {
    check_refused(hello.substr(0, 10), "truncated: the stream ended inside a chunk, after 0 bytes");
    check_refused(hello.substr(0, kChunkHeader + 3), "truncated: the stream ended inside a chunk, after 0 bytes");
    check_refused(hello.substr(0, hello.size() - 1), "truncated: the stream ended inside a chunk, after 0 bytes");
    check_refused(hello + end_chunk(5).substr(0, 3), "truncated: the stream ended inside a chunk, after 5 bytes");
    check_refused(hello + end_chunk(5).substr(0, kChunkHeader + 4),
                  "truncated: the stream ended inside a chunk, after 5 bytes");
    check_refused(hello + abort_chunk("boom").substr(0, kChunkHeader + 4),
                  "truncated: the stream ended inside a chunk, after 5 bytes");
  }
  SUBCASE("larger than the reader's limit") {
    const std::string six = pattern(6);
    // The second chunk's header is refused, so the first is not handed out either.
    check_refused(data_chunk(six) + data_chunk(six) + end_chunk(12),
                  "the section is larger than this generation's limit of 10 bytes", "", 10);
    check_refused(data_chunk(pattern(11)) + end_chunk(11),
                  "the section is larger than this generation's limit of 10 bytes", "", 10);
    check_refused(data_chunk("xy") + end_chunk(2), "the section is larger than this generation's limit of 1 byte", "",
                  1);
    // Exactly the limit is fine.
    Outcome o = read_crafted(data_chunk(six) + data_chunk("1234") + end_chunk(10), 3, 10);
    CHECK(o.data == six + "1234");
    CHECK(o.error == "");
    CHECK(o.at_end);
  }
}

TEST_CASE("stream: an error is final") {
  std::string bad = data_chunk("xyz");
  bad.back() ^= 1;
  Peer peer(sends(data_chunk("abc") + bad + end_chunk(6)));
  StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
  char buf[16];
  CHECK(r.sgetn(buf, 2) == 2);
  CHECK(std::string(buf, 2) == "ab");
  CHECK(r.error() == "");
  // "abc" was handed out whole, since the header after it is good; "xyz" fails its checksum.
  CHECK(r.sgetn(buf, 16) == 1);
  CHECK(r.error() == "corrupt: the chunk after 3 bytes fails its checksum");
  CHECK(r.sgetn(buf, 16) == 0);
  CHECK(traits::eq_int_type(r.sbumpc(), traits::eof()));
  CHECK_FALSE(r.at_end());
  auto f = r.finish();
  REQUIRE_FALSE(f.ok());
  CHECK(f.error().text() == "corrupt: the chunk after 3 bytes fails its checksum");
  CHECK(r.error() == "corrupt: the chunk after 3 bytes fails its checksum");
}

TEST_CASE("stream: the reader's deadline bounds every wait") {
  using std::chrono::milliseconds;
  SUBCASE("a writer that sends nothing and keeps its end open") {
    Peer peer(sends("", true));
    const auto start = Clock::now();
    StreamReader r(peer.reader_fd(), start + milliseconds(200), kLimit);
    char c = 0;
    CHECK(r.sgetn(&c, 1) == 0);
    const auto waited = Clock::now() - start;
    CHECK(r.error() == "timed out waiting for the stream, after 0 bytes");
    CHECK(waited >= milliseconds(150));
    CHECK(waited < milliseconds(3000));
    CHECK_FALSE(r.at_end());
  }
  SUBCASE("a writer that stops after a chunk: the chunk is not handed out") {
    Peer peer(sends(data_chunk("hello"), true));
    StreamReader r(peer.reader_fd(), Clock::now() + milliseconds(200), kLimit);
    CHECK(read_all(r, 3) == "");
    CHECK(r.error() == "timed out waiting for the stream, after 5 bytes");
  }
  SUBCASE("a writer that stops inside a chunk") {
    Peer peer(sends(data_chunk("hello").substr(0, 30), true));
    StreamReader r(peer.reader_fd(), Clock::now() + milliseconds(200), kLimit);
    CHECK(read_all(r, 8 * kMiB) == "");
    CHECK(r.error() == "timed out waiting for the stream, after 0 bytes");
  }
  SUBCASE("at_end waits for the next header within the deadline too") {
    Peer peer(sends("", true));
    StreamReader r(peer.reader_fd(), Clock::now() + milliseconds(200), kLimit);
    CHECK_FALSE(r.at_end());
    CHECK(r.error() == "timed out waiting for the stream, after 0 bytes");
  }
}

TEST_CASE("stream: a writer that resets the stream") {
  // A socket closed with bytes it has not read resets its peer: the writer's end is closed while
  // the reader's own bytes sit unread in it.
  auto [a, b] = make_pair();
  REQUIRE(send_all(a.get(), data_chunk("hello")));
  REQUIRE(::send(b.get(), "x", 1, MSG_NOSIGNAL) == 1);
  a.reset();
  StreamReader r(b.get(), seconds_away(), kLimit);
  char buf[8];
  CHECK(r.sgetn(buf, 8) == 0);
  CHECK(r.error() == "truncated: the previous generation reset the stream");
}

TEST_CASE("stream: StreamWriter fails once the reader is gone") {
  SUBCASE("closed before anything was sent") {
    auto [a, b] = make_pair();
    b.reset();
    StreamWriter w(a.get(), kLimit);
    CHECK(w.sputn("hello", 5) == 5);  // Buffered: nothing is sent yet.
    CHECK(w.pubsync() == -1);
    CHECK(w.error() == "the next generation closed the stream");
    CHECK(w.sputn("more", 4) == 0);
    CHECK(traits::eq_int_type(w.sputc('x'), traits::eof()));
    const std::string big = pattern(3 * kMiB);
    CHECK(w.sputn(big.data(), static_cast<std::streamsize>(big.size())) == 0);
    auto f = w.finish();
    REQUIRE_FALSE(f.ok());
    CHECK(f.error().text() == "the next generation closed the stream");
    CHECK(w.error() == "the next generation closed the stream");
  }
  SUBCASE("a write larger than a chunk, straight from the caller's memory") {
    auto [a, b] = make_pair();
    b.reset();
    StreamWriter w(a.get(), kLimit);
    const std::string big = pattern(3 * kMiB);
    CHECK(w.sputn(big.data(), static_cast<std::streamsize>(big.size())) == 0);
    CHECK(w.error() == "the next generation closed the stream");
  }
  SUBCASE("closed in the middle of a section, with bytes unread") {
    std::string error;
    int writes = 0;
    auto ends = make_pair();
    std::thread writer([&, fd = ends.first.get()] {
      StreamWriter w(fd, std::uint64_t{1} << 40);
      const std::string block = pattern(kMiB);
      // The reader goes away long before 4 GiB would have been written.
      for (; writes < 4096; ++writes)
        if (w.sputn(block.data(), static_cast<std::streamsize>(block.size())) !=
            static_cast<std::streamsize>(block.size()))
          break;
      error = w.error();
    });
    {
      StreamReader r(ends.second.get(), seconds_away(), std::uint64_t{1} << 40);
      std::string buf(10, '\0');
      CHECK(r.sgetn(buf.data(), 10) == 10);
    }
    ends.second.reset();
    writer.join();
    CHECK(writes < 4096);
    CHECK(error == "the next generation closed the stream");
  }
}

TEST_CASE("stream: StreamWriter refuses a section larger than its limit") {
  SUBCASE("through sputn") {
    const std::string raw = wire_bytes(
        [](StreamWriter& w) {
          CHECK(w.sputn("0123456789", 10) == 10);
          CHECK(w.sputn("a", 1) == 0);
          CHECK(w.error() == "the section is larger than the limit of 10 bytes");
          CHECK(w.sputn("b", 1) == 0);
          auto f = w.finish();
          CHECK((f.ok() ? std::string("finished") : f.error().text()) ==
                "the section is larger than the limit of 10 bytes");
          w.abort("too large");  // Nothing more is sent after a failure.
        },
        10);
    CHECK(raw == "");
  }
  SUBCASE("one write over the limit sends nothing of it") {
    const std::string big = pattern(3 * kMiB);
    const std::string raw = wire_bytes(
        [&](StreamWriter& w) {
          CHECK(w.sputn(big.data(), static_cast<std::streamsize>(big.size())) == 0);
          CHECK(w.error() == "the section is larger than the limit of 2097152 bytes");
        },
        2 * kMiB);
    CHECK(raw == "");
  }
  SUBCASE("exactly the limit is fine") {
    const std::string p = pattern(2 * kMiB + 1);
    const std::string raw = wire_bytes(
        [&](StreamWriter& w) {
          CHECK(w.sputn(p.data(), static_cast<std::streamsize>(p.size())) == static_cast<std::streamsize>(p.size()));
          CHECK(w.error() == "");
          CHECK(w.finish().ok());
        },
        p.size());
    CHECK(difference(raw, data_chunk(p.substr(0, kMiB)) + data_chunk(p.substr(kMiB, kMiB)) +
                              data_chunk(p.substr(2 * kMiB)) + end_chunk(p.size())) == "");
  }
  SUBCASE("formatted output (libstdc++ writes it with sputn)") {
    const std::string raw = wire_bytes(
        [](StreamWriter& w) {
          std::ostream out(&w);
          out << 12345678901LL;  // 11 characters.
          CHECK_FALSE(out.good());
          CHECK(w.error() == "the section is larger than the limit of 10 bytes");
          CHECK_FALSE(w.finish().ok());
        },
        10);
    CHECK(raw == "");
  }
  SUBCASE("after a write that went out in whole chunks and reached the limit") {
    const std::string big(2 * kMiB + 1, 'z');
    const std::string raw = wire_bytes(
        [&](StreamWriter& w) {
          CHECK(w.sputn(big.data(), static_cast<std::streamsize>(big.size())) ==
                static_cast<std::streamsize>(big.size()));
          CHECK(traits::eq_int_type(w.sputc('x'), traits::eof()));
          CHECK(w.error() == "the section is larger than the limit of 2097153 bytes");
          CHECK_FALSE(w.finish().ok());
        },
        2 * kMiB + 1);
    // The two whole chunks went out before the limit was reached; no end chunk follows them.
    CHECK(raw.size() == 2 * (kChunkHeader + kMiB) + kChunkTrailer);
  }
  SUBCASE("after finish()") {
    const std::string raw = wire_bytes(
        [](StreamWriter& w) {
          CHECK(w.sputc('x') == 'x');
          CHECK(w.finish().ok());
          CHECK(traits::eq_int_type(w.sputc('y'), traits::eof()));
          CHECK(w.sputn("zz", 2) == 0);
          CHECK(w.bytes() == 1);
        },
        10);
    CHECK(raw ==
          encode_chunk(ChunkKind::Data, "x") + encode_chunk(ChunkKind::End, std::string("\x01\0\0\0\0\0\0\0", 8)));
  }
}

// sputc (which ostream::put and ostreambuf_iterator use) writes into the put area without a call,
// so the put area must end at the limit.
TEST_CASE("stream: StreamWriter refuses single-character writes past its limit, and any write after its end") {
  SUBCASE("sputc") {
    const std::string raw = wire_bytes(
        [](StreamWriter& w) {
          for (char c : std::string("0123456789"))
            CHECK(w.sputc(c) == c);
          CHECK(traits::eq_int_type(w.sputc('a'), traits::eof()));
          CHECK(w.error() == "the section is larger than the limit of 10 bytes");
          CHECK(w.bytes() == 10);
          CHECK_FALSE(w.finish().ok());
        },
        10);
    CHECK(raw == "");
  }
  SUBCASE("ostream::put") {
    const std::string raw = wire_bytes(
        [](StreamWriter& w) {
          std::ostream out(&w);
          for (char c : std::string("0123456789a"))
            out.put(c);
          CHECK_FALSE(out.good());
          CHECK(w.error() == "the section is larger than the limit of 10 bytes");
          CHECK_FALSE(w.finish().ok());
        },
        10);
    CHECK(raw == "");
  }
}

TEST_CASE("stream: the section-stream message") {
  const SectionStream m{"sessions", 3, 99};
  CHECK(type_name(Type::SectionStream) == "section-stream");
  CHECK(static_cast<std::uint16_t>(Type::SectionStream) == 71);
  CHECK(type_of(Message(m)) == Type::SectionStream);
  CHECK(fds_expected(Message(m)) == 1);

  auto datagram = encode(m);
  REQUIRE(datagram.ok());
  std::uint16_t version = 0, type = 0;
  std::uint32_t body_length = 0, fd_count = 0;
  std::memcpy(&version, datagram->data() + 4, 2);
  std::memcpy(&type, datagram->data() + 6, 2);
  std::memcpy(&body_length, datagram->data() + 8, 4);
  std::memcpy(&fd_count, datagram->data() + 12, 4);
  CHECK(version == 7);
  CHECK(version == kProtocolVersion);
  CHECK(type == 71);
  CHECK(fd_count == 1);
  // name (8-byte count + 8) + version 4 + sequence 8.
  CHECK(body_length == 16 + 4 + 8);
  CHECK(datagram->substr(kHeaderSize) == cereal_bytes(std::string("sessions"), std::uint32_t{3}, std::uint64_t{99}));

  auto decoded = decode(std::as_bytes(std::span<const char>(*datagram)));
  REQUIRE_MESSAGE(decoded.ok(), decoded.error().text());
  CHECK(decoded->message == Message(m));
  CHECK(decoded->fd_count == 1);
  CHECK(encode(decoded->message).value() == *datagram);

  auto bad_name = encode(SectionStream{"a b", 1, 1});
  REQUIRE_FALSE(bad_name.ok());
  CHECK(bad_name.error().text() == "section-stream: section name 'a b' is not valid");

  // Exactly one descriptor: a header announcing 0 or 2 is refused.
  for (std::uint32_t count : {0U, 2U}) {
    std::string bad = *datagram;
    std::memcpy(bad.data() + 12, &count, 4);
    const std::uint64_t sum = XXH3_64bits(bad.data(), 24);
    std::memcpy(bad.data() + 24, &sum, 8);
    auto refused = decode(std::as_bytes(std::span<const char>(bad)));
    REQUIRE_FALSE(refused.ok());
    CHECK(refused.error().text() == "section-stream: the header announces " + std::to_string(count) +
                                        " descriptors, which this type of message cannot carry");
  }
}

TEST_CASE("stream: with throw_on_error, a load reading records by hand sees a failed stream as an exception") {
  // Two whole chunks, then the exporter is gone: the first chunk's 100 bytes are handed out, and
  // the read that needs more throws instead of ending like a complete section of 10-byte records.
  const std::string bytes = data_chunk(std::string(100, 'A')) + data_chunk(std::string(100, 'B'));
  for (bool throwing : {false, true}) {
    CAPTURE(throwing);
    Peer peer(sends(bytes));
    StreamReader r(peer.reader_fd(), seconds_away(), kLimit);
    r.throw_on_error(throwing);
    std::istream in(&r);
    in.exceptions(std::ios_base::badbit);
    std::size_t records = 0;
    std::string thrown;
    try {
      char record[10];
      while (in.read(record, sizeof record))
        ++records;
    } catch (const StreamError& e) {
      thrown = e.what();
    }
    CHECK(records == 10);
    const std::string truncated = "truncated: the stream ended after 200 bytes, before its end chunk";
    CHECK(r.error() == truncated);
    CHECK(thrown == (throwing ? truncated : ""));
    // finish() reports the failure without throwing.
    auto left = r.finish();
    REQUIRE_FALSE(left.ok());
    CHECK(left.error().text() == truncated);
  }
}
