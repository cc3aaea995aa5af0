// The old generation's side of a state transfer: it writes every section of the supervisor's plan
// to the next generation's link (as an arena, as a stream, or serialized into a sealed memfd, in
// the newest schema version both sides know), then the descriptors passed with pass_fd() and
// snapshot-end. It runs on the SDK thread when the supervisor sends begin-export, and calls the
// application's save and save_arena there.
#include <algorithm>
#include <cerrno>
#include <optional>
#include <ostream>
#include <span>
#include <sstream>

#include <hotrestart/base/text.h>
#include <hotrestart/wire/section.h>
#include <hotrestart/wire/stream.h>
#include "arena_access.h"
#include "arena_section.h"
#include "worker_impl.h"

namespace hotrestart {
namespace {

using sdk::find_section;
using sdk::guarded;
using sdk::micros_since;
using sdk::say;

// The newest version both sides know, or 0.
std::uint32_t negotiate(const std::vector<std::uint32_t>& ours, const std::vector<std::uint32_t>& theirs) {
  std::uint32_t best = 0;
  for (auto v : ours) {
    if (v > best && std::find(theirs.begin(), theirs.end(), v) != theirs.end()) best = v;
  }
  return best;
}

std::string versions_text(const std::vector<std::uint32_t>& versions) {
  std::string out;
  for (auto v : versions)
    out += (out.empty() ? "" : ", ") + std::to_string(v);
  return "[" + out + "]";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Export (this generation is the old one)

wire::TransferTotals Worker::Impl::export_to(Fd peer, std::uint64_t sequence,
                                             const std::vector<wire::SectionVersions>& plan,
                                             const std::function<void(const wire::SectionReport&)>& report) {
  const auto t0 = Clock::now();
  const int link = handover.begin_transfer(std::move(peer));
  wire::TransferTotals totals;
  int link_error = 0;  // The errno of the first failed send.
  auto send = [&](const wire::Message& m, std::span<const int> fds) {
    if (link_error != 0) return;
    if (auto ok = wire::send_message(link, m, fds, wire::Blocking::Yes); !ok) {
      say("the next generation's link failed: %s", ok.error().text().c_str());
      link_error = ok.error().code() != 0 ? ok.error().code() : EIO;
    }
  };
  for (const auto& p : plan) {
    ++totals.sections;
    const auto section_start = Clock::now();
    wire::SectionReport r{p.name, false, 0, 0, 0, {}};
    bool told_importer = false;
    const Section* section = find_section(sections, p.name);
    if (section == nullptr || (!section->save && !section->save_arena)) {
      r.reason = "generation " + std::to_string(generation) + " has no section '" + p.name + "' to export";
    } else if (const auto v = negotiate(section->versions, p.versions); v == 0) {
      r.reason = "no common schema version: the importer reads " + versions_text(p.versions) +
                 ", the exporter writes " + versions_text(section->versions);
    } else {
      r.version = v;
      // Streaming starts before the snapshot, so that a change made while `save` runs is in the
      // snapshot, in a delta, or in both (deltas are idempotent), and never in neither.
      handover.start_streaming(p.name, v);
      const bool as_arena =
          section->save_arena && p.arena && export_arena(*section, p.name, v, sequence, link, r, link_error);
      if (as_arena) {
        // Sent, or failed: `r` says which.
      } else if (!section->save) {
        if (r.reason.empty()) r.reason = "the section has no snapshot in version " + std::to_string(v);
      } else if (section->stream) {
        // The importer hears of a failure from the stream itself.
        told_importer = export_stream(*section, p.name, v, sequence, link, r, link_error);
      } else {
        auto written = wire::write_section(
            p.name, v, sequence, [&](std::ostream& out) { section->save(v, out); }, std::uint64_t{1} << 46);
        if (!written) {
          r.reason = written.error().text();
        } else {
          r.ok = true;
          r.reason.clear();
          r.bytes = written->offer.length;
          const int memfd = written->memfd.get();
          send(written->offer, std::span<const int>(&memfd, 1));
        }
      }
    }
    r.micros = micros_since(section_start);
    if (!r.ok && !told_importer) send(wire::SectionUnavailable{r.name, r.reason}, {});
    if (r.ok) {
      ++totals.done;
      totals.bytes += r.bytes;
    }
    report(r);
  }
  {
    // Descriptors passed for the next generation go with the snapshot. This generation keeps its
    // copies, so that a later upgrade can pass them again if this one rolls back.
    const auto passed = handover.passed_fds();
    if (!passed.fds.empty() && link_error == 0) {
      if (auto ok = wire::send_named_fds(link, wire::Type::Fds, passed.names, passed.fds, wire::Blocking::Yes); !ok) {
        link_error = ok.error().code() != 0 ? ok.error().code() : EIO;
      }
    }
  }
  send(wire::SnapshotEnd{}, {});
  handover.snapshot_sent(link_error != 0 ? std::optional(sdk::link_end_for(link_error)) : std::nullopt);
  totals.micros = micros_since(t0);
  return totals;
}

bool Worker::Impl::export_stream(const Section& section, const std::string& name, std::uint32_t version,
                                 std::uint64_t sequence, int link, wire::SectionReport& r, int& link_error) {
  const std::string where = "section " + quote(name);
  if (link_error != 0) {
    r.reason = "the link to the next generation failed";
    return false;
  }
  auto pair = wire::stream_pair();
  if (!pair) {
    r.reason = pair.error().context(where).text();
    return false;
  }
  Fd mine = std::move(pair->first);
  {
    // This side's copy of the importer's end closes before the first byte, so that the importer's
    // exit ends `save` at its next write.
    Fd theirs = std::move(pair->second);
    const int fd = theirs.get();
    if (auto ok = wire::send_message(link, wire::SectionStream{name, version, sequence}, std::span<const int>(&fd, 1),
                                     wire::Blocking::Yes);
        !ok) {
      say("the next generation's link failed: %s", ok.error().text().c_str());
      link_error = ok.error().code() != 0 ? ok.error().code() : EIO;
      r.reason = "the link to the next generation failed";
      return false;
    }
  }
  wire::StreamWriter writer(mine.get(), std::uint64_t{1} << 46);
  std::string failed;
  {
    std::ostream out(&writer);
    // A failed write stops the exporter at once instead of letting it write into a dead stream.
    out.exceptions(std::ios_base::badbit);
    try {
      section.save(version, out);
      out.flush();
    } catch (const std::exception& e) {
      failed = e.what();
    } catch (...) {
      failed = "it threw an exception that is not a std::exception";
    }
  }
  if (!writer.error().empty()) {
    r.reason = where + ": " + writer.error();  // The stream's own failure explains the exporter's.
  } else if (!failed.empty()) {
    r.reason = where + ": the exporter failed: " + failed;
    writer.abort(failed);
  } else if (auto ok = writer.finish(); !ok) {
    r.reason = where + ": " + ok.error().text();
  } else {
    r.ok = true;
    r.reason.clear();
  }
  r.bytes = writer.bytes();
  return true;
}

bool Worker::Impl::export_arena(const Section& section, const std::string& name, std::uint32_t version,
                                std::uint64_t sequence, int link, wire::SectionReport& r, int& link_error) {
  if (link_error != 0) {
    // The link already failed: no snapshot (and no remap) for a next generation that cannot get it.
    r.reason = "the link to the next generation failed";
    return true;
  }
  std::string header;
  Arena::Snapshot snapshot;
  const bool called = guarded("save_arena", [&] {
    std::ostringstream out;
    snapshot = section.save_arena(version, out);
    header = std::move(out).str();
  });
  if (!called || !snapshot) {
    // No snapshot in this version (or the arena is still lent to a previous import): `save` runs
    // instead, if there is one.
    r.reason = called ? "save_arena returned no snapshot" : "save_arena failed";
    return false;
  }
  auto flag = detail::ArenaAccess::shared_with(snapshot);
  auto written = wire::write_arena_section(name, version, sequence, header, snapshot);
  if (!written) {
    // Nothing was lent: the arena is this generation's alone again, and `save` may still run.
    flag->store(false);
    r.reason = written.error().text();
    say("section '%s' goes serialized: %s", name.c_str(), r.reason.c_str());
    return false;
  }
  // From the send on, the next generation may map the arena, until its process is gone.
  handover.lend_arena(std::move(flag));
  const int fds[2] = {written->header.get(), written->arena.get()};
  if (auto ok = wire::send_message(link, written->offer, fds, wire::Blocking::Yes); !ok) {
    say("the next generation's link failed: %s", ok.error().text().c_str());
    link_error = ok.error().code() != 0 ? ok.error().code() : EIO;
    r.reason = ok.error().text();
    return true;
  }
  r.ok = true;
  r.reason.clear();
  r.bytes = written->offer.bytes + written->offer.offer.length;
  return true;
}

}  // namespace hotrestart
