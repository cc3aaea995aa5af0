// HTTP/1.1 load client: blocking sockets with a deadline on every operation.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>
#include <algorithm>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <stdexcept>

#include "testsupport.h"

namespace hotrestart::testsupport {

struct LoadClient::Shared {
  std::atomic<bool> stop{false};
  std::atomic<std::size_t> claimed{0};
  std::atomic<std::size_t> requests{0};
  std::atomic<std::size_t> ok{0};
  std::atomic<std::size_t> failed{0};
  std::atomic<std::uint64_t> next_connection{1};

  // Results (guarded by mu).
  mutable std::mutex mu;
  std::vector<Response> responses;
  std::vector<Failure> failures;
  std::map<std::string, std::size_t> versions;
  std::map<std::string, std::size_t> reasons;

  // Thread lifecycle and interruptible sleeps (guarded by life_mu).
  mutable std::mutex life_mu;
  mutable std::condition_variable life_cv;
  int active = 0;

  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  std::string request;

  // Sleeps up to d; returns early (false) if stop was requested.
  bool sleep_unless_stopped(Clock::duration d) {
    if (d <= Clock::duration::zero()) return !stop.load();
    std::unique_lock lk(life_mu);
    return !life_cv.wait_for(lk, d, [&] { return stop.load(); });
  }
};

namespace {

std::string errno_text(int err) {
  return std::strerror(err);
}

char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t'))
    s.remove_suffix(1);
  return s;
}

int ms_left(Clock::time_point deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<long long>(left, 1'000'000));
}

// Returns 0 when ready, else an errno-ish value (ETIMEDOUT on deadline).
int wait_fd(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    int left = ms_left(deadline);
    if (left == 0) return ETIMEDOUT;
    pollfd p{fd, events, 0};
    int r = ::poll(&p, 1, left);
    if (r > 0) return 0;  // readable/writable or error/hangup: the next call says which
    if (r == 0) return ETIMEDOUT;
    if (errno != EINTR) return errno;
  }
}

struct Parsed {
  int status = 0;
  bool close = false;
  std::string body;
};

// Parses the header block (without the final CRLFCRLF). Returns an error reason or "".
std::string parse_head(std::string_view head, Parsed& p, std::optional<std::size_t>& content_length) {
  auto eol = head.find("\r\n");
  std::string_view status_line = head.substr(0, eol);
  // "HTTP/1.1 200 OK"
  if (status_line.size() < 12 || status_line.substr(0, 5) != "HTTP/" || status_line[8] != ' ') {
    return "malformed: bad status line";
  }
  std::string_view proto = status_line.substr(0, 8);
  bool http10 = proto == "HTTP/1.0";
  if (!http10 && proto != "HTTP/1.1") return "malformed: bad HTTP version";
  std::string_view code = status_line.substr(9, 3);
  if (std::from_chars(code.data(), code.data() + 3, p.status).ec != std::errc{} || p.status < 100 || p.status > 999 ||
      (status_line.size() > 12 && status_line[12] != ' ')) {
    return "malformed: bad status code";
  }
  bool saw_close = false, saw_keepalive = false;
  std::string_view rest = eol == std::string_view::npos ? std::string_view{} : head.substr(eol + 2);
  while (!rest.empty()) {
    auto e = rest.find("\r\n");
    std::string_view line = rest.substr(0, e);
    rest = e == std::string_view::npos ? std::string_view{} : rest.substr(e + 2);
    auto colon = line.find(':');
    if (colon == std::string_view::npos || colon == 0) return "malformed: bad header line";
    std::string_view name = line.substr(0, colon);
    std::string_view value = trim(line.substr(colon + 1));
    if (iequals(name, "Content-Length")) {
      std::size_t n = 0;
      auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), n);
      if (ec != std::errc{} || ptr != value.data() + value.size() || value.empty()) {
        return "malformed: bad Content-Length";
      }
      if (content_length && *content_length != n) return "malformed: conflicting Content-Length";
      content_length = n;
    } else if (iequals(name, "Transfer-Encoding")) {
      return "malformed: Transfer-Encoding not supported";
    } else if (iequals(name, "Connection")) {
      std::string_view v = value;
      while (!v.empty()) {
        auto comma = v.find(',');
        std::string_view tok = trim(v.substr(0, comma));
        if (iequals(tok, "close")) saw_close = true;
        if (iequals(tok, "keep-alive")) saw_keepalive = true;
        v = comma == std::string_view::npos ? std::string_view{} : v.substr(comma + 1);
      }
    }
  }
  p.close = saw_close || (http10 && !saw_keepalive);
  if (!content_length) {
    if (p.status == 204 || p.status == 304 || p.status < 200) {
      content_length = 0;
    } else {
      return "malformed: no Content-Length";
    }
  }
  if (*content_length > (64u << 20)) return "malformed: Content-Length too large";
  return {};
}

// Reads one response. Returns an error reason or "".
std::string read_response(int fd, Clock::time_point deadline, Parsed& p) {
  std::string buf;
  std::optional<std::size_t> total;  // header + body size once the head is parsed
  char chunk[16384];
  for (;;) {
    if (total && buf.size() >= *total) break;
    int w = wait_fd(fd, POLLIN, deadline);
    if (w == ETIMEDOUT) return buf.empty() ? "read: timeout" : "read: timeout mid-response";
    if (w != 0) return "read: poll: " + errno_text(w);
    ssize_t n = ::recv(fd, chunk, sizeof chunk, MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return "read: " + errno_text(errno);
    }
    if (n == 0) return buf.empty() ? "read: EOF before response" : "read: EOF mid-response";
    buf.append(chunk, static_cast<std::size_t>(n));
    if (!total) {
      auto end = buf.find("\r\n\r\n");
      if (end == std::string::npos) {
        if (buf.size() > 65536) return "malformed: header too large";
        continue;
      }
      std::optional<std::size_t> clen;
      std::string e = parse_head(std::string_view(buf).substr(0, end), p, clen);
      if (!e.empty()) return e;
      total = end + 4 + *clen;
    }
  }
  if (buf.size() > *total) return "malformed: extra data after response";
  auto head_len = buf.find("\r\n\r\n") + 4;
  p.body = buf.substr(head_len);
  return {};
}

std::string send_all(int fd, std::string_view data, Clock::time_point deadline) {
  while (!data.empty()) {
    int w = wait_fd(fd, POLLOUT, deadline);
    if (w == ETIMEDOUT) return "send: timeout";
    if (w != 0) return "send: poll: " + errno_text(w);
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      return "send: " + errno_text(errno);
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return {};
}

// Connects with a deadline; returns the fd (blocking, CLOEXEC) or -1 with reason.
int connect_to(const sockaddr_storage& addr, socklen_t len, Clock::time_point deadline,
               std::chrono::milliseconds io_timeout, std::string& reason) {
  int fd = ::socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) {
    reason = "socket: " + errno_text(errno);
    return -1;
  }
  auto fail = [&](std::string r) {
    ::close(fd);
    reason = std::move(r);
    return -1;
  };
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), len) != 0) {
    if (errno != EINPROGRESS && errno != EINTR) return fail("connect: " + errno_text(errno));
    int w = wait_fd(fd, POLLOUT, deadline);
    if (w == ETIMEDOUT) return fail("connect: timeout");
    if (w != 0) return fail("connect: poll: " + errno_text(w));
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) return fail("connect: " + errno_text(errno));
    if (soerr != 0) return fail("connect: " + errno_text(soerr));
  }
  // Blocking socket from here on; every operation still polls against the deadline,
  // and the kernel timeouts are a backstop.
  int fl = ::fcntl(fd, F_GETFL);
  if (fl >= 0) ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(io_timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((io_timeout.count() % 1000) * 1000);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

std::string fmt_offset(Clock::time_point t, Clock::time_point base) {
  return fmt::format("+{:.3f}s", std::chrono::duration<double>(t - base).count());
}

}  // namespace

BodyFields parse_body_fields(std::string_view body) {
  BodyFields f;
  while (!body.empty()) {
    auto ws = body.find_first_of(" \t\r\n");
    std::string_view tok = body.substr(0, ws);
    body = ws == std::string_view::npos ? std::string_view{} : body.substr(ws + 1);
    auto eq = tok.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view key = tok.substr(0, eq), val = tok.substr(eq + 1);
    auto num = [&](long long& out) {
      long long v = 0;
      auto [ptr, ec] = std::from_chars(val.data(), val.data() + val.size(), v);
      if (ec == std::errc{} && ptr == val.data() + val.size()) out = v;
    };
    if (key == "version") {
      f.version = std::string(val);
    } else if (key == "pid") {
      num(f.pid);
    } else if (key == "generation") {
      num(f.generation);
    }
  }
  return f;
}

LoadClient::LoadClient(Config cfg) : cfg_(std::move(cfg)), shared_(std::make_shared<Shared>()) {}

LoadClient::~LoadClient() {
  stop();
}

void LoadClient::start() {
  std::lock_guard lk(lifecycle_mu_);
  if (started_) throw std::logic_error("LoadClient::start called twice");
  if (cfg_.threads < 1) throw std::invalid_argument("LoadClient: threads must be >= 1");
  if (cfg_.port == 0) throw std::invalid_argument("LoadClient: port not set");

  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(cfg_.port);
  int rc = ::getaddrinfo(cfg_.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || res == nullptr) {
    throw std::runtime_error("LoadClient: cannot resolve " + cfg_.host + ": " + ::gai_strerror(rc));
  }
  std::memcpy(&shared_->addr, res->ai_addr, res->ai_addrlen);
  shared_->addr_len = res->ai_addrlen;
  ::freeaddrinfo(res);

  std::string host = cfg_.host.find(':') != std::string::npos ? "[" + cfg_.host + "]" : cfg_.host;
  shared_->request = "GET " + cfg_.path + " HTTP/1.1\r\nHost: " + host + ":" + port + "\r\n";
  if (cfg_.mode == Mode::NewConnection) shared_->request += "Connection: close\r\n";
  shared_->request += "\r\n";

  started_ = true;
  {
    std::lock_guard l2(shared_->life_mu);
    started_at_ = Clock::now();
    shared_->active = cfg_.threads;
  }
  threads_.reserve(static_cast<std::size_t>(cfg_.threads));
  for (int i = 0; i < cfg_.threads; ++i)
    threads_.emplace_back([this, i] { worker(i); });
}

void LoadClient::stop() {
  std::lock_guard lk(lifecycle_mu_);
  {
    std::lock_guard l2(shared_->life_mu);
    shared_->stop = true;
  }
  shared_->life_cv.notify_all();
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
}

Clock::time_point LoadClient::start_time() const {
  std::lock_guard lk(shared_->life_mu);
  return started_at_;
}

bool LoadClient::done() const {
  std::lock_guard lk(shared_->life_mu);
  return started_at_ != Clock::time_point{} && shared_->active == 0;
}

bool LoadClient::wait_done(std::chrono::milliseconds timeout) const {
  std::unique_lock lk(shared_->life_mu);
  return shared_->life_cv.wait_for(lk, timeout, [&] { return shared_->active == 0; });
}

void LoadClient::worker(int index) {
  Shared& s = *shared_;
  const bool keepalive = cfg_.mode == Mode::KeepAlive;
  int fd = -1;
  std::uint64_t conn_id = 0;
  auto close_conn = [&] {
    if (fd >= 0) ::close(fd);
    fd = -1;
    conn_id = 0;
  };

  auto record_failure = [&](Clock::time_point start, bool reused, std::string reason) {
    Failure f{start, Clock::now(), std::move(reason), reused, index, conn_id};
    s.failed.fetch_add(1);
    s.requests.fetch_add(1);
    std::lock_guard lk(s.mu);
    ++s.reasons[f.reason];
    if (s.failures.size() < cfg_.max_stored_failures) s.failures.push_back(std::move(f));
  };

  while (!s.stop.load()) {
    if (cfg_.max_requests && s.claimed.fetch_add(1) >= *cfg_.max_requests) break;
    const auto start = Clock::now();
    const auto deadline = start + cfg_.request_timeout;
    const bool reused = fd >= 0;
    std::string reason;
    if (fd < 0) {
      fd = connect_to(s.addr, s.addr_len, deadline, cfg_.request_timeout, reason);
      if (fd >= 0) conn_id = s.next_connection.fetch_add(1);
    }
    Parsed p;
    if (reason.empty()) reason = send_all(fd, s.request, deadline);
    if (reason.empty()) reason = read_response(fd, deadline, p);
    if (!reason.empty()) {
      record_failure(start, reused, std::move(reason));
      close_conn();
      s.sleep_unless_stopped(cfg_.failure_backoff);
      continue;
    }

    Response r;
    r.start = start;
    r.end = Clock::now();
    r.status = p.status;
    BodyFields bf = parse_body_fields(p.body);
    r.version = std::move(bf.version);
    r.pid = bf.pid;
    r.generation = bf.generation;
    r.reused = reused;
    r.server_closed = p.close;
    r.thread = index;
    r.connection = conn_id;
    const bool ok = p.status == 200;
    {
      std::lock_guard lk(s.mu);
      ++s.versions[r.version];
      if (s.responses.size() < cfg_.max_stored_responses) s.responses.push_back(r);
    }
    if (ok) {
      s.ok.fetch_add(1);
      s.requests.fetch_add(1);
    } else {
      record_failure(start, reused, "status " + std::to_string(p.status));
    }
    if (!keepalive || p.close) close_conn();
    if (!ok) {
      s.sleep_unless_stopped(cfg_.failure_backoff);
    } else if (cfg_.think_time.count() > 0) {
      s.sleep_unless_stopped(cfg_.think_time);
    }
  }
  close_conn();
  {
    std::lock_guard lk(s.life_mu);
    --s.active;
  }
  s.life_cv.notify_all();
}

std::size_t LoadClient::request_count() const {
  return shared_->requests.load();
}
std::size_t LoadClient::ok_count() const {
  return shared_->ok.load();
}
std::size_t LoadClient::failure_count() const {
  return shared_->failed.load();
}

std::vector<LoadClient::Response> LoadClient::responses() const {
  std::lock_guard lk(shared_->mu);
  return shared_->responses;
}

std::vector<LoadClient::Failure> LoadClient::failures() const {
  std::lock_guard lk(shared_->mu);
  return shared_->failures;
}

std::map<std::string, std::size_t> LoadClient::version_counts() const {
  std::lock_guard lk(shared_->mu);
  return shared_->versions;
}

std::map<std::string, std::size_t> LoadClient::failure_reasons() const {
  std::lock_guard lk(shared_->mu);
  return shared_->reasons;
}

std::string LoadClient::summary() const {
  std::vector<Failure> fails;
  std::map<std::string, std::size_t> versions, reasons;
  std::size_t stored = 0;
  Clock::time_point base;
  {
    std::lock_guard l2(shared_->life_mu);
    base = started_at_;
  }
  {
    std::lock_guard lk(shared_->mu);
    fails = shared_->failures;
    versions = shared_->versions;
    reasons = shared_->reasons;
    stored = shared_->responses.size();
  }
  std::string out =
      fmt::format("load {}:{}{} mode={} threads={}: requests={} ok={} failures={} (stored responses={})\n", cfg_.host,
                  cfg_.port, cfg_.path, cfg_.mode == Mode::KeepAlive ? "keep-alive" : "new-connection", cfg_.threads,
                  request_count(), ok_count(), failure_count(), stored);
  out += "versions:";
  if (versions.empty()) out += " (none)";
  for (auto& [v, n] : versions)
    out += fmt::format(" {}={}", v.empty() ? "(none)" : v, n);
  out += "\n";
  if (!reasons.empty()) {
    out += "failures by reason:\n";
    for (auto& [reason, n] : reasons) {
      out += fmt::format("  {} x{}\n", reason, n);
      int shown = 0;
      for (auto& f : fails) {
        if (f.reason != reason) continue;
        out += fmt::format("    at {} (started {}) thread={} conn={}{}\n", fmt_offset(f.time, base),
                           fmt_offset(f.start, base), f.thread, f.connection, f.reused ? " reused" : "");
        if (++shown == 5) break;
      }
    }
  }
  return out;
}

}  // namespace hotrestart::testsupport
