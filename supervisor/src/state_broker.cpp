// The state broker: planning a transfer, starting it over the peer link, and the section reports
// (see state_broker.h).
#include "state_broker.h"

#include <algorithm>

#include <fmt/format.h>

#include <hotrestart/base/text.h>
#include <hotrestart/wire/channel.h>

namespace hotrestart {
namespace {

using nlohmann::json;

bool reported(const std::vector<wire::SectionReport>& list, const std::string& section) {
  return std::any_of(list.begin(), list.end(), [&](const auto& r) { return r.name == section; });
}

// A report a worker sent, made safe for logs and events.
wire::SectionReport printable(wire::SectionReport r) {
  r.reason = hotrestart::printable(r.reason);
  return r;
}

json reports_json(const std::vector<wire::SectionReport>& list) {
  json out = json::array();
  for (const auto& r : list) {
    out.push_back({{"section", r.name},
                   {"ok", r.ok},
                   {"version", r.version},
                   {"bytes", r.bytes},
                   {"micros", r.micros},
                   {"reason", r.reason}});
  }
  return out;
}

json totals_json(const std::optional<wire::TransferTotals>& t) {
  if (!t) return nullptr;
  return {{"sections", t->sections}, {"done", t->done}, {"bytes", t->bytes}, {"micros", t->micros}};
}

}  // namespace

bool Transfer::planned(const std::string& section) const {
  return std::any_of(plan.begin(), plan.end(), [&](const auto& p) { return p.name == section; });
}

json Transfer::to_json() const {
  return {{"from_generation", from},
          {"to_generation", to},
          {"note", note},
          {"outcome", outcome},
          {"imported", reports_json(imported)},
          {"exported", reports_json(exported)},
          {"import", totals_json(import_totals)},
          {"export", totals_json(export_totals)}};
}

// ---------------------------------------------------------------------------------------------
// Planning

GenerationFacts facts_of(const Generation& g) {
  return {g.number(), g.sdk() != SdkState::None, g.channel().open(), g.state()};
}

TransferPlan plan_transfer(std::span<const GenerationFacts> generations, std::uint64_t source, std::uint64_t fresh) {
  const auto find = [&](std::uint64_t n) -> const GenerationFacts* {
    for (const auto& g : generations) {
      if (g.number == n) return &g;
    }
    return nullptr;
  };
  const GenerationFacts* old = source != 0 ? find(source) : nullptr;
  if (old != nullptr && old->sdk) {
    for (const auto& g : generations) {
      if (g.number != old->number && g.number != fresh && g.sdk && g.state == GenerationState::Draining &&
          g.number < old->number) {
        return {TransferPlan::Kind::WaitForDrain, g.number, {}};
      }
    }
  }
  if (old == nullptr) return {TransferPlan::Kind::Cold, 0, "no previous generation is running"};
  if (!old->sdk || !old->channel_open) {
    return {TransferPlan::Kind::Cold, 0, fmt::format("generation {} does not use the SDK", old->number)};
  }
  // A draining source is one a revert named: it still holds its state until it exits.
  if (old->state != GenerationState::Ready && old->state != GenerationState::Draining) {
    return {TransferPlan::Kind::Cold, 0, fmt::format("generation {} is not serving", old->number)};
  }
  return {TransferPlan::Kind::FromSource, old->number, {}};
}

std::optional<std::string> missing_required_section(const std::vector<std::string>& required, const Transfer& t) {
  for (const auto& name : required) {
    auto it = std::find_if(t.imported.begin(), t.imported.end(), [&](const auto& r) { return r.name == name; });
    if (it != t.imported.end() && it->ok) continue;
    std::string why;
    if (it != t.imported.end()) {
      why = it->reason;
    } else if (!t.planned(name)) {
      why = fmt::format("generation {} does not import it", t.to);
    } else {
      why = t.note.empty() ? "it was not sent" : t.note;
    }
    return fmt::format("required section '{}' was not imported: {}", name, why);
  }
  return std::nullopt;
}

std::string cold_start_note(const GenerationFacts& g, std::size_t live, const ReadyMode& ready) {
  if (g.state != GenerationState::Starting) {
    return fmt::format(
        "generation {} reported ready (--ready {}) before it said hello, so no state was moved to it: "
        "call Worker::start() before anything slow",
        g.number, ready.describe());
  }
  if (g.number == 1) return "first generation";
  if (live == 1) return "no previous generation is running";
  return "started outside an upgrade (after a crash): no state is moved";
}

// ---------------------------------------------------------------------------------------------
// The broker

Status StateBroker::begin(const TransferPlan& plan, Generation& fresh, Generation* source) {
  Transfer t;
  t.to = fresh.number();
  t.started = std::chrono::steady_clock::now();
  t.plan = fresh.hello().imports;
  t.note = plan.note;
  if (plan.kind == TransferPlan::Kind::FromSource && source != nullptr) {
    auto link = wire::seqpacket_pair();
    if (!link) {
      t.note = link.error().context("peer link").text();
    } else {
      const int old_end = link->second.get();
      if (source->channel().send(wire::BeginExport{fresh.number(), t.plan}, std::span<const int>(&old_end, 1))) {
        t.from = source->number();
      } else {
        t.note = fmt::format("generation {} did not take the export request", source->number());
      }
    }
    if (t.from != 0) {
      // Both ends are in the workers now; the supervisor keeps none, so that the link ends when
      // either generation does.
      const int new_end = link->first.get();
      const bool taken = fresh.channel().send(wire::BeginImport{t.from, t.plan, {}}, std::span<const int>(&new_end, 1));
      transfer_ = std::move(t);
      if (!taken) return Error::message(fmt::format("generation {} did not take the import request", fresh.number()));
      return {};
    }
  }
  const bool taken = fresh.channel().send(wire::BeginImport{0, {}, t.note});
  transfer_ = std::move(t);
  if (!taken) return Error::message(fmt::format("generation {} did not take the import request", fresh.number()));
  return {};
}

const wire::SectionReport* StateBroker::on_section_imported(const Generation& g, const wire::SectionReport& report) {
  if (!transfer_ || transfer_->to != g.number() || transfer_->import_totals || !transfer_->planned(report.name) ||
      reported(transfer_->imported, report.name)) {
    return nullptr;
  }
  return &transfer_->imported.emplace_back(printable(report));
}

const wire::SectionReport* StateBroker::on_section_exported(const Generation& g, const wire::SectionReport& report) {
  if (!transfer_ || transfer_->from != g.number() || !transfer_->planned(report.name) ||
      reported(transfer_->exported, report.name)) {
    return nullptr;
  }
  return &transfer_->exported.emplace_back(printable(report));
}

bool StateBroker::on_import_finished(const Generation& g, const wire::TransferTotals& totals) {
  if (!transfer_ || transfer_->to != g.number() || transfer_->import_totals) return false;
  transfer_->import_totals = totals;
  return true;
}

void StateBroker::on_export_finished(const Generation& g, const wire::TransferTotals& totals) {
  if (transfer_ && transfer_->from == g.number()) transfer_->export_totals = totals;
}

}  // namespace hotrestart
