// Writes the fuzzers' seed corpora: a few valid messages, sections and streams, in both input modes
// (see fuzz_common.h). Usage: fuzz-seeds MESSAGE_DIR SECTION_DIR STREAM_DIR
#include <cereal/archives/binary.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <hotrestart/archive.h>

#include <hotrestart/wire/message.h>
#include <hotrestart/wire/section.h>
#include <hotrestart/wire/stream.h>
#include "fuzz_common.h"

using namespace hotrestart::wire;

namespace {

bool write(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return static_cast<bool>(out);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: fuzz-seeds MESSAGE_DIR SECTION_DIR STREAM_DIR\n");
    return 2;
  }
  const std::string messages_dir = argv[1];
  const std::string sections_dir = argv[2];
  const std::string streams_dir = argv[3];
  std::vector<SectionVersions> plan{{"sessions", {2, 1}}, {"cache", {1}}};
  std::vector<Message> messages{
      Hello{1, 1, 42, "sdk 0.1", plan, {{"sessions", {2}}}, false, {{"app", 3}}},
      Ready{},
      StatusLine{"serving"},
      SectionImported{{"sessions", true, 2, 100, 5, ""}},
      ImportFinished{{2, 1, 100, 9}},
      SectionExported{{"cache", false, 0, 0, 1, "no common version"}},
      ExportFinished{{2, 2, 10, 1}},
      Welcome{1, 3, 2},
      Refuse{"no"},
      Listeners{{"http", "admin"}},
      BeginImport{2, plan, ""},
      BeginImport{0, {}, "cold start"},
      BeginExport{3, plan},
      Drain{},
      Stop{},
      SectionOffer{"sessions", 2, 7, 1000, 12345},
      SectionUnavailable{"cache", "exporter failed"},
      Fds{{"conn:1"}},
      SnapshotEnd{},
      Delta{"sessions", 2, 8, "put k v"},
      DeltaMemfd{{"sessions", 2, 9, 70000, 99}},
      SectionStream{"sessions", 2, 11},
      SnapshotCovers{"sessions", 12},
  };
  int n = 0;
  for (const auto& m : messages) {
    auto datagram = encode(m);
    if (!datagram) {
      std::fprintf(stderr, "fuzz-seeds: %s\n", datagram.error().text().c_str());
      return 1;
    }
    // Odd mode: the datagram as is. Even mode: type, descriptor count, body.
    std::string fields(fuzz::kMessageFieldsHeader, '\0');
    auto type = static_cast<std::uint16_t>(type_of(m));
    fields[0] = static_cast<char>(type & 0xff);
    fields[1] = static_cast<char>(type >> 8);
    fields[2] = static_cast<char>(fds_expected(m));
    fields += datagram->substr(kHeaderSize);
    if (!write(messages_dir + "/seed-" + std::to_string(n) + "-raw", "\x01" + *datagram) ||
        !write(messages_dir + "/seed-" + std::to_string(n) + "-fields", std::string(1, '\0') + fields))
      return 1;
    ++n;
  }

  fuzz::State state{{{"k1", "v1"}, {"k2", std::string(40, 'v')}}, {1, 2, 3}, {true, false}, {{"a"}, {}}, "end"};
  std::ostringstream out;
  {
    hotrestart::OutputArchive ar(out);
    ar(state);
  }
  const std::string payload = std::move(out).str();
  const std::string empty_state = [] {
    std::ostringstream o;
    {
      hotrestart::OutputArchive ar(o);
      ar(fuzz::State{});
    }
    return std::move(o).str();
  }();
  n = 0;
  for (const auto& p : {payload, empty_state, std::string()}) {
    const std::string name = "sessions";
    std::string fields(fuzz::kSectionFieldsHeader, '\0');
    fields[0] = 2;                                // Version 2.
    fields[4] = 7;                                // Sequence 7.
    fields[12] = static_cast<char>(name.size());  // Name length.
    if (!write(sections_dir + "/seed-" + std::to_string(n) + "-raw", "\x01" + encode_section(name, 2, 7, p)) ||
        !write(sections_dir + "/seed-" + std::to_string(n) + "-fields", std::string(1, '\0') + fields + name + p))
      return 1;
    ++n;
  }

  // Streams: the payloads in chunks as StreamWriter sends them (raw), and as fields, with each
  // ending (even mode: chunk size, ending, payload).
  auto u64 = [](std::uint64_t v) {
    std::string s(8, '\0');
    for (std::size_t i = 0; i < 8; ++i)
      s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
    return s;
  };
  n = 0;
  for (const auto& p : {payload, empty_state, std::string()}) {
    const std::size_t half = p.size() / 2;
    std::string stream;
    if (half > 0) stream += encode_chunk(ChunkKind::Data, std::string_view(p).substr(0, half));
    if (p.size() > half) stream += encode_chunk(ChunkKind::Data, std::string_view(p).substr(half));
    const std::string base = streams_dir + "/seed-" + std::to_string(n);
    if (!write(base + "-raw", "\x01" + stream + encode_chunk(ChunkKind::End, u64(p.size()))) ||
        !write(base + "-raw-abort", "\x01" + stream + encode_chunk(ChunkKind::Abort, "save threw")))
      return 1;
    for (std::uint8_t ending = 0; ending < 4; ++ending) {
      const std::string fields{'\0', static_cast<char>(16), static_cast<char>(ending)};
      if (!write(base + "-fields-" + std::to_string(ending), fields + p)) return 1;
    }
    ++n;
  }
  return 0;
}
