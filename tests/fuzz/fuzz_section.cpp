// libFuzzer target: wire::decode_section on hostile sections, and hotrestart::InputArchive on
// hostile payloads. A section that decodes must be exactly what encode_section makes of its
// fields; a payload that loads must save back to the bytes the archive consumed.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <istream>
#include <span>
#include <sstream>
#include <string>

#include <hotrestart/archive.h>

#include <hotrestart/wire/section.h>
#include "fuzz_common.h"

namespace {

constexpr std::uint64_t kMaxBytes = 1 << 20;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_section: %s: %s\n", what, detail.c_str());
  std::abort();
}

// Loads a State from the payload both ways an importer can (over the bytes, and over the SDK's
// stream), and checks that a successful load is canonical.
void load_payload(std::span<const std::byte> payload) {
  fuzz::State state;
  std::size_t consumed = 0;
  bool loaded = false;
  try {
    hotrestart::InputArchive ar(payload);
    ar(state);
    consumed = ar.consumed();
    loaded = true;
  } catch (const hotrestart::ArchiveError&) {
  }

  hotrestart::wire::SpanStreamBuf buf(payload);
  std::istream in(&buf);
  fuzz::State from_stream;
  bool stream_loaded = false;
  try {
    hotrestart::InputArchive ar(in);
    ar(from_stream);
    stream_loaded = true;
  } catch (const hotrestart::ArchiveError&) {
  }
  if (loaded != stream_loaded) fail("span and stream loads disagree", "");
  if (!loaded) return;
  if (!(state == from_stream)) fail("span and stream loaded different values", "");
  if (static_cast<std::size_t>(in.tellg()) != consumed) fail("the stream was not left after the consumed bytes", "");

  std::ostringstream out;
  {
    hotrestart::OutputArchive ar(out);
    ar(state);
  }
  std::string saved = std::move(out).str();
  if (saved.size() != consumed || std::memcmp(saved.data(), payload.data(), consumed) != 0)
    fail("a loaded payload does not save to the same bytes", std::to_string(consumed));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace hotrestart::wire;
  if (size == 0) return 0;
  std::string whole;
  bool built = (data[0] & 1) == 0;
  std::string name;
  if (!built) {
    whole.assign(reinterpret_cast<const char*>(data) + 1, size - 1);
  } else {
    const std::uint8_t* p = data + 1;
    std::size_t left = size - 1;
    if (left < fuzz::kSectionFieldsHeader) return 0;
    std::uint32_t version = 0;
    std::uint64_t sequence = 0;
    std::memcpy(&version, p, 4);
    std::memcpy(&sequence, p + 4, 8);
    std::size_t name_length = std::min<std::size_t>(p[12], left - fuzz::kSectionFieldsHeader);
    name.assign(reinterpret_cast<const char*>(p) + fuzz::kSectionFieldsHeader, name_length);
    std::string_view payload(reinterpret_cast<const char*>(p) + fuzz::kSectionFieldsHeader + name_length,
                             left - fuzz::kSectionFieldsHeader - name_length);
    whole = encode_section(name, version, sequence, payload);
  }

  auto view = decode_section(std::as_bytes(std::span<const char>(whole)), kMaxBytes);
  if (!view) {
    if (view.error().text().empty()) fail("an error without a text", "");
    // A section built from its fields fails only for its name or its size.
    if (built && valid_name(name) && whole.size() - kSectionFixedHeader - name.size() <= kMaxBytes)
      fail("a well-formed section was refused", view.error().text());
    return 0;
  }
  const SectionHeader& h = view->header;
  std::string payload(reinterpret_cast<const char*>(view->payload.data()), view->payload.size());
  if (encode_section(h.name, h.version, h.sequence, payload) != whole)
    fail("decode_section accepted a non-canonical section", h.name);
  load_payload(view->payload);
  return 0;
}
