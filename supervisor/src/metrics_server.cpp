// The metrics endpoint on the loop (see metrics_server.h). Requests are read with libhttp-parser.
#include "metrics_server.h"

#include <fcntl.h>
#include <http_parser.h>

#include <array>

#include <fmt/format.h>

#include "log.h"
#include "uv_handles.h"

namespace hotrestart {

struct MetricsServer::Client {
  std::uint64_t id = 0;
  uv_stream_t* stream = nullptr;
  http_parser parser{};
  std::string url;
  std::size_t received = 0;
  bool complete = false;
  bool answered = false;
  std::unique_ptr<Timer> deadline;
  std::array<char, 4096> buffer{};
  MetricsServer* server = nullptr;
};

namespace {

// Every handle lives in its own allocation, freed by the close callback.
void close_stream(uv_stream_t* stream) {
  auto* h = reinterpret_cast<uv_handle_t*>(stream);
  if (uv_is_closing(h) == 0) {
    uv_close(h, [](uv_handle_t* handle) { delete reinterpret_cast<uv_any_handle*>(handle); });
  }
}

uv_stream_t* new_stream(uv_loop_t* loop, bool tcp) {
  auto* any = new uv_any_handle;
  if (tcp) {
    uv_tcp_init(loop, &any->tcp);
  } else {
    uv_pipe_init(loop, &any->pipe, 0);
  }
  return reinterpret_cast<uv_stream_t*>(any);
}

struct Write {
  uv_write_t req{};
  std::string bytes;
};

int on_url(http_parser* p, const char* at, std::size_t length) {
  auto* c = static_cast<MetricsServer::Client*>(p->data);
  c->url.append(at, length);
  return 0;
}

int on_message_complete(http_parser* p) {
  auto* c = static_cast<MetricsServer::Client*>(p->data);
  c->complete = true;
  // One request per connection: whatever follows it is not read.
  http_parser_pause(p, 1);
  return 0;
}

const http_parser_settings& parser_settings() {
  static const http_parser_settings settings = [] {
    http_parser_settings s{};
    s.on_url = on_url;
    s.on_message_complete = on_message_complete;
    return s;
  }();
  return settings;
}

}  // namespace

MetricsServer::MetricsServer(uv_loop_t* loop, std::function<std::string()> render)
    : loop_(loop), render_(std::move(render)) {}

MetricsServer::~MetricsServer() {
  for (auto& [id, c] : clients_) {
    c->stream->data = nullptr;
    close_stream(c->stream);
  }
  clients_.clear();
  if (server_ != nullptr) {
    server_->data = nullptr;
    close_stream(server_);
  }
}

Status MetricsServer::listen(const ListenSpec& spec) {
  auto bound = ListenerSet::bind_all({spec});
  if (!bound) return bound.error();
  socket_ = std::move(bound).value();
  const Listener& l = socket_.listeners().front();
  address_ = l.address;
  // libuv owns (and closes) a descriptor of its own; the set keeps the original, and the file of a
  // unix socket, until the supervisor ends.
  const int fd = ::fcntl(l.fd.get(), F_DUPFD_CLOEXEC, 3);
  if (fd < 0) return Error::from_errno("metrics: dup");
  const bool tcp = spec.kind == ListenSpec::Kind::Tcp;
  server_ = new_stream(loop_, tcp);
  server_->data = this;
  const int rc = tcp ? uv_tcp_open(reinterpret_cast<uv_tcp_t*>(server_), fd)
                     : uv_pipe_open(reinterpret_cast<uv_pipe_t*>(server_), fd);
  if (rc != 0) {
    ::close(fd);
    return Error::message(fmt::format("metrics {}: {}", spec.text, uv_strerror(rc)));
  }
  const int lrc = uv_listen(server_, SOMAXCONN, [](uv_stream_t* s, int status) {
    auto* self = static_cast<MetricsServer*>(s->data);
    if (self != nullptr && status == 0) self->on_connection();
  });
  if (lrc != 0) return Error::message(fmt::format("metrics {}: listen: {}", spec.text, uv_strerror(lrc)));
  return {};
}

void MetricsServer::on_connection() {
  uv_stream_t* stream = new_stream(loop_, server_->type == UV_TCP);
  if (uv_accept(server_, stream) != 0) {
    close_stream(stream);
    return;
  }
  // A scraper holds one connection at a time; past the cap the oldest, which is the likeliest to be
  // stuck, makes room.
  if (clients_.size() >= kMaxClients) drop(clients_.begin()->first);
  auto c = std::make_unique<Client>();
  c->id = next_id_++;
  c->stream = stream;
  c->server = this;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c.get();
  stream->data = c.get();
  c->deadline = std::make_unique<Timer>(loop_);
  // The loop's clock may be a long turn behind: the deadline counts from now.
  uv_update_time(loop_);
  const std::uint64_t id = c->id;
  c->deadline->start(kRequestDeadline, [this, id] { drop(id); });
  Client& client = *c;
  clients_.emplace(id, std::move(c));
  const int rc = uv_read_start(
      stream,
      [](uv_handle_t* h, std::size_t, uv_buf_t* buf) {
        auto* cl = static_cast<Client*>(h->data);
        *buf = cl != nullptr ? uv_buf_init(cl->buffer.data(), static_cast<unsigned>(cl->buffer.size()))
                             : uv_buf_init(nullptr, 0);
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
        auto* cl = static_cast<Client*>(s->data);
        if (cl != nullptr) cl->server->on_read(*cl, n, buf);
      });
  if (rc != 0) drop(client.id);
}

void MetricsServer::on_read(Client& c, ssize_t n, const uv_buf_t* buf) {
  if (n == 0) return;
  if (n < 0 || c.answered) {
    if (!c.answered) drop(c.id);
    return;
  }
  c.received += static_cast<std::size_t>(n);
  if (c.received > kMaxRequest) {
    answer(c, 431, "Request Header Fields Too Large", "text/plain; charset=utf-8",
           fmt::format("a request may be at most {} bytes\n", kMaxRequest), false);
    return;
  }
  http_parser_execute(&c.parser, &parser_settings(), buf->base, static_cast<std::size_t>(n));
  const auto error = HTTP_PARSER_ERRNO(&c.parser);
  if (error != HPE_OK && error != HPE_PAUSED) {
    answer(c, 400, "Bad Request", "text/plain; charset=utf-8",
           fmt::format("not an HTTP request: {}\n", http_errno_description(error)), false);
    return;
  }
  if (!c.complete) return;
  const bool head = c.parser.method == HTTP_HEAD;
  if (c.parser.method != HTTP_GET && !head) {
    answer(c, 405, "Method Not Allowed", "text/plain; charset=utf-8", "only GET and HEAD\n", false);
    return;
  }
  const std::string path = c.url.substr(0, c.url.find('?'));
  if (path != "/metrics") {
    answer(c, 404, "Not Found", "text/plain; charset=utf-8", "not found; the metrics are at /metrics\n", head);
    return;
  }
  answer(c, 200, "OK", "text/plain; version=0.0.4; charset=utf-8", render_(), head);
}

void MetricsServer::answer(Client& c, int code, std::string_view reason, std::string_view content_type,
                           std::string body, bool head) {
  c.answered = true;
  c.deadline->stop();
  uv_read_stop(c.stream);
  auto* w = new Write;
  w->bytes = fmt::format("HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
                         code, reason, content_type, body.size(), code == 405 ? "Allow: GET, HEAD\r\n" : "");
  if (!head) w->bytes += body;
  w->req.data = w;
  uv_buf_t b = uv_buf_init(w->bytes.data(), static_cast<unsigned>(w->bytes.size()));
  const int rc = uv_write(&w->req, c.stream, &b, 1, [](uv_write_t* req, int) {
    std::unique_ptr<Write> done(static_cast<Write*>(req->data));
    // Null once the connection was dropped (its close cancels the write).
    if (auto* cl = static_cast<Client*>(req->handle->data)) cl->server->drop(cl->id);
  });
  if (rc != 0) {
    delete w;
    drop(c.id);
  }
}

void MetricsServer::drop(std::uint64_t id) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  it->second->stream->data = nullptr;
  close_stream(it->second->stream);
  clients_.erase(it);
}

}  // namespace hotrestart
