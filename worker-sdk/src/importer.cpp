// The new generation's side of a state transfer (see importer.h).
#include "importer.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <istream>
#include <map>
#include <memory>

#include <hotrestart/wire/section.h>
#include <hotrestart/wire/stream.h>
#include "arena_section.h"

namespace hotrestart::sdk {
namespace {

constexpr const char* kNotSent = "the previous generation did not send it";

// Why a section offered serialized (`how`: "serialized" or "streamed") in schema `version` cannot
// go to its `load`, or "" when it can.
std::string cannot_load(const Section* section, std::uint32_t version, std::string_view how) {
  if (section == nullptr) return "offered a section this generation does not import";
  if (!section->load)
    return "offered the section " + std::string(how) + ", and this generation imports it only as an arena";
  if (std::find(section->versions.begin(), section->versions.end(), version) == section->versions.end())
    return "offered schema version " + std::to_string(version) + ", which this generation cannot read";
  return {};
}

// Runs the section's `load`: "" when it returned, otherwise why it failed.
std::string run_load(const Section& section, std::uint32_t version, std::istream& in) {
  try {
    section.load(version, in);
    return {};
  } catch (const std::exception& e) {
    return std::string("its load function failed: ") + e.what();
  } catch (...) {
    return "its load function failed with an unknown exception";
  }
}

}  // namespace

// The accounting of one import. Every section of the plan has a result, cold until its offer is
// imported; each section offered is counted in the totals and reported as it is done; when the
// snapshot is cut short, the sections never sent say why.
class ImportLedger {
 public:
  ImportLedger(const std::vector<wire::SectionVersions>& plan,
               const std::function<void(const wire::SectionReport&)>& report)
      : report_(report) {
    for (const auto& p : plan)
      results_[p.name] = {p.name, false, 0, 0, kNotSent};
  }

  bool planned(const std::string& name) const { return results_.count(name) != 0; }

  // The exporter could not send a section.
  void unavailable(const wire::SectionUnavailable& missing) {
    if (auto it = results_.find(missing.name); it != results_.end()) it->second.reason = missing.reason;
    report_({missing.name, false, 0, 0, 0, missing.reason});
  }

  // A section offered, whose offer arrived at `started`: counted, reported, and kept for imported().
  void finish(const ImportedSection& result, Clock::time_point started) {
    ++totals_.sections;
    if (result.imported) {
      ++totals_.done;
      totals_.bytes += result.bytes;
    }
    report_({result.name, result.imported, result.version, result.bytes, micros_since(started), result.reason});
    if (auto planned = results_.find(result.name); planned != results_.end()) planned->second = result;
  }

  // The snapshot ended before snapshot-end, for `reason`.
  void cut_short(std::string reason) { cut_short_ = std::move(reason); }

  // The totals, taking `micros` since the import began.
  wire::TransferTotals totals(Clock::time_point began) const {
    wire::TransferTotals totals = totals_;
    totals.micros = micros_since(began);
    return totals;
  }

  // One result for each planned section, in the order of their names.
  std::vector<ImportedSection> results() const {
    std::vector<ImportedSection> out;
    for (auto [name, result] : results_) {
      if (!result.imported && !cut_short_.empty() && result.reason == kNotSent) result.reason = cut_short_;
      out.push_back(std::move(result));
    }
    return out;
  }

 private:
  const std::function<void(const wire::SectionReport&)>& report_;
  std::map<std::string, ImportedSection> results_;
  wire::TransferTotals totals_;
  std::string cut_short_;
};

ImportOutcome Importer::import_from(int peer, const std::vector<wire::SectionVersions>& plan,
                                    Clock::time_point deadline,
                                    const std::function<void(const wire::SectionReport&)>& report) {
  const auto began = Clock::now();
  ImportLedger ledger(plan, report);
  ImportOutcome outcome;
  for (;;) {
    auto r = receive_until(peer, deadline, "the previous generation's snapshot");
    if (!r) {
      const bool closed = r.error().code() == EPIPE || r.error().code() == ECONNRESET;
      ledger.cut_short(closed ? "the previous generation closed the link before its snapshot was complete"
                              : r.error().text());
      break;
    }
    if (std::holds_alternative<wire::SnapshotEnd>(r->message)) break;
    if (auto* fds = std::get_if<wire::Fds>(&r->message)) {
      for (std::size_t i = 0; i < fds->names.size(); ++i)
        outcome.received_fds.emplace_back(fds->names[i], std::move(r->fds[i]));
      continue;
    }
    if (auto* missing = std::get_if<wire::SectionUnavailable>(&r->message)) {
      ledger.unavailable(*missing);
      continue;
    }
    if (auto* covers = std::get_if<wire::SnapshotCovers>(&r->message)) {
      handover_.snapshot_covers(covers->section, covers->sequence);
      continue;
    }
    const auto section_start = Clock::now();
    if (auto* arena = std::get_if<wire::ArenaOffer>(&r->message)) {
      ledger.finish(import_arena(*arena, std::move(r->fds.at(0)), std::move(r->fds.at(1))), section_start);
    } else if (auto* streamed = std::get_if<wire::SectionStream>(&r->message)) {
      ledger.finish(import_stream(*streamed, std::move(r->fds.at(0)), ledger.planned(streamed->name), deadline),
                    section_start);
    } else if (auto* offer = std::get_if<wire::SectionOffer>(&r->message)) {
      ledger.finish(import_serialized(*offer, std::move(r->fds.at(0)), ledger.planned(offer->name)), section_start);
    } else {
      ledger.cut_short(std::string("unexpected ") + std::string(wire::type_name(wire::type_of(r->message))) +
                       " before the snapshot was complete");
      break;
    }
  }
  outcome.sections = ledger.results();
  outcome.totals = ledger.totals(began);
  return outcome;
}

ImportedSection Importer::import_serialized(const wire::SectionOffer& offer, Fd memfd, bool planned) {
  ImportedSection result{offer.name, false, offer.version, offer.length, {}};
  const Section* section = planned ? find_section(sections_, offer.name) : nullptr;
  if (result.reason = cannot_load(section, offer.version, "serialized"); !result.reason.empty()) return result;
  auto mapped = wire::open_section(std::move(memfd), offer, max_section_bytes_);
  if (!mapped) {
    result.reason = mapped.error().text();
    return result;
  }
  wire::SpanStreamBuf buffer(mapped->payload());
  std::istream in(&buffer);
  result.reason = run_load(*section, offer.version, in);
  result.imported = result.reason.empty();
  return result;
}

ImportedSection Importer::import_stream(const wire::SectionStream& offer, Fd sock, bool planned,
                                        Clock::time_point deadline) {
  ImportedSection result{offer.name, false, offer.version, 0, {}};
  const Section* section = planned ? find_section(sections_, offer.name) : nullptr;
  // Closing the socket (on return) ends the exporter's `save` at its next write.
  if (result.reason = cannot_load(section, offer.version, "streamed"); !result.reason.empty()) return result;
  wire::StreamReader reader(sock.get(), deadline, max_section_bytes_);
  // A stream that fails is an exception in `load`, never a plain end of file that a load reading
  // the istream by hand could take for the end of the section.
  reader.throw_on_error(true);
  std::istream in(&reader);
  in.exceptions(std::ios_base::badbit);
  result.reason = run_load(*section, offer.version, in);
  // A load that failed because the stream did (InputArchive throws the reader's error) says so.
  if (!result.reason.empty() && !reader.error().empty()) result.reason = "the stream failed: " + reader.error();
  if (result.reason.empty()) {
    // What the load left unread is read to the end chunk, so that a section counts as imported only
    // once all of it arrived intact.
    if (auto left = reader.finish(); !left) {
      result.reason = "the stream failed after its load function returned: " + left.error().text();
    } else {
      result.imported = true;
    }
  }
  result.bytes = reader.total();
  return result;
}

ImportedSection Importer::import_arena(const wire::ArenaOffer& offer, Fd header, Fd memfd) {
  ImportedSection result{offer.offer.name, false, offer.offer.version, offer.bytes + offer.offer.length, {}};
  const Section* section = find_section(sections_, offer.offer.name);
  if (section == nullptr || !section->load_arena) {
    result.reason = "offered an arena for a section this generation does not import as one";
    return result;
  }
  if (std::find(section->versions.begin(), section->versions.end(), offer.offer.version) == section->versions.end()) {
    result.reason =
        "offered schema version " + std::to_string(offer.offer.version) + ", which this generation cannot read";
    return result;
  }
  auto share = std::make_shared<std::atomic<bool>>(true);
  auto opened = wire::open_arena_section(std::move(header), std::move(memfd), offer, max_section_bytes_, share);
  if (!opened) {
    result.reason = opened.error().text();
    return result;
  }
  // Whatever load_arena does with the arena (keeps it, or drops it and throws), it is the previous
  // generation's too until that one is gone.
  handover_.borrow_arena(share);
  wire::SpanStreamBuf buffer(opened->app_header);
  std::istream in(&buffer);
  try {
    section->load_arena(offer.offer.version, in, std::move(opened->arena));
    result.imported = true;
  } catch (const std::exception& e) {
    result.reason = std::string("its load_arena function failed: ") + e.what();
  } catch (...) {
    result.reason = "its load_arena function failed with an unknown exception";
  }
  return result;
}

}  // namespace hotrestart::sdk
