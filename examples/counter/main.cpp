// counter: an HTTP server of named counters, the worker SDK's example of read-modify-write state
// (counters.h says why its deltas are operations, applied exactly once).
//
//   GET /incr/KEY    adds 1 to KEY (1 to 256 bytes): 200 "count=N version=V pid=P generation=G",
//                    or 503 when the increment could not be handed to the next generation (it is
//                    then not counted)
//   GET /count/KEY   200 with the count (0 for a key never incremented)
//   GET /            200 "version=V pid=P generation=G"
//   GET /stats       200 "counters=N received=M": M is the increments the previous generation made
//                    after this one's snapshot, applied here as operations
//
// Under `hotrestart run` it accepts connections only once it is the active generation
// (Worker::on_active), so no increment is ever acknowledged by a generation that may be rolled
// back; when told to drain it closes its listener, answers what is in flight with
// `Connection: close`, and exits. Started by hand it binds --listen.
//
// Threads: the HTTP server runs on a libuv loop on the main thread; the SDK's callbacks reach it
// through uv_async_send. The counters have a lock of their own, taken by both.

#include <uv.h>

// GCC 12 reports a false -Wnull-dereference inside CLI11's inlined string splitting (a std::vector<std::string>
// reallocation), so that warning is silenced for CLI11's code only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wnull-dereference"
#include <CLI/CLI.hpp>
#pragma GCC diagnostic pop
#include <fmt/core.h>

#include <hotrestart/worker.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "counters.h"
#include "http_server.h"
#include "http_text.h"

namespace {

namespace http = examples::http;
using Counters = counter::Counters<COUNTER_SCHEMA>;

struct Options {
  std::string label = "v" + std::to_string(COUNTER_SCHEMA);
  std::string listen = "127.0.0.1:8080";
  std::uint64_t idle_grace_ms = 1000;
};

struct Server : http::Application {
  Server(Options o, Counters& c);

  std::unique_ptr<http::Connection> make_connection() override;
  int run();
  void log(std::string_view what) const {
    fmt::print(stderr, "counter {} pid {}: {}\n", opts.label, static_cast<int>(::getpid()), what);
  }

  Options opts;
  Counters& counters;
  hotrestart::Worker* worker = nullptr;
  std::string fields;  // "version=V pid=P generation=G"
  http::Listener* listener = nullptr;
  bool accepting = false;
  uv_async_t drain_async{};
  uv_async_t stop_async{};
  uv_async_t active_async{};
  http::Server core{*this};  // Last: its destructor closes every handle on the loop.
};

struct Connection : http::Connection {
  explicit Connection(Server& s) : http::Connection(s.core), server(s) {}

  void on_message_begin() override { url.clear(); }
  int on_url(std::string_view part) override {
    if (url.size() + part.size() > http::kMaxHeaderBytes) return 1;
    url.append(part);
    return 0;
  }
  void respond() override;
  void reject(http_errno err) override { send(err == HPE_HEADER_OVERFLOW || err == HPE_CB_url ? 431 : 400, ""); }
  void send(int status, std::string_view body);

  Server& server;
  std::string url;
};

void Connection::respond() {
  const auto target = http::parse_target(url);
  const std::string_view path = target ? target->path : std::string_view{};
  auto key_after = [&](std::string_view prefix) -> std::optional<std::string> {
    if (!path.starts_with(prefix)) return std::nullopt;
    auto key = http::percent_decode(path.substr(prefix.size()));
    if (!key || key->empty() || key->size() > counter::kMaxKeyBytes) return std::nullopt;
    return key;
  };
  if (path == "/") return send(200, server.fields);
  if (path == "/stats") {
    return send(200,
                fmt::format("counters={} received={}", server.counters.size(), server.counters.operations_received()));
  }
  if (auto key = key_after("/incr/")) {
    const auto count = server.counters.increment(*key, *server.worker);
    if (!count) return send(503, "");
    return send(200, fmt::format("count={} {}", *count, server.fields));
  }
  if (auto key = key_after("/count/"))
    return send(200, fmt::format("count={} {}", server.counters.count(*key), server.fields));
  send(path.starts_with("/incr/") || path.starts_with("/count/") ? 400 : 404, "");
}

void Connection::send(int status, std::string_view body) {
  const bool keep = keep_alive() && !server.core.draining();
  const std::string text = status == 200 ? std::string(body) + "\n" : fmt::format("{}\n", http::reason_phrase(status));
  http::Connection::send(
      fmt::format("HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n", status,
                  http::reason_phrase(status), text.size(), keep ? "keep-alive" : "close"),
      head_request() ? std::string{} : text, keep ? http::KeepAlive::kYes : http::KeepAlive::kNo);
}

Server::Server(Options o, Counters& c) : opts(std::move(o)), counters(c) {
  drain_async.data = this;
  stop_async.data = this;
  active_async.data = this;
  uv_async_init(&core.loop(), &drain_async, [](uv_async_t* a) {
    auto* s = static_cast<Server*>(a->data);
    s->log("draining");
    s->core.drain(s->opts.idle_grace_ms);
  });
  uv_async_init(&core.loop(), &stop_async, [](uv_async_t* a) { static_cast<Server*>(a->data)->core.stop(); });
  uv_async_init(&core.loop(), &active_async, [](uv_async_t* a) {
    auto* s = static_cast<Server*>(a->data);
    if (s->accepting || s->listener == nullptr || s->core.draining()) return;
    if (int rc = s->listener->listen(); rc != 0) {
      s->log(fmt::format("cannot listen: {}", uv_strerror(rc)));
      s->core.stop();
      return;
    }
    s->accepting = true;
  });
  // They never keep the loop alive (the listener and the connections do, until a drain ends them);
  // the core closes them with the rest.
  for (uv_async_t* a : {&drain_async, &stop_async, &active_async})
    uv_unref(reinterpret_cast<uv_handle_t*>(a));
}

std::unique_ptr<http::Connection> Server::make_connection() {
  return std::make_unique<Connection>(*this);
}

int Server::run() {
  fields =
      fmt::format("version={} pid={} generation={}", opts.label, static_cast<int>(::getpid()), worker->generation());
  hotrestart::Fd fd = worker->take_listener("http");
  if (!fd) {
    log("no listener named 'http' (give the supervisor --listen http=tcp://HOST:PORT)");
    return 1;
  }
  listener = &core.add_listener("http", http::Transport::kTcp);
  if (int rc = listener->open(std::move(fd)); rc != 0) {
    log(fmt::format("cannot use the http listener: {}", uv_strerror(rc)));
    return 1;
  }
  core.on_signal(SIGTERM, [this](int) { core.drain(opts.idle_grace_ms); });
  core.on_signal(SIGINT, [this](int) { core.drain(opts.idle_grace_ms); });
  worker->ready();
  // Accepting waits for on_active, which may have come already.
  if (worker->active()) uv_async_send(&active_async);
  log(fmt::format("ready with {} counters (generation {})", counters.size(), worker->generation()));
  uv_run(&core.loop(), UV_RUN_DEFAULT);
  log("drained");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opts;
  CLI::App app{fmt::format(
      "counter (schema {}): an HTTP server of counters that keeps every increment across upgrades.", COUNTER_SCHEMA)};
  app.add_option("--version", opts.label, "Version label reported in every response")->capture_default_str();
  app.add_option("--listen", opts.listen, "HOST:PORT to bind for the 'http' listener when not supervised")
      ->capture_default_str();
  app.add_option("--idle-grace", opts.idle_grace_ms,
                 "Milliseconds after a drain begins before idle keep-alive connections are closed")
      ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{86'400'000}))
      ->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  http::init_process();
  try {
    // Destroyed in reverse order: the Worker first (it flushes what the next generation is owed and
    // joins its thread, so no callback outlives the server), then the server, then the counters.
    Counters counters;
    Server server(opts, counters);
    hotrestart::Worker worker({.fallback_listen = {{"http", opts.listen}}});
    server.worker = &worker;
    worker.add_section(counters.section(worker));
    worker.on_drain([&server] { uv_async_send(&server.drain_async); });
    worker.on_stop([&server] { uv_async_send(&server.stop_async); });
    worker.on_active([&server] { uv_async_send(&server.active_async); });
    if (auto error = worker.start(); !error.empty()) {
      fmt::print(stderr, "counter {}: {}\n", opts.label, error);
      return 1;
    }
    for (const auto& s : worker.imported()) {
      if (!s.imported) server.log(fmt::format("section '{}' starts cold: {}", s.name, s.reason));
    }
    return server.run();
  } catch (const std::exception& e) {
    fmt::print(stderr, "counter {}: {}\n", opts.label, e.what());
    return 1;
  }
}
