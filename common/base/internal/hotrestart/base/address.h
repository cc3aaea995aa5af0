// Host and port as people write them, parsed in one place for the whole project (the
// supervisor's --listen, the SDK's fallback_listen, the example servers' --listen):
//
//   HOST:PORT      HOST is an IPv4 address or a host name
//   [IPV6]:PORT    an IPv6 address goes in brackets, so that its colons are not the port's
//
// PORT is 0 to 65535 (0: any free port). Parsing and turning a host into a socket address are
// two steps: the supervisor resolves host names, while the SDK and the examples take numeric
// addresses only.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include <hotrestart/base/result.h>

namespace hotrestart {

struct HostPort {
  std::string host;  // Without brackets.
  std::uint16_t port = 0;
};

// Splits HOST:PORT or [IPV6]:PORT. The error is a phrase saying what is wrong ("missing ':PORT'"),
// for the caller to put after what it was parsing.
Result<HostPort> parse_host_port(std::string_view text);

// A socket address ready for bind() or connect().
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  int family() const { return storage.ss_family; }
};

// The address of a numeric IPv4 or IPv6 host ("localhost" is taken as 127.0.0.1); no resolver is
// asked, so this never blocks.
Result<SocketAddress> numeric_address(const HostPort& address);

}  // namespace hotrestart
