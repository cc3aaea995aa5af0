// MetricsServer: the HTTP endpoint of `run --metrics` on the supervisor's loop. It answers
// `GET /metrics` (and HEAD) with what its render callback returns, in Prometheus's text format, one
// request per connection.
//
// Whoever can reach the address can read the metrics (they carry no secret: counts, durations,
// release numbers and SHA-256 prefixes), so it binds where --metrics says and nowhere else. Bounded
// against broken or hostile peers: at most kMaxClients connections (past it the oldest is dropped),
// a request of at most kMaxRequest bytes, which must be complete within kRequestDeadline; anything
// else is answered with a 4xx status and the connection is closed.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <hotrestart/base/result.h>

#include "listener_set.h"

namespace hotrestart {

class MetricsServer {
 public:
  static constexpr std::size_t kMaxClients = 16;
  static constexpr std::size_t kMaxRequest = 8 * 1024;
  static constexpr std::chrono::milliseconds kRequestDeadline{5000};

  // `render`: the body of a 200 answer.
  MetricsServer(uv_loop_t* loop, std::function<std::string()> render);
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Binds `spec` (tcp://HOST:PORT or unix:PATH, as --listen takes them) and starts serving.
  Status listen(const ListenSpec& spec);
  // What it is bound to ("127.0.0.1:9100", "unix:/run/x.sock").
  const std::string& address() const { return address_; }

  // One connection (public for the HTTP parser's callbacks).
  struct Client;

 private:
  void on_connection();
  void on_read(Client& c, ssize_t n, const uv_buf_t* buf);
  // Sends a whole answer, then closes the connection.
  void answer(Client& c, int code, std::string_view reason, std::string_view content_type, std::string body, bool head);
  void drop(std::uint64_t id);

  uv_loop_t* loop_;
  std::function<std::string()> render_;
  ListenerSet socket_;  // Owns the bound socket (and removes a unix socket's file at the end).
  uv_stream_t* server_ = nullptr;
  std::string address_;
  std::map<std::uint64_t, std::unique_ptr<Client>> clients_;
  std::uint64_t next_id_ = 1;
};

}  // namespace hotrestart
