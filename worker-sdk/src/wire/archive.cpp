#include <hotrestart/archive.h>

#include <ios>
#include <streambuf>

#include "section.h"

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
  // Any other stream: its bytes are copied once, so that counts can be checked against the total.
  char chunk[64 * 1024];
  for (;;) {
    std::streamsize got = source_->sgetn(chunk, sizeof chunk);
    if (got <= 0) break;
    owned_.append(chunk, static_cast<std::size_t>(got));
  }
  data_ = std::as_bytes(std::span<const char>(owned_));
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
