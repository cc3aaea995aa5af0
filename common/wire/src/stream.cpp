// Streamed sections: the chunk writer and the reader that hands out only chunks known to be whole
// (see stream.h).
#include <hotrestart/wire/bytes.h>
#include <hotrestart/wire/message.h>
#include <hotrestart/wire/stream.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
// XXH3_64bits becomes libxxhash's run-time dispatch to its AVX2 or AVX-512 code where the CPU has
// it: the same values, 2.5x the rate of the baseline build on the machine of docs/benchmarks.md.
#include <xxh_x86dispatch.h>
#endif

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

namespace hotrestart::wire {

namespace {

constexpr std::size_t kOffKind = 4;
constexpr std::size_t kOffLength = 8;
constexpr std::size_t kOffReserved = 12;
constexpr std::size_t kOffHeaderChecksum = 16;
constexpr std::size_t kMaxAbortReason = 1024;

void fill_header(char* h, ChunkKind kind, std::size_t n) {
  std::memcpy(h, kChunkMagic, sizeof kChunkMagic);
  put<std::uint32_t>(h + kOffKind, static_cast<std::uint32_t>(kind));
  put<std::uint32_t>(h + kOffLength, static_cast<std::uint32_t>(n));
  put<std::uint32_t>(h + kOffReserved, 0);
  put<std::uint64_t>(h + kOffHeaderChecksum, XXH3_64bits(h, kOffHeaderChecksum));
}

std::string size_text(std::uint64_t n) {
  return std::to_string(n) + (n == 1 ? " byte" : " bytes");
}

}  // namespace

Result<std::pair<Fd, Fd>> stream_pair() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return Error::from_errno("socketpair");
  Fd a(fds[0]), b(fds[1]);
  // Larger buffers let the exporter run ahead of the importer by a few chunks; a refusal (a lower
  // net.core limit) only costs speed.
  for (int fd : fds) {
    (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &kStreamSocketBuffer, sizeof kStreamSocketBuffer);
    (void)::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &kStreamSocketBuffer, sizeof kStreamSocketBuffer);
  }
  return std::pair<Fd, Fd>(std::move(a), std::move(b));
}

std::string encode_chunk_header(ChunkKind kind, std::size_t length) {
  std::string h(kChunkHeader, '\0');
  fill_header(h.data(), kind, length);
  return h;
}

std::string encode_chunk(ChunkKind kind, std::string_view payload) {
  std::string c = encode_chunk_header(kind, payload.size());
  c.append(payload);
  char trailer[kChunkTrailer];
  put<std::uint64_t>(trailer, XXH3_64bits(payload.data(), payload.size()));
  c.append(trailer, sizeof trailer);
  return c;
}

// ---------------------------------------------------------------------------------------------
// StreamWriter

StreamWriter::StreamWriter(int sock, std::uint64_t max_bytes) : sock_(sock), max_bytes_(max_bytes) {
  buffer_.resize(kStreamChunk);
  reset_put_area();
}

// The put area never reaches past the limit, so that sputc() needs no check of its own: a byte
// past the limit lands in overflow(), which refuses it.
void StreamWriter::reset_put_area() {
  const auto room = static_cast<std::size_t>(std::min<std::uint64_t>(buffer_.size(), max_bytes_ - total_));
  setp(buffer_.data(), buffer_.data() + room);
}

bool StreamWriter::fail(std::string text) {
  if (error_.empty()) error_ = std::move(text);
  unsent_ += static_cast<std::uint64_t>(pptr() - pbase());
  setp(nullptr, nullptr);  // Every later write goes to overflow() or xsputn(), and fails.
  return false;
}

// One sendmsg: the previous chunk's trailer, this chunk's header and payload; with `last`, this
// chunk's trailer too. The payload is hashed after it was sent, while the kernel's copy has left
// it in the CPU's cache: hashing it first would read it from memory a second time.
bool StreamWriter::send_chunk(ChunkKind kind, const char* data, std::size_t n, bool last) {
  char header[kChunkHeader];
  fill_header(header, kind, n);
  char trailer[kChunkTrailer];
  iovec iov[4];
  int count = 0;
  if (trailer_pending_) iov[count++] = {trailer_, sizeof trailer_};
  iov[count++] = {header, sizeof header};
  if (n > 0) iov[count++] = {const_cast<char*>(data), n};
  if (last) {
    put<std::uint64_t>(trailer, XXH3_64bits(data, n));
    iov[count++] = {trailer, sizeof trailer};
  }
  if (!send_all(iov, count)) return false;
  trailer_pending_ = !last;
  if (!last) put<std::uint64_t>(trailer_, XXH3_64bits(data, n));
  return true;
}

bool StreamWriter::send_all(iovec* at, int count) {
  while (count > 0) {
    msghdr msg{};
    msg.msg_iov = at;
    msg.msg_iovlen = static_cast<std::size_t>(count);
    ssize_t sent = ::sendmsg(sock_, &msg, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      return fail(err == EPIPE || err == ECONNRESET ? "the next generation closed the stream"
                                                    : std::string("send: ") + std::strerror(err));
    }
    auto left = static_cast<std::size_t>(sent);
    while (count > 0 && left >= at->iov_len) {
      left -= at->iov_len;
      ++at;
      --count;
    }
    if (count > 0) {
      at->iov_base = static_cast<char*>(at->iov_base) + left;
      at->iov_len -= left;
    }
  }
  return true;
}

bool StreamWriter::flush_buffer() {
  if (!error_.empty() || ended_) return false;
  const auto n = static_cast<std::size_t>(pptr() - pbase());
  if (n == 0) return true;
  if (!send_chunk(ChunkKind::Data, pbase(), n)) return false;
  total_ += n;
  reset_put_area();
  return true;
}

StreamWriter::int_type StreamWriter::overflow(int_type c) {
  if (!error_.empty() || ended_) return traits_type::eof();
  if (traits_type::eq_int_type(c, traits_type::eof())) return flush_buffer() ? traits_type::not_eof(c) : c;
  if (bytes() + 1 > max_bytes_) {
    fail("the section is larger than the limit of " + size_text(max_bytes_));
    return traits_type::eof();
  }
  if (!flush_buffer()) return traits_type::eof();
  *pptr() = traits_type::to_char_type(c);
  pbump(1);
  return c;
}

std::streamsize StreamWriter::xsputn(const char* s, std::streamsize count) {
  if (!error_.empty() || ended_ || count <= 0) return 0;
  auto n = static_cast<std::size_t>(count);
  if (bytes() + n > max_bytes_ || bytes() + n < bytes()) {
    fail("the section is larger than the limit of " + size_text(max_bytes_));
    return 0;
  }
  std::size_t done = 0;
  // Fill the buffer up to a whole chunk first.
  const auto room = static_cast<std::size_t>(epptr() - pptr());
  if (n < room || pptr() != pbase()) {
    const std::size_t take = std::min(n, room);
    std::memcpy(pptr(), s, take);
    pbump(static_cast<int>(take));
    done = take;
    if (done == n) return count;
    if (!flush_buffer()) return 0;
  }
  // Whole chunks straight from the caller's memory; the tail into the buffer.
  while (n - done >= kStreamChunk) {
    if (!send_chunk(ChunkKind::Data, s + done, kStreamChunk)) return static_cast<std::streamsize>(done);
    total_ += kStreamChunk;
    done += kStreamChunk;
  }
  reset_put_area();  // The put area ends at the limit, which the chunks sent above moved.
  const std::size_t tail = n - done;
  std::memcpy(pptr(), s + done, tail);
  pbump(static_cast<int>(tail));
  return count;
}

int StreamWriter::sync() {
  return flush_buffer() ? 0 : -1;
}

Status StreamWriter::finish() {
  if (ended_) return Error::message("the stream was already ended");
  if (!flush_buffer()) return Error::message(error_);
  ended_ = true;
  setp(nullptr, nullptr);  // A write after the end fails (overflow() sees ended_).
  char total[8];
  put<std::uint64_t>(total, total_);
  if (!send_chunk(ChunkKind::End, total, sizeof total, true)) return Error::message(error_);
  return {};
}

void StreamWriter::abort(std::string_view reason) {
  if (ended_) return;
  ended_ = true;
  if (reason.empty()) reason = "no reason given";
  reason = reason.substr(0, kMaxAbortReason);
  // Whatever is buffered was never sent: the importer discards the section anyway.
  const bool had_error = !error_.empty();
  setp(nullptr, nullptr);
  if (!had_error) (void)send_chunk(ChunkKind::Abort, reason.data(), reason.size(), true);
}

// ---------------------------------------------------------------------------------------------
// StreamReader

StreamReader::StreamReader(int sock, Clock::time_point deadline, std::uint64_t max_bytes)
    : sock_(sock), deadline_(deadline), max_bytes_(max_bytes) {
  const int flags = ::fcntl(sock_, F_GETFL);
  if (flags >= 0) (void)::fcntl(sock_, F_SETFL, flags | O_NONBLOCK);
  setg(nullptr, nullptr, nullptr);
}

bool StreamReader::fail(std::string text) {
  if (error_.empty()) error_ = std::move(text);
  return false;
}

// Reads exactly n bytes before the deadline. End of file before the first byte is reported as
// such only when `eof_ok_at_start` (between chunks); anywhere else it is a truncation.
bool StreamReader::read_exact(char* p, std::size_t n, bool eof_ok_at_start) {
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::recv(sock_, p + got, n - got, 0);
    if (r > 0) {
      got += static_cast<std::size_t>(r);
      continue;
    }
    if (r == 0) {
      if (got == 0 && eof_ok_at_start)
        return fail("truncated: the stream ended after " + size_text(received_) + ", before its end chunk");
      return fail("truncated: the stream ended inside a chunk, after " + size_text(received_));
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      const int err = errno;
      if (err == ECONNRESET) return fail("truncated: the previous generation reset the stream");
      return fail(std::string("recv: ") + std::strerror(err));
    }
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now()).count();
    if (left <= 0) return fail("timed out waiting for the stream, after " + size_text(received_));
    pollfd pfd{sock_, POLLIN, 0};
    int ready = ::poll(&pfd, 1, static_cast<int>(std::min<long long>(left, 1'000'000)));
    if (ready < 0 && errno != EINTR) return fail(std::string("poll: ") + std::strerror(errno));
  }
  return true;
}

bool StreamReader::have_next() {
  if (next_read_) return true;
  if (!error_.empty() || ended_) return false;
  char h[kChunkHeader];
  if (!read_exact(h, sizeof h, true)) return false;
  const auto* b = reinterpret_cast<const std::byte*>(h);
  const std::string where = "chunk after " + size_text(received_) + ": ";
  if (std::memcmp(h, kChunkMagic, sizeof kChunkMagic) != 0) return fail("corrupt: " + where + "bad magic");
  if (get<std::uint64_t>(b + kOffHeaderChecksum) != XXH3_64bits(h, kOffHeaderChecksum))
    return fail("corrupt: " + where + "header checksum mismatch");
  const auto kind = get<std::uint32_t>(b + kOffKind);
  const auto length = get<std::uint32_t>(b + kOffLength);
  if (get<std::uint32_t>(b + kOffReserved) != 0) return fail("corrupt: " + where + "reserved field is not 0");
  Header next{static_cast<ChunkKind>(kind), length};
  switch (next.kind) {
    case ChunkKind::Data:
      if (length == 0 || length > kMaxStreamChunk)
        return fail("corrupt: " + where + "data chunk of " + size_text(length) + ", not 1 to " +
                    size_text(kMaxStreamChunk));
      if (length > max_bytes_ - received_)
        return fail("the section is larger than this generation's limit of " + size_text(max_bytes_));
      break;
    case ChunkKind::End: {
      if (length != 8) return fail("corrupt: " + where + "end chunk of " + size_text(length) + ", not 8");
      char total[8 + kChunkTrailer];
      if (!read_exact(total, sizeof total, false)) return false;
      if (XXH3_64bits(total, 8) != get<std::uint64_t>(reinterpret_cast<const std::byte*>(total + 8)))
        return fail("corrupt: " + where + "checksum mismatch");
      const auto stated = get<std::uint64_t>(reinterpret_cast<const std::byte*>(total));
      if (stated != received_)
        return fail("corrupt: the end chunk states " + size_text(stated) + ", but " + size_text(received_) +
                    " arrived");
      break;
    }
    case ChunkKind::Abort: {
      if (length == 0 || length > kMaxAbortReason)
        return fail("corrupt: " + where + "abort chunk of " + size_text(length) + ", not 1 to " +
                    size_text(kMaxAbortReason));
      std::string reason(length + kChunkTrailer, '\0');
      if (!read_exact(reason.data(), reason.size(), false)) return false;
      if (XXH3_64bits(reason.data(), length) !=
          get<std::uint64_t>(reinterpret_cast<const std::byte*>(reason.data() + length)))
        return fail("corrupt: " + where + "checksum mismatch");
      reason.resize(length);
      return fail("the previous generation's save failed: " + quote(reason));
    }
    default:
      return fail("corrupt: " + where + "unknown chunk kind " + std::to_string(kind));
  }
  next_ = next;
  next_read_ = true;
  return true;
}

bool StreamReader::take_data(char* dest) {
  const std::size_t n = next_.length;
  char trailer[kChunkTrailer];
  if (!read_exact(dest, n, false) || !read_exact(trailer, sizeof trailer, false)) return false;
  if (XXH3_64bits(dest, n) != get<std::uint64_t>(reinterpret_cast<const std::byte*>(trailer)))
    return fail("corrupt: the chunk after " + size_text(received_) + " fails its checksum");
  received_ += n;
  next_read_ = false;
  // The chunk goes out only once the one after it is known to be good (or the intact end).
  return have_next();
}

StreamReader::int_type StreamReader::end_of_data() {
  if (throws_ && !error_.empty()) throw StreamError(error_);
  return traits_type::eof();
}

StreamReader::int_type StreamReader::underflow() {
  if (gptr() < egptr()) return traits_type::to_int_type(*gptr());
  if (!have_next()) return end_of_data();
  if (next_.kind == ChunkKind::End) {
    ended_ = true;
    next_read_ = false;
    return traits_type::eof();
  }
  buffer_.resize(next_.length);
  const std::size_t n = next_.length;
  if (!take_data(buffer_.data())) {
    setg(nullptr, nullptr, nullptr);
    return end_of_data();
  }
  handed_out_ += n;
  setg(buffer_.data(), buffer_.data(), buffer_.data() + n);
  return traits_type::to_int_type(*gptr());
}

std::streamsize StreamReader::xsgetn(char* s, std::streamsize count) {
  if (count <= 0) return 0;
  const auto n = static_cast<std::size_t>(count);
  std::size_t done = 0;
  while (done < n) {
    if (gptr() < egptr()) {
      const std::size_t take = std::min(n - done, static_cast<std::size_t>(egptr() - gptr()));
      std::memcpy(s + done, gptr(), take);
      gbump(static_cast<int>(take));
      done += take;
      continue;
    }
    if (!have_next()) {
      (void)end_of_data();
      break;
    }
    if (next_.kind == ChunkKind::Data && n - done >= next_.length) {
      // The caller wants the whole chunk: it goes straight into the caller's memory (which holds
      // unchecked bytes if the check then fails).
      const std::size_t len = next_.length;
      if (!take_data(s + done)) {
        (void)end_of_data();
        break;
      }
      handed_out_ += len;
      done += len;
      continue;
    }
    if (traits_type::eq_int_type(underflow(), traits_type::eof())) break;
  }
  return static_cast<std::streamsize>(done);
}

std::streamsize StreamReader::showmanyc() {
  if (gptr() < egptr()) return egptr() - gptr();
  return ended_ || !error_.empty() ? -1 : 0;
}

bool StreamReader::at_end() {
  if (gptr() < egptr()) return false;
  if (ended_) return true;
  if (!have_next()) return false;
  if (next_.kind != ChunkKind::End) return false;
  ended_ = true;
  next_read_ = false;
  return true;
}

Result<std::uint64_t> StreamReader::finish() {
  throws_ = false;
  std::uint64_t left = 0;
  while (!at_end()) {
    if (!error_.empty()) return Error::message(error_);
    left += static_cast<std::uint64_t>(egptr() - gptr());
    setg(nullptr, nullptr, nullptr);
    if (traits_type::eq_int_type(underflow(), traits_type::eof()) && !ended_)
      return Error::message(error_.empty() ? "the stream ended early" : error_);
  }
  return left;
}

}  // namespace hotrestart::wire
