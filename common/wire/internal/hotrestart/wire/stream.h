// Streamed state sections: see docs/protocol.md, "Streamed sections".
//
// A section whose Section::stream is set goes from the old generation to the new one over a
// SOCK_STREAM socketpair of its own, while the exporter's `save` writes and the importer's `load`
// reads, instead of through a memfd written whole first. The bytes travel in chunks, each a
// checksummed header, the payload and the payload's XXH3-64, and the stream ends with an `end`
// chunk that states the total (or an `abort` chunk with the exporter's reason).
//
// StreamReader hands a chunk's bytes out only after that chunk's checksum matched and the header of
// the chunk after it was read and checked: so the last bytes of a section are seen only once its
// end arrived, and a load that reads to the end never accepts a truncated or aborted section.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <streambuf>
#include <string>
#include <string_view>
#include <vector>

#include <hotrestart/fd.h>

#include <hotrestart/base/result.h>

namespace hotrestart::wire {

inline constexpr char kChunkMagic[4] = {'H', 'R', 'S', 'K'};
inline constexpr std::size_t kChunkHeader = 24;
inline constexpr std::size_t kChunkTrailer = 8;                       // The XXH3-64 of the chunk's payload.
inline constexpr std::size_t kStreamChunk = std::size_t{1} << 20;     // What the writer sends at a time.
inline constexpr std::size_t kMaxStreamChunk = std::size_t{4} << 20;  // What the reader accepts.
inline constexpr int kStreamSocketBuffer = 4 << 20;                   // SO_SNDBUF / SO_RCVBUF.

enum class ChunkKind : std::uint32_t { Data = 1, End = 2, Abort = 3 };

// A connected SOCK_STREAM pair, both ends close-on-exec, with kStreamSocketBuffer buffers (as far
// as the system allows).
Result<std::pair<Fd, Fd>> stream_pair();

// The exporter's side: a std::streambuf that sends what `save` writes as data chunks on a blocking
// socket. A write larger than a chunk goes out from the caller's memory, without a copy into the
// buffer. After the first failure (the peer is gone, or more than `max_bytes`) every write fails
// and error() says why.
class StreamWriter : public std::streambuf {
 public:
  StreamWriter(int sock, std::uint64_t max_bytes);
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  // Sends what is buffered, then the end chunk.
  Status finish();
  // Sends an abort chunk with `reason` (cut to 1,024 bytes) instead of the end. Best effort.
  void abort(std::string_view reason);
  // The bytes `save` wrote that were accepted: sent, or buffered when the stream failed.
  std::uint64_t bytes() const { return total_ + unsent_ + static_cast<std::uint64_t>(pptr() - pbase()); }
  const std::string& error() const { return error_; }

 protected:
  int_type overflow(int_type c) override;
  std::streamsize xsputn(const char* s, std::streamsize n) override;
  int sync() override;

 private:
  bool flush_buffer();
  void reset_put_area();
  bool send_chunk(ChunkKind kind, const char* data, std::size_t n, bool last = false);
  bool send_all(iovec* iov, int count);
  bool fail(std::string text);

  int sock_;
  std::uint64_t max_bytes_;
  std::uint64_t total_ = 0;   // Data bytes sent.
  std::uint64_t unsent_ = 0;  // Bytes buffered when the stream failed.
  std::vector<char> buffer_;
  std::string error_;
  bool ended_ = false;
  bool trailer_pending_ = false;  // The last data chunk's trailer, which goes with the next chunk.
  char trailer_[kChunkTrailer] = {};
};

// What a StreamReader throws, once throw_on_error() is set, when the stream failed.
class StreamError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The importer's side: a std::streambuf over the socket (made non-blocking; every wait is bounded by
// `deadline`). A read past what arrived intact returns end of file, and error() says why
// (empty when the stream simply ended). With throw_on_error(true), a read that meets a failed
// stream throws StreamError instead, so that an istream with exceptions(badbit) (the SDK gives
// `load` one) reports it rather than showing a clean end of file.
class StreamReader : public std::streambuf {
 public:
  using Clock = std::chrono::steady_clock;
  StreamReader(int sock, Clock::time_point deadline, std::uint64_t max_bytes);
  StreamReader(const StreamReader&) = delete;
  StreamReader& operator=(const StreamReader&) = delete;

  void throw_on_error(bool on) { throws_ = on; }
  // True once every byte was handed out and the end chunk was checked; false otherwise, also on
  // an error (error() then says which). May wait for the next chunk's header.
  bool at_end();
  // Reads and discards what `load` left, to the end chunk. Returns the bytes left, or the error.
  Result<std::uint64_t> finish();
  std::uint64_t consumed() const { return handed_out_ - static_cast<std::uint64_t>(egptr() - gptr()); }
  std::uint64_t max_bytes() const { return max_bytes_; }
  std::uint64_t total() const { return received_; }  // Data bytes received and checked so far.
  bool ended() const { return ended_; }
  const std::string& error() const { return error_; }

 protected:
  int_type underflow() override;
  std::streamsize xsgetn(char* s, std::streamsize n) override;
  std::streamsize showmanyc() override;

 private:
  struct Header {
    ChunkKind kind = ChunkKind::Data;
    std::uint32_t length = 0;
  };
  bool read_exact(char* p, std::size_t n, bool eof_ok_at_start);
  bool fail(std::string text);
  bool have_next();            // Reads and checks the next header (and an end's or abort's payload).
  bool take_data(char* dest);  // Reads the pending data chunk into dest, checks it, reads the next header.
  int_type end_of_data();      // EOF, or (throws_ and a failed stream) StreamError.

  int sock_;
  Clock::time_point deadline_;
  std::uint64_t max_bytes_;
  std::uint64_t received_ = 0;    // Data bytes received and checked.
  std::uint64_t handed_out_ = 0;  // Data bytes put in the get area or copied to a caller.
  std::vector<char> buffer_;
  Header next_;
  bool next_read_ = false;
  bool ended_ = false;
  bool throws_ = false;
  std::string error_;
};

// A chunk's header (24 bytes: magic, kind, length, reserved 0, the XXH3-64 of those 16 bytes), and
// a whole chunk (header, payload, the payload's XXH3-64), for tests and the fuzzer.
std::string encode_chunk_header(ChunkKind kind, std::size_t length);
std::string encode_chunk(ChunkKind kind, std::string_view payload);

}  // namespace hotrestart::wire
