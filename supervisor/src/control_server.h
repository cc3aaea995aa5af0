// ControlServer: the libuv side of the control socket. It accepts connections, checks the
// peer's uid, cuts the byte stream into bounded lines and decodes one request per
// connection; what a request *means* is decided by the Supervisor through a callback.
//
// Hostile or broken peers cannot hurt the supervisor: a peer of another uid is refused and
// disconnected, a line over the limit or that is not a valid request gets an error and a
// disconnect, a peer that sends nothing within the request deadline is dropped, a peer that
// stops reading is dropped when its unsent replies pass a bound, and the number of
// connections is capped.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include <hotrestart/base/result.h>
#include "control_protocol.h"

namespace hotrestart {

using ClientId = std::uint64_t;

enum class AfterSend { KeepOpen, Close };

class ControlServer {
 public:
  using OnRequest = std::function<void(ClientId, const ControlRequest&)>;
  using OnDisconnect = std::function<void(ClientId)>;

  struct Limits {
    std::size_t max_clients = 64;
    // Past the cap, when every connection holds a request in progress: this many more, for `status`
    // and `stop` only.
    std::size_t reserved_clients = 4;
    std::chrono::milliseconds request_deadline{5000};
    std::size_t max_unsent_bytes = 1 << 20;
  };

  ControlServer(uv_loop_t* loop, OnRequest on_request, OnDisconnect on_disconnect, Limits limits);
  ControlServer(uv_loop_t* loop, OnRequest on_request, OnDisconnect on_disconnect)
      : ControlServer(loop, std::move(on_request), std::move(on_disconnect), Limits{}) {}
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Binds the socket with mode 0600. Refuses to take over the path of a live supervisor.
  Status listen(const std::string& path);

  void send(ClientId id, const nlohmann::json& message, AfterSend after);
  bool connected(ClientId id) const { return clients_.count(id) != 0; }
  std::size_t client_count() const { return clients_.size(); }
  const std::string& path() const { return path_; }

 private:
  struct Client;
  void on_connection();
  void on_read(Client& c, ssize_t n, const uv_buf_t* buf);
  void drop(ClientId id);

  uv_loop_t* loop_;
  OnRequest on_request_;
  OnDisconnect on_disconnect_;
  Limits limits_;
  uv_pipe_t* server_ = nullptr;
  std::string path_;
  ino_t inode_ = 0;
  std::map<ClientId, std::unique_ptr<Client>> clients_;
  ClientId next_id_ = 1;
  uid_t owner_uid_;
};

}  // namespace hotrestart
