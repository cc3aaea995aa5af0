// The guard link's messages: JSON bodies in seqpacket datagrams (guard_protocol.h).
#include "guard_protocol.h"

#include <cerrno>
#include <cstddef>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include <hotrestart/wire/channel.h>

namespace hotrestart {

using json = nlohmann::json;

std::string_view guard_role_name(GuardRole role) {
  switch (role) {
    case GuardRole::Candidate:
      return "candidate";
    case GuardRole::Active:
      return "active";
    case GuardRole::Draining:
      return "draining";
  }
  return "?";
}

json to_json(const GuardGeneration& g) {
  return json{{"number", g.number},
              {"release", g.release},
              {"pid", g.pid},
              {"start", g.start},
              {"role", guard_role_name(g.role)},
              {"kill_at_ns", g.kill_at_ns},
              {"drain_signal", g.drain_signal},
              {"drain_ms", g.drain_ms}};
}

namespace {

// The integer field `key` of `j`, within [low, high].
template <class T>
Result<T> integer_field(const json& j, const char* key, T low, T high) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_integer())
    return Error::message(fmt::format("'{}' is missing or not an integer", key));
  if (it->is_number_unsigned()) {
    const auto v = it->get<std::uint64_t>();
    const bool below = low > 0 && v < static_cast<std::uint64_t>(low);
    if (below || v > static_cast<std::uint64_t>(high)) return Error::message(fmt::format("'{}' is out of range", key));
    return static_cast<T>(v);
  }
  const auto v = it->get<std::int64_t>();
  if (v < static_cast<std::int64_t>(low) || (v > 0 && static_cast<std::uint64_t>(v) > static_cast<std::uint64_t>(high)))
    return Error::message(fmt::format("'{}' is out of range", key));
  return static_cast<T>(v);
}

}  // namespace

Result<GuardGeneration> guard_generation_from_json(const json& j) {
  if (!j.is_object()) return Error::message("a generation is not an object");
  GuardGeneration g;
  auto number = integer_field<std::uint64_t>(j, "number", 1, std::numeric_limits<std::uint64_t>::max());
  if (!number) return number.error();
  auto release = integer_field<std::uint64_t>(j, "release", 0, std::numeric_limits<std::uint64_t>::max());
  if (!release) return release.error();
  auto pid = integer_field<pid_t>(j, "pid", 1, std::numeric_limits<pid_t>::max());
  if (!pid) return pid.error();
  auto start = integer_field<std::uint64_t>(j, "start", 0, std::numeric_limits<std::uint64_t>::max());
  if (!start) return start.error();
  auto kill_at = integer_field<std::int64_t>(j, "kill_at_ns", 0, std::numeric_limits<std::int64_t>::max());
  if (!kill_at) return kill_at.error();
  auto signo = integer_field<int>(j, "drain_signal", 1, 64);
  if (!signo) return signo.error();
  auto drain = integer_field<std::int64_t>(j, "drain_ms", 0, std::int64_t{1} << 40);
  if (!drain) return drain.error();
  g.number = *number;
  g.release = *release;
  g.pid = *pid;
  g.start = *start;
  g.kill_at_ns = *kill_at;
  g.drain_signal = *signo;
  g.drain_ms = *drain;
  const auto role = j.find("role");
  if (role == j.end() || !role->is_string()) return Error::message("'role' is missing");
  const auto name = role->get<std::string>();
  if (name == "candidate") {
    g.role = GuardRole::Candidate;
  } else if (name == "active") {
    g.role = GuardRole::Active;
  } else if (name == "draining") {
    g.role = GuardRole::Draining;
  } else {
    return Error::message(fmt::format("unknown role '{}'", name.substr(0, 32)));
  }
  return g;
}

Status send_guard_message(int sock, json body, std::span<const int> fds, wire::Blocking blocking) {
  body["v"] = kGuardProtocolVersion;
  const std::string text = body.dump();
  const std::string what = fmt::format("guard link: send {}", body.value("op", "?"));
  if (text.size() > kGuardMaxMessage)
    return Error::message(fmt::format("{}: {} bytes, more than {}", what, text.size(), kGuardMaxMessage));
  return wire::send_datagram(sock, std::as_bytes(std::span(text)), fds, blocking, what);
}

Result<GuardMessage> receive_guard_message(int sock) {
  std::vector<std::byte> buffer(kGuardMaxMessage + 1);
  auto raw = wire::receive_datagram(sock, buffer, wire::Blocking::No);
  if (!raw) return raw.error();
  GuardMessage m;
  m.fds = std::move(raw->fds);
  const auto* text = reinterpret_cast<const char*>(raw->bytes.data());
  m.body = json::parse(text, text + raw->bytes.size(), nullptr, false);
  if (m.body.is_discarded() || !m.body.is_object()) return Error::message("guard link: a message is not a JSON object");
  const auto v = m.body.find("v");
  if (v == m.body.end() || !v->is_number_integer() || v->get<std::int64_t>() != kGuardProtocolVersion)
    return Error::message(
        fmt::format("guard link: a message of another version (this end speaks {})", kGuardProtocolVersion));
  const auto op = m.body.find("op");
  if (op == m.body.end() || !op->is_string()) return Error::message("guard link: a message without 'op'");
  return m;
}

}  // namespace hotrestart
