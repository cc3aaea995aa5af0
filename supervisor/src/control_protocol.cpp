// The control protocol's codec: bounded lines, JSON with a depth limit, requests (see
// control_protocol.h).
#include "control_protocol.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <hotrestart/base/text.h>

namespace hotrestart {

using nlohmann::json;

bool LineReader::feed(std::string_view bytes) {
  if (overflowed_) return false;
  const std::size_t from = buffer_.size();
  buffer_.append(bytes);
  // Every line, complete or not, is held to the limit as soon as its bytes arrive: a complete one
  // that came with its newline in the same read is refused at once too, not left to a deadline.
  // Only the new bytes are searched, so that a long answer read in pieces costs linear time.
  for (auto newline = buffer_.find('\n', from); newline != std::string::npos;
       newline = buffer_.find('\n', newline + 1)) {
    if (newline - tail_start_ > max_line_) break;
    tail_start_ = newline + 1;
  }
  const auto newline = buffer_.find('\n', std::max(from, tail_start_));
  const std::size_t length = (newline == std::string::npos ? buffer_.size() : newline) - tail_start_;
  if (length > max_line_) {
    overflowed_ = true;
    buffer_.clear();
    tail_start_ = 0;
    return false;
  }
  return true;
}

std::optional<std::string> LineReader::next_line() {
  // Every newline in the buffer is before tail_start_ (feed found them): nothing after it is searched
  // again, so that a long answer read in pieces costs linear time.
  if (tail_start_ == 0) return std::nullopt;
  const auto pos = std::string_view(buffer_).substr(0, tail_start_).find('\n');
  if (pos == std::string::npos) return std::nullopt;
  if (pos > max_line_) {
    overflowed_ = true;
    buffer_.clear();
    return std::nullopt;
  }
  std::string line = buffer_.substr(0, pos);
  buffer_.erase(0, pos + 1);
  tail_start_ -= pos + 1;  // The first newline is never past the end of the checked lines.
  if (!line.empty() && line.back() == '\r') line.pop_back();
  return line;
}

Result<json> parse_control_line(std::string_view line, std::size_t max_line) {
  if (line.size() > max_line) {
    return Error::message(fmt::format("message of {} bytes is over the {}-byte limit", line.size(), max_line));
  }
  // Depth is checked by a flat scan first, so that no parser ever recurses on hostile input.
  int depth = 0;
  bool in_string = false;
  bool escaped = false;
  for (char c : line) {
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '{' || c == '[') {
      if (++depth > kControlMaxDepth) {
        return Error::message(fmt::format("message nests deeper than {} levels", kControlMaxDepth));
      }
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  // A key twice in one object is refused rather than resolved (the parser would keep the last):
  // another reader of the same line (a proxy, an audit log) may keep the first, and then the two
  // would act on different requests.
  std::vector<std::set<std::string>> keys;  // One set per object being parsed.
  std::string duplicate;
  const json::parser_callback_t check_keys = [&](int, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      keys.emplace_back();
    } else if (event == json::parse_event_t::object_end && !keys.empty()) {
      keys.pop_back();
    } else if (event == json::parse_event_t::key && !keys.empty() && parsed.is_string() &&
               !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  json j = json::parse(line.begin(), line.end(), check_keys, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Error::message("message is not valid JSON");
  if (!duplicate.empty()) {
    return Error::message(fmt::format("message has the key {} twice in one object", quote(duplicate)));
  }
  if (!j.is_object()) return Error::message("message is not a JSON object");
  return j;
}

namespace {

// An upgrade's or a rollback's "hold": a number of milliseconds (1 to a week), or "manual". Absent:
// no hold.
std::optional<std::string> decode_hold(const json& j, Hold& hold) {
  const auto h = j.find("hold");
  if (h == j.end()) return std::nullopt;
  if (h->is_string() && h->get_ref<const std::string&>() == "manual") {
    hold = Hold{HoldKind::Manual, Millis(0)};
    return std::nullopt;
  }
  if (!h->is_number_unsigned() || h->get<std::uint64_t>() == 0 ||
      h->get<std::uint64_t>() > static_cast<std::uint64_t>(kMaxHold.count())) {
    return fmt::format("\"hold\" must be \"manual\" or a number of milliseconds from 1 to {}", kMaxHold.count());
  }
  hold = Hold{HoldKind::Timed, Millis(h->get<std::int64_t>())};
  return std::nullopt;
}

}  // namespace

std::string_view control_command_name(ControlRequest::Command command) {
  switch (command) {
    case ControlRequest::Command::ShowStatus:
      return "status";
    case ControlRequest::Command::Upgrade:
      return "upgrade";
    case ControlRequest::Command::Rollback:
      return "rollback";
    case ControlRequest::Command::History:
      return "history";
    case ControlRequest::Command::Stop:
      return "stop";
    case ControlRequest::Command::Promote:
      return "promote";
    case ControlRequest::Command::Abort:
      return "abort";
    case ControlRequest::Command::SelfUpgrade:
      return "self-upgrade";
    case ControlRequest::Command::Events:
      return "events";
    case ControlRequest::Command::Reload:
      return "reload";
    case ControlRequest::Command::ConfigRollback:
      return "config-rollback";
    case ControlRequest::Command::ConfigHistory:
      return "config-history";
  }
  return "?";
}

std::variant<ControlRequest, ControlRequestError> decode_control_request(const json& j) {
  const auto bad = [](std::string message) { return ControlRequestError{"bad-request", std::move(message)}; };
  const auto v = j.find("v");
  if (v == j.end() || !v->is_number_integer()) return bad("the request has no integer \"v\" (protocol version)");
  if (v->get<std::int64_t>() != kControlProtocolVersion) {
    return ControlRequestError{
        "version", fmt::format("protocol version {} is not supported; this supervisor speaks version {}", v->dump(),
                               kControlProtocolVersion)};
  }
  const auto cmd = j.find("cmd");
  if (cmd == j.end() || !cmd->is_string()) return bad("the request has no \"cmd\" string");
  ControlRequest request;
  const auto& name = cmd->get_ref<const std::string&>();
  // An optional boolean field; false when absent.
  const auto flag = [&](const char* field, bool& out) -> std::optional<ControlRequestError> {
    const auto f = j.find(field);
    if (f == j.end()) return std::nullopt;
    if (!f->is_boolean()) return bad(fmt::format("\"{}\" must be true or false", field));
    out = f->get<bool>();
    return std::nullopt;
  };
  if (name == "status") {
    request.command = ControlRequest::Command::ShowStatus;
  } else if (name == "stop") {
    request.command = ControlRequest::Command::Stop;
  } else if (name == "history") {
    request.command = ControlRequest::Command::History;
  } else if (name == "events") {
    request.command = ControlRequest::Command::Events;
    if (const auto last = j.find("last"); last != j.end()) {
      if (!last->is_number_unsigned() || last->get<std::uint64_t>() > kMaxEvents) {
        return bad(fmt::format("\"last\" must be a number of events from 0 to {}", kMaxEvents));
      }
      request.last = last->get<std::uint64_t>();
    }
    if (auto e = flag("follow", request.follow)) return *e;
  } else if (name == "reload" || name == "config-rollback" || name == "config-history") {
    request.command = name == "reload"            ? ControlRequest::Command::Reload
                      : name == "config-rollback" ? ControlRequest::Command::ConfigRollback
                                                  : ControlRequest::Command::ConfigHistory;
    if (const auto c = j.find("config"); c != j.end()) {
      if (!c->is_string() || c->get_ref<const std::string&>().empty() || c->get_ref<const std::string&>().size() > 128)
        return bad("\"config\" must be a configuration's name (1 to 128 bytes)");
      request.config = c->get<std::string>();
    }
    if (const auto f = j.find("file"); f != j.end() && request.command == ControlRequest::Command::Reload) {
      if (!f->is_string() || f->get_ref<const std::string&>().empty() ||
          f->get_ref<const std::string&>().find('\0') != std::string::npos)
        return bad("\"file\" must be a non-empty path without NUL bytes");
      request.file = f->get<std::string>();
    }
    if (const auto ver = j.find("version");
        ver != j.end() && request.command == ControlRequest::Command::ConfigRollback) {
      if (!ver->is_number_unsigned() || ver->get<std::uint64_t>() == 0)
        return bad("\"version\" must be a configuration version (a positive integer)");
      request.version = ver->get<std::uint64_t>();
    }
  } else if (name == "promote") {
    request.command = ControlRequest::Command::Promote;
  } else if (name == "abort") {
    request.command = ControlRequest::Command::Abort;
  } else if (name == "rollback") {
    request.command = ControlRequest::Command::Rollback;
    if (const auto to = j.find("to"); to != j.end()) {
      if (!to->is_number_unsigned() || to->get<std::uint64_t>() == 0) {
        return bad("\"to\" must be a release number (a positive integer)");
      }
      request.to = to->get<std::uint64_t>();
    }
    if (auto e = flag("wait", request.wait)) return *e;
    if (auto error = decode_hold(j, request.hold)) return bad(*error);
  } else if (name == "self-upgrade") {
    request.command = ControlRequest::Command::SelfUpgrade;
    if (const auto e = j.find("exec"); e != j.end()) {
      if (!e->is_string() || e->get_ref<const std::string&>().empty() ||
          e->get_ref<const std::string&>().find('\0') != std::string::npos)
        return bad("\"exec\" must be a non-empty string without NUL bytes");
      request.exec = e->get<std::string>();
    }
  } else if (name == "upgrade") {
    request.command = ControlRequest::Command::Upgrade;
    if (const auto e = j.find("exec"); e != j.end()) {
      if (!e->is_string() || e->get_ref<const std::string&>().empty())
        return bad("\"exec\" must be a non-empty string");
      request.exec = e->get<std::string>();
    }
    if (const auto c = j.find("command"); c != j.end()) {
      if (!c->is_array() || c->empty() || c->size() > kMaxCommandArgs) {
        return bad(fmt::format("\"command\" must be an array of 1 to {} strings", kMaxCommandArgs));
      }
      std::vector<std::string> argv;
      for (const auto& arg : *c) {
        if (!arg.is_string()) return bad("\"command\" must contain only strings");
        const auto& s = arg.get_ref<const std::string&>();
        if (s.find('\0') != std::string::npos) return bad("\"command\" arguments must not contain NUL bytes");
        argv.push_back(s);
      }
      if (argv.front().empty()) return bad("the program name in \"command\" is empty");
      request.argv = std::move(argv);
    }
    if (request.exec && request.argv) return bad("give \"exec\" or \"command\", not both");
    if (auto e = flag("wait", request.wait)) return *e;
    if (auto e = flag("force", request.force)) return *e;
    if (auto error = decode_hold(j, request.hold)) return bad(*error);
  } else {
    return bad(fmt::format(
        "unknown command '{}' (expected status, upgrade, self-upgrade, rollback, promote, abort, history, events, "
        "reload, config-rollback, config-history or stop)",
        name.substr(0, 64)));
  }
  const bool deploys =
      request.command == ControlRequest::Command::Upgrade || request.command == ControlRequest::Command::Rollback;
  if (const auto p = j.find("preflight"); deploys && p != j.end()) {
    if (!p->is_string()) return bad("\"preflight\" must be a string (empty: no check for this upgrade)");
    if (p->get_ref<const std::string&>().find('\0') != std::string::npos) {
      return bad("\"preflight\" must not contain NUL bytes");
    }
    request.preflight = p->get<std::string>();
  }
  return request;
}

json control_error(std::string_view code, std::string_view message) {
  return json{{"v", kControlProtocolVersion}, {"type", "error"}, {"code", code}, {"error", message}};
}

std::string to_line(const json& j) {
  // Invalid UTF-8 from a hostile peer (echoed in an error) is replaced, never thrown on.
  std::string out = j.dump(-1, ' ', false, json::error_handler_t::replace);
  out += '\n';
  return out;
}

}  // namespace hotrestart
