// Counters, the last error, and the pieces of `hotrestart status` (see status.h).
#include "status.h"

#include "log.h"
#include "signals.h"

namespace hotrestart {

using nlohmann::json;

std::int64_t ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - t).count();
}

json Counters::to_json() const {
  return {{"upgrades_done", upgrades_done},
          {"upgrades_rolled_back", upgrades_rolled_back},
          {"crashes", crashes},
          {"restarts", restarts},
          {"reverts", reverts},
          {"draining_stopped", draining_stopped}};
}

void LastError::note(std::string message) {
  log_error("{}", message);
  message_ = std::move(message);
  at_ = std::chrono::steady_clock::now();
}

json LastError::to_json() const {
  if (message_.empty()) return nullptr;
  return {{"message", message_}, {"age_ms", ms_since(at_)}};
}

json listeners_json(const ListenerSet& listeners) {
  json out = json::array();
  for (const auto& l : listeners.listeners()) {
    out.push_back({{"name", l.spec.name}, {"spec", l.spec.text}, {"address", l.address}, {"adopted", l.adopted}});
  }
  return out;
}

json generation_json(const Generation& g, std::string_view role) {
  return {{"generation", g.number()},
          {"pid", g.pid()},
          {"state", generation_state_name(g.state())},
          {"parked", g.parked()},
          {"role", role},
          {"age_ms", ms_since(g.started())},
          {"command", g.command()},
          {"sdk", g.sdk() != SdkState::None},
          {"status", g.status_text()},
          {"health", g.health().to_json()},
          {"last_output", g.output().tail().lines()}};
}

json ready_json(const RunOptions& options) {
  return {{"mode", options.ready.describe()}, {"timeout_ms", options.ready_timeout.count()}};
}

json drain_json(const RunOptions& options) {
  return {{"signal", signal_name(options.drain_signal)}, {"timeout_ms", options.drain_timeout.count()}};
}

json state_json(const RunOptions& options) {
  return {{"required", options.state_required}, {"timeout_ms", options.state_timeout.count()}};
}

}  // namespace hotrestart
