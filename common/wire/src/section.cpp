// Sections in sealed memfds: writing one while the checksum is computed, and checking one before
// anything reads it (see section.h).
#include <hotrestart/wire/bytes.h>
#include <hotrestart/wire/section.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xxh_x86dispatch.h>  // XXH3_64bits: run-time dispatch to AVX2 / AVX-512 (see stream.cpp).
#endif

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <ostream>
#include <utility>

namespace hotrestart::wire {

namespace {

// What the header's fields are at (docs/protocol.md, "Section format"); the name starts at 44.
constexpr std::size_t kOffHeaderLength = 8;
constexpr std::size_t kOffVersion = 12;
constexpr std::size_t kOffSequence = 16;
constexpr std::size_t kOffLength = 24;
constexpr std::size_t kOffChecksum = 32;
constexpr std::size_t kOffNameLength = 40;
constexpr std::size_t kOffName = 44;
constexpr unsigned kAllSeals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

std::string header_bytes(std::string_view name, std::uint32_t version, std::uint64_t sequence, std::uint64_t length,
                         std::uint64_t checksum) {
  std::string h(kSectionFixedHeader + name.size(), '\0');
  std::memcpy(h.data(), kSectionMagic, sizeof kSectionMagic);
  put<std::uint32_t>(h.data() + kOffHeaderLength, static_cast<std::uint32_t>(h.size()));
  put<std::uint32_t>(h.data() + kOffVersion, version);
  put<std::uint64_t>(h.data() + kOffSequence, sequence);
  put<std::uint64_t>(h.data() + kOffLength, length);
  put<std::uint64_t>(h.data() + kOffChecksum, checksum);
  put<std::uint32_t>(h.data() + kOffNameLength, static_cast<std::uint32_t>(name.size()));
  if (!name.empty()) std::memcpy(h.data() + kOffName, name.data(), name.size());
  std::size_t checked = kOffName + name.size();
  put<std::uint64_t>(h.data() + checked, XXH3_64bits(h.data(), checked));
  return h;
}

struct ParsedHeader {
  SectionHeader header;
  std::size_t header_length = 0;
};

// Every check of a section but the payload's checksum, which open_section() runs last, after the
// cheaper comparison with the offer.
Result<ParsedHeader> parse_header(std::span<const std::byte> whole, std::uint64_t max_bytes) {
  auto fail = [](const std::string& what) { return Error::message("section: " + what); };
  if (whole.size() < kSectionFixedHeader)
    return fail(std::to_string(whole.size()) + " bytes, shorter than a section header");
  const std::byte* h = whole.data();
  if (std::memcmp(h, kSectionMagic, sizeof kSectionMagic) != 0) return fail("bad magic");
  auto name_length = get<std::uint32_t>(h + kOffNameLength);
  if (name_length == 0 || name_length > kMaxNameLength)
    return fail("name length " + std::to_string(name_length) + " is not 1 to " + std::to_string(kMaxNameLength));
  std::size_t header_length = kSectionFixedHeader + name_length;
  if (whole.size() < header_length)
    return fail("the header with its name takes " + std::to_string(header_length) + " bytes, but there are only " +
                std::to_string(whole.size()));
  std::size_t checked = kOffName + name_length;
  if (get<std::uint64_t>(h + checked) != XXH3_64bits(h, checked)) return fail("header checksum mismatch");
  auto stated_length = get<std::uint32_t>(h + kOffHeaderLength);
  if (stated_length != header_length)
    return fail("header length " + std::to_string(stated_length) + " is not " + std::to_string(kSectionFixedHeader) +
                " + the name's " + std::to_string(name_length));

  ParsedHeader p;
  p.header_length = header_length;
  p.header.name.assign(reinterpret_cast<const char*>(h + kOffName), name_length);
  if (!valid_name(p.header.name)) return fail("name " + quote(p.header.name) + " is not valid");
  p.header.version = get<std::uint32_t>(h + kOffVersion);
  p.header.sequence = get<std::uint64_t>(h + kOffSequence);
  p.header.length = get<std::uint64_t>(h + kOffLength);
  p.header.checksum = get<std::uint64_t>(h + kOffChecksum);

  auto named = [&](const std::string& what) { return Error::message("section " + quote(p.header.name) + ": " + what); };
  std::size_t after_header = whole.size() - header_length;
  if (p.header.length != after_header)
    return named("the header gives a payload of " + std::to_string(p.header.length) + " bytes, but " +
                 std::to_string(after_header) + " bytes follow it");
  if (p.header.length > max_bytes)
    return named("the payload of " + std::to_string(p.header.length) + " bytes is over the limit of " +
                 std::to_string(max_bytes));
  return p;
}

Status check_payload(const SectionHeader& header, std::span<const std::byte> payload) {
  if (XXH3_64bits(payload.data(), payload.size()) != header.checksum)
    return Error::message("section " + quote(header.name) + ": payload checksum mismatch");
  return {};
}

// Thrown inside the stream when the exporter passes max_bytes or a write fails; write_section()
// reports it from the writer's own record, whatever the exporter did with the exception.
class StopWriting : public std::exception {
 public:
  const char* what() const noexcept override { return "the section could not take more bytes"; }
};

// The put area over a memfd: the exporter's bytes are copied into a buffer small enough to stay in
// the CPU's cache, hashed, and written with pwrite() after the space reserved for the header.
// A long write tops the buffer up and then goes to the file directly, in whole buffer-sized
// pieces. The put area never extends past max_bytes, so the common path (sputc, or an xsputn
// that fits) checks no limit.
class MemfdWriter : public std::streambuf {
 public:
  static constexpr std::size_t kBufferSize = 256 * 1024;

  MemfdWriter(int fd, std::uint64_t start, std::uint64_t max_bytes)
      : buffer_(new char[kBufferSize]), fd_(fd), offset_(start), max_(max_bytes), state_(XXH3_createState()) {
    if (state_ == nullptr) throw std::bad_alloc();
    XXH3_64bits_reset(state_.get());
    reset_put_area();
  }

  // Writes what the buffer still holds. False when a write failed or the limit was passed.
  bool finish() {
    if (failed()) return false;
    return flush_buffer();
  }
  bool over_limit() const { return over_limit_; }
  int write_errno() const { return write_errno_; }
  bool failed() const { return over_limit_ || write_errno_ != 0; }
  std::uint64_t length() const { return flushed_; }  // After finish().
  std::uint64_t checksum() const { return XXH3_64bits_digest(state_.get()); }

 protected:
  int_type overflow(int_type c) override {
    if (!flush_buffer()) throw StopWriting();
    if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
    if (pptr() == epptr()) refuse();  // The limit itself is reached.
    *pptr() = traits_type::to_char_type(c);
    pbump(1);
    return c;
  }

  std::streamsize xsputn(const char* s, std::streamsize count) override {
    if (count <= 0) return 0;
    auto n = static_cast<std::size_t>(count);
    auto room = static_cast<std::size_t>(epptr() - pptr());
    if (n <= room) {
      std::memcpy(pptr(), s, n);
      pbump(static_cast<int>(n));
      return count;
    }
    if (n > max_ - pending_total()) refuse();
    // Fill the buffer, so that the file is written in whole buffers, then go on.
    std::memcpy(pptr(), s, room);
    pbump(static_cast<int>(room));
    s += room;
    n -= room;
    if (!flush_buffer()) throw StopWriting();
    if (n >= kBufferSize) {
      std::size_t direct = n - n % kBufferSize;
      if (!write_out(s, direct)) throw StopWriting();
      s += direct;
      n -= direct;
      reset_put_area();
    }
    std::memcpy(pptr(), s, n);
    pbump(static_cast<int>(n));
    return count;
  }

  int sync() override {
    if (failed()) return -1;
    return flush_buffer() ? 0 : -1;
  }

 private:
  std::uint64_t pending_total() const { return flushed_ + static_cast<std::uint64_t>(pptr() - pbase()); }

  [[noreturn]] void refuse() {
    over_limit_ = true;
    throw StopWriting();
  }

  void reset_put_area() {
    std::size_t room = static_cast<std::size_t>(std::min<std::uint64_t>(kBufferSize, max_ - flushed_));
    setp(buffer_.get(), buffer_.get() + room);
  }

  bool flush_buffer() {
    auto n = static_cast<std::size_t>(pptr() - pbase());
    if (n > 0 && !write_out(pbase(), n)) return false;
    reset_put_area();
    return true;
  }

  // Hashes and writes bytes that are part of the payload, advancing the count of flushed bytes.
  // A long run goes in buffer-sized pieces, each written while the hash has just brought it
  // into the cache, so that the bytes are read from memory once rather than twice.
  bool write_out(const char* p, std::size_t n) {
    if (write_errno_ != 0) return false;
    while (n > 0) {
      std::size_t piece = std::min(n, kBufferSize);
      XXH3_64bits_update(state_.get(), p, piece);
      flushed_ += piece;
      n -= piece;
      while (piece > 0) {
        ssize_t w = ::pwrite(fd_, p, piece, static_cast<off_t>(offset_));
        if (w < 0) {
          if (errno == EINTR) continue;
          write_errno_ = errno;
          return false;
        }
        if (w == 0) {
          write_errno_ = ENOSPC;
          return false;
        }
        p += w;
        piece -= static_cast<std::size_t>(w);
        offset_ += static_cast<std::uint64_t>(w);
      }
    }
    return true;
  }

  struct FreeState {
    void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
  };

  std::unique_ptr<char[]> buffer_;
  int fd_;
  std::uint64_t offset_;       // Where the next pwrite goes in the file.
  std::uint64_t flushed_ = 0;  // Payload bytes hashed and written.
  std::uint64_t max_;
  std::unique_ptr<XXH3_state_t, FreeState> state_;
  bool over_limit_ = false;
  int write_errno_ = 0;
};

Status write_all_at(int fd, const std::string& bytes, off_t at) {
  const char* p = bytes.data();
  std::size_t n = bytes.size();
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, at);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return Error::from_errno("pwrite");
    if (w == 0) return Error::from_errno("pwrite", ENOSPC);
    p += w;
    n -= static_cast<std::size_t>(w);
    at += w;
  }
  return {};
}

}  // namespace

Result<WrittenSection> write_section(const std::string& name, std::uint32_t version, std::uint64_t sequence,
                                     const std::function<void(std::ostream&)>& save, std::uint64_t max_bytes) {
  const std::string where = "section " + quote(name);
  if (!valid_name(name)) return Error::message(where + ": the name is not valid");

  // The name shows in /proc/PID/fd, which helps whoever looks at a stuck transfer.
  const std::string memfd_name = "hotrestart-section:" + name;
  Fd memfd(::memfd_create(memfd_name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!memfd) return Error::from_errno(where + ": memfd_create");

  const std::size_t header_length = kSectionFixedHeader + name.size();
  std::uint64_t length = 0;
  std::uint64_t checksum = 0;
  try {
    MemfdWriter writer(memfd.get(), header_length, max_bytes);
    std::optional<std::string> save_failed;
    {
      std::ostream out(&writer);
      // A failed write then stops the exporter at once instead of letting it write into a dead stream.
      out.exceptions(std::ios_base::badbit);
      try {
        save(out);
        if (!writer.failed() && out.fail()) save_failed = "the output stream failed";
      } catch (const std::exception& e) {
        save_failed = e.what();
      } catch (...) {
        save_failed = "it threw an exception that is not a std::exception";
      }
    }
    if (writer.over_limit())
      return Error::message(where + ": the exporter wrote more than " + std::to_string(max_bytes) + " bytes");
    if (writer.write_errno() != 0) return Error::from_errno(where + ": pwrite to the memfd", writer.write_errno());
    if (save_failed) return Error::message(where + ": the exporter failed: " + *save_failed);
    if (!writer.finish()) {
      if (writer.write_errno() != 0) return Error::from_errno(where + ": pwrite to the memfd", writer.write_errno());
      return Error::message(where + ": the exporter wrote more than " + std::to_string(max_bytes) + " bytes");
    }
    length = writer.length();
    checksum = writer.checksum();
  } catch (const std::bad_alloc&) {
    return Error::message(where + ": out of memory");
  }

  auto header = header_bytes(name, version, sequence, length, checksum);
  if (auto s = write_all_at(memfd.get(), header, 0); !s) return s.error().context(where + ": the header");
  if (::fcntl(memfd.get(), F_ADD_SEALS, kAllSeals) != 0) return Error::from_errno(where + ": fcntl(F_ADD_SEALS)");

  WrittenSection written;
  written.memfd = std::move(memfd);
  written.offer = SectionOffer{name, version, sequence, length, checksum};
  return written;
}

MappedSection::MappedSection(MappedSection&& other) noexcept
    : map_(std::exchange(other.map_, nullptr)),
      map_size_(std::exchange(other.map_size_, 0)),
      header_(std::move(other.header_)),
      payload_(std::exchange(other.payload_, {})) {}

MappedSection& MappedSection::operator=(MappedSection&& other) noexcept {
  if (this != &other) {
    if (map_ != nullptr) ::munmap(map_, map_size_);
    map_ = std::exchange(other.map_, nullptr);
    map_size_ = std::exchange(other.map_size_, 0);
    header_ = std::move(other.header_);
    payload_ = std::exchange(other.payload_, {});
  }
  return *this;
}

MappedSection::~MappedSection() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

Result<MappedSection> open_section(Fd memfd, const SectionOffer& offer, std::uint64_t max_bytes) {
  const std::string where = "section " + quote(offer.name);
  auto fail = [&](const std::string& what) { return Error::message(where + ": " + what); };

  // Without these seals the exporter could change the bytes after they were checked.
  int seals = ::fcntl(memfd.get(), F_GET_SEALS);
  if (seals < 0) return Error::from_errno(where + ": fcntl(F_GET_SEALS)");
  auto missing = kAllSeals & ~static_cast<unsigned>(seals);
  if (missing != 0) {
    std::string names;
    for (auto [seal, seal_name] : {std::pair{F_SEAL_SEAL, "F_SEAL_SEAL"}, std::pair{F_SEAL_SHRINK, "F_SEAL_SHRINK"},
                                   std::pair{F_SEAL_GROW, "F_SEAL_GROW"}, std::pair{F_SEAL_WRITE, "F_SEAL_WRITE"}}) {
      if ((missing & static_cast<unsigned>(seal)) == 0) continue;
      names += names.empty() ? "" : ", ";
      names += seal_name;
    }
    return fail("the memfd is not sealed (missing " + names + ")");
  }

  if (offer.length > max_bytes)
    return fail("the offer's payload of " + std::to_string(offer.length) + " bytes is over the limit of " +
                std::to_string(max_bytes));
  std::uint64_t expected = 0;
  if (__builtin_add_overflow(kSectionFixedHeader + offer.name.size(), offer.length, &expected) ||
      expected > std::numeric_limits<std::size_t>::max())
    return fail("the offer's payload of " + std::to_string(offer.length) + " bytes cannot be mapped");
  struct stat st {};
  if (::fstat(memfd.get(), &st) != 0) return Error::from_errno(where + ": fstat");
  if (static_cast<std::uint64_t>(st.st_size) != expected)
    return fail("the memfd holds " + std::to_string(st.st_size) + " bytes, but the offer's header and payload make " +
                std::to_string(expected));

  auto size = static_cast<std::size_t>(expected);
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED | MAP_POPULATE, memfd.get(), 0);
  if (map == MAP_FAILED) return Error::from_errno(where + ": mmap");
  MappedSection section;
  section.map_ = map;
  section.map_size_ = size;
  std::span<const std::byte> whole(static_cast<const std::byte*>(map), size);

  auto parsed = parse_header(whole, max_bytes);
  if (!parsed) return parsed.error();
  const SectionHeader& h = parsed->header;
  auto mismatch = [&](const char* field, const std::string& offered, const std::string& found) {
    return fail("the offer says " + std::string(field) + " " + offered + " but the memfd holds " + found);
  };
  if (h.name != offer.name) return mismatch("name", quote(offer.name), quote(h.name));
  if (h.version != offer.version) return mismatch("version", std::to_string(offer.version), std::to_string(h.version));
  if (h.sequence != offer.sequence)
    return mismatch("sequence", std::to_string(offer.sequence), std::to_string(h.sequence));
  if (h.length != offer.length) return mismatch("length", std::to_string(offer.length), std::to_string(h.length));
  if (h.checksum != offer.checksum)
    return mismatch("checksum", std::to_string(offer.checksum), std::to_string(h.checksum));
  auto payload = whole.subspan(parsed->header_length);
  if (auto s = check_payload(h, payload); !s) return s.error();

  section.header_ = std::move(parsed->header);
  section.payload_ = payload;
  return section;
}

Result<SectionView> decode_section(std::span<const std::byte> whole, std::uint64_t max_bytes) {
  auto parsed = parse_header(whole, max_bytes);
  if (!parsed) return parsed.error();
  auto payload = whole.subspan(parsed->header_length);
  if (auto s = check_payload(parsed->header, payload); !s) return s.error();
  return SectionView{std::move(parsed->header), payload};
}

std::string encode_section(const std::string& name, std::uint32_t version, std::uint64_t sequence,
                           std::string_view payload) {
  // No check of the name: tests build bad sections with this.
  std::string whole =
      header_bytes(name, version, sequence, payload.size(), XXH3_64bits(payload.data(), payload.size()));
  whole.append(payload);
  return whole;
}

SpanStreamBuf::SpanStreamBuf(std::span<const std::byte> bytes) {
  // The get area is char* for historical reasons; nothing writes through it (there is no put
  // area, and putting back a different character fails).
  char* begin = const_cast<char*>(reinterpret_cast<const char*>(bytes.data()));
  setg(begin, begin, begin + bytes.size());
}

std::span<const std::byte> SpanStreamBuf::unread() const {
  return {reinterpret_cast<const std::byte*>(gptr()), static_cast<std::size_t>(egptr() - gptr())};
}

SpanStreamBuf::pos_type SpanStreamBuf::seekoff(off_type off, std::ios_base::seekdir dir,
                                               std::ios_base::openmode which) {
  const pos_type failed(off_type(-1));
  if ((which & std::ios_base::in) == 0 || (which & std::ios_base::out) != 0) return failed;
  off_type base = 0;
  if (dir == std::ios_base::cur)
    base = gptr() - eback();
  else if (dir == std::ios_base::end)
    base = egptr() - eback();
  else if (dir != std::ios_base::beg)
    return failed;
  off_type size = egptr() - eback();
  if ((off < 0 && off < -base) || (off > 0 && off > size - base)) return failed;
  off_type target = base + off;
  setg(eback(), eback() + target, egptr());
  return pos_type(target);
}

SpanStreamBuf::pos_type SpanStreamBuf::seekpos(pos_type pos, std::ios_base::openmode which) {
  return seekoff(off_type(pos), std::ios_base::beg, which);
}

}  // namespace hotrestart::wire
