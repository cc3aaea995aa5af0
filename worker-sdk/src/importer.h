// The new generation's side of a state transfer: it reads the previous generation's link until
// snapshot-end (or end of file, or the deadline), gives every offered section to its `load` or
// `load_arena` (serialized in a sealed memfd, streamed over a socket of its own, or as an arena),
// and keeps the accounting: each planned section ends imported or cold with its reason, each is
// reported as it is done, and the totals go to the supervisor.
//
// It runs on the thread that calls start() (in the stub, the thread that calls start_from()), and
// calls the application's load and load_arena there. The deltas that follow the snapshot are not
// its business: the SDK thread applies them (worker_thread.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include <hotrestart/worker.h>

#include <hotrestart/wire/message.h>
#include "handover_state.h"

namespace hotrestart::sdk {

class ImportLedger;

// What an import brought.
struct ImportOutcome {
  wire::TransferTotals totals;
  std::vector<ImportedSection> sections;                 // One for each section of the plan.
  std::vector<std::pair<std::string, Fd>> received_fds;  // Passed with the snapshot, for take_fd().
};

class Importer {
 public:
  Importer(const std::vector<Section>& sections, std::uint64_t max_section_bytes, HandoverState& handover)
      : sections_(sections), max_section_bytes_(max_section_bytes), handover_(handover) {}

  // Imports every section offered on `peer` until snapshot-end. Never fails as a whole: a section
  // that cannot be imported starts cold, with its reason. `report` hears of each section as it is
  // done.
  ImportOutcome import_from(int peer, const std::vector<wire::SectionVersions>& plan, Clock::time_point deadline,
                            const std::function<void(const wire::SectionReport&)>& report);

 private:
  // A section serialized into a sealed memfd, checked, and given to `load`. `planned`: the
  // supervisor's plan has it.
  ImportedSection import_serialized(const wire::SectionOffer& offer, Fd memfd, bool planned);
  // A streamed section, read from `sock` as it arrives.
  ImportedSection import_stream(const wire::SectionStream& offer, Fd sock, bool planned, Clock::time_point deadline);
  // An arena section: checked, mapped, borrowed, and given to load_arena.
  ImportedSection import_arena(const wire::ArenaOffer& offer, Fd header, Fd memfd);

  const std::vector<Section>& sections_;
  const std::uint64_t max_section_bytes_;
  HandoverState& handover_;
};

}  // namespace hotrestart::sdk
