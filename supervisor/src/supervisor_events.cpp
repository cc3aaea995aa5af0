// What the supervisor tells those who watch it: the event log and its followers, and the metrics
// fed by it (see supervisor.h, event_log.h, metrics.h).
#include "supervisor.h"

#include <fmt/format.h>

#include "log.h"

namespace hotrestart {

using nlohmann::json;

void Supervisor::record_event(json event) {
  if (events_) metrics_.observe(events_->record(std::move(event)));
}

void Supervisor::on_generation_entered(const Generation& g, GenerationState to) {
  if (to == GenerationState::Ready || to == GenerationState::Draining) {
    record_event({{"type", fmt::format("generation.{}", generation_state_name(to))},
                  {"generation", g.number()},
                  {"release", g.release()},
                  {"pid", g.pid()}});
  }
}

void Supervisor::on_events_request(ClientId client, const ControlRequest& request) {
  control_->send(client,
                 json{{"v", kControlProtocolVersion},
                      {"type", "events"},
                      {"seq", events_->last_seq()},
                      {"file", events_->path()},
                      {"error", events_->error()}},
                 AfterSend::KeepOpen);
  for (auto& e : events_->recent(request.last))
    control_->send(client, json{{"v", kControlProtocolVersion}, {"type", "logged"}, {"event", std::move(e)}},
                   AfterSend::KeepOpen);
  if (!request.follow) {
    control_->send(client, json{{"v", kControlProtocolVersion}, {"type", "end"}}, AfterSend::Close);
    return;
  }
  events_->follow(client, [this, client](const json& e) {
    control_->send(client, json{{"v", kControlProtocolVersion}, {"type", "logged"}, {"event", e}}, AfterSend::KeepOpen);
  });
}

Status Supervisor::start_metrics() {
  if (!options_.metrics) return {};
  metrics_server_ = std::make_unique<MetricsServer>(&loop_, [this] { return metrics_.render(metrics_snapshot()); });
  if (auto ok = metrics_server_->listen(*options_.metrics); !ok) {
    return ok.error().context(fmt::format("--metrics {}", options_.metrics->text));
  }
  log_info("metrics on http://{}/metrics", metrics_server_->address());
  return {};
}

void Supervisor::on_worker_metrics(const Generation& g, const std::vector<std::string>& lines) {
  for (const auto& why : metrics_.set_worker_gauges(g.number(), g.release(), lines))
    log_warn("generation {} (pid {}): X_HOTRESTART_METRIC ignored: {}", g.number(), g.pid(), why);
}

Metrics::Snapshot Supervisor::metrics_snapshot() const {
  Metrics::Snapshot s;
  s.name = options_.name;
  s.start_time_seconds = static_cast<double>(started_ms_) / 1000.0;
  for (std::size_t i = 0; i < kGenerationStateCount; ++i)
    s.generations[std::string(generation_state_name(static_cast<GenerationState>(i)))] = 0;
  for (const auto& [n, g] : generations_)
    ++s.generations[std::string(generation_state_name(g->state()))];
  s.active_generation = active_;
  s.release = current_.release;
  if (const Release* r = releases_ ? releases_->history().find(current_.release) : nullptr) {
    s.release_origin = std::string(release_origin_name(r->origin));
    s.release_sha256 = r->sha256.substr(0, 12);
  }
  s.upgrade_in_progress = upgrade_ && upgrade_->in_progress();
  s.stopping = stopping_;
  s.crashes = counters_.crashes;
  s.restarts = counters_.restarts;
  s.reverts = counters_.reverts;
  s.draining_stopped = counters_.draining_stopped;
  s.listeners = listeners_.listeners().size();
  s.control_clients = control_ ? control_->client_count() : 0;
  s.events_recorded = events_ ? events_->last_seq() : 0;
  return s;
}

json Supervisor::metrics_json() const {
  if (!metrics_server_) return nullptr;
  return {{"address", metrics_server_->address()}, {"scrapes", metrics_.scrapes()}};
}

}  // namespace hotrestart
