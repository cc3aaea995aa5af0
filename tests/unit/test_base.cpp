// hotrestart::base: the HOST:PORT parser, text made safe to show, and sd_notify datagrams.
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <string>

#include <hotrestart/base/address.h>
#include <hotrestart/base/sd_notify.h>
#include <hotrestart/base/text.h>
#include <hotrestart/fd.h>

using namespace hotrestart;

TEST_CASE("base: HOST:PORT and [IPV6]:PORT") {
  auto v4 = parse_host_port("127.0.0.1:8080");
  REQUIRE(v4.ok());
  CHECK(v4->host == "127.0.0.1");
  CHECK(v4->port == 8080);
  auto v6 = parse_host_port("[::1]:0");
  REQUIRE(v6.ok());
  CHECK(v6->host == "::1");
  CHECK(v6->port == 0);
  CHECK(parse_host_port("example.com:443")->host == "example.com");

  const std::pair<const char*, const char*> bad[] = {
      {"127.0.0.1", "missing ':PORT'"},
      {"[::1", "missing ']' after the IPv6 address"},
      {"[::1]8080", "missing ':PORT' after the IPv6 address"},
      {"::1:8080", "write IPv6 addresses in brackets, like [::1]:8080"},
      {":8080", "the host is empty (use 0.0.0.0 or [::] for every address)"},
      {"127.0.0.1:65536", "the port must be a number from 0 to 65535"},
      {"127.0.0.1:", "the port must be a number from 0 to 65535"},
      {"127.0.0.1:80x", "the port must be a number from 0 to 65535"},
      {"127.0.0.1:-1", "the port must be a number from 0 to 65535"},
  };
  for (const auto& [text, why] : bad) {
    INFO(text);
    auto r = parse_host_port(text);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().text() == why);
  }
}

TEST_CASE("base: numeric addresses, with localhost as 127.0.0.1 and no resolver") {
  auto v4 = numeric_address({"localhost", 80});
  REQUIRE(v4.ok());
  CHECK(v4->family() == AF_INET);
  CHECK(v4->length == sizeof(sockaddr_in));
  const auto* in4 = reinterpret_cast<const sockaddr_in*>(v4->get());
  CHECK(ntohs(in4->sin_port) == 80);
  CHECK(ntohl(in4->sin_addr.s_addr) == INADDR_LOOPBACK);
  auto v6 = numeric_address({"::1", 443});
  REQUIRE(v6.ok());
  CHECK(v6->family() == AF_INET6);
  CHECK(v6->length == sizeof(sockaddr_in6));
  auto name = numeric_address({"example.com", 80});
  REQUIRE_FALSE(name.ok());
  CHECK(name.error().text() == "'example.com' is not a numeric IPv4 or IPv6 address");
}

TEST_CASE("base: text from a peer is quoted, made printable, or written as shell words") {
  CHECK(quote("x y") == "'x y'");
  CHECK(quote("a\n'\\\x7f\xc3") == "'a\\x0a\\x27\\x5c\\x7f\\xc3'");
  CHECK(quote(std::string(100, 'z')) == "'" + std::string(64, 'z') + "...'");
  CHECK(printable("ready\nFAKE LOG LINE\x1b[2J") == "ready?FAKE LOG LINE?[2J");
  CHECK(printable("tab\there", ' ') == "tab here");
  CHECK(printable("caf\xc3\xa9") == "caf\xc3\xa9");  // UTF-8 is not a control character.
  CHECK(shell_words({"./server", "--port", "80"}) == "./server --port 80");
  CHECK(shell_words({"sh", "-c", "echo it's $HOME", ""}) == "sh -c 'echo it'\\''s $HOME' ''");
}

TEST_CASE("base: sd_notify datagrams reach a filesystem or an abstract socket, and bad paths are errors") {
  const std::string name = "hotrestart-test-notify-" + std::to_string(::getpid());
  for (const std::string& path : {"/tmp/" + name, "@" + name}) {
    INFO(path);
    Fd sock(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    REQUIRE(sock);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    socklen_t length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
    if (path[0] == '@') {
      addr.sun_path[0] = '\0';
    } else {
      ::unlink(path.c_str());
      ++length;
    }
    REQUIRE(::bind(sock.get(), reinterpret_cast<sockaddr*>(&addr), length) == 0);
    REQUIRE(sd_notify_to(path, "READY=1\nSTATUS=serving").ok());
    char got[64] = {};
    const ssize_t n = ::recv(sock.get(), got, sizeof got, MSG_DONTWAIT);
    CHECK(std::string(got, n > 0 ? static_cast<std::size_t>(n) : 0) == "READY=1\nSTATUS=serving");
    if (path[0] != '@') ::unlink(path.c_str());
  }
  CHECK_FALSE(sd_notify_to("", "READY=1").ok());
  CHECK_FALSE(sd_notify_to(std::string(200, 'x'), "READY=1").ok());
  auto missing = sd_notify_to("/nonexistent/notify", "READY=1");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().text().starts_with("sendmsg /nonexistent/notify: "));
}
