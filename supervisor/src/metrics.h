// Metrics: what the supervisor counts for Prometheus (`run --metrics`), and their text exposition
// (format 0.0.4, docs/operations.md "Metrics" lists every family).
//
// Most of it is fed by the event log: each recorded event passes through observe() (upgrade
// results with their timelines, state sections, generations started, draining and gone), so that a
// metric and the event that explains it never disagree. Control requests are counted as they
// arrive (most are not events), and what is true now (generations by state, the release, the
// process's own memory) is read at each scrape from a Snapshot the supervisor fills.
//
// Workers publish gauges of their own with notify datagrams (`X_HOTRESTART_METRIC=NAME VALUE`,
// docs/protocol.md): kept per generation, exported with its number and release as labels, and
// forgotten when the generation exits.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace hotrestart {

// Counts of observations into fixed buckets (upper bounds in seconds), with their sum.
struct Histogram {
  static constexpr std::array<double, 14> kBounds = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                     0.5,   1,     2.5,  5,     10,   30,  60};
  std::array<std::uint64_t, kBounds.size()> buckets{};  // Not cumulative: each its own range.
  std::uint64_t count = 0;
  double sum = 0;
  void observe(double seconds);
};

class Metrics {
 public:
  // The most of each kind of label value kept (state sections, worker gauges per generation, and the
  // generations with gauges): past it, new ones are dropped and counted in
  // hotrestart_metrics_dropped_total, so that a worker cannot grow the supervisor's memory.
  static constexpr std::size_t kMaxSections = 64;
  static constexpr std::size_t kMaxWorkerGauges = 64;
  static constexpr std::size_t kMaxWorkerGenerations = 16;

  // What is true at the moment of a scrape.
  struct Snapshot {
    std::string name;  // --name
    double start_time_seconds = 0;
    std::map<std::string, std::uint64_t> generations;  // By state name; every state is listed.
    std::uint64_t active_generation = 0;
    std::uint64_t release = 0;
    std::string release_origin;  // run, upgrade, SIGUSR2, SIGHUP, rollback, revert
    std::string release_sha256;  // The first 12 hex digits of the release's executable ("": unknown).
    bool upgrade_in_progress = false;
    bool stopping = false;
    std::uint64_t crashes = 0;
    std::uint64_t restarts = 0;
    std::uint64_t reverts = 0;
    std::uint64_t draining_stopped = 0;  // By --max-draining.
    std::uint64_t listeners = 0;
    std::uint64_t control_clients = 0;
    std::uint64_t events_recorded = 0;  // The event log's sequence number.
  };

  // An event just recorded (event_log.h).
  void observe(const nlohmann::json& event);
  // A control request of command `name`, as it arrived.
  void count_request(std::string_view command);
  // The values of a notify datagram's X_HOTRESTART_METRIC lines ("NAME VALUE") from a process of
  // `generation`: why each one refused was (the others are applied), for the log.
  std::vector<std::string> set_worker_gauges(std::uint64_t generation, std::uint64_t release,
                                             const std::vector<std::string>& lines);
  // A scrape.
  std::string render(const Snapshot& now);

  std::uint64_t scrapes() const { return scrapes_; }

 private:
  struct Section {
    std::map<std::string, std::uint64_t> imports;  // By outcome: "ok", "failed".
    std::uint64_t bytes = 0;
    double seconds = 0;
    std::uint64_t last_bytes = 0;
    double last_seconds = 0;
  };
  struct WorkerGauges {
    std::uint64_t release = 0;
    std::map<std::string, double> values;
  };

  std::map<std::pair<std::string, std::string>, std::uint64_t> upgrades_;  // (outcome, reason)
  std::map<std::string, Histogram> upgrade_seconds_;                       // By outcome.
  std::map<std::string, Histogram> phase_seconds_;                         // By phase.
  std::map<std::string, Section> sections_;
  std::map<std::string, std::uint64_t> requests_;  // By command.
  std::map<std::string, std::uint64_t> exits_;     // Generations gone, by the state they left.
  std::uint64_t generations_started_ = 0;
  std::uint64_t drains_ = 0;
  std::uint64_t drain_kills_ = 0;
  std::uint64_t signals_ = 0;
  std::map<std::uint64_t, WorkerGauges> workers_;
  std::uint64_t dropped_ = 0;
  std::uint64_t scrapes_ = 0;
};

// Metric names as Prometheus allows them ([a-zA-Z_:][a-zA-Z0-9_:]*), here at most 64 characters and
// without the ':' that is reserved for recording rules.
bool valid_metric_name(std::string_view name);
// A label value in the text format: backslash, double quote and newline escaped.
std::string escape_label_value(std::string_view value);

}  // namespace hotrestart
