// The old generation's side of a state transfer: it writes every section of the supervisor's plan
// to the next generation's link (as an arena, as a stream, or serialized into a sealed memfd, in
// the newest schema version both sides know), then the descriptors passed with pass_fd() and
// snapshot-end. It owns the choice of version and of form, and the per-section report; the link
// itself, and the deltas that follow the snapshot, belong to HandoverState.
//
// It runs on the SDK thread when the supervisor sends begin-export (in the stub, on a thread of
// the stub's own), and calls the application's save and save_arena there.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <hotrestart/worker.h>

#include <hotrestart/wire/message.h>
#include "forked_save.h"
#include "handover_state.h"

namespace hotrestart::sdk {

class ExportLink;

class Exporter {
 public:
  // `generation` is this worker's, for the reasons it reports.
  // `max_copy_bytes`: Worker::Options::max_snapshot_copy_bytes (0: no section's save forks).
  Exporter(const std::vector<Section>& sections, std::uint64_t generation, HandoverState& handover,
           std::uint64_t max_copy_bytes)
      : sections_(sections), generation_(generation), handover_(handover), max_copy_bytes_(max_copy_bytes) {}

  // Writes every section of `plan` to `peer` (which becomes the next generation's link), then the
  // passed descriptors and snapshot-end. `report` hears of each section as it is done. Deltas
  // published from here on are queued for the peer.
  wire::TransferTotals export_to(Fd peer, std::uint64_t sequence, const std::vector<wire::SectionVersions>& plan,
                                 const std::function<void(const wire::SectionReport&)>& report);

 private:
  // One section of the plan: negotiated, sent, and reported to the importer when it cannot go.
  wire::SectionReport export_section(const wire::SectionVersions& planned, std::uint64_t sequence, ExportLink& link);
  // Sends the section's snapshot in `version`, in the form both sides can use; `r` says whether it
  // went. Returns whether the importer has heard of a failure already (through the stream).
  bool send_snapshot(const Section& section, const wire::SectionVersions& planned, std::uint32_t version,
                     std::uint64_t sequence, ExportLink& link, wire::SectionReport& r);
  // Sends a section as an arena if save_arena gives a snapshot. Returns false when it gave none
  // (the caller then tries `save`); true when it did, with `r` saying whether it went.
  bool export_arena(const Section& section, const std::string& name, std::uint32_t version, std::uint64_t sequence,
                    ExportLink& link, wire::SectionReport& r);
  // Streams a section to the next generation while `save` writes it. Returns true when the stream
  // was offered (then `r` says whether it ended well, and the importer heard of a failure through
  // the stream itself); false when not even the offer could be sent.
  bool export_stream(const Section& section, const std::string& name, std::uint32_t version, std::uint64_t sequence,
                     ExportLink& link, wire::SectionReport& r);
  // Writes the section whole into a sealed memfd with `save`, and offers it.
  void export_serialized(const Section& section, const std::string& name, std::uint32_t version, std::uint64_t sequence,
                         ExportLink& link, wire::SectionReport& r);

  // Whether the section's save runs in a forked child (Section::freeze).
  bool forks(const Section& section) const;
  // Runs `write` in a child forked under the section's freeze (forked_save.h), and logs how it
  // went. Returns the child's result (a report saying it died, when it did), or nullopt when it did
  // not fork: the caller then saves under the lock.
  // `give`: descriptors `write` uses, which this process closes once the child has them.
  std::optional<ChildResult> save_forked(const Section& section, const std::vector<Fd*>& give,
                                         const std::function<ChildResult()>& write);

  const std::vector<Section>& sections_;
  const std::uint64_t generation_;
  HandoverState& handover_;
  const std::uint64_t max_copy_bytes_;
  // The last change the section's snapshot holds (snapshot-covers).
  std::uint64_t covers_ = 0;
};

}  // namespace hotrestart::sdk
