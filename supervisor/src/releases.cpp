// The release history: outcomes and their table, the default rollback target, and the file format
// (see releases.h).
#include "releases.h"

#include <algorithm>
#include <limits>

#include <fmt/format.h>

#include "lifecycle.h"

namespace hotrestart {

namespace {
// Why end_inherited() ended a release that was serving.
constexpr const char* kInheritedGone = "the supervisor that ran it is gone";
}  // namespace
namespace {

using nlohmann::json;

constexpr std::string_view kOutcomeNames[] = {"starting", "serving", "rolled-back", "reverted", "retired", "stopped"};
static_assert(std::size(kOutcomeNames) == kReleaseOutcomeCount && named_apart(kOutcomeNames),
              "every release outcome needs a name of its own");
constexpr std::string_view kOriginNames[] = {"run", "upgrade", "SIGUSR2", "rollback", "revert", "SIGHUP"};
static_assert(std::size(kOriginNames) == kReleaseOriginCount && named_apart(kOriginNames),
              "every release origin needs a name of its own");

constexpr TransitionTable<ReleaseOutcome, kReleaseOutcomeCount> kOutcomes = {
    {ReleaseOutcome::Starting, ReleaseOutcome::Serving},
    {ReleaseOutcome::Starting, ReleaseOutcome::RolledBack},
    {ReleaseOutcome::Starting, ReleaseOutcome::Stopped},
    {ReleaseOutcome::Serving, ReleaseOutcome::Retired},
    {ReleaseOutcome::Serving, ReleaseOutcome::Reverted},
    {ReleaseOutcome::Serving, ReleaseOutcome::Stopped},
    // A revert resumed the release's parked generation.
    {ReleaseOutcome::Retired, ReleaseOutcome::Serving},
};

// Limits on what a history file may hold: it is read back at start-up and could have been edited,
// truncated or replaced.
constexpr std::size_t kMaxArgs = 4096;
constexpr std::size_t kMaxText = 64 * 1024;

template <class Enum, std::size_t N>
std::optional<Enum> enum_named(const std::string_view (&names)[N], std::string_view name) {
  for (std::size_t i = 0; i < N; ++i) {
    if (names[i] == name) return static_cast<Enum>(i);
  }
  return std::nullopt;
}

// Reads one release, checking each field; the error names it.
Result<Release> release_from_json(const json& j) {
  if (!j.is_object()) return Error::message("a release is not an object");
  Release r;
  const auto number = [&](const char* key, auto& out, bool allow_negative) -> Status {
    const auto it = j.find(key);
    if (it == j.end()) return {};  // Optional: the default stays.
    if (!it->is_number_integer()) return Error::message(fmt::format("\"{}\" is not an integer", key));
    if (!allow_negative && it->get<std::int64_t>() < 0 && !it->is_number_unsigned()) {
      return Error::message(fmt::format("\"{}\" is negative", key));
    }
    out = it->get<std::remove_reference_t<decltype(out)>>();
    return {};
  };
  const auto text = [&](const char* key, std::string& out) -> Status {
    const auto it = j.find(key);
    if (it == j.end()) return {};
    if (!it->is_string() || it->get_ref<const std::string&>().size() > kMaxText) {
      return Error::message(fmt::format("\"{}\" is not a string of at most {} bytes", key, kMaxText));
    }
    out = it->get<std::string>();
    return {};
  };
  for (auto status : {number("number", r.number, false), number("uid", r.uid, true), number("pid", r.pid, true),
                      number("started_ms", r.started_ms, false), number("serving_ms", r.serving_ms, false),
                      number("ended_ms", r.ended_ms, false), number("rollback_of", r.rollback_of, false),
                      number("generation", r.generation, false), number("restarts", r.restarts, false),
                      text("executable", r.executable), text("sha256", r.sha256), text("interpreter", r.interpreter),
                      text("interpreter_sha256", r.interpreter_sha256), text("reason", r.reason)}) {
    if (!status) return status.error();
  }
  if (r.number == 0) return Error::message("\"number\" is missing or 0");
  const auto command = j.find("command");
  if (command == j.end() || !command->is_array() || command->empty() || command->size() > kMaxArgs) {
    return Error::message(fmt::format("\"command\" is not an array of 1 to {} strings", kMaxArgs));
  }
  for (const auto& arg : *command) {
    if (!arg.is_string() || arg.get_ref<const std::string&>().size() > kMaxText) {
      return Error::message("\"command\" holds something other than a string");
    }
    r.command.push_back(arg.get<std::string>());
  }
  std::string outcome;
  std::string origin;
  if (auto ok = text("outcome", outcome); !ok) return ok.error();
  if (auto ok = text("origin", origin); !ok) return ok.error();
  const auto o = enum_named<ReleaseOutcome>(kOutcomeNames, outcome);
  if (!o) return Error::message(fmt::format("\"outcome\" '{}' is not one of the outcomes", outcome.substr(0, 32)));
  const auto g = enum_named<ReleaseOrigin>(kOriginNames, origin);
  if (!g) return Error::message(fmt::format("\"origin\" '{}' is not one of the origins", origin.substr(0, 32)));
  r.outcome = *o;
  r.origin = *g;
  return r;
}

}  // namespace

std::string_view release_outcome_name(ReleaseOutcome outcome) {
  return name_in(kOutcomeNames, outcome);
}

std::string_view release_origin_name(ReleaseOrigin origin) {
  return name_in(kOriginNames, origin);
}

bool transition_allowed(ReleaseOutcome from, ReleaseOutcome to) {
  return kOutcomes.allows(from, to);
}

json Release::to_json() const {
  return {{"number", number},
          {"command", command},
          {"executable", executable},
          {"sha256", sha256},
          {"interpreter", interpreter},
          {"interpreter_sha256", interpreter_sha256},
          {"origin", release_origin_name(origin)},
          {"uid", uid},
          {"pid", pid},
          {"started_ms", started_ms},
          {"serving_ms", serving_ms},
          {"ended_ms", ended_ms},
          {"outcome", release_outcome_name(outcome)},
          {"reason", reason},
          {"rollback_of", rollback_of},
          {"generation", generation},
          {"restarts", restarts}};
}

Release& ReleaseHistory::add(Release release) {
  release.number = next_number_++;
  releases_.push_back(std::move(release));
  while (releases_.size() > kKept)
    releases_.pop_front();
  return releases_.back();
}

Release* ReleaseHistory::find(std::uint64_t number) {
  for (auto& r : releases_) {
    if (r.number == number) return &r;
  }
  return nullptr;
}

const Release* ReleaseHistory::find(std::uint64_t number) const {
  return const_cast<ReleaseHistory*>(this)->find(number);
}

bool ReleaseHistory::set_outcome(std::uint64_t number, ReleaseOutcome outcome, std::string reason,
                                 std::int64_t now_ms) {
  Release* r = find(number);
  if (r == nullptr || !transition_allowed(r->outcome, outcome)) return false;
  r->outcome = outcome;
  if (!reason.empty()) r->reason = std::move(reason);
  if (outcome == ReleaseOutcome::Serving) {
    r->serving_ms = now_ms;
    r->ended_ms = 0;
  } else {
    r->ended_ms = now_ms;
  }
  return true;
}

bool ReleaseHistory::serving_again(std::uint64_t number) {
  Release* r = find(number);
  if (r == nullptr) return false;
  if (r->outcome == ReleaseOutcome::Serving) return true;
  if (r->outcome != ReleaseOutcome::Stopped || r->reason != kInheritedGone) return false;
  r->outcome = ReleaseOutcome::Serving;
  r->reason.clear();
  r->ended_ms = 0;
  return true;
}

const Release* ReleaseHistory::last_good_before(std::uint64_t active) const {
  const Release* current = find(active);
  for (auto it = releases_.rbegin(); it != releases_.rend(); ++it) {
    if (it->number >= active || !it->served()) continue;
    // Going back to what serves already changes nothing: further back, then.
    if (current != nullptr && it->runs_the_same_as(*current)) continue;
    return &*it;
  }
  return nullptr;
}

void ReleaseHistory::end_inherited(std::int64_t now_ms) {
  for (auto& r : releases_) {
    if (r.outcome == ReleaseOutcome::Starting) {
      r.outcome = ReleaseOutcome::RolledBack;
      r.reason = "the supervisor that was starting it is gone";
      r.ended_ms = now_ms;
    } else if (r.outcome == ReleaseOutcome::Serving) {
      r.outcome = ReleaseOutcome::Stopped;
      r.reason = kInheritedGone;
      r.ended_ms = now_ms;
    }
  }
}

json ReleaseHistory::to_json() const {
  json list = json::array();
  for (const auto& r : releases_)
    list.push_back(r.to_json());
  return {{"v", kFormatVersion}, {"next_release", next_number_}, {"releases", list}};
}

Result<ReleaseHistory> ReleaseHistory::from_json(const json& j) {
  if (!j.is_object()) return Error::message("the history is not a JSON object");
  const auto v = j.find("v");
  if (v == j.end() || !v->is_number_integer() || v->get<std::int64_t>() != kFormatVersion) {
    return Error::message(fmt::format("the history's format version is not {}", kFormatVersion));
  }
  const auto next = j.find("next_release");
  if (next == j.end() || !next->is_number_unsigned() || next->get<std::uint64_t>() == 0) {
    return Error::message("\"next_release\" is not a positive integer");
  }
  const auto list = j.find("releases");
  if (list == j.end() || !list->is_array()) return Error::message("\"releases\" is not an array");
  ReleaseHistory history;
  history.next_number_ = next->get<std::uint64_t>();
  // Only the newest kKept are kept, however many the file holds.
  const std::size_t skip = list->size() > kKept ? list->size() - kKept : 0;
  std::uint64_t previous = 0;
  for (std::size_t i = skip; i < list->size(); ++i) {
    auto r = release_from_json((*list)[i]);
    if (!r) return r.error().context(fmt::format("release {} of the history", i + 1));
    if (r->number <= previous || r->number >= history.next_number_) {
      return Error::message(fmt::format("release {} of the history: its number {} is out of order", i + 1, r->number));
    }
    previous = r->number;
    history.releases_.push_back(std::move(r).value());
  }
  return history;
}

}  // namespace hotrestart
