// The CLI's side of the control protocol: `hotrestart upgrade`, `status`, `stop` and the others (see client.h).
#include "client.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <memory>
#include <thread>
#include <variant>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <hotrestart/fd.h>
#include "client_internal.h"
#include "control_protocol.h"
#include "duration.h"

namespace hotrestart {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

void say_error(const std::string& text) {
  fmt::print(stderr, "hotrestart: {}\n", text);
}

Result<Fd> connect_control(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path)
    return Error::message(fmt::format("control socket path '{}' is too long", path));
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  Fd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return Error::from_errno("socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    const int err = errno;
    switch (err) {
      case ENOENT:
        return Error::message(
            fmt::format("no supervisor at {} (is `hotrestart run` running with this --name or --control?)", path), err);
      case ECONNREFUSED:
        return Error::message(fmt::format("no supervisor is listening at {} (the socket file is stale)", path), err);
      case EACCES:
        return Error::message(fmt::format("permission denied: {} belongs to another user", path));
      default:
        return Error::from_errno(fmt::format("connect {}", path), err);
    }
  }
  return fd;
}

Status send_all(int fd, const std::string& bytes) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno("send");
    done += static_cast<std::size_t>(n);
  }
  return {};
}

// Reads answer lines until the supervisor closes the connection. `deadline` bounds the
// wait for each line (nullopt: wait as long as the supervisor takes; its phases have
// their own deadlines).
class LineSource {
 public:
  explicit LineSource(int fd) : fd_(fd) {}

  // A parsed line; an empty optional at EOF or on error (then `error()` says which).
  std::optional<json> next(std::optional<std::chrono::milliseconds> timeout) {
    while (true) {
      if (auto line = reader_.next_line()) {
        auto parsed = parse_control_line(*line, kControlMaxAnswer);
        if (!parsed) {
          error_ = "the supervisor sent an unreadable answer: " + parsed.error().text();
          return std::nullopt;
        }
        return std::move(parsed).value();
      }
      if (reader_.overflowed()) {
        error_ = fmt::format("the supervisor sent an answer over {} MiB", kControlMaxAnswer >> 20);
        return std::nullopt;
      }
      pollfd p{fd_, POLLIN, 0};
      const int wait_ms = timeout ? static_cast<int>(timeout->count()) : -1;
      const int rc = ::poll(&p, 1, wait_ms);
      if (rc < 0 && errno == EINTR) continue;
      if (rc == 0) {
        error_ = "timed out waiting for the supervisor";
        return std::nullopt;
      }
      char buf[64 * 1024];
      const ssize_t n = ::read(fd_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        eof_ = n == 0;
        if (n < 0) {
          errno_ = errno;
          error_ = fmt::format("read: {}", std::strerror(errno));
        }
        return std::nullopt;
      }
      reader_.feed(std::string_view(buf, static_cast<std::size_t>(n)));
    }
  }
  bool eof() const { return eof_; }
  // The supervisor ended the connection: closed it, or reset it (it exited with the request unread).
  bool ended() const { return eof_ || errno_ == ECONNRESET; }
  const std::string& error() const { return error_; }

 private:
  int fd_;
  LineReader reader_{kControlMaxAnswer};
  bool eof_ = false;
  int errno_ = 0;
  std::string error_;
};

// The exit code of a protocol error answer: a request the supervisor refused for the state it is in
// is "refused"; anything else is the request's fault.
int exit_code_of_error(const json& answer) {
  const std::string code = answer.value("code", "");
  if (code == "failed") return kExitRolledBack;  // upgrade --self: the new binary failed its check.
  if (code == "invalid") return kExitInvalid;    // reload: the configuration was refused.
  return code == "busy" || code == "stopping" || code == "unavailable" || code == "reverted" ? kExitRefused
                                                                                             : kExitUsage;
}

// Maps a protocol error answer to the exit code and message.
int report_error_answer(const json& answer) {
  say_error(answer.value("error", "the supervisor refused the request"));
  return exit_code_of_error(answer);
}

// The exit code of a failed connect or send: "no supervisor" when none runs at the socket.
int exit_code_of_unreachable(const Error& error) {
  return error.code() == ENOENT || error.code() == ECONNREFUSED ? kExitNoSupervisor : kExitUsage;
}

Result<Fd> open_and_send(const std::string& path, const json& request) {
  auto fd = connect_control(path);
  if (!fd) return fd;
  // A supervisor that refuses this peer answers and closes without reading the request,
  // so a failed send is not the end: the explanation may be waiting to be read.
  if (auto ok = send_all(fd->get(), to_line(request));
      !ok && ok.error().code() != EPIPE && ok.error().code() != ECONNRESET) {
    return ok.error();
  }
  return fd;
}

std::string age_text(std::int64_t ms) {
  const std::int64_t s = ms / 1000;
  if (s < 60) return format_duration(std::chrono::milliseconds(ms < 1000 ? ms : s * 1000));
  if (s < 3600) return fmt::format("{}m{}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{}m", s / 3600, (s % 3600) / 60);
  return fmt::format("{}d{}h", s / 86400, (s % 86400) / 3600);
}

namespace {

// "1.5 GiB", "312 KiB", "17 B".
std::string bytes_text(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.1f} {}", bytes, units[u]);
}

// One line per section as it is imported; on a terminal, with a bar over the sections.
void print_state_progress(const json& e) {
  const auto total = e.value("sections_total", std::size_t{0});
  const auto done = e.value("sections_done", std::size_t{0});
  const auto micros = e.value("micros", std::uint64_t{0});
  const double bytes = static_cast<double>(e.value("bytes", std::uint64_t{0}));
  std::string what;
  if (e.value("ok", false)) {
    const double secs = static_cast<double>(micros) / 1e6;
    what = fmt::format("{}: schema {}, {} in {:.3f} s", e.value("section", ""), e.value("version", 0),
                       bytes_text(bytes), secs);
    if (secs > 0) what += fmt::format(" ({}/s)", bytes_text(bytes / secs));
  } else {
    what = fmt::format("{}: starts cold: {}", e.value("section", ""), e.value("reason", ""));
  }
  std::string bar;
  if (::isatty(STDOUT_FILENO) == 1 && total > 0) {
    constexpr std::size_t kWidth = 20;
    const std::size_t filled = std::min(kWidth, done * kWidth / total);
    bar = fmt::format("[{}{}] {}/{} ", std::string(filled, '#'), std::string(kWidth - filled, '.'), done, total);
  }
  fmt::print("[{:>7}] {:<18} {}{}; {} so far\n", format_duration(std::chrono::milliseconds(e.value("elapsed_ms", 0))),
             "state", bar, what, bytes_text(static_cast<double>(e.value("bytes_done", std::uint64_t{0}))));
}

// "2026-12-06 14:03:07", local time.
std::string time_text(std::int64_t ms) {
  if (ms <= 0) return "-";
  const std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char out[32];
  std::strftime(out, sizeof out, "%Y-%m-%d %H:%M:%S", &tm);
  return out;
}

// run --config: each configuration's live version, a save --watch-config could not apply, and a
// reload under way.
void print_configs(const json& c) {
  if (!c.is_object()) return;
  for (const auto& one : c.value("configs", json::array())) {
    fmt::print("config:      {} version {} ({} bytes, sha256 {}, {} {}) from {}\n", one.value("name", ""),
               one.value("version", std::uint64_t{0}), one.value("bytes", std::uint64_t{0}),
               one.value("sha256", "").substr(0, 12), one.value("origin", ""),
               time_text(one.value("applied_ms", std::int64_t{0})), one.value("path", ""));
    if (const json& w = one.value("watch_error", json()); w.is_object())
      fmt::print("  last save refused at {}: {}\n", time_text(w.value("time_ms", std::int64_t{0})),
                 w.value("message", ""));
  }
  if (const json& r = c.value("reload", json()); r.is_object()) {
    std::string names;
    for (const auto& n : r.value("configs", json::array()))
      names += fmt::format("{}{} version {}", names.empty() ? "" : ", ", n.value("name", ""),
                           n.value("version", std::uint64_t{0}));
    fmt::print("reload:      {} {} for {} ms\n", names, r.value("phase", ""), r.value("elapsed_ms", std::int64_t{0}));
  }
}

// The hold of the upgrade in progress, if it asked for one.
void print_hold(const json& hold) {
  if (!hold.is_object()) return;
  const bool holding = hold.value("holding", false);
  const auto ends = hold.value("ends_at_ms", json());
  if (hold.value("mode", "") == "manual") {
    fmt::print("hold:        manual; {}\n", holding ? "both generations serve until `hotrestart promote` or `abort`"
                                                    : "it begins once the new generation is healthy");
  } else if (holding && ends.is_number()) {
    fmt::print("hold:        {}; both generations serve until {} (`hotrestart promote` or `abort` ends it now)\n",
               format_duration(std::chrono::milliseconds(hold.value("duration_ms", 0))),
               time_text(ends.get<std::int64_t>()));
  } else {
    fmt::print("hold:        {}; it begins once the new generation is healthy\n",
               format_duration(std::chrono::milliseconds(hold.value("duration_ms", 0))));
  }
}

}  // namespace

void print_status(const json& s) {
  fmt::print("supervisor \"{}\": pid {}, up {}{}\n", s.value("name", ""), s.value("pid", 0),
             age_text(s.value("uptime_ms", std::int64_t{0})), s.value("stopping", false) ? ", STOPPING" : "");
  fmt::print("control:     {}\n", s.value("control", ""));
  for (const auto& l : s.value("listeners", json::array())) {
    fmt::print("listener:    {:<12} {}{}\n", l.value("name", ""), l.value("address", ""),
               l.value("adopted", false) ? "  (socket activation)" : "");
  }
  if (const json& m = s.value("metrics", json()); m.is_object()) {
    const std::string address = m.value("address", "");
    fmt::print("metrics:     {} ({} scrapes)\n",
               address.starts_with("unix:") ? address : fmt::format("http://{}/metrics", address),
               m.value("scrapes", std::uint64_t{0}));
  }
  fmt::print("ready:       {} (timeout {} ms); drain: {} (timeout {} ms)\n", s["ready"].value("mode", ""),
             s["ready"].value("timeout_ms", 0), s["drain"].value("signal", ""), s["drain"].value("timeout_ms", 0));
  fmt::print("generations:\n");
  const auto& gens = s.value("generations", json::array());
  if (gens.empty()) fmt::print("  (none running)\n");
  for (const auto& g : gens) {
    std::string cmd;
    for (const auto& a : g.value("command", json::array()))
      cmd += (cmd.empty() ? "" : " ") + a.get<std::string>();
    // A parked generation is draining, but waits to be resumed rather than to exit.
    const std::string state = g.value("parked", false) ? "parked" : g.value("state", "");
    fmt::print("  #{:<4} pid {:<8} {:<9} {:<10} age {:<8} {}\n", g.value("generation", 0), g.value("pid", 0), state,
               g.value("role", ""), age_text(g.value("age_ms", std::int64_t{0})), cmd);
    if (!g.value("status", "").empty()) fmt::print("        status: {}\n", g.value("status", ""));
    std::string escaped;
    for (const auto& p : g.value("escaped", json::array()))
      escaped += fmt::format("{}pid {} (group {})", escaped.empty() ? "" : ", ", p.value("pid", 0), p.value("pgid", 0));
    if (!escaped.empty()) fmt::print("        outside its process group: {}\n", escaped);
  }
  std::string strays;
  for (const auto& p : s.value("strays", json::array()))
    strays += fmt::format("{}{}", strays.empty() ? "" : ", ", p.get<long long>());
  if (!strays.empty()) fmt::print("strays:      pids {} (orphans of no known generation; ended at stop)\n", strays);
  if (!s["upgrade"].is_null() && s["upgrade"].value("phase", "") == "reading-executable") {
    fmt::print("upgrade:     starting: reading its executable {} for {} ms\n", s["upgrade"].value("executable", ""),
               s["upgrade"].value("elapsed_ms", 0));
  } else if (!s["upgrade"].is_null()) {
    fmt::print("upgrade:     in progress: generation {} in phase {} for {} ms\n", s["upgrade"].value("generation", 0),
               s["upgrade"].value("phase", ""), s["upgrade"].value("elapsed_ms", 0));
    print_hold(s["upgrade"].value("hold", json()));
  }
  const auto& c = s["counters"];
  fmt::print("upgrades:    {} done, {} rolled back, {} reverted; crashes: {} ({} restarts)\n",
             c.value("upgrades_done", 0), c.value("upgrades_rolled_back", 0), c.value("reverts", 0),
             c.value("crashes", 0), c.value("restarts", 0));
  fmt::print("release:     {}", s.value("release", 0));
  if (const auto& w = s.value("watch", json()); w.is_object()) {
    fmt::print(", watched for {} more (release {} comes back if it fails)",
               format_duration(std::chrono::milliseconds(w.value("ends_in_ms", 0))), w.value("previous_release", 0));
  }
  fmt::print("\n");
  if (const auto& h = s.value("health", json()); h.is_object()) {
    fmt::print("health:      {}{}\n", h.value("state", ""),
               h.value("reason", "").empty() ? "" : ": " + h.value("reason", ""));
  }
  if (const auto& r = s.value("releases", json()); r.is_object() && r.value("error", json()).is_string()) {
    fmt::print("history:     not written to {}: {}\n", r.value("dir", ""), r["error"].get<std::string>());
  }
  if (!s["last_upgrade"].is_null()) {
    const auto& u = s["last_upgrade"];
    fmt::print("last upgrade: {} in {} ms: {}\n", u.value("outcome", ""), u.value("elapsed_ms", 0),
               u.value("message", ""));
  }
  if (const auto& t = s.value("last_transfer", json()); t.is_object()) {
    const auto& totals = t["import"];
    if (t.value("from_generation", 0) == 0) {
      fmt::print("last state transfer: to generation {}: nothing imported ({})\n", t.value("to_generation", 0),
                 t.value("note", ""));
    } else if (totals.is_object()) {
      const double secs = static_cast<double>(totals.value("micros", std::uint64_t{0})) / 1e6;
      fmt::print("last state transfer: generation {} -> {}: {} of {} section(s), {} in {:.3f} s\n",
                 t.value("from_generation", 0), t.value("to_generation", 0), totals.value("done", 0),
                 totals.value("sections", 0), bytes_text(static_cast<double>(totals.value("bytes", std::uint64_t{0}))),
                 secs);
    }
    for (const auto& r : t["imported"]) {
      if (r.value("ok", false)) {
        fmt::print("  {:<20} schema {}, {}\n", r.value("section", ""), r.value("version", 0),
                   bytes_text(static_cast<double>(r.value("bytes", std::uint64_t{0}))));
      } else {
        fmt::print("  {:<20} cold: {}\n", r.value("section", ""), r.value("reason", ""));
      }
    }
  }
  print_configs(s.value("configs", json()));
  if (!s["last_error"].is_null()) {
    fmt::print("last error:  {} ({} ago)\n", s["last_error"].value("message", ""),
               age_text(s["last_error"].value("age_ms", std::int64_t{0})));
  }
}

// An open request: the connection, its reader, and the first answer.
struct Exchange {
  Fd fd;
  std::unique_ptr<LineSource> source;
  json first;
};

// Sends `request` and reads the first answer within `timeout` (nullopt: as long as the supervisor
// takes). On failure (no supervisor, no answer, an error answer) it prints why and returns the exit
// code instead.
std::variant<Exchange, int> ask(const std::string& path, const json& request,
                                std::optional<std::chrono::milliseconds> timeout = std::chrono::milliseconds(10'000)) {
  auto fd = open_and_send(path, request);
  if (!fd) {
    say_error(fd.error().text());
    return exit_code_of_unreachable(fd.error());
  }
  Exchange ex{std::move(fd).value(), nullptr, {}};
  ex.source = std::make_unique<LineSource>(ex.fd.get());
  auto answer = ex.source->next(timeout);
  if (!answer) {
    // Closed or reset with no answer: the supervisor is going away (stopping, or killed), so none runs
    // here for this question; a timeout or an unreadable answer is another matter.
    const bool gone = ex.source->ended();
    say_error(gone ? "the supervisor closed the connection without an answer: it is stopping, or was killed"
                   : ex.source->error());
    return gone ? kExitNoSupervisor : kExitUsage;
  }
  if (answer->value("type", "") == "error") return report_error_answer(*answer);
  ex.first = std::move(answer).value();
  return ex;
}

}  // namespace

int client_ask(const std::string& control_path, const nlohmann::json& request,
               const std::function<int(const nlohmann::json& answer)>& handle,
               std::optional<std::chrono::milliseconds> timeout) {
  auto reply = ask(control_path, request, timeout);
  if (auto* code = std::get_if<int>(&reply)) return *code;
  return handle(std::get<Exchange>(reply).first);
}

void client_say_error(const std::string& text) {
  say_error(text);
}

std::string client_time_text(std::int64_t ms) {
  return time_text(ms);
}

namespace {

// Asks one question (`cmd` with no arguments) and prints the answer as JSON or through `print`.
int ask_and_print(const std::string& control_path, std::string_view cmd, Output output, void (*print)(const json&)) {
  auto reply = ask(control_path, json{{"v", kControlProtocolVersion}, {"cmd", cmd}});
  if (auto* code = std::get_if<int>(&reply)) return *code;
  json& answer = std::get<Exchange>(reply).first;
  if (output == Output::Json) {
    answer.erase("type");
    fmt::print("{}\n", answer.dump(2));
  } else {
    print(answer);
  }
  return kExitOk;
}

}  // namespace

int client_status(const std::string& control_path, Output output, bool check) {
  if (!check) return ask_and_print(control_path, "status", output, print_status);
  auto reply = ask(control_path, json{{"v", kControlProtocolVersion}, {"cmd", "status"}});
  if (auto* code = std::get_if<int>(&reply)) return *code;
  const json health = std::get<Exchange>(reply).first.value("health", json::object());
  const std::string state = health.value("state", "");
  const std::string reason = health.value("reason", "");
  int code = kExitNotServing;
  if (state == "serving") code = kExitOk;
  if (state == "crash-looping") code = kExitCrashLooping;
  if (state == "reverted") code = kExitReverted;
  if (state == "unhealthy") code = kExitUnhealthy;
  if (output == Output::Json) {
    fmt::print("{}\n", health.dump());
  } else {
    fmt::print("{}{}\n", state.empty() ? "unknown" : state, reason.empty() ? "" : ": " + reason);
  }
  return code;
}

namespace {

// Sends an upgrade or a rollback and follows it to its verdict, printing each event. `what` names
// it in the last line ("upgrade", "rollback").
int follow_deployment(const std::string& control_path, const json& request, Output output, std::string_view what) {
  bool watching = false;  // The verdict came, and the watch window runs (`--wait`).
  auto fd = open_and_send(control_path, request);
  if (!fd) {
    say_error(fd.error().text());
    return exit_code_of_unreachable(fd.error());
  }
  LineSource source(fd->get());
  while (true) {
    auto answer = source.next(std::nullopt);
    if (!answer) {
      say_error(source.error().empty()
                    ? "the supervisor closed the connection before the verdict; check `hotrestart status`"
                    : source.error());
      return kExitUsage;
    }
    const std::string type = answer->value("type", "");
    if (output == Output::Json) fmt::print("{}\n", answer->dump());
    if (type == "error") {
      if (output == Output::Json) return exit_code_of_error(*answer);
      return report_error_answer(*answer);
    }
    if (type == "event" && output == Output::Human) {
      fmt::print("[{:>7}] {:<18} {}\n", format_duration(std::chrono::milliseconds(answer->value("elapsed_ms", 0))),
                 answer->value("phase", ""), answer->value("message", ""));
    }
    if (type == "state" && output == Output::Human) print_state_progress(*answer);
    if (type == "watch") {
      const bool ok = answer->value("ok", false);
      if (output == Output::Human) {
        if (ok) {
          fmt::print("{}\n", answer->value("message", ""));
        } else {
          fmt::print(stderr, "hotrestart: {}\n", answer->value("message", ""));
        }
      }
      std::fflush(stdout);
      return ok ? kExitOk : kExitRolledBack;
    }
    if (type == "result") {
      const bool ok = answer->value("ok", false);
      watching = ok && request.value("wait", false) && answer->value("watch_window_ms", 0) > 0;
      if (output == Output::Human) {
        const auto elapsed = format_duration(std::chrono::milliseconds(answer->value("elapsed_ms", 0)));
        if (ok) {
          fmt::print("{} succeeded in {}: {}\n", what, elapsed, answer->value("message", ""));
        } else {
          fmt::print(stderr, "hotrestart: {} failed after {}: {}\n", what, elapsed, answer->value("message", ""));
        }
      }
      if (watching && output == Output::Human) {
        fmt::print("watching release {} for {} (--watch-window)...\n", answer->value("release", 0),
                   format_duration(std::chrono::milliseconds(answer->value("watch_window_ms", 0))));
      }
      std::fflush(stdout);
      if (!watching) return ok ? kExitOk : kExitRolledBack;
    }
    std::fflush(stdout);
  }
}

void print_history(const json& h) {
  const auto active = h.value("active_release", std::uint64_t{0});
  const auto& state = h.value("state", json::object());
  fmt::print("releases in {}{}\n", state.value("dir", ""),
             state.value("persistent", false) ? "" : " (not written: kept in memory only)");
  if (state.contains("error") && state["error"].is_string()) {
    fmt::print("  write error: {}\n", state["error"].get<std::string>());
  }
  fmt::print("{:>3} {:<1} {:<19}  {:<11} {:<11}  {:<12}  {}\n", "#", "", "started", "origin", "outcome", "sha256",
             "command");
  for (const auto& r : h.value("releases", json::array())) {
    std::string command;
    for (const auto& a : r.value("command", json::array()))
      command += (command.empty() ? "" : " ") + a.get<std::string>();
    const auto number = r.value("number", std::uint64_t{0});
    std::string origin = r.value("origin", "");
    if (r.value("rollback_of", std::uint64_t{0}) != 0) origin += fmt::format(" {}", r.value("rollback_of", 0));
    fmt::print("{:>3} {:<1} {:<19}  {:<11} {:<11}  {:<12}  {}\n", number, number == active ? "*" : "",
               time_text(r.value("started_ms", std::int64_t{0})), origin, r.value("outcome", ""),
               r.value("sha256", "").substr(0, 12), command);
    if (!r.value("reason", "").empty()) fmt::print("{:>6}{}\n", "", r.value("reason", ""));
  }
}

// The request's "hold" field (docs/protocol.md): milliseconds, or "manual".
void add_hold(json& request, const Hold& hold) {
  if (hold.kind == HoldKind::Timed) request["hold"] = hold.duration.count();
  if (hold.kind == HoldKind::Manual) request["hold"] = "manual";
}

}  // namespace

int client_upgrade(const std::string& control_path, std::optional<std::string> exec,
                   std::optional<std::vector<std::string>> command, const Deploy& deploy) {
  json request{{"v", kControlProtocolVersion}, {"cmd", "upgrade"}};
  if (exec) request["exec"] = *exec;
  if (command) request["command"] = *command;
  if (deploy.wait) request["wait"] = true;
  if (deploy.force) request["force"] = true;
  add_hold(request, deploy.hold);
  if (deploy.preflight) request["preflight"] = *deploy.preflight;
  return follow_deployment(control_path, request, deploy.output, "upgrade");
}

int client_rollback(const std::string& control_path, std::optional<std::uint64_t> to, const Deploy& deploy) {
  json request{{"v", kControlProtocolVersion}, {"cmd", "rollback"}};
  if (to) request["to"] = *to;
  if (deploy.wait) request["wait"] = true;
  add_hold(request, deploy.hold);
  if (deploy.preflight) request["preflight"] = *deploy.preflight;
  return follow_deployment(control_path, request, deploy.output, "rollback");
}

int client_end_hold(const std::string& control_path, std::string_view command) {
  // The answer comes with the verdict: at once for a promotion, once the new generation has exited
  // for an abort, which the supervisor's --drain-timeout bounds.
  auto reply = ask(control_path, json{{"v", kControlProtocolVersion}, {"cmd", command}}, std::nullopt);
  if (auto* code = std::get_if<int>(&reply)) return *code;
  // An abort's verdict says already that it rolled back, and who asked.
  const std::string message = std::get<Exchange>(reply).first.value("message", "");
  fmt::print("{}{}\n", command == "promote" ? "promoted: " : "", message);
  return kExitOk;
}

int client_history(const std::string& control_path, Output output) {
  return ask_and_print(control_path, "history", output, print_history);
}

namespace {

// "2026-12-06T22:30:44.123Z #12 upgrade.phase generation 2 release 2: ... (uid 1000, pid 4321)"
void print_event(const json& e) {
  std::string line =
      fmt::format("{} #{} {}", e.value("time", "?"), e.value("seq", std::uint64_t{0}), e.value("type", "?"));
  if (e.contains("generation") && e["generation"].is_number() && e["generation"] != 0)
    line += fmt::format(" generation {}", e["generation"].get<std::uint64_t>());
  if (e.contains("release") && e["release"].is_number() && e["release"] != 0)
    line += fmt::format(" release {}", e["release"].get<std::uint64_t>());
  if (e.contains("phase") && e["phase"].is_string()) line += " " + e["phase"].get<std::string>();
  if (e.contains("command") && e["command"].is_string()) line += " " + e["command"].get<std::string>();
  if (e.contains("signal") && e["signal"].is_string()) line += " " + e["signal"].get<std::string>();
  // config.*: the configuration, its version and how it came.
  if (e.contains("name") && e["name"].is_string()) line += " " + e["name"].get<std::string>();
  if (e.contains("version") && e["version"].is_number())
    line += fmt::format(" version {}", e["version"].get<std::uint64_t>());
  if (e.contains("origin") && e["origin"].is_string() && e.value("type", "").starts_with("config."))
    line += " (" + e["origin"].get<std::string>() + ")";
  if (e.contains("reason") && e["reason"].is_string() && e.value("type", "").starts_with("config."))
    line += ": " + e["reason"].get<std::string>();
  if (e.contains("status") && e["status"].is_string()) line += ": " + e["status"].get<std::string>();
  if (e.contains("message") && e["message"].is_string()) line += ": " + e["message"].get<std::string>();
  const bool asked = e.contains("uid") && e["uid"].is_number();
  if (asked) line += fmt::format(" (uid {}, pid {})", e["uid"].get<std::int64_t>(), e.value("pid", std::int64_t{-1}));
  fmt::print("{}\n", line);
}

}  // namespace

int client_events(const std::string& control_path, Output output, std::uint64_t last, bool follow) {
  auto reply =
      ask(control_path, json{{"v", kControlProtocolVersion}, {"cmd", "events"}, {"last", last}, {"follow", follow}});
  if (auto* code = std::get_if<int>(&reply)) return *code;
  Exchange& ex = std::get<Exchange>(reply);
  if (const std::string error = ex.first.value("error", ""); !error.empty())
    say_error(fmt::format("the event log cannot be written ({}); these are the events kept in memory", error));
  while (auto answer = ex.source->next(std::nullopt)) {
    const std::string type = answer->value("type", "");
    if (type == "end") return kExitOk;
    if (type != "logged" || !(*answer)["event"].is_object()) continue;
    if (output == Output::Json) {
      fmt::print("{}\n", (*answer)["event"].dump(-1, ' ', false, json::error_handler_t::replace));
    } else {
      print_event((*answer)["event"]);
    }
    std::fflush(stdout);
  }
  if (follow && ex.source->error().empty()) return kExitOk;  // The supervisor stopped.
  say_error(ex.source->error().empty() ? "the supervisor closed the connection before the last event"
                                       : ex.source->error());
  return kExitUsage;
}

int client_stop(const std::string& control_path, bool wait) {
  auto reply = ask(control_path, json{{"v", kControlProtocolVersion}, {"cmd", "stop"}});
  if (auto* code = std::get_if<int>(&reply)) return *code;
  Exchange& ex = std::get<Exchange>(reply);
  fmt::print("stopping supervisor pid {}\n", ex.first.value("pid", 0));
  std::fflush(stdout);
  if (!wait) return kExitOk;
  // The process at the other end, as the kernel names it (in this pid namespace), held by a pidfd
  // while it is certainly alive: it still holds the connection.
  Fd supervisor;
  ucred peer{};
  socklen_t peer_len = sizeof peer;
  if (::getsockopt(ex.fd.get(), SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) == 0 && peer.pid > 0) {
    const long raw = ::syscall(SYS_pidfd_open, peer.pid, 0);
    if (raw >= 0) supervisor.reset(static_cast<int>(raw));
  }
  // The supervisor keeps this connection open until it exits.
  while (ex.source->next(std::nullopt)) {
  }
  // The connection closes a moment before the process is gone, with its listening sockets and its
  // state directory's lock: "stopped" is said only then, so that a `run` right after can take them.
  if (supervisor) {
    pollfd p{supervisor.get(), POLLIN, 0};
    while (::poll(&p, 1, 30'000) < 0 && errno == EINTR) {
    }
  }
  fmt::print("stopped\n");
  return kExitOk;
}

int client_self_upgrade(const std::string& control_path, std::optional<std::string> exec) {
  auto before = ask(control_path, json{{"v", kControlProtocolVersion}, {"cmd", "status"}});
  if (auto* code = std::get_if<int>(&before)) return *code;
  const std::int64_t started = std::get<Exchange>(before).first.value("started_ms", std::int64_t{0});
  json request{{"v", kControlProtocolVersion}, {"cmd", "self-upgrade"}};
  if (exec) request["exec"] = *exec;
  auto reply = ask(control_path, request, std::chrono::milliseconds(30'000));
  if (auto* code = std::get_if<int>(&reply)) return *code;
  Exchange& ex = std::get<Exchange>(reply);
  const pid_t pid = ex.first.value("pid", 0);
  fmt::print("supervisor pid {} runs {} in place ({})\n", pid, ex.first.value("exec", "?"),
             ex.first.value("checked", ""));
  std::fflush(stdout);
  // The connection ends with the exec; the new image answers once it has taken everything over.
  while (ex.source->next(std::nullopt)) {
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    auto fd = open_and_send(control_path, json{{"v", kControlProtocolVersion}, {"cmd", "status"}});
    if (fd) {
      LineSource source(fd->get());
      if (auto s = source.next(std::chrono::milliseconds(2'000));
          s && s->value("type", "") == "status" && s->value("started_ms", std::int64_t{0}) != started) {
        const json& error = (*s)["last_error"];
        const std::string note = error.is_object() ? error.value("message", "") : "";
        if (note.starts_with("upgrade --self:")) {
          say_error(fmt::format("{}; supervisor pid {} runs {} again", note, s->value("pid", 0),
                                s->value("executable", "?")));
          return kExitRolledBack;
        }
        fmt::print("upgrade succeeded: supervisor pid {} runs {}; its generations served throughout\n",
                   s->value("pid", 0), s->value("executable", "?"));
        return kExitOk;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  say_error("no supervisor answered within 30 s of the exec; see its log");
  return kExitRolledBack;
}

}  // namespace hotrestart
