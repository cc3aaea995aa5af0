// Listen addresses as operators write them:
//   [NAME=]tcp://HOST:PORT     HOST is an IPv4 address, [IPv6], or a host name; PORT 0 = any
//   [NAME=]unix:PATH[,OPTION...] a filesystem Unix stream socket; OPTION is mode=OCTAL (0660),
//                              owner=USER or group=GROUP (a name or a number), applied to the
//                              socket file when it is bound. The path ends at the first ',', so
//                              a path with a ',' in it is refused.
// NAME is what the worker sees in LISTEN_FDNAMES; it defaults to "listenN" (N = position).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <hotrestart/base/result.h>

namespace hotrestart {

struct ListenSpec {
  enum class Kind { Tcp, Unix };
  std::string name;
  Kind kind = Kind::Tcp;
  std::string host;  // Tcp: without brackets.
  std::uint16_t port = 0;
  std::string path;  // Unix.
  // Unix: what the socket file is given once bound (nullopt: as bind() leaves it).
  std::optional<mode_t> mode;
  std::optional<uid_t> owner;
  std::optional<gid_t> group;
  std::string text;  // The address part as written, for messages.
};

// Names follow systemd's rules for LISTEN_FDNAMES (no ':' and no control characters) and
// are further limited to [A-Za-z0-9._-]{1,64} so they are safe in logs and environments.
bool valid_listener_name(std::string_view name);

// Owner and group names are looked up now (getpwnam, getgrnam): an unknown one is an error.
Result<ListenSpec> parse_listen_spec(std::string_view text, std::size_t position);

// --metrics ADDRESS: tcp://HOST:PORT or unix:PATH, as --listen takes them but with no name.
Result<ListenSpec> parse_metrics_address(std::string_view text);

// Parses all specs and checks that names are unique.
Result<std::vector<ListenSpec>> parse_listen_specs(const std::vector<std::string>& texts);

}  // namespace hotrestart
