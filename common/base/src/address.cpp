// The HOST:PORT parser and numeric socket addresses (see address.h).
#include <hotrestart/base/address.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <charconv>

namespace hotrestart {

Result<HostPort> parse_host_port(std::string_view text) {
  std::string_view host;
  std::string_view port;
  if (text.starts_with('[')) {
    const auto close = text.find(']');
    if (close == std::string_view::npos) return Error::message("missing ']' after the IPv6 address");
    host = text.substr(1, close - 1);
    text.remove_prefix(close + 1);
    if (!text.starts_with(':')) return Error::message("missing ':PORT' after the IPv6 address");
    port = text.substr(1);
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return Error::message("missing ':PORT'");
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return Error::message("write IPv6 addresses in brackets, like [::1]:8080");
    }
  }
  if (host.empty()) return Error::message("the host is empty (use 0.0.0.0 or [::] for every address)");
  unsigned value = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (port.empty() || ec != std::errc() || end != port.data() + port.size() || value > 65535) {
    return Error::message("the port must be a number from 0 to 65535");
  }
  return HostPort{std::string(host), static_cast<std::uint16_t>(value)};
}

Result<SocketAddress> numeric_address(const HostPort& address) {
  SocketAddress out;
  const std::string host = address.host == "localhost" ? std::string("127.0.0.1") : address.host;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
  if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(address.port);
    out.length = sizeof(sockaddr_in);
  } else if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(address.port);
    out.length = sizeof(sockaddr_in6);
  } else {
    return Error::message("'" + address.host + "' is not a numeric IPv4 or IPv6 address");
  }
  return out;
}

}  // namespace hotrestart
