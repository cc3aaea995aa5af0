// kv-cache's HTTP side: the requests it answers (main.cpp lists them) and the connections it
// serves, accepts, hands to the next generation and adopts from the previous one, on a libuv loop
// (examples-http). The worker SDK's set-up and callbacks are in main.cpp.
#pragma once

#include <http_parser.h>
#include <uv.h>

#include <fmt/core.h>

#include <hotrestart/worker.h>

#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cache.h"
#include "http_server.h"
#include "http_text.h"
#include "settings.h"

#ifndef KV_SCHEMA
#error "build kv-cache with KV_SCHEMA=1 or KV_SCHEMA=2"
#endif

namespace kv_cache {

namespace http = examples::http;
using Cache = kv::Cache<KV_SCHEMA>;

inline constexpr std::uint64_t kMaxBodyBytes = 1024 * 1024;
// The name idle connections are passed under, from one generation to the next.
inline constexpr std::string_view kConnFdName = "conn";

struct Options {
  std::string label = KV_SCHEMA == 1 ? "v1" : "v2";
  std::string listen = "127.0.0.1:8080";
  std::uint64_t max_memory = std::uint64_t{256} << 20;
  std::uint64_t idle_grace_ms = 1000;
  std::uint64_t prefill = 0;  // Entries to fill in at start-up when nothing was imported.
  std::size_t prefill_value_bytes = 64;
  bool serialized_state = false;  // Import the cache serialized even where the arena could be mapped.
  bool stream_state = false;      // Export a serialized cache over a stream rather than a memfd.
  bool locked_save = false;       // Save under the cache's lock rather than in a forked process.
  std::string config_file;        // Its configuration when run by hand (settings.h).
};

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
    if (http::iequals(field, "content-type")) content_type = http::trim(value);
    if (http::iequals(field, "expect")) expect = http::trim(value);
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
  int error_status = 0;              // Set by a parser callback that stops the parser, to answer with.
  std::uint64_t config_version = 0;  // Of the configuration the request being answered reads.
};

struct Server : http::Application {
  Server(Options o, Cache& c);

  std::unique_ptr<http::Connection> make_connection() override { return std::make_unique<Connection>(*this); }
  bool hand_off(http::Connection& conn) override;
  int run();
  // After wait_for_resume() returned true: serves again on the listeners the SDK got back.
  int resume();
  void adopt_passed();
  void start_drain(const char* why);
  // Accepts connections from here on, once the supervisor said this generation is the active one
  // (on_active): a candidate acknowledges no write that the old generation would not see.
  void start_accepting();
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
  // The configuration (settings.h), which the SDK reloads; read on the loop's thread only.
  hotrestart::Config<kv::Settings> settings{kv::parse_settings};
  hotrestart::Config<kv::Settings>::Reader settings_reader{settings.reader()};
  // From the SDK's thread. They are unreferenced, so that they never keep the loop running, and
  // stay open until the Worker is gone (main destroys it first).
  uv_async_t drain_async{}, stop_async{}, fd_async{}, active_async{};
  // Publishes the cache's gauges to the supervisor's metrics every second (publish_metrics).
  uv_timer_t metrics_timer{};
  void publish_metrics();
  http::Listener* listener = nullptr;  // Opened by run(); accepting once active.
  bool accepting = false;
  std::mutex passed_mutex;
  std::vector<hotrestart::Fd> passed;  // Connections from on_fd, waiting for the loop.
  // Whether idle connections can go to the next generation; learnt from the first pass_fd().
  enum class Handoff { kUnknown, kWorks, kFailed } handoff = Handoff::kUnknown;
  http::Server core{*this};  // Last: its destructor closes every handle on the loop, these included.
};

}  // namespace kv_cache
