// kv-cache: an HTTP key-value cache built on the hotrestart worker SDK. Its contents survive an
// upgrade (v1 -> v2) and a downgrade (v2 -> v1): the old generation hands a snapshot to the new
// one, then streams the writes it still accepts while it drains, and hands over its idle
// keep-alive connections so that clients never see them close.
//
//   GET /kv/KEY      200 with the value (Content-Type as stored, in v2), or 404
//   PUT /kv/KEY      body = value (at most 1 MiB, else 413): 204, or 503 if the write could not be
//                    handed to the next generation (it is then not applied)
//   DELETE /kv/KEY   204, or 404
//   GET /stats       one line of JSON: counters and what was imported
//   GET /            kv-cache version=VERSION pid=P generation=G
//
// Threads: the HTTP server runs on a libuv loop on the main thread; the SDK calls on_drain,
// on_stop and on_fd on its own thread, which reach the loop through uv_async_send. The cache has a
// lock of its own, taken by both.

#include <http_parser.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

// GCC 12 reports a false -Wnull-dereference inside CLI11's inlined string splitting (a std::vector<std::string>
// reallocation), so that warning is silenced for CLI11's code only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <CLI/CLI.hpp>
#pragma GCC diagnostic pop
#include <fmt/core.h>

#include <hotrestart/worker.h>

#include <algorithm>
#include <array>
#include <climits>
#include <csignal>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cache.h"

#ifndef KV_SCHEMA
#error "build kv-cache with KV_SCHEMA=1 or KV_SCHEMA=2"
#endif

namespace {

using Cache = kv::Cache<KV_SCHEMA>;

// A request line and headers larger than this get 431 and the connection is closed.
constexpr std::uint32_t kMaxHeaderBytes = 16 * 1024;
constexpr std::uint64_t kMaxBodyBytes = 1024 * 1024;
constexpr std::size_t kMaxContentTypeBytes = 256;
// Reading and parsing pause while more than this waits unparsed or unsent, so that a client that
// pipelines requests without reading the answers cannot make the server grow without bound.
constexpr std::size_t kMaxBufferedBytes = 64 * 1024;
// A request must arrive whole within this, or it gets 408 and the connection is closed.
constexpr std::uint64_t kRequestTimeoutMs = 30'000;
// After the last response the write side is shut down and the server waits this long for the
// client to close first: closing with unread client data would send a reset, which can destroy
// the response before it is read.
constexpr std::uint64_t kLingerMs = 1000;
// The name idle connections are passed under, from one generation to the next.
constexpr std::string_view kConnFdName = "conn";

struct Options {
  std::string label = KV_SCHEMA == 1 ? "v1" : "v2";
  std::string listen = "127.0.0.1:8080";
  std::uint64_t max_memory = std::uint64_t{256} << 20;
  std::uint64_t idle_grace_ms = 1000;
  std::uint64_t prefill = 0;  // Entries to fill in at start-up when nothing was imported.
  std::size_t prefill_value_bytes = 64;
};

template <typename T>
uv_handle_t* as_handle(T* h) {
  return reinterpret_cast<uv_handle_t*>(h);
}
template <typename T>
uv_stream_t* as_stream(T* h) {
  return reinterpret_cast<uv_stream_t*>(h);
}

bool iequals(std::string_view a, std::string_view b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    return lower(x) == lower(y);
  });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

// Keys are byte strings: the path after /kv/ is percent-decoded. Returns nothing for a bad escape.
std::optional<std::string> percent_decode(std::string_view s) {
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    const int hi = hex(s[i + 1]);
    const int lo = hex(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

// A header value this server repeats must be printable ASCII, or it could split the response.
bool printable(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= 0x20 && c < 0x7f; });
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string_view reason_phrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 204:
      return "No Content";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    default:
      return "Error";
  }
}

struct Server;
struct Connection;

// One uv_write in flight; it owns the bytes until libuv is done with them.
struct WriteRequest {
  uv_write_t req{};
  Connection* conn = nullptr;
  std::string head;
  std::string body;
  bool interim = false;  // A "100 Continue": the request it answers is still being received.
};

// What the parser has gathered of the request being received.
struct Request {
  std::string url;
  std::string body;
  std::string content_type;
  std::string expect;
  std::string field;  // The header being received: its name, then its value.
  std::string value;
  bool in_value = false;

  void clear() { *this = Request{}; }
  void finish_header() {
    if (iequals(field, "content-type")) content_type = trim(value);
    if (iequals(field, "expect")) expect = trim(value);
    field.clear();
    value.clear();
    in_value = false;
  }
};

// One client connection, accepted or adopted from the previous generation. Requests are answered
// strictly one at a time, in order: the parser pauses at the end of each request.
struct Connection {
  explicit Connection(Server& s) : server(s) {}

  void init();
  bool open(uv_stream_t* listener);  // Accepts.
  bool adopt(hotrestart::Fd fd);     // Takes over a connection the previous generation passed.
  void on_read(ssize_t nread, const uv_buf_t* buf);
  void process();
  void respond();
  void send(int status, std::string_view content_type, std::string body, bool keep,
            std::string_view extra_headers = {});
  void send_continue();
  bool queue_write(std::unique_ptr<WriteRequest> req);
  void check_done();
  bool hand_off();
  void start_linger();
  void update_reading();
  void close();
  [[nodiscard]] bool idle() const { return !in_message && input.empty() && writes_in_flight == 0; }
  uv_stream_t* stream() { return as_stream(&handle); }

  Server& server;
  uv_tcp_t handle{};
  uv_timer_t timer{};  // Bounds a request's arrival, and later the lingering close.
  uv_shutdown_t shutdown_req{};
  http_parser parser{};
  std::string input;  // Received bytes the parser has not consumed yet.
  Request request;
  int error_status = 0;  // Set by a parser callback that stops the parser, to answer with.
  int open_handles = 0;
  int writes_in_flight = 0;
  bool reading = false;
  bool in_message = false;      // A request has begun but is not complete.
  bool keep_alive = false;      // What the client asked for in the last complete request.
  bool head = false;            // The last complete request was HEAD: no body in the answer.
  bool final_response = false;  // The last response is queued; further input is discarded.
  bool peer_eof = false;
  bool lingering = false;
  bool closing = false;
};

struct Server {
  Server(Options o, Cache& c);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  int run();
  void adopt_passed();
  void start_drain(const char* why);
  void stop_now();
  void expire_grace();
  void remove(Connection* conn);
  void finish();
  std::string stats_line() const;
  template <typename... Args>
  void log(fmt::format_string<Args...> format, Args&&... args) const {
    fmt::print(stderr, "kv-cache {} pid {}: {}\n", opts.label, pid, fmt::format(format, std::forward<Args>(args)...));
  }

  Options opts;
  Cache& cache;
  hotrestart::Worker* worker = nullptr;
  int pid = static_cast<int>(getpid());
  std::string common_headers;  // X-Version, X-Generation, X-Pid.
  uv_loop_t loop{};
  // Every read is copied out of this buffer before the next one, so one buffer serves all.
  std::array<char, 64 * 1024> read_buffer{};
  uv_tcp_t listener{};
  bool listener_open = false;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections;
  uv_signal_t sigterm{}, sigint{};
  uv_timer_t grace_timer{};
  // From the SDK's thread. They are unreferenced, so that they never keep the loop running, and
  // stay open until the Worker is gone (main destroys it first).
  uv_async_t drain_async{}, stop_async{}, fd_async{};
  std::mutex passed_mutex;
  std::vector<hotrestart::Fd> passed;  // Connections from on_fd, waiting for the loop.
  bool draining = false;
  bool grace_expired = false;
  bool finished = false;
  // Whether idle connections can go to the next generation; learnt from the first pass_fd().
  enum class Handoff { kUnknown, kWorks, kFailed } handoff = Handoff::kUnknown;
};

const http_parser_settings kParserSettings = [] {
  http_parser_settings s{};
  http_parser_settings_init(&s);
  s.on_message_begin = [](http_parser* p) {
    auto* c = static_cast<Connection*>(p->data);
    c->in_message = true;
    c->head = false;
    c->request.clear();
    uv_timer_start(
        &c->timer,
        [](uv_timer_t* t) {
          auto* conn = static_cast<Connection*>(t->data);
          if (!conn->in_message || conn->closing || conn->final_response) return;
          conn->send(408, "text/plain", "request timeout\n", false);
          conn->check_done();
        },
        kRequestTimeoutMs, 0);
    return 0;
  };
  s.on_url = [](http_parser* p, const char* at, std::size_t len) {
    auto* c = static_cast<Connection*>(p->data);
    if (c->request.url.size() + len > kMaxHeaderBytes) {
      c->error_status = 414;
      return 1;
    }
    c->request.url.append(at, len);
    return 0;
  };
  // Header names and values are bounded by the parser's header limit (kMaxHeaderBytes in all).
  s.on_header_field = [](http_parser* p, const char* at, std::size_t len) {
    auto* c = static_cast<Connection*>(p->data);
    if (c->request.in_value) c->request.finish_header();
    c->request.field.append(at, len);
    return 0;
  };
  s.on_header_value = [](http_parser* p, const char* at, std::size_t len) {
    auto* c = static_cast<Connection*>(p->data);
    c->request.in_value = true;
    c->request.value.append(at, len);
    return 0;
  };
  s.on_headers_complete = [](http_parser* p) {
    auto* c = static_cast<Connection*>(p->data);
    if (c->request.in_value) c->request.finish_header();
    // http_parser sets content_length to ULLONG_MAX when there is no Content-Length.
    if (p->content_length != ULLONG_MAX && p->content_length > kMaxBodyBytes) {
      c->error_status = 413;
      return -1;  // An error: the body is never read, so the connection ends after the 413.
    }
    if (iequals(c->request.expect, "100-continue") && p->http_major == 1 && p->http_minor >= 1) c->send_continue();
    return 0;
  };
  s.on_body = [](http_parser* p, const char* at, std::size_t len) {
    auto* c = static_cast<Connection*>(p->data);
    if (c->request.body.size() + len > kMaxBodyBytes) {  // A chunked body can only be bounded as it comes.
      c->error_status = 413;
      return 1;
    }
    c->request.body.append(at, len);
    return 0;
  };
  s.on_message_complete = [](http_parser* p) {
    auto* c = static_cast<Connection*>(p->data);
    c->in_message = false;
    uv_timer_stop(&c->timer);
    // An upgrade (or CONNECT) is not supported, so the connection ends after this answer.
    c->keep_alive = http_should_keep_alive(p) != 0 && p->upgrade == 0;
    c->head = p->method == HTTP_HEAD;
    // Pausing hands control back to process(), which answers before parsing any further.
    http_parser_pause(p, 1);
    return 0;
  };
  return s;
}();

void Connection::init() {
  uv_tcp_init(&server.loop, &handle);
  uv_timer_init(&server.loop, &timer);
  as_handle(&handle)->data = this;
  timer.data = this;
  open_handles = 2;
  http_parser_init(&parser, HTTP_REQUEST);
  parser.data = this;
}

bool Connection::open(uv_stream_t* listener) {
  init();
  if (uv_accept(listener, stream()) != 0) {
    close();
    return false;
  }
  update_reading();
  return true;
}

bool Connection::adopt(hotrestart::Fd fd) {
  init();
  // uv_tcp_open makes the socket non-blocking and owns it from then on.
  if (int rc = uv_tcp_open(&handle, fd.get()); rc != 0) {
    server.log("cannot adopt a passed connection: {}", uv_strerror(rc));
    close();  // `fd` closes the socket.
    return false;
  }
  static_cast<void>(fd.release());
  update_reading();
  return true;
}

void Connection::on_read(ssize_t nread, const uv_buf_t* buf) {
  if (closing) return;
  if (nread == UV_EOF) {
    // libuv stops reading by itself at end of stream. A half-closed client still gets the answers
    // to the requests it completed; check_done() closes once they are written.
    peer_eof = true;
    reading = false;
    lingering ? close() : check_done();
    return;
  }
  if (nread < 0) return close();            // A reset or other error: there is no one to tell.
  if (lingering || final_response) return;  // Read only so that the close is not a reset.
  input.append(buf->base, static_cast<std::size_t>(nread));
  process();
  update_reading();
  check_done();
}

void Connection::process() {
  while (!input.empty() && !final_response && !closing && stream()->write_queue_size <= kMaxBufferedBytes) {
    const std::size_t used = http_parser_execute(&parser, &kParserSettings, input.data(), input.size());
    input.erase(0, used);
    const auto err = HTTP_PARSER_ERRNO(&parser);
    if (err == HPE_PAUSED) {
      http_parser_pause(&parser, 0);
      respond();
    } else if (err != HPE_OK) {
      int status = error_status != 0 ? error_status : 400;
      if (err == HPE_HEADER_OVERFLOW) status = 431;
      send(status, "text/plain", fmt::format("{}\n", reason_phrase(status)), false);
    } else {
      break;  // Everything was consumed into a partial request; wait for more bytes.
    }
  }
}

void Connection::respond() {
  Request& r = request;
  const auto method = static_cast<http_method>(parser.method);
  const bool reads = method == HTTP_GET || method == HTTP_HEAD;
  http_parser_url u{};
  http_parser_url_init(&u);
  if (http_parser_parse_url(r.url.data(), r.url.size(), 0, &u) != 0 || (u.field_set & (1U << UF_PATH)) == 0) {
    return send(400, "text/plain", "bad request target\n", keep_alive);
  }
  const std::string_view path = std::string_view(r.url).substr(u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);

  if (path == "/" || path == "/stats") {
    if (!reads) return send(405, "text/plain", "method not allowed\n", keep_alive, "Allow: GET, HEAD\r\n");
    if (path == "/stats") return send(200, "application/json", server.stats_line(), keep_alive);
    return send(200, "text/plain",
                fmt::format("kv-cache version={} pid={} generation={}\n", server.opts.label, server.pid,
                            server.worker->generation()),
                keep_alive);
  }
  if (!path.starts_with("/kv/")) return send(404, "text/plain", "not found\n", keep_alive);
  auto key = percent_decode(path.substr(4));
  if (!key || key->empty()) return send(400, "text/plain", "bad key\n", keep_alive);

  switch (method) {
    case HTTP_GET:
    case HTTP_HEAD: {
      auto found = server.cache.get(*key);
      if (!found) return send(404, "text/plain", "not found\n", keep_alive);
      std::string_view type = kv::served_content_type(found->content_type);
      if (!printable(type)) type = kv::kDefaultContentType;
      return send(200, type, std::move(found->value), keep_alive);
    }
    case HTTP_PUT: {
      std::string_view type;
      if constexpr (KV_SCHEMA >= 2) {
        type = r.content_type;
        if (type.size() > kMaxContentTypeBytes || !printable(type)) {
          return send(400, "text/plain", "bad content type\n", keep_alive);
        }
      }
      switch (kv::publish_put(server.cache, *server.worker, *key, r.body, type)) {
        case kv::WriteResult::kApplied:
        case kv::WriteResult::kAbsent:
          return send(204, {}, {}, keep_alive);
        case kv::WriteResult::kRefused:
          break;
      }
      return send(503, "text/plain", "the write could not be handed to the next generation; retry\n", keep_alive,
                  "Retry-After: 1\r\n");
    }
    case HTTP_DELETE:
      switch (kv::publish_erase(server.cache, *server.worker, *key)) {
        case kv::WriteResult::kApplied:
          return send(204, {}, {}, keep_alive);
        case kv::WriteResult::kAbsent:
          return send(404, "text/plain", "not found\n", keep_alive);
        case kv::WriteResult::kRefused:
          break;
      }
      return send(503, "text/plain", "the delete could not be handed to the next generation; retry\n", keep_alive,
                  "Retry-After: 1\r\n");
    default:
      return send(405, "text/plain", "method not allowed\n", keep_alive, "Allow: GET, HEAD, PUT, DELETE\r\n");
  }
}

void Connection::send(int status, std::string_view content_type, std::string body, bool keep,
                      std::string_view extra_headers) {
  // While draining, a connection is kept open only if it can go to the next generation.
  keep = keep && !(server.draining && server.handoff == Server::Handoff::kFailed);
  auto req = std::make_unique<WriteRequest>();
  req->conn = this;
  req->head = fmt::format("HTTP/1.1 {} {}\r\n{}", status, reason_phrase(status), server.common_headers);
  if (status != 204) {  // A 204 has neither a body nor a Content-Length.
    req->head += fmt::format("Content-Type: {}\r\nContent-Length: {}\r\n", content_type, body.size());
  }
  req->head += fmt::format("Connection: {}\r\n{}\r\n", keep ? "keep-alive" : "close", extra_headers);
  if (!head) req->body = std::move(body);
  if (!keep) {
    final_response = true;
    input.clear();
  }
  if (!queue_write(std::move(req))) close();
}

void Connection::send_continue() {
  auto req = std::make_unique<WriteRequest>();
  req->conn = this;
  req->head = "HTTP/1.1 100 Continue\r\n\r\n";
  req->interim = true;
  queue_write(std::move(req));  // If it cannot be written, the final answer reports the trouble.
}

// Starts writing one answer; false if libuv refused it (the connection is then broken).
bool Connection::queue_write(std::unique_ptr<WriteRequest> req) {
  req->req.data = req.get();
  std::array<uv_buf_t, 2> bufs = {uv_buf_init(req->head.data(), static_cast<unsigned>(req->head.size())),
                                  uv_buf_init(req->body.data(), static_cast<unsigned>(req->body.size()))};
  auto on_write = [](uv_write_t* w, int status_code) {
    std::unique_ptr<WriteRequest> done(static_cast<WriteRequest*>(w->data));
    Connection* c = done->conn;
    --c->writes_in_flight;
    if (c->closing) return;
    if (status_code < 0) return c->close();
    if (!done->interim) {
      c->process();  // Pipelined requests waiting on the write queue.
      c->update_reading();
    }
    c->check_done();
  };
  if (uv_write(&req->req, stream(), bufs.data(), req->body.empty() ? 1 : 2, on_write) != 0) return false;
  static_cast<void>(req.release());  // on_write takes ownership back.
  ++writes_in_flight;
  return true;
}

// Decides, after every event, whether the connection has reached the end of its life here.
void Connection::check_done() {
  if (closing || lingering) return;
  const bool busy = writes_in_flight > 0;
  if (final_response && !busy) {
    start_linger();
  } else if (peer_eof && !busy) {
    close();  // The client will send nothing more, so a partial request can never complete.
  } else if (server.draining && idle()) {
    if (server.handoff != Server::Handoff::kFailed && hand_off()) return;
    if (server.grace_expired) close();
  }
}

// Passes an idle connection to the next generation without a byte or a FIN to the client: the next
// generation gets a duplicate of the socket, so closing this process's copy leaves it open.
// Whatever the client sends from now on waits in the socket for the next generation to read.
bool Connection::hand_off() {
  if (reading) {
    uv_read_stop(stream());
    reading = false;
  }
  uv_os_fd_t fd = -1;
  // pass_fd() duplicates the descriptor itself; this process's copy is closed by uv_close below.
  if (uv_fileno(as_handle(&handle), &fd) != 0 || !server.worker->pass_fd(std::string(kConnFdName), fd)) {
    if (server.handoff != Server::Handoff::kFailed) {
      server.log("no next generation takes connections: closing them after their next answer instead");
    }
    server.handoff = Server::Handoff::kFailed;
    update_reading();
    return false;
  }
  server.handoff = Server::Handoff::kWorks;
  close();
  return true;
}

void Connection::start_linger() {
  lingering = true;
  uv_timer_stop(&timer);
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
  const bool want = !closing && !peer_eof &&
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

Server::Server(Options o, Cache& c) : opts(std::move(o)), cache(c) {
  if (int rc = uv_loop_init(&loop); rc != 0) {
    throw std::runtime_error(fmt::format("cannot create event loop: {}", uv_strerror(rc)));
  }
  for (uv_signal_t* s : {&sigterm, &sigint}) {
    uv_signal_init(&loop, s);
    s->data = this;
  }
  uv_timer_init(&loop, &grace_timer);
  grace_timer.data = this;
  uv_async_init(&loop, &drain_async, [](uv_async_t* a) { static_cast<Server*>(a->data)->start_drain("asked to"); });
  uv_async_init(&loop, &stop_async, [](uv_async_t* a) { static_cast<Server*>(a->data)->stop_now(); });
  uv_async_init(&loop, &fd_async, [](uv_async_t* a) { static_cast<Server*>(a->data)->adopt_passed(); });
  for (uv_async_t* a : {&drain_async, &stop_async, &fd_async}) {
    a->data = this;
    uv_unref(as_handle(a));
  }
}

Server::~Server() {
  // Closes whatever is still open (the async handles; everything after an early return) and lets
  // libuv finish the closes, so that the loop can be closed and nothing leaks.
  uv_walk(
      &loop,
      [](uv_handle_t* h, void*) {
        if (uv_is_closing(h) == 0) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
}

std::string Server::stats_line() const {
  const kv::Stats s = cache.stats();
  std::string imported = "null";
  for (const auto& section : worker->imported()) {
    if (section.name != kv::kSectionName) continue;
    imported = fmt::format(R"({{"imported":{},"version":{},"bytes":{},"reason":{}}})", section.imported,
                           section.version, section.bytes, json_string(section.reason));
  }
  return fmt::format(
      R"({{"version":{},"schema":{},"pid":{},"generation":{},"entries":{},"bytes":{},"max_bytes":{},"hits":{},)"
      R"("misses":{},"evictions":{},"tombstones":{},"deltas":{},"page_bytes":{},"index_bytes":{},"imported":{}}})"
      "\n",
      json_string(opts.label), KV_SCHEMA, pid, worker->generation(), s.entries, s.bytes, cache.max_bytes(), s.hits,
      s.misses, s.evictions, s.tombstones, s.deltas, s.page_bytes, s.index_bytes, imported);
}

int Server::run() {
  common_headers =
      fmt::format("X-Version: {}\r\nX-Generation: {}\r\nX-Pid: {}\r\n", opts.label, worker->generation(), pid);
  hotrestart::Fd fd = worker->take_listener("http");
  if (const auto names = worker->listener_names(); !fd && names.size() == 1) {
    log("no listener is named 'http': serving on the only one, '{}'", names[0]);
    fd = worker->take_listener(names[0]);
  }
  if (!fd) {
    log("no listener named 'http' (give the supervisor --listen http=tcp://HOST:PORT)");
    return 1;
  }
  uv_tcp_init(&loop, &listener);
  listener.data = this;
  listener_open = true;
  if (int rc = uv_tcp_open(&listener, fd.get()); rc != 0) {
    log("cannot use the http listener: {}", uv_strerror(rc));
    return 1;  // `fd` closes it; ~Server closes the handle.
  }
  static_cast<void>(fd.release());
  auto on_connection = [](uv_stream_t* s, int status) {
    // Accept errors (say, out of file descriptors) are transient and not worth a log line each.
    if (status < 0) return;
    auto* server = static_cast<Server*>(s->data);
    auto conn = std::make_unique<Connection>(*server);
    Connection* c = conn.get();
    server->connections.emplace(c, std::move(conn));
    c->open(s);
  };
  // The listening socket is shared with the other generations, so it keeps the full backlog.
  if (int rc = uv_listen(as_stream(&listener), SOMAXCONN, on_connection); rc != 0) {
    log("cannot listen: {}", uv_strerror(rc));
    return 1;
  }
  auto on_signal = [](uv_signal_t* s, int signum) {
    static_cast<Server*>(s->data)->start_drain(signum == SIGINT ? "SIGINT" : "SIGTERM");
  };
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sigint, on_signal, SIGINT);

  // Connections the previous generation passed before the state transfer (none today: it passes
  // them while it drains, and those arrive through on_fd).
  while (hotrestart::Fd passed_fd = worker->take_fd(kConnFdName)) {
    std::lock_guard lock(passed_mutex);
    passed.push_back(std::move(passed_fd));
  }
  adopt_passed();

  worker->ready();
  worker->status(fmt::format("kv-cache {} serving, schema {}", opts.label, KV_SCHEMA));
  log("serving (mode {}, generation {})", hotrestart::mode_name(worker->mode()), worker->generation());
  uv_run(&loop, UV_RUN_DEFAULT);
  log("exiting: {}", stats_line());
  return 0;
}

// Connections the previous generation handed over: served like accepted ones.
void Server::adopt_passed() {
  std::vector<hotrestart::Fd> fds;
  {
    std::lock_guard lock(passed_mutex);
    fds.swap(passed);
  }
  if (finished) return;  // Nothing serves any more: the connections close with `fds`.
  for (auto& fd : fds) {
    auto conn = std::make_unique<Connection>(*this);
    Connection* c = conn.get();
    connections.emplace(c, std::move(conn));
    if (c->adopt(std::move(fd)) && draining) c->check_done();
  }
}

void Server::start_drain(const char* why) {
  if (draining || finished) return;
  draining = true;
  log("draining ({}): {} connection(s) open", why, connections.size());
  // uv_close only closes this process's copy of the listening socket. shutdown() must never be
  // used on it: the socket is shared with the next generation and would stop accepting for all.
  if (listener_open) {
    uv_close(as_handle(&listener), nullptr);
    listener_open = false;
  }
  const auto mode = worker->mode();
  if (mode != hotrestart::Mode::Supervised && mode != hotrestart::Mode::Stub) handoff = Handoff::kFailed;
  // Idle connections go to the next generation now; busy ones once their answer is written.
  // (close() only starts an asynchronous close, so the map is not modified while iterating.)
  for (auto& entry : connections)
    entry.first->check_done();
  if (connections.empty()) return finish();
  uv_timer_start(
      &grace_timer, [](uv_timer_t* t) { static_cast<Server*>(t->data)->expire_grace(); }, opts.idle_grace_ms, 0);
}

void Server::stop_now() {
  if (finished) return;
  log("stopping at once");
  draining = true;
  if (listener_open) {
    uv_close(as_handle(&listener), nullptr);
    listener_open = false;
  }
  for (auto& entry : connections)
    entry.first->close();
  finish();
}

void Server::expire_grace() {
  grace_expired = true;
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
  // With the listener closed and the async handles unreferenced, these are the last handles that
  // keep the loop running; uv_run returns once the connections have closed.
  for (uv_signal_t* s : {&sigterm, &sigint}) {
    if (uv_is_closing(as_handle(s)) == 0) uv_close(as_handle(s), nullptr);
  }
  if (uv_is_closing(as_handle(&grace_timer)) == 0) uv_close(as_handle(&grace_timer), nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  CLI::App app{
      fmt::format("kv-cache (schema {}): an HTTP key-value cache that keeps its contents across upgrades.", KV_SCHEMA)};
  app.add_option("--version", opts.label, "Version label reported in every response")->capture_default_str();
  app.add_option("--listen", opts.listen, "HOST:PORT to bind for the 'http' listener when not supervised")
      ->capture_default_str();
  app.add_option("--max-memory", opts.max_memory, "Bytes the cache may hold (keys, values and per-entry overhead)")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 46))
      ->capture_default_str();
  app.add_option("--idle-grace", opts.idle_grace_ms,
                 "Milliseconds after a drain begins before connections that could not be handed over are closed")
      ->check(CLI::Range(0, 86'400'000))  // Without a check, CLI11 would wrap a negative number around.
      ->capture_default_str();
  app.add_option("--prefill", opts.prefill,
                 "Entries key-0000000000, key-0000000001, ... to fill in at start-up, only if nothing was imported "
                 "from a previous generation (for benchmarks)")
      ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{1} << 32))
      ->capture_default_str();
  app.add_option("--prefill-value-bytes", opts.prefill_value_bytes, "Size of each prefilled value")
      ->check(CLI::Range(std::size_t{0}, static_cast<std::size_t>(kMaxBodyBytes)))
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
    // Destroyed in reverse order: the Worker first (it flushes what the next generation is owed and
    // joins its thread, so no callback outlives the server), then the server, then the cache.
    Cache cache(opts.max_memory);
    Server server(opts, cache);
    hotrestart::Worker worker({.fallback_listen = {{"http", opts.listen}}});
    server.worker = &worker;
    worker.add_section(kv::make_section(cache));
    worker.on_drain([&server] { uv_async_send(&server.drain_async); });
    worker.on_stop([&server] { uv_async_send(&server.stop_async); });
    worker.on_fd([&server](std::string name, hotrestart::Fd fd) {
      if (name != kConnFdName) return;  // `fd` closes it.
      {
        std::lock_guard lock(server.passed_mutex);
        server.passed.push_back(std::move(fd));
      }
      uv_async_send(&server.fd_async);
    });
    // No change can come from the previous generation any more: tombstones have done their job.
    worker.on_previous_gone([&cache] { cache.drop_tombstones(); });

    if (auto error = worker.start(); !error.empty()) {
      fmt::print(stderr, "kv-cache {}: {}\n", opts.label, error);
      return 1;
    }
    bool from_previous = false;
    for (const auto& s : worker.imported()) {
      if (s.imported) {
        from_previous = from_previous || s.name == kv::kSectionName;
        const kv::LoadReport load = cache.last_load();
        server.log(
            "section '{}': imported schema version {}, {} bytes, {} entries; load {:.3f} s ({}: copy {:.3f} s, "
            "checks {:.3f} s, conversion {:.3f} s)",
            s.name, s.version, s.bytes, cache.stats().entries, static_cast<double>(load.micros) / 1e6, load.layout,
            static_cast<double>(load.copy_micros) / 1e6, static_cast<double>(load.check_micros) / 1e6,
            static_cast<double>(load.convert_micros) / 1e6);
      } else {
        server.log("section '{}': starts cold: {}", s.name, s.reason);
      }
    }
    // Tombstones guard against late changes from a previous generation; without an imported
    // snapshot there is none worth guarding (or none at all, and on_previous_gone never comes).
    if (!from_previous) cache.drop_tombstones();
    // Before READY, so that a benchmark's first generation serves a full cache; a later generation
    // that imported the state keeps only what came over.
    if (!from_previous && opts.prefill > 0) {
      const std::uint64_t t0 = kv::monotonic_ns();
      cache.prefill(opts.prefill, opts.prefill_value_bytes);
      const kv::Stats s = cache.stats();
      server.log(
          "prefilled {} entries of {} value bytes in {:.3f} s: {} entries, {} bytes charged, {} bytes of pages, "
          "{} bytes of index",
          opts.prefill, opts.prefill_value_bytes, static_cast<double>(kv::monotonic_ns() - t0) / 1e9, s.entries,
          s.bytes, s.page_bytes, s.index_bytes);
    }
    return server.run();
  } catch (const std::exception& e) {
    fmt::print(stderr, "kv-cache {}: {}\n", opts.label, e.what());
    return 1;
  }
}
