// InputArchive: the cereal archive that never trusts a length it reads (see hotrestart/archive.h).
#include <hotrestart/archive.h>

#include <ios>
#include <streambuf>

#include <hotrestart/wire/section.h>
#include <hotrestart/wire/stream.h>

namespace hotrestart {

InputArchive::InputArchive(std::istream& in)
    : cereal::InputArchive<InputArchive, cereal::AllowEmptyClassElision>(this), source_(in.rdbuf()) {
  if (source_ == nullptr) throw ArchiveError("the stream has no buffer to read from");
  source_start_ = source_->pubseekoff(0, std::ios_base::cur, std::ios_base::in);
  if (auto* span = dynamic_cast<wire::SpanStreamBuf*>(source_)) {
    // The SDK's streams hold the whole section in memory: read it where it is.
    data_ = span->unread();
    return;
  }
  if (auto* streamed = dynamic_cast<wire::StreamReader*>(source_)) {
    // A streamed section: read as it arrives, bounded by the importer's limit.
    stream_ = streamed;
    stream_bound_ = static_cast<std::size_t>(streamed->max_bytes() - streamed->consumed());
    source_start_ = -1;
    return;
  }
  // Any other stream: its bytes are copied once, so that counts can be checked against the total.
  char chunk[64 * 1024];
  for (;;) {
    std::streamsize got = source_->sgetn(chunk, sizeof chunk);
    if (got <= 0) break;
    owned_.append(chunk, static_cast<std::size_t>(got));
  }
  data_ = std::as_bytes(std::span<const char>(owned_));
}

void InputArchive::read_stream(void* out, std::size_t size) {
  if (size == 0) return;
  auto* reader = static_cast<wire::StreamReader*>(stream_);
  std::streamsize got = 0;
  try {
    got = reader->sgetn(static_cast<char*>(out), static_cast<std::streamsize>(size));
  } catch (const wire::StreamError& e) {
    throw ArchiveError(e.what());
  }
  if (got > 0) offset_ += static_cast<std::size_t>(got);
  if (static_cast<std::size_t>(got) == size) return;
  if (!reader->error().empty()) throw ArchiveError(reader->error());
  throw ArchiveError("truncated: a field reaches past the end of the data");
}

bool InputArchive::stream_at_end() {
  auto* reader = static_cast<wire::StreamReader*>(stream_);
  if (reader->at_end()) return true;
  if (!reader->error().empty()) throw ArchiveError(reader->error());
  return false;
}

InputArchive::~InputArchive() noexcept {
  if (source_ == nullptr || source_start_ < 0) return;
  // A streambuf may throw from seekpos; a destructor must not let that out.
  try {
    source_->pubseekpos(source_start_ + static_cast<std::streamoff>(offset_), std::ios_base::in);
  } catch (...) {
  }
}

}  // namespace hotrestart
