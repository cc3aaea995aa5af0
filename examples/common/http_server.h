// examples-http: the connection lifecycle the example servers share. Listeners accept; each
// connection reads, parses with http_parser, answers one request at a time and ends with a
// lingering close, so that a response is never destroyed by a reset; a drain closes the listeners
// (close(), never shutdown()) and lets the connections finish. A server supplies its answers
// through Connection's hooks and its drain policy through Application; the rest is here.
//
// The application declares its http::Server after its own libuv handles: ~Server closes every
// handle on the loop, so they must still exist then.
#pragma once

#include <http_parser.h>
#include <uv.h>

#include <hotrestart/fd.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace examples::http {

// The parser refuses headers larger than this (HPE_HEADER_OVERFLOW); the servers bound the URL by it too.
inline constexpr std::uint32_t kMaxHeaderBytes = 16 * 1024;
// Reading and parsing pause while more than this waits unparsed or unsent, so that a client that
// pipelines requests without reading the answers cannot make the server grow without bound.
inline constexpr std::size_t kMaxBufferedBytes = 64 * 1024;
// After the last response the write side is shut down and the server waits this long for the
// client to close first: closing with unread client data would send a reset, which can destroy
// the response before it is read.
inline constexpr std::uint64_t kLingerMs = 1000;

// Process-wide settings a server makes before it serves: SIGPIPE is ignored, so that a write to a
// client that has gone away fails with EPIPE instead of killing the process, and http_parser's
// header limit (a global) is set to kMaxHeaderBytes.
void init_process();

enum class Transport { kTcp, kPipe };
// Whether the connection stays open after an answer.
enum class KeepAlive { kNo, kYes };

// A listening or connected stream is either TCP or a Unix socket. The union gives both the same
// storage, so that everything after the accept only deals with uv_stream_t.
union StreamHandle {
  uv_tcp_t tcp;
  uv_pipe_t pipe;
};

class Server;

// A listening socket. Server::drain() and stop() close it with close(), never shutdown(): the
// socket is shared with the other generations, and shutdown() would stop accepting for all.
class Listener {
 public:
  Listener(Server& server, std::string name, Transport transport);
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;

  // Wraps a listening socket (uv_tcp_open or uv_pipe_open). Returns a libuv error code.
  [[nodiscard]] int open(hotrestart::Fd fd);
  // Binds a TCP listener. Returns a libuv error code.
  [[nodiscard]] int bind(const sockaddr& addr);
  // Starts accepting. Returns a libuv error code.
  [[nodiscard]] int listen();
  [[nodiscard]] const std::string& name() const { return name_; }  // How error messages refer to it.

 private:
  friend class Server;
  friend class Connection;
  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&handle_); }

  Server& server_;
  std::string name_;
  Transport transport_;
  StreamHandle handle_{};
};

// One client connection, accepted or adopted. It answers requests strictly one at a time, in
// order: the parser pauses at the end of each request, so pipelined requests wait unparsed until
// the answer to the one before is queued.
class Connection {
 public:
  explicit Connection(Server& server) : server_(server) {}
  virtual ~Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Queues the answer to the request respond() or reject() was called for. KeepAlive::kNo makes
  // it the last: further input is discarded, and once it is written the write side is shut down.
  void send(std::string head, std::string body, KeepAlive keep);
  // Queues an interim answer (100 Continue) while the request is still arriving. If it cannot be
  // written, the final answer finds the connection broken.
  void send_interim(std::string head);
  // Passes the connection on without a byte or a FIN to the client: `pass` gets the socket and
  // must duplicate it, so closing this process's copy leaves the connection open. Whatever the
  // client sends from now on waits in the socket for the new owner. False, and reading resumes,
  // if `pass` refused it.
  bool hand_over(const std::function<bool(uv_os_fd_t fd)>& pass);
  // Closes at once: for a client that is gone or a server that stops.
  void close();

 protected:
  [[nodiscard]] bool in_message() const { return in_message_; }          // A request has begun but is not complete.
  [[nodiscard]] bool keep_alive() const { return keep_alive_; }          // What the last complete request asked for.
  [[nodiscard]] bool head_request() const { return head_; }              // The last complete request was HEAD.
  [[nodiscard]] bool final_response() const { return final_response_; }  // The last answer is queued.
  [[nodiscard]] bool closing() const { return closing_; }

  // Called as http_parser's callbacks of the same names; a nonzero return stops the parser with
  // an error, and reject() is called for it.
  virtual void on_message_begin() {}
  virtual int on_url(std::string_view /*part*/) { return 0; }
  virtual int on_header_field(std::string_view /*part*/) { return 0; }
  virtual int on_header_value(std::string_view /*part*/) { return 0; }
  virtual int on_headers_complete() { return 0; }  // 1 would tell http_parser to skip the body.
  virtual int on_body(std::string_view /*part*/) { return 0; }
  virtual void on_message_complete() {}
  // A request is complete: answer it with send(), or call defer() and send() later.
  virtual void respond() = 0;
  // The parser refused the input with `err`: answer with KeepAlive::kNo.
  virtual void reject(http_errno err) = 0;
  // The timer start_timer() set has run out. The connection then carries on with what waited.
  virtual void on_timer() {}

  // The answer to the request respond() was called for comes later: parsing waits for its send().
  void defer() { deferred_ = true; }
  // One timer a connection, shared with the lingering close (which stops it).
  void start_timer(std::uint64_t ms);
  void stop_timer() { uv_timer_stop(&timer_); }
  [[nodiscard]] const http_parser& parser() const { return parser_; }

 private:
  friend class Server;
  struct WriteRequest;

  [[nodiscard]] bool idle() const { return !in_message_ && input_.empty() && !deferred_ && writes_in_flight_ == 0; }
  void init(Transport transport);
  void open(Listener& listener);
  void on_read(ssize_t nread, const uv_buf_t* buf);
  void advance();
  void process();
  bool queue_write(std::unique_ptr<WriteRequest> req);
  void check_done();
  void start_linger();
  void update_reading();
  uv_stream_t* stream() { return reinterpret_cast<uv_stream_t*>(&handle_); }
  uv_handle_t* handle() { return reinterpret_cast<uv_handle_t*>(&handle_); }

  static const http_parser_settings kParserSettings;

  Server& server_;
  StreamHandle handle_{};
  uv_timer_t timer_{};  // The application's (start_timer), and later bounds the lingering close.
  uv_shutdown_t shutdown_req_{};
  http_parser parser_{};
  std::string input_;  // Received bytes the parser has not consumed yet.
  int open_handles_ = 0;
  int writes_in_flight_ = 0;
  bool reading_ = false;
  bool in_message_ = false;
  bool deferred_ = false;  // respond() called defer(); its send() has not come yet.
  bool keep_alive_ = false;
  bool head_ = false;
  bool final_response_ = false;  // Further input is discarded.
  bool peer_eof_ = false;
  bool lingering_ = false;
  bool closing_ = false;
};

// What a server built on this core supplies besides its connections' hooks.
class Application {
 public:
  virtual ~Application() = default;
  // A new connection of the server's own kind; the core opens it.
  virtual std::unique_ptr<Connection> make_connection() = 0;
  // During a drain, a connection with nothing in flight: true if it went elsewhere
  // (Connection::hand_over). Otherwise it stays until the grace period ends, then closes.
  virtual bool hand_off(Connection& /*conn*/) { return false; }
};

// The event loop, the listeners and the connections of one server.
class Server {
 public:
  explicit Server(Application& app);  // Throws std::runtime_error if the loop cannot be created.
  // Closes every handle still open on the loop, the application's own included (so the server
  // must be destroyed before them), and lets libuv finish the closes, so that nothing leaks.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  [[nodiscard]] uv_loop_t& loop() { return loop_; }
  Listener& add_listener(std::string name, Transport transport);
  [[nodiscard]] const std::vector<std::unique_ptr<Listener>>& listeners() const { return listeners_; }
  // Handles `signum` until the server has finished (drain() or stop()).
  void on_signal(int signum, std::function<void(int signum)> handler);
  // Serves a TCP connection another process passed, like an accepted one. Returns a libuv error
  // code; on an error the connection is closed.
  [[nodiscard]] int adopt(hotrestart::Fd fd);

  // Closes the listeners and lets the connections finish: each closes after its last answer, is
  // handed off (Application::hand_off) once idle, or closes idle once `idle_grace_ms` have passed.
  // When the last is gone, the signals close and uv_run returns.
  void drain(std::uint64_t idle_grace_ms);
  // Closes the listeners and every connection at once.
  void stop();
  // After a drain or stop has finished and uv_run has returned: forgets the closed listeners and
  // signal handlers, so that the server can be given listeners and run again (a resumed
  // generation). Returns false (and changes nothing) if it has not finished.
  bool reopen();

  [[nodiscard]] bool draining() const { return draining_; }
  [[nodiscard]] bool finished() const { return finished_; }
  [[nodiscard]] std::size_t connection_count() const { return connections_.size(); }

 private:
  friend class Listener;
  friend class Connection;
  struct Signal;

  Connection& add_connection();
  void accept(Listener& listener);
  void close_listeners();
  void expire_grace();
  void remove(Connection* conn);
  void finish();

  Application& app_;
  uv_loop_t loop_{};
  // Every read is copied out of this buffer before the next one, so one buffer serves all.
  std::array<char, 64 * 1024> read_buffer_{};
  std::vector<std::unique_ptr<Listener>> listeners_;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections_;
  std::vector<std::unique_ptr<Signal>> signals_;
  uv_timer_t grace_timer_{};
  bool draining_ = false;
  bool grace_expired_ = false;
  bool finished_ = false;
};

}  // namespace examples::http
