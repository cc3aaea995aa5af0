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

#include <algorithm>
#include <array>
#include <charconv>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

// A request whose request line and headers exceed this gets 431 and the connection is closed.
constexpr std::uint32_t kMaxHeaderBytes = 16 * 1024;
// Reading pauses while more than this waits unparsed or unsent, so that a client that pipelines requests without
// reading the answers cannot make the server grow without bound.
constexpr std::size_t kMaxBufferedBytes = 64 * 1024;
constexpr std::uint64_t kMaxSlowMs = 10000;
// After the last response the write side is shut down and the server waits this long for the client to close first:
// closing with unread client data in the socket would send a reset, which can destroy the response before it is read.
constexpr std::uint64_t kLingerMs = 1000;

struct Options {
  std::string label = "v1";
  std::vector<std::string> listen;
  std::uint64_t idle_grace_ms = 1000;
};

// A listening or connected stream is either TCP or a Unix socket. The union gives both the same storage, so that
// everything after the accept only deals with uv_stream_t.
union StreamHandle {
  uv_tcp_t tcp;
  uv_pipe_t pipe;
};

uv_stream_t* as_stream(StreamHandle& h) {
  return reinterpret_cast<uv_stream_t*>(&h);
}
template <typename T>
uv_handle_t* as_handle(T* h) {
  return reinterpret_cast<uv_handle_t*>(h);
}

struct Server;

struct Listener {
  Server* server = nullptr;
  StreamHandle handle{};
  bool is_tcp = true;
  std::string name;  // How error messages refer to it.
};

struct Connection;

// One uv_write in flight; it owns the bytes until libuv is done with them.
struct WriteRequest {
  uv_write_t req{};
  Connection* conn = nullptr;
  std::string data;
};

// One client connection. It answers requests strictly one at a time, in order: the parser is paused at the end of
// each request, so pipelined requests wait in `input` while a /slow response is pending.
struct Connection {
  explicit Connection(Server& s) : server(s) {}

  void start(uv_stream_t* listener, bool is_tcp);
  void on_read(ssize_t nread, const uv_buf_t* buf);
  void process();
  void respond();
  void send(int status, bool keep_alive);
  void check_done();
  void start_linger();
  void update_reading();
  void close();
  [[nodiscard]] bool idle() const { return !in_message && input.empty() && !slow_pending && writes_in_flight == 0; }
  uv_stream_t* stream() { return as_stream(handle); }

  Server& server;
  StreamHandle handle{};
  uv_timer_t timer{};  // Delays a /slow response, and later bounds the lingering close.
  uv_shutdown_t shutdown_req{};
  http_parser parser{};
  std::string input;  // Received bytes the parser has not consumed yet.
  std::string url;    // URL of the request being parsed.
  int open_handles = 0;
  int writes_in_flight = 0;
  bool reading = false;
  bool in_message = false;      // A request has begun but is not complete.
  bool slow_pending = false;    // A /slow response waits on the timer.
  bool keep_alive = false;      // What the client asked for in the last complete request.
  bool head = false;            // The last complete request was HEAD, so the body is omitted.
  bool final_response = false;  // The last response is queued; further input is discarded.
  bool peer_eof = false;
  bool lingering = false;
  bool closing = false;
};

struct Server {
  explicit Server(Options o);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int run();
  Listener& add_listener(std::string name);
  int open_inherited(int count);
  int open_configured();
  void start_drain();
  void expire_grace();
  void remove(Connection* conn);
  void finish();
  void log(std::string_view what) const { fmt::print(stderr, "hello-server {} pid {}: {}\n", opts.label, pid, what); }

  Options opts;
  int pid = static_cast<int>(getpid());
  std::string body;
  uv_loop_t loop{};
  // Every read is copied out of this buffer before the next one, so one buffer serves all.
  std::array<char, 64 * 1024> read_buffer{};
  std::vector<std::unique_ptr<Listener>> listeners;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections;
  uv_signal_t sigterm{}, sigint{}, sigquit{};
  uv_timer_t grace_timer{};
  bool draining = false;
  bool grace_expired = false;
  bool finished = false;
};

// Returns the delay a request for /slow?ms=N asks for, capped at kMaxSlowMs, or 0.
std::uint64_t slow_delay_ms(std::string_view url) {
  http_parser_url u{};
  http_parser_url_init(&u);
  if (http_parser_parse_url(url.data(), url.size(), 0, &u) != 0) return 0;
  auto field = [&](int f) -> std::string_view {
    if ((u.field_set & (1U << f)) == 0) return {};
    return url.substr(u.field_data[f].off, u.field_data[f].len);
  };
  if (field(UF_PATH) != "/slow") return 0;
  std::string_view query = field(UF_QUERY);
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

const http_parser_settings kParserSettings = [] {
  http_parser_settings s{};
  http_parser_settings_init(&s);
  s.on_message_begin = [](http_parser* p) {
    auto* c = static_cast<Connection*>(p->data);
    c->in_message = true;
    c->url.clear();
    return 0;
  };
  s.on_url = [](http_parser* p, const char* at, std::size_t len) {
    auto* c = static_cast<Connection*>(p->data);
    if (c->url.size() + len > kMaxHeaderBytes) return 1;  // Reported as HPE_CB_url, answered 431.
    c->url.append(at, len);
    return 0;
  };
  s.on_message_complete = [](http_parser* p) {
    auto* c = static_cast<Connection*>(p->data);
    c->in_message = false;
    // An upgrade (or CONNECT) is not supported, so the connection ends after this answer.
    c->keep_alive = http_should_keep_alive(p) != 0 && p->upgrade == 0;
    c->head = p->method == HTTP_HEAD;
    // Pausing hands control back to process(), which answers before parsing any further.
    http_parser_pause(p, 1);
    return 0;
  };
  return s;
}();

void Connection::start(uv_stream_t* listener, bool is_tcp) {
  static_cast<void>(is_tcp ? uv_tcp_init(&server.loop, &handle.tcp) : uv_pipe_init(&server.loop, &handle.pipe, 0));
  uv_timer_init(&server.loop, &timer);
  as_handle(&handle)->data = this;
  timer.data = this;
  open_handles = 2;
  http_parser_init(&parser, HTTP_REQUEST);
  parser.data = this;
  if (uv_accept(listener, stream()) != 0) return close();
  update_reading();
}

void Connection::on_read(ssize_t nread, const uv_buf_t* buf) {
  if (nread == UV_EOF) {
    // libuv stops reading by itself at end of stream. A half-closed client still gets the answers to the requests
    // it completed, and check_done() closes once they are written; a lingering close is simply complete.
    peer_eof = true;
    reading = false;
    lingering ? close() : check_done();
    return;
  }
  if (nread < 0) return close();            // A reset or other error means the client is gone; there is no one to tell.
  if (lingering || final_response) return;  // Read only so that the close is not a reset.
  input.append(buf->base, static_cast<std::size_t>(nread));
  process();
  update_reading();
  check_done();
}

void Connection::process() {
  while (!input.empty() && !slow_pending && !final_response && !closing) {
    std::size_t used = http_parser_execute(&parser, &kParserSettings, input.data(), input.size());
    input.erase(0, used);
    auto err = HTTP_PARSER_ERRNO(&parser);
    if (err == HPE_PAUSED) {
      http_parser_pause(&parser, 0);
      respond();
    } else if (err != HPE_OK) {
      send(err == HPE_HEADER_OVERFLOW || err == HPE_CB_url ? 431 : 400, false);
    } else {
      break;  // Everything was consumed into a partial request; wait for more bytes.
    }
  }
}

void Connection::respond() {
  std::uint64_t ms = slow_delay_ms(url);
  if (ms == 0) return send(200, keep_alive);
  slow_pending = true;
  uv_timer_start(
      &timer,
      [](uv_timer_t* t) {
        auto* c = static_cast<Connection*>(t->data);
        c->slow_pending = false;
        c->send(200, c->keep_alive);
        c->process();  // Pipelined requests that arrived meanwhile are answered now, in order.
        c->update_reading();
        c->check_done();
      },
      ms, 0);
}

void Connection::send(int status, bool keep) {
  keep = keep && !server.draining;
  std::string_view reason = status == 200 ? "OK" : status == 400 ? "Bad Request" : "Request Header Fields Too Large";
  std::string text = status == 200 ? server.body : fmt::format("{}\n", reason);
  auto req = std::make_unique<WriteRequest>();
  req->conn = this;
  req->data = fmt::format(
      "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{}", status, reason,
      text.size(), keep ? "keep-alive" : "close", head && status == 200 ? std::string{} : text);
  if (!keep) {
    final_response = true;
    input.clear();
  }
  req->req.data = req.get();
  uv_buf_t buf = uv_buf_init(req->data.data(), static_cast<unsigned>(req->data.size()));
  auto on_write = [](uv_write_t* w, int status_code) {
    std::unique_ptr<WriteRequest> done(static_cast<WriteRequest*>(w->data));
    Connection* c = done->conn;
    --c->writes_in_flight;
    if (c->closing) return;
    if (status_code < 0) return c->close();
    c->update_reading();
    c->check_done();
  };
  if (uv_write(&req->req, stream(), &buf, 1, on_write) != 0) return close();
  static_cast<void>(req.release());  // on_write takes ownership back.
  ++writes_in_flight;
}

// Decides, after every event, whether the connection has reached the end of its life.
void Connection::check_done() {
  if (closing || lingering) return;
  bool busy = slow_pending || writes_in_flight > 0;
  if (final_response && !busy) {
    start_linger();
  } else if (peer_eof && !busy) {
    close();  // The client will send nothing more, so a partial request can never complete.
  } else if (server.grace_expired && idle()) {
    close();
  }
}

void Connection::start_linger() {
  lingering = true;
  auto on_shutdown = [](uv_shutdown_t* req, int status) {
    auto* c = static_cast<Connection*>(req->data);
    if (c->closing) return;
    if (status < 0 || c->peer_eof) return c->close();
    c->update_reading();
    uv_timer_start(
        &c->timer, [](uv_timer_t* t) { static_cast<Connection*>(t->data)->close(); }, kLingerMs, 0);
  };
  shutdown_req.data = this;
  if (peer_eof || uv_shutdown(&shutdown_req, stream(), on_shutdown) != 0) close();
}

void Connection::update_reading() {
  bool want = !closing && !peer_eof &&
              (lingering || final_response ||
               (input.size() <= kMaxBufferedBytes && stream()->write_queue_size <= kMaxBufferedBytes));
  if (want && !reading) {
    auto on_alloc = [](uv_handle_t* h, std::size_t, uv_buf_t* buf) {
      auto& storage = static_cast<Connection*>(h->data)->server.read_buffer;
      *buf = uv_buf_init(storage.data(), static_cast<unsigned>(storage.size()));
    };
    auto on_data = [](uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
      static_cast<Connection*>(s->data)->on_read(nread, buf);
    };
    reading = uv_read_start(stream(), on_alloc, on_data) == 0;
  } else if (!want && reading) {
    uv_read_stop(stream());
    reading = false;
  }
}

void Connection::close() {
  if (closing) return;
  closing = true;
  reading = false;
  auto on_close = [](uv_handle_t* h) {
    auto* c = static_cast<Connection*>(h->data);
    if (--c->open_handles == 0) c->server.remove(c);  // Destroys c.
  };
  uv_close(as_handle(&handle), on_close);
  uv_close(as_handle(&timer), on_close);
}

Server::Server(Options o) : opts(std::move(o)) {
  const char* generation = std::getenv("HOTRESTART_GENERATION");
  body = fmt::format("version={} pid={} generation={}\n", opts.label, pid,
                     generation != nullptr && *generation != '\0' ? generation : "0");
  if (int rc = uv_loop_init(&loop); rc != 0) {
    throw std::runtime_error(fmt::format("cannot create event loop: {}", uv_strerror(rc)));
  }
  for (uv_signal_t* s : {&sigterm, &sigint, &sigquit}) {
    uv_signal_init(&loop, s);
    s->data = this;
  }
  uv_timer_init(&loop, &grace_timer);
  grace_timer.data = this;
}

Server::~Server() {
  // Closes whatever an early return left open (nothing after a drain) and lets libuv finish the closes, so that the
  // loop can be closed and nothing is leaked.
  uv_walk(
      &loop,
      [](uv_handle_t* h, void*) {
        if (uv_is_closing(h) == 0) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}

// Creates a listener that ~Server closes (through uv_walk) once its handle has been initialised.
Listener& Server::add_listener(std::string name) {
  auto& l = *listeners.emplace_back(std::make_unique<Listener>());
  l.server = this;
  l.name = std::move(name);
  return l;
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
    Listener& l = add_listener(fmt::format("inherited fd {}", fd));
    int rc = UV_EAFNOSUPPORT;
    if (addr.ss_family == AF_INET || addr.ss_family == AF_INET6) {
      uv_tcp_init(&loop, &l.handle.tcp);
      rc = uv_tcp_open(&l.handle.tcp, fd);
    } else if (addr.ss_family == AF_UNIX) {
      l.is_tcp = false;
      uv_pipe_init(&loop, &l.handle.pipe, 0);
      rc = uv_pipe_open(&l.handle.pipe, fd);
    }
    as_handle(&l.handle)->data = &l;
    if (rc != 0) {
      fmt::print(stderr, "hello-server: cannot use {}: {}\n", l.name, uv_strerror(rc));
      return 1;
    }
  }
  return 0;
}

// Parses HOST:PORT, where HOST is an IPv4 address or a bracketed IPv6 address.
bool parse_address(const std::string& spec, sockaddr_storage& out) {
  auto colon = spec.rfind(':');
  if (colon == std::string::npos) return false;
  std::string host = spec.substr(0, colon);
  const char* first = spec.data() + colon + 1;
  const char* last = spec.data() + spec.size();
  unsigned port = 0;
  auto [end, ec] = std::from_chars(first, last, port);
  if (first == last || ec != std::errc{} || end != last || port > 65535) return false;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
    return uv_ip6_addr(host.c_str(), static_cast<int>(port), reinterpret_cast<sockaddr_in6*>(&out)) == 0;
  }
  return uv_ip4_addr(host.c_str(), static_cast<int>(port), reinterpret_cast<sockaddr_in*>(&out)) == 0;
}

int Server::open_configured() {
  if (opts.listen.empty()) {
    fmt::print(stderr, "hello-server: no listening sockets: none inherited through LISTEN_FDS and no --listen given\n");
    return 2;
  }
  for (const std::string& spec : opts.listen) {
    sockaddr_storage addr{};
    if (!parse_address(spec, addr)) {
      fmt::print(stderr, "hello-server: invalid --listen '{}': expected IPV4:PORT or [IPV6]:PORT\n", spec);
      return 2;
    }
    Listener& l = add_listener(spec);
    uv_tcp_init(&loop, &l.handle.tcp);
    as_handle(&l.handle)->data = &l;
    if (int rc = uv_tcp_bind(&l.handle.tcp, reinterpret_cast<const sockaddr*>(&addr), 0); rc != 0) {
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

  auto on_connection = [](uv_stream_t* s, int status) {
    // Accept errors (say, out of file descriptors) are transient and not worth a log line each.
    if (status < 0) return;
    auto* l = static_cast<Listener*>(s->data);
    auto conn = std::make_unique<Connection>(*l->server);
    Connection* c = conn.get();
    l->server->connections.emplace(c, std::move(conn));
    c->start(s, l->is_tcp);
  };
  for (auto& l : listeners) {
    // The listening socket may be shared with other generations, so it always gets the full backlog: listen() on an
    // inherited socket with a smaller one would shrink it for all of them.
    if (int rc = uv_listen(as_stream(l->handle), SOMAXCONN, on_connection); rc != 0) {
      fmt::print(stderr, "hello-server: cannot listen on {}: {}\n", l->name, uv_strerror(rc));
      return 1;
    }
  }

  auto on_drain = [](uv_signal_t* s, int) { static_cast<Server*>(s->data)->start_drain(); };
  uv_signal_start(&sigterm, on_drain, SIGTERM);
  uv_signal_start(&sigint, on_drain, SIGINT);
  uv_signal_start(
      &sigquit,
      [](uv_signal_t* s, int) {
        static_cast<Server*>(s->data)->log("quitting at once");
        _exit(0);
      },
      SIGQUIT);

  std::string ready = fmt::format("READY=1\nSTATUS=serving version {}\nMAINPID={}", opts.label, pid);
  sd_notify(0, ready.c_str());
  log(fmt::format("serving on {} listener(s)", listeners.size()));
  uv_run(&loop, UV_RUN_DEFAULT);
  log("exiting");
  return 0;
}

void Server::start_drain() {
  if (draining) return;
  draining = true;
  log("draining");
  // uv_close only closes this process's copy of each socket. shutdown() must never be used on a listener: the socket
  // is shared with the next generation and would stop accepting for everyone.
  for (auto& l : listeners)
    uv_close(as_handle(&l->handle), nullptr);
  sd_notify(0, "STOPPING=1");
  if (connections.empty()) return finish();
  uv_timer_start(
      &grace_timer, [](uv_timer_t* t) { static_cast<Server*>(t->data)->expire_grace(); }, opts.idle_grace_ms, 0);
}

void Server::expire_grace() {
  grace_expired = true;
  // close() only starts an asynchronous close, so the map is not modified while iterating.
  for (auto& entry : connections)
    entry.first->check_done();
}

void Server::remove(Connection* conn) {
  connections.erase(conn);
  if (draining && connections.empty()) finish();
}

void Server::finish() {
  if (finished) return;
  finished = true;
  // With the listeners already closed, these are the last handles; uv_run then returns.
  for (uv_signal_t* s : {&sigterm, &sigint, &sigquit})
    uv_close(as_handle(s), nullptr);
  uv_close(as_handle(&grace_timer), nullptr);
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

  // Writes to a client that has gone away must fail with EPIPE, not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  http_parser_set_max_header_size(kMaxHeaderBytes);
  try {
    Server server(std::move(opts));
    return server.run();
  } catch (const std::exception& e) {
    fmt::print(stderr, "hello-server: {}\n", e.what());
    return 1;
  }
}
