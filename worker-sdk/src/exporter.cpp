// The old generation's side of a state transfer (see exporter.h).
#include "exporter.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <optional>
#include <ostream>
#include <span>
#include <sstream>

#include <hotrestart/base/text.h>
#include <hotrestart/wire/channel.h>
#include <hotrestart/wire/section.h>
#include <hotrestart/wire/stream.h>
#include "arena_access.h"
#include "arena_section.h"
#include "forked_save.h"
#include "worker_common.h"

namespace hotrestart::sdk {

// The next generation's link during one export. Every send blocks. The first failure is kept, and
// nothing is sent after it: the rest of the plan is reported to the supervisor but not offered.
class ExportLink {
 public:
  explicit ExportLink(int fd) : fd_(fd) {}

  bool failed() const { return error_ != 0; }
  // What the first failed send said.
  const std::string& failure() const { return failure_; }
  // How the link ended, if a send failed.
  std::optional<LinkEnd> end() const {
    if (!failed()) return std::nullopt;
    return link_end_for(error_);
  }

  // Sends one message unless the link failed already. A failure is logged. Returns whether it went.
  bool send(const wire::Message& message, std::span<const int> fds) {
    if (failed()) return false;
    auto ok = wire::send_message(fd_, message, fds, wire::Blocking::Yes);
    if (ok) return true;
    say("the next generation's link failed: %s", ok.error().text().c_str());
    record(ok.error());
    return false;
  }

  // Sends named descriptors unless the link failed already.
  void send_fds(const HandoverState::PassedFds& passed) {
    if (passed.fds.empty() || failed()) return;
    if (auto ok = wire::send_named_fds(fd_, wire::Type::Fds, passed.names, passed.fds, wire::Blocking::Yes); !ok) {
      record(ok.error());
    }
  }

 private:
  void record(const Error& error) {
    error_ = error.code() != 0 ? error.code() : EIO;
    failure_ = error.text();
  }

  int fd_;
  int error_ = 0;  // The errno of the first failed send.
  std::string failure_;
};

namespace {

constexpr const char* kLinkFailed = "the link to the next generation failed";

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

wire::TransferTotals Exporter::export_to(Fd peer, std::uint64_t sequence,
                                         const std::vector<wire::SectionVersions>& plan,
                                         const std::function<void(const wire::SectionReport&)>& report) {
  const auto t0 = Clock::now();
  ExportLink link(handover_.begin_transfer(std::move(peer)));
  wire::TransferTotals totals;
  for (const auto& planned : plan) {
    ++totals.sections;
    const wire::SectionReport r = export_section(planned, sequence, link);
    if (r.ok) {
      ++totals.done;
      totals.bytes += r.bytes;
    }
    report(r);
  }
  // Descriptors passed for the next generation go with the snapshot. This generation keeps its
  // copies, so that a later upgrade can pass them again if this one rolls back.
  link.send_fds(handover_.take_passed_fds_for_snapshot());
  link.send(wire::SnapshotEnd{}, {});
  handover_.snapshot_sent(link.end());
  totals.micros = micros_since(t0);
  return totals;
}

wire::SectionReport Exporter::export_section(const wire::SectionVersions& planned, std::uint64_t sequence,
                                             ExportLink& link) {
  const auto section_start = Clock::now();
  wire::SectionReport r{planned.name, false, 0, 0, 0, {}};
  bool told_importer = false;
  const Section* section = find_section(sections_, planned.name);
  if (section == nullptr || (!section->save && !section->save_arena)) {
    r.reason = "generation " + std::to_string(generation_) + " has no section '" + planned.name + "' to export";
  } else if (const auto v = negotiate(section->versions, planned.versions); v == 0) {
    r.reason = "no common schema version: the importer reads " + versions_text(planned.versions) +
               ", the exporter writes " + versions_text(section->versions);
  } else {
    r.version = v;
    // Streaming starts before the snapshot, so that a change made while `save` runs is in the
    // snapshot, in a delta, or in both (deltas are idempotent), and never in neither.
    handover_.start_streaming(planned.name, v);
    // So that the snapshot's instant, under the application's lock, does not include unmapping the
    // arenas' page table entries (save_arena's Arena::snapshot(), and freeze's).
    if (section->save_arena || section->freeze) detail::ArenaAccess::drop_page_tables();
    // Every change published so far was made (under the writers' lock, as publish_delta asks)
    // before the snapshot, so it is in it. A forked save knows the very instant, and says so.
    covers_ = handover_.delta_sequence();
    told_importer = send_snapshot(*section, planned, v, sequence, link, r);
    if (r.ok) link.send(wire::SnapshotCovers{planned.name, covers_}, {});
  }
  r.micros = micros_since(section_start);
  if (!r.ok && !told_importer) link.send(wire::SectionUnavailable{r.name, r.reason}, {});
  return r;
}

bool Exporter::send_snapshot(const Section& section, const wire::SectionVersions& planned, std::uint32_t version,
                             std::uint64_t sequence, ExportLink& link, wire::SectionReport& r) {
  if (section.save_arena && planned.arena && export_arena(section, planned.name, version, sequence, link, r)) {
    return false;  // Sent, or failed: `r` says which.
  }
  if (!section.save) {
    if (r.reason.empty()) r.reason = "the section has no snapshot in version " + std::to_string(version);
    return false;
  }
  // A streamed section's importer hears of a failure from the stream itself.
  if (section.stream) return export_stream(section, planned.name, version, sequence, link, r);
  export_serialized(section, planned.name, version, sequence, link, r);
  return false;
}

bool Exporter::forks(const Section& section) const {
  return section.freeze && max_copy_bytes_ > 0;
}

std::optional<ChildResult> Exporter::save_forked(const Section& section, const std::vector<Fd*>& give,
                                                 const std::function<ChildResult()>& write) {
  ForkedSave f = save_in_child(
      section, max_copy_bytes_, give, [this] { return handover_.delta_sequence(); }, write);
  if (!f.forked) {
    say("section '%s': saved under the lock: %s", section.name.c_str(), f.why_not.c_str());
    return std::nullopt;
  }
  char copies[96];
  if (f.sampled) {
    std::snprintf(copies, sizeof copies, "the snapshot's copies took at most %.1f MiB",
                  static_cast<double>(f.peak_copy_bytes) / 1048576.0);
  } else {
    std::snprintf(copies, sizeof copies,
                  "it ended before the snapshot's copies were first sampled (%d ms after the fork)", kFirstSampleMs);
  }
  say("section '%s': saved by a forked process (pid %d, %s); the writers waited %.1f ms for the fork%s, and %s",
      section.name.c_str(), static_cast<int>(f.child), f.child_end.c_str(), static_cast<double>(f.pause.count()) / 1e3,
      f.waited.count() > 0 ? (" and " + std::to_string(f.waited.count() / 1000) + " ms for the save").c_str() : "",
      copies);
  covers_ = f.sequence_at_fork;
  if (!f.result) {
    const std::string failure = "the process saving it ended without a result (" + f.child_end + ")";
    return ChildResult{wire::SectionExported{{section.name, false, 0, 0, 0, failure}}, Fd()};
  }
  return std::move(f.result);
}

void Exporter::export_serialized(const Section& section, const std::string& name, std::uint32_t version,
                                 std::uint64_t sequence, ExportLink& link, wire::SectionReport& r) {
  // The memfd and its offer, or why not: the same whether this process writes it or a forked one.
  auto write = [&]() -> ChildResult {
    auto written = wire::write_section(
        name, version, sequence, [&](std::ostream& out) { section.save(version, out); }, std::uint64_t{1} << 46);
    if (!written) return {wire::SectionExported{{name, false, version, 0, 0, written.error().text()}}, Fd()};
    return {written->offer, std::move(written->memfd)};
  };
  std::optional<ChildResult> forked;
  if (forks(section)) forked = save_forked(section, {}, write);
  ChildResult result = forked ? std::move(*forked) : write();
  if (const auto* failed = std::get_if<wire::SectionExported>(&result.message)) {
    r.reason = failed->report.reason;
    return;
  }
  const auto* offer = std::get_if<wire::SectionOffer>(&result.message);
  if (offer == nullptr || !result.memfd) {
    r.reason = "the process saving it sent no section";
    return;
  }
  r.ok = true;
  r.reason.clear();
  r.bytes = offer->length;
  const int fd = result.memfd.get();
  link.send(*offer, std::span<const int>(&fd, 1));
}

namespace {

// Writes the section with `save` to a stream, and ends the stream: how that went goes into `r`.
void save_to_stream(const Section& section, const std::string& where, std::uint32_t version, int sock,
                    wire::SectionReport& r) {
  wire::StreamWriter writer(sock, std::uint64_t{1} << 46);
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
}

}  // namespace

bool Exporter::export_stream(const Section& section, const std::string& name, std::uint32_t version,
                             std::uint64_t sequence, ExportLink& link, wire::SectionReport& r) {
  const std::string where = "section " + quote(name);
  if (link.failed()) {
    r.reason = kLinkFailed;
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
    if (!link.send(wire::SectionStream{name, version, sequence}, std::span<const int>(&fd, 1))) {
      r.reason = kLinkFailed;
      return false;
    }
  }
  // How the save went, the same whether this process writes the stream or a forked one (whose
  // copy of `mine` then closes here, so that the importer sees the stream end if the child dies).
  const int sock = mine.get();
  auto write = [&]() -> ChildResult {
    wire::SectionReport report{name, false, version, 0, 0, {}};
    save_to_stream(section, where, version, sock, report);
    return {wire::SectionExported{report}, Fd()};
  };
  std::optional<ChildResult> forked;
  if (forks(section)) forked = save_forked(section, {&mine}, write);
  const ChildResult result = forked ? std::move(*forked) : write();
  const auto* report = std::get_if<wire::SectionExported>(&result.message);
  if (report == nullptr) {
    r.reason = where + ": the process saving it sent no report";
    return true;
  }
  r.ok = report->report.ok;
  r.reason = report->report.reason;
  r.bytes = report->report.bytes;
  return true;
}

bool Exporter::export_arena(const Section& section, const std::string& name, std::uint32_t version,
                            std::uint64_t sequence, ExportLink& link, wire::SectionReport& r) {
  if (link.failed()) {
    // The link already failed: no snapshot (and no remap) for a next generation that cannot get it.
    r.reason = kLinkFailed;
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
  auto share = detail::ArenaAccess::shared_with(snapshot);
  auto written = wire::write_arena_section(name, version, sequence, header, snapshot);
  if (!written) {
    // Nothing was lent: the arena is this generation's alone again, and `save` may still run.
    share->store(false);
    r.reason = written.error().text();
    say("section '%s' goes serialized: %s", name.c_str(), r.reason.c_str());
    return false;
  }
  // From the send on, the next generation may map the arena, until its process is gone.
  handover_.lend_arena(std::move(share));
  const int fds[2] = {written->header.get(), written->arena.get()};
  if (!link.send(written->offer, fds)) {
    r.reason = link.failure();
    return true;
  }
  r.ok = true;
  r.reason.clear();
  r.bytes = written->offer.bytes + written->offer.offer.length;
  return true;
}

}  // namespace hotrestart::sdk
