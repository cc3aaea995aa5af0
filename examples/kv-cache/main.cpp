// kv-cache: an HTTP key-value cache built on the hotrestart worker SDK. Its contents survive an
// upgrade (v1 -> v2) and a downgrade (v2 -> v1): the old generation hands a snapshot to the new
// one, then streams the writes it still accepts while it drains, and hands over its idle
// keep-alive connections so that clients never see them close.
//
//   GET /kv/KEY      200 with the value (Content-Type as stored, in v2), or 404
//   PUT /kv/KEY      body = value (at most 1 MiB, else 413): 204, or 503 if the write could not be
//                    handed to the next generation (it is then not applied), or 507 if the cache
//                    could not get memory for it
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
#include <climits>
#include <csignal>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cache.h"
#include "http_server.h"

#ifndef KV_SCHEMA
#error "build kv-cache with KV_SCHEMA=1 or KV_SCHEMA=2"
#endif

namespace {

namespace http = examples::http;
using Cache = kv::Cache<KV_SCHEMA>;

constexpr std::uint64_t kMaxBodyBytes = 1024 * 1024;
constexpr std::size_t kMaxContentTypeBytes = 256;
// A request must arrive whole within this, or it gets 408 and the connection is closed.
constexpr std::uint64_t kRequestTimeoutMs = 30'000;
// The name idle connections are passed under, from one generation to the next.
constexpr std::string_view kConnFdName = "conn";

struct Options {
  std::string label = KV_SCHEMA == 1 ? "v1" : "v2";
  std::string listen = "127.0.0.1:8080";
  std::uint64_t max_memory = std::uint64_t{256} << 20;
  std::uint64_t idle_grace_ms = 1000;
  std::uint64_t prefill = 0;  // Entries to fill in at start-up when nothing was imported.
  std::size_t prefill_value_bytes = 64;
  bool serialized_state = false;  // Import the cache serialized even where the arena could be mapped.
  bool stream_state = false;      // Export a serialized cache over a stream rather than a memfd.
};

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
    case 507:
      return "Insufficient Storage";
    default:
      return "Error";
  }
}

struct Server;

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

// One client connection, accepted or adopted from the previous generation. Its timer bounds a
// request's arrival.
struct Connection : http::Connection {
  explicit Connection(Server& s);

  void on_message_begin() override;
  int on_url(std::string_view part) override;
  int on_header_field(std::string_view part) override;
  int on_header_value(std::string_view part) override;
  int on_headers_complete() override;
  int on_body(std::string_view part) override;
  void on_message_complete() override { stop_timer(); }
  void respond() override;
  void reject(http_errno err) override;
  void on_timer() override;
  void send(int status, std::string_view content_type, std::string body, bool keep,
            std::string_view extra_headers = {});

  Server& server;
  Request request;
  int error_status = 0;  // Set by a parser callback that stops the parser, to answer with.
};

struct Server : http::Application {
  Server(Options o, Cache& c);

  std::unique_ptr<http::Connection> make_connection() override { return std::make_unique<Connection>(*this); }
  bool hand_off(http::Connection& conn) override;
  int run();
  void adopt_passed();
  void start_drain(const char* why);
  void stop_now();
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
  // From the SDK's thread. They are unreferenced, so that they never keep the loop running, and
  // stay open until the Worker is gone (main destroys it first).
  uv_async_t drain_async{}, stop_async{}, fd_async{};
  std::mutex passed_mutex;
  std::vector<hotrestart::Fd> passed;  // Connections from on_fd, waiting for the loop.
  // Whether idle connections can go to the next generation; learnt from the first pass_fd().
  enum class Handoff { kUnknown, kWorks, kFailed } handoff = Handoff::kUnknown;
  http::Server core{*this};  // Last: its destructor closes every handle on the loop, these included.
};

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
  if (iequals(request.expect, "100-continue") && p.http_major == 1 && p.http_minor >= 1) {
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
  send(status, "text/plain", fmt::format("{}\n", reason_phrase(status)), false);
}

void Connection::respond() {
  Request& r = request;
  const auto method = static_cast<http_method>(parser().method);
  const bool reads = method == HTTP_GET || method == HTTP_HEAD;
  http_parser_url u{};
  http_parser_url_init(&u);
  if (http_parser_parse_url(r.url.data(), r.url.size(), 0, &u) != 0 || (u.field_set & (1U << UF_PATH)) == 0) {
    return send(400, "text/plain", "bad request target\n", keep_alive());
  }
  const std::string_view path = std::string_view(r.url).substr(u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);

  if (path == "/" || path == "/stats") {
    if (!reads) return send(405, "text/plain", "method not allowed\n", keep_alive(), "Allow: GET, HEAD\r\n");
    if (path == "/stats") return send(200, "application/json", server.stats_line(), keep_alive());
    return send(200, "text/plain",
                fmt::format("kv-cache version={} pid={} generation={}\n", server.opts.label, server.pid,
                            server.worker->generation()),
                keep_alive());
  }
  if (!path.starts_with("/kv/")) return send(404, "text/plain", "not found\n", keep_alive());
  auto key = percent_decode(path.substr(4));
  if (!key || key->empty()) return send(400, "text/plain", "bad key\n", keep_alive());

  switch (method) {
    case HTTP_GET:
    case HTTP_HEAD: {
      auto found = server.cache.get(*key);
      if (!found) return send(404, "text/plain", "not found\n", keep_alive());
      std::string_view type = kv::served_content_type(found->content_type);
      if (!printable(type)) type = kv::kDefaultContentType;
      return send(200, type, std::move(found->value), keep_alive());
    }
    case HTTP_PUT: {
      std::string_view type;
      if constexpr (KV_SCHEMA >= 2) {
        type = r.content_type;
        if (type.size() > kMaxContentTypeBytes || !printable(type)) {
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
  std::string head = fmt::format("HTTP/1.1 {} {}\r\n{}", status, reason_phrase(status), server.common_headers);
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
  for (uv_async_t* a : {&drain_async, &stop_async, &fd_async}) {
    a->data = this;
    uv_unref(reinterpret_cast<uv_handle_t*>(a));
  }
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
  http::Listener& listener = core.add_listener("http", http::Transport::kTcp);
  if (int rc = listener.open(std::move(fd)); rc != 0) {
    log("cannot use the http listener: {}", uv_strerror(rc));
    return 1;
  }
  if (int rc = listener.listen(); rc != 0) {
    log("cannot listen: {}", uv_strerror(rc));
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
  log("serving (mode {}, generation {})", hotrestart::mode_name(worker->mode()), worker->generation());
  uv_run(&core.loop(), UV_RUN_DEFAULT);
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

void Server::stop_now() {
  if (core.finished()) return;
  log("stopping at once");
  core.stop();
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
  app.add_flag("--serialized-state", opts.serialized_state,
               "Take the previous generation's cache serialized (a copy of its arena) rather than mapping its "
               "memory as it is (for benchmarks)");
  app.add_flag("--stream-state", opts.stream_state,
               "When the next generation takes the cache serialized, stream it while it is written rather than "
               "write it whole into a memfd first: export and import overlap and no third copy is held in memory, "
               "but the cache stays locked until the next generation has read it");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  http::init_process();
  try {
    // Destroyed in reverse order: the Worker first (it flushes what the next generation is owed and
    // joins its thread, so no callback outlives the server), then the server, then the cache.
    Cache cache(opts.max_memory);
    Server server(opts, cache);
    hotrestart::Worker worker({.fallback_listen = {{"http", opts.listen}}});
    server.worker = &worker;
    hotrestart::Section section = kv::make_section(cache);
    if (opts.serialized_state) section.load_arena = {};
    section.stream = opts.stream_state;
    worker.add_section(std::move(section));
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
    // Once the other generation is gone, the cache's memory (lent to it or borrowed from it at the
    // last upgrade) is this process's alone again.
    worker.on_previous_gone([&cache] {
      cache.drop_tombstones();
      cache.reclaim_memory();
    });
    worker.on_next_gone([&cache, &server] {
      // The upgrade rolled back (or the new generation crashed): this one serves on.
      const bool lent = cache.memory_borrowed();
      if (cache.reclaim_memory() && lent) {
        server.log("the next generation is gone; the cache's memory is this generation's alone again");
      }
    });

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
