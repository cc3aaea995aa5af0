// libFuzzer target: wire::decode on hostile datagrams. Whatever decodes must encode again to the
// very same bytes (the encoding is canonical) and decode to an equal message; whatever does not
// must be refused with an error that says something.
#include <xxhash.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include <hotrestart/wire/message.h>
#include "fuzz_common.h"

namespace {

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_message: %s: %s\n", what, detail.c_str());
  std::abort();
}

template <class T>
void put(std::string& s, std::size_t at, T value) {
  std::memcpy(s.data() + at, &value, sizeof value);
}

// Even mode: a frame with correct checksums around the given type, descriptor count and body.
std::string build_frame(const std::uint8_t* data, std::size_t size) {
  std::uint16_t type = 0;
  if (size < fuzz::kMessageFieldsHeader) return {};
  std::memcpy(&type, data, 2);
  std::uint32_t fds = data[2];
  std::string body(reinterpret_cast<const char*>(data) + fuzz::kMessageFieldsHeader, size - fuzz::kMessageFieldsHeader);
  std::string f(hotrestart::wire::kHeaderSize, '\0');
  std::memcpy(f.data(), "HRC1", 4);
  put<std::uint16_t>(f, 4, hotrestart::wire::kProtocolVersion);
  put<std::uint16_t>(f, 6, type);
  put<std::uint32_t>(f, 8, static_cast<std::uint32_t>(body.size()));
  put<std::uint32_t>(f, 12, fds);
  put<std::uint64_t>(f, 16, XXH3_64bits(body.data(), body.size()));
  put<std::uint64_t>(f, 24, XXH3_64bits(f.data(), 24));
  return f + body;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace hotrestart::wire;
  if (size == 0) return 0;
  std::string datagram = (data[0] & 1) != 0 ? std::string(reinterpret_cast<const char*>(data) + 1, size - 1)
                                            : build_frame(data + 1, size - 1);
  auto bytes = std::as_bytes(std::span<const char>(datagram));

  auto decoded = decode(bytes);
  auto frame = check_frame(bytes);
  if (!decoded) {
    if (decoded.error().text().empty()) fail("an error without a text", "");
    return 0;
  }
  if (!frame) fail("decode accepted what check_frame refused", frame.error().text());
  if (frame->fd_count != decoded->fd_count || decoded->fd_count != fds_expected(decoded->message))
    fail("descriptor counts disagree", std::to_string(decoded->fd_count));
  if (frame->type != type_of(decoded->message)) fail("types disagree", std::string(type_name(frame->type)));

  auto again = encode(decoded->message);
  if (!again) fail("a decoded message does not encode", again.error().text());
  if (*again != datagram) fail("encoding is not canonical", std::string(type_name(type_of(decoded->message))));
  auto twice = decode(std::as_bytes(std::span<const char>(*again)));
  if (!twice) fail("a re-encoded message does not decode", twice.error().text());
  if (!(twice->message == decoded->message)) fail("round trip changed the message", "");
  return 0;
}
