// hello-server: an ordinary HTTP server that supports systemd socket activation (LISTEN_FDS) and readiness
// notification (sd_notify) through libsystemd alone. It stands for the programs hotrestart manages without its SDK.

#include <http_parser.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>
#include <uv.h>

// GCC 12 reports a false -Wnull-dereference inside CLI11's inlined string splitting (a std::vector<std::string>
// reallocation), so that warning is silenced for CLI11's code only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <CLI/CLI.hpp>
#pragma GCC diagnostic pop
#include <fmt/core.h>

#include <hotrestart/base/address.h>

#include <algorithm>
#include <charconv>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http_server.h"
#include "http_text.h"

namespace {

namespace http = examples::http;

constexpr std::uint64_t kMaxSlowMs = 10000;

struct Options {
  std::string label = "v1";
  std::vector<std::string> listen;
  std::uint64_t idle_grace_ms = 1000;
};

struct Server : http::Application {
  explicit Server(Options o);

  std::unique_ptr<http::Connection> make_connection() override;
  int run();
  int open_inherited(int count);
  int open_configured();
  void start_drain();
  void log(std::string_view what) const { fmt::print(stderr, "hello-server {} pid {}: {}\n", opts.label, pid, what); }

  Options opts;
  int pid = static_cast<int>(getpid());
  std::string body;
  http::Server core{*this};  // Last: its destructor closes every handle on the loop.
};

// One client connection. A /slow response is deferred, so pipelined requests wait unparsed until it is sent.
struct Connection : http::Connection {
  explicit Connection(Server& s) : http::Connection(s.core), server(s) {}

  void on_message_begin() override { url.clear(); }
  int on_url(std::string_view part) override;
  void respond() override;
  void reject(http_errno err) override { send(err == HPE_HEADER_OVERFLOW || err == HPE_CB_url ? 431 : 400, false); }
  void on_timer() override { send(200, keep_alive()); }  // The /slow delay has passed.
  void send(int status, bool keep);

  Server& server;
  std::string url;  // URL of the request being parsed.
};

// Returns the delay a request for /slow?ms=N asks for, capped at kMaxSlowMs, or 0.
std::uint64_t slow_delay_ms(std::string_view url) {
  const auto target = http::parse_target(url);
  if (!target || target->path != "/slow") return 0;
  std::string_view query = target->query;
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (!param.starts_with("ms=")) continue;
    std::uint64_t ms = 0;
    auto [end, ec] = std::from_chars(param.data() + 3, param.data() + param.size(), ms);
    if (ec == std::errc{} && end == param.data() + param.size()) return std::min(ms, kMaxSlowMs);
  }
  return 0;
}

int Connection::on_url(std::string_view part) {
  if (url.size() + part.size() > http::kMaxHeaderBytes) return 1;  // Reported as HPE_CB_url, answered 431.
  url.append(part);
  return 0;
}

void Connection::respond() {
  std::uint64_t ms = slow_delay_ms(url);
  if (ms == 0) return send(200, keep_alive());
  defer();
  start_timer(ms);
}

void Connection::send(int status, bool keep) {
  keep = keep && !server.core.draining();
  const std::string_view reason = http::reason_phrase(status);
  std::string text = status == 200 ? server.body : fmt::format("{}\n", reason);
  http::Connection::send(
      fmt::format("HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{}",
                  status, reason, text.size(), keep ? "keep-alive" : "close",
                  head_request() && status == 200 ? std::string{} : text),
      {}, keep ? http::KeepAlive::kYes : http::KeepAlive::kNo);
}

Server::Server(Options o) : opts(std::move(o)) {
  const char* generation = std::getenv("HOTRESTART_GENERATION");
  body = fmt::format("version={} pid={} generation={}\n", opts.label, pid,
                     generation != nullptr && *generation != '\0' ? generation : "0");
}

std::unique_ptr<http::Connection> Server::make_connection() {
  return std::make_unique<Connection>(*this);
}

int Server::open_inherited(int count) {
  for (int i = 0; i < count; ++i) {
    int fd = SD_LISTEN_FDS_START + i;
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, -1) <= 0 ||
        getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      fmt::print(stderr, "hello-server: inherited fd {} is not a stream socket\n", fd);
      return 1;
    }
    std::string name = fmt::format("inherited fd {}", fd);
    int rc = UV_EAFNOSUPPORT;
    if (addr.ss_family == AF_INET || addr.ss_family == AF_INET6) {
      rc = core.add_listener(name, http::Transport::kTcp).open(hotrestart::Fd(fd));
    } else if (addr.ss_family == AF_UNIX) {
      rc = core.add_listener(name, http::Transport::kPipe).open(hotrestart::Fd(fd));
    }
    if (rc != 0) {
      fmt::print(stderr, "hello-server: cannot use {}: {}\n", name, uv_strerror(rc));
      return 1;
    }
  }
  return 0;
}

int Server::open_configured() {
  if (opts.listen.empty()) {
    fmt::print(stderr, "hello-server: no listening sockets: none inherited through LISTEN_FDS and no --listen given\n");
    return 2;
  }
  for (const std::string& spec : opts.listen) {
    auto host_port = hotrestart::parse_host_port(spec);
    auto numeric = host_port ? hotrestart::numeric_address(host_port.value())
                             : hotrestart::Result<hotrestart::SocketAddress>(host_port.error());
    if (!numeric) {
      fmt::print(stderr, "hello-server: invalid --listen '{}': {} (expected IPV4:PORT or [IPV6]:PORT)\n", spec,
                 numeric.error().text());
      return 2;
    }
    if (int rc = core.add_listener(spec, http::Transport::kTcp).bind(*numeric->get()); rc != 0) {
      fmt::print(stderr, "hello-server: cannot bind {}: {}\n", spec, uv_strerror(rc));
      return 1;
    }
  }
  return 0;
}

int Server::run() {
  char** names = nullptr;
  int count = sd_listen_fds_with_names(1, &names);
  for (int i = 0; names != nullptr && names[i] != nullptr; ++i)
    std::free(names[i]);
  std::free(static_cast<void*>(names));
  if (count < 0) {
    fmt::print(stderr, "hello-server: cannot read LISTEN_FDS: {}\n", uv_strerror(count));
    return 1;
  }
  if (int rc = count > 0 ? open_inherited(count) : open_configured(); rc != 0) return rc;
  for (const auto& l : core.listeners()) {
    if (int rc = l->listen(); rc != 0) {
      fmt::print(stderr, "hello-server: cannot listen on {}: {}\n", l->name(), uv_strerror(rc));
      return 1;
    }
  }

  core.on_signal(SIGTERM, [this](int) { start_drain(); });
  core.on_signal(SIGINT, [this](int) { start_drain(); });
  core.on_signal(SIGQUIT, [this](int) {
    log("quitting at once");
    _exit(0);
  });

  std::string ready = fmt::format("READY=1\nSTATUS=serving version {}\nMAINPID={}", opts.label, pid);
  sd_notify(0, ready.c_str());
  log(fmt::format("serving on {} listener(s)", core.listeners().size()));
  uv_run(&core.loop(), UV_RUN_DEFAULT);
  log("exiting");
  return 0;
}

void Server::start_drain() {
  if (core.draining()) return;
  log("draining");
  // Closes the listeners first: STOPPING=1 follows once this process no longer accepts.
  core.drain(opts.idle_grace_ms);
  sd_notify(0, "STOPPING=1");
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  CLI::App app{"A small HTTP server supporting systemd socket activation and readiness."};
  app.add_option("--version", opts.label, "Version label reported in every response")->capture_default_str();
  app.add_option("--listen", opts.listen,
                 "HOST:PORT to bind when no sockets are inherited (repeatable; [::1]:PORT for IPv6)")
      ->allow_extra_args(false);
  app.add_option("--idle-grace", opts.idle_grace_ms,
                 "Milliseconds after a drain begins before idle connections are closed")
      ->check(CLI::Range(0, 86'400'000))  // Without a check, CLI11 would wrap a negative number around.
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  http::init_process();
  try {
    Server server(std::move(opts));
    return server.run();
  } catch (const std::exception& e) {
    fmt::print(stderr, "hello-server: {}\n", e.what());
    return 1;
  }
}
