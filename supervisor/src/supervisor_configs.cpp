// The coordinator's part in configurations (--config): which generations a reload goes to, the
// control requests (reload, config-rollback, config-history) and SIGHUP. The reloads themselves are
// ConfigReloads' (config_reload.h).
#include <algorithm>

#include <fmt/format.h>

#include "log.h"
#include "signals.h"
#include "supervisor.h"

namespace hotrestart {

using nlohmann::json;

std::vector<Generation*> Supervisor::config_readers(const std::string& name) {
  std::vector<Generation*> readers;
  for (const auto& [number, g] : generations_) {
    // A draining generation finishes what it has with the version it has; one without the SDK, or
    // whose hello did not name the configuration, has nothing to switch.
    if (g->state() == GenerationState::Exited || g->state() == GenerationState::Draining) continue;
    if (g->sdk() == SdkState::None || !g->channel().open()) continue;
    for (const auto& held : g->hello().configs) {
      if (held.name == name) {
        readers.push_back(g.get());
        break;
      }
    }
  }
  return readers;
}

std::vector<Generation*> Supervisor::signal_targets(const std::string& name) {
  const auto readers = config_readers(name);
  std::vector<Generation*> targets;
  for (const auto& [number, g] : generations_) {
    if (g->state() == GenerationState::Exited || g->state() == GenerationState::Draining) continue;
    if (std::find(readers.begin(), readers.end(), g.get()) == readers.end()) targets.push_back(g.get());
  }
  return targets;
}

std::unique_ptr<PreflightCheck> Supervisor::start_config_check(const std::string& command, std::vector<std::string> env,
                                                               PreflightCheck::Done done) {
  // The environment of a preflight check of the release that serves, and the configuration's own.
  std::vector<std::string> all = launcher_->preflight_environment(
      current_.command, current_.image ? current_.image->path() : std::string(), current_.release);
  all.insert(all.end(), env.begin(), env.end());
  return PreflightCheck::start({&loop_, *reaper_, options_.reload_timeout, "config-check", "--reload-timeout"}, command,
                               std::move(all), std::move(done), launcher_->workdir());
}

void Supervisor::on_config_request(ClientId client, const ControlRequest& request) {
  if (request.command == ControlRequest::Command::ConfigHistory) {
    auto history = configs_->history_json(request.config);
    if (!history) {
      control_->send(client, control_error("bad-request", history.error().text()), AfterSend::Close);
      return;
    }
    json answer = std::move(history).value();
    answer["v"] = kControlProtocolVersion;
    answer["type"] = "config-history";
    control_->send(client, answer, AfterSend::Close);
    return;
  }
  if (stopping_) {
    control_->send(client, control_error("stopping", "the supervisor is stopping; no reload can start"),
                   AfterSend::Close);
    return;
  }
  auto done = [this, client](const ConfigReloads::Outcome& outcome) {
    if (!outcome.code.empty()) {
      control_->send(client, control_error(outcome.code, outcome.message), AfterSend::Close);
      return;
    }
    control_->send(client, json{{"v", kControlProtocolVersion}, {"type", "reloaded"}, {"configs", outcome.configs}},
                   AfterSend::Close);
  };
  if (request.command == ControlRequest::Command::ConfigRollback) {
    configs_->rollback(request.config, request.version, {"rollback", request.peer_uid, request.peer_pid}, done);
  } else {
    configs_->reload(request.config, request.file, {"reload", request.peer_uid, request.peer_pid}, done);
  }
}

void Supervisor::reload_on_signal() {
  if (configs_->busy()) {
    log_warn("SIGHUP ignored: {}", configs_->busy_reason());
    return;
  }
  log_info("SIGHUP: reloading the configurations");
  configs_->reload(std::nullopt, std::nullopt, {"SIGHUP", -1, -1}, [](const ConfigReloads::Outcome& outcome) {
    if (!outcome.code.empty()) return;  // The refusal is in the log already.
    std::string what;
    for (const auto& c : outcome.configs) {
      what += what.empty() ? "" : "; ";
      what += c.value("changed", false)
                  ? fmt::format("{} version {} is live", c.value("name", ""), c.value("version", std::uint64_t{0}))
                  : fmt::format("{} unchanged (version {})", c.value("name", ""), c.value("version", std::uint64_t{0}));
    }
    log_info("SIGHUP: {}", what);
  });
}

}  // namespace hotrestart
