// The supervisor's metrics and their text exposition (see metrics.h).
#include "metrics.h"

#include "build_info.h"
#include "worker_environment.h"

#include <dirent.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>

#include <fmt/format.h>

namespace hotrestart {

using nlohmann::json;

namespace {

constexpr std::string_view kWorkerPrefix = "hotrestart_worker_";

// Appends a number as the text format writes it: whole numbers without a fraction, others in the
// shortest form that reads back the same.
void append_number(std::string& out, double v) {
  if (std::isnan(v)) {
    out += "NaN";
  } else if (std::isinf(v)) {
    out += v > 0 ? "+Inf" : "-Inf";
  } else if (v == std::floor(v) && std::fabs(v) < 1e15) {
    fmt::format_to(std::back_inserter(out), "{}", static_cast<std::int64_t>(v));
  } else {
    fmt::format_to(std::back_inserter(out), "{}", v);
  }
}

void append_label_value(std::string& out, std::string_view value) {
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

// A scrape renders every histogram's bounds: they are written once.
const std::array<std::string, Histogram::kBounds.size()>& bound_texts() {
  static const auto texts = [] {
    std::array<std::string, Histogram::kBounds.size()> t;
    for (std::size_t i = 0; i < t.size(); ++i)
      append_number(t[i], Histogram::kBounds[i]);
    return t;
  }();
  return texts;
}

class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}

  void family(std::string_view name, std::string_view type, std::string_view help) {
    fmt::format_to(std::back_inserter(out_), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  }
  // `labels`: pairs of name and (unescaped) value.
  void sample(std::string_view name, std::initializer_list<std::pair<std::string_view, std::string_view>> labels,
              double value) {
    out_ += name;
    if (labels.size() > 0) {
      out_ += '{';
      bool first = true;
      for (const auto& [k, v] : labels) {
        if (!first) out_ += ',';
        first = false;
        out_ += k;
        out_ += "=\"";
        append_label_value(out_, v);
        out_ += '"';
      }
      out_ += '}';
    }
    out_ += ' ';
    append_number(out_, value);
    out_ += '\n';
  }
  void histogram(std::string_view name, std::string_view label, std::string_view value, const Histogram& h) {
    const std::string bucket = fmt::format("{}_bucket", name);
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < Histogram::kBounds.size(); ++i) {
      cumulative += h.buckets[i];
      sample(bucket, {{label, value}, {"le", bound_texts()[i]}}, static_cast<double>(cumulative));
    }
    sample(bucket, {{label, value}, {"le", "+Inf"}}, static_cast<double>(h.count));
    sample(fmt::format("{}_sum", name), {{label, value}}, h.sum);
    sample(fmt::format("{}_count", name), {{label, value}}, static_cast<double>(h.count));
  }

 private:
  std::string& out_;
};

// The supervisor process's own figures, as Prometheus's process collector names them.
struct ProcessFigures {
  double cpu_seconds = 0;
  double resident_bytes = 0;
  double virtual_bytes = 0;
  double open_fds = 0;
};

ProcessFigures own_process() {
  ProcessFigures p;
  std::ifstream stat("/proc/self/stat");
  std::string line;
  std::getline(stat, line);
  // Fields after the command (which may hold spaces), from the third: state, ppid, ...
  const auto close = line.rfind(')');
  if (close != std::string::npos) {
    std::istringstream fields(line.substr(close + 2));
    std::vector<std::string> f;
    for (std::string x; fields >> x;)
      f.push_back(x);
    // utime and stime are fields 14 and 15 (here 11 and 12, counted from 0 after the command);
    // vsize 23 and rss 24 (20 and 21).
    if (f.size() > 21) {
      const double tick = static_cast<double>(::sysconf(_SC_CLK_TCK));
      p.cpu_seconds = (std::strtod(f[11].c_str(), nullptr) + std::strtod(f[12].c_str(), nullptr)) / tick;
      p.virtual_bytes = std::strtod(f[20].c_str(), nullptr);
      p.resident_bytes = std::strtod(f[21].c_str(), nullptr) * static_cast<double>(::sysconf(_SC_PAGESIZE));
    }
  }
  if (DIR* d = ::opendir("/proc/self/fd")) {
    std::size_t n = 0;
    while (const dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') ++n;
    ::closedir(d);
    p.open_fds = static_cast<double>(n > 0 ? n - 1 : 0);  // Less the one reading the directory.
  }
  return p;
}

}  // namespace

void Histogram::observe(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return;
  for (std::size_t i = 0; i < kBounds.size(); ++i) {
    if (seconds <= kBounds[i]) {
      ++buckets[i];
      break;
    }
  }
  ++count;
  sum += seconds;
}

bool valid_metric_name(std::string_view name) {
  // Prometheus's rule less ':' is the one for environment variable names, bounded.
  return name.size() <= 64 && valid_variable_name(name);
}

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  append_label_value(out, value);
  return out;
}

void Metrics::observe(const json& event) {
  const std::string type = event.value("type", "");
  if (type == "upgrade.result") {
    const std::string outcome = event.value("outcome", "");
    upgrades_[{outcome, event.value("cause", "")}]++;
    upgrade_seconds_[outcome].observe(static_cast<double>(event.value("elapsed_ms", std::int64_t{0})) / 1000.0);
    // Each phase lasted from its entry in the timeline to the next one's.
    const auto timeline = event.find("timeline");
    if (timeline != event.end() && timeline->is_array()) {
      for (std::size_t i = 0; i + 1 < timeline->size(); ++i) {
        const auto& a = (*timeline)[i];
        const auto& b = (*timeline)[i + 1];
        if (!a.is_object() || !b.is_object()) continue;
        const double seconds =
            static_cast<double>(b.value("at_ms", std::int64_t{0}) - a.value("at_ms", std::int64_t{0})) / 1000.0;
        phase_seconds_[a.value("phase", "")].observe(seconds);
      }
    }
  } else if (type == "upgrade.state") {
    const std::string name = event.value("section", "");
    auto it = sections_.find(name);
    if (it == sections_.end()) {
      if (sections_.size() >= kMaxSections) {
        ++dropped_;
        return;
      }
      it = sections_.emplace(name, Section{}).first;
    }
    Section& s = it->second;
    const bool ok = event.value("ok", false);
    s.imports[ok ? "ok" : "failed"]++;
    if (ok) {
      const auto bytes = event.value("bytes", std::uint64_t{0});
      const double seconds = static_cast<double>(event.value("micros", std::uint64_t{0})) / 1e6;
      s.bytes += bytes;
      s.seconds += seconds;
      s.last_bytes = bytes;
      s.last_seconds = seconds;
    }
  } else if (type == "generation.started") {
    ++generations_started_;
  } else if (type == "generation.draining") {
    ++drains_;
  } else if (type == "generation.exited") {
    exits_[event.value("was", "")]++;
    if (event.value("forced", false)) ++drain_kills_;
    workers_.erase(event.value("generation", std::uint64_t{0}));
  } else if (type == "signal") {
    ++signals_;
  }
}

void Metrics::count_request(std::string_view command) {
  requests_[std::string(command)]++;
}

std::vector<std::string> Metrics::set_worker_gauges(std::uint64_t generation, std::uint64_t release,
                                                    const std::vector<std::string>& lines) {
  std::vector<std::string> refused;
  WorkerGauges* gauges = nullptr;
  for (const std::string& text : lines) {
    const std::string_view line = text;
    const auto space = line.find(' ');
    const std::string_view name = line.substr(0, space);
    const std::string value_text(space == std::string_view::npos ? std::string_view() : line.substr(space + 1));
    if (!valid_metric_name(name)) {
      refused.push_back(fmt::format("metric name '{}' is not 1-64 of [a-zA-Z0-9_] starting with a letter or '_'",
                                    name.substr(0, 64)));
      continue;
    }
    char* rest = nullptr;
    const double value = std::strtod(value_text.c_str(), &rest);
    if (value_text.empty() || rest == nullptr || *rest != '\0' || !std::isfinite(value)) {
      refused.push_back(fmt::format("metric {}: value '{}' is not a finite number", name, value_text.substr(0, 32)));
      continue;
    }
    if (gauges == nullptr) {
      auto it = workers_.find(generation);
      if (it == workers_.end()) {
        if (workers_.size() >= kMaxWorkerGenerations) {
          ++dropped_;
          refused.push_back("too many generations publish metrics");
          return refused;
        }
        it = workers_.emplace(generation, WorkerGauges{release, {}}).first;
      }
      gauges = &it->second;
    }
    auto slot = gauges->values.find(std::string(name));
    if (slot == gauges->values.end()) {
      if (gauges->values.size() >= kMaxWorkerGauges) {
        ++dropped_;
        refused.push_back(
            fmt::format("metric {}: a generation may publish at most {} metrics", name, kMaxWorkerGauges));
        continue;
      }
      gauges->values.emplace(std::string(name), value);
    } else {
      slot->second = value;
    }
  }
  return refused;
}

std::string Metrics::render(const Snapshot& now) {
  ++scrapes_;
  std::string out;
  out.reserve(16 * 1024);
  Writer w(out);

  w.family("hotrestart_build_info", "gauge", "The supervisor's version and the commit it was built from (always 1).");
  w.sample("hotrestart_build_info", {{"version", HOTRESTART_VERSION_STRING}, {"commit", hotrestart_build_commit()}}, 1);
  w.family("hotrestart_start_time_seconds", "gauge", "When the supervisor started, in seconds since the epoch.");
  w.sample("hotrestart_start_time_seconds", {}, now.start_time_seconds);
  w.family("hotrestart_generations", "gauge", "Generations by state.");
  for (const auto& [state, n] : now.generations)
    w.sample("hotrestart_generations", {{"state", state}}, static_cast<double>(n));
  w.family("hotrestart_active_generation", "gauge", "The number of the generation that serves (0: none).");
  w.sample("hotrestart_active_generation", {}, static_cast<double>(now.active_generation));
  w.family("hotrestart_release_info", "gauge",
           "The release that serves: its number, how it came, and its executable's SHA-256 prefix (always 1).");
  const std::string release = fmt::format("{}", now.release);
  w.sample("hotrestart_release_info",
           {{"release", release}, {"origin", now.release_origin}, {"sha256", now.release_sha256}}, 1);
  w.family("hotrestart_upgrade_in_progress", "gauge", "1 while an upgrade runs.");
  w.sample("hotrestart_upgrade_in_progress", {}, now.upgrade_in_progress ? 1 : 0);
  w.family("hotrestart_stopping", "gauge", "1 once the supervisor is stopping.");
  w.sample("hotrestart_stopping", {}, now.stopping ? 1 : 0);
  w.family("hotrestart_listeners", "gauge", "Listening sockets the supervisor holds.");
  w.sample("hotrestart_listeners", {}, static_cast<double>(now.listeners));

  w.family("hotrestart_upgrades_total", "counter",
           "Upgrades by outcome (done, rolled-back) and cause of a rollback (the input that failed it).");
  for (const auto& [key, n] : upgrades_)
    w.sample("hotrestart_upgrades_total", {{"outcome", key.first}, {"cause", key.second}}, static_cast<double>(n));
  w.family("hotrestart_upgrade_duration_seconds", "histogram", "Upgrades from their request to their verdict.");
  for (const auto& [outcome, h] : upgrade_seconds_)
    w.histogram("hotrestart_upgrade_duration_seconds", "outcome", outcome, h);
  w.family("hotrestart_upgrade_phase_duration_seconds", "histogram", "Time spent in each phase of an upgrade.");
  for (const auto& [phase, h] : phase_seconds_)
    w.histogram("hotrestart_upgrade_phase_duration_seconds", "phase", phase, h);

  w.family("hotrestart_state_section_imports_total", "counter",
           "State sections a new generation imported (ok) or started cold (failed).");
  for (const auto& [name, s] : sections_)
    for (const auto& [outcome, n] : s.imports)
      w.sample("hotrestart_state_section_imports_total", {{"section", name}, {"outcome", outcome}},
               static_cast<double>(n));
  w.family("hotrestart_state_section_bytes_total", "counter", "Bytes of state imported, by section.");
  for (const auto& [name, s] : sections_)
    w.sample("hotrestart_state_section_bytes_total", {{"section", name}}, static_cast<double>(s.bytes));
  w.family("hotrestart_state_section_seconds_total", "counter",
           "Seconds new generations spent importing state, by section.");
  for (const auto& [name, s] : sections_)
    w.sample("hotrestart_state_section_seconds_total", {{"section", name}}, s.seconds);
  w.family("hotrestart_state_section_last_bytes", "gauge", "Bytes of the section's last import.");
  for (const auto& [name, s] : sections_)
    w.sample("hotrestart_state_section_last_bytes", {{"section", name}}, static_cast<double>(s.last_bytes));
  w.family("hotrestart_state_section_last_seconds", "gauge", "Seconds of the section's last import.");
  for (const auto& [name, s] : sections_)
    w.sample("hotrestart_state_section_last_seconds", {{"section", name}}, s.last_seconds);
  w.family("hotrestart_state_section_last_bytes_per_second", "gauge", "The rate of the section's last import.");
  for (const auto& [name, s] : sections_)
    w.sample("hotrestart_state_section_last_bytes_per_second", {{"section", name}},
             s.last_seconds > 0 ? static_cast<double>(s.last_bytes) / s.last_seconds : 0);

  w.family("hotrestart_generations_started_total", "counter", "Generations started.");
  w.sample("hotrestart_generations_started_total", {}, static_cast<double>(generations_started_));
  w.family("hotrestart_generations_exited_total", "counter", "Generations gone, by the state they were in.");
  for (const auto& [was, n] : exits_)
    w.sample("hotrestart_generations_exited_total", {{"state", was}}, static_cast<double>(n));
  w.family("hotrestart_drains_total", "counter", "Generations asked to drain.");
  w.sample("hotrestart_drains_total", {}, static_cast<double>(drains_));
  w.family("hotrestart_drain_kills_total", "counter",
           "Draining generations killed (SIGKILL) because they outlived --drain-timeout.");
  w.sample("hotrestart_drain_kills_total", {}, static_cast<double>(drain_kills_));
  w.family("hotrestart_draining_stopped_total", "counter",
           "Draining generations stopped early to respect --max-draining.");
  w.sample("hotrestart_draining_stopped_total", {}, static_cast<double>(now.draining_stopped));
  w.family("hotrestart_crashes_total", "counter", "Exits of the serving generation that nobody asked for.");
  w.sample("hotrestart_crashes_total", {}, static_cast<double>(now.crashes));
  w.family("hotrestart_crash_restarts_total", "counter", "Generations started again after a crash.");
  w.sample("hotrestart_crash_restarts_total", {}, static_cast<double>(now.restarts));
  w.family("hotrestart_reverts_total", "counter", "Releases reverted in their watch window.");
  w.sample("hotrestart_reverts_total", {}, static_cast<double>(now.reverts));

  w.family("hotrestart_control_requests_total", "counter", "Control requests, by command.");
  for (const auto& [command, n] : requests_)
    w.sample("hotrestart_control_requests_total", {{"command", command}}, static_cast<double>(n));
  w.family("hotrestart_control_clients", "gauge", "Connections to the control socket.");
  w.sample("hotrestart_control_clients", {}, static_cast<double>(now.control_clients));
  w.family("hotrestart_signals_total", "counter", "Signals the supervisor acted on.");
  w.sample("hotrestart_signals_total", {}, static_cast<double>(signals_));
  w.family("hotrestart_events_total", "counter", "Events recorded in the event log (its sequence number).");
  w.sample("hotrestart_events_total", {}, static_cast<double>(now.events_recorded));
  w.family("hotrestart_metrics_scrapes_total", "counter", "Scrapes of this endpoint, this one included.");
  w.sample("hotrestart_metrics_scrapes_total", {}, static_cast<double>(scrapes_));
  w.family("hotrestart_metrics_dropped_total", "counter",
           "Metrics not kept because a bound was reached (sections, worker metrics).");
  w.sample("hotrestart_metrics_dropped_total", {}, static_cast<double>(dropped_));

  const ProcessFigures self = own_process();
  w.family("process_cpu_seconds_total", "counter", "CPU time of the supervisor process, user and system.");
  w.sample("process_cpu_seconds_total", {}, self.cpu_seconds);
  w.family("process_resident_memory_bytes", "gauge", "Resident memory of the supervisor process.");
  w.sample("process_resident_memory_bytes", {}, self.resident_bytes);
  w.family("process_virtual_memory_bytes", "gauge", "Virtual memory of the supervisor process.");
  w.sample("process_virtual_memory_bytes", {}, self.virtual_bytes);
  w.family("process_open_fds", "gauge", "Open file descriptors of the supervisor process.");
  w.sample("process_open_fds", {}, self.open_fds);
  w.family("process_start_time_seconds", "gauge", "When the supervisor process started, in seconds since the epoch.");
  w.sample("process_start_time_seconds", {}, now.start_time_seconds);

  // The workers' own: one family per name, a sample per generation that publishes it.
  std::map<std::string, std::vector<std::pair<std::uint64_t, const WorkerGauges*>>> by_name;
  for (const auto& [generation, gauges] : workers_)
    for (const auto& [name, value] : gauges.values)
      by_name[name].emplace_back(generation, &gauges);
  for (const auto& [name, publishers] : by_name) {
    const std::string family = fmt::format("{}{}", kWorkerPrefix, name);
    w.family(family, "gauge", "Published by the workers (X_HOTRESTART_METRIC).");
    for (const auto& [generation, gauges] : publishers) {
      const std::string g = fmt::format("{}", generation);
      const std::string r = fmt::format("{}", gauges->release);
      w.sample(family, {{"generation", g}, {"release", r}}, gauges->values.at(name));
    }
  }
  return out;
}

}  // namespace hotrestart
