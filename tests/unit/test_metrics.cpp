// The metrics on their own: names and label values as the text format needs them, the bounds on
// what workers publish, and histograms fed by upgrade events.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "metrics.h"

using namespace hotrestart;
using nlohmann::json;

namespace {

bool has_line(const std::string& text, const std::string& line) {
  return text.find("\n" + line + "\n") != std::string::npos;
}

}  // namespace

TEST_CASE("metrics: names and label values follow the text format") {
  CHECK(valid_metric_name("hit_ratio"));
  CHECK(valid_metric_name("_x9"));
  CHECK_FALSE(valid_metric_name(""));
  CHECK_FALSE(valid_metric_name("9lives"));
  CHECK_FALSE(valid_metric_name("a-b"));
  CHECK_FALSE(valid_metric_name("a:b"));
  CHECK_FALSE(valid_metric_name(std::string(65, 'a')));
  CHECK(escape_label_value("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
}

TEST_CASE("metrics: a worker's gauges are bounded in number and forgotten when its generation exits") {
  Metrics m;
  std::vector<std::string> lines;
  for (std::size_t i = 0; i < Metrics::kMaxWorkerGauges + 5; ++i)
    lines.push_back(fmt::format("g{} {}", i, i));
  lines.push_back("no_value");
  lines.push_back("inf_value inf");
  const auto refused = m.set_worker_gauges(3, 2, lines);
  CHECK(refused.size() == 5 + 2);
  const std::string out = m.render({});
  CHECK(has_line(out, R"(hotrestart_worker_g0{generation="3",release="2"} 0)"));
  CHECK(has_line(out, R"(hotrestart_worker_g63{generation="3",release="2"} 63)"));
  CHECK(out.find("hotrestart_worker_g64") == std::string::npos);
  CHECK(has_line(out, "hotrestart_metrics_dropped_total 5"));
  // A value changes in place.
  CHECK(m.set_worker_gauges(3, 2, {"g1 1.5"}).empty());
  CHECK(has_line(m.render({}), R"(hotrestart_worker_g1{generation="3",release="2"} 1.5)"));
  m.observe({{"type", "generation.exited"}, {"generation", 3}, {"was", "draining"}, {"forced", true}});
  const std::string after = m.render({});
  CHECK(after.find("hotrestart_worker_") == std::string::npos);
  CHECK(has_line(after, "hotrestart_drain_kills_total 1"));
  CHECK(has_line(after, R"(hotrestart_generations_exited_total{state="draining"} 1)"));
}

TEST_CASE("metrics: an upgrade's timeline fills the phase histograms, cumulatively") {
  Metrics m;
  m.observe({{"type", "upgrade.result"},
             {"outcome", "done"},
             {"cause", ""},
             {"elapsed_ms", 1200},
             {"timeline", json::array({{{"phase", "spawning"}, {"at_ms", 0}},
                                       {{"phase", "handshake"}, {"at_ms", 3}},
                                       {{"phase", "cutover"}, {"at_ms", 1203}},
                                       {{"phase", "done"}, {"at_ms", 1204}}})}});
  m.observe({{"type", "upgrade.result"}, {"outcome", "rolled-back"}, {"cause", "timeout"}, {"elapsed_ms", 30000}});
  const std::string out = m.render({});
  CHECK(has_line(out, R"(hotrestart_upgrades_total{outcome="done",cause=""} 1)"));
  CHECK(has_line(out, R"(hotrestart_upgrades_total{outcome="rolled-back",cause="timeout"} 1)"));
  CHECK(has_line(out, R"(hotrestart_upgrade_phase_duration_seconds_bucket{phase="spawning",le="0.001"} 0)"));
  CHECK(has_line(out, R"(hotrestart_upgrade_phase_duration_seconds_bucket{phase="spawning",le="0.005"} 1)"));
  CHECK(has_line(out, R"(hotrestart_upgrade_phase_duration_seconds_bucket{phase="spawning",le="60"} 1)"));
  CHECK(has_line(out, R"(hotrestart_upgrade_phase_duration_seconds_bucket{phase="handshake",le="1"} 0)"));
  CHECK(has_line(out, R"(hotrestart_upgrade_phase_duration_seconds_bucket{phase="handshake",le="2.5"} 1)"));
  CHECK(has_line(out, R"(hotrestart_upgrade_phase_duration_seconds_sum{phase="handshake"} 1.2)"));
  CHECK(has_line(out, R"(hotrestart_upgrade_duration_seconds_bucket{outcome="rolled-back",le="30"} 1)"));
  // The terminal phase has no duration.
  CHECK(out.find(R"(phase="done")") == std::string::npos);
}
