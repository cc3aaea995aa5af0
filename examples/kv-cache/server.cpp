// kv-cache's HTTP side (see server.h): answering requests, and the connections' lifecycle across
// generations.
#include "server.h"

#include <nlohmann/json.hpp>

#include <climits>
#include <csignal>
#include <new>
#include <optional>

namespace kv_cache {

namespace {

constexpr std::size_t kMaxContentTypeBytes = 256;
// A request must arrive whole within this, or it gets 408 and the connection is closed.
constexpr std::uint64_t kRequestTimeoutMs = 30'000;

}  // namespace

Connection::Connection(Server& s) : http::Connection(s.core), server(s) {}

void Connection::on_message_begin() {
  request.clear();
  start_timer(kRequestTimeoutMs);
}

// A request must arrive whole within kRequestTimeoutMs.
void Connection::on_timer() {
  if (!in_message() || closing() || final_response()) return;
  send(408, "text/plain", "request timeout\n", false);
}

int Connection::on_url(std::string_view part) {
  if (request.url.size() + part.size() > http::kMaxHeaderBytes) {
    error_status = 414;
    return 1;
  }
  request.url.append(part);
  return 0;
}

// Header names and values are bounded by the parser's header limit (http::kMaxHeaderBytes in all).
int Connection::on_header_field(std::string_view part) {
  if (request.in_value) request.finish_header();
  request.field.append(part);
  return 0;
}

int Connection::on_header_value(std::string_view part) {
  request.in_value = true;
  request.value.append(part);
  return 0;
}

int Connection::on_headers_complete() {
  if (request.in_value) request.finish_header();
  const http_parser& p = parser();
  // http_parser sets content_length to ULLONG_MAX when there is no Content-Length.
  if (p.content_length != ULLONG_MAX && p.content_length > kMaxBodyBytes) {
    error_status = 413;
    return -1;  // An error: the body is never read, so the connection ends after the 413.
  }
  if (http::iequals(request.expect, "100-continue") && p.http_major == 1 && p.http_minor >= 1) {
    send_interim("HTTP/1.1 100 Continue\r\n\r\n");
  }
  return 0;
}

int Connection::on_body(std::string_view part) {
  if (request.body.size() + part.size() > kMaxBodyBytes) {  // A chunked body can only be bounded as it comes.
    error_status = 413;
    return 1;
  }
  request.body.append(part);
  return 0;
}

void Connection::reject(http_errno err) {
  int status = error_status != 0 ? error_status : 400;
  if (err == HPE_HEADER_OVERFLOW) status = 431;
  send(status, "text/plain", fmt::format("{}\n", http::reason_phrase(status)), false);
}

void Connection::respond() {
  Request& r = request;
  // One configuration for the whole request, whatever a reload commits meanwhile.
  const auto settings = server.settings_reader.get();
  config_version = settings.version();
  const auto method = static_cast<http_method>(parser().method);
  const bool reads = method == HTTP_GET || method == HTTP_HEAD;
  const auto target = http::parse_target(r.url);
  if (!target || target->path.empty()) return send(400, "text/plain", "bad request target\n", keep_alive());
  const std::string_view path = target->path;

  if (path == "/" || path == "/stats") {
    if (!reads) return send(405, "text/plain", "method not allowed\n", keep_alive(), "Allow: GET, HEAD\r\n");
    if (path == "/stats") return send(200, "application/json", server.stats_line(), keep_alive());
    return send(200, "text/plain",
                fmt::format("kv-cache version={} pid={} generation={}\n", server.opts.label, server.pid,
                            server.worker->generation()),
                keep_alive());
  }
  if (!path.starts_with("/kv/")) return send(404, "text/plain", "not found\n", keep_alive());
  auto key = http::percent_decode(path.substr(4));
  if (!key || key->empty()) return send(400, "text/plain", "bad key\n", keep_alive());
  if (settings) {
    if (const auto prefix = kv::blocked_by(*settings, *key); !prefix.empty())
      return send(403, "text/plain",
                  fmt::format("keys under '{}' are blocked (configuration version {})\n", prefix, settings.version()),
                  keep_alive());
    if (method == HTTP_PUT && r.body.size() > settings->max_value_bytes)
      return send(413, "text/plain",
                  fmt::format("values are at most {} bytes (configuration version {})\n", settings->max_value_bytes,
                              settings.version()),
                  keep_alive());
  }

  switch (method) {
    case HTTP_GET:
    case HTTP_HEAD: {
      auto found = server.cache.get(*key);
      if (!found) return send(404, "text/plain", "not found\n", keep_alive());
      std::string_view type = kv::served_content_type(found->content_type);
      if (!http::printable(type)) type = kv::kDefaultContentType;
      return send(200, type, std::move(found->value), keep_alive());
    }
    case HTTP_PUT: {
      std::string_view type;
      if constexpr (KV_SCHEMA >= 2) {
        type = r.content_type;
        if (type.size() > kMaxContentTypeBytes || !http::printable(type)) {
          return send(400, "text/plain", "bad content type\n", keep_alive());
        }
      }
      kv::WriteResult result = kv::WriteResult::kRefused;
      try {
        result = kv::publish_put(server.cache, *server.worker, *key, r.body, type);
      } catch (const std::bad_alloc&) {
        // The store stays whole (nothing is changed before its memory is had) and the write is not
        // acknowledged.
        return send(507, "text/plain", "the cache could not get memory for the entry\n", keep_alive());
      }
      switch (result) {
        case kv::WriteResult::kApplied:
        case kv::WriteResult::kAbsent:
          return send(204, {}, {}, keep_alive());
        case kv::WriteResult::kRefused:
          break;
      }
      return send(503, "text/plain", "the write could not be handed to the next generation; retry\n", keep_alive(),
                  "Retry-After: 1\r\n");
    }
    case HTTP_DELETE:
      switch (kv::publish_erase(server.cache, *server.worker, *key)) {
        case kv::WriteResult::kApplied:
          return send(204, {}, {}, keep_alive());
        case kv::WriteResult::kAbsent:
          return send(404, "text/plain", "not found\n", keep_alive());
        case kv::WriteResult::kRefused:
          break;
      }
      return send(503, "text/plain", "the delete could not be handed to the next generation; retry\n", keep_alive(),
                  "Retry-After: 1\r\n");
    default:
      return send(405, "text/plain", "method not allowed\n", keep_alive(), "Allow: GET, HEAD, PUT, DELETE\r\n");
  }
}

void Connection::send(int status, std::string_view content_type, std::string body, bool keep,
                      std::string_view extra_headers) {
  // While draining, a connection is kept open only if it can go to the next generation.
  keep = keep && !(server.core.draining() && server.handoff == Server::Handoff::kFailed);
  std::string head = fmt::format("HTTP/1.1 {} {}\r\n{}X-Config-Version: {}\r\n", status, http::reason_phrase(status),
                                 server.common_headers, config_version);
  if (status != 204) {  // A 204 has neither a body nor a Content-Length.
    head += fmt::format("Content-Type: {}\r\nContent-Length: {}\r\n", content_type, body.size());
  }
  head += fmt::format("Connection: {}\r\n{}\r\n", keep ? "keep-alive" : "close", extra_headers);
  if (head_request()) body.clear();
  http::Connection::send(std::move(head), std::move(body), keep ? http::KeepAlive::kYes : http::KeepAlive::kNo);
}

// Passes an idle connection to the next generation; pass_fd() duplicates the descriptor itself.
bool Server::hand_off(http::Connection& conn) {
  if (handoff == Handoff::kFailed) return false;
  if (!conn.hand_over([this](uv_os_fd_t fd) { return worker->pass_fd(std::string(kConnFdName), fd); })) {
    log("no next generation takes connections: closing them after their next answer instead");
    handoff = Handoff::kFailed;
    return false;
  }
  handoff = Handoff::kWorks;
  return true;
}

Server::Server(Options o, Cache& c) : opts(std::move(o)), cache(c) {
  uv_async_init(&core.loop(), &drain_async,
                [](uv_async_t* a) { static_cast<Server*>(a->data)->start_drain("asked to"); });
  uv_async_init(&core.loop(), &stop_async, [](uv_async_t* a) { static_cast<Server*>(a->data)->stop_now(); });
  uv_async_init(&core.loop(), &fd_async, [](uv_async_t* a) { static_cast<Server*>(a->data)->adopt_passed(); });
  uv_async_init(&core.loop(), &active_async, [](uv_async_t* a) { static_cast<Server*>(a->data)->start_accepting(); });
  for (uv_async_t* a : {&drain_async, &stop_async, &fd_async, &active_async}) {
    a->data = this;
    uv_unref(reinterpret_cast<uv_handle_t*>(a));
  }
  uv_timer_init(&core.loop(), &metrics_timer);
  metrics_timer.data = this;
  // It never keeps the loop alive (a drain ends it); the core closes it with the rest.
  uv_unref(reinterpret_cast<uv_handle_t*>(&metrics_timer));
}

void Server::publish_metrics() {
  const kv::Stats s = cache.stats();
  const std::uint64_t lookups = s.hits + s.misses;
  (void)worker->publish_metrics({{"kv_entries", static_cast<double>(s.entries)},
                                 {"kv_bytes", static_cast<double>(s.bytes)},
                                 {"kv_hits", static_cast<double>(s.hits)},
                                 {"kv_misses", static_cast<double>(s.misses)},
                                 {"kv_hit_ratio", lookups > 0 ? static_cast<double>(s.hits) / lookups : 0.0},
                                 {"kv_evictions", static_cast<double>(s.evictions)}});
}

// One line of JSON; scripts/bench-state and the tests read its fields by name.
std::string Server::stats_line() const {
  const kv::Stats s = cache.stats();
  nlohmann::ordered_json imported = nullptr;
  for (const auto& section : worker->imported()) {
    if (section.name != kv::kSectionName) continue;
    imported = {{"imported", section.imported},
                {"version", section.version},
                {"bytes", section.bytes},
                {"reason", section.reason}};
  }
  const nlohmann::ordered_json stats = {{"version", opts.label},
                                        {"schema", KV_SCHEMA},
                                        {"pid", pid},
                                        {"generation", worker->generation()},
                                        {"entries", s.entries},
                                        {"bytes", s.bytes},
                                        {"max_bytes", cache.max_bytes()},
                                        {"hits", s.hits},
                                        {"misses", s.misses},
                                        {"evictions", s.evictions},
                                        {"tombstones", s.tombstones},
                                        {"deltas", s.deltas},
                                        {"page_bytes", s.page_bytes},
                                        {"index_bytes", s.index_bytes},
                                        {"imported", imported}};
  // A label or a reason that is not UTF-8 is sent with U+FFFD in place of its bad bytes.
  return stats.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
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
  listener = &core.add_listener("http", http::Transport::kTcp);
  accepting = false;
  if (int rc = listener->open(std::move(fd)); rc != 0) {
    log("cannot use the http listener: {}", uv_strerror(rc));
    return 1;
  }
  auto on_signal = [this](int signum) { start_drain(signum == SIGINT ? "SIGINT" : "SIGTERM"); };
  core.on_signal(SIGTERM, on_signal);
  core.on_signal(SIGINT, on_signal);

  // Connections the previous generation passed before the state transfer (none today: it passes
  // them while it drains, and those arrive through on_fd).
  while (hotrestart::Fd passed_fd = worker->take_fd(kConnFdName)) {
    std::lock_guard lock(passed_mutex);
    passed.push_back(std::move(passed_fd));
  }
  adopt_passed();

  worker->ready();
  worker->status(fmt::format("kv-cache {} serving, schema {}", opts.label, KV_SCHEMA));
  publish_metrics();
  uv_timer_start(
      &metrics_timer, [](uv_timer_t* t) { static_cast<Server*>(t->data)->publish_metrics(); }, 1000, 1000);
  // Not yet accepting: that waits for on_active, which may have come already.
  if (worker->active()) start_accepting();
  log("ready (mode {}, generation {}){}", hotrestart::mode_name(worker->mode()), worker->generation(),
      accepting ? "" : "; accepting once the supervisor makes it the active generation");
  uv_run(&core.loop(), UV_RUN_DEFAULT);
  std::string stats = stats_line();
  stats.pop_back();  // Its newline: log() ends the line itself.
  log("drained: {}", stats);
  return 0;
}

int Server::resume() {
  if (!core.reopen()) {
    log("cannot serve again: the last drain has not finished");
    return 1;
  }
  handoff = Handoff::kUnknown;
  return run();
}

// Connections the previous generation handed over: served like accepted ones.
void Server::adopt_passed() {
  std::vector<hotrestart::Fd> fds;
  {
    std::lock_guard lock(passed_mutex);
    fds.swap(passed);
  }
  if (core.finished()) return;  // Nothing serves any more: the connections close with `fds`.
  for (auto& fd : fds) {
    if (int rc = core.adopt(std::move(fd)); rc != 0) log("cannot adopt a passed connection: {}", uv_strerror(rc));
  }
}

void Server::start_drain(const char* why) {
  if (core.draining() || core.finished()) return;
  log("draining ({}): {} connection(s) open", why, core.connection_count());
  const auto mode = worker->mode();
  if (mode != hotrestart::Mode::Supervised && mode != hotrestart::Mode::Stub) handoff = Handoff::kFailed;
  // Idle connections go to the next generation now (hand_off); busy ones once their answer is written.
  core.drain(opts.idle_grace_ms);
}

void Server::start_accepting() {
  if (accepting || listener == nullptr || core.draining() || core.finished()) return;
  if (int rc = listener->listen(); rc != 0) {
    log("cannot listen: {}", uv_strerror(rc));
    start_drain("it cannot accept connections");
    return;
  }
  accepting = true;
  log("serving: generation {} is the active one", worker->generation());
}

void Server::stop_now() {
  if (core.finished()) return;
  log("stopping at once");
  core.stop();
}

}  // namespace kv_cache
