// --listen as operators write it (see listen_spec.h).
#include "listen_spec.h"

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

Result<ListenSpec> parse_listen_spec(std::string_view text, std::size_t position) {
  const auto bad = [&](std::string_view why) {
    return Error::message(
        fmt::format("invalid --listen '{}': {} (write [NAME=]tcp://HOST:PORT or [NAME=]unix:PATH)", text, why));
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
    spec.path = std::string(rest.substr(5));
    if (spec.path.empty()) return bad("the socket path is empty");
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
