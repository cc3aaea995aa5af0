// The state broker: during an upgrade, it moves the old generation's state sections to the new
// one (docs/protocol.md, "Worker channel"; docs/architecture.md, "The worker channel and the state
// broker").
//
// The supervisor is never on the data path: it creates a peer link (a seqpacket pair), sends one
// end to the old generation with begin-export and the other to the new one with begin-import, and
// keeps none. The workers then move the sections between themselves, and each reports what it
// exported or imported; the broker keeps those reports (one per planned section, at most, so that
// a worker cannot grow the supervisor's memory by repeating itself) for `status` and events.
//
// Who the state comes from is decided by plan_transfer(), a pure function of facts about the
// generations, apart from the I/O; --state-required is applied by missing_required_section(),
// pure as well.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <hotrestart/wire/message.h>

#include "generation.h"
#include "run_options.h"

namespace hotrestart {

// One state transfer, from its start to its end; the last one is kept for `status`.
struct Transfer {
  std::uint64_t from = 0;  // 0: no previous generation spoke the SDK.
  std::uint64_t to = 0;
  std::chrono::steady_clock::time_point started;
  std::string note;
  std::vector<wire::SectionVersions> plan;
  std::vector<wire::SectionReport> imported;
  std::vector<wire::SectionReport> exported;
  std::optional<wire::TransferTotals> import_totals;
  std::optional<wire::TransferTotals> export_totals;
  std::string outcome;  // "", "done", or why it failed.

  bool planned(const std::string& section) const;
  nlohmann::json to_json() const;
};

// --- Planning (pure).

// What the plan needs to know of a generation.
struct GenerationFacts {
  std::uint64_t number = 0;
  bool sdk = false;           // It said hello.
  bool channel_open = false;  // Its channel is still open.
  GenerationState state = GenerationState::Starting;
};
GenerationFacts facts_of(const Generation& g);

struct TransferPlan {
  enum class Kind {
    WaitForDrain,  // Wait until `generation` has exited, then plan again.
    FromSource,    // Export from `generation` (the source) to the new one.
    Cold,          // Nothing can come: the new generation starts cold, for `note`.
  };
  Kind kind = Kind::Cold;
  std::uint64_t generation = 0;
  std::string note;
};

// The plan for the new generation `fresh`, replacing `source` (0: none was running).
//
// A generation still draining into the source streams changes to it that the source would not
// pass on after its snapshot, so the transfer waits until that generation has exited (its drain
// is bounded by --drain-timeout): none of the changes it acknowledged is lost. Then the source
// exports if it speaks the SDK, has its channel and is serving (or draining: a revert takes the state
// from the previous generation while it drains); otherwise the new one starts cold.
TransferPlan plan_transfer(std::span<const GenerationFacts> generations, std::uint64_t source, std::uint64_t fresh);

// Applies --state-required to a transfer whose import has finished: why the first required section
// was not imported, or nothing when every one was.
std::optional<std::string> missing_required_section(const std::vector<std::string>& required, const Transfer& t);

// The note of the begin-import an SDK worker gets when it says hello outside an upgrade (no state
// comes): `live` is how many generations are running, this one included.
std::string cold_start_note(const GenerationFacts& g, std::size_t live, const ReadyMode& ready);

// --- The broker.

class StateBroker {
 public:
  // Starts the transfer `plan` (FromSource or Cold) into `fresh`, from `source` if it is given.
  // Returns an error when the new generation did not take its begin-import (the upgrade rolls
  // back); a source that does not take its begin-export only makes the new one start cold.
  Status begin(const TransferPlan& plan, Generation& fresh, Generation* source);

  // The current or last transfer.
  const std::optional<Transfer>& transfer() const { return transfer_; }
  Transfer* current() { return transfer_ ? &*transfer_ : nullptr; }

  // Reports from the workers. Each returns the report as recorded (made printable), or null when it
  // was not taken: not this transfer's, not planned, or a repeat.
  const wire::SectionReport* on_section_imported(const Generation& g, const wire::SectionReport& report);
  const wire::SectionReport* on_section_exported(const Generation& g, const wire::SectionReport& report);
  // True when these are the totals of the current transfer's import, and the first.
  bool on_import_finished(const Generation& g, const wire::TransferTotals& totals);
  void on_export_finished(const Generation& g, const wire::TransferTotals& totals);

 private:
  std::optional<Transfer> transfer_;
};

}  // namespace hotrestart
