// --listen as operators write it (see listen_spec.h).
#include "listen_spec.h"

#include <grp.h>
#include <pwd.h>

#include <charconv>
#include <set>

#include <fmt/format.h>
#include <sys/un.h>

#include <hotrestart/base/address.h>

namespace hotrestart {

bool valid_listener_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    const bool ok =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

namespace {

// A decimal id, or nullopt when `text` is not one.
std::optional<unsigned> parse_id(std::string_view text) {
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

Result<uid_t> lookup_user(const std::string& name) {
  if (auto id = parse_id(name)) return static_cast<uid_t>(*id);
  std::vector<char> buffer(16384);
  passwd entry{};
  passwd* found = nullptr;
  const int rc = ::getpwnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found);
  if (found == nullptr)
    return rc == 0 ? Error::message(fmt::format("no user named '{}'", name))
                   : Error::from_errno(fmt::format("looking up user '{}'", name), rc);
  return entry.pw_uid;
}

Result<gid_t> lookup_group(const std::string& name) {
  if (auto id = parse_id(name)) return static_cast<gid_t>(*id);
  std::vector<char> buffer(65536);
  group entry{};
  group* found = nullptr;
  const int rc = ::getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found);
  if (found == nullptr)
    return rc == 0 ? Error::message(fmt::format("no group named '{}'", name))
                   : Error::from_errno(fmt::format("looking up group '{}'", name), rc);
  return entry.gr_gid;
}

// The options after a unix socket's path: "mode=0660,group=www-data".
Status parse_unix_options(std::string_view options, ListenSpec& spec) {
  while (!options.empty()) {
    const auto comma = options.find(',');
    const std::string_view option = options.substr(0, comma);
    options.remove_prefix(comma == std::string_view::npos ? options.size() : comma + 1);
    const auto eq = option.find('=');
    const std::string_view key = option.substr(0, eq);
    const std::string value(eq == std::string_view::npos ? std::string_view() : option.substr(eq + 1));
    if (key != "mode" && key != "owner" && key != "group") {
      return Error::message(
          fmt::format("unknown option '{}' after the socket path (the path ends at the first ',', so it cannot "
                      "contain one; the options are mode=OCTAL, owner=USER and group=GROUP)",
                      option));
    }
    if (eq == std::string_view::npos || value.empty()) return Error::message(fmt::format("{}= needs a value", key));
    if (key == "mode") {
      if (spec.mode) return Error::message("mode= is given twice");
      unsigned mode = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), mode, 8);
      if (value.front() != '0' || ec != std::errc() || end != value.data() + value.size() || mode > 07777) {
        return Error::message(fmt::format("mode={} is not an octal mode with its leading 0, like 0660", value));
      }
      spec.mode = static_cast<mode_t>(mode);
    } else if (key == "owner") {
      if (spec.owner) return Error::message("owner= is given twice");
      auto uid = lookup_user(value);
      if (!uid) return uid.error().context("owner=" + value);
      spec.owner = uid.value();
    } else {
      if (spec.group) return Error::message("group= is given twice");
      auto gid = lookup_group(value);
      if (!gid) return gid.error().context("group=" + value);
      spec.group = gid.value();
    }
  }
  return {};
}

}  // namespace

Result<ListenSpec> parse_listen_spec(std::string_view text, std::size_t position) {
  const auto bad = [&](std::string_view why) {
    return Error::message(
        fmt::format("invalid --listen '{}': {} (write [NAME=]tcp://HOST:PORT or "
                    "[NAME=]unix:PATH[,mode=0660][,owner=USER][,group=GROUP])",
                    text, why));
  };
  ListenSpec spec;
  std::string_view rest = text;
  if (!rest.starts_with("tcp://") && !rest.starts_with("unix:")) {
    const auto eq = rest.find('=');
    if (eq == std::string_view::npos) return bad("unknown address kind");
    spec.name = std::string(rest.substr(0, eq));
    if (!valid_listener_name(spec.name)) {
      return bad("the name must be 1-64 characters of letters, digits, '.', '_' or '-'");
    }
    rest.remove_prefix(eq + 1);
  } else {
    spec.name = fmt::format("listen{}", position);
  }
  spec.text = std::string(rest);

  if (rest.starts_with("unix:")) {
    spec.kind = ListenSpec::Kind::Unix;
    const std::string_view address = rest.substr(5);
    const auto comma = address.find(',');
    spec.path = std::string(address.substr(0, comma));
    if (spec.path.empty()) return bad("the socket path is empty");
    if (comma != std::string_view::npos) {
      if (auto ok = parse_unix_options(address.substr(comma + 1), spec); !ok) return bad(ok.error().text());
    }
    if (spec.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      return bad(fmt::format("the socket path is longer than {} bytes", sizeof(sockaddr_un{}.sun_path) - 1));
    }
    if (spec.path.find('\0') != std::string::npos) return bad("the socket path contains a NUL byte");
    return spec;
  }
  if (!rest.starts_with("tcp://")) return bad("unknown address kind");
  rest.remove_prefix(6);

  auto address = parse_host_port(rest);
  if (!address) return bad(address.error().text());
  spec.host = std::move(address->host);
  spec.port = address->port;
  return spec;
}

Result<ListenSpec> parse_metrics_address(std::string_view text) {
  if (!text.starts_with("tcp://") && !text.starts_with("unix:")) {
    return Error::message(fmt::format("invalid --metrics '{}': write tcp://HOST:PORT or unix:PATH", text));
  }
  auto spec = parse_listen_spec(text, 0);
  if (!spec) {
    // The reason, without the --listen wording around it.
    std::string why = spec.error().text();
    const auto colon = why.find("': ");
    if (colon != std::string::npos) why = why.substr(colon + 3);
    const auto hint = why.rfind(" (write ");
    if (hint != std::string::npos) why.resize(hint);
    return Error::message(fmt::format("invalid --metrics '{}': {}", text, why));
  }
  spec->name = "metrics";
  return spec;
}

Result<std::vector<ListenSpec>> parse_listen_specs(const std::vector<std::string>& texts) {
  std::vector<ListenSpec> specs;
  std::set<std::string> names;
  for (std::size_t i = 0; i < texts.size(); ++i) {
    auto spec = parse_listen_spec(texts[i], i);
    if (!spec) return spec.error();
    if (!names.insert(spec->name).second) {
      return Error::message(fmt::format("invalid --listen '{}': the name '{}' is used twice", texts[i], spec->name));
    }
    specs.push_back(std::move(spec).value());
  }
  return specs;
}

}  // namespace hotrestart
