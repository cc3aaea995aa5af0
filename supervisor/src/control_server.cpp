// The control socket on the loop: accepting, checking the peer's uid, reading one request (see
// control_server.h).
#include "control_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

#include <hotrestart/fd.h>
#include "log.h"
#include "uv_handles.h"

namespace hotrestart {

struct ControlServer::Client {
  ClientId id = 0;
  uv_pipe_t* pipe = nullptr;
  std::int64_t peer_uid = -1;  // SO_PEERCRED, read at accept.
  std::int64_t peer_pid = -1;
  LineReader reader;
  std::unique_ptr<Timer> deadline;
  bool request_seen = false;
  bool closing = false;
  // Let in past the cap, when every other connection held a request in progress: it may ask for
  // `status` or `stop` only.
  bool reserved = false;
  ControlServer* server = nullptr;
};

namespace {

// Every uv_pipe_t lives in its own allocation, freed by the close callback.
void close_pipe(uv_pipe_t* pipe) {
  auto* h = reinterpret_cast<uv_handle_t*>(pipe);
  if (uv_is_closing(h) == 0) uv_close(h, [](uv_handle_t* handle) { delete reinterpret_cast<uv_pipe_t*>(handle); });
}

struct WriteRequest {
  uv_write_t req;
  std::string bytes;
  bool close_after = false;
  ClientId id = 0;
  ControlServer* server = nullptr;
};

}  // namespace

ControlServer::ControlServer(uv_loop_t* loop, OnRequest on_request, OnDisconnect on_disconnect, Limits limits)
    : loop_(loop),
      on_request_(std::move(on_request)),
      on_disconnect_(std::move(on_disconnect)),
      limits_(limits),
      owner_uid_(::geteuid()) {}

ControlServer::~ControlServer() {
  for (auto& [id, c] : clients_) {
    c->pipe->data = nullptr;
    close_pipe(c->pipe);
  }
  clients_.clear();
  if (server_ != nullptr) {
    server_->data = nullptr;
    close_pipe(server_);
    // Remove the socket file only if it is still ours (another supervisor may have
    // replaced it after a forced takeover).
    struct stat st {};
    if (!path_.empty() && ::lstat(path_.c_str(), &st) == 0 && st.st_ino == inode_) ::unlink(path_.c_str());
  }
}

Status ControlServer::listen(const std::string& path) {
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Error::message(
        fmt::format("control socket path '{}' is longer than {} bytes", path, sizeof(sockaddr_un{}.sun_path) - 1));
  }
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode))
      return Error::message(fmt::format("control socket {}: the path exists and is not a socket", path));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    Fd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (probe && ::connect(probe.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
      return Error::message(fmt::format(
          "another supervisor is already running with control socket {} (give a different --name or --control)", path));
    }
    ::unlink(path.c_str());
  }
  server_ = new uv_pipe_t;
  uv_pipe_init(loop_, server_, 0);
  server_->data = this;
  // The umask makes the socket 0600 from the moment it exists, so there is no window in
  // which another user could connect; the chmod below states the intent explicitly.
  const mode_t old_mask = ::umask(0177);
  int rc = uv_pipe_bind(server_, path.c_str());
  ::umask(old_mask);
  if (rc != 0) return Error::message(fmt::format("control socket {}: bind: {}", path, uv_strerror(rc)));
  path_ = path;
  if (::chmod(path.c_str(), 0600) != 0) return Error::from_errno(fmt::format("chmod {}", path));
  if (::lstat(path.c_str(), &st) == 0) inode_ = st.st_ino;
  rc = uv_listen(reinterpret_cast<uv_stream_t*>(server_), 64, [](uv_stream_t* s, int status) {
    auto* self = static_cast<ControlServer*>(s->data);
    if (self != nullptr && status == 0) self->on_connection();
  });
  if (rc != 0) return Error::message(fmt::format("control socket {}: listen: {}", path, uv_strerror(rc)));
  return {};
}

void ControlServer::on_connection() {
  auto* pipe = new uv_pipe_t;
  uv_pipe_init(loop_, pipe, 0);
  if (uv_accept(reinterpret_cast<uv_stream_t*>(server_), reinterpret_cast<uv_stream_t*>(pipe)) != 0) {
    close_pipe(pipe);
    return;
  }
  // At the cap, the connection that has waited longest without sending a request makes room: idle
  // connections cannot lock `status` or `stop` out, however many are opened. When every connection
  // holds a request in progress, a few more are let in for `status` and `stop` alone (and among
  // those, too, the one idle longest makes room); only past those is the new one turned away, with
  // a line that says so. A connection never takes the place of one of the other kind.
  bool turn_away = false;
  bool reserved = false;
  const auto kind_count = [this](bool of_reserved) {
    return static_cast<std::size_t>(std::count_if(clients_.begin(), clients_.end(), [&](const auto& entry) {
      return entry.second->reserved == of_reserved && !entry.second->closing;
    }));
  };
  const auto make_room = [this](bool of_reserved) {
    const auto idle = std::find_if(clients_.begin(), clients_.end(), [&](const auto& entry) {
      return entry.second->reserved == of_reserved && !entry.second->request_seen && !entry.second->closing;
    });
    if (idle == clients_.end()) return false;
    log_warn("control: {} clients are connected; disconnecting the one idle longest to make room", clients_.size());
    send(idle->first,
         control_error("busy",
                       "too many control connections: this one had sent no request and made room for a newer one"),
         AfterSend::Close);
    return true;
  };
  if (kind_count(false) >= limits_.max_clients && !make_room(false)) {
    reserved = true;
    if (kind_count(true) >= limits_.reserved_clients && !make_room(true)) {
      log_warn("control: turning a connection away: {} clients are connected, each with a request in progress",
               clients_.size());
      turn_away = true;
    }
  }
  auto client = std::make_unique<Client>();
  client->id = next_id_++;
  client->pipe = pipe;
  client->server = this;
  client->deadline = std::make_unique<Timer>(loop_);
  client->reserved = reserved;
  pipe->data = client.get();
  Client& c = *client;
  clients_.emplace(c.id, std::move(client));

  uv_os_fd_t fd = -1;
  ucred cred{};
  socklen_t len = sizeof cred;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(pipe), &fd) != 0 ||
      ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    log_warn("control: cannot read the peer's credentials; disconnecting it");
    drop(c.id);
    return;
  }
  if (cred.uid != owner_uid_ && cred.uid != 0) {
    log_warn("control: refused pid {} of uid {} (only uid {} or root may control this supervisor)", cred.pid, cred.uid,
             owner_uid_);
    send(c.id,
         control_error("forbidden",
                       fmt::format("permission denied: uid {} may not control this supervisor (owner uid {})", cred.uid,
                                   owner_uid_)),
         AfterSend::Close);
    return;
  }

  if (turn_away) {
    send(c.id,
         control_error("busy", fmt::format("too many control connections: {} requests are in progress; try again",
                                           limits_.max_clients)),
         AfterSend::Close);
    return;
  }
  c.peer_uid = cred.uid;
  c.peer_pid = cred.pid;
  const ClientId id = c.id;
  // The loop's clock is read once per turn: after a long turn (hundreds of generations under a
  // slow build) it is seconds behind, and a deadline counted from it could pass before the request
  // already waiting in the socket is read.
  uv_update_time(loop_);
  c.deadline->start(limits_.request_deadline, [this, id] {
    send(id, control_error("bad-request", "no complete request arrived in time"), AfterSend::Close);
  });
  uv_read_start(
      reinterpret_cast<uv_stream_t*>(pipe),
      [](uv_handle_t*, size_t, uv_buf_t* buf) {
        // One small reusable buffer per read is enough: requests are tiny and the line
        // reader copies what it keeps.
        static char storage[16 * 1024];
        buf->base = storage;
        buf->len = sizeof storage;
      },
      [](uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
        auto* cl = static_cast<Client*>(s->data);
        if (cl != nullptr) cl->server->on_read(*cl, n, buf);
      });
}

void ControlServer::on_read(Client& c, ssize_t n, const uv_buf_t* buf) {
  if (n == 0) return;
  if (n < 0) {
    drop(c.id);
    return;
  }
  if (c.request_seen || c.closing) return;  // One request per connection; the rest is ignored.
  if (!c.reader.feed(std::string_view(buf->base, static_cast<std::size_t>(n)))) {
    log_warn("control: client sent a message over {} bytes; disconnecting it", kControlMaxLine);
    send(c.id, control_error("bad-request", fmt::format("message is over the {}-byte limit", kControlMaxLine)),
         AfterSend::Close);
    return;
  }
  auto line = c.reader.next_line();
  if (!line) return;
  c.request_seen = true;
  c.deadline->stop();
  uv_read_stop(reinterpret_cast<uv_stream_t*>(c.pipe));
  auto parsed = parse_control_line(*line);
  if (!parsed) {
    log_warn("control: bad request: {}", parsed.error().text());
    send(c.id, control_error("bad-request", parsed.error().text()), AfterSend::Close);
    return;
  }
  auto decoded = decode_control_request(parsed.value());
  if (auto* err = std::get_if<ControlRequestError>(&decoded)) {
    log_warn("control: bad request: {}", err->message);
    send(c.id, control_error(err->code, err->message), AfterSend::Close);
    return;
  }
  auto& request = std::get<ControlRequest>(decoded);
  if (c.reserved && request.command != ControlRequest::Command::ShowStatus &&
      request.command != ControlRequest::Command::Stop) {
    send(c.id,
         control_error("busy", fmt::format("too many control connections: {} requests are in progress, and the "
                                           "connections kept for status and stop take nothing else; try again",
                                           limits_.max_clients)),
         AfterSend::Close);
    return;
  }
  request.peer_uid = c.peer_uid;
  request.peer_pid = c.peer_pid;
  on_request_(c.id, request);
}

void ControlServer::send(ClientId id, const nlohmann::json& message, AfterSend after) {
  auto it = clients_.find(id);
  if (it == clients_.end() || it->second->closing) return;
  Client& c = *it->second;
  auto* stream = reinterpret_cast<uv_stream_t*>(c.pipe);
  if (uv_stream_get_write_queue_size(stream) > limits_.max_unsent_bytes) {
    log_warn("control: client is not reading its replies; disconnecting it");
    drop(id);
    return;
  }
  auto* w = new WriteRequest;
  w->bytes = to_line(message);
  w->close_after = after == AfterSend::Close;
  w->id = id;
  w->server = this;
  w->req.data = w;
  if (w->close_after) c.closing = true;
  uv_buf_t buf = uv_buf_init(w->bytes.data(), static_cast<unsigned>(w->bytes.size()));
  const int rc = uv_write(&w->req, stream, &buf, 1, [](uv_write_t* req, int status) {
    auto* wr = static_cast<WriteRequest*>(req->data);
    // A cancelled write means the client was already dropped (and maybe the server too).
    if (status != UV_ECANCELED && (wr->close_after || status < 0)) wr->server->drop(wr->id);
    delete wr;
  });
  if (rc != 0) {
    delete w;
    drop(id);
  }
}

void ControlServer::drop(ClientId id) {
  auto it = clients_.find(id);
  if (it == clients_.end()) return;
  it->second->pipe->data = nullptr;
  close_pipe(it->second->pipe);
  clients_.erase(it);
  if (on_disconnect_) on_disconnect_(id);
}

}  // namespace hotrestart
