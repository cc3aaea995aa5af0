// examples-http: the connection lifecycle both example servers share (see http_server.h).
#include "http_server.h"

#include <csignal>
#include <stdexcept>
#include <string>
#include <utility>

namespace examples::http {

namespace {

template <typename T>
uv_handle_t* as_handle(T* h) {
  return reinterpret_cast<uv_handle_t*>(h);
}

}  // namespace

void init_process() {
  std::signal(SIGPIPE, SIG_IGN);
  http_parser_set_max_header_size(kMaxHeaderBytes);
}

Listener::Listener(Server& server, std::string name, Transport transport)
    : server_(server), name_(std::move(name)), transport_(transport) {
  static_cast<void>(transport_ == Transport::kTcp ? uv_tcp_init(&server_.loop_, &handle_.tcp)
                                                  : uv_pipe_init(&server_.loop_, &handle_.pipe, 0));
  as_handle(&handle_)->data = this;
}

int Listener::open(hotrestart::Fd fd) {
  int rc = transport_ == Transport::kTcp ? uv_tcp_open(&handle_.tcp, fd.get()) : uv_pipe_open(&handle_.pipe, fd.get());
  if (rc == 0) static_cast<void>(fd.release());  // libuv owns it now.
  return rc;
}

int Listener::bind(const sockaddr& addr) {
  return transport_ == Transport::kTcp ? uv_tcp_bind(&handle_.tcp, &addr, 0) : UV_EAFNOSUPPORT;
}

int Listener::listen() {
  auto on_connection = [](uv_stream_t* s, int status) {
    // Accept errors (say, out of file descriptors) are transient and not worth a log line each.
    if (status < 0) return;
    auto* l = static_cast<Listener*>(s->data);
    l->server_.accept(*l);
  };
  // The listening socket may be shared with other generations, so it always gets the full backlog:
  // listen() on an inherited socket with a smaller one would shrink it for all of them.
  return uv_listen(stream(), SOMAXCONN, on_connection);
}

// One uv_write in flight; it owns the bytes until libuv is done with them.
struct Connection::WriteRequest {
  uv_write_t req{};
  Connection* conn = nullptr;
  std::string head;
  std::string body;
  bool interim = false;  // A "100 Continue": the request it answers is still being received.
};

const http_parser_settings Connection::kParserSettings = [] {
  http_parser_settings s{};
  http_parser_settings_init(&s);
  s.on_message_begin = [](http_parser* p) {
    auto* c = static_cast<Connection*>(p->data);
    c->in_message_ = true;
    c->head_ = false;
    c->on_message_begin();
    return 0;
  };
  s.on_url = [](http_parser* p, const char* at, std::size_t len) {
    return static_cast<Connection*>(p->data)->on_url({at, len});
  };
  s.on_header_field = [](http_parser* p, const char* at, std::size_t len) {
    return static_cast<Connection*>(p->data)->on_header_field({at, len});
  };
  s.on_header_value = [](http_parser* p, const char* at, std::size_t len) {
    return static_cast<Connection*>(p->data)->on_header_value({at, len});
  };
  s.on_headers_complete = [](http_parser* p) { return static_cast<Connection*>(p->data)->on_headers_complete(); };
  s.on_body = [](http_parser* p, const char* at, std::size_t len) {
    return static_cast<Connection*>(p->data)->on_body({at, len});
  };
  s.on_message_complete = [](http_parser* p) {
    auto* c = static_cast<Connection*>(p->data);
    c->in_message_ = false;
    // An upgrade (or CONNECT) is not supported, so the connection ends after this answer.
    c->keep_alive_ = http_should_keep_alive(p) != 0 && p->upgrade == 0;
    c->head_ = p->method == HTTP_HEAD;
    c->on_message_complete();
    // Pausing hands control back to process(), which answers before parsing any further.
    http_parser_pause(p, 1);
    return 0;
  };
  return s;
}();

void Connection::init(Transport transport) {
  static_cast<void>(transport == Transport::kTcp ? uv_tcp_init(&server_.loop_, &handle_.tcp)
                                                 : uv_pipe_init(&server_.loop_, &handle_.pipe, 0));
  uv_timer_init(&server_.loop_, &timer_);
  handle()->data = this;
  timer_.data = this;
  open_handles_ = 2;
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
}

void Connection::open(Listener& listener) {
  init(listener.transport_);
  if (uv_accept(listener.stream(), stream()) != 0) return close();
  update_reading();
}

void Connection::on_read(ssize_t nread, const uv_buf_t* buf) {
  if (closing_) return;
  if (nread == UV_EOF) {
    // libuv stops reading by itself at end of stream. A half-closed client still gets the answers
    // to the requests it completed; check_done() closes once they are written.
    peer_eof_ = true;
    reading_ = false;
    lingering_ ? close() : check_done();
    return;
  }
  if (nread < 0) return close();              // A reset or other error: there is no one to tell.
  if (lingering_ || final_response_) return;  // Read only so that the close is not a reset.
  input_.append(buf->base, static_cast<std::size_t>(nread));
  advance();
}

// Answers what can be answered, then decides reading and the end of the connection's life.
void Connection::advance() {
  process();
  update_reading();
  check_done();
}

void Connection::process() {
  while (!input_.empty() && !deferred_ && !final_response_ && !closing_ &&
         stream()->write_queue_size <= kMaxBufferedBytes) {
    const std::size_t used = http_parser_execute(&parser_, &kParserSettings, input_.data(), input_.size());
    input_.erase(0, used);
    const auto err = HTTP_PARSER_ERRNO(&parser_);
    if (err == HPE_PAUSED) {
      http_parser_pause(&parser_, 0);
      respond();
    } else if (err != HPE_OK) {
      reject(err);
    } else {
      break;  // Everything was consumed into a partial request; wait for more bytes.
    }
  }
}

void Connection::send(std::string head, std::string body, KeepAlive keep) {
  deferred_ = false;
  auto req = std::make_unique<WriteRequest>();
  req->conn = this;
  req->head = std::move(head);
  req->body = std::move(body);
  if (keep == KeepAlive::kNo) {
    final_response_ = true;
    input_.clear();
  }
  if (!queue_write(std::move(req))) close();
}

void Connection::send_interim(std::string head) {
  auto req = std::make_unique<WriteRequest>();
  req->conn = this;
  req->head = std::move(head);
  req->interim = true;
  queue_write(std::move(req));
}

// Starts writing one answer; false if libuv refused it (the connection is then broken).
bool Connection::queue_write(std::unique_ptr<WriteRequest> req) {
  req->req.data = req.get();
  std::array<uv_buf_t, 2> bufs = {uv_buf_init(req->head.data(), static_cast<unsigned>(req->head.size())),
                                  uv_buf_init(req->body.data(), static_cast<unsigned>(req->body.size()))};
  auto on_write = [](uv_write_t* w, int status_code) {
    std::unique_ptr<WriteRequest> done(static_cast<WriteRequest*>(w->data));
    Connection* c = done->conn;
    --c->writes_in_flight_;
    if (c->closing_) return;
    if (status_code < 0) return c->close();
    if (done->interim) return c->check_done();
    c->advance();  // Pipelined requests waiting on the write queue.
  };
  if (uv_write(&req->req, stream(), bufs.data(), req->body.empty() ? 1 : 2, on_write) != 0) return false;
  static_cast<void>(req.release());  // on_write takes ownership back.
  ++writes_in_flight_;
  return true;
}

void Connection::start_timer(std::uint64_t ms) {
  auto on_timeout = [](uv_timer_t* t) {
    auto* c = static_cast<Connection*>(t->data);
    c->on_timer();
    c->advance();
  };
  uv_timer_start(&timer_, on_timeout, ms, 0);
}

// Decides, after every event, whether the connection has reached the end of its life here.
void Connection::check_done() {
  if (closing_ || lingering_) return;
  const bool busy = deferred_ || writes_in_flight_ > 0;
  if (final_response_ && !busy) {
    start_linger();
  } else if (peer_eof_ && !busy) {
    close();  // The client will send nothing more, so a partial request can never complete.
  } else if (server_.draining_ && idle()) {
    if (server_.app_.hand_off(*this)) return;
    if (server_.grace_expired_) close();
  }
}

bool Connection::hand_over(const std::function<bool(uv_os_fd_t fd)>& pass) {
  if (reading_) {
    uv_read_stop(stream());
    reading_ = false;
  }
  uv_os_fd_t fd = -1;
  if (uv_fileno(handle(), &fd) != 0 || !pass(fd)) {
    update_reading();
    return false;
  }
  close();
  return true;
}

void Connection::start_linger() {
  lingering_ = true;
  uv_timer_stop(&timer_);
  auto on_shutdown = [](uv_shutdown_t* req, int status) {
    auto* c = static_cast<Connection*>(req->data);
    if (c->closing_) return;
    if (status < 0 || c->peer_eof_) return c->close();
    c->update_reading();
    uv_timer_start(
        &c->timer_, [](uv_timer_t* t) { static_cast<Connection*>(t->data)->close(); }, kLingerMs, 0);
  };
  shutdown_req_.data = this;
  if (peer_eof_ || uv_shutdown(&shutdown_req_, stream(), on_shutdown) != 0) close();
}

void Connection::update_reading() {
  const bool want = !closing_ && !peer_eof_ &&
                    (lingering_ || final_response_ ||
                     (input_.size() <= kMaxBufferedBytes && stream()->write_queue_size <= kMaxBufferedBytes));
  if (want && !reading_) {
    auto on_alloc = [](uv_handle_t* h, std::size_t, uv_buf_t* buf) {
      auto& storage = static_cast<Connection*>(h->data)->server_.read_buffer_;
      *buf = uv_buf_init(storage.data(), static_cast<unsigned>(storage.size()));
    };
    auto on_data = [](uv_stream_t* s, ssize_t nread, const uv_buf_t* buf) {
      static_cast<Connection*>(s->data)->on_read(nread, buf);
    };
    reading_ = uv_read_start(stream(), on_alloc, on_data) == 0;
  } else if (!want && reading_) {
    uv_read_stop(stream());
    reading_ = false;
  }
}

void Connection::close() {
  if (closing_) return;
  closing_ = true;
  reading_ = false;
  auto on_close = [](uv_handle_t* h) {
    auto* c = static_cast<Connection*>(h->data);
    if (--c->open_handles_ == 0) c->server_.remove(c);  // Destroys c.
  };
  uv_close(handle(), on_close);
  uv_close(as_handle(&timer_), on_close);
}

struct Server::Signal {
  uv_signal_t handle{};
  std::function<void(int signum)> handler;
};

Server::Server(Application& app) : app_(app) {
  if (int rc = uv_loop_init(&loop_); rc != 0) {
    throw std::runtime_error(std::string("cannot create event loop: ") + uv_strerror(rc));
  }
  uv_timer_init(&loop_, &grace_timer_);
  grace_timer_.data = this;
}

Server::~Server() {
  // Closes whatever an early return left open (after a drain, only what the application keeps
  // unreferenced) and lets libuv finish the closes, so that the loop can be closed. A connection
  // whose close was under way is removed on the way; that must not count as the end of a drain.
  finished_ = true;
  uv_walk(
      &loop_,
      [](uv_handle_t* h, void*) {
        if (uv_is_closing(h) == 0) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

// Creates a listener whose handle ~Server closes (through uv_walk) if nothing else does.
Listener& Server::add_listener(std::string name, Transport transport) {
  return *listeners_.emplace_back(std::make_unique<Listener>(*this, std::move(name), transport));
}

void Server::on_signal(int signum, std::function<void(int signum)> handler) {
  auto& s = *signals_.emplace_back(std::make_unique<Signal>());
  s.handler = std::move(handler);
  uv_signal_init(&loop_, &s.handle);
  s.handle.data = &s;
  uv_signal_start(
      &s.handle, [](uv_signal_t* h, int number) { static_cast<Signal*>(h->data)->handler(number); }, signum);
}

Connection& Server::add_connection() {
  auto conn = app_.make_connection();
  Connection& c = *conn;
  connections_.emplace(&c, std::move(conn));
  return c;
}

void Server::accept(Listener& listener) {
  add_connection().open(listener);
}

int Server::adopt(hotrestart::Fd fd) {
  Connection& c = add_connection();
  c.init(Transport::kTcp);
  // uv_tcp_open makes the socket non-blocking and owns it from then on.
  if (int rc = uv_tcp_open(&c.handle_.tcp, fd.get()); rc != 0) {
    c.close();  // `fd` closes the socket.
    return rc;
  }
  static_cast<void>(fd.release());
  c.update_reading();
  if (draining_) c.check_done();
  return 0;
}

// uv_close only closes this process's copy of each listening socket. shutdown() must never be used
// on one: the socket is shared with the next generation and would stop accepting for everyone.
void Server::close_listeners() {
  for (auto& l : listeners_) {
    if (uv_is_closing(as_handle(&l->handle_)) == 0) uv_close(as_handle(&l->handle_), nullptr);
  }
}

void Server::drain(std::uint64_t idle_grace_ms) {
  if (draining_ || finished_) return;
  draining_ = true;
  close_listeners();
  // Idle connections may go elsewhere now (Application::hand_off); busy ones once their answer is
  // written. close() only starts an asynchronous close, so the map is not modified while iterating.
  for (auto& entry : connections_)
    entry.first->check_done();
  if (connections_.empty()) return finish();
  uv_timer_start(
      &grace_timer_, [](uv_timer_t* t) { static_cast<Server*>(t->data)->expire_grace(); }, idle_grace_ms, 0);
}

void Server::stop() {
  if (finished_) return;
  draining_ = true;
  close_listeners();
  for (auto& entry : connections_)
    entry.first->close();
  finish();
}

bool Server::reopen() {
  if (!finished_ || !connections_.empty()) return false;
  listeners_.clear();
  signals_.clear();
  uv_timer_init(&loop_, &grace_timer_);
  grace_timer_.data = this;
  draining_ = false;
  grace_expired_ = false;
  finished_ = false;
  return true;
}

void Server::expire_grace() {
  grace_expired_ = true;
  for (auto& entry : connections_)
    entry.first->check_done();
}

void Server::remove(Connection* conn) {
  connections_.erase(conn);
  if (draining_ && connections_.empty()) finish();
}

void Server::finish() {
  if (finished_) return;
  finished_ = true;
  // With the listeners closed, these are the last handles the core keeps; uv_run returns once the
  // connections have closed, unless the application keeps a referenced handle of its own.
  for (auto& s : signals_)
    uv_close(as_handle(&s->handle), nullptr);
  uv_close(as_handle(&grace_timer_), nullptr);
}

}  // namespace examples::http
