// The CLI's configuration commands: `hotrestart reload` and `config history | show | diff | rollback`
// (see client.h). show and diff read the kept bytes where the supervisor's history says they are
// (STATE-DIR/configs/NAME/V.conf): the client runs as the supervisor's user, or root.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <hotrestart/fd.h>
#include "client.h"
#include "client_internal.h"
#include "control_protocol.h"

namespace hotrestart {
namespace {

using nlohmann::json;

json request(std::string_view cmd, const std::optional<std::string>& name) {
  json r{{"v", kControlProtocolVersion}, {"cmd", cmd}};
  if (name) r["config"] = *name;
  return r;
}

// A reload or a rollback: the versions now live, one line each.
int print_reloaded(const json& answer, Output output) {
  if (output == Output::Json) {
    json copy = answer;
    copy.erase("type");
    fmt::print("{}\n", copy.dump(2));
    return kExitOk;
  }
  for (const auto& c : answer.value("configs", json::array())) {
    const std::string name = c.value("name", "");
    if (!c.value("changed", false)) {
      fmt::print("configuration {}: unchanged, version {} stays live\n", name, c.value("version", std::uint64_t{0}));
      continue;
    }
    std::string gens;
    for (const auto& g : c.value("generations", json::array()))
      gens += (gens.empty() ? "" : ", ") + std::to_string(g.get<std::uint64_t>());
    fmt::print(
        "configuration {}: version {} is live (was {}){}; {} bytes, sha256 {}; {}\n", name,
        c.value("version", std::uint64_t{0}), c.value("previous", std::uint64_t{0}),
        c.contains("restores") ? fmt::format(", the bytes of version {}", c["restores"].get<std::uint64_t>()) : "",
        c.value("bytes", std::uint64_t{0}), c.value("sha256", "").substr(0, 12),
        gens.empty() ? "no generation reads it now; the next ones start with it"
                     : fmt::format("switched in generation(s) {}", gens));
  }
  return kExitOk;
}

// The history entry of `version` (0: the live one), or null.
const json* entry_of(const json& history, std::uint64_t version) {
  const std::uint64_t wanted = version != 0 ? version : history.value("version", std::uint64_t{0});
  for (const auto& v : history["versions"])
    if (v.value("version", std::uint64_t{0}) == wanted) return &v;
  return nullptr;
}

// The kept file of `version`, or why there is none.
Result<std::string> file_of(const json& history, std::uint64_t version) {
  const json* entry = entry_of(history, version);
  if (entry == nullptr)
    return Error::message(fmt::format("configuration {} has no version {}", history.value("name", ""), version));
  if (!(*entry)["file"].is_string())
    return Error::message(
        fmt::format("the bytes of version {} are no longer kept", entry->value("version", std::uint64_t{0})));
  return (*entry)["file"].get<std::string>();
}

int with_history(const std::string& path, const std::optional<std::string>& name,
                 const std::function<int(const json&)>& then) {
  return client_ask(path, request("config-history", name), then);
}

}  // namespace

int client_reload(const std::string& control_path, std::optional<std::string> name, std::optional<std::string> file,
                  Output output) {
  json r = request("reload", name);
  if (file) r["file"] = *file;
  // A reload waits for every generation's answer, which the supervisor bounds (--reload-timeout).
  return client_ask(
      control_path, r, [&](const json& answer) { return print_reloaded(answer, output); }, std::nullopt);
}

int client_config_rollback(const std::string& control_path, std::optional<std::string> name,
                           std::optional<std::uint64_t> version, Output output) {
  json r = request("config-rollback", name);
  if (version) r["version"] = *version;
  return client_ask(
      control_path, r, [&](const json& answer) { return print_reloaded(answer, output); }, std::nullopt);
}

int client_config_history(const std::string& control_path, std::optional<std::string> name, Output output) {
  return with_history(control_path, name, [&](const json& h) {
    if (output == Output::Json) {
      json copy = h;
      copy.erase("type");
      fmt::print("{}\n", copy.dump(2));
      return kExitOk;
    }
    fmt::print("configuration {} ({}): version {} is live\n", h.value("name", ""), h.value("path", ""),
               h.value("version", std::uint64_t{0}));
    fmt::print("{:>7}  {:<19}  {:<8}  {:<8}  {:<12}  {:>9}  {}\n", "VERSION", "TIME", "OUTCOME", "ORIGIN", "SHA256",
               "BYTES", "WHO / WHY");
    for (const auto& v : h.value("versions", json::array())) {
      std::string who;
      if (v.value("uid", std::int64_t{-1}) >= 0)
        who = fmt::format("uid {}, pid {}", v.value("uid", std::int64_t{-1}), v.value("pid", std::int64_t{-1}));
      if (v.contains("restores"))
        who += fmt::format("{}restores {}", who.empty() ? "" : "; ", v["restores"].get<std::uint64_t>());
      if (!v.value("reason", "").empty()) who += (who.empty() ? "" : "; ") + v.value("reason", "");
      fmt::print("{:>7}  {:<19}  {:<8}  {:<8}  {:<12}  {:>9}  {}{}\n",
                 fmt::format("{}{}", v.value("live", false) ? "*" : "", v.value("version", std::uint64_t{0})),
                 client_time_text(v.value("time_ms", std::int64_t{0})), v.value("outcome", ""), v.value("origin", ""),
                 v.value("sha256", "").substr(0, 12), v.value("bytes", std::uint64_t{0}), who,
                 v["file"].is_string() ? "" : " (bytes no longer kept)");
    }
    return kExitOk;
  });
}

int client_config_show(const std::string& control_path, std::optional<std::string> name,
                       const std::vector<std::uint64_t>& versions) {
  return with_history(control_path, name, [&](const json& h) {
    auto file = file_of(h, versions.empty() ? 0 : versions.front());
    if (!file) {
      client_say_error(file.error().text());
      return kExitRefused;
    }
    Fd fd(::open(file->c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) {
      client_say_error(fmt::format("cannot read {}: {}", *file, std::strerror(errno)));
      return kExitRefused;
    }
    char buf[64 * 1024];
    for (;;) {
      const ssize_t n = ::read(fd.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      std::fwrite(buf, 1, static_cast<std::size_t>(n), stdout);
    }
    std::fflush(stdout);
    return kExitOk;
  });
}

int client_config_diff(const std::string& control_path, std::optional<std::string> name,
                       const std::vector<std::uint64_t>& versions) {
  return with_history(control_path, name, [&](const json& h) {
    std::uint64_t older = 0;
    std::uint64_t newer = 0;
    if (versions.size() == 2) {
      older = versions[0];
      newer = versions[1];
    } else {
      newer = h.value("version", std::uint64_t{0});
      for (const auto& v : h["versions"])
        if (v.value("outcome", "") == "applied" && v.value("version", std::uint64_t{0}) < newer)
          older = v.value("version", std::uint64_t{0});
      if (older == 0) {
        client_say_error(
            fmt::format("configuration {} has no applied version before version {}", h.value("name", ""), newer));
        return kExitRefused;
      }
    }
    auto a = file_of(h, older);
    auto b = file_of(h, newer);
    for (const auto* f : {&a, &b}) {
      if (!*f) {
        client_say_error(f->error().text());
        return kExitRefused;
      }
    }
    std::fflush(stdout);
    const std::string label_a = fmt::format("{} version {}", h.value("name", ""), older);
    const std::string label_b = fmt::format("{} version {}", h.value("name", ""), newer);
    std::vector<std::string> args{"diff", "-u", "--label", label_a, "--label", label_b, *a, *b};
    std::vector<char*> argv;
    for (auto& s : args)
      argv.push_back(s.data());
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
      client_say_error(fmt::format("cannot run diff: {}", std::strerror(errno)));
      return kExitUsage;
    }
    if (pid == 0) {
      ::execvp("diff", argv.data());
      std::fprintf(stderr, "hotrestart: cannot run diff: %s\n", std::strerror(errno));
      ::_exit(2);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    // diff exits 0 (the same) or 1 (they differ): both are answers.
    if (WIFEXITED(status) && WEXITSTATUS(status) <= 1) return kExitOk;
    client_say_error("diff failed");
    return kExitUsage;
  });
}

}  // namespace hotrestart
